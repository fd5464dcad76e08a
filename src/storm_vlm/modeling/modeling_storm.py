"""STORM in transformers' VLM shape: :class:`StormModel` (vision tower → projector → temporal
Mamba module → token reduction → LLM body) and :class:`StormForConditionalGeneration` (``.model``
and ``.lm_head``), as LLaVA and Qwen2-VL are built.

Data flow for a batch of B clips of T frames (paper Fig. 2; docs/design.md)::

    pixel_values_videos (B, T, 3, H, W)
      → vision tower, per frame, in chunks        (B·T, h·w, C)      h = w = H / patch
      → space-to-depth r×r + LayerNorm + Linear   (B, T, N, D)       N = ⌈h/r⌉·⌈w/r⌉
      → L bidirectional Mamba blocks (Eq. 4-5)    (B, T, N, D)
      → temporal pool k, spatial pool p, sample s (B, T', N', D)     (Eq. 6-8)
      → spliced into the LLM's input embeddings at the <video> placeholder positions
      → LLM body (B, S, D) → lm_head (B, S, V)

Checkpoints keep the layout storm-vlm 0.1 wrote (``language_model.model.*``,
``language_model.lm_head.*``, ``vision_tower.*``, ``projector.*``, ``temporal.*``): the renaming
below (:data:`CHECKPOINT_RENAMES`) maps it onto ``model.*`` / ``lm_head.*`` on load, and
transformers applies it in reverse on save, so directories written before and after load alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar, cast

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipVisionModel,
)
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput

from ..configuration_storm import StormConfig
from .fast_path import FastPath
from .mamba import SSMBranch, reset_default_init
from .projector import Projector
from .reduction import ReductionSettings, reduce_tokens, settings_for_budget
from .temporal import TemporalEncoder

__all__ = [
    "CHECKPOINT_RENAMES",
    "StormForConditionalGeneration",
    "StormModel",
    "StormPreTrainedModel",
    "StormVisualOutput",
    "checkpoint_key",
]

Videos = torch.Tensor | Sequence[torch.Tensor]
P = ParamSpec("P")
R = TypeVar("R")

# storm-vlm 0.1 checkpoint keys → module names (LLaVA's renaming in transformers 5, for our parts)
CHECKPOINT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.lm_head", "lm_head"),
    (r"^language_model\.model", "model.language_model"),
    (r"^vision_tower", "model.vision_tower"),
    (r"^projector", "model.projector"),
    (r"^temporal", "model.temporal"),
)


@dataclass
class StormVisualOutput(ModelOutput):
    """What :meth:`StormModel.get_video_features` returns, in transformers' VLM convention.

    Args:
        last_hidden_state: ``(B, T', N', D)`` reduced tokens of a tensor batch; None for a list of clips.
        pooler_output: per clip (or image), its ``(T'·N', D)`` tokens in placeholder order.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: tuple[torch.Tensor, ...] | None = None  # ModelOutput: every field but the first defaults to None

    def flat(self) -> torch.Tensor:
        """All clips' tokens in placeholder order, ``(Σ T'·N', D)``: what the placeholders take."""
        if not self.pooler_output:
            raise ValueError("no visual tokens: the video input holds no clip")
        return torch.cat(self.pooler_output)


def checkpoint_key(name: str) -> str:
    """A parameter name of :class:`StormForConditionalGeneration` → its key in a saved file
    (``model.language_model.x`` → ``language_model.model.x``): :data:`CHECKPOINT_RENAMES` reversed."""
    for old, new in CHECKPOINT_RENAMES:
        if name == new or name.startswith(new + "."):
            return old.removeprefix("^").replace("\\.", ".") + name[len(new) :]
    return name


class StormPreTrainedModel(PreTrainedModel):
    config: StormConfig
    config_class = StormConfig
    base_model_prefix = "model"
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

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:  # type: ignore[override]
        """transformers' save, plus the code, ``auto_map`` and a model card (:mod:`storm_vlm.remote_code`):
        the directory then loads with ``trust_remote_code=True`` where storm-vlm is not installed.
        Files are readable by all (transformers writes the weights 0600)."""
        from ..model_dir import share_files_like_umask
        from ..remote_code import AUTO_MAP, write_model_card, write_remote_code

        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            write_model_card(save_directory, self.config)
            share_files_like_umask(Path(save_directory).glob("model*.safetensors*"))


class StormModel(StormPreTrainedModel):
    """Vision tower, projector, temporal module, reduction and the LLM body, without an LM head.

    ``forward`` returns the LLM's last hidden states for token ids whose placeholders are filled
    with visual tokens; :meth:`get_video_features` / :meth:`get_image_features` give those tokens.
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
        self.temporal = TemporalEncoder(config) if config.uses_temporal else None
        self.language_model = (
            language_model if language_model is not None else AutoModel.from_config(config.text_config)
        )
        self.fast_path: FastPath | None = None  # see modeling.fast_path.enable_fast_path
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # -- settings ----------------------------------------------------------------------------
    def reduction_settings(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
    ) -> ReductionSettings:
        """The settings a call uses: explicit arguments, else the config; no sampling in training."""
        return ReductionSettings.resolve(self.config, temporal_pool, spatial_pool, temporal_sampling, self.training)

    # -- vision path -------------------------------------------------------------------------
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

    def get_video_features(
        self,
        pixel_values_videos: Videos,
        video_reduction: torch.Tensor | None = None,
        settings: ReductionSettings | None = None,
    ) -> StormVisualOutput:
        """Reduced visual tokens per clip, as transformers' VLMs return them.

        Args:
            pixel_values_videos: ``(B, T, 3, H, W)``, one pass (the Mamba scan never crosses clips),
                or a list of ``(T_i, 3, H, W)`` clips of different lengths, run one by one.
            video_reduction: the processor's ``(B, 3)`` rows of (k, p, s); else ``settings``, else
                the config's.

        Returns:
            ``pooler_output``: a tuple of ``(T'_i·N', D)`` per clip, in placeholder order;
            ``last_hidden_state``: ``(B, T', N', D)`` for a tensor batch, else None.
        """
        settings = _layout_settings(video_reduction, settings or self.reduction_settings(), "video_reduction")
        if isinstance(pixel_values_videos, torch.Tensor):
            if pixel_values_videos.dim() != 5:
                raise ValueError(f"pixel_values_videos must be (B, T, 3, H, W), got {tuple(pixel_values_videos.shape)}")
            tokens = self.get_visual_tokens(pixel_values_videos, settings)  # (B, T', N', D)
            return StormVisualOutput(last_hidden_state=tokens, pooler_output=tuple(tokens.flatten(1, 2)))
        clips = tuple(self.get_visual_tokens(clip[None], settings).flatten(0, 2) for clip in pixel_values_videos)
        return StormVisualOutput(last_hidden_state=None, pooler_output=clips)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_reduction: torch.Tensor | None = None,
        settings: ReductionSettings | None = None,
    ) -> StormVisualOutput:
        """Images ``(M, 3, H, W)``, each a one-frame clip (paper §4.1): ``pooler_output`` holds
        ``(N', D)`` per image."""
        settings = _layout_settings(image_reduction, settings or self.reduction_settings(), "image_reduction")
        return self.get_video_features(pixel_values.unsqueeze(1), settings=settings)

    def get_placeholder_mask(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        image_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, 1)`` masks of the ``<image>`` and ``<video>`` placeholders, checked against the
        number of visual tokens given (as in Qwen2-VL)."""
        masks = []
        for what, token_id, features in (
            ("image", self.config.image_token_id, image_features),
            ("video", self.config.video_token_id, video_features),
        ):
            mask = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
            if features is not None:
                if token_id is None:
                    raise ValueError(f"config.{what}_token_id is not set: cannot place {what} embeddings")
                n_slots = int(mask.sum())
                if n_slots != features.shape[0]:
                    raise ValueError(
                        f"{what}: the prompt has {n_slots} <{what}> placeholder tokens but the {what} input gives "
                        f"{features.shape[0]} visual tokens; build input_ids with StormProcessor and pass its "
                        f"{what}_reduction (or the same temporal_pool, spatial_pool, temporal_sampling) to the model"
                    )
            masks.append(mask.unsqueeze(-1).to(inputs_embeds.device))
        return masks[0], masks[1]

    def placeholder_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` mask of the ``<video>`` / ``<image>`` placeholder ids."""
        ids = [t for t in (self.config.video_token_id, self.config.image_token_id) if t is not None]
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

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
        image_mask, video_mask = self.get_placeholder_mask(input_ids, embeds, image_embeds, video_embeds)
        if video_embeds is not None:
            embeds = embeds.masked_scatter(video_mask, video_embeds.to(embeds.dtype))
        if image_embeds is not None:
            embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
        visual = (video_mask if video_embeds is not None else torch.zeros_like(video_mask)) | (
            image_mask if image_embeds is not None else torch.zeros_like(image_mask)
        )
        return embeds, visual.squeeze(-1)

    def visual_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        pixel_values_videos: Videos | None = None,
        pixel_values: torch.Tensor | None = None,
        settings: ReductionSettings | None = None,
        video_reduction: torch.Tensor | None = None,
        image_reduction: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and pixels → ``inputs_embeds`` ``(B, S, D)`` and the visual-position mask ``(B, S)``.

        ``settings`` holds explicit k / p / s; the processor's ``*_reduction`` rows say what the
        placeholders were expanded with. Both given and different is an error (the counts could
        not match).
        """
        default = settings if settings is not None else self.reduction_settings()
        video_settings = _layout_settings(video_reduction, default, "video_reduction", explicit=settings is not None)
        image_settings = _layout_settings(image_reduction, default, "image_reduction", explicit=settings is not None)
        videos = images = None
        if pixel_values_videos is not None:
            videos = self.get_video_features(pixel_values_videos, settings=video_settings).flat()
        if pixel_values is not None:
            images = self.get_image_features(pixel_values, settings=image_settings).flat()
        return self.embed_inputs(input_ids, videos, images)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: Videos | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        reduction: ReductionSettings | None = None,
        video_reduction: torch.LongTensor | None = None,
        image_reduction: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """The LLM body on text embeddings with visual tokens at the placeholders: last hidden states.

        ``reduction`` overrides the config's k / p / s; see
        :meth:`StormForConditionalGeneration.forward` for the other arguments.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:  # and so no inputs_embeds
            inputs_embeds, _ = self.visual_inputs_embeds(
                input_ids, pixel_values_videos, pixel_values, reduction, video_reduction, image_reduction
            )
        elif pixel_values_videos is not None or pixel_values is not None:
            raise ValueError("pixel inputs need input_ids to locate the placeholder tokens, not inputs_embeds")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )


def _body_method(method: Callable[Concatenate[StormModel, P], R]) -> Callable[Concatenate[Any, P], R]:
    """``method`` of :class:`StormModel`, called on the full model's ``.model`` (as transformers'
    VLMs forward ``get_image_features``), with its signature and docstring."""

    @functools.wraps(method)
    def on_body(self: StormForConditionalGeneration, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.model, *args, **kwargs)

    return on_body


class StormForConditionalGeneration(StormPreTrainedModel, GenerationMixin):
    """The full STORM model: :class:`StormModel` as ``.model`` and the LM head as ``.lm_head``.
    ``forward`` and ``generate`` take token ids with placeholders and pixels.

    Example::

        from storm_vlm import StormForConditionalGeneration, StormProcessor
        model = StormForConditionalGeneration.from_pretrained("path/to/storm-dir")
        processor = StormProcessor.from_pretrained("path/to/storm-dir")
        inputs = processor(text="<video>What happens?", videos=[frames], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=32)
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}  # noqa: RUF012  # as transformers declares it
    _tp_plan = {"lm_head": "colwise_gather_output"}  # noqa: RUF012

    def __init__(
        self,
        config: StormConfig,
        vision_tower: PreTrainedModel | None = None,
        language_model: PreTrainedModel | None = None,
    ) -> None:
        """``vision_tower`` / ``language_model``: ready parts (``from_parts``); a causal LM is split
        into its body (``model.language_model``) and head (``lm_head``)."""
        super().__init__(config)
        body, head = _split_causal_lm(language_model)
        self.model = StormModel(config, vision_tower=vision_tower, language_model=body)
        text = config.text_config
        self.lm_head = head if head is not None else nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()

    # -- the parts, as transformers' VLMs name them ------------------------------------------
    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def projector(self) -> Projector:
        return self.model.projector

    @property
    def temporal(self) -> TemporalEncoder | None:
        return self.model.temporal

    @property
    def language_model(self) -> nn.Module:
        """The LLM body (no head: the logits come from :attr:`lm_head`)."""
        return self.model.language_model

    @property
    def fast_path(self) -> FastPath | None:
        """Set by :func:`~storm_vlm.modeling.fast_path.enable_fast_path`: compiled vision, static-cache decoding."""
        return self.model.fast_path

    @fast_path.setter
    def fast_path(self, value: FastPath | None) -> None:
        self.model.fast_path = value

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    # -- the vision path: StormModel's methods, on the full model as well --------------------
    reduction_settings = _body_method(StormModel.reduction_settings)
    get_video_features = _body_method(StormModel.get_video_features)
    get_image_features = _body_method(StormModel.get_image_features)
    get_visual_tokens = _body_method(StormModel.get_visual_tokens)
    encode_video = _body_method(StormModel.encode_video)
    apply_temporal = _body_method(StormModel.apply_temporal)
    embed_inputs = _body_method(StormModel.embed_inputs)
    scan_cut = _body_method(StormModel.scan_cut)

    def settings_for_budget(self, budget: int, num_frames: int) -> ReductionSettings:
        """The least compression that fits ``budget`` visual tokens for ``num_frames`` frames, pooling
        in time no more than this model was trained to (``config.temporal_pool``; beyond it, the
        training-free sampling s). See :func:`~storm_vlm.modeling.reduction.settings_for_budget`."""
        return settings_for_budget(budget, num_frames, self.config.token_grid, max(self.config.temporal_pool, 1))

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
        """Logits (and the loss with ``labels``) for text with visual tokens at the placeholders.

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
        explicit = any(v is not None for v in (temporal_pool, spatial_pool, temporal_sampling))
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            pixel_values=pixel_values,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            reduction=self.reduction_settings(temporal_pool, spatial_pool, temporal_sampling) if explicit else None,
            video_reduction=video_reduction,
            image_reduction=image_reduction,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            if input_ids is not None:  # placeholder positions never count in the loss
                labels = labels.masked_fill(self.model.placeholder_positions(input_ids), -100)
            vocab = self.config.text_config.vocab_size
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def generate(self, *args, **kwargs):
        """transformers' ``generate``; with :attr:`fast_path` set, on a static cache with a compiled step."""
        fast = self.fast_path
        if fast is not None and not args:
            if fast.can_decode(kwargs, self.generation_config):
                if kwargs.get("eos_token_id") is None:
                    kwargs["eos_token_id"] = self.generation_config.eos_token_id
                with torch.inference_mode():
                    return fast.greedy_decode(self, **kwargs)
            kwargs = fast.generate_kwargs(self, kwargs)
        return super().generate(*args, **kwargs)

    # -- building from pretrained parts ------------------------------------------------------
    @classmethod
    def from_parts(
        cls,
        vision_path: str | Path | PreTrainedModel,
        llm_path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        dtype: torch.dtype | str | None = None,
        **storm_options,
    ) -> StormForConditionalGeneration:
        """A STORM model from a pretrained vision tower and LLM in local HF directories.

        ``vision_path`` may hold a vision-only model (``SiglipVisionModel``, ``CLIPVisionModel``),
        a dual encoder (``SiglipModel``, ``CLIPModel``) or a VLM such as PaliGemma or LLaVA, whose
        tower is taken, or be a tower already built; ``llm_path`` a directory or a ``.gguf`` file.
        A tower or LLM weight the checkpoint lacks is an error
        (:mod:`storm_vlm.modeling.parts`). The projector and temporal module start random (paper
        §4.1). ``tokenizer`` (the LLM's, loaded from ``llm_path`` when not given) gets the
        ``<video>`` / ``<image>`` placeholders, and the LLM's embeddings grow to hold them.
        """
        from .parts import build_from_parts

        return build_from_parts(cls, vision_path, llm_path, tokenizer=tokenizer, dtype=dtype, **storm_options)


def _split_causal_lm(llm: PreTrainedModel | None) -> tuple[PreTrainedModel | None, nn.Module | None]:
    """A causal LM → (its body, its LM head); a bare body → (it, None)."""
    if llm is None:
        return None, None
    head = llm.get_output_embeddings()
    if head is None:
        return llm, None
    return cast(PreTrainedModel, llm.base_model), head


def _layout_settings(
    layout: torch.Tensor | None, default: ReductionSettings, name: str, explicit: bool = False
) -> ReductionSettings:
    """The (k, p, s) a processor expanded placeholders with (one row per clip), else ``default``.

    ``default`` holds explicit settings (``explicit``) or the config's; explicit settings that
    disagree with the layout could not match the placeholders, so that is an error. All rows must
    agree (one setting per call).
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


register_checkpoint_conversion_mapping(
    StormConfig.model_type,
    [WeightRenaming(source_patterns=old, target_patterns=new) for old, new in CHECKPOINT_RENAMES],
    overwrite=True,
)
AutoModel.register(StormConfig, StormModel, exist_ok=True)
AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
