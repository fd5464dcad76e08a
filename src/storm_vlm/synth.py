"""Generated video QA whose answers are lost by dropping or averaging frames, unless a token carries them.

    from storm_vlm.synth import make_suite
    make_suite("data/synth-train", split="train", num_samples=512)   # LLaVA-style train.json
    make_suite("data/synth-test", split="test", num_samples=200)     # multiple-choice eval.json

Coloured squares or whole-frame colour flashes on a grey, slightly noisy background; every clip
is made deterministically from (split, seed, index), and train and test draw from disjoint seed
spaces, so no test clip is a training clip. Every event lasts one frame, so each task tests one way of losing it:

=========  ===========================================  ==========================================
task       what the clip shows                           lost by
=========  ===========================================  ==========================================
color      one square crossing the frame (a control)     nothing: any frame answers it
needle     one frame flashes a colour                     sampling frames (s, or fewer raw frames)
order      two colours flash in consecutive frames,      averaging frames (k): both fall in one
           inside one window of 4 frames                 pooling window, whose mean has no order
count      a colour flashes 1-4 times, one frame each    sampling frames (a mean keeps the count)
=========  ===========================================  ==========================================

The question text of a task never varies and its answer is uniform over four options (exactly
balanced in test splits), so a video-blind model scores 25%. Each sample records the frames of
its events, so :func:`answerable` tells whether the frames a model receives still hold the answer.

Training samples carry free-form answers ("red"); evaluation samples are multiple choice A-D in
the MVBench style (``storm-vlm eval --benchmark synthetic --data-root DIR``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .limits import MAX_FRAMES, MAX_SYNTH_SAMPLES, MAX_SYNTH_SIZE, MIN_SYNTH_SIZE
from .video import write_video

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "MAX_SYNTH_SAMPLES",
    "MAX_SYNTH_SIZE",
    "MIN_SYNTH_SIZE",
    "TASKS",
    "SynthSample",
    "answerable",
    "conversation",
    "make_motion_qa",
    "make_sample",
    "make_suite",
    "motion_clip",
]

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")
WINDOW = 4  # the pooling window the order task's two events share (the paper's k)
MAX_CLIP_BYTES = 1 << 30  # one clip's frames in memory: frames x size x size x 3 bytes


def check_clip_args(num_frames: int, size: int, num_samples: int = 1) -> None:
    """Refuse sizes that cannot make a clip, or would exhaust memory or disk, naming the argument."""
    for name, value, low, high in (
        ("num_samples", num_samples, 1, MAX_SYNTH_SAMPLES),
        ("num_frames", num_frames, 1, MAX_FRAMES),  # (the order and count tasks need more: they say so)
        ("size", size, MIN_SYNTH_SIZE, MAX_SYNTH_SIZE),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"synth {name} must be an integer from {low:,} to {high:,}, got {value!r}")
    if num_frames * size * size * 3 > MAX_CLIP_BYTES:
        raise ValueError(
            f"synth clips of {num_frames} frames of {size}x{size} px would take "
            f"{num_frames * size * size * 3 / 2**30:.1f} GiB each (at most 1 GiB): fewer frames or a smaller size"
        )


@dataclass
class SynthSample:
    """One clip and its question. ``events``: the frames that hold the answer (empty: any frame)."""

    frames: np.ndarray  # (T, size, size, 3) uint8
    question: str
    answer: str
    options: list[str]  # four, the answer among them
    task: str
    events: list[int] = field(default_factory=list)


def _canvas(num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    frames = np.full((num_frames, size, size, 3), 110, dtype=np.uint8)
    frames += rng.integers(0, 10, frames.shape, dtype=np.uint8)
    return frames


def _side(size: int) -> int:
    return max(size // 4, 2)


def _place(frame: np.ndarray, y: int, x: int, side: int, color: str) -> None:
    frame[y : y + side, x : x + side] = COLORS[color]


def _flash(frame: np.ndarray, color: str, rng: np.random.Generator) -> None:
    """The whole frame flashes ``color`` (with the canvas' noise): every token of it sees the event,
    so the tasks test what happens to one frame's tokens over time, not spatial search."""
    frame[:] = np.clip(frame.astype(np.int16) - 110 + np.array(COLORS[color]), 0, 255).astype(np.uint8)


def motion_clip(color: str, direction: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, size, size, 3)`` uint8: a square of ``color`` crossing the frame toward ``direction``."""
    frames = _canvas(num_frames, size, rng)
    side = _side(size)
    travel = size - side
    lane = int(rng.integers(0, travel + 1))
    for t in range(num_frames):
        pos = round(travel * t / max(num_frames - 1, 1))
        if direction in ("left", "up"):
            pos = travel - pos
        y, x = (lane, pos) if direction in ("left", "right") else (pos, lane)
        _place(frames[t], y, x, side, color)
    return frames


def _pick(options: Sequence[str], rng: np.random.Generator, answer: int | None) -> str:
    return options[answer % len(options)] if answer is not None else str(rng.choice(list(options)))


def _task_color(t: int, size: int, rng: np.random.Generator, answer: int | None) -> SynthSample:
    color = _pick(list(COLORS), rng, answer)
    frames = motion_clip(color, str(rng.choice(DIRECTIONS)), t, size, rng)
    return SynthSample(frames, "What colour is the square?", color, list(COLORS), "color")


def _task_needle(t: int, size: int, rng: np.random.Generator, answer: int | None) -> SynthSample:
    color = _pick(list(COLORS), rng, answer)
    frames = _canvas(t, size, rng)
    k = int(rng.integers(0, t))
    _flash(frames[k], color, rng)
    return SynthSample(frames, "One frame flashes a colour. Which colour?", color, list(COLORS),
                       "needle", [k])  # fmt: skip


def _task_order(t: int, size: int, rng: np.random.Generator, answer: int | None) -> SynthSample:
    if t < 2:
        raise ValueError("the order task needs at least 2 frames")
    first = _pick(list(COLORS), rng, answer)
    second = str(rng.choice([c for c in COLORS if c != first]))
    window = int(rng.integers(0, max(t // WINDOW, 1)))
    span = min(WINDOW, t - window * WINDOW)  # frames of that window inside the clip
    k = window * WINDOW + int(rng.integers(0, span - 1))  # k and k + 1 share the window
    frames = _canvas(t, size, rng)
    _flash(frames[k], first, rng)
    _flash(frames[k + 1], second, rng)
    return SynthSample(frames, "Two colours flash one after the other. Which came first?", first,
                       list(COLORS), "order", [k, k + 1])  # fmt: skip


def _task_count(t: int, size: int, rng: np.random.Generator, answer: int | None) -> SynthSample:
    counts = ["1", "2", "3", "4"]
    count = int(_pick(counts, rng, answer))
    if t < 2 * count - 1:
        raise ValueError(f"the count task needs at least {2 * count - 1} frames for {count} flashes")
    # `count` frames, no two adjacent: choose among t - count + 1 slots, then spread them apart
    slots = np.sort(rng.choice(t - count + 1, size=count, replace=False)) + np.arange(count)
    color = str(rng.choice(list(COLORS)))
    frames = _canvas(t, size, rng)
    for k in slots:
        _flash(frames[k], color, rng)
    return SynthSample(frames, "How many times does the screen flash?", str(count), counts, "count",
                       [int(k) for k in slots])  # fmt: skip


TASKS: dict[str, Callable[[int, int, np.random.Generator, int | None], SynthSample]] = {
    "color": _task_color,
    "needle": _task_needle,
    "order": _task_order,
    "count": _task_count,
}


def answerable(sample: SynthSample, slots: Sequence[Sequence[int]]) -> bool:
    """Whether the answer is still in what a model receives, with no token carrying anything.

    ``slots``: the frames behind each temporal slot the LLM gets (one frame for raw or sampled
    frames, a window for temporal pooling). A needle must be in a slot; every flash to count
    must be (a mean keeps the count: it is linear); the two order events must be in two
    different slots (the mean of one window has no order).
    """
    where = {f: i for i, slot in enumerate(slots) for f in slot}
    if not sample.events:
        return bool(where)
    if any(e not in where for e in sample.events):
        return False
    if sample.task == "order":
        return where[sample.events[0]] != where[sample.events[1]]
    return True


def _rng(split: str, seed: int, index: int) -> np.random.Generator:
    """Disjoint seed spaces per split: the split name is part of the seed."""
    return np.random.default_rng([zlib.crc32(split.encode()), seed, index])


def conversation(sample: SynthSample) -> list[dict[str, str]]:
    """The LLaVA-style training conversation of a sample: the question, then the free-form answer."""
    return [{"from": "human", "value": f"<video>\n{sample.question}"}, {"from": "gpt", "value": sample.answer}]


def make_sample(
    task: str,
    split: str,
    seed: int,
    index: int,
    num_frames: int = 16,
    size: int = 32,
    balanced: bool = False,
    answer: int | None = None,
) -> SynthSample:
    """Sample ``index`` of a split, deterministically.

    ``answer``: force the answer to that option (index modulo the options); ``balanced`` forces
    option ``index``, so consecutive indices of one task cycle through the options.
    """
    if task not in TASKS:
        raise ValueError(f"unknown synth task {task!r}; choose from {', '.join(TASKS)}")
    check_clip_args(num_frames, size)
    rng = _rng(split, seed, index)
    return TASKS[task](num_frames, size, rng, index if balanced and answer is None else answer)


def make_suite(
    out_dir: str | Path,
    split: str = "train",
    num_samples: int = 64,
    tasks: tuple[str, ...] = tuple(TASKS),
    num_frames: int = 32,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write clips and ``train.json`` (split ``train``) or ``eval.json`` (any other split).

    Samples cycle through ``tasks``; outside ``train`` each task's answers are exactly balanced.
    Evaluation items record their event frames (``events``). Returns the JSON path.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown or no synth task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    check_clip_args(num_frames, size, num_samples)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    train, evaluation = [], []
    # outside train, each task's answers cycle through its options from a start drawn per (seed, task)
    start = {task: int(_rng(split + "/answers", seed, j).integers(0, 1 << 16)) for j, task in enumerate(tasks)}
    for i in range(num_samples):
        task = tasks[i % len(tasks)]
        forced = i // len(tasks) + start[task] if split != "train" else None
        sample = make_sample(task, split, seed, i, num_frames, size, answer=forced)
        name = f"videos/{split}-{i:05d}.mp4"
        write_video(out / name, sample.frames, fps=8, pix_fmt="yuv444p")
        order = [sample.options[j] for j in _rng(split + "/options", seed, i).permutation(len(sample.options))]
        letter = "ABCD"[order.index(sample.answer)]
        evaluation.append({"id": f"{split}-{i:05d}", "task": task, "video": name, "question": sample.question,
                           "options": order, "answer": letter, "events": sample.events})  # fmt: skip
        train.append({"id": f"{split}-{i:05d}", "video": name, "conversations": conversation(sample)})
    path = out / ("train.json" if split == "train" else "eval.json")
    path.write_text(json.dumps(train if split == "train" else evaluation, indent=1))
    return path


def make_motion_qa(
    out_dir: str | Path,
    num_samples: int = 16,
    num_frames: int = 32,
    size: int = 32,
    seed: int = 0,
    questions: tuple[str, ...] = ("direction",),
) -> Path:
    """The small motion set of the tiny recipes: every (direction, colour) pair once per 16 clips.

    Each clip shows one square of one colour moving in one direction; ``questions`` chooses what
    is asked ("direction", "color"). Writes ``train.json``; returns its path.
    """
    unknown = [q for q in questions if q not in ("direction", "color")]
    if unknown or not questions:
        raise ValueError(
            f"unknown or no question kind(s) {', '.join(map(repr, unknown))}; choose from direction, color"
        )
    check_clip_args(num_frames, size, num_samples)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    pairs = [(d, c) for c in COLORS for d in DIRECTIONS]
    for i in range(num_samples):
        direction, color = pairs[i % len(pairs)]
        name = f"videos/clip-{i:04d}.mp4"
        write_video(out / name, motion_clip(color, direction, num_frames, size, rng), fps=8, pix_fmt="yuv444p")
        answers = {
            "direction": ("Which way does the square move?", direction),
            "color": ("What colour is the square?", color),
        }
        conversations = []
        for k, q in enumerate(questions):
            question, answer = answers[q]
            conversations.append({"from": "human", "value": ("<video>\n" if k == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        samples.append({"id": f"motion-{i:04d}", "video": name, "conversations": conversations})
    path = out / "train.json"
    path.write_text(json.dumps(samples, indent=1))
    return path
