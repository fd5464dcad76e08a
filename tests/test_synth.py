"""The synthetic task suite: answers readable from the pixels, determinism, disjoint splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storm_vlm.eval import load_benchmark
from storm_vlm.synth import COLORS, TASKS, _rng, make_suite


def present(frames: np.ndarray, color: str) -> list[bool]:
    target = np.array(COLORS[color])
    return [(np.abs(f.astype(int) - target).sum(-1) < 40).sum() > 10 for f in frames]


def runs(flags: list[bool]) -> int:
    return sum(1 for k, f in enumerate(flags) if f and (k == 0 or not flags[k - 1]))


@pytest.mark.parametrize("index", range(12))
def test_answers_are_in_the_pixels(index):
    rng = _rng("check", 0, index)
    frames, question, answer, options = TASKS["count"](32, 32, rng)
    color = question.split("the ")[1].split(" square")[0]
    assert runs(present(frames, color)) == int(answer) and answer in options
    frames, question, answer, _ = TASKS["order"](32, 32, _rng("check", 1, index))
    seen = [c for f in frames for c in COLORS if present(f[None], c)[0]]
    assert answer == (seen[0] if "first" in question else seen[-1])
    frames, question, answer, _ = TASKS["duration"](32, 32, _rng("check", 2, index))
    a, b = question.split("the ")[1].split(" one")[0], question.split("the ")[2].split(" one")[0]
    longer = a if sum(present(frames, a)) > sum(present(frames, b)) else b
    assert answer == longer
    frames, question, answer, _ = TASKS["needle"](32, 32, _rng("check", 3, index))
    assert sum(present(frames, answer)) == 1
    frames, question, answer, _ = TASKS["direction"](16, 32, _rng("check", 4, index))
    color = next(c for c in COLORS if all(present(frames, c)))
    ys, xs = zip(*[np.argwhere(np.abs(f.astype(int) - np.array(COLORS[color])).sum(-1) < 40).mean(0) for f in frames])
    moved = {"left": xs[0] - xs[-1], "right": xs[-1] - xs[0], "up": ys[0] - ys[-1], "down": ys[-1] - ys[0]}
    assert max(moved, key=moved.get) == answer


def test_deterministic_and_disjoint_splits(tmp_path):
    a = make_suite(tmp_path / "a", split="test", num_samples=6, num_frames=8)
    b = make_suite(tmp_path / "b", split="test", num_samples=6, num_frames=8)
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert (tmp_path / "a/videos/test-00003.mp4").read_bytes() == (tmp_path / "b/videos/test-00003.mp4").read_bytes()
    train = make_suite(tmp_path / "t", split="train", num_samples=6, num_frames=8)
    assert all("<video>" in s["conversations"][0]["value"] for s in json.loads(train.read_text()))
    first_train = TASKS["color"](8, 32, _rng("train", 0, 0))[0]
    first_test = TASKS["color"](8, 32, _rng("test", 0, 0))[0]
    assert not np.array_equal(first_train, first_test)  # different seed spaces
    _, items, problems = load_benchmark("synthetic", tmp_path / "a")
    assert len(items) == 6 and not problems and {it.task for it in items} == set(TASKS)
    with pytest.raises(ValueError, match="unknown synth task"):
        make_suite(tmp_path / "x", tasks=("juggling",))
