"""lmms-eval model plugin: ``lmms-eval --model storm_vlm --model_args pretrained=DIR,num_frames=64``.

Registered through the ``lmms_eval.models`` entry point (``pyproject.toml``), which lmms-eval
(v0.7.x) loads at start-up, so installing storm-vlm next to lmms-eval is enough. Two models:

- ``storm_vlm`` (:class:`StormLmms`), lmms-eval's "simple" interface: ``generate_until`` and
  ``loglikelihood``, reading each request's ``args`` as ``ConfigurableTask.construct_requests``
  lays them out:

  - generate_until: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
  - loglikelihood: ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``; a
    ``multiple_choice`` task sends one such request per option with the option text in place of
    ``doc_to_target``, and for ``acc_mutual_info`` also the two-argument ``(context, continuation)``
    of text alone

- ``storm_vlm_chat`` (:class:`StormLmmsChat`), the "chat" interface: lmms-eval then builds every
  task as a ``ConfigurableMessagesTask``, whose ``generate_until`` requests are ``(context,
  doc_to_messages, gen_kwargs, doc_id, task, split)``; ``doc_to_messages(doc)`` is the task's own
  (tasks written with ``doc_to_messages``) or one user turn made from ``doc_to_visual`` +
  ``doc_to_text``. Messages tasks are generation only in lmms-eval 0.7 (its construct_requests
  asserts it), so multiple-choice tasks need ``storm_vlm``. It is a model of its own, not the
  ``chat_class_path`` of ``storm_vlm``, because lmms-eval picks the chat class whenever a manifest
  has one: ``--model storm_vlm`` would then need ``--force_simple`` for any loglikelihood task,
  and MVBench's frame lists would arrive as separate images instead of one clip.

Batching: ``batch_size`` (lmms-eval's ``--batch_size``; at most ``MAX_EVAL_BATCH_SIZE``) requests
with equal generation kwargs share one ``model.generate`` call, their prompts left-padded (the
simple model pads the prompt embeddings storm-vlm's :func:`~storm_vlm.inference.prepare_inputs`
makes one by one; the chat model lets the processor pad). Greedy answers equal one request at a
time token for token (tested). Loglikelihood scores the options of one prompt together with
:func:`~storm_vlm.eval.runner.option_logprobs`: the prompt (and its clip) once, the options in one
batch, the numbers storm-vlm's own ``--scoring loglik`` ranks by (tested). It returns what
lmms-eval's models return and its tasks expect, ``(mean loss of the continuation's tokens,
greedy)``: ``multiple_choice`` picks the lowest (see :meth:`StormLmms.loglikelihood`).

Data parallel under ``accelerate launch -m lmms_eval``: rank, world size and device come from
accelerate (each rank on its own GPU), which lmms-eval's evaluator shards by. A task's visual is a
video path, one PIL image, or a list of PIL frames (MVBench's frame tasks), which becomes one clip
sampled to ``num_frames`` by storm-vlm's sampler, the one its own eval uses. Requests run longest
context first (as lmms-eval's Collator orders them), with a progress bar on rank 0, and come back
in the order given. See docs/lmms-eval.md.

Without lmms-eval installed the classes still import (on a minimal base) so that they can be tested.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..limits import MAX_EVAL_BATCH_SIZE, MAX_FRAMES, MAX_NEW_TOKENS

try:  # pragma: no cover - exercised only where lmms-eval is installed
    from lmms_eval.api.model import lmms as _Base
except Exception:  # lmms-eval is an optional extra (storm-vlm[eval])

    class _Base:  # type: ignore[no-redef]  # the part of lmms-eval's base class the plugin relies on
        def __init__(self) -> None:
            self.task_dict: dict = {}


__all__ = ["StormLmms", "StormLmmsChat", "manifest"]

try:  # pragma: no cover - exercised only where lmms-eval is installed
    from lmms_eval.api.instance import GenerationResult as _GenerationResult
except Exception:
    _GenerationResult = None


def scored(logprob: float, greedy: bool) -> tuple[float, bool]:
    """A loglikelihood result: the pair ``(logprob, greedy)``, which lmms-eval's tasks read.

    lmms-eval 0.7.3's evaluator passes every model output through ``unwrap_generation_output``,
    which keeps a ``str`` or a ``GenerationResult``'s ``text`` and turns anything else into its
    ``str``: a plain ``(float, bool)`` reaches ``multiple_choice``'s ``process_results`` as the
    text ``"(-3.2, False)"`` and the task fails (measured, docs/lmms-eval.md). Where lmms-eval is
    installed the pair is therefore also a ``GenerationResult`` whose ``text`` is the pair itself;
    it is still a tuple to every other caller.
    """
    if _GenerationResult is None:
        return (float(logprob), bool(greedy))
    return _ScoredPair(float(logprob), bool(greedy))


if _GenerationResult is not None:  # pragma: no cover - exercised only where lmms-eval is installed

    class _ScoredPair(tuple, _GenerationResult):  # a tuple that lmms-eval unwraps as itself
        def __new__(cls, logprob: float, greedy: bool) -> _ScoredPair:
            return super().__new__(cls, (logprob, greedy))

        def __init__(self, logprob: float, greedy: bool) -> None:
            self.text = (logprob, greedy)  # what unwrap_generation_output hands to the task
            self.token_counts = None

        def __reduce__(self) -> tuple:  # pickled (response cache, gathers) as the plain pair
            return (tuple, (tuple(self),))


def manifest() -> list:
    """Entry-point payload for lmms-eval's model registry: the simple model and the chat model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    here = "storm_vlm.eval.lmms_eval_plugin"
    return [
        ModelManifest(model_id="storm_vlm", simple_class_path=f"{here}.StormLmms"),
        ModelManifest(model_id="storm_vlm_chat", chat_class_path=f"{here}.StormLmmsChat"),
    ]


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _count(name: str, value: Any, high: int) -> int:
    """A model_arg that must be a whole number from 1 to ``high`` (model_args arrive as strings)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number from 1 to {high}, got {value!r}") from None
    if not 1 <= number <= high:
        raise ValueError(f"{name} must be from 1 to {high}, got {number}")
    return number


@dataclass
class _Generation:
    """One request's generation kwargs, read as lmms-eval's models read them."""

    max_new_tokens: int
    do_sample: bool
    temperature: float | None
    top_p: float | None
    until: list[str]

    @classmethod
    def read(cls, gen_kwargs: dict | None, default_new_tokens: int) -> _Generation:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.get("until") or []
        temperature = float(kwargs.get("temperature", 0) or 0)
        sample = temperature > 0 and _as_bool(kwargs.get("do_sample", True))
        top_p = kwargs.get("top_p")
        return cls(
            max_new_tokens=_count("max_new_tokens", kwargs.get("max_new_tokens", default_new_tokens), MAX_NEW_TOKENS),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=float(top_p) if sample and top_p is not None else None,
            until=[until] if isinstance(until, str) else [str(u) for u in until],
        )

    def generate_kwargs(self, new_tokens: int) -> dict[str, Any]:
        return {
            "max_new_tokens": new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


def _group_key(gen_kwargs: Any) -> str:
    """Requests with equal generation kwargs may share a generate call (lmms-eval groups the same way)."""
    try:
        return json.dumps(gen_kwargs, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(gen_kwargs)


class StormLmms(_Base):
    """A STORM model directory as an lmms-eval model ("simple" interface)."""

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
        batch_size: int | str = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from ..inference import load_model

        self.batch_size_per_gpu = _count("batch_size", batch_size, MAX_EVAL_BATCH_SIZE)  # before the model loads
        self.num_frames = _count("num_frames", num_frames, MAX_FRAMES)
        self.max_new_tokens = _count("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)
        self._rank, self._world_size, default_device = _distributed()
        self._device = torch.device(device) if device else default_device
        self.model, self.processor = load_model(pretrained, device=self._device)
        self.settings = self.model.reduction_settings(
            *(int(v) if v is not None else None for v in (temporal_pool, spatial_pool, temporal_sampling))
        )

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
    def _clip(self, visuals: Any, start: float | None = None, end: float | None = None):
        """A request's visual as one clip of at most ``num_frames`` frames, sampled uniformly."""
        from ..video import VideoClip, sample_frames, uniform_positions

        items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        if not items:
            raise ValueError("the request has no visual input")
        visual = items[0]
        if isinstance(visual, (str, bytes)) or hasattr(visual, "__fspath__"):
            return sample_frames(visual, num_frames=self.num_frames, start=start, end=end)
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

    def _chunks(self, requests: Sequence[Any], gen_kwargs_of: Callable[[Any], Any]) -> list[list[int]]:
        """Request indices in batches of at most ``batch_size``, each of one generation-kwargs group,
        longest context first."""
        order = sorted(range(len(requests)), key=lambda i: -len(str(requests[i].args[0])))
        groups: dict[str, list[int]] = {}
        for i in order:
            groups.setdefault(_group_key(gen_kwargs_of(requests[i])), []).append(i)
        size = self.batch_size_per_gpu
        return [members[lo : lo + size] for members in groups.values() for lo in range(0, len(members), size)]

    def _visuals(self, doc_to_visual, doc_id, task, split) -> Any:
        return doc_to_visual(self.task_dict[task][split][doc_id])

    def _prepare(self, context: str, visuals: Any):
        """The prompt with its clip as embeddings (:func:`storm_vlm.inference.prepare_inputs`, as
        storm-vlm's eval runs it); a request without visuals gets the chat prompt alone."""
        from ..inference import PreparedInputs, StageTimer, context_length, prepare_inputs

        if visuals is None or (isinstance(visuals, (list, tuple)) and not visuals):
            ids = self.processor.tokenize(self.processor.build_prompt(context, media=None))
            input_ids = ids["input_ids"].to(self.model.device)
            with torch.inference_mode():
                embeds = self.model.get_input_embeddings()(input_ids)
            n = int(input_ids.shape[1])
            room = context_length(self.model)
            return PreparedInputs(embeds, ids["attention_mask"].to(self.model.device), 0, n, StageTimer(),
                                  None if room is None else room - n)  # fmt: skip
        return prepare_inputs(self.model, self.processor, self._clip(visuals), context, self.settings)

    def _answer(self, ids: torch.Tensor, limit: int, until: list[str]) -> str:
        """One row of a generate output as text: up to its first stop token (a batch pads the rows
        that finished early), at most ``limit`` tokens, cut at the first ``until`` string."""
        from ..inference import until_stop

        text = self.processor.decode(until_stop(self.model, ids[:limit]))
        for stop in until:
            if stop and stop in text:
                text = text.split(stop)[0]
        return text.strip()

    def _generate_ids(self, prepared: Sequence[Any], gen: _Generation) -> list[tuple[torch.Tensor, int]]:
        """One generate call for prompts of one batch: each row's output ids and its token limit
        (the asked number, capped so that prompt and answer fit the context)."""
        from ..inference import generate_batch

        limits = [p.new_token_limit(gen.max_new_tokens) for p in prepared]
        out = generate_batch(self.model, prepared, **gen.generate_kwargs(max(limits)))
        return [(out[row], limit) for row, limit in enumerate(limits)]

    def _run_generation(
        self,
        requests: Sequence[Any],
        gen_kwargs_of: Callable[[Any], Any],
        run_batch: Callable[[list[Any], _Generation], list[tuple[torch.Tensor, int]]],
    ) -> list[str]:
        """Batches of requests through ``run_batch``, answers back in request order."""
        from tqdm import tqdm

        results: list[str] = [""] * len(requests)
        with tqdm(total=len(requests), disable=self._rank != 0, desc="storm_vlm") as bar:
            for chunk in self._chunks(requests, gen_kwargs_of):
                gen = _Generation.read(gen_kwargs_of(requests[chunk[0]]), self.max_new_tokens)
                rows = run_batch([requests[i] for i in chunk], gen)
                for i, (ids, limit) in zip(chunk, rows):
                    results[i] = self._answer(ids, limit, gen.until)
                bar.update(len(chunk))
        return results

    # -- lmms-eval interface ------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        """Answers to ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` requests,
        ``batch_size`` per generate call."""

        def run_batch(batch: list[Any], gen: _Generation) -> list[tuple[torch.Tensor, int]]:
            prepared = []
            for request in batch:
                context, _, doc_to_visual, doc_id, task, split = request.args
                prepared.append(self._prepare(context, self._visuals(doc_to_visual, doc_id, task, split)))
            return self._generate_ids(prepared, gen)

        return self._run_generation(requests, lambda r: r.args[1], run_batch)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(loss, greedy)`` per request: the mean negative log-likelihood of the continuation's
        tokens after the context and its visuals, and whether greedy decoding would produce them.

        The loss, not lm-eval-harness's summed log-probability: lmms-eval's own models return the
        loss (``outputs.loss``), and its ``multiple_choice`` tasks pick the option with the lowest
        first value (``np.argmin``); a log-probability there picks the least likely option (measured
        on lmms-eval 0.7.3, docs/lmms-eval.md). The loss times the continuation's token count is
        minus the sum storm-vlm's ``--scoring loglik`` ranks by (tested). Requests for one prompt
        (the options of a question) are scored together: the prompt once, the options in one batch.
        """
        from tqdm import tqdm

        groups: dict[tuple, list[int]] = {}
        for i in sorted(range(len(requests)), key=lambda i: -len(str(requests[i].args[0]))):
            groups.setdefault(self._prompt_key(requests[i]), []).append(i)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        with tqdm(total=len(requests), disable=self._rank != 0, desc="storm_vlm") as bar:
            for members in groups.values():
                embeds, mask = self._loglik_prompt(requests[members[0]])
                continuations = [self._continuation(requests[i]) for i in members]
                for i, (logprob, tokens, greedy) in zip(members, self._score_options(embeds, mask, continuations)):
                    results[i] = scored(-logprob / tokens if tokens else 0.0, greedy)
                bar.update(len(members))
        return results

    def _prompt_key(self, request: Any) -> tuple:
        """What makes two loglikelihood requests share a prompt: the context and the doc's visual."""
        if len(request.args) == 2:
            return ("text", str(request.args[0]))
        context, _, doc_to_visual, doc_id, task, split = request.args
        return ("visual", str(context), id(doc_to_visual), str(task), str(split), doc_id)

    def _continuation(self, request: Any) -> str:
        if len(request.args) == 2:
            return str(request.args[1])
        _, doc_to_target, _, doc_id, task, split = request.args
        if callable(doc_to_target):  # a loglikelihood task: the doc's target
            return str(doc_to_target(self.task_dict[task][split][doc_id]))
        return str(doc_to_target)  # a multiple-choice option

    def _loglik_prompt(self, request: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's embeddings and mask. Text alone (``acc_mutual_info``) is the context as plain
        text, no chat template and no media; an empty one is the end-of-text token (as lmms-eval's
        text models do), so that the first token of the continuation has a position to predict it."""
        if len(request.args) == 2:
            tokenizer = self.processor.tokenizer
            ids = tokenizer(str(request.args[0]), return_tensors="pt")["input_ids"]
            if ids.shape[1] == 0:
                start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
                ids = torch.tensor([[start]])
            ids = ids.to(self.model.device)
            with torch.inference_mode():
                return self.model.get_input_embeddings()(ids), torch.ones_like(ids)
        context, _, doc_to_visual, doc_id, task, split = request.args
        prepared = self._prepare(context, self._visuals(doc_to_visual, doc_id, task, split))
        return prepared.inputs_embeds, prepared.attention_mask

    def _score_options(
        self, embeds: torch.Tensor, mask: torch.Tensor, continuations: list[str]
    ) -> list[tuple[float, int, bool]]:
        """(summed log-probability, token count, greedy) of each continuation after one prompt.

        The sums are :func:`~storm_vlm.eval.runner.option_logprobs`' (one prefill, the options in
        one batch). It returns sums only; whether greedy decoding picks each token (lmms-eval's
        ``exact_match``, and ``acc`` of loglikelihood tasks) is read from the logits of the same two
        forwards, caught with a forward hook, rather than paid for with another prefill.
        """
        from .runner import option_logprobs

        tokenizer = self.processor.tokenizer
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        results = [(0.0, 0, True)] * len(ids)  # an empty continuation: log 1, and greedy
        kept = [i for i, option in enumerate(ids) if option]
        if not kept:
            return results
        options = [ids[i] for i in kept]
        logits: list[torch.Tensor] = []

        def keep(module: Any, args: Any, output: Any) -> None:
            logits.append(output.logits)

        handle = self.model.register_forward_hook(keep)
        try:
            with torch.inference_mode():
                sums = option_logprobs(self.model, embeds, mask, options)
        finally:
            handle.remove()
        if len(logits) != 2:
            raise RuntimeError(f"option_logprobs ran {len(logits)} forwards, the greedy check expects 2")
        first, rest = logits[0][0, -1].argmax(-1), logits[1].argmax(-1)  # rest[i, j] predicts token j + 1
        for row, (i, option) in enumerate(zip(kept, options)):
            target = torch.tensor(option[1:], device=rest.device)
            greedy = int(first) == option[0] and bool((rest[row, : len(option) - 1] == target).all())
            results[i] = (sums[row], len(option), greedy)
        return results

    def _score(self, embeds: torch.Tensor, mask: torch.Tensor, continuation: str) -> tuple[float, bool]:
        """The obvious way :meth:`loglikelihood` must agree with: prompt + continuation through the
        whole model, one continuation per forward; ``(mean loss over its tokens, greedy)`` (tests)."""
        ids = self.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        with torch.inference_mode():
            cont = self.model.get_input_embeddings()(ids)
            logits = self.model(
                inputs_embeds=torch.cat([embeds, cont], dim=1),
                attention_mask=torch.cat([mask, torch.ones_like(ids)], 1),
            ).logits[0]
            n = ids.shape[1]
            loss = torch.nn.functional.cross_entropy(logits[-n - 1 : -1].float(), ids[0])
            greedy = bool((logits[-n - 1 : -1].argmax(-1) == ids[0]).all())
        return float(loss), greedy

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("storm_vlm answers single-round tasks; multi-round generation is not supported")


class StormLmmsChat(StormLmms):
    """The same model behind lmms-eval's "chat" interface (tasks given as ``doc_to_messages``).

    Each request's messages are rendered by the model's chat template (``StormProcessor``: video and
    image parts become placeholders, system and earlier turns are kept); every video or image part
    is loaded by storm-vlm's sampler (``num_frames`` uniformly, within ``start_time`` / ``end_time``
    or a visual dict's ``video_start`` / ``video_end``), so a one-turn message of a video and a
    question gives exactly what :class:`StormLmms` gives for it (tested).
    """

    is_simple = False

    def generate_until(self, requests) -> list[str]:
        """Answers to ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)`` requests,
        ``batch_size`` per generate call."""
        from ..inference import PreparedInputs, context_length, generate_batch

        def run_batch(batch: list[Any], gen: _Generation) -> list[tuple[torch.Tensor, int]]:
            texts, videos, images = [], [], []
            for request in batch:
                _, doc_to_messages, _, doc_id, task, split = request.args
                messages = doc_to_messages(self.task_dict[task][split][doc_id])
                text, clips, pictures = self.render(messages)
                texts.append(text)
                videos += clips
                images += pictures
            reduction = self.settings
            inputs = self.processor(
                text=texts,
                videos=videos or None,
                images=images or None,
                temporal_pool=reduction.temporal_pool,
                spatial_pool=reduction.spatial_pool,
                temporal_sampling=reduction.temporal_sampling,
            )
            device = self.model.device
            moved = {k: [v.to(device) for v in x] if isinstance(x, list) else x.to(device) for k, x in inputs.items()}
            attention_mask = cast(torch.Tensor, moved["attention_mask"])  # (B, S), the processor's (left) padding
            with torch.inference_mode():
                embeds, _ = self.model.model.visual_inputs_embeds(
                    moved["input_ids"],
                    moved.get("pixel_values_videos"),
                    moved.get("pixel_values"),
                    video_reduction=moved.get("video_reduction"),
                    image_reduction=moved.get("image_reduction"),
                )
            room = context_length(self.model)
            lengths = [int(n) for n in attention_mask.sum(1)]  # each prompt without its padding
            limits = [
                gen.max_new_tokens if room is None else max(1, min(gen.max_new_tokens, room - n)) for n in lengths
            ]
            padded = PreparedInputs(embeds, attention_mask, 0, int(attention_mask.shape[1]))  # all rows at once
            out = generate_batch(self.model, [padded], **gen.generate_kwargs(max(limits)))
            return list(zip(out, limits))

        return self._run_generation(requests, lambda r: r.args[2], run_batch)

    def render(self, messages: Sequence[dict]) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
        """lmms-eval chat messages as (prompt text, video frames, image frames), the media in the
        order of their placeholders."""
        conversation, videos, images = [], [], []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                conversation.append({"role": message["role"], "content": content})
                continue
            parts = []
            for part in content or []:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                elif kind in ("video", "image"):
                    clip = self._media(part)
                    if kind == "video":
                        videos.append(clip.frames)
                    elif len(clip) != 1:
                        raise ValueError(f"an image part must be one frame, got {len(clip)}")
                    else:
                        images.append(clip.frames[0])
                    parts.append({"type": kind})
                else:
                    raise ValueError(f"storm_vlm takes text, image and video parts, got a {kind!r} part")
            conversation.append({"role": message["role"], "content": parts})
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return text, videos, images

    def _media(self, part: dict):
        """A video or image part's clip: ``url`` (or ``video`` / ``image`` / ``path``) is a path, a PIL
        image, a list of PIL frames, or a dict with the path and ``video_start`` / ``video_end``."""
        source = next((part[k] for k in ("url", "video", "image", "path") if part.get(k) is not None), None)
        start, end = part.get("start_time"), part.get("end_time")
        if isinstance(source, dict):
            start = source.get("video_start", start)
            end = source.get("video_end", end)
            source = next((source[k] for k in ("url", "path", "video") if source.get(k) is not None), None)
        if source is None:
            raise ValueError(f"a {part.get('type')} part names no media: {sorted(part)}")
        return self._clip(source, start=start, end=end)


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) from accelerate: one process unless launched by it."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device
