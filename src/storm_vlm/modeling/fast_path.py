"""Fast inference on a GPU: compiled vision tower, static KV cache, compiled (CUDA-graph) decoding.

Once STORM has cut the visual tokens, the LLM prefill stops dominating: re-measured at the
paper's shapes on an H200 (PAPER.md §8), 128 frames with k=4, s=2 take 1.11 s end to end, of
which the prefill is 0.11 s, the vision tower 0.36 s and eager token-by-token decoding ~18 ms
per token (each step re-launches every kernel of every layer from Python). The fast path
attacks both, with transformers' and torch's own machinery:

- decoding: ``generate`` gets a static KV cache (``cache_implementation="static"``) whose length
  is rounded up to a multiple of ``cache_bucket`` (prompts of similar length share one compiled
  graph), and transformers compiles the decoding step with ``torch.compile`` in
  ``reduce-overhead`` mode, which replays it as a CUDA graph;
- vision: each chunk of frames goes through a ``torch.compile``-d
  :meth:`~storm_vlm.modeling.StormForConditionalGeneration.vision_features` (fused LayerNorm /
  GELU / residual kernels around SDPA attention), in the model's dtype (bf16 on CUDA).

Same maths as the plain path: the tests check identical greedy tokens and matching vision
features on CPU (where compilation is opt-in; there is no CUDA graph to replay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .modeling_storm import StormForConditionalGeneration

__all__ = ["FastPath", "enable_fast_path", "static_cache_length"]


def static_cache_length(needed: int, bucket: int) -> int:
    """``needed`` rounded up to a multiple of ``bucket``: one static cache (and graph) per bucket."""
    return -(-needed // bucket) * bucket


@dataclass
class FastPath:
    """How a model runs fast; attached as ``model.fast_path`` by :func:`enable_fast_path`."""

    compile_vision: bool = True
    compile_decode: bool = True
    cache_bucket: int = 1024
    decode_mode: str = "reduce-overhead"  # CUDA graphs on CUDA; plain inductor code elsewhere
    vision_features: Callable[[torch.Tensor], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]

    def generate_kwargs(self, model: StormForConditionalGeneration, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``generate`` keyword arguments with the static cache and compile settings filled in.

        Explicit cache settings from the caller win (e.g. a user-passed cache).
        """
        if any(k in kwargs for k in ("cache_implementation", "cache", "past_key_values")):
            return kwargs
        from transformers import CompileConfig

        prompt = kwargs.get("inputs_embeds", kwargs.get("input_ids"))
        new_tokens = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens or 20
        needed = (prompt.shape[1] if prompt is not None else 0) + new_tokens
        out = dict(kwargs, cache_implementation="static", max_cache_len=static_cache_length(needed, self.cache_bucket))
        if self.compile_decode:
            config = CompileConfig(fullgraph=False, dynamic=False, mode=self.decode_mode)
            config._compile_all_devices = True  # the caller asked for compilation, whatever the device
            out["compile_config"] = config
        else:
            out["disable_compile"] = True
        return out


def enable_fast_path(
    model: StormForConditionalGeneration,
    compile_vision: bool = True,
    compile_decode: bool = True,
    cache_bucket: int = 1024,
) -> FastPath:
    """Attach a :class:`FastPath` to ``model`` (used by ``encode_frames`` and ``generate``).

    Compilation happens on first use: the first call per input shape is slow (tens of seconds at
    7B), later ones replay. ``model.fast_path = None`` turns it off again.
    """
    if cache_bucket < 1:
        raise ValueError(f"cache_bucket must be >= 1, got {cache_bucket}")
    mode = "reduce-overhead" if model.device.type == "cuda" else "default"
    vision = model.vision_features
    if compile_vision:
        vision = torch.compile(vision, dynamic=False)
    fast = FastPath(compile_vision, compile_decode, cache_bucket, mode, vision)
    model.fast_path = fast
    return fast
