"""Analytic FLOPs and memory per stage, from configs alone (no weights needed).

A multiply-add counts as 2 FLOPs, as ``torch.utils.flop_counter`` counts matmuls; attention is
counted dense (QKᵀ and AV over the full sequence, as the counter counts SDPA). Validated against
the counter in ``tests/test_bench.py``. The selective scan itself (≈ 9·L·E·N per direction: the
discretisation, the state update and the readout) runs as a fused kernel the counter cannot see;
it is added as that estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..configuration_storm import StormConfig
from ..modeling.reduction import ReductionSettings, num_visual_tokens

__all__ = ["StageFlops", "conv_flops", "kv_cache_bytes", "scan_flops", "stage_flops"]


@dataclass
class StageFlops:
    vision: float
    projector: float
    temporal: float
    llm_prefill: float
    llm_token: float  # one decoding step at the end of the prompt

    @property
    def total_prefill(self) -> float:
        return self.vision + self.projector + self.temporal + self.llm_prefill


def _vision_layer(cfg, tokens: int) -> float:
    h, i = cfg.hidden_size, cfg.intermediate_size
    return 2 * tokens * (4 * h * h + 2 * h * i) + 4 * tokens * tokens * h


def vision_flops(config: StormConfig, frames: int) -> float:
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    embed = 2 * patches * (3 * v.patch_size**2) * v.hidden_size
    return frames * (embed + config.vision_layers_run * _vision_layer(v, patches))


def projector_flops(config: StormConfig, frames: int) -> float:
    c4 = config.vision_config.hidden_size * config.downsample**2
    d = config.hidden_size
    n = config.token_grid[0] * config.token_grid[1]
    per_token = 2 * c4 * d + (2 * d * d if config.projector_type == "mlp" else 0)
    return frames * n * per_token


def scan_flops(config: StormConfig, frames: int) -> float:
    """The fused selective scan alone (≈ 9·L·E·N per direction and layer): invisible to the counter."""
    if config.projector_type != "storm" or config.temporal_layers == 0:
        return 0.0
    length = frames * config.token_grid[0] * config.token_grid[1]
    directions = 2 if config.bidirectional else 1
    return config.temporal_layers * directions * 9 * length * config.expand * config.hidden_size * config.d_state


def conv_flops(config: StormConfig, frames: int) -> float:
    """The depthwise convs alone (2·L·E·W per direction and layer): numba's in CPU inference
    (``MambaMixer``'s fused path), so invisible to the counter there."""
    if config.projector_type != "storm" or config.temporal_layers == 0:
        return 0.0
    length = frames * config.token_grid[0] * config.token_grid[1]
    directions = 2 if config.bidirectional else 1
    return config.temporal_layers * directions * 2 * length * config.expand * config.hidden_size * config.d_conv


def temporal_flops(config: StormConfig, frames: int) -> float:
    if config.projector_type != "storm" or config.temporal_layers == 0:
        return 0.0
    d, e, n, r, w = (
        config.hidden_size,
        config.expand * config.hidden_size,
        config.d_state,
        config.dt_rank,
        config.d_conv,
    )
    length = frames * config.token_grid[0] * config.token_grid[1]
    directions = 2 if config.bidirectional else 1
    per_direction = 2 * length * (e * w + e * (r + 2 * n) + r * e) + 9 * length * e * n
    per_layer = 2 * length * d * 2 * e + 2 * length * e * d + directions * per_direction
    return config.temporal_layers * per_layer


def _llm_layer(cfg, tokens: int, context: int) -> float:
    h = cfg.hidden_size
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    proj = 2 * tokens * (h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h)
    mlp = 2 * tokens * 3 * h * cfg.intermediate_size
    attn = 4 * tokens * context * heads * head_dim
    return proj + mlp + attn


def llm_flops(config: StormConfig, prompt_tokens: int) -> tuple[float, float]:
    """(prefill over the prompt with logits for the last position, one decoding step after it)."""
    t = config.text_config
    head = 2 * t.hidden_size * t.vocab_size
    prefill = t.num_hidden_layers * _llm_layer(t, prompt_tokens, prompt_tokens) + head
    step = t.num_hidden_layers * _llm_layer(t, 1, prompt_tokens + 1) + head
    return prefill, step


def stage_flops(config: StormConfig, frames: int, settings: ReductionSettings, text_tokens: int = 64) -> StageFlops:
    visual = num_visual_tokens(frames, config.token_grid, settings)
    prefill, step = llm_flops(config, visual + text_tokens)
    return StageFlops(
        vision=vision_flops(config, frames),
        projector=projector_flops(config, frames),
        temporal=temporal_flops(config, frames),
        llm_prefill=prefill,
        llm_token=step,
    )


def kv_cache_bytes(config: StormConfig, tokens: int, bytes_per_value: int = 2) -> int:
    t = config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return 2 * t.num_hidden_layers * tokens * t.num_key_value_heads * head_dim * bytes_per_value


def activation_bytes(config: StormConfig, frames: int, bytes_per_value: int = 2) -> int:
    """The largest visual tensors alive at once: one chunk of vision activations and all projected tokens."""
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    chunk = min(frames, config.vision_chunk_size)
    vision = chunk * patches * max(v.hidden_size, v.intermediate_size) * bytes_per_value
    tokens = frames * config.token_grid[0] * config.token_grid[1] * config.hidden_size * bytes_per_value
    scan = 3 * tokens * config.expand  # x, z and the scan output at d_inner for one layer
    return vision + tokens + scan
