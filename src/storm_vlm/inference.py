"""Ask a question about a video or image file: the Python API behind `storm-vlm ask`.

    from storm_vlm.inference import load_model, ask
    model, processor = load_model("runs/tiny")
    answer = ask(model, processor, "clip.mp4", "What happens first?", num_frames=32, temporal_pool=4)
    print(answer.text, answer.visual_tokens, answer.timings)

The pipeline runs its stages one by one so each can be timed: decode → preprocess → vision
(tower + projector) → temporal (Mamba + reduction) → LLM prefill → decoding. It is the one
pipeline of every entry point: :func:`prepare_inputs` (the visual stages and the prompt's
embeddings, which a scorer reads as ``inputs_embeds`` / ``attention_mask``), then
:func:`generate_answer`, the only generate call outside :mod:`storm_vlm.modeling` (``ask``, the
server, live streams and the bench all go through it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from transformers.generation.streamers import BaseStreamer

from .model_dir import ModelLoadError, check_model_dir, loading_problem
from .modeling.fast_path import enable_fast_path
from .modeling.modeling_storm import StormForConditionalGeneration, checkpoint_key
from .modeling.parts import set_generation_tokens
from .modeling.reduction import ReductionSettings, reduce_tokens
from .processing_storm import StormProcessor
from .video import Progress, VideoClip, sample_frames

__all__ = [
    "Answer",
    "PreparedInputs",
    "PromptTooLongError",
    "StageTimer",
    "ask",
    "context_length",
    "generate_answer",
    "generate_batch",
    "left_pad",
    "load_model",
    "prepare_inputs",
    "ready_for_inference",
    "until_stop",
]


@dataclass
class Answer:
    """What `ask` returns: the text and the accounting of how it was produced."""

    text: str
    num_frames: int
    visual_tokens: int
    prompt_tokens: int
    new_tokens: int
    settings: ReductionSettings
    timings: dict[str, float] = field(default_factory=dict)
    timestamps: list[float] = field(default_factory=list)
    source_fps: float = 0.0
    source_duration: float = 0.0


class StageTimer:
    """Wall-clock time per named stage; synchronises CUDA so GPU work is counted where it runs."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.timings: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class _FirstTokenClock(BaseStreamer):
    """Records when generate emits its first new token (the end of prefill)."""

    def __init__(self, timer: StageTimer) -> None:
        self.timer = timer
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt, call 2 the first generated token
            self.timer._sync()
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


class _Tee(BaseStreamer):
    """Forwards generate's tokens to several streamers: the first-token clock and a caller's."""

    def __init__(self, *streamers: BaseStreamer) -> None:
        self.streamers = streamers

    def put(self, value: torch.Tensor) -> None:
        for streamer in self.streamers:
            streamer.put(value)

    def end(self) -> None:
        for streamer in self.streamers:
            streamer.end()


def load_model(
    model_dir: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    fast: bool | None = None,
) -> tuple[StormForConditionalGeneration, StormProcessor]:
    """Load a STORM model directory (weights, config, tokenizer, processor) for inference.

    On CUDA the default dtype is bf16 and the fast path (:mod:`storm_vlm.modeling.fast_path`:
    static KV cache, CUDA-graph decoding) is on unless ``fast=False``; ``fast=True`` compiles on
    CPU too.
    """
    path = check_model_dir(model_dir)
    device = resolve_device(device)
    on_cuda = device is not None and device.type == "cuda"
    if dtype is None and on_cuda:
        dtype = torch.bfloat16
    try:
        # Mismatches are collected rather than raised so the error can name the tensor; missing
        # weights would otherwise be initialised randomly with only a warning.
        loaded = StormForConditionalGeneration.from_pretrained(
            path, dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True
        )
        # output_loading_info=True returns (model, info); transformers annotates the model alone
        model, info = cast(tuple[StormForConditionalGeneration, dict[str, Any]], loaded)
        _check_loading_info(path, info)
        processor = StormProcessor.from_pretrained(path)
        # directories written before the generation config carried the stop ids: the tokenizer
        # knows them; a pad id the directory has is kept
        pad = model.generation_config.pad_token_id
        set_generation_tokens(model, processor.tokenizer)
        if pad is not None:
            model.generation_config.pad_token_id = pad
    except SafetensorError as err:  # a truncated, empty or random weight file
        raise ModelLoadError(f"{path / 'model.safetensors'}: not a readable weight file ({err})") from None
    except (OSError, ValueError, RuntimeError) as err:  # missing / mismatched weights, bad files
        raise ModelLoadError(f"{path}: cannot load the model ({str(err).strip().splitlines()[0]})") from None
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # @wraps(Module.to) keeps self in the signature
    return ready_for_inference(model, fast), processor


def _check_loading_info(path: Path, info: dict) -> None:
    """A weight file that does not match its config is an error naming the first tensor at fault."""
    problem = loading_problem(info, file_key=checkpoint_key)
    if problem is not None:
        raise ModelLoadError(f"{path / 'model.safetensors'}: {problem}; the file does not fit config.json")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch device, checked: one line naming it when it is not one or not here."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")
    return resolved


def ready_for_inference(
    model: StormForConditionalGeneration, fast: bool | None = None
) -> StormForConditionalGeneration:
    """Eval mode, and the fast path when asked (``fast=True``) or by default on CUDA."""
    model.eval()
    if fast if fast is not None else model.device.type == "cuda":
        enable_fast_path(model)
    return model


class PromptTooLongError(ValueError):
    """The prompt (question and visual tokens) does not fit the LLM's context."""


def context_length(model: StormForConditionalGeneration) -> int | None:
    """Positions the LLM was built for (``max_position_embeddings``), when its config says."""
    value = getattr(model.config.text_config, "max_position_embeddings", None)
    return int(value) if value else None


@dataclass
class PreparedInputs:
    """A question about a clip, ready for the LLM: embeddings with the visual tokens spliced in."""

    inputs_embeds: torch.Tensor  # (1, S, D)
    attention_mask: torch.Tensor  # (1, S)
    visual_tokens: int
    prompt_tokens: int
    timer: StageTimer = field(default_factory=StageTimer)
    room: int | None = None  # new tokens that still fit the context (None: unknown)

    def new_token_limit(self, asked: int) -> int:
        """``asked``, capped so that prompt and answer fit the context."""
        return asked if self.room is None else max(1, min(asked, self.room))


def prepare_inputs(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    clip: VideoClip,
    question: str,
    settings: ReductionSettings,
    check: Callable[[], None] | None = None,
) -> PreparedInputs:
    """Run the visual stages (timed: preprocess, vision, temporal) and embed the prompt.

    The prompt is tokenised first (its length is known from the frame count alone), so a prompt
    longer than the context raises :class:`PromptTooLongError` before any pixel is encoded.
    ``check`` is called between chunks and stages; it may raise to stop the work (a deadline).
    """
    device = model.device
    timer = StageTimer(device)
    chunk = model.config.vision_chunk_size
    media = "image" if clip.is_image else "video"
    prompt = processor.build_prompt(question, media=media)
    if clip.is_image:
        ids = processor.tokenize(prompt, num_images=1, settings=settings)
    else:
        ids = processor.tokenize(prompt, [len(clip)], settings=settings)
    prompt_tokens = int(ids["input_ids"].shape[1])
    context = context_length(model)
    if context is not None and prompt_tokens >= context:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens (question and visual tokens) but the model's context is "
            f"{context}: shorten the question, or use fewer frames or more compression"
        )
    tick = check or (lambda: None)
    parts = []
    with torch.inference_mode():
        # Frames are resized and encoded chunk by chunk: all frames at model resolution never
        # exist at once (1024 frames at 448 px would be 2.4 GB of fp32 pixels).
        for lo in range(0, len(clip), chunk):
            tick()
            with timer.stage("preprocess"):
                pixels = processor.preprocess_frames(clip.frames[lo : lo + chunk], device).to(model.dtype)
            with timer.stage("vision"):
                parts.append(model.encode_video(pixels[None]))  # (1, t, N, D)
        tick()
        tokens = torch.cat(parts, dim=1)  # (1, T, N, D)
        with timer.stage("temporal"):
            tokens = model.apply_temporal(tokens)
            tokens, _ = reduce_tokens(tokens, model.config.token_grid, settings)  # (1, T', N', D)
        tick()
        visual = tokens.flatten(0, 2)
        input_ids = ids["input_ids"].to(device)
        if clip.is_image:
            embeds, _ = model.embed_inputs(input_ids, image_embeds=visual)
        else:
            embeds, _ = model.embed_inputs(input_ids, video_embeds=visual)
    room = None if context is None else context - prompt_tokens
    return PreparedInputs(embeds, ids["attention_mask"].to(device), int(visual.shape[0]), prompt_tokens, timer, room)


def left_pad(embeds: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, S_i, D)`` prompt embeddings and ``(1, S_i)`` masks as one ``(B, S, D)`` / ``(B, S)`` batch,
    padded on the left (zeros, masked out): generate continues every row from its last position."""
    longest = max(e.shape[1] for e in embeds)
    first = embeds[0]
    batch = first.new_zeros(len(embeds), longest, first.shape[2])
    mask = masks[0].new_zeros(len(embeds), longest)
    for row, (e, m) in enumerate(zip(embeds, masks)):
        batch[row, longest - e.shape[1] :] = e[0]
        mask[row, longest - m.shape[1] :] = m[0]
    return batch, mask


def generate_batch(
    model: StormForConditionalGeneration,
    prepared: Sequence[PreparedInputs],
    max_new_tokens: int,
    *,
    min_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """New token ids ``(B, new)`` for several prompts in one ``model.generate`` call: the one generate
    step of every entry point (ask, eval, the lmms-eval plugin, serve, streams, bench).

    Prompts are left-padded (:func:`left_pad`); a single prompt runs unpadded, the reference the
    batched rows are tested against. Rows that stop early are padded after their stop token. The
    stop and pad ids are the model's generation config's (``set_generation_tokens``), so a caller
    cannot pass others. ``do_sample=None`` leaves sampling to the generation config; ``temperature``
    / ``top_p`` apply only when sampling; ``min_new_tokens`` forces a length (benchmarks); other
    keywords (a ``streamer``, logits processors) go to ``model.generate``.
    """
    fixed = sorted({"eos_token_id", "pad_token_id"} & set(generate_kwargs))
    if fixed:
        raise TypeError(f"{', '.join(fixed)}: the stop and pad ids come from the model's generation config")
    if not prepared:
        raise ValueError("generate_batch needs at least one prompt")
    kwargs: dict[str, Any] = dict(generate_kwargs, max_new_tokens=max_new_tokens)
    if min_new_tokens is not None:
        kwargs["min_new_tokens"] = min_new_tokens
    if do_sample is not None:
        kwargs["do_sample"] = do_sample
    if do_sample:
        kwargs.update({k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None})
    if len(prepared) == 1:
        embeds, mask = prepared[0].inputs_embeds, prepared[0].attention_mask
    else:
        embeds, mask = left_pad([p.inputs_embeds for p in prepared], [p.attention_mask for p in prepared])
    with torch.inference_mode():
        return model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


def until_stop(model: StormForConditionalGeneration, ids: torch.Tensor) -> list[int]:
    """One row of :func:`generate_batch`'s output up to and with its first stop token (the
    generation config's): in a batch, rows that finished early are padded after it."""
    eos = model.generation_config.eos_token_id
    stops = {eos} if isinstance(eos, int) else set(eos or [])
    kept = []
    for token in ids.tolist():
        kept.append(token)
        if token in stops:
            break
    return kept


def generate_answer(
    model: StormForConditionalGeneration,
    prepared: PreparedInputs,
    max_new_tokens: int,
    *,
    streamer: BaseStreamer | None = None,
    timed: bool = True,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """One prompt's answer, token ids ``(new,)``, through :func:`generate_batch`.

    ``streamer`` (a caller's, e.g. the server's SSE text) sees every token, beside the clock that,
    when ``timed``, adds ``prefill`` (until the first new token exists) and ``decoding`` seconds to
    ``prepared.timer``. The other keywords are :func:`generate_batch`'s.
    """
    timer = prepared.timer
    clock = _FirstTokenClock(timer) if timed else None
    streamers = [s for s in (clock, streamer) if s is not None]
    timer._sync()
    started = time.perf_counter()
    out = generate_batch(
        model, [prepared], max_new_tokens, streamer=_Tee(*streamers) if streamers else None, **generate_kwargs
    )
    timer._sync()
    finished = time.perf_counter()
    if clock is not None:
        first = clock.first_token_at if clock.first_token_at is not None else finished
        timer.timings["prefill"] = timer.timings.get("prefill", 0.0) + first - started
        timer.timings["decoding"] = timer.timings.get("decoding", 0.0) + finished - first
    return out[0]


def ask(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    media: str | Path | VideoClip,
    question: str,
    num_frames: int | None = 32,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    temporal_pool: int | None = None,
    spatial_pool: int | None = None,
    temporal_sampling: int | None = None,
    max_new_tokens: int = 128,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    progress: Progress | None = None,
    token_budget: int | None = None,
) -> Answer:
    """Answer ``question`` about a video/image file (or an already decoded :class:`VideoClip`).

    Frames: ``num_frames`` uniformly (default 32, the paper's SFT setting), or ``fps`` with a
    ``max_frames`` cap. Reduction: the model config's k/p/s unless overridden, or, with
    ``token_budget``, the least compression that fits that many visual tokens
    (:func:`~storm_vlm.modeling.reduction.settings_for_budget`; reported in ``Answer.settings``).
    """
    if token_budget is not None and any(v is not None for v in (temporal_pool, spatial_pool, temporal_sampling)):
        raise ValueError("give a token budget or explicit temporal_pool / spatial_pool / temporal_sampling, not both")
    settings = model.reduction_settings(temporal_pool, spatial_pool, temporal_sampling)
    started = time.perf_counter()
    if isinstance(media, VideoClip):
        clip = media
    else:
        frames_arg = None if fps is not None else num_frames
        clip = sample_frames(
            media, num_frames=frames_arg, fps=fps, max_frames=max_frames, start=start, end=end, progress=progress
        )
    decode_seconds = time.perf_counter() - started
    if token_budget is not None:
        settings = model.settings_for_budget(token_budget, len(clip))
    prepared = prepare_inputs(model, processor, clip, question, settings)
    prepared.timer.timings["decode"] = decode_seconds
    limit = prepared.new_token_limit(max_new_tokens)
    new_tokens = generate_answer(model, prepared, limit, do_sample=do_sample, temperature=temperature, top_p=top_p)
    return Answer(
        text=processor.decode(new_tokens).strip(),
        num_frames=len(clip),
        visual_tokens=prepared.visual_tokens,
        prompt_tokens=prepared.prompt_tokens,
        new_tokens=int(new_tokens.shape[0]),
        settings=settings,
        timings=prepared.timer.timings,
        timestamps=[float(t) for t in np.asarray(clip.timestamps)],
        source_fps=clip.fps,
        source_duration=clip.duration,
    )
