"""`StormVideoProcessor`: clips in any common form → resized, normalised ``(T, 3, S, S)`` pixels.

It follows transformers' video processors (``processor.video_processor``, ``videos_kwargs``,
``pixel_values_videos``, ``do_sample_frames`` / ``num_frames`` / ``fps``, saved in
``processor_config.json`` under ``"video_processor"``) but is built on ``VideoProcessorMixin``, not
``BaseVideoProcessor``: that one only adds a torchvision backend, and torchvision has no CPU build
for the torch this project pins. The pixel work is torch (it runs where the frames are, e.g. CUDA):

* **Inputs:** video paths (decoded with :func:`storm_vlm.video.sample_frames`, by ``num_frames`` or
  ``fps``), ``(T, H, W, 3)`` or ``(T, 3, H, W)`` arrays / tensors, lists of PIL images or frames,
  and batches (lists, 5-D arrays) of any of these.
* **Resize** equals Pillow's, which the vision tower's image processor uses: on the CPU the frames
  go through Pillow itself; on other devices through :func:`pil_resize`, a torch port of Pillow's
  fixed-point resampler (equal to the installed Pillow, tested). Float frames are resized with
  torch's antialiased interpolation instead (there is no Pillow result to match).
* **Rescale + normalise** is one lookup table per channel built with the image processor's own
  float arithmetic, so the result is the image processor's bit for bit.

:meth:`StormVideoProcessor.from_image_processor` takes the settings of a SigLIP- or CLIP-style
image processor (fixed size, or shortest edge + centre crop): model directories saved before the
video processor existed load with it.
"""

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
)
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata, make_batched_metadata

from .video import _check_args, sample_frames, uniform_positions

__all__ = ["StormVideoProcessor", "StormVideosKwargs", "image_processor_settings", "pil_resize"]

# Settings an image processor and this video processor share (copied by from_image_processor).
_SHARED_SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)


class StormVideosKwargs(VideosKwargs, total=False):
    """transformers' video kwargs plus ``max_frames``: the cap on frames kept by ``fps`` sampling
    (or by taking every frame) of a file, as in :func:`storm_vlm.video.sample_frames`."""

    max_frames: int | None


class StormVideoProcessor(VideoProcessorMixin):
    """Frames → ``pixel_values_videos``: a list of ``(T_i, 3, S, S)`` float32 tensors (stacked to
    ``(B, T, 3, S, S)`` with ``return_tensors="pt"`` when all clips have one shape).

    The defaults are SigLIP's at 448 px (bicubic, mean = std = 0.5); a model's processor builds it
    from the vision tower's image processor instead. Frames are sampled only when asked:
    ``do_sample_frames=True``, or (the default ``None``) whenever ``num_frames`` or ``fps`` is given.
    """

    resample = PILImageResampling.BICUBIC
    size = {"height": 448, "width": 448}  # noqa: RUF012 (transformers' convention)
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    rescale_factor = 1 / 255
    default_to_square = True
    do_resize = True
    do_center_crop = None
    crop_size = None
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = None
    num_frames = None
    fps = None
    max_frames = None
    valid_kwargs = StormVideosKwargs
    model_input_names = ["pixel_values_videos"]  # noqa: RUF012 (transformers' convention)

    def __init__(self, **kwargs: Unpack[StormVideosKwargs]) -> None:
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)

    @classmethod
    def from_image_processor(cls, image_processor: Any, **overrides: Any) -> "StormVideoProcessor":
        """The image processor's resize / crop / rescale / normalise settings, as a video processor."""
        return cls(**{**image_processor_settings(image_processor), **overrides})

    def update_from(self, image_processor: Any) -> None:
        """Take the image processor's current settings (one changed after the processor was built)."""
        self._set_attributes(**image_processor_settings(image_processor))

    # -- decoding and sampling -----------------------------------------------------------------
    def preprocess(self, videos: Any, **kwargs: Unpack[StormVideosKwargs]) -> BatchFeature:
        """Decode paths, sample frames, then resize / crop / rescale / normalise every clip."""
        num_frames = kwargs.get("num_frames", self.num_frames)
        fps = kwargs.get("fps", self.fps)
        max_frames = kwargs.pop("max_frames", self.max_frames)
        sample = kwargs.get("do_sample_frames", self.do_sample_frames)
        if sample is None:
            sample = num_frames is not None or fps is not None
        _check_args(num_frames if sample else None, fps if sample else None, max_frames)
        clips = batch_videos(videos)
        given = kwargs.pop("video_metadata", None)
        given = make_batched_metadata(clips, given) if given is not None else [None] * len(clips)
        frames, metadata = [], []
        for clip, meta in zip(clips, given):
            if isinstance(clip, str):
                decoded = sample_frames(
                    _local_path(clip), num_frames if sample else None, fps if sample else None, max_frames
                )
                clip, meta = decoded.frames, _clip_metadata(decoded)
            else:
                meta = dataclasses.replace(meta) if meta is not None else _array_metadata(clip)  # (caller's kept)
                if sample or max_frames is not None:
                    n, rate = (num_frames, fps) if sample else (None, None)
                    indices = self.sample_frames(meta, n, rate, max_frames)
                    source = meta.frames_indices or list(range(len(clip)))
                    clip = clip[torch.from_numpy(indices)] if isinstance(clip, torch.Tensor) else clip[indices]
                    meta.frames_indices = [int(source[i]) for i in indices]
            frames.append(clip)
            metadata.append(meta)
        kwargs["do_sample_frames"] = False  # done above
        return super().preprocess(frames, video_metadata=metadata, **kwargs)

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Indices of the frames to keep from an in-memory clip, chosen as
        :func:`storm_vlm.video.sample_frames` chooses them from a file: ``num_frames`` uniformly
        (first and last included; every frame once when the clip is shorter), or the frame on
        screen every ``1/fps`` s (needs ``metadata.fps``), capped uniformly at ``max_frames``."""
        _check_args(num_frames, fps, max_frames)
        total = int(metadata.total_num_frames)
        if num_frames is not None:
            return uniform_positions(total, num_frames) if num_frames < total else np.arange(total)
        if fps is not None:
            if not metadata.fps:
                raise ValueError(
                    "fps sampling of frames given in memory needs their frame rate: pass "
                    "video_metadata={'fps': ...} (or num_frames instead)"
                )
            count = max(1, math.ceil(total / metadata.fps * fps - 1e-9))
            chosen = np.unique(np.floor(np.arange(count) / fps * metadata.fps + 1e-9).astype(np.int64))
            chosen = chosen[chosen < total]
        else:
            chosen = np.arange(total)
        if max_frames is not None and len(chosen) > max_frames:
            chosen = chosen[uniform_positions(len(chosen), max_frames)]
        return chosen

    def _decode_and_sample_videos(
        self, videos: list, video_metadata: Any, do_sample_frames: bool | None = None, sample_indices_fn: Any = None
    ) -> tuple[list, list[VideoMetadata]]:
        """Decoding and sampling happened in :meth:`preprocess`: pair the clips with their metadata."""
        return videos, make_batched_metadata(videos, video_metadata)

    def _prepare_input_videos(
        self,
        videos: list,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
    ) -> list[torch.Tensor]:
        """Each clip as a ``(T, 3, H, W)`` tensor (uint8 stays uint8) on ``device``."""
        prepared = []
        for video in videos:
            from_array = isinstance(video, np.ndarray)
            if from_array:
                video = torch.from_numpy(video if video.flags.writeable else video.copy())
            elif not isinstance(video, torch.Tensor):
                raise TypeError(f"a video must be frames, an array or a tensor, got {type(video).__name__}")
            if video.ndim == 3:
                video = video[None]
            if video.ndim != 4 or video.shape[0] == 0:
                raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got shape {tuple(video.shape)}")
            if _channels_last(video, input_data_format, prefer_last=from_array):
                video = video.permute(0, 3, 1, 2)
            if video.dtype != torch.uint8 and not video.is_floating_point():
                if int(video.min()) < 0 or int(video.max()) > 255:
                    raise ValueError(f"integer frames must be 0..255, got {int(video.min())}..{int(video.max())}")
                video = video.to(torch.uint8)
            if device is not None:
                video = video.to(device)
            if do_convert_rgb:
                video = _to_rgb(video)
            if video.shape[1] != 3:
                raise ValueError(f"frames must have 3 channels (RGB), got {video.shape[1]}")
            prepared.append(video)
        return prepared

    # -- pixels --------------------------------------------------------------------------------
    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | Sequence[float] | None,
        image_std: float | Sequence[float] | None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        out = []
        for video in videos:
            if do_resize:
                video = self.resize(video, size, resample)
            if do_center_crop:
                video = center_crop(video, crop_size)
            out.append(rescale_and_normalize(video, do_rescale, rescale_factor, do_normalize, image_mean, image_std))
        pixels: Any = out
        if return_tensors in ("pt", "np") and len({tuple(v.shape) for v in out}) == 1:
            pixels = torch.stack(out)
        if return_tensors == "np":
            pixels = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else [v.cpu().numpy() for v in out]
        return BatchFeature(data={"pixel_values_videos": pixels}, skip_tensor_conversion=["pixel_values_videos"])

    def resize(
        self, video: torch.Tensor, size: SizeDict, resample: PILImageResampling | int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """``(T, 3, H, W)`` to the size the image processor would give these frames."""
        height, width = video.shape[-2:]
        target = _output_size(video[0], size)
        resample = int(resample) if resample is not None else int(PILImageResampling.BILINEAR)
        if target == (height, width):
            return video
        if video.is_floating_point():
            modes = {int(PILImageResampling.NEAREST): "nearest", int(PILImageResampling.BILINEAR): "bilinear"}
            mode = modes.get(resample, "bicubic")
            return F.interpolate(video, size=target, mode=mode, antialias=mode != "nearest")
        if video.device.type != "cpu" and resample in _FILTERS:
            return pil_resize(video, target, resample)
        resized = _pillow_resize(video.cpu(), target, resample)
        return resized.to(video.device)


# -- input structure -------------------------------------------------------------------------------
def _empty_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not value


def batch_videos(videos: Any) -> list:
    """A list of clips, each a path (``str``) or frames (array / tensor, ``(T, ...)``).

    Accepts one clip or a batch: a path, a 4-D array or tensor (one clip), a 5-D one (a batch), a
    list of frames (PIL images or 3-D arrays: one clip), and lists / nested lists of these.
    """
    if isinstance(videos, (str, Path)):
        return [str(videos)]
    if isinstance(videos, Image.Image):
        return [_pil_frames([videos])]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        if videos.ndim == 3:
            return [videos[None]]
        if videos.ndim == 4:
            return [videos]
        raise ValueError(f"a video must have 4 dimensions (T, H, W, 3), got shape {tuple(videos.shape)}")
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError("no video given (an empty list)")
        if all(isinstance(v, Image.Image) for v in videos):
            return [_pil_frames(videos)]
        if all(isinstance(v, (np.ndarray, torch.Tensor)) and v.ndim == 3 for v in videos):
            stack = torch.stack if isinstance(videos[0], torch.Tensor) else np.stack
            return [stack(list(videos))]
        # a batch of conversations: one without a video is an empty list and adds no clip
        return [clip for item in videos if not _empty_list(item) for clip in batch_videos(item)]
    raise TypeError(
        f"a video must be a path, frames (array, tensor, list of PIL images) or a list of them, "
        f"got {type(videos).__name__}"
    )


def _pil_frames(frames: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(frame.convert("RGB")) for frame in frames])


def _local_path(path: str) -> str:
    """A local file (``file://`` URLs allowed); other URLs are refused: nothing is downloaded."""
    if path.startswith("file://"):
        return path[len("file://") :]
    if "://" in path:
        raise ValueError(f"only local video files can be read, not {path!r}: download it first")
    return path


def _clip_metadata(clip: Any) -> VideoMetadata:
    return VideoMetadata(
        total_num_frames=clip.num_source_frames,
        fps=clip.fps or None,
        width=clip.size[1],
        height=clip.size[0],
        duration=clip.duration,
        video_backend="pyav",
        frames_indices=[int(i) for i in clip.indices],
    )


def _array_metadata(clip: Any) -> VideoMetadata:
    return VideoMetadata(total_num_frames=len(clip), frames_indices=list(range(len(clip))))


def _channels_last(video: torch.Tensor, input_data_format: str | ChannelDimension | None, prefer_last: bool) -> bool:
    """Whether a ``(T, ·, ·, ·)`` clip has its channels last. A shape that fits both follows the usual
    layouts: arrays (decoded frames) channels-last, tensors channels-first; ``input_data_format``
    settles it."""
    if input_data_format is not None:
        return ChannelDimension(input_data_format) == ChannelDimension.LAST
    first, last = video.shape[1] in (1, 3, 4), video.shape[-1] in (1, 3, 4)
    if first and last:
        return prefer_last
    if not (first or last):
        raise ValueError(f"cannot tell the channel dimension of frames of shape {tuple(video.shape)}")
    return last


def _to_rgb(video: torch.Tensor) -> torch.Tensor:
    """Grey → RGB; RGBA → RGB over white (as transformers' ``convert_to_rgb``)."""
    channels = video.shape[1]
    if channels == 1:
        return video.expand(-1, 3, -1, -1)
    if channels != 4:
        return video
    alpha = video[:, 3:].float() / (255.0 if video.dtype == torch.uint8 else 1.0)
    top = 255.0 if video.dtype == torch.uint8 else 1.0
    rgb = (1 - alpha) * top + alpha * video[:, :3].float()
    return rgb.round().clamp(0, 255).to(torch.uint8) if video.dtype == torch.uint8 else rgb.to(video.dtype)


def image_processor_settings(image_processor: Any) -> dict[str, Any]:
    """The resize / crop / rescale / normalise settings an image processor shares with this one."""
    settings: dict[str, Any] = {}
    for name in _SHARED_SETTINGS:
        value = getattr(image_processor, name, None)
        if value is None:
            continue
        if isinstance(value, SizeDict):
            value = {k: v for k, v in vars(value).items() if v is not None}
        elif isinstance(value, tuple):
            value = list(value)
        settings[name] = value
    if "resample" in settings:
        settings["resample"] = int(settings["resample"])
    return settings


def _output_size(frame: torch.Tensor, size: SizeDict) -> tuple[int, int]:
    """transformers' resize target for a ``(3, H, W)`` frame (fixed size, shortest edge, or max box)."""
    height, width = frame.shape[-2:]
    if size.shortest_edge and size.longest_edge:
        return get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    if size.shortest_edge:
        return get_resize_output_image_size(  # it reads only the shape, which a tensor has as well
            frame,  # type: ignore[arg-type]
            size=size.shortest_edge,
            default_to_square=False,
            input_data_format=ChannelDimension.FIRST,
        )
    if size.max_height and size.max_width:
        return get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
    if size.height and size.width:
        return (size.height, size.width)
    raise ValueError(f"size must have height and width, shortest_edge, or max_height and max_width: {size}")


def center_crop(video: torch.Tensor, crop_size: SizeDict) -> torch.Tensor:
    """transformers' centre crop (zero padding where the frame is smaller than the crop)."""
    height, width = video.shape[-2:]
    if crop_size.height is None or crop_size.width is None:
        raise ValueError(f"crop_size must have height and width, got {crop_size}")
    crop_h, crop_w = int(crop_size.height), int(crop_size.width)
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
        video = F.pad(video, (left, pad_w - left, top, pad_h - top))
        height, width = video.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return video[..., top : top + crop_h, left : left + crop_w]


def rescale_and_normalize(
    video: torch.Tensor,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | Sequence[float] | None,
    image_std: float | Sequence[float] | None,
) -> torch.Tensor:
    """``(x · rescale − mean) / std`` in float32. uint8 frames go through a per-channel table made
    with the image processor's own steps (rescale in float64, cast, normalise in float32), so the
    result is identical to it; float frames are computed directly."""
    mean = _per_channel(image_mean) if do_normalize else None
    std = _per_channel(image_std) if do_normalize else None
    if video.dtype == torch.uint8:
        table = _lookup_table(bool(do_rescale), float(rescale_factor), mean, std).to(video.device)
        out = torch.empty(video.shape, dtype=torch.float32, device=video.device)
        index_dtype = torch.int32 if video.device.type == "cpu" else torch.long  # int32 halves the index
        for c in range(3):
            out[:, c] = table[c][video[:, c].to(index_dtype)]
        return out
    x = video.float()
    if do_rescale:
        x = x * float(rescale_factor)
    if do_normalize:
        x = (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(
            1, 3, 1, 1
        )
    return x


def _per_channel(value: float | Sequence[float] | None) -> tuple[float, float, float]:
    if value is None:
        raise ValueError("do_normalize needs image_mean and image_std")
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"image_mean / image_std need 3 values (RGB), got {values}")
    return tuple(values)  # type: ignore[return-value]


@lru_cache(maxsize=16)
def _lookup_table(
    do_rescale: bool,
    rescale_factor: float,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
) -> torch.Tensor:
    """``(3, 256)`` float32: the processed value of each grey level, channel by channel."""
    levels = np.arange(256)
    value = (levels.astype(np.float64) * rescale_factor).astype(np.float32) if do_rescale else levels.astype(np.float32)
    rows = np.repeat(value[None], 3, axis=0)
    if mean is not None and std is not None:
        m, s = np.array(mean, dtype=np.float32), np.array(std, dtype=np.float32)
        rows = ((rows.T - m) / s).T
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


# -- Pillow's resampler ----------------------------------------------------------------------------
def _pillow_resize(video: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Pillow itself, frame by frame (uint8 ``(T, 3, H, W)`` on the CPU)."""
    height, width = size
    frames = video.permute(0, 2, 3, 1).numpy()
    out = np.stack([np.asarray(Image.fromarray(f).resize((width, height), resample)) for f in frames])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        xx = x * math.pi
        value = np.sin(xx) / xx * (np.float32(0.54) + np.float32(0.46) * np.cos(xx))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, value))


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1, np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0)
    )


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        xx = x * math.pi
        return np.where(x == 0.0, 1.0, np.sin(xx) / xx)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


# filter id (PIL.Image.Resampling) -> (filter, support), as in Pillow's Resample.c
_FILTERS = {
    int(PILImageResampling.BOX): (_box, 0.5),
    int(PILImageResampling.BILINEAR): (_bilinear, 1.0),
    int(PILImageResampling.HAMMING): (_hamming, 1.0),
    int(PILImageResampling.BICUBIC): (_bicubic, 2.0),
    int(PILImageResampling.LANCZOS): (_lanczos, 3.0),
}
# Pillow 13 runs the vertical pass first when the height shrinks much more than the width.
_PILLOW_ORDERS_PASSES = int(PIL.__version__.split(".")[0]) >= 13


@lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: per output pixel, the input
    indices and int32 fixed-point weights (``(out_size, taps)``, unused taps weigh 0)."""
    fn, support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    taps = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, taps), np.int64)
    weight = np.zeros((out_size, taps), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        x = np.arange(xmax)
        w = fn((x + xmin - center + 0.5) * (1.0 / filterscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        scaled = w * (1 << _PRECISION_BITS)
        index[xx, :xmax] = xmin + x
        index[xx, xmax:] = xmin
        weight[xx, :xmax] = np.where(w < 0, scaled - 0.5, scaled + 0.5).astype(np.int64)  # C's (int) truncates
    return index, weight


def _resample_pass(x: torch.Tensor, out_size: int, resample: int, dim: int) -> torch.Tensor:
    """One separable pass of Pillow's 8-bit resampler along ``dim`` (int32 in, int32 0..255 out)."""
    index, weight = _coefficients(x.shape[dim], out_size, resample)
    index_t = torch.from_numpy(index).to(x.device)
    weight_t = torch.from_numpy(weight.astype(np.int32)).to(x.device)
    out_shape = list(x.shape)
    out_shape[dim] = out_size
    view = [1] * x.ndim
    view[dim] = out_size
    acc = torch.full(out_shape, 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for tap in range(index.shape[1]):
        acc += x.index_select(dim, index_t[:, tap]) * weight_t[:, tap].view(view)
    return (acc >> _PRECISION_BITS).clamp_(0, 255)


def pil_resize(video: torch.Tensor, size: tuple[int, int], resample: int = 3) -> torch.Tensor:
    """Pillow's ``Image.resize`` of uint8 frames ``(..., H, W)`` in torch, on their device.

    The same fixed-point filters and pass order as the installed Pillow (box, bilinear, hamming,
    bicubic, lanczos), so the result is Pillow's exactly. Pillow's CPU code is faster on the CPU;
    this is for frames already on a GPU.
    """
    if resample not in _FILTERS:
        raise ValueError(f"pil_resize supports resample {sorted(_FILTERS)}, got {resample}")
    height, width = video.shape[-2:]
    out_h, out_w = size
    x = video.to(torch.int32)
    vertical_first = _PILLOW_ORDERS_PASSES and 0 < height - out_h and (height - out_h) > (width - out_w) * 2
    passes = [(out_h, -2), (out_w, -1)] if vertical_first else [(out_w, -1), (out_h, -2)]
    for out_size, dim in passes:
        if x.shape[dim] != out_size:
            x = _resample_pass(x, out_size, resample, x.ndim + dim)
    return x.to(torch.uint8)


# AutoVideoProcessor knows STORM configs where transformers has it (it needs torchvision). Keyed by
# this module's StormConfig, so a copy loaded as remote code registers its own classes only.
try:
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from .configuration_storm import StormConfig

    AutoVideoProcessor.register(StormConfig, StormVideoProcessor, exist_ok=True)
except ImportError:
    pass
