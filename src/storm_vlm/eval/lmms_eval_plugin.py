"""lmms-eval model plugin: ``lmms-eval --model storm_vlm --model_args pretrained=DIR,num_frames=64``.

Registered through the ``lmms_eval.models`` entry point (``pyproject.toml``), which lmms-eval
(v0.7.x) loads at start-up, so installing storm-vlm next to lmms-eval is enough. Implements the
"simple" model interface of ``lmms_eval.api.model.lmms``: ``generate_until``, ``loglikelihood``
and ``generate_until_multi_round``, reading each request's ``args`` as lmms-eval's
``construct_requests`` lays them out:

- generate_until: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
- loglikelihood: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``, or the
  two-argument ``(context, continuation)`` of text-only requests (``acc_mutual_info``)

Data parallel under ``accelerate launch -m lmms_eval``: rank, world size and device come from
accelerate (each rank on its own GPU), which lmms-eval's evaluator shards by. A task's visual is a
video path, one PIL image, or a list of PIL frames (MVBench's frame tasks), which becomes one clip
sampled to ``num_frames``. Requests run in lmms-eval's order of longest context first, with a
progress bar on rank 0, and come back in the order given.

Without lmms-eval installed the class still imports (on a minimal base) so that it can be tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:  # pragma: no cover - exercised only where lmms-eval is installed
    from lmms_eval.api.model import lmms as _Base
except Exception:  # lmms-eval is an optional extra (storm-vlm[eval])

    class _Base:  # type: ignore[no-redef]  # the part of lmms-eval's base class the plugin relies on
        def __init__(self) -> None:
            self.task_dict: dict = {}


__all__ = ["StormLmms", "manifest"]


def manifest():
    """Entry-point payload for lmms-eval's model registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="storm_vlm", simple_class_path="storm_vlm.eval.lmms_eval_plugin.StormLmms")


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class StormLmms(_Base):
    """A STORM model directory as an lmms-eval model."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        num_frames: int = 32,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        device: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from ..inference import load_model

        self._rank, self._world_size, default_device = _distributed()
        self._device = torch.device(device) if device else default_device
        self.model, self.processor = load_model(pretrained, device=self._device)
        self.num_frames = int(num_frames)
        self.settings = self.model.reduction_settings(
            *(int(v) if v is not None else None for v in (temporal_pool, spatial_pool, temporal_sampling))
        )
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)

    # -- what lmms-eval's evaluator reads --------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # -- helpers -----------------------------------------------------------------------------
    def _clip(self, visuals: Any):
        from ..video import VideoClip, sample_frames, uniform_positions

        items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        if not items:
            raise ValueError("the request has no visual input")
        visual = items[0]
        if isinstance(visual, (str, bytes)) or hasattr(visual, "__fspath__"):
            return sample_frames(visual, num_frames=self.num_frames)
        if all(hasattr(v, "convert") for v in items):  # PIL: one image, or the frames of one video
            frames = [np.asarray(v.convert("RGB")) for v in items]
            if len({f.shape for f in frames}) > 1:
                raise ValueError("the frames of one video differ in size")
            if len(frames) > self.num_frames:
                frames = [frames[i] for i in uniform_positions(len(frames), self.num_frames)]
            stack = np.stack(frames)
            t, h, w = stack.shape[:3]
            times = np.arange(t, dtype=np.float64)
            return VideoClip(stack, times, np.arange(t), 1.0, float(t), (h, w), t, is_image=len(items) == 1)
        raise ValueError(f"unsupported visual input {type(visual).__name__}")

    def _in_order(self, requests, run) -> list:
        """``run(request)`` for each request, longest context first (as lmms-eval's Collator orders
        them), with a progress bar on rank 0; results in the order of ``requests``."""
        from tqdm import tqdm

        order = sorted(range(len(requests)), key=lambda i: -len(str(requests[i].args[0])))
        results: list = [None] * len(requests)
        for i in tqdm(order, total=len(order), disable=self._rank != 0, desc="storm_vlm"):
            results[i] = run(requests[i])
        return results

    def _visuals(self, doc_to_visual, doc_id, task, split) -> Any:
        return doc_to_visual(self.task_dict[task][split][doc_id])

    # -- lmms-eval interface ------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        from ..inference import prepare_inputs

        def one(request) -> str:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            clip = self._clip(self._visuals(doc_to_visual, doc_id, task, split))
            prepared = prepare_inputs(self.model, self.processor, clip, context, self.settings)
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            with torch.inference_mode():
                out = self.model.generate(
                    inputs_embeds=prepared.inputs_embeds,
                    attention_mask=prepared.attention_mask,
                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                    do_sample=temperature > 0 and _as_bool(gen_kwargs.get("do_sample", True)),
                    temperature=temperature if temperature > 0 else None,
                    top_p=gen_kwargs.get("top_p") if temperature > 0 else None,
                )
            text = self.processor.decode(out[0])
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            return text.strip()

        return self._in_order(requests, one)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """log p(continuation | context, visuals) summed over its tokens, and whether greedy decoding
        would have produced it."""
        from ..inference import prepare_inputs

        tokenizer = self.processor.tokenizer

        def one(request) -> tuple[float, bool]:
            if len(request.args) == 2:  # text only (acc_mutual_info): the context as plain text, no media
                context, continuation = request.args
                ids = tokenizer(context, return_tensors="pt")
                with torch.inference_mode():
                    embeds = self.model.get_input_embeddings()(ids["input_ids"].to(self.model.device))
                return self._score(embeds, ids["attention_mask"].to(self.model.device), str(continuation))
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(doc) if callable(doc_to_target) else str(doc_to_target)
            clip = self._clip(doc_to_visual(doc))
            prepared = prepare_inputs(self.model, self.processor, clip, context, self.settings)
            return self._score(prepared.inputs_embeds, prepared.attention_mask, continuation)

        return self._in_order(requests, one)

    def _score(self, embeds: torch.Tensor, mask: torch.Tensor, continuation: str) -> tuple[float, bool]:
        """Summed log-probability of ``continuation`` after the prompt, and whether greedy picks it."""
        ids = self.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        with torch.inference_mode():
            cont = self.model.get_input_embeddings()(ids)
            logits = self.model(
                inputs_embeds=torch.cat([embeds, cont], dim=1),
                attention_mask=torch.cat([mask, torch.ones_like(ids)], 1),
            ).logits[0]
            n = ids.shape[1]
            logprobs = torch.log_softmax(logits[-n - 1 : -1].float(), -1)
            picked = logprobs.gather(-1, ids[0][:, None])[:, 0]
            greedy = bool((logprobs.argmax(-1) == ids[0]).all())
        return float(picked.sum()), greedy

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("storm_vlm answers single-round tasks; multi-round generation is not supported")


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) from accelerate: one process unless launched by it."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device
