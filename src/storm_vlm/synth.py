"""Generated video QA whose answers need the video: a coloured square moving across the frame.

    from storm_vlm.synth import make_motion_qa
    json_path = make_motion_qa("data/tiny", num_samples=16)

Each clip shows one square of a colour (red, green, blue, yellow) moving in one direction (left,
right, up, down) over a grey, slightly noisy background; questions ask for the direction (needs
the order of frames) or the colour. Written as real mp4 files through PyAV plus a LLaVA-style
JSON, deterministically from ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .video import write_video

__all__ = ["COLORS", "DIRECTIONS", "make_motion_qa", "motion_clip"]

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")


def motion_clip(color: str, direction: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, size, size, 3)`` uint8: a square of ``color`` crossing the frame toward ``direction``."""
    frames = np.full((num_frames, size, size, 3), 110, dtype=np.uint8)
    frames += rng.integers(0, 10, frames.shape, dtype=np.uint8)
    side = max(size // 4, 2)
    travel = size - side
    lane = int(rng.integers(0, travel + 1))
    for t in range(num_frames):
        pos = round(travel * t / max(num_frames - 1, 1))
        if direction in ("left", "up"):
            pos = travel - pos
        y, x = (lane, pos) if direction in ("left", "right") else (pos, lane)
        frames[t, y : y + side, x : x + side] = COLORS[color]
    return frames


def make_motion_qa(
    out_dir: str | Path,
    num_samples: int = 16,
    num_frames: int = 32,
    size: int = 32,
    seed: int = 0,
    questions: tuple[str, ...] = ("direction",),
) -> Path:
    """Write ``num_samples`` clips and ``train.json``; returns the JSON path.

    Samples cycle through every (direction, colour) pair, so 16 samples cover each pair once.
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
        turns = []
        for q in questions:
            if q == "direction":
                turns += [("Which way does the square move?", direction)]
            elif q == "color":
                turns += [("What colour is the square?", color)]
            else:
                raise ValueError(f"unknown question kind {q!r} (direction, color)")
        conversations = []
        for k, (question, answer) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<video>\n" if k == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        samples.append({"id": f"motion-{i:04d}", "video": name, "conversations": conversations})
    path = out / "train.json"
    path.write_text(json.dumps(samples, indent=1))
    return path
