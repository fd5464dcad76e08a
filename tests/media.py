"""Test media made on the fly with PyAV, and a plain full decode to compare against."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from storm_vlm.video import write_video


def pattern(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frames that differ from each other (a moving bar over noise), so index errors show."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        x = (t * 3) % max(width - 4, 1)
        frames[t, :, x : x + 4] = (255, (t * 37) % 256, 0)
    return frames


def make(path: Path, num_frames: int = 24, height: int = 48, width: int = 64, **kwargs) -> Path:
    return write_video(path, pattern(num_frames, height, width), **kwargs)


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame in presentation order, rotation applied: the ground truth for sampling."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            rgb = frame.to_ndarray(format="rgb24")
            turns = round((frame.rotation or 0) / 90) % 4
            out.append(np.rot90(rgb, turns) if turns else rgb)
    return out
