"""A fixed-seed slice of benchmarks/video_fuzz.py: mutated videos give frames or a VideoError, nothing else.

The full run (3,200 files) is ``.venv/bin/python benchmarks/video_fuzz.py``; this runs 150 of its
files, each in a worker process, so a crash or a hang in FFmpeg fails the test instead of pytest.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "video_fuzz.py"


@pytest.fixture(scope="module")
def video_fuzz():
    spec = importlib.util.spec_from_file_location("video_fuzz", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["video_fuzz"] = module  # the worker processes look it up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("video_fuzz", None)


def test_mutated_videos_give_frames_or_a_video_error(video_fuzz):
    report = video_fuzz.run(count=150, seed=1234, workers=2, timeout=20.0)
    assert report.files == 150 and sum(report.calls.values()) == 150 * len(video_fuzz.SETTINGS)
    assert report.bad_files == {}, report.bad_files
    # the slice exercises both sides: damaged files that still decode, and refused ones
    assert report.calls["ok"] > 100 and report.calls["CorruptVideoError"] > 100, report.calls


@pytest.mark.skipif(sys.platform != "linux", reason="the patch reaches the worker processes by fork")
def test_the_harness_counts_errors_hangs_and_crashes(video_fuzz, monkeypatch):
    """File 1 raises an AttributeError, file 2 hangs, file 3 kills its worker: each is reported as
    bad, and the other files still run."""
    import os
    import time

    real = video_fuzz.sample_frames

    def sample_frames(path: Path, **settings):
        if path.name.startswith("fuzz-00001"):
            raise AttributeError("'NoneType' object has no attribute 'width'")
        if path.name.startswith("fuzz-00002"):
            time.sleep(60)
        if path.name.startswith("fuzz-00003"):
            os._exit(3)
        return real(path, **settings)

    monkeypatch.setattr(video_fuzz, "sample_frames", sample_frames)
    report = video_fuzz.run(count=6, seed=0, workers=2, timeout=3.0)
    assert sorted(report.bad_files) == [1, 2, 3]
    assert {o for o, _ in report.bad_files[1]} == {"AttributeError"} and len(report.bad_files[1]) == 4
    assert report.bad_files[2] == [("HANG", "no result after 3 s")]
    assert report.bad_files[3] == [("CRASH", "worker exit code 3")]
    assert sum(report.calls.values()) == 3 * 4 + 4 + 1 + 1  # files 0, 4, 5 ran every setting
