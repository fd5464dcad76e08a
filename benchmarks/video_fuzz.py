"""Video fuzz: mutated files must give frames or a VideoError, never another exception, crash or hang.

Run:  .venv/bin/python benchmarks/video_fuzz.py [--count 3200] [--seed 0] [--workers 2] [--timeout 20]

Encodes small seed videos with ``storm_vlm.video.write_video`` (mp4/H.264 with B-frames, mp4
faststart, webm/VP9, mkv/FFV1, avi/MPEG-4, mov/MJPEG, gif), then for each of ``--count`` files
picks a seed and applies one to three random mutations (byte flips, truncation, inserted,
deleted, duplicated or overwritten chunks; a third of them aimed at the container header) and
calls ``sample_frames`` with a few settings. Each file runs in a worker process: one that takes
longer than ``--timeout`` seconds is killed and counted as a hang, one that dies as a crash.

Prints the outcomes by exception type (per call) and every non-VideoError with its file, and
exits 1 if any file raised anything but a VideoError, crashed or hung. ``--keep DIR`` copies
those files there for a look. Each file is made from ``(seed, index)`` alone, so
``--only INDEX`` replays one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import numpy as np

from storm_vlm.video import VideoError, sample_frames, write_video

SEEDS: dict[str, tuple[str, dict]] = {
    "mp4-h264": ("seed.mp4", dict(codec="libx264", gop=8)),
    "mp4-faststart": ("seed-fast.mp4", dict(codec="libx264", gop=6, container_options={"movflags": "+faststart"})),
    "webm-vp9": ("seed.webm", dict(codec="libvpx-vp9")),
    "mkv-ffv1": ("seed.mkv", dict(codec="ffv1", pix_fmt="yuv444p")),
    "avi-mpeg4": ("seed.avi", dict(codec="mpeg4", gop=6)),
    "mov-mjpeg": ("seed.mov", dict(codec="mjpeg", pix_fmt="yuvj420p")),
    "gif": ("seed.gif", dict(codec="gif", pix_fmt="rgb8", fps=10)),
}
SETTINGS: list[dict] = [
    dict(num_frames=8),
    dict(fps=4.0, max_frames=6),
    dict(num_frames=4, start=0.3, end=0.9, on_short="repeat"),
    dict(),
]
OK = "ok"
HANG = "HANG"
CRASH = "CRASH"


def seed_frames(num_frames: int = 24, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames that differ from each other (a moving bar over noise)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        x = (t * 3) % (width - 4)
        frames[t, :, x : x + 4] = (255, (t * 37) % 256, 0)
    return frames


def make_seeds(folder: Path) -> dict[str, bytes]:
    """The valid files every mutation starts from, as bytes."""
    frames = seed_frames()
    out = {}
    for name, (filename, kwargs) in SEEDS.items():
        kwargs = dict(kwargs)
        fps = kwargs.pop("fps", 25.0)
        path = write_video(folder / filename, frames, fps=fps, **kwargs)
        out[name] = path.read_bytes()
    return out


def _span(rng: np.random.Generator, n: int, header: bool) -> tuple[int, int]:
    """A random chunk ``[a, b)`` of an ``n``-byte file; inside the first 1 KiB or last 10% if ``header``."""
    if header:
        region = (0, min(n, 1024)) if rng.random() < 0.5 else (int(n * 0.9), n)
    else:
        region = (0, n)
    a = int(rng.integers(region[0], max(region[1], region[0] + 1)))
    b = min(n, a + int(rng.integers(1, 513)))
    return a, b


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One to three random mutations of ``data``; returns the new bytes and what was done."""
    buf = bytearray(data)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        if len(buf) < 2:
            break
        kind = str(rng.choice(["flip", "flip", "truncate", "insert", "delete", "duplicate", "overwrite"]))
        header = rng.random() < 0.33
        a, b = _span(rng, len(buf), header)
        if kind == "flip":
            for _ in range(int(rng.integers(1, 33))):
                pos = _span(rng, len(buf), header)[0]
                bit = 1 << int(rng.integers(0, 8))
                buf[pos] = int(rng.integers(0, 256)) if rng.random() < 0.5 else buf[pos] ^ bit
        elif kind == "truncate":
            buf = buf[: int(rng.integers(1, len(buf)))]
        elif kind == "insert":
            buf[a:a] = rng.integers(0, 256, int(rng.integers(1, 513)), dtype=np.uint8).tobytes()
        elif kind == "delete":
            del buf[a:b]
        elif kind == "duplicate":
            c = int(rng.integers(0, len(buf)))
            buf[c:c] = buf[a:b]
        else:
            fill = int(rng.choice([0, 255, int(rng.integers(0, 256))]))
            buf[a:b] = bytes([fill]) * (b - a)
        done.append(f"{kind}{'@header' if header else ''}")
    return bytes(buf), "+".join(done)


def fuzz_case(seeds: dict[str, bytes], seed: int, index: int) -> tuple[str, str, bytes]:
    """File ``index`` of a run: (seed name, mutation description, bytes), from ``(seed, index)`` alone."""
    rng = np.random.default_rng([seed, index])
    names = sorted(seeds)
    name = names[int(rng.integers(0, len(names)))]
    data, what = mutate(seeds[name], rng)
    return name, what, data


def classify(path: Path) -> list[tuple[str, str]]:
    """``(outcome, detail)`` per setting: ``ok``, a VideoError class name, or another exception."""
    results = []
    for settings in SETTINGS:
        try:
            clip = sample_frames(path, **settings)
            assert clip.frames.ndim == 4 and clip.frames.dtype == np.uint8 and len(clip) >= 1
            results.append((OK, ""))
        except VideoError as err:
            message = str(err)
            if "\n" in message or str(path) not in message:  # the message must be one line naming the file
                results.append(("BadVideoErrorMessage", message))
            else:
                results.append((type(err).__name__, message))
        except Exception as err:  # the point of the fuzz: anything else is a bug to report
            where = traceback.extract_tb(err.__traceback__)[-1]
            results.append((type(err).__name__, f"{err} (at {Path(where.filename).name}:{where.lineno})"))
    return results


def _worker(conn: Connection, seeds: dict[str, bytes], seed: int, folder: str) -> None:
    while True:
        index = conn.recv()
        if index is None:
            return
        name, _, data = fuzz_case(seeds, seed, index)
        path = Path(folder) / f"fuzz-{index:05d}{Path(SEEDS[name][0]).suffix}"
        path.write_bytes(data)
        conn.send((index, classify(path)))


@dataclass
class Report:
    """Outcomes of a run: per call (``calls``), and the files with a non-VideoError outcome."""

    calls: Counter
    bad_files: dict[int, list[tuple[str, str]]]  # index -> (outcome, detail) of its bad calls
    files: int
    seconds: float
    seeds: dict[str, bytes]

    @property
    def bad(self) -> int:
        return len(self.bad_files)


def _subclasses(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


_VIDEO_ERRORS = _subclasses(VideoError)


def _is_bad(outcome: str) -> bool:
    """Anything but frames or a VideoError (HANG, CRASH and a badly worded VideoError included)."""
    return outcome != OK and outcome not in _VIDEO_ERRORS


def run(
    count: int = 3200,
    seed: int = 0,
    workers: int = 2,
    timeout: float = 20.0,
    folder: Path | None = None,
    only: list[int] | None = None,
) -> Report:
    """Fuzz ``count`` files (or just ``only``) with ``workers`` processes; see the module doc."""
    started = time.perf_counter()
    own = folder is None
    work = Path(tempfile.mkdtemp(prefix="video-fuzz-")) if folder is None else folder
    work.mkdir(parents=True, exist_ok=True)
    try:
        seeds = make_seeds(work)
        todo = list(only) if only is not None else list(range(count))
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        calls: Counter = Counter()
        bad: dict[int, list[tuple[str, str]]] = {}
        pool: dict[Connection, tuple] = {}  # conn -> (process, index or None, started)

        def start_worker() -> Connection:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, seeds, seed, str(work)), daemon=True)
            proc.start()
            child.close()
            pool[parent] = (proc, None, 0.0)
            return parent

        def give(conn: Connection) -> None:
            if todo:
                index = todo.pop(0)
                conn.send(index)
                pool[conn] = (pool[conn][0], index, time.monotonic())
            else:
                pool[conn] = (pool[conn][0], None, 0.0)

        def record(index: int, outcomes: list[tuple[str, str]]) -> None:
            calls.update(o for o, _ in outcomes)
            worst = [(o, d) for o, d in outcomes if _is_bad(o)]
            if worst:
                bad[index] = worst

        for _ in range(max(1, min(workers, len(todo)))):
            give(start_worker())
        while any(index is not None for _, index, _ in pool.values()):
            ready = wait([c for c, (_, i, _) in pool.items() if i is not None], timeout=0.5)
            for conn in ready:
                proc, index, _ = pool[conn]
                try:
                    got, outcomes = conn.recv()
                except EOFError:  # the worker died: a crash in native code
                    proc.join()
                    record(index, [(CRASH, f"worker exit code {proc.exitcode}")])
                    del pool[conn]
                    give(start_worker())
                    continue
                record(got, outcomes)
                give(conn)
            now = time.monotonic()
            for conn, (proc, index, since) in list(pool.items()):
                if index is not None and now - since > timeout:
                    proc.kill()
                    proc.join()
                    record(index, [(HANG, f"no result after {timeout:.0f} s")])
                    del pool[conn]
                    give(start_worker())
        for conn, (proc, _, _) in pool.items():
            conn.send(None)
            proc.join(timeout=5)
        files = count if only is None else len(only)
        return Report(calls, dict(sorted(bad.items())), files, time.perf_counter() - started, seeds)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3200, help="mutated files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per file before it counts as a hang")
    parser.add_argument("--keep", type=Path, help="copy the files with a bad outcome into this folder")
    parser.add_argument("--only", type=int, nargs="+", help="replay only these file indices")
    args = parser.parse_args()
    report = run(args.count, args.seed, args.workers, args.timeout, only=args.only)
    total = sum(report.calls.values())
    print(f"{report.files} mutated files x {len(SETTINGS)} settings = {total} calls in {report.seconds:.0f} s")
    print(f"{'outcome':<24} {'calls':>7}")
    for outcome, n in sorted(report.calls.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{outcome + (' (BAD)' if _is_bad(outcome) else ''):<24} {n:>7}")
    for index, outcomes in report.bad_files.items():
        name, what, data = fuzz_case(report.seeds, args.seed, index)
        for outcome, detail in sorted(set(outcomes)):
            print(f"  file {index} ({name}, {what}): {outcome}: {detail}")
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"fuzz-{index:05d}{Path(SEEDS[name][0]).suffix}").write_bytes(data)
    print(f"{report.bad} of {report.files} files raised something other than VideoError, crashed or hung")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
