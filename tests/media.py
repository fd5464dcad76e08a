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


def make_size_switch(path: Path, sizes: tuple[tuple[int, int], ...] = ((32, 32), (48, 64)), per_size: int = 4) -> Path:
    """An MJPEG AVI whose frames change size midway ((height, width) per group), as resolution
    switches do: the packets of encoders of each size are muxed into one stream."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.height, stream.width = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for g, (height, width) in enumerate(sizes):
            encoder = av.CodecContext.create("mjpeg", "w")
            encoder.height, encoder.width, encoder.pix_fmt = height, width, "yuvj420p"
            encoder.time_base = Fraction(1, 10)
            for i in range(g * per_size, (g + 1) * per_size):
                image = np.full((height, width, 3), i * 30 % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
                frame.pts, frame.time_base = i, Fraction(1, 10)
                for packet in [*encoder.encode(frame), *(encoder.encode() if i == (g + 1) * per_size - 1 else [])]:
                    packet.stream, packet.time_base = stream, Fraction(1, 10)
                    packet.pts = packet.dts = i
                    container.mux(packet)
    return path
