"""The server's settings, in one place (the CLI fills them from its options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..limits import MAX_FRAMES

__all__ = ["ServerConfig"]


@dataclass
class ServerConfig:
    media_root: Path | None = None
    max_frames: int = 128
    default_frames: int = 32
    max_upload_mb: int = 64
    max_queue: int = 8
    request_timeout_s: float = 120.0
    max_new_tokens: int = 512
    max_streams: int = 8
    stream_idle_s: float = 300.0
    stream_window: int = 256  # reduced frames kept per stream
    read_timeout_s: float = 60.0  # headers and body of one request (uvicorn; see serve.limits)
    max_question_chars: int = 200_000  # refused before tokenising; the context check comes after

    def __post_init__(self) -> None:
        if not 1 <= self.max_frames <= MAX_FRAMES:
            raise ValueError(f"max_frames must be from 1 to {MAX_FRAMES} (limits.MAX_FRAMES), got {self.max_frames}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: one upload, base64-encoded (4/3), plus 1 MiB of JSON."""
        return self.max_upload_mb * 2**20 * 4 // 3 + 2**20
