"""The ``storm`` video loader for vLLM: video bytes decoded by :func:`storm_vlm.video.sample_frames`.

vLLM's default loader (OpenCV) samples and converts frames its own way; this one gives the frames
``storm-vlm ask`` / ``storm-vlm serve`` give for the same file and frame options, so an answer
does not depend on the server. Select it with ``--media-io-kwargs '{"video": {"video_backend":
"storm"}}'``; ``num_frames`` / ``fps`` there (or per request in ``media_io_kwargs``) choose frames.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["LOADER_NAME", "load_video_bytes", "register_loader"]

LOADER_NAME = "storm"


def load_video_bytes(
    data: bytes, num_frames: int = -1, fps: float = -1, max_frames: int | None = None, **_: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(T, H, W, 3)`` uint8 frames and vLLM's metadata dict for one encoded video.

    ``num_frames`` > 0 samples that many uniformly, else ``fps`` > 0 one frame every 1/fps s, else
    every frame (each capped at ``max_frames``). PyAV reads files, so the bytes go to a temporary
    file first. A bad file raises ``ValueError`` (vLLM answers 400), naming the problem.
    """
    from ..video import VideoError, sample_frames

    fd, path = tempfile.mkstemp(suffix=".video")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            clip = sample_frames(
                path,
                num_frames=num_frames if num_frames and num_frames > 0 else None,
                fps=fps if (not num_frames or num_frames <= 0) and fps and fps > 0 else None,
                max_frames=max_frames,
            )
        except VideoError as exc:
            raise ValueError(f"cannot read the video: {exc}") from None
    finally:
        os.unlink(path)
    metadata = {
        "total_num_frames": clip.num_source_frames,
        "fps": clip.fps,
        "duration": clip.duration,
        "video_backend": LOADER_NAME,
        "frames_indices": clip.indices.tolist(),
        "do_sample_frames": False,
    }
    return clip.frames, metadata


def register_loader() -> None:
    """Add the loader to vLLM's registry under :data:`LOADER_NAME` (once)."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

    if LOADER_NAME in VIDEO_LOADER_REGISTRY.name2class:
        return

    class StormVideoLoader(VideoLoader):
        """vLLM's loader interface over :func:`load_video_bytes`."""

        @classmethod
        def load_bytes(cls, data: bytes, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
            return load_video_bytes(data, **kwargs)

    VIDEO_LOADER_REGISTRY.register(LOADER_NAME)(StormVideoLoader)
