"""Where request media may come from: files under the media root, or ``data:`` URLs. Nothing else.

Paths are resolved (symlinks included) and must stay inside the media root; remote URLs are
refused (the server fetches nothing); uploads are size-limited and written to a private temporary
file that is removed after use.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..video import Progress, VideoClip, VideoError, sample_frames

__all__ = ["MediaError", "is_utf8", "load_clip", "resolve_media"]

_SUFFIX = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "image/gif": ".gif",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
}


class MediaError(Exception):
    """A media reference the server refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def resolve_media(url: str, media_root: Path | None, max_bytes: int) -> Iterator[Path]:
    """Yield a local path for ``url`` (a path under ``media_root``, ``file://`` path or ``data:`` URL)."""
    if not isinstance(url, str) or not url:
        raise MediaError("media url must be a non-empty string")
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://", "ftp://", "rtsp://", "rtmp://")):
        raise MediaError("remote URLs are not fetched (this server has no network access); put the file under "
                         "--media-root and pass its relative path, or send a data: URL")  # fmt: skip
    if lowered.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise MediaError("data: URLs must be base64 encoded (data:video/mp4;base64,...)")
        mime = header[5:].split(";")[0].strip().lower()
        if mime not in _SUFFIX:
            raise MediaError(f"unsupported media type {mime!r} (supported: {', '.join(sorted(_SUFFIX))})", 415)
        if len(payload) * 3 // 4 > max_bytes:
            raise MediaError(f"upload larger than the limit of {max_bytes // 2**20} MiB", 413)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("data: URL payload is not valid base64") from None
        fd, tmp = tempfile.mkstemp(prefix="storm-upload-", suffix=_SUFFIX[mime])
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    if media_root is None:
        raise MediaError("file paths are disabled: start the server with --media-root DIR", 403)
    raw = url[7:] if lowered.startswith("file://") else url
    _check_path_text(raw)
    root = media_root.resolve()
    candidate = Path(raw)
    try:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()  # follows symlinks
        inside = path == root or root in path.parents
        exists = inside and path.is_file()
    except (OSError, RuntimeError, ValueError):  # a name too long, a symlink loop
        raise MediaError("media path cannot be resolved (too long, or a symlink loop)") from None
    if not inside:
        raise MediaError("path is outside the media root", 403)
    if not exists:
        raise MediaError(f"no such file under the media root: {raw[:200]}", 404)
    yield path


MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
MAX_PATH_PARTS = 256


def is_utf8(text: str) -> bool:
    """False for lone surrogates: undecodable file names, or "\\ud800" sent in JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_path_text(raw: str) -> None:
    """Refuse path text no file system could hold, before it reaches one (400, not a crash)."""
    if "\0" in raw:
        raise MediaError("media path contains a null character")
    if not is_utf8(raw):
        raise MediaError("media path is not valid Unicode (a lone surrogate)")
    if len(raw) > MAX_PATH_CHARS:
        raise MediaError(f"media path is {len(raw)} characters; the limit is {MAX_PATH_CHARS}")
    if raw.count("/") >= MAX_PATH_PARTS:
        raise MediaError(f"media path has more than {MAX_PATH_PARTS} parts")


def load_clip(url: str, media_root: Path | None, max_bytes: int, progress: Progress, **sampling: Any) -> VideoClip:
    """The frames of a request's media (``sample_frames`` options in ``sampling``).

    Any problem is a :class:`MediaError`; a video error names the media as the client gave it
    (the relative path, or "the upload"), never the server's path.
    """
    name = "the upload" if url[:5].lower() == "data:" else url[:200]
    with resolve_media(url, media_root, max_bytes) as path:
        try:
            return sample_frames(path, progress=progress, **sampling)
        except VideoError as err:
            raise MediaError(str(err).replace(str(path), name)) from None
