"""Generated video QA whose answers need the video — and, for most tasks, the whole clip.

    from storm_vlm.synth import make_suite
    make_suite("data/synth-train", split="train", num_samples=512)   # LLaVA-style train.json
    make_suite("data/synth-test", split="test", num_samples=200)     # multiple-choice eval.json

Coloured squares on a grey, slightly noisy background; every clip is written as a real mp4
through PyAV, deterministically from (split, seed, index). Train and test draw from disjoint seed
spaces, so no test clip is a training clip. Tasks:

=============  ==========================================================  ===================
task           what the clip shows                                          needs
=============  ==========================================================  ===================
color          one square crossing the frame                                any frame
direction      one square moving left / right / up / down                   frame order
order          three squares appearing one after another                    frame order
count          a square flashing 1-4 times among distractors                the whole clip
needle         one frame shows a square of a distinct colour                every frame
duration       two squares, one visible for longer                          the whole clip
=============  ==========================================================  ===================

Training samples carry free-form answers ("red"); evaluation samples are multiple choice A-D in
the MVBench style (``storm-vlm eval --benchmark synthetic --data-root DIR``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .video import write_video

__all__ = ["COLORS", "DIRECTIONS", "TASKS", "make_motion_qa", "make_suite", "motion_clip"]

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")
Sample = tuple[np.ndarray, str, str, list[str]]  # frames, question, answer, the four options


def _canvas(num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    frames = np.full((num_frames, size, size, 3), 110, dtype=np.uint8)
    frames += rng.integers(0, 10, frames.shape, dtype=np.uint8)
    return frames


def _place(frame: np.ndarray, y: int, x: int, side: int, color: str) -> None:
    frame[y : y + side, x : x + side] = COLORS[color]


def motion_clip(color: str, direction: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, size, size, 3)`` uint8: a square of ``color`` crossing the frame toward ``direction``."""
    frames = _canvas(num_frames, size, rng)
    side = max(size // 4, 2)
    travel = size - side
    lane = int(rng.integers(0, travel + 1))
    for t in range(num_frames):
        pos = round(travel * t / max(num_frames - 1, 1))
        if direction in ("left", "up"):
            pos = travel - pos
        y, x = (lane, pos) if direction in ("left", "right") else (pos, lane)
        _place(frames[t], y, x, side, color)
    return frames


def _spot(size: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))


def _task_color(t: int, size: int, rng: np.random.Generator) -> Sample:
    color = str(rng.choice(list(COLORS)))
    frames = motion_clip(color, str(rng.choice(DIRECTIONS)), t, size, rng)
    return frames, "What colour is the square?", color, list(COLORS)


def _task_direction(t: int, size: int, rng: np.random.Generator) -> Sample:
    direction = str(rng.choice(DIRECTIONS))
    frames = motion_clip(str(rng.choice(list(COLORS))), direction, t, size, rng)
    return frames, "Which way does the square move?", direction, list(DIRECTIONS)


def _task_order(t: int, size: int, rng: np.random.Generator) -> Sample:
    colors = [str(c) for c in rng.permutation(list(COLORS))[:3]]
    frames = _canvas(t, size, rng)
    side = max(size // 4, 2)
    for i, color in enumerate(colors):  # thirds of the clip, one square each
        y, x = _spot(size, side, rng)
        for k in range(i * t // 3, (i + 1) * t // 3):
            _place(frames[k], y, x, side, color)
    which = str(rng.choice(["first", "last"]))
    answer = colors[0] if which == "first" else colors[-1]
    return frames, f"Which colour of square appeared {which}?", answer, list(COLORS)


def _task_count(t: int, size: int, rng: np.random.Generator) -> Sample:
    color, distractor = (str(c) for c in rng.permutation(list(COLORS))[:2])
    count = int(rng.integers(1, 5))
    frames = _canvas(t, size, rng)
    side = max(size // 4, 2)
    y, x = _spot(size, side, rng)
    for k in range(1, t, 3):  # a distractor blinking throughout (drawn first: it never hides the target)
        _place(frames[k], y, x, side, distractor)
    slot = max(t // 4, 2)  # four slots; an appearance fills the first half of a chosen slot
    for s in sorted(int(v) for v in rng.choice(4, size=count, replace=False)):
        y, x = _spot(size, side, rng)
        for k in range(s * slot, min(s * slot + slot // 2, t)):
            _place(frames[k], y, x, side, color)
    return frames, f"How many times did the {color} square appear?", str(count), ["1", "2", "3", "4"]


def _task_needle(t: int, size: int, rng: np.random.Generator) -> Sample:
    colors = [str(c) for c in rng.permutation(list(COLORS))]
    background, needle = colors[0], colors[1]
    frames = motion_clip(background, str(rng.choice(DIRECTIONS)), t, size, rng)
    side = max(size // 4, 2)
    k = int(rng.integers(0, t))
    y, x = _spot(size, side, rng)
    _place(frames[k], y, x, side, needle)
    return (
        frames,
        f"Besides the {background} square, one frame shows a square of another colour. Which?",
        needle,
        [c for c in COLORS if c != background] + [background],
    )


def _task_duration(t: int, size: int, rng: np.random.Generator) -> Sample:
    a, b = (str(c) for c in rng.permutation(list(COLORS))[:2])
    long_, short = int(rng.integers(t // 2, t + 1)), int(rng.integers(1, max(t // 4, 2)))
    frames = _canvas(t, size, rng)
    side = max(size // 4, 2)
    for color, length in ((a, long_), (b, short)):
        y, x = _spot(size, side, rng)
        start = int(rng.integers(0, t - length + 1))
        for k in range(start, start + length):
            _place(frames[k], y, x, side, color)
    options = [a, b] + [c for c in COLORS if c not in (a, b)]
    return frames, f"Which square stayed on screen longer, the {a} one or the {b} one?", a, options


TASKS: dict[str, Callable[[int, int, np.random.Generator], Sample]] = {
    "color": _task_color,
    "direction": _task_direction,
    "order": _task_order,
    "count": _task_count,
    "needle": _task_needle,
    "duration": _task_duration,
}


def _rng(split: str, seed: int, index: int) -> np.random.Generator:
    """Disjoint seed spaces per split: the split name is part of the seed."""
    return np.random.default_rng([zlib.crc32(split.encode()), seed, index])


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

    Samples cycle through ``tasks``. Returns the JSON path.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown synth task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    train, evaluation = [], []
    for i in range(num_samples):
        task = tasks[i % len(tasks)]
        rng = _rng(split, seed, i)
        frames, question, answer, options = TASKS[task](num_frames, size, rng)
        name = f"videos/{split}-{i:05d}.mp4"
        write_video(out / name, frames, fps=8, pix_fmt="yuv444p")
        order = [options[j] for j in rng.permutation(len(options))]
        letter = "ABCD"[order.index(answer)]
        evaluation.append({"id": f"{split}-{i:05d}", "task": task, "video": name, "question": question,
                           "options": order, "answer": letter})  # fmt: skip
        train.append({"id": f"{split}-{i:05d}", "video": name, "conversations": [
            {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]})  # fmt: skip
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
        unknown = [q for q in questions if q not in answers]
        if unknown:
            raise ValueError(f"unknown question kind {unknown[0]!r} (direction, color)")
        conversations = []
        for k, q in enumerate(questions):
            question, answer = answers[q]
            conversations.append({"from": "human", "value": ("<video>\n" if k == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        samples.append({"id": f"motion-{i:04d}", "video": name, "conversations": conversations})
    path = out / "train.json"
    path.write_text(json.dumps(samples, indent=1))
    return path
