"""Analytic training memory per GPU: ZeRO-3 sharded states plus activations, from configs alone.

What a user planning the 7B recipes needs before renting GPUs: how much of a GPU the sharded
weights, gradients and Adam states take, and how much the activations of one sample take with
and without gradient checkpointing. Parameters are counted on the meta device (no weights).
Activations count the values autograd saves per token and layer (b = 1, memory-efficient
attention: no S² term), validated against the bytes saved in a real step of the small preset
(``benchmarks/train_cost.py``). See :data:`FORMULA`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..configuration_storm import StormConfig
from ..modeling.reduction import ReductionSettings, num_visual_tokens

__all__ = [
    "FORMULA",
    "RECIPES",
    "TrainMemory",
    "activation_bytes",
    "estimate",
    "estimate_table",
    "parameter_count",
    "recipe_estimates",
    "small_check",
]

FORMULA = """
per GPU, N GPUs, ZeRO-3, bf16 mixed precision, batch 1 per GPU, b = 2 bytes per activation value:
  states      = (2·P + 2·P_t + 12·P_t) / N   bf16 weights, bf16 grads, fp32 master weights + Adam m, v
  gathered    = 2·P_max                      the largest module's full bf16 weights, gathered while in use
  activations = Σ_parts layers · tokens · a · b  +  projector + head, with a (values saved per token, layer):
    vision  SigLIP, tokens = T·patches   a = 8·h_v + 2·I_v
            (LayerNorm 1 in/out, q, k, v, attention out, LayerNorm 2 in/out; fc1 out, GELU out)
    Mamba   tokens = T·N                 a = 2·D + 3·E + dirs·(6·E + r + 2·n)
            (norm in/out, in_proj x, z; per direction conv in/out, SiLU, x_proj, Δ, y, gate; out_proj in)
    LLM     Qwen2, tokens = S            a = 6·h + 2·h_kv + 4·I
            (RMSNorm 1 and 2 in/out, q, attention out, k, v; gate, up, SiLU, down_proj in)
    projector                            8·C_v per token of T·N  (space-to-depth LayerNorm in/out)
    head                                 S·V·(2 + 4) bytes       (bf16 logits, fp32 log-probabilities)
  with checkpointing (every vision, Mamba and LLM layer a checkpoint): each layer keeps only its input,
    layers · tokens · width · b, plus the largest single layer's activations, recomputed in the backward;
    projector and head unchanged.
  T = frames, k = temporal pool, N = tokens per frame: S = ceil(T/k)·N + text tokens (256 assumed);
  P = all parameters, P_t = trainable (stages 2-3: all but the vision layers past the feature layer).
"""


@dataclass
class TrainMemory:
    """One recipe's per-GPU estimate (bytes)."""

    name: str
    frames: int
    temporal_pool: int
    gpus: int
    params: int
    trainable: int
    llm_tokens: int
    states: float
    gathered: float
    activations: dict[str, float]  # per part, no checkpointing
    activations_ckpt: dict[str, float]  # per part, with checkpointing

    @property
    def total(self) -> float:
        return self.states + self.gathered + sum(self.activations.values())

    @property
    def total_ckpt(self) -> float:
        return self.states + self.gathered + sum(self.activations_ckpt.values())


def parameter_count(config: StormConfig, stage: int = 2) -> tuple[int, int, int]:
    """(all, trainable in ``stage``, largest module's own) parameters of the model a config
    builds, on the meta device: the counts the sharding divides, without allocating weights."""
    import torch

    from ..modeling.modeling_storm import StormForConditionalGeneration
    from ..train.stages import configure_stage

    with torch.device("meta"):
        model = StormForConditionalGeneration(config)
    configure_stage(model, stage)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, trainable, largest


def _layers(config: StormConfig) -> dict[str, tuple[int, int, int]]:
    """Per part: (layers, values saved per token and layer, layer-input width)."""
    v, t = config.vision_config, config.text_config
    d, e = config.hidden_size, config.expand * config.hidden_size
    dirs = 2 if config.bidirectional else 1
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    h_kv = t.num_key_value_heads * head_dim
    mamba = 2 * d + 3 * e + dirs * (6 * e + config.dt_rank + 2 * config.d_state)
    return {
        "vision": (config.vision_layers_run, 8 * v.hidden_size + 2 * v.intermediate_size, v.hidden_size),
        "temporal": (config.temporal_layers if config.uses_temporal else 0, mamba, d),
        "llm": (t.num_hidden_layers, 6 * t.hidden_size + 2 * h_kv + 4 * t.intermediate_size, t.hidden_size),
    }


def activation_bytes(
    config: StormConfig,
    frames: int,
    temporal_pool: int = 1,
    text_tokens: int = 256,
    checkpointing: bool = False,
    bytes_per_value: int = 2,
    logits_bytes: int = 6,
) -> dict[str, float]:
    """Activation bytes per part for one sample (see :data:`FORMULA`); ``logits_bytes`` per logit
    (6 under bf16: bf16 logits + fp32 log-probabilities; 8 in fp32)."""
    v = config.vision_config
    patches = (v.image_size // v.patch_size) ** 2
    n = config.token_grid[0] * config.token_grid[1]
    llm_tokens = num_visual_tokens(frames, config.token_grid, ReductionSettings(temporal_pool, 1, 1)) + text_tokens
    tokens = {"vision": frames * patches, "temporal": frames * n, "llm": llm_tokens}
    parts: dict[str, float] = {}
    recompute: tuple[float, str] = (0.0, "llm")
    for part, (layers, per_token, width) in _layers(config).items():
        one_layer = tokens[part] * per_token * bytes_per_value
        if checkpointing:
            parts[part] = layers * tokens[part] * width * bytes_per_value
            recompute = max(recompute, (one_layer if layers else 0.0, part))
        else:
            parts[part] = layers * one_layer
    if checkpointing:  # the one layer recomputed at a time, counted in its part
        parts[recompute[1]] += recompute[0]
    parts["projector"] = frames * n * 8 * v.hidden_size * bytes_per_value
    parts["head"] = llm_tokens * config.text_config.vocab_size * logits_bytes
    return parts


def estimate(
    config: StormConfig,
    name: str,
    frames: int,
    temporal_pool: int,
    gpus: int = 8,
    text_tokens: int = 256,
    counts: tuple[int, int, int] | None = None,
) -> TrainMemory:
    """The per-GPU estimate of one recipe under ZeRO-3 (``counts`` from :func:`parameter_count`)."""
    total, trainable, largest = counts or parameter_count(config)
    settings = ReductionSettings(temporal_pool, 1, 1)
    return TrainMemory(
        name=name,
        frames=frames,
        temporal_pool=temporal_pool,
        gpus=gpus,
        params=total,
        trainable=trainable,
        llm_tokens=num_visual_tokens(frames, config.token_grid, settings) + text_tokens,
        states=(2 * total + 2 * trainable + 12 * trainable) / gpus,
        gathered=2 * largest,
        activations=activation_bytes(config, frames, temporal_pool, text_tokens),
        activations_ckpt=activation_bytes(config, frames, temporal_pool, text_tokens, checkpointing=True),
    )


# The 7B recipes' frames and k (configs/7b-stage2.yaml, configs/7b-stage3.yaml): 8 GPUs, batch 1 per GPU.
RECIPES: dict[str, tuple[int, int]] = {"7b-stage2": (32, 1), "7b-stage3": (128, 4)}


def recipe_estimates(gpus: int = 8) -> list[dict[str, Any]]:
    """The two 7B recipes at the paper's shapes (``preset_config("7b-shapes")``), as dicts."""
    from ..presets import preset_config

    config = preset_config("7b-shapes")
    counts = parameter_count(config)
    rows = []
    for name, (frames, k) in RECIPES.items():
        est = estimate(config, name, frames, k, gpus, counts=counts)
        rows.append(asdict(est) | {"total": est.total, "total_ckpt": est.total_ckpt})
    return rows


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f}"


def estimate_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: states, activations per part and totals per GPU (GiB), without / with checkpointing."""
    lines = [
        "| recipe | frames, k | LLM tokens | params (trainable) | states /GPU | gathered | vision act. | Mamba act. "
        "| LLM act. | head (logits) | activations | **total /GPU** |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for ckpt in (False, True):
            act = r["activations_ckpt" if ckpt else "activations"]
            lines.append(
                f"| {r['name']} {'ckpt' if ckpt else 'no ckpt'} | {r['frames']}, k={r['temporal_pool']} "
                f"| {r['llm_tokens']} | {r['params'] / 1e9:.2f}B ({r['trainable'] / 1e9:.2f}B) | {_gib(r['states'])} "
                f"| {_gib(r['gathered'])} | {_gib(act['vision'])} | {_gib(act['temporal'])} "
                f"| {_gib(act['llm'])} | {_gib(act['head'])} | {_gib(sum(act.values()))} "
                f"| **{_gib(r['total_ckpt' if ckpt else 'total'])}** |"
            )
    lines.append("")
    lines.append(
        "GiB per GPU. With checkpointing the one layer recomputed at a time is counted in its part's column. "
        "Not counted: the CUDA context and allocator fragmentation (a few GiB), ZeRO-3 prefetch buffers, "
        "transient gradients of the logits in the backward (≈ 4·S·V bytes more at the head)."
    )
    return "\n".join(lines)


def small_check(cells: list[dict[str, Any]], temporal_pool: int) -> list[str]:
    """Lines comparing the formula (fp32) with the saved activations measured in uncheckpointed cells."""
    from ..presets import preset_config

    config = preset_config("small")
    lines = []
    for c in cells:
        if c.get("saved_activation_mib") is None:
            continue
        text = c["sequence"] - c["visual_tokens"]
        parts = activation_bytes(config, c["frames"], temporal_pool, text, bytes_per_value=4, logits_bytes=8)
        predicted = sum(parts.values()) / 2**20
        measured = c["saved_activation_mib"]
        lines.append(
            f"- {c['frames']} frames: formula {predicted:.0f} MiB, measured {measured:.0f} MiB "
            f"(formula / measured = {predicted / measured:.2f})"
        )
    return lines
