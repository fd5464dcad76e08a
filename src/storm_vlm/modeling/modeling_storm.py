"""STORM: vision tower → projector → temporal Mamba module → token reduction → LLM.

Data flow for a batch of B clips of T frames (paper Fig. 2; docs/design.md)::

    pixel_values_videos (B, T, 3, H, W)
      → vision tower, per frame, in chunks        (B·T, h·w, C)      h = w = H / patch
      → space-to-depth r×r + LayerNorm + Linear   (B, T, N, D)       N = ⌈h/r⌉·⌈w/r⌉
      → L bidirectional Mamba blocks (Eq. 4-5)    (B, T, N, D)
      → temporal pool k, spatial pool p, sample s (B, T', N', D)     (Eq. 6-8)
      → spliced into the LLM's input embeddings at the <video> placeholder positions
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipVisionModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..configuration_storm import StormConfig
from .fast_path import FastPath
from .mamba import SSMBranch, reset_default_init
from .projector import Projector
from .reduction import ReductionSettings, reduce_tokens, settings_for_budget
from .temporal import TemporalEncoder

if TYPE_CHECKING:
    from ..streaming import StormStream

__all__ = ["StormForConditionalGeneration", "StormPreTrainedModel"]

Videos = torch.Tensor | Sequence[torch.Tensor]


class StormPreTrainedModel(PreTrainedModel):
    config: StormConfig
    config_class = StormConfig
    base_model_prefix = ""
    input_modalities = ("video", "image", "text")  # type: ignore[assignment]  # tuples as in transformers' VLMs
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["TemporalBlock"]  # type: ignore[misc]  # typed an instance var there
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' generic init, except for the projector and the temporal module.

        The temporal module starts as mamba_ssm's Mamba does and the projector as LLaVA's: their
        Linear / Conv1d layers are marked by :func:`keep_default_init` and get PyTorch's default
        init back here; each scan branch (visited after its children) re-draws A, D and Δ. Every
        init goes through ``transformers.initialization``, which skips loaded weights, so
        ``from_pretrained`` re-initialises nothing it loaded.
        """
        super()._init_weights(module)
        reset_default_init(module)
        if isinstance(module, SSMBranch):
            module.reset_ssm_parameters()


class StormForConditionalGeneration(StormPreTrainedModel, GenerationMixin):
    """The full STORM model. ``forward`` and ``generate`` take token ids with placeholders and pixels.

    Example::

        from storm_vlm import StormForConditionalGeneration
        model = StormForConditionalGeneration.from_pretrained("path/to/storm-dir")
        tokens = model.get_visual_tokens(pixel_values_videos)  # (B, T', N', D)
    """

    def __init__(
        self,
        config: StormConfig,
        vision_tower: PreTrainedModel | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.projector = Projector(
            config.vision_config.hidden_size, config.hidden_size, config.downsample, config.projector_type
        )
        self.temporal = None
        if config.projector_type == "storm" and config.temporal_layers > 0:
            self.temporal = TemporalEncoder(
                config.hidden_size,
                config.temporal_layers,
                d_state=config.d_state,
                d_conv=config.d_conv,
                expand=config.expand,
                dt_rank=config.dt_rank,
                bidirectional=config.bidirectional,
            )
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.fast_path: FastPath | None = None  # see enable_fast_path
        self.post_init()

    # -- embeddings plumbing for HF (resize, tying, generation) ------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- vision path -------------------------------------------------------------------------
    def reduction_settings(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
    ) -> ReductionSettings:
        """The settings a call uses: explicit arguments, else the config; no sampling in training."""
        return ReductionSettings.resolve(self.config, temporal_pool, spatial_pool, temporal_sampling, self.training)

    def settings_for_budget(self, budget: int, num_frames: int) -> ReductionSettings:
        """The least compression that fits ``budget`` visual tokens for ``num_frames`` frames, pooling
        in time no more than this model was trained to (``config.temporal_pool``; beyond it, the
        training-free sampling s). See :func:`~storm_vlm.modeling.reduction.settings_for_budget`."""
        return settings_for_budget(budget, num_frames, self.config.token_grid, max(self.config.temporal_pool, 1))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Vision tower on M frames in chunks. ``(M, 3, H, W) → (M, h·w, C)`` patch features."""
        encode = self.fast_path.vision_features if self.fast_path is not None else self.vision_features
        return torch.cat([encode(chunk) for chunk in frames.split(self.config.vision_chunk_size)])

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The ``vision_feature_layer`` hidden state of one chunk. ``(m, 3, H, W) → (m, h·w, C)``.

        A SigLIP tower runs only the layers up to the feature layer (for the default penultimate
        feature, the last layer and post-LayerNorm are skipped); other towers run whole.
        """
        tower, layer = self.vision_tower, self.config.vision_feature_layer
        pixels = pixels.to(tower.dtype)
        if isinstance(tower, SiglipVisionModel) and layer != -1:
            hidden = tower.embeddings(pixels)  # (m, h·w, C)
            for block in tower.encoder.layers[: self.config.vision_layers_run]:
                hidden = block(hidden, None)
            return hidden
        out = tower(pixels, output_hidden_states=layer != -1)
        feats = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        h, w = self.config.patch_grid
        return feats[:, -h * w :]  # drop a CLS token (CLIP); SigLIP has none

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Vision tower + projector, per frame. ``(B, T, 3, H, W) → (B, T, N, D)``."""
        batch, num_frames = frames.shape[:2]
        feats = self.encode_frames(frames.flatten(0, 1))  # (B·T, h·w, C)
        tokens = self.projector(feats, self.config.patch_grid)  # (B·T, N, D)
        return tokens.view(batch, num_frames, *tokens.shape[1:])

    def apply_temporal(self, tokens: torch.Tensor) -> torch.Tensor:
        """The temporal Mamba module (identity for the ``mlp`` baseline). ``(B, T, N, D)`` in and out."""
        return self.temporal(tokens) if self.temporal is not None else tokens

    @contextmanager
    def scan_cut(self) -> Iterator[None]:
        """Inside this block the temporal module scans every frame on its own (the same weights,
        the scan cut at frame boundaries), so no token carries anything from another frame.

        The Mamba-usage diagnostic: a model whose answers do not change under the cut does not use
        its scan across frames. A no-op for the ``mlp`` baseline.
        """
        if self.temporal is None:
            yield
            return
        self.temporal.cut_at_frames = True
        try:
            yield
        finally:
            self.temporal.cut_at_frames = False

    def get_visual_tokens(
        self, pixel_values_videos: torch.Tensor, settings: ReductionSettings | None = None
    ) -> torch.Tensor:
        """Tokens after the temporal module and reduction. ``(B, T, 3, H, W) → (B, T', N', D)``."""
        settings = settings if settings is not None else self.reduction_settings()
        tokens = self.apply_temporal(self.encode_video(pixel_values_videos))
        tokens, _ = reduce_tokens(tokens, self.config.token_grid, settings)
        return tokens

    def start_stream(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        max_frames: int | None = None,
    ) -> StormStream:
        """A live stream (causal models only): ``add_frames`` chunk by chunk, ``ask`` at any time.

        ``max_frames`` bounds the reduced frames kept for the LLM (a sliding window).
        See :mod:`storm_vlm.streaming`.
        """
        from ..streaming import StormStream

        settings = ReductionSettings.resolve(self.config, temporal_pool, spatial_pool, temporal_sampling)
        return StormStream(self, settings, max_frames=max_frames)

    def _visual_embeddings(self, videos: Videos, settings: ReductionSettings) -> torch.Tensor:
        """All clips' reduced tokens, flattened in order: ``(Σ T'_i·N', D)``.

        A tensor batch ``(B, T, 3, H, W)`` runs in one pass; a list of ``(T_i, 3, H, W)`` clips of
        different lengths runs clip by clip (the Mamba scan must not cross clip boundaries).
        """
        if isinstance(videos, torch.Tensor):
            if videos.dim() != 5:
                raise ValueError(f"pixel_values_videos must be (B, T, 3, H, W), got {tuple(videos.shape)}")
            return self.get_visual_tokens(videos, settings).flatten(0, 2)
        return torch.cat([self.get_visual_tokens(clip[None], settings).flatten(0, 2) for clip in videos])

    def _splice(
        self, embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int | None, visual: torch.Tensor, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if token_id is None:
            raise ValueError(f"config.{what}_token_id is not set: cannot place {what} embeddings")
        mask = input_ids == token_id
        n_slots = int(mask.sum())
        if n_slots != visual.shape[0]:
            raise ValueError(
                f"{what}: the prompt has {n_slots} <{what}> placeholder tokens but the {what} input gives "
                f"{visual.shape[0]} visual tokens; build input_ids with StormProcessor using the same "
                "reduction settings (temporal_pool, spatial_pool, temporal_sampling) as the model call"
            )
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), visual.to(embeds.dtype))
        return embeds, mask

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        video_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings with visual tokens written at the placeholder positions.

        Args:
            input_ids: ``(B, S)``.
            video_embeds, image_embeds: ``(Σ T'·N', D)`` reduced visual tokens of all clips /
                images, in placeholder order.

        Returns:
            ``inputs_embeds`` ``(B, S, D)`` and the ``(B, S)`` mask of visual positions.
        """
        embeds = self.get_input_embeddings()(input_ids)
        visual_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        if video_embeds is not None:
            embeds, mask = self._splice(embeds, input_ids, self.config.video_token_id, video_embeds, "video")
            visual_mask |= mask
        if image_embeds is not None:
            embeds, mask = self._splice(embeds, input_ids, self.config.image_token_id, image_embeds, "image")
            visual_mask |= mask
        return embeds, visual_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: Videos | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        video_reduction: torch.LongTensor | None = None,
        image_reduction: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Run the LLM on text embeddings with visual tokens spliced in at the placeholders.

        Args:
            input_ids: ``(B, S)`` with one ``video_token_id`` per visual token (the processor
                expands each ``<video>``).
            pixel_values_videos: ``(B, T, 3, H, W)`` or a list of ``(T_i, 3, H, W)``.
            pixel_values: images ``(M, 3, H, W)``, each a one-frame clip (paper §4.1).
            labels: ``(B, S)``; placeholder positions never count in the loss.
            inputs_embeds: instead of ids and pixels, ready embeddings (see :meth:`embed_inputs`).
            temporal_pool, spatial_pool, temporal_sampling: per-call override of the config's
                k, p, s (s is ignored in training mode).
            video_reduction, image_reduction: ``(num_videos, 3)`` / ``(num_images, 3)`` rows of
                (k, p, s), as the processor returns them: the settings its placeholders were
                expanded with, so ``model(**inputs)`` / ``generate(**inputs)`` repeat nothing.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:  # and so no inputs_embeds
            settings = self.reduction_settings(temporal_pool, spatial_pool, temporal_sampling)
            explicit = any(v is not None for v in (temporal_pool, spatial_pool, temporal_sampling))
            video_settings = _layout_settings(video_reduction, settings, explicit, "video_reduction")
            image_settings = _layout_settings(image_reduction, settings, explicit, "image_reduction")
            videos = (
                self._visual_embeddings(pixel_values_videos, video_settings)
                if pixel_values_videos is not None
                else None
            )
            images = (
                self._visual_embeddings(pixel_values.unsqueeze(1), image_settings) if pixel_values is not None else None
            )
            inputs_embeds, visual_mask = self.embed_inputs(input_ids, videos, images)
            if labels is not None:
                labels = labels.masked_fill(visual_mask, -100)
        elif pixel_values_videos is not None or pixel_values is not None:
            raise ValueError("pixel inputs need input_ids to locate the placeholder tokens, not inputs_embeds")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:  # type: ignore[override]
        """transformers' save, plus the code, ``auto_map`` and a model card (:mod:`storm_vlm.remote_code`):
        the directory then loads with ``trust_remote_code=True`` where storm-vlm is not installed."""
        from ..remote_code import AUTO_MAP, write_model_card, write_remote_code

        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            write_model_card(save_directory, self.config)

    def generate(self, *args, **kwargs):
        """transformers' ``generate``; with :attr:`fast_path` set, on a static cache with a compiled step."""
        if self.fast_path is not None and not args:
            if self.fast_path.can_decode(kwargs, self.generation_config):
                if kwargs.get("eos_token_id") is None:
                    kwargs["eos_token_id"] = self.generation_config.eos_token_id
                with torch.inference_mode():
                    return self.fast_path.greedy_decode(self, **kwargs)
            kwargs = self.fast_path.generate_kwargs(self, kwargs)
        return super().generate(*args, **kwargs)

    # -- building from pretrained parts ------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        vision_path: str | Path,
        llm_path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dtype: torch.dtype | str | None = None,
        **storm_options,
    ) -> StormForConditionalGeneration:
        """A STORM model from a pretrained vision tower and LLM in local HF directories.

        ``vision_path`` may hold a vision-only model (``SiglipVisionModel``, ``CLIPVisionModel``),
        a dual encoder (``SiglipModel``, ``CLIPModel``) or a VLM such as PaliGemma or LLaVA, whose
        tower is taken; a tower or LLM weight the checkpoint lacks is an error
        (:mod:`storm_vlm.modeling.parts`). The projector and temporal module start random (paper
        §4.1). ``tokenizer`` (the LLM's, loaded from ``llm_path`` when not given) gets the
        ``<video>`` / ``<image>`` placeholders, and the LLM's embeddings grow to hold them.
        """
        from .parts import build_from_parts

        return build_from_parts(cls, vision_path, llm_path, tokenizer=tokenizer, dtype=dtype, **storm_options)


def _layout_settings(
    layout: torch.Tensor | None, default: ReductionSettings, explicit: bool, name: str
) -> ReductionSettings:
    """The (k, p, s) a processor expanded placeholders with (one row per clip), else ``default``.

    ``default`` holds the explicit ``temporal_pool`` / ``spatial_pool`` / ``temporal_sampling``
    arguments or the config; explicit arguments that disagree with the layout could not match the
    placeholders, so that is an error. All rows must agree (one setting per call).
    """
    if layout is None:
        return default
    rows = torch.as_tensor(layout).reshape(-1, 3)
    if rows.shape[0] == 0:
        return default
    if not bool((rows == rows[0]).all()):
        raise ValueError(f"{name}: every clip of one call must use the same (k, p, s), got {rows.tolist()}")
    k, p, s = (int(v) for v in rows[0])
    settings = ReductionSettings(k, p, s)
    if explicit and settings != default:
        raise ValueError(f"{name} says {settings} but the call asks for {default}: give one of them")
    return settings


AutoModel.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
