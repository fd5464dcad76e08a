"""STORM as a vLLM model: storm-vlm's visual path in ``embed_multimodal``, vLLM's own LLM.

The vision tower, projector and temporal Mamba module are storm-vlm's modules (and its scan
dispatch), run by :class:`~storm_vlm.StormModel`'s own methods, so the visual tokens are the ones
``StormForConditionalGeneration.generate`` feeds its LLM. The LLM is vLLM's Qwen2 (or Llama),
so paged attention, continuous batching and tensor parallelism apply to it. A storm-vlm
checkpoint loads as saved: its keys (``language_model.model.*``, ``language_model.lm_head.*``,
``vision_tower.*``, ``projector.*``, ``temporal.*``) are this module's parameter names.

Per request, ``mm_processor_kwargs`` choose frames and the reduction: ``num_frames`` / ``fps`` /
``max_frames`` (for a path, or frames given in memory) and ``temporal_pool`` / ``spatial_pool`` /
``temporal_sampling`` (or ``k`` / ``p`` / ``s``). Each placeholder is expanded to the reduced
token count (:func:`storm_vlm.modeling.reduction.num_visual_tokens`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModel, BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageSize, MultiModalDataItems, MultiModalDataParser, VideoProcessorItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.sequence import IntermediateTensors

from ..configuration_storm import StormConfig
from ..limits import MAX_REDUCTION
from ..modeling.modeling_storm import StormModel
from ..modeling.projector import Projector
from ..modeling.reduction import ReductionSettings, num_visual_tokens
from ..modeling.temporal import TemporalEncoder
from ..processing_storm import StormProcessor
from ..tokens import IMAGE_TOKEN, VIDEO_TOKEN

__all__ = ["StormVllmForConditionalGeneration", "reduction_from_kwargs"]

# mm_processor_kwargs names → ReductionSettings fields (the project's names and the paper's letters)
_REDUCTION_KEYS = {
    "temporal_pool": "temporal_pool",
    "k": "temporal_pool",
    "spatial_pool": "spatial_pool",
    "p": "spatial_pool",
    "temporal_sampling": "temporal_sampling",
    "s": "temporal_sampling",
}
_FRAME_KEYS = ("num_frames", "fps", "max_frames")
_PIXEL_FIELDS = (("pixel_values_videos", "video_reduction"), ("pixel_values", "image_reduction"))
# the LLM architectures vLLM builds for a text_config model_type
_LLM_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def _reduction_fields(kwargs: Mapping[str, object]) -> dict[str, int]:
    """The k / p / s given in one source of ``mm_processor_kwargs``, by ReductionSettings field.

    Raises ``ValueError`` (vLLM's 400) for a value that is not an integer in 1..MAX_REDUCTION, or
    for one field given twice (``temporal_pool`` and ``k``) with different values.
    """
    chosen: dict[str, int] = {}
    for key, field in _REDUCTION_KEYS.items():
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"mm_processor_kwargs {key} must be an integer, got {value!r}")
        if not 1 <= int(value) <= MAX_REDUCTION:
            raise ValueError(f"mm_processor_kwargs {key} must be in 1..{MAX_REDUCTION}, got {value}")
        if chosen.get(field, int(value)) != int(value):
            raise ValueError(f"mm_processor_kwargs give {field} twice, with different values")
        chosen[field] = int(value)
    return chosen


def reduction_from_kwargs(
    config: StormConfig, request: Mapping[str, object], server: Mapping[str, object] | None = None
) -> ReductionSettings:
    """(k, p, s) from a request's ``mm_processor_kwargs`` (either spelling), else the server's
    (``--mm-processor-kwargs``), else the model config's."""
    chosen = {**_reduction_fields(server or {}), **_reduction_fields(request)}
    return ReductionSettings.resolve(
        config, chosen.get("temporal_pool"), chosen.get("spatial_pool"), chosen.get("temporal_sampling"), False
    )


@functools.lru_cache(maxsize=4)
def _storm_processor(model_dir: str) -> StormProcessor:
    """The directory's own processor (frame size and normalisation), loaded once per process."""
    return StormProcessor.from_pretrained(model_dir)


class _StormDataParser(MultiModalDataParser):
    """vLLM's parser, plus a video given as a path (decoded by the processor, by ``num_frames`` / ``fps``)."""

    def _parse_video_data(self, data: Any) -> Any:
        if isinstance(data, str | Path):
            return VideoProcessorItems([str(data)])
        if isinstance(data, list) and data and all(isinstance(d, str | Path) for d in data):
            return VideoProcessorItems([str(d) for d in data])
        return super()._parse_video_data(data)


class StormProcessingInfo(BaseProcessingInfo):
    """What vLLM asks of a model's inputs: config, processor, limits, token counts."""

    def get_hf_config(self) -> StormConfig:
        return self.ctx.get_hf_config(StormConfig)

    def get_hf_processor(self, **kwargs: object) -> StormProcessor:
        return _storm_processor(self.ctx.model_config.model)

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        """No transformers kwarg scopes: frame and reduction options stay flat, read by the processor below."""
        return {"text_kwargs": set()}

    def get_data_parser(self) -> MultiModalDataParser:
        return _StormDataParser(
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": None, "image": None}

    def num_tokens(self, num_frames: int, settings: ReductionSettings) -> int:
        return num_visual_tokens(num_frames, self.get_hf_config().token_grid, settings)

    def max_frames(self, seq_len: int) -> int:
        """The most frames whose tokens (at the config's reduction) fit ``seq_len``: the profiling clip."""
        settings = reduction_from_kwargs(self.get_hf_config(), {})
        frames = 1
        while frames < 4096 and self.num_tokens(frames + 1, settings) <= seq_len:
            frames += 1
        return frames

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        """Upper bounds whatever k / p / s a request picks: a clip's tokens must fit the context, and
        an image has at most one unreduced frame's (so vLLM sizes its encoder cache for any request)."""
        return {"video": seq_len, "image": self.num_tokens(1, ReductionSettings(1, 1, 1))}

    def frame_size(self) -> ImageSize:
        size = self.get_hf_config().vision_config.image_size
        return ImageSize(width=size, height=size)


class StormDummyInputsBuilder(BaseDummyInputsBuilder[StormProcessingInfo]):
    """Profiling inputs: the longest clip that fits the context, and images."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return VIDEO_TOKEN * mm_counts.get("video", 0) + IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> Any:
        size = self.info.frame_size()
        options = mm_options or {}
        return {
            "video": self._get_dummy_videos(
                width=size.width,
                height=size.height,
                num_frames=self.info.max_frames(seq_len),
                num_videos=mm_counts.get("video", 0),
                overrides=options.get("video"),
            ),
            "image": self._get_dummy_images(
                width=size.width,
                height=size.height,
                num_images=mm_counts.get("image", 0),
                overrides=options.get("image"),
            ),
        }


def _per_item(value: object) -> list[torch.Tensor]:
    """A batched field as vLLM hands it over (a stacked tensor, or a list when shapes differ) → one tensor per item."""
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    if isinstance(value, list | tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise TypeError(f"expected a tensor or a list of tensors, got {type(value).__name__}")


def _video_item(item: Any) -> tuple[Any, dict[str, Any] | None]:
    """A parsed video item → (frames or path, metadata for fps sampling of in-memory frames)."""
    if isinstance(item, tuple):  # decoded by vLLM's media loader: (frames, metadata)
        frames, meta = item
        count = len(frames)
        duration = float((meta or {}).get("duration") or 0)
        rate = count / duration if duration > 0 else None  # the rate of the frames given
        return frames, {"total_num_frames": count, "fps": rate}
    return item, None


class StormMultiModalProcessor(BaseMultiModalProcessor[StormProcessingInfo]):
    """Frames → pixels and (k, p, s) rows with storm-vlm's processor; placeholders → reduced counts."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.get_hf_processor()
        server = self.info.ctx.model_config.get_multimodal_config().mm_processor_kwargs or {}
        settings = reduction_from_kwargs(self.info.get_hf_config(), hf_kwargs, server)
        row = [settings.temporal_pool, settings.spatial_pool, settings.temporal_sampling]
        merged = {**server, **hf_kwargs}  # the request's frame options over the server's
        frame_options = {k: merged[k] for k in _FRAME_KEYS if merged.get(k) is not None}
        data: dict[str, Any] = {}
        videos = list(hf_data.get("videos") or [])  # type: ignore[call-overload]  # a list from the parser
        if videos:
            clips = []
            for item in videos:
                clip, meta = _video_item(item)
                extra = {"video_metadata": [meta]} if meta is not None and "fps" in frame_options else {}
                pixels = processor.video_processor([clip], return_tensors=None, **frame_options, **extra)
                clips.append(pixels["pixel_values_videos"][0])
            data["pixel_values_videos"] = clips
            data["video_reduction"] = torch.tensor([row] * len(clips), dtype=torch.long)
        images = hf_data.get("images")
        if images:
            pics = processor._preprocess_images(images, {})
            data["pixel_values"] = torch.stack(pics)
            data["image_reduction"] = torch.tensor([row] * len(pics), dtype=torch.long)
        return BatchFeature(data)

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values_videos": MultiModalFieldConfig.batched("video"),
            "video_reduction": MultiModalFieldConfig.batched("video"),
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_reduction": MultiModalFieldConfig.batched("image"),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()

        def count(modality: str, pixels_key: str, reduction_key: str, item_idx: int) -> int:
            item = out_mm_kwargs[modality][item_idx]
            k, p, s = (int(v) for v in item[reduction_key].data.tolist())
            frames = int(item[pixels_key].data.shape[0]) if modality == "video" else 1
            return self.info.num_tokens(frames, ReductionSettings(k, p, s))

        def video(item_idx: int) -> list[int]:
            return [config.video_token_id] * count("video", "pixel_values_videos", "video_reduction", item_idx)

        def image(item_idx: int) -> list[int]:
            return [config.image_token_id] * count("image", "pixel_values", "image_reduction", item_idx)

        return [
            PromptReplacement(modality="video", target=[config.video_token_id], replacement=video),
            PromptReplacement(modality="image", target=[config.image_token_id], replacement=image),
        ]


@MULTIMODAL_REGISTRY.register_processor(
    StormMultiModalProcessor, info=StormProcessingInfo, dummy_inputs=StormDummyInputsBuilder
)
class StormVllmForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP):
    """STORM for vLLM: ``vision_tower`` / ``projector`` / ``temporal`` are storm-vlm's modules,
    ``language_model`` vLLM's causal LM (``.model`` and ``.lm_head``), named as the checkpoint keys."""

    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    # StormModel's visual methods, run on this module's own towers (they read only the attributes set below)
    encode_frames = StormModel.encode_frames
    vision_features = StormModel.vision_features
    encode_video = StormModel.encode_video
    apply_temporal = StormModel.apply_temporal
    get_visual_tokens = StormModel.get_visual_tokens

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return VIDEO_TOKEN
        if modality.startswith("image"):
            return IMAGE_TOKEN
        raise ValueError(f"STORM takes videos and images, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: StormConfig = vllm_config.model_config.hf_config
        self.config = config
        self.fast_path = None  # storm-vlm's CUDA fast path is for its own generate loop, not vLLM's
        mixin: Any = self  # SupportsMultiModal's helpers (typed only where vLLM is installed)
        with mixin._mark_tower_model(vllm_config, {"video", "image"}):
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.projector = Projector(
                config.vision_config.hidden_size, config.hidden_size, config.downsample, config.projector_type
            )
            self.temporal = TemporalEncoder(config) if config.uses_temporal else None
        model_type = config.text_config.model_type
        if model_type not in _LLM_ARCHITECTURES:
            raise ValueError(f"STORM on vLLM supports a {' or '.join(_LLM_ARCHITECTURES)} LLM, not {model_type!r}")
        with mixin._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[_LLM_ARCHITECTURES[model_type]],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # -- the visual path -----------------------------------------------------------------------
    def _clip_tokens(self, pixels: torch.Tensor, reduction: torch.Tensor) -> torch.Tensor:
        """One clip ``(T, 3, S, S)`` at its ``(k, p, s)`` row → ``(T'·N', D)`` LLM-input tokens."""
        k, p, s = (int(v) for v in reduction.tolist())
        tokens = self.get_visual_tokens(pixels[None].to(self.vision_tower.dtype), ReductionSettings(k, p, s))
        return tokens.flatten(0, 2)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Visual tokens per item, videos then images as vLLM groups them (each clip on its own: the
        scan never crosses clips, and clips differ in length)."""
        out: list[torch.Tensor] = []
        for pixels_key, reduction_key in _PIXEL_FIELDS:
            pixels = kwargs.get(pixels_key)
            if pixels is None:
                continue
            for item, row in zip(_per_item(pixels), _per_item(kwargs[reduction_key]), strict=True):
                clip = item if pixels_key == "pixel_values_videos" else item[None]  # an image is a one-frame clip
                out.append(self._clip_tokens(clip, row))
        return out

    # -- the LLM -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        body: Any = self.language_model.model
        return body(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        llm: Any = self.language_model
        return llm.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """storm-vlm's checkpoint keys are this module's names, so no mapping is needed (vLLM's LLM
        stacks q/k/v and gate/up itself, and skips a tied head)."""
        return AutoWeightsLoader(self).load_weights(weights)
