"""Video decoding and frame sampling on PyAV (FFmpeg bundled: no system install).

``sample_frames`` picks frames by index over the clip (uniform N, the paper's setting) or by time
(fps with a cap, what LLaVA-Video / Qwen2.5-VL users expect), then decodes only what it needs:

1. **Index.** One demux pass (no decoding) lists every packet's presentation time and keyframe
   flag. It is exact for variable frame rates and B-frames, and costs microseconds per frame.
2. **Plan.** For each target, the keyframe at or before it must be decoded first. Decoding once
   in order costs ``last_target - first_keyframe`` frames; seeking costs, per group of targets
   that share a keyframe, ``last_target_in_group - keyframe`` frames plus a seek. The cheaper
   plan wins: sparse targets in a long video seek; dense targets, or a file with a single
   keyframe, decode once in order.
3. **Decode.** Only kept frames are converted to RGB (conversion costs about as much as decoding).

Frame *i* of a clip is the *i*-th frame in presentation order, i.e. exactly what a full decode
yields at index *i* (tested). Rotation metadata (display matrix) is applied.

More frames asked than the clip has: by default every frame is returned once (``on_short="all"``,
so ``len(clip) < num_frames``); ``"repeat"`` repeats frames to return exactly ``num_frames``;
``"error"`` raises :class:`NotEnoughFramesError`.

**Bounds.** A clip holds at most ``MAX_FRAMES`` (4096) frames: ``num_frames`` and ``max_frames``
above it are refused (``ValueError`` naming the parameter), and sampling every frame or by ``fps``
is capped there (uniformly). ``fps`` is at most ``MAX_FPS`` (240). Frames larger than
``MAX_SIDE`` px a side or ``MAX_PIXELS`` in all are refused before they are converted.

**Hostile files.** Only real media demuxers (``VIDEO_DEMUXERS``: mp4/mov, mkv/webm, avi, gif, ...)
and FFmpeg's ``file`` protocol may be used. Formats that make FFmpeg open *other* files or URLs
(concat playlists, HLS/DASH manifests, image-sequence patterns) and text formats (FFmpeg reads
any text as a ``tty`` "video") are refused, so a file under a media root cannot read outside it.
Whatever the bytes, :func:`sample_frames` returns frames or raises a :class:`VideoError` with one
line naming the file (fuzzed in ``benchmarks/video_fuzz.py``).
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .limits import MAX_FPS, MAX_FRAMES, MAX_PIXELS, MAX_SIDE

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_FPS",
    "MAX_FRAMES",
    "VIDEO_DEMUXERS",
    "CorruptVideoError",
    "EmptyVideoError",
    "NoVideoStreamError",
    "NotEnoughFramesError",
    "VideoClip",
    "VideoError",
    "VideoNotFoundError",
    "VideoTooLargeError",
    "load_image",
    "sample_frames",
    "uniform_positions",
    "write_video",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# FFmpeg demuxers a video may be read with (AVFormatContext.format_whitelist; a demuxer named
# "mov,mp4,m4a,3gp,3g2,mj2" matches any of its names). Left out on purpose: concat, hls, dash,
# image2 (patterns), tee, segment and other demuxers that open further files or URLs; tty, srt and
# other text formats (no video); raw codecs that need parameters (rawvideo).
VIDEO_DEMUXERS = (
    "mov",  # .mp4 .m4v .mov .3gp
    "matroska",  # .mkv .webm
    "avi",
    "gif",
    "flv",
    "mpegts",  # .ts .m2ts
    "mpeg",  # .mpg .vob
    "asf",  # .wmv
    "ogg",  # .ogv
    "nut",
    "mxf",
    "ivf",  # raw VP8/VP9/AV1
    "h264",
    "hevc",
    "m4v",  # raw MPEG-4 part 2
    "mpegvideo",  # raw MPEG-1/2
    "mjpeg",
    "apng",
    "yuv4mpegpipe",  # .y4m
)
SEEK_COST_FRAMES = 8  # a seek + decoder flush costs about as much as decoding this many frames
OnShort = Literal["all", "repeat", "error"]
Progress = Callable[[int, int], None]


class VideoError(Exception):
    """Any problem reading a video or image; the message names the file and the problem."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    pass


class EmptyVideoError(VideoError):
    pass


class CorruptVideoError(VideoError):
    """Not a readable media file, truncated, or without a decodable frame."""


class NoVideoStreamError(VideoError):
    pass


class VideoTooLargeError(VideoError):
    pass


class NotEnoughFramesError(VideoError):
    pass


@dataclass
class VideoClip:
    """Frames sampled from one file.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB, rotation applied.
        timestamps: ``(T,)`` presentation time of each frame in seconds, from the clip start.
        indices: ``(T,)`` index of each frame among all frames of the file, in display order.
        fps: average frame rate of the stream (frames / duration for variable rates).
        duration: seconds covered by the stream.
        size: ``(height, width)`` of the returned frames.
        num_source_frames: frames in the whole stream.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    fps: float
    duration: float
    size: tuple[int, int]
    num_source_frames: int
    path: str = ""
    decoded_frames: int = field(default=0, repr=False)  # frames the plan decoded (cost measure)
    is_image: bool = False

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class _StreamIndex:
    """Presentation times (stream time base) and keyframe flags of every frame, display order."""

    pts: np.ndarray  # (n,) int64, sorted
    keyframe: np.ndarray  # (n,) bool
    time_base: float
    start: int  # pts of the first frame

    def seconds(self, idx: np.ndarray | None = None) -> np.ndarray:
        pts = self.pts if idx is None else self.pts[idx]
        return (pts - self.start) * self.time_base


def _open(path: Path):
    """Open ``path`` for reading with only ``VIDEO_DEMUXERS`` and the ``file`` protocol (module doc)."""
    import av

    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise VideoError(f"{path}: is a directory, not a video")  # (frame folders are handled before)
    if path.stat().st_size == 0:
        raise EmptyVideoError(f"{path}: file is empty")
    try:
        container = av.open(
            f"file:{path}",  # the prefix: a name such as "concat:a|b" or "http:x" is a file name, never a protocol
            timeout=10.0,
            container_options={"format_whitelist": ",".join(VIDEO_DEMUXERS), "protocol_whitelist": "file"},
            metadata_errors="replace",  # a tag that is not UTF-8 is not a reason to refuse the video
        )
    except av.error.FFmpegError as err:
        if getattr(err, "errno", None) == errno.EINVAL:  # what FFmpeg answers for a demuxer off the whitelist
            raise CorruptVideoError(
                f"{path}: not a video: FFmpeg reads it as a format refused here (a playlist, text, subtitles or "
                "another non-video format; accepted: mp4, mov, mkv, webm, avi, gif, ...)"
            ) from None
        raise CorruptVideoError(f"{path}: not a video FFmpeg can read, or truncated ({_reason(err)})") from None
    try:
        return container, _video_stream(container, path)
    except BaseException:
        container.close()
        raise


def _video_stream(container, path: Path):
    """The first video stream, checked: a decoder exists, its frame size is within the limits."""
    if not container.streams.video:
        kinds = sorted({str(s.type) for s in container.streams})
        what = f"only {', '.join(kinds)} streams" if kinds else "no streams"
        raise NoVideoStreamError(f"{path}: contains no video stream ({what})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # PyAV has no decoder for the stream's codec id
        raise CorruptVideoError(f"{path}: the video stream's codec is unknown or not supported")
    if not stream.time_base:
        raise CorruptVideoError(f"{path}: the video stream has no time base")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise VideoTooLargeError(f"{path}: frame size {width}x{height} exceeds the limit ({MAX_SIDE} px a side)")
    return stream


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.split(": '")[0].strip() or type(err).__name__


def _build_index(container, stream, path: Path) -> _StreamIndex:
    """Demux once (no decoding) for every frame's pts and keyframe flag."""
    import av

    pts, key = [], []
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:
                continue
            pts.append(stamp)
            key.append(packet.is_keyframe)
    except av.error.FFmpegError as err:
        if not pts:
            raise CorruptVideoError(f"{path}: cannot read any video packet ({_reason(err)})") from None
        # A damaged tail: keep what was readable; the truncation check below decides.
    if not pts:
        raise CorruptVideoError(f"{path}: the video stream has no frames")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    pts_arr = np.asarray(pts, dtype=np.int64)[order]
    key_arr = np.asarray(key, dtype=bool)[order]
    if not key_arr.any():
        key_arr[0] = True  # decoders start anywhere (e.g. intra-refresh streams); treat frame 0 as the entry
    time_base = float(stream.time_base)
    index = _StreamIndex(pts_arr, key_arr, time_base, int(pts_arr[0]))
    _check_truncation(container, stream, index, path)
    return index


def _check_truncation(container, stream, index: _StreamIndex, path: Path) -> None:
    """A file whose readable frames end well before its declared duration was cut off."""
    declared = None
    if stream.duration is not None:
        declared = stream.duration * float(stream.time_base)
    elif container.duration is not None:
        declared = container.duration / 1_000_000
    if not declared or len(index.pts) < 2:
        return
    frame_step = float(np.median(np.diff(index.pts))) * index.time_base
    readable = float(index.seconds()[-1]) + frame_step
    if readable < 0.9 * declared - 1.0:
        raise CorruptVideoError(
            f"{path}: file is truncated: its header declares {declared:.1f} s but readable frames end at "
            f"{readable:.1f} s"
        )


def uniform_positions(n: int, num_frames: int) -> np.ndarray:
    """``num_frames`` positions spread uniformly over ``range(n)``, first and last included."""
    return np.linspace(0, n - 1, num_frames).round().astype(np.int64)


def _select_uniform(candidates: np.ndarray, num_frames: int, on_short: OnShort, path: Path) -> np.ndarray:
    n = len(candidates)
    if num_frames > n:
        if on_short == "error":
            raise NotEnoughFramesError(f"{path}: {num_frames} frames asked but the clip has only {n}")
        if on_short == "all":
            return candidates
    return candidates[uniform_positions(n, num_frames)]


def _select_fps(
    index: _StreamIndex, candidates: np.ndarray, fps: float, t0: float, t1: float, max_frames: int
) -> np.ndarray:
    """The frame on screen at t0, t0 + 1/fps, …; duplicates removed; capped uniformly.

    Computed per frame, not per target time: frame ``i`` is kept when some target falls in
    ``[time_i, time_i+1)`` (the first frame also takes targets before it). So the cost follows the
    frames, not the duration, which a damaged header can make astronomically long.
    """
    times = index.seconds(candidates)
    step = 1.0 / fps
    count = max(0.0, math.ceil((t1 - 1e-9 - t0) / step))  # targets t0 + j * step, j < count: [t0, t1)
    lo = times - 1e-9  # a target at lo or after (and before hi) shows frame i
    lo[0] = -np.inf
    hi = np.append(times[1:] - 1e-9, np.inf)
    j = np.maximum(np.ceil((lo - t0) / step), 0.0)  # the first target at or after lo
    j[t0 + j * step < lo] += 1  # repair a rounding step of the division either way
    back = (j > 0) & (t0 + (j - 1) * step >= lo)
    j[back] -= 1
    chosen = candidates[(j < count) & (t0 + j * step < hi)]
    if len(chosen) == 0:  # a window narrower than the 1e-9 s tolerance: the one frame in it
        chosen = candidates[:1]
    if len(chosen) > max_frames:
        chosen = chosen[uniform_positions(len(chosen), max_frames)]
    return chosen


def _plan(index: _StreamIndex, targets: np.ndarray) -> list[tuple[int, int]]:
    """Decode ranges ``(keyframe_index, last_target_index)``: one range, or one per keyframe group."""
    key_pos = np.flatnonzero(index.keyframe)
    entry = key_pos[np.searchsorted(key_pos, targets, side="right") - 1]  # keyframe before each target
    sequential = [(int(entry[0]), int(targets[-1]))]
    groups: dict[int, int] = {}
    for k, t in zip(entry.tolist(), targets.tolist()):
        groups[k] = max(groups.get(k, t), t)
    seeking = sorted(groups.items())
    cost_seq = sequential[0][1] - sequential[0][0] + 1 + SEEK_COST_FRAMES
    cost_seek = sum(last - k + 1 + SEEK_COST_FRAMES for k, last in seeking)
    return seeking if cost_seek < cost_seq else sequential


def _decode(container, stream, path: Path, index: _StreamIndex, targets: np.ndarray, progress: Progress | None):
    """Decode the planned ranges; convert to RGB only the target frames. Returns (frames, decoded).

    A seek that fails, or lands after a target (an inexact demuxer index), is repaired by one
    in-order pass over a freshly opened file for the frames still missing, so the result is always
    what a full decode gives.
    """
    import av

    wanted = {int(p): i for i, p in enumerate(index.pts[targets])}
    out: list[np.ndarray | None] = [None] * len(targets)
    state = {"decoded": 0, "done": 0}
    size: list[tuple[int, int]] = []  # (width, height) of the first kept frame: every frame gets it

    def run(container, stream, first: int, last: int, seek: bool) -> None:
        if seek:
            container.seek(int(index.pts[first]), stream=stream, backward=True, any_frame=False)
        stop_pts = int(index.pts[last])
        for frame in container.decode(stream):
            stamp = frame.pts if frame.pts is not None else frame.dts
            if stamp is None:
                continue
            state["decoded"] += 1
            slot = wanted.get(int(stamp))
            if slot is not None and out[slot] is None:
                out[slot] = _to_rgb(frame, size, path)
                state["done"] += 1
                if progress is not None:
                    progress(state["done"], len(targets))
            if stamp >= stop_pts:
                break

    try:
        try:  # the index pass left the demuxer at the end: every range starts with a seek
            for first, last in _plan(index, targets):
                run(container, stream, first, last, seek=True)
        except av.error.FFmpegError:
            pass  # repaired below
        missing = [i for i, f in enumerate(out) if f is None]
        if missing:
            container, stream = _open(path)
            try:
                run(container, stream, 0, int(targets[missing[-1]]), seek=False)
            finally:
                container.close()
    except av.error.FFmpegError as err:
        what = "no frame could be decoded" if state["decoded"] == 0 else "decoding failed"
        raise CorruptVideoError(f"{path}: {what} ({_reason(err)}); the video data is corrupt") from None
    missing = [i for i, f in enumerate(out) if f is None]
    if len(missing) == len(targets) and state["decoded"] == 0:
        raise CorruptVideoError(f"{path}: no frame could be decoded; the video data is corrupt")
    if missing:
        t = float(index.seconds(targets[missing[:1]])[0])
        raise CorruptVideoError(
            f"{path}: {len(missing)} of {len(targets)} sampled frames could not be decoded (first at {t:.2f} s); "
            "the file is corrupt or truncated"
        )
    return out, state["decoded"]


def _to_rgb(frame, size: list[tuple[int, int]], path: Path) -> np.ndarray:
    """RGB, rotation applied, at the size of the first kept frame (``size``, set by the first call):
    a stream may change resolution midway (resolution switches, or damage), a clip has one size."""
    if frame.width > MAX_SIDE or frame.height > MAX_SIDE or frame.width * frame.height > MAX_PIXELS:
        raise VideoTooLargeError(f"{path}: a frame of {frame.width}x{frame.height} exceeds the limit")
    if not size:
        size.append((frame.width, frame.height))
    width, height = size[0]
    if (frame.width, frame.height) == (width, height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # display matrix: counter-clockwise degrees
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _sample_frame_folder(
    path: Path,
    num_frames: int | None,
    max_frames: int | None,
    start: float | None,
    end: float | None,
    on_short: OnShort,
    fps: float,
) -> VideoClip:
    """A folder of frame images (e.g. MVBench's TVQA frames at 3 fps), sampled like a video."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CorruptVideoError(f"{path}: a folder without frame images")
    times = np.arange(len(files)) / fps
    duration = len(files) / fps
    t0 = 0.0 if start is None else float(start)
    t1 = duration if end is None else float(end)
    candidates = np.flatnonzero((times >= t0 - 1e-9) & (times < t1 - 1e-9))
    if len(candidates) == 0:
        raise VideoError(f"{path}: no frame lies in the window {t0:.2f}-{t1:.2f} s")
    want = num_frames if num_frames is not None else min(max_frames or MAX_FRAMES, len(candidates))
    chosen = _select_uniform(candidates, want, on_short, path)
    frames = np.stack([load_image(files[i]).frames[0] for i in chosen])
    return VideoClip(
        frames, times[chosen], chosen, fps, duration, frames.shape[1:3], len(files), str(path), len(chosen)
    )


def load_image(path: str | Path) -> VideoClip:
    """An image file as a one-frame clip (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise EmptyVideoError(f"{path}: file is empty")
    try:
        with Image.open(path) as im:
            if im.width > MAX_SIDE or im.height > MAX_SIDE or im.width * im.height > MAX_PIXELS:
                raise VideoTooLargeError(f"{path}: image size {im.width}x{im.height} exceeds the limit")
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise CorruptVideoError(f"{path}: not an image PIL can read ({err})") from None
    h, w = rgb.shape[:2]
    return VideoClip(rgb[None], np.zeros(1), np.zeros(1, np.int64), 0.0, 0.0, (h, w), 1, str(path), 1, is_image=True)


def _frame_step(times: np.ndarray, stream) -> float:
    """How long one frame lasts: the median gap between frames, or for a one-frame video the stream's
    nominal rate (a still GIF has none: 1/25 s), so that a single frame still spans a window."""
    if len(times) > 1:
        return float(np.median(np.diff(times)))
    rate = float(stream.average_rate or 0) or float(stream.guessed_rate or 0)
    return 1.0 / rate if rate > 0 else 0.04


def _check_args(num_frames: int | None, fps: float | None, max_frames: int | None) -> None:
    """Refuse requests beyond the module's bounds, naming the parameter (before any file is read)."""
    if num_frames is not None and fps is not None:
        raise ValueError("give num_frames or fps, not both")
    for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value is not None and not 1 <= value <= MAX_FRAMES:
            raise ValueError(f"{name} must be from 1 to {MAX_FRAMES} (MAX_FRAMES), got {value}")
    if fps is not None and not (0 < fps <= MAX_FPS):  # (NaN fails too)
        raise ValueError(f"fps must be a number above 0 and at most {MAX_FPS:g} (MAX_FPS), got {fps}")


def sample_frames(
    path: str | Path,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    on_short: OnShort = "all",
    progress: Progress | None = None,
    frame_fps: float = 1.0,
) -> VideoClip:
    """Sample frames from a video, a folder of frame images, or an image (a one-frame clip).

    Args:
        num_frames: N frames uniformly over the clip (first and last included), 1 to ``MAX_FRAMES``.
        fps: instead, one frame every 1/fps seconds (at most ``MAX_FPS``), capped at ``max_frames``
            (uniformly). With neither, every frame, capped at ``max_frames``. ``max_frames``
            defaults to ``MAX_FRAMES``, and may be 1 to ``MAX_FRAMES``.
        start, end: optional window ``[start, end)`` in seconds from the start of the stream.
        on_short: what to do when ``num_frames`` exceeds the frames available (module doc).
        progress: called as ``progress(done, total)`` after each kept frame.
        frame_fps: the rate of a folder of frame images (sorted by name), for ``start``/``end``.

    Raises:
        VideoError: with a one-line message, for any file that cannot give the frames.
        ValueError: for arguments beyond the bounds above, naming the parameter.
    """
    import av

    path = Path(path)
    _check_args(num_frames, fps, max_frames)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path)
    if path.is_dir():
        return _sample_frame_folder(path, num_frames, max_frames, start, end, on_short, frame_fps)
    cap = MAX_FRAMES if max_frames is None else max_frames

    container, stream = _open(path)
    try:
        index = _build_index(container, stream, path)
        times = index.seconds()
        duration = float(times[-1] + _frame_step(times, stream))
        t0 = 0.0 if start is None else float(start)
        t1 = duration if end is None else float(end)
        if not (0 <= t0 < duration and t0 < t1):  # (also refuses NaN)
            raise VideoError(f"{path}: window start={start} end={end} is outside the video (0 to {duration:.2f} s)")
        candidates = np.flatnonzero((times >= t0 - 1e-9) & (times < t1 - 1e-9))  # [t0, t1)
        if len(candidates) == 0:
            raise VideoError(f"{path}: no frame lies in the window {t0:.2f}-{t1:.2f} s")
        if num_frames is not None:
            chosen = _select_uniform(candidates, num_frames, on_short, path)
        elif fps is not None:
            chosen = _select_fps(index, candidates, fps, t0, t1, cap)
        else:
            chosen = _select_uniform(candidates, min(cap, len(candidates)), "all", path)
        unique, inverse = np.unique(chosen, return_inverse=True)  # "repeat" may list a frame twice
        frames, decoded = _decode(container, stream, path, index, unique, progress)
        fps_avg = (len(times) / duration) if duration > 0 else float(stream.average_rate or 0)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        # A last guard, on purpose wider than the checks above: FFmpeg errors can surface from any
        # PyAV call on a damaged file (stream properties, seek, close), and PyAV decodes strings
        # it finds there (codec and tag names) as strict UTF-8. Both mean the file is damaged, and
        # the promise is one VideoError naming the file, never a PyAV exception.
        raise CorruptVideoError(f"{path}: the file is damaged ({type(err).__name__}: {_reason(err)})") from None
    finally:
        container.close()
    stacked = np.stack(frames)[inverse]
    return VideoClip(
        frames=stacked,
        timestamps=index.seconds(chosen),
        indices=chosen,
        fps=fps_avg,
        duration=duration,
        size=(int(stacked.shape[1]), int(stacked.shape[2])),
        num_source_frames=len(times),
        path=str(path),
        decoded_frames=decoded,
    )


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25.0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    pts: np.ndarray | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 frames to a file, atomically (temp file, then rename).

    Args:
        fps: nominal frame rate (a float such as 29.97 is stored as the exact fraction 30000/1001).
        gop: keyframe interval in frames (``None``: the encoder's default).
        pts: optional presentation times in seconds per frame, for variable frame rate files.
        rotation: optional display-matrix rotation in degrees (counter-clockwise), as phones write.
        options, container_options: encoder / muxer options (e.g. ``{"movflags": "+faststart"}``).
    """
    import os
    import tempfile
    from fractions import Fraction

    import av

    path = Path(path)
    rate = Fraction(30000, 1001) if abs(fps - 29.97) < 1e-3 else Fraction(fps).limit_denominator(1001)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w", format=_format_for(path), options=container_options or {}) as container:
            stream = container.add_stream(codec, rate=rate)
            assert isinstance(stream, av.VideoStream), f"{codec} is not a video codec"
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
            opts: dict[str, object] = dict(options or {})
            if gop is not None:
                stream.codec_context.gop_size = gop
                if codec in ("libx264", "libx265"):
                    opts.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
            stream.options = opts
            if pts is not None:
                stream.codec_context.time_base = Fraction(1, 1000)
            if rotation:
                stream.set_display_rotation(rotation)
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if pts is not None:
                    frame.pts, frame.time_base = round(float(pts[i]) * 1000), Fraction(1, 1000)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _format_for(path: Path) -> str:
    """FFmpeg muxer for a file suffix (the temp file's suffix is the same, but be explicit)."""
    return {
        ".mp4": "mp4",
        ".m4v": "mp4",
        ".mov": "mov",
        ".mkv": "matroska",
        ".webm": "webm",
        ".avi": "avi",
        ".gif": "gif",
        ".ts": "mpegts",
        ".mpg": "mpeg",
    }.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
