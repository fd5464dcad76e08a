"""The synthetic task suite: answers readable from the pixels, what each task loses, balance, splits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from storm_vlm.eval import load_benchmark
from storm_vlm.repro import received_slots, sampled_indices
from storm_vlm.synth import COLORS, TASKS, _rng, answerable, make_sample, make_suite


def present(frames: np.ndarray, color: str) -> list[bool]:
    target = np.array(COLORS[color])
    return [bool((np.abs(f.astype(int) - target).sum(-1) < 40).sum() > 10) for f in frames]


def colored_frames(frames: np.ndarray) -> list[int]:
    return [t for t, f in enumerate(frames) if any(present(f[None], c)[0] for c in COLORS)]


@pytest.mark.parametrize("index", range(12))
def test_answers_are_in_the_pixels_and_events_are_one_frame(index):
    x = make_sample("needle", "check", 0, index, 16)
    assert colored_frames(x.frames) == x.events and present(x.frames[x.events[0]][None], x.answer)[0]
    x = make_sample("order", "check", 1, index, 16)
    first, second = x.events
    assert colored_frames(x.frames) == [first, second] and second == first + 1 and first // 4 == second // 4
    assert present(x.frames[first][None], x.answer)[0] and not present(x.frames[second][None], x.answer)[0]
    x = make_sample("count", "check", 2, index, 16)
    flashes = colored_frames(x.frames)
    assert flashes == x.events and len(flashes) == int(x.answer) and all(np.diff(flashes) >= 2)
    x = make_sample("color", "check", 3, index, 16)
    assert all(present(x.frames, x.answer))


def test_what_each_task_loses():
    """needle / count die with sampling, order with pooling; the share is computed from the events."""
    needle = make_sample("needle", "check", 0, 0, 16)
    needle.events = [5]
    assert answerable(needle, received_slots(range(16), 1, 1))
    assert not answerable(needle, received_slots(range(16), 1, 2))  # frame 5 dropped by s = 2
    assert answerable(needle, received_slots(range(16), 4, 1))  # inside a pooled window
    order = make_sample("order", "check", 0, 0, 16)
    order.events = [4, 5]
    assert answerable(order, received_slots(range(16), 1, 1))
    assert not answerable(order, received_slots(range(16), 4, 1))  # one window: its mean has no order
    assert not answerable(order, received_slots(sampled_indices(16, 8), 1, 1))  # 8 raw frames miss one of them
    count = make_sample("count", "check", 0, 0, 16)
    count.events = [1, 3, 9]
    assert answerable(count, received_slots(range(16), 4, 1))  # a mean keeps the count
    assert not answerable(count, received_slots(range(16), 1, 2))
    assert received_slots(sampled_indices(16, 8), 1, 1) == [
        [0],
        [2],
        [4],
        [6],
        [9],
        [11],
        [13],
        [15],
    ]  # sample_frames' picks


def test_test_answers_are_balanced_and_blind_guessing_is_chance():
    for task in TASKS:
        items = [make_sample(task, "test", 0, i, 16, balanced=True) for i in range(40)]
        assert len({x.question for x in items}) == 1
        assert set(Counter(x.answer for x in items).values()) == {10}  # exactly balanced
        train = Counter(make_sample(task, "train", 0, i, 16).answer for i in range(400))
        assert set(train) == set(items[0].options) and max(train.values()) < 0.32 * 400


def test_suite_answers_are_balanced_per_task(tmp_path):
    items = json.loads(make_suite(tmp_path / "s", split="test", num_samples=32, num_frames=8).read_text())
    for task in TASKS:
        mine = [it for it in items if it["task"] == task]
        answers = Counter(it["options"]["ABCD".index(it["answer"])] for it in mine)
        assert len(answers) == 4 and set(answers.values()) == {2}, (task, answers)


def test_deterministic_and_disjoint_splits(tmp_path):
    a = make_suite(tmp_path / "a", split="test", num_samples=8, num_frames=8)
    b = make_suite(tmp_path / "b", split="test", num_samples=8, num_frames=8)
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert (tmp_path / "a/videos/test-00003.mp4").read_bytes() == (tmp_path / "b/videos/test-00003.mp4").read_bytes()
    train = make_suite(tmp_path / "t", split="train", num_samples=8, num_frames=8)
    assert all("<video>" in s["conversations"][0]["value"] for s in json.loads(train.read_text()))
    first_train = TASKS["color"](8, 32, _rng("train", 0, 0), None).frames
    first_test = TASKS["color"](8, 32, _rng("test", 0, 0), None).frames
    assert not np.array_equal(first_train, first_test)  # different seed spaces
    _, items, problems = load_benchmark("synthetic", tmp_path / "a")
    assert len(items) == 8 and not problems and {it.task for it in items} == set(TASKS)
    with pytest.raises(ValueError, match="unknown or no synth task"):
        make_suite(tmp_path / "x", tasks=("juggling",))
