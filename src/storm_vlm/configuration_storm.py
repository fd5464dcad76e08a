"""`StormConfig`: one composite config for vision tower, projector, temporal module, reduction and LLM.

Every knob of the paper lives here once (docs/design.md). Paper symbols:

=====================  ======  ==========================================================
field                  symbol  meaning
=====================  ======  ==========================================================
``downsample``         r=d²    side of the space-to-depth window (2 → 4x fewer tokens, Eq. 3)
``temporal_layers``    L       Mamba blocks in the temporal module (Eq. 5)
``d_state``            N_ssm   SSM state size per channel (Mamba-1 ``d_state``)
``temporal_pool``      k       average every k consecutive frames (Eq. 6-7), trained with it
``spatial_pool``       p       p x p average pooling on each frame's token grid
``temporal_sampling``  s       keep frames 0, s, 2s, ... at inference only (Eq. 8)
=====================  ======  ==========================================================

Every integer field is bounded (``validate_storm``, one ``ValueError`` naming the field): L at most
``MAX_TEMPORAL_LAYERS`` (64); k, p, s at most ``MAX_REDUCTION`` (4096, ``limits.MAX_FRAMES``: a
window wider than the most frames a clip may hold changes nothing); the Mamba sizes and the other
windows at most the values in ``_BOUNDS``. A recipe's ``model.temporal_pool: 1000000`` fails there
before anything is built.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .limits import MAX_FRAMES, MAX_REDUCTION, MAX_TEMPORAL_LAYERS

__all__ = ["StormConfig"]

if TYPE_CHECKING:
    _In = TypeVar("_In")
    _Out = TypeVar("_Out")

    class _Filled(Generic[_In, _Out]):
        """How a type checker sees a field that ``__post_init__`` fills in: given as ``_In`` (to the
        constructor), read as ``_Out``. ``vision_config`` / ``text_config`` are given as a dict, a
        config or None (the default) and read as the config made of it; ``dt_rank`` None → an int."""

        def __init__(self) -> None: ...
        def __get__(self, obj: object, owner: object = None) -> _Out: ...
        def __set__(self, obj: object, value: _In) -> None: ...

    _SubConfig = _Filled[dict[str, Any] | PretrainedConfig | None, PretrainedConfig]


# (lowest, highest) of each integer field; the highs only stop absurd values (memory, time)
_BOUNDS: dict[str, tuple[int, int]] = {
    "downsample": (1, 64),
    "temporal_pool": (1, MAX_REDUCTION),
    "spatial_pool": (1, MAX_REDUCTION),
    "temporal_sampling": (1, MAX_REDUCTION),
    "vision_chunk_size": (1, MAX_FRAMES),
    "temporal_layers": (0, MAX_TEMPORAL_LAYERS),
    "d_state": (1, 1024),
    "d_conv": (1, 64),
    "expand": (1, 64),
    "dt_rank": (1, 1 << 16),
}


class StormConfig(PretrainedConfig):
    r"""Configuration of :class:`~storm_vlm.StormForConditionalGeneration`.

    Args:
        vision_config: any HF vision-tower config (SigLIP first-class; CLIP vision works).
            Defaults to SigLIP-So400m/14 at 448 px, the paper's encoder (1024 patches per frame).
        text_config: any HF causal-LM config. Defaults to Qwen2-7B.
        projector_type: ``"storm"`` = space-to-depth + LayerNorm + one Linear + Mamba blocks (the
            paper); ``"mlp"`` = space-to-depth + LayerNorm + Linear-GELU-Linear, no Mamba (the
            paper's VILA baseline).
        downsample: side of the parameter-free space-to-depth window (2 → 2x2 → 4x fewer tokens).
        vision_feature_layer: which vision hidden state feeds the projector (VILA/LLaVA use -2).
        temporal_layers: L, number of pre-norm residual Mamba blocks (ignored by ``"mlp"``).
        d_state, d_conv, expand, dt_rank: Mamba-1 mixer sizes; ``dt_rank=None`` → ceil(D/16).
        bidirectional: scan the T·N sequence both ways (the paper); ``False`` gives the causal
            variant that streaming needs (paper Table 7).
        temporal_pool: k. spatial_pool: p (a p x p kernel on the token grid).
        temporal_sampling: s, applied only when the model is not training.
        vision_chunk_size: frames per vision-tower call, so memory does not grow with T.
        video_token_id / image_token_id: placeholder ids in the LLM vocabulary; the processor
            expands one ``<video>`` into as many ids as there are visual tokens after reduction.
    """

    model_type = "storm"

    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="siglip_vision_model",
            init_kwargs={
                "hidden_size": 1152,
                "intermediate_size": 4304,
                "num_hidden_layers": 27,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 448,
                "vision_use_head": False,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="qwen2",
            init_kwargs={  # Qwen2-7B, the language tower of Qwen2-VL-7B (paper §4.1)
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "max_position_embeddings": 32768,
                "rope_theta": 1000000.0,
            },
        ),
    }

    if TYPE_CHECKING:  # the same fields, typed as read after __post_init__ (see _Filled)
        vision_config: _SubConfig = _SubConfig()
        text_config: _SubConfig = _SubConfig()
    else:
        vision_config: dict | PretrainedConfig | None = None
        text_config: dict | PretrainedConfig | None = None
    projector_type: str = "storm"
    downsample: int = 2
    vision_feature_layer: int = -2
    temporal_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    if TYPE_CHECKING:
        dt_rank: _Filled[int | None, int] = _Filled()
    else:
        dt_rank: int | None = None
    bidirectional: bool = True
    temporal_pool: int = 1
    spatial_pool: int = 1
    temporal_sampling: int = 1
    vision_chunk_size: int = 32
    video_token_id: int | None = None
    image_token_id: int | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.hidden_size / 16)
        # the LM head is StormForConditionalGeneration's: it is tied as the LLM's own config says
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self.validate_storm()

    @property
    def hidden_size(self) -> int:
        """D, the LLM width: the projector maps to it and the Mamba blocks run at it."""
        return self.text_config.hidden_size

    @property
    def uses_temporal(self) -> bool:
        """Whether the model has a temporal Mamba module (``"storm"`` with L ≥ 1)."""
        return self.projector_type == "storm" and self.temporal_layers > 0

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Patch grid of one frame out of the vision tower, e.g. 448/14 → (32, 32)."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side, side

    @property
    def token_grid(self) -> tuple[int, int]:
        """Token grid of one frame after space-to-depth, e.g. (32, 32) → (16, 16): N = 256."""
        h, w = self.patch_grid
        return -(-h // self.downsample), -(-w // self.downsample)

    @property
    def vision_feature_depth(self) -> int:
        """Encoder layers the feature comes out of: ``hidden_states[vision_feature_layer]`` is the
        output of this many layers (-2 of 27 → 26); later layers never reach the projector."""
        layer = self.vision_feature_layer
        return self.vision_config.num_hidden_layers + 1 + layer if layer < 0 else layer

    @property
    def vision_layers_run(self) -> int:
        """Vision encoder layers that run per frame: those up to ``vision_feature_layer``.

        SigLIP towers stop there (the default feature is the penultimate layer, so the last layer
        and the post-LayerNorm are skipped); other towers run every layer and pick a hidden state.
        """
        if self.vision_config.model_type != "siglip_vision_model" or self.vision_feature_layer == -1:
            return self.vision_config.num_hidden_layers
        return self.vision_feature_depth

    def validate_storm(self) -> None:
        """Reject inconsistent settings with one message naming the field."""
        if self.projector_type not in ("storm", "mlp"):
            raise ValueError(f"projector_type must be 'storm' or 'mlp', got {self.projector_type!r}")
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
