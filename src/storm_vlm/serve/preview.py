"""Small JPEG previews of the frames a request sampled, so a client can see what the model saw."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..video import VideoClip

__all__ = ["frame_previews"]


def frame_previews(clip: VideoClip, count: int, height: int = 96) -> list[dict[str, float | str]]:
    """Up to ``count`` frames, evenly spread over the sampled ones, as ``{"t": seconds, "image":
    "data:image/jpeg;base64,..."}`` scaled to ``height`` pixels (aspect kept)."""
    if count <= 0 or len(clip) == 0:
        return []
    picks = np.unique(np.linspace(0, len(clip) - 1, min(count, len(clip))).round().astype(int))
    previews: list[dict[str, float | str]] = []
    for i in picks:
        frame = Image.fromarray(clip.frames[i])
        width = max(1, round(frame.width * height / frame.height))
        buffer = io.BytesIO()
        frame.resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=80)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        previews.append({"t": round(float(clip.timestamps[i]), 3), "image": f"data:image/jpeg;base64,{encoded}"})
    return previews
