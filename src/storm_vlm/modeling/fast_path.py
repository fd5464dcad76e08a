"""Fast inference on a GPU: static KV cache and CUDA-graph decoding, bf16 vision stopping early.

Once STORM has cut the visual tokens, the LLM prefill stops dominating: re-measured at the
paper's shapes on an H200, 128 frames with k=4, s=2 take 1.11 s end to end, of
which the prefill is 0.11 s, the vision tower 0.36 s and eager token-by-token decoding ~18 ms
per token (each step re-launches every kernel of every layer from Python). The fast path:

- greedy decoding of one sequence (``ask``, ``eval``, the bench, a server at temperature 0): a
  static KV cache (transformers' ``StaticCache``, length rounded up to a multiple of
  ``cache_bucket`` and kept between calls) and one ``torch.compile``-d step (LLM forward + argmax)
  that ``reduce-overhead`` mode replays as a CUDA graph. The host never waits for a token
  before queuing the next step: stop tokens are checked one step behind, from a pinned copy
  (transformers' loop synchronises on every token on CUDA). At 7B shapes on an H200: 158 tokens/s,
  against 118 for transformers' own compiled static-cache ``generate`` and 40 for eager;
- other decoding (sampling, batches, beams): transformers' ``generate`` on a static cache with
  its compiled step;
- vision: the tower runs in the model's dtype (bf16 on CUDA) with SDPA attention and stops at
  the feature layer (:meth:`~storm_vlm.modeling.StormForConditionalGeneration.vision_features`);
  frames are resized and normalised on the GPU. ``compile_vision=True`` also ``torch.compile``-s
  the tower; off by default, because on the H200 the compiled tower was slower (0.30 s vs 0.26 s
  for 128 frames at 448 px: cuDNN's flash attention and cuBLAS GEMMs already do the work).

Measurements: docs/bench/gpu-h200.md. Same maths as the plain path: the tests check identical
greedy tokens (and streamer calls) and matching vision features on CPU, where compilation is
opt-in and there is no CUDA graph; on the H200 the CUDA-graph loop gave generate's tokens too.
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

    compile_vision: bool = False
    compile_decode: bool = True
    cache_bucket: int = 1024
    max_caches: int = 4  # static caches kept (one per bucket in use); each holds L x layers x KV
    decode_mode: str = "reduce-overhead"  # CUDA graphs on CUDA; plain inductor code elsewhere
    vision_features: Callable[[torch.Tensor], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]

    _step: Callable | None = field(default=None, repr=False)
    _caches: dict[int, Any] = field(default_factory=dict, repr=False)

    def can_decode(self, kwargs: dict[str, Any], generation_config: Any) -> bool:
        """Whether a ``generate`` call is one greedy sequence from embeddings (the fast loop's case)."""
        embeds, mask = kwargs.get("inputs_embeds"), kwargs.get("attention_mask")
        if embeds is None or embeds.shape[0] != 1 or set(kwargs) - _GREEDY_KWARGS:
            return False
        if kwargs.get("do_sample", generation_config.do_sample) or (generation_config.num_beams or 1) != 1:
            return False
        return (kwargs.get("max_new_tokens") or 0) >= 1 and (mask is None or bool(mask.all()))

    def greedy_decode(
        self,
        model: StormForConditionalGeneration,
        inputs_embeds: torch.Tensor,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        eos_token_id: int | list[int] | None = None,
        streamer: Any = None,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy tokens ``(1, n)`` after the prompt ``inputs_embeds`` ``(1, S, D)``, as ``generate``
        returns them (ending with the stop token when one came before ``max_new_tokens``)."""
        device = inputs_embeds.device
        stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        vocab = model.lm_head.weight.shape[0]
        allow_all = torch.zeros(1, vocab, dtype=torch.bool, device=device)
        no_stop = allow_all.clone()
        no_stop[:, [t for t in stops if t < vocab]] = True  # min_new_tokens: stop tokens masked
        cache = self._cache(model, inputs_embeds.shape[1] + max_new_tokens)
        if self._step is None:
            mode = self.decode_mode if self.compile_decode else None
            self._step = torch.compile(_greedy_step, mode=mode, fullgraph=True, dynamic=False) if mode else _greedy_step
        if streamer is not None:
            streamer.put(torch.empty(1, 0, dtype=torch.long))  # the prompt, as generate reports it
        logits = _last_logits(model, inputs_embeds=inputs_embeds, cache=cache)
        token = logits.masked_fill(no_stop if min_new_tokens > 0 else allow_all, float("-inf")).argmax(-1, keepdim=True)
        out = torch.empty(1, max_new_tokens, dtype=torch.long, device=device)
        out[:, :1] = token
        on_cuda = device.type == "cuda"
        host = torch.empty(max_new_tokens, dtype=torch.long, pin_memory=on_cuda)
        ready = [torch.cuda.Event() for _ in range(max_new_tokens)] if on_cuda else []

        def fetch(i: int) -> int:  # token i on the host; on CUDA waits only for step i
            if on_cuda:
                ready[i].synchronize()
                return int(host[i])
            return int(out[0, i])

        def queue_copy(i: int) -> None:
            if on_cuda:
                host[i : i + 1].copy_(out[0, i : i + 1], non_blocking=True)
                ready[i].record()

        queue_copy(0)
        n = max_new_tokens
        for i in range(1, max_new_tokens + 1):
            if i < max_new_tokens:  # queue step i before looking at token i - 1: the GPU stays busy
                if on_cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                mask = no_stop if i < min_new_tokens else allow_all
                out[:, i : i + 1] = self._step(model, out[:, i - 1 : i], cache, mask)
                queue_copy(i)
            previous = fetch(i - 1)
            if streamer is not None:
                streamer.put(torch.tensor([previous]))
            if previous in stops and i - 1 >= min_new_tokens:
                n = i
                break
        if streamer is not None:
            streamer.end()
        return out[:, :n].clone()

    def _cache(self, model: StormForConditionalGeneration, needed: int) -> Any:
        """A reset static cache of the bucketed length (kept: same tensors, no recompilation)."""
        from transformers import StaticCache

        length = static_cache_length(needed, self.cache_bucket)
        cache = self._caches.pop(length, None)
        if cache is None:
            cache = StaticCache(config=model.config.get_text_config(), max_cache_len=length)
            while len(self._caches) >= self.max_caches:  # drop the least recently used
                self._caches.pop(next(iter(self._caches)))
        else:
            cache.reset()
        self._caches[length] = cache  # most recently used last
        return cache

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
        length = static_cache_length(needed, self.cache_bucket)
        out: dict[str, Any] = {**kwargs, "cache_implementation": "static", "max_cache_len": length}
        if self.compile_decode:
            config = CompileConfig(fullgraph=False, dynamic=False, mode=self.decode_mode)
            # the caller asked for compilation, whatever the device (transformers types the flag `= None`)
            config._compile_all_devices = True  # type: ignore[assignment]
            out["compile_config"] = config
        else:
            out["disable_compile"] = True
        return out


_GREEDY_KWARGS = frozenset(
    {"inputs_embeds", "attention_mask", "max_new_tokens", "min_new_tokens", "eos_token_id", "pad_token_id",
     "streamer", "do_sample", "temperature", "top_p"}
)  # fmt: skip


def _last_logits(model: StormForConditionalGeneration, cache: Any, **inputs: torch.Tensor) -> torch.Tensor:
    """The LLM body and head on a text-only input (no placeholders): the last position's logits ``(1, V)``."""
    hidden = model.model.language_model(cache=cache, use_cache=True, **inputs).last_hidden_state
    return model.lm_head(hidden[:, -1])


def _greedy_step(
    model: StormForConditionalGeneration, token: torch.Tensor, cache: Any, masked: torch.Tensor
) -> torch.Tensor:
    """One decoding step: ``(1, 1)`` token → next greedy token ``(1, 1)`` (``masked`` vocab excluded)."""
    logits = _last_logits(model, input_ids=token, cache=cache)  # (1, V)
    return logits.masked_fill(masked, float("-inf")).argmax(-1, keepdim=True)


def enable_fast_path(
    model: StormForConditionalGeneration,
    compile_vision: bool = False,
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
    vision = model.model.vision_features
    if compile_vision:
        vision = torch.compile(vision, dynamic=False)
    fast = FastPath(compile_vision, compile_decode, cache_bucket, decode_mode=mode, vision_features=vision)
    model.fast_path = fast
    return fast
