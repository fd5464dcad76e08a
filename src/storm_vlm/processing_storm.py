"""`StormProcessor`: frames and prompts in, model tensors out.

Processing is kept out of the model, as in transformers' multimodal processors (Qwen2-VL,
LLaVA-OneVision): ``processor(text=..., videos=..., images=..., return_tensors="pt")`` and
``processor.apply_chat_template(messages, tokenize=True, return_dict=True)`` give everything
``model(**inputs)`` / ``model.generate(**inputs)`` need. The pieces:

* :class:`~storm_vlm.video_processing_storm.StormVideoProcessor` resizes and normalises frames
  like the vision tower's image processor (images are one-frame clips and go through it too);
* the tokenizer's chat template, with typed content parts (``{"type": "video"}`` → ``<video>\\n``);
* placeholder expansion: each ``<video>`` / ``<image>`` becomes exactly as many placeholder ids
  as the model produces visual tokens for that clip under the chosen reduction (k, p, s):
  ``T'·N'`` with ``T' = ⌈⌈T/k⌉/s⌉`` and ``N' = ⌈h/p⌉·⌈w/p⌉`` on the ``token_grid`` (h, w);
* the layout: ``video_reduction`` / ``image_reduction`` rows ``(k, p, s)`` per clip / image, which
  the model reads, so k/p/s are given to the processor only.

Example::

    processor = StormProcessor.from_pretrained("path/to/storm-dir")
    messages = [{"role": "user", "content": [{"type": "video", "path": "clip.mp4"},
                                             {"type": "text", "text": "What happens?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, num_frames=32, temporal_pool=4)
    out = model.generate(**inputs, max_new_tokens=64)
    print(processor.decode(out[0, inputs["input_ids"].shape[1]:]))
"""

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.processing_utils import ImagesKwargs, ProcessingKwargs, TextKwargs, Unpack, VideosKwargs
from transformers.utils.chat_template_utils import _get_template_variables
from transformers.video_processing_utils import VideoProcessorMixin

from .configuration_storm import StormConfig
from .modeling.reduction import ReductionSettings, num_visual_tokens
from .tokens import IMAGE_TOKEN, VIDEO_TOKEN, add_placeholder_tokens, stop_token_ids
from .video_processing_storm import StormVideoProcessor, StormVideosKwargs, image_processor_settings

__all__ = [
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "StormProcessor",
    "StormProcessorKwargs",
    "add_placeholder_tokens",
    "flatten_content",
]

# The text each typed content part becomes (the media placeholder on a line of its own, as LLaVA
# and build_prompt put it). The templates (storm_vlm.tokens) render exactly this; the processor also flattens
# parts itself, so templates that only know string content (older model dirs) work the same.
_PART_TEXT = {"video": VIDEO_TOKEN + "\n", "image": IMAGE_TOKEN + "\n"}

Frames = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8, (T, 3, H, W), or (H, W, 3) for one image


class StormProcessorKwargs(ProcessingKwargs, total=False):
    """Per-call kwargs: transformers' per-modality ones (``text_kwargs``, ``videos_kwargs``,
    ``images_kwargs``, or flat) plus the reduction the placeholders are expanded for."""

    temporal_pool: int | None
    spatial_pool: int | None
    temporal_sampling: int | None
    training: bool | None
    videos_kwargs: StormVideosKwargs  # type: ignore[misc]  # a TypedDict field narrowed to STORM's keys


def flatten_content(content: str | Sequence[dict[str, Any]]) -> str:
    """A message's typed content parts as text: video / image parts become their placeholder line,
    text parts their text. Text holding a placeholder is refused (it would take visual tokens)."""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _PART_TEXT:
            pieces.append(_PART_TEXT[kind])
        elif kind == "text":
            text = part.get("text", "")
            _refuse_placeholders(text)
            pieces.append(text)
        else:
            raise ValueError(f"content parts must be of type text, image or video, got {part!r}")
    return "".join(pieces)


def _refuse_placeholders(text: str) -> None:
    for token in (VIDEO_TOKEN, IMAGE_TOKEN):
        if token in text:
            raise ValueError(f"the question text contains {token}, the media placeholder; remove it")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _positional(args: tuple, **named: Any) -> tuple[Any, Any, Any, Any]:
    """``(images, text, videos, audio)`` from positional and keyword arguments (see ``__call__``)."""
    first_is_text = bool(args) and _is_text(args[0]) and named["text"] is None
    legacy = first_is_text and not (len(args) > 1 and _is_text(args[1]))
    order = ("text", "videos", "images") if legacy else ("images", "text", "videos", "audio")
    if len(args) > len(order):
        raise TypeError(f"at most {len(order)} positional arguments ({', '.join(order)}), got {len(args)}")
    for name, value in zip(order, args):
        if named[name] is not None:
            raise TypeError(f"got multiple values for argument {name!r}")
        named[name] = value
    return named["images"], named["text"], named["videos"], named["audio"]


def _flat_images(images: Any) -> list:
    """Images (paths, PIL images, ``(H, W, 3)`` / ``(3, H, W)`` arrays, batches, nested lists) flat."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(f"an image must have 3 dimensions (H, W, 3), got shape {tuple(images.shape)}")
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flat_images(item)]
    raise TypeError(f"an image must be a path, a PIL image or an array, got {type(images).__name__}")


def _as_clip(image: Any) -> Any:
    """One image as a one-frame clip for the video processor."""
    if isinstance(image, Path):
        return str(image)
    if isinstance(image, str):
        return image
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))[None]
    return image[None]


class StormProcessor(ProcessorMixin):
    """Video processor + tokenizer + the token accounting that ties them to the model.

    Args:
        image_processor: the vision tower's image processor (e.g. SigLIP, 448 px). Its settings
            make the video processor when none is given (older model directories have none).
        tokenizer: the LLM tokenizer with ``<video>`` / ``<image>`` added.
        video_processor: a :class:`StormVideoProcessor`; images are one-frame clips and go
            through it as well, so an image and a one-frame video get identical pixels.
        token_grid: ``(h, w)`` tokens per frame after the projector (``StormConfig.token_grid``).
        temporal_pool, spatial_pool, temporal_sampling: default k, p, s (the model's defaults).
    """

    valid_processor_kwargs = StormProcessorKwargs  # type: ignore[assignment]  # typed as the base TypedDict's type
    # Defaults for every call: tensors, padded on the left (prompts are continued by generate).
    text_kwargs: TextKwargs = {"padding": True, "return_tensors": "pt"}  # noqa: RUF012
    video_token = VIDEO_TOKEN
    image_token = IMAGE_TOKEN

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        token_grid: Sequence[int] = (16, 16),
        temporal_pool: int = 1,
        spatial_pool: int = 1,
        temporal_sampling: int = 1,
        chat_template: str | None = None,
        **kwargs,
    ) -> None:
        self.token_grid: tuple[int, int] = (int(token_grid[0]), int(token_grid[1]))
        self.temporal_pool = temporal_pool
        self.spatial_pool = spatial_pool
        self.temporal_sampling = temporal_sampling
        if chat_template is None and tokenizer is not None:
            chat_template = tokenizer.chat_template
        # A video processor made from the image processor follows later changes to it (a caller
        # may set its size afterwards); one given or loaded is used as it is.
        self._image_settings = image_processor_settings(image_processor) if video_processor is None else None
        if video_processor is None:
            video_processor = StormVideoProcessor.from_image_processor(image_processor)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.video_token_id == tokenizer.unk_token_id or self.video_token_id is None:
            raise ValueError("the tokenizer has no <video> token; call add_placeholder_tokens(tokenizer) first")

    @classmethod
    def from_config(
        cls,
        image_processor,
        tokenizer: PreTrainedTokenizerBase,
        config: StormConfig,
        video_processor: StormVideoProcessor | None = None,
    ) -> "StormProcessor":
        """A processor matching a model config (grid, default k/p/s, placeholder ids checked)."""
        processor = cls(
            image_processor,
            tokenizer,
            video_processor,
            token_grid=config.token_grid,
            temporal_pool=config.temporal_pool,
            spatial_pool=config.spatial_pool,
            temporal_sampling=config.temporal_sampling,
        )
        if (processor.video_token_id, processor.image_token_id) != (config.video_token_id, config.image_token_id):
            raise ValueError(
                f"tokenizer placeholder ids (video {processor.video_token_id}, image {processor.image_token_id}) "
                f"do not match the model config (video {config.video_token_id}, image {config.image_token_id})"
            )
        return processor

    # -- transformers plumbing -------------------------------------------------------------------
    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        """As transformers', except the video processor: transformers looks its base class up only
        where torchvision is installed, but it is importable (and all we need) everywhere."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"video_processor must be a video processor, got {type(argument).__name__}")
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' save, plus ``auto_map`` and the code (:mod:`storm_vlm.remote_code`), so that
        ``AutoProcessor.from_pretrained(dir, trust_remote_code=True)`` works without storm-vlm."""
        from .remote_code import PROCESSOR_AUTO_MAP, add_auto_map, write_remote_code

        saved = super().save_pretrained(save_directory, *args, **kwargs)
        for name in ("processor_config.json", "tokenizer_config.json"):
            if (Path(save_directory) / name).is_file():
                add_auto_map(Path(save_directory) / name, PROCESSOR_AUTO_MAP)
        write_remote_code(Path(save_directory))
        return saved

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, processor_dict: dict | None = None, **kwargs: Any
    ) -> list:
        """Image processor, tokenizer and video processor of a saved directory. The video processor
        is the one saved in ``processor_config.json`` (or a ``video_preprocessor_config.json``);
        directories saved before it existed get one made from the image processor."""
        processor_dict = processor_dict or {}
        subfolder = kwargs.pop("subfolder", "")
        image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, subfolder, **kwargs)
        saved = processor_dict.get("video_processor")
        separate = Path(pretrained_model_name_or_path, subfolder, "video_preprocessor_config.json")
        if isinstance(saved, dict):
            video_processor = cls._video_processor_class(saved).from_dict(saved)  # type: ignore[attr-defined]
        elif separate.is_file():
            video_processor = StormVideoProcessor.from_json_file(separate)
        else:
            video_processor = None  # made from the image processor in __init__
        return [image_processor, tokenizer, video_processor]

    @staticmethod
    def _video_processor_class(saved: dict) -> type:
        name = saved.get("video_processor_type", StormVideoProcessor.__name__)
        if name == StormVideoProcessor.__name__:
            return StormVideoProcessor
        return ProcessorMixin.get_possibly_dynamic_module(name)

    @property
    def model_input_names(self) -> list[str]:
        """What the model's ``forward`` takes from a processor output."""
        names = [*self.tokenizer.model_input_names, "pixel_values", "pixel_values_videos"]
        return [*dict.fromkeys(names), "video_reduction", "image_reduction"]

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's EOS and the chat template's end of turn."""
        return stop_token_ids(self.tokenizer)

    # -- settings ----------------------------------------------------------------------------
    def reduction_settings(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        training: bool = False,
    ) -> ReductionSettings:
        """Explicit k/p/s, else this processor's defaults; sampling is dropped for training inputs."""
        return ReductionSettings.resolve(self, temporal_pool, spatial_pool, temporal_sampling, training)

    def num_visual_tokens(self, num_frames: int, settings: ReductionSettings | None = None) -> int:
        return num_visual_tokens(num_frames, self.token_grid, settings or self.reduction_settings())

    # -- pixels ------------------------------------------------------------------------------
    def _videos(self) -> StormVideoProcessor:
        """The video processor, first brought up to date with the image processor it was made from."""
        if self._image_settings is not None and isinstance(self.video_processor, StormVideoProcessor):
            current = image_processor_settings(self.image_processor)
            if current != self._image_settings:
                self.video_processor.update_from(self.image_processor)
                self._image_settings = current
        return self.video_processor

    def preprocess_frames(self, frames: Frames, device: torch.device | str | None = None) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 (or ``(T, 3, H, W)``) → ``(T, 3, S, S)`` float, resized and
        normalised by the video processor, on ``device`` (there from the start: on a GPU the
        resize runs there too)."""
        pixels = self._videos()(frames, device=device, return_tensors=None)["pixel_values_videos"]
        return pixels[0]

    def preprocess_frames_torch(self, frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """The former torch-only path, kept for its callers: :meth:`preprocess_frames` on ``device``."""
        return self.preprocess_frames(frames, device)

    def _preprocess_images(self, images: Any, images_kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """Images as one-frame clips through the video processor: ``[(3, S, S), ...]``."""
        processor = self._videos()
        known = set(processor.valid_kwargs.__annotations__) - {"return_tensors", "num_frames", "fps"}
        kwargs = {k: v for k, v in images_kwargs.items() if k in known}
        clips = [_as_clip(image) for image in _flat_images(images)]
        if not clips:
            return []
        pixels = processor(clips, return_tensors=None, do_sample_frames=False, **kwargs)["pixel_values_videos"]
        for pic in pixels:
            if pic.shape[0] != 1:
                raise ValueError(f"an image input must be one frame, got a clip of {pic.shape[0]}")
        return [pic[0] for pic in pixels]

    # -- text --------------------------------------------------------------------------------
    def build_prompt(self, question: str, media: str | None = "video") -> str:
        """One user turn (media placeholder first, as in LLaVA) and the assistant prefix.

        A question that itself contains ``<video>`` or ``<image>`` is refused: those strings are
        the placeholders the visual tokens replace, so the count would no longer match the media.
        """
        _refuse_placeholders(question)
        placeholder = {"video": VIDEO_TOKEN + "\n", "image": IMAGE_TOKEN + "\n", None: ""}[media]
        messages = [{"role": "user", "content": placeholder + question}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def expand_placeholders(self, text: str, video_tokens: Sequence[int], image_tokens: Sequence[int]) -> str:
        """Replace the i-th ``<video>`` with ``video_tokens[i]`` copies (and the same for images)."""
        for token, counts in ((VIDEO_TOKEN, video_tokens), (IMAGE_TOKEN, image_tokens)):
            found = text.count(token)
            if found != len(counts):
                raise ValueError(f"the prompt has {found} {token} placeholder(s) but {len(counts)} input(s) were given")
            pieces = text.split(token)
            text = pieces[0] + "".join(token * n + rest for n, rest in zip(counts, pieces[1:]))
        return text

    def _check_counts(self, texts: Sequence[str], num_videos: int, num_images: int) -> None:
        videos = sum(t.count(VIDEO_TOKEN) for t in texts)
        images = sum(t.count(IMAGE_TOKEN) for t in texts)
        if (videos, images) != (num_videos, num_images):
            raise ValueError(
                f"the prompts have {videos} {VIDEO_TOKEN} and {images} {IMAGE_TOKEN} placeholders "
                f"but {num_videos} videos and {num_images} images were given"
            )

    def _expanded(
        self, texts: Sequence[str], video_lengths: Sequence[int], num_images: int, settings: ReductionSettings
    ) -> tuple[list[str], list]:
        """Prompts with every placeholder expanded (in placeholder order across the batch) and
        transformers' replacement offsets (for assistant masks)."""
        self._check_counts(texts, len(video_lengths), num_images)
        video_text = [VIDEO_TOKEN * self.num_visual_tokens(t, settings) for t in video_lengths]
        image_text = [IMAGE_TOKEN * self.num_visual_tokens(1, settings)] * num_images
        return self.get_text_with_replacements(list(texts), image_text, video_text)

    def tokenize(
        self,
        text: str | Sequence[str],
        video_lengths: Sequence[int] = (),
        num_images: int = 0,
        settings: ReductionSettings | None = None,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        """Token ids with placeholders expanded for clips of ``video_lengths`` frames (in
        placeholder order across the batch) and ``num_images`` images. No pixels needed."""
        texts = [text] if isinstance(text, str) else list(text)
        expanded, _ = self._expanded(texts, list(video_lengths), num_images, settings or self.reduction_settings())
        return dict(self.tokenizer(expanded, padding=True, padding_side=padding_side, return_tensors="pt"))

    # -- the transformers call ---------------------------------------------------------------
    def __call__(
        self,
        *args: Any,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        **kwargs: Unpack[StormProcessorKwargs],
    ) -> BatchFeature:
        """Tokenise prompts and preprocess media, given in the order their placeholders appear.

        Positional arguments are transformers' order ``(images, text, videos)``, or this
        processor's former one ``(text, videos, images)`` when the first is the text
        (``processor(prompt, videos=[clip])``).

        Args:
            images: images (paths, PIL images, ``(H, W, 3)`` arrays), one per ``<image>``.
            text: a prompt or a batch of prompts.
            videos: clips (paths, ``(T, H, W, 3)`` arrays, ``(T, 3, H, W)`` tensors, lists of PIL
                frames), one per ``<video>``.
            temporal_pool, spatial_pool, temporal_sampling: the reduction (default: the
                processor's, i.e. the model config's); ``training=True`` drops the sampling.
            **kwargs: transformers' kwargs, flat or per modality: ``return_tensors`` (default
                ``"pt"``), ``padding`` (default ``True``), ``padding_side`` (default ``"left"``),
                ``num_frames`` / ``fps`` / ``max_frames`` for video files, ``device``, ...

        Returns:
            ``input_ids``, ``attention_mask`` and, when given, ``pixel_values_videos`` (``(B, T, 3,
            S, S)`` when all clips have one shape, else a list of ``(T_i, 3, S, S)``) with
            ``video_reduction`` ``(num_videos, 3)``, and ``pixel_values`` ``(M, 3, S, S)`` with
            ``image_reduction`` ``(M, 3)``: rows ``(k, p, s)`` the placeholders were expanded for.
        """
        images, text, videos, audio = _positional(args, images=images, text=text, videos=videos, audio=audio)
        if audio is not None:
            raise ValueError("STORM takes no audio")
        if text is None:
            raise ValueError("text is required: the prompt(s) holding the <video> / <image> placeholders")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a string or a list of strings")
        merged = self._merge_kwargs(StormProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)  # type: ignore[arg-type]  # transformers types the class as an instance
        flat = cast(dict[str, Any], merged)  # the reduction keys sit at the top level of the merged kwargs
        settings = self.reduction_settings(
            flat.get("temporal_pool"),
            flat.get("spatial_pool"),
            flat.get("temporal_sampling"),
            bool(flat.get("training")),
        )
        text_kwargs = merged["text_kwargs"]
        return_tensors = text_kwargs.get("return_tensors")
        explicit = {**kwargs, **(kwargs.get("text_kwargs") or {})}
        text_kwargs["padding_side"] = explicit.get("padding_side", "left")  # generate continues the prompts
        offsets_wanted = text_kwargs.pop("return_text_replacement_offsets", merged["return_text_replacement_offsets"])
        types_wanted = text_kwargs.pop("return_mm_token_type_ids", merged["return_mm_token_type_ids"])

        clips: list[torch.Tensor] = []
        if videos is not None:
            videos_kwargs = {k: v for k, v in merged["videos_kwargs"].items() if k != "return_tensors"}
            clips = self._videos()(videos, return_tensors=None, **videos_kwargs)["pixel_values_videos"]
        pics = self._preprocess_images(images, merged["images_kwargs"]) if images is not None else []

        expanded, offsets = self._expanded(texts, [c.shape[0] for c in clips], len(pics), settings)
        data: dict[str, Any] = dict(self.tokenizer(expanded, **text_kwargs))
        self._check_special_mm_tokens(expanded, cast(BatchFeature, data), modalities=["image", "video"])
        row = [settings.temporal_pool, settings.spatial_pool, settings.temporal_sampling]
        ragged = False
        if clips:
            ragged = len({tuple(c.shape) for c in clips}) > 1
            data["pixel_values_videos"] = clips if ragged else torch.stack(clips)
            data["video_reduction"] = torch.tensor([row] * len(clips), dtype=torch.long)
        if pics:
            data["pixel_values"] = torch.stack(pics)
            data["image_reduction"] = torch.tensor([row] * len(pics), dtype=torch.long)
        if offsets_wanted:
            data["text_replacement_offsets"] = offsets
        if types_wanted:
            data["mm_token_type_ids"] = self.create_mm_token_type_ids(data["input_ids"])
        skip = [*self.skip_tensor_conversion, *(["pixel_values_videos"] if ragged else [])]
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=skip)

    # -- chat templates ----------------------------------------------------------------------
    def apply_chat_template(  # type: ignore[override]  # the same call, typed for any conversation
        self, conversation: Any, chat_template: str | None = None, **kwargs: Any
    ) -> Any:
        """transformers' ``apply_chat_template``, with typed content parts on any template.

        ``{"type": "video"}`` / ``{"type": "image"}`` parts become placeholder lines and text
        parts their text before the template renders, so string-only templates (older model
        directories) work too. With ``tokenize=True, return_dict=True`` the media the parts name
        (``"path"``, ``"url"`` (local ``file://``), ``"video"`` / ``"image"`` holding frames) are
        loaded and the model inputs returned. Processing kwargs (``num_frames``, ``fps``,
        ``temporal_pool``, ``padding``, ...) may be given flat, or in ``processor_kwargs``.
        """
        processor_kwargs = dict(kwargs.pop("processor_kwargs", None) or {})
        template_variables = _get_template_variables(self._resolve_chat_template(chat_template))
        for key in [k for k in kwargs if k in self._processing_kwarg_names() and k not in template_variables]:
            processor_kwargs[key] = kwargs.pop(key)
        if not kwargs.get("tokenize", False):  # with tokenize, media are taken first (below)
            conversations, batched = self._normalize_conversations(conversation)
            conversations = [[_flattened(message) for message in c] for c in conversations]
            conversation = conversations if batched else conversations[0]
        return super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )

    def _multimodal_inputs_from_conversations(self, conversations: list, *args: Any, **kwargs: Any) -> tuple:
        """transformers' media extraction, then the typed parts flattened to text (see
        :meth:`apply_chat_template`)."""
        out = super()._multimodal_inputs_from_conversations(conversations, *args, **kwargs)
        for conversation in conversations:
            for i, message in enumerate(conversation):
                conversation[i] = _flattened(message)
        return out

    def _processing_kwarg_names(self) -> set[str]:
        names = {k for k in StormProcessorKwargs.__annotations__ if not k.endswith("_kwargs")}
        for typed in (TextKwargs, ImagesKwargs, VideosKwargs, StormVideosKwargs):
            names |= set(typed.__annotations__)
        return names - {"return_tensors"}

    # -- decoding ----------------------------------------------------------------------------
    def batch_decode(self, ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``; special tokens are skipped unless asked for."""
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, ids: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """The tokenizer's ``decode``; special tokens are skipped unless asked for."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def post_process_image_text_to_text(
        self, generated_outputs: Any, skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        """Generated ids to text (transformers' pipelines call this)."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


def _flattened(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` with its content as text (the input dict is left as it was)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return message
    flat = copy.copy(message)
    flat["content"] = flatten_content(content)
    return flat


AutoProcessor.register(StormConfig, StormProcessor, exist_ok=True)
