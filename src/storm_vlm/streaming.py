"""Streaming video through a causal STORM (paper §5, Table 7: "reuse prior states").

    model = StormForConditionalGeneration.from_pretrained(dir)      # bidirectional=False
    stream = StormStream(model, model.reduction_settings(temporal_pool=4), max_frames=64)
    for chunk in camera:                                             # (t, 3, H, W) pixel tensors
        stream.add_frames(chunk)
    print(stream.ask(processor, "What just happened?"))

Each ``add_frames`` runs the vision tower on the new frames only and advances every Mamba layer
from its carried state (the conv window and the SSM state), so the cost of a frame does not grow
with the stream, and the temporal output equals one causal pass over all frames seen.

Reduction happens online and matches the offline order (pool in time, pool in space, sample):
frames are averaged in groups of k as they arrive, each finished group is spatially pooled, and
groups 0, s, 2s, … are kept. The group still filling is averaged over the frames it has when
``ask`` is called, like the ragged last group offline. ``max_frames`` bounds memory with a sliding
window over the kept (reduced) frames: the oldest are dropped first, while their information
survives in the recurrent state of the frames that followed them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import torch

from .inference import PreparedInputs, generate_answer
from .modeling.mamba import BranchState
from .modeling.reduction import ReductionSettings, spatial_pool

if TYPE_CHECKING:
    from .modeling.modeling_storm import StormForConditionalGeneration
    from .processing_storm import StormProcessor

__all__ = ["StormStream"]


class StormStream:
    """Incremental visual tokens for a live stream; see the module docstring."""

    def __init__(
        self,
        model: StormForConditionalGeneration,
        settings: ReductionSettings | None = None,
        max_frames: int | None = None,
    ) -> None:
        """``settings``: k / p / s (the model config's when None); ``max_frames`` bounds the reduced
        frames kept for the LLM (a sliding window)."""
        if model.temporal is not None and model.config.bidirectional:
            raise ValueError(
                "streaming needs a causal temporal module: build the model with bidirectional=False "
                "(a bidirectional scan must see the whole clip before it can emit a token)"
            )
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.model = model
        self.settings = settings if settings is not None else ReductionSettings.resolve(model.config)
        self.max_frames = max_frames
        self.frames_seen = 0
        self._state: list[BranchState] | None = None
        self._pending_sum: torch.Tensor | None = None  # (N, D) sum of the group being filled
        self._pending_count = 0
        self._group = 0  # index of the group being filled
        self._kept: deque[torch.Tensor] = deque(maxlen=max_frames)  # each (N', D)

    @torch.inference_mode()
    def add_frames(self, pixel_values: torch.Tensor) -> None:
        """Feed ``(t, 3, H, W)`` preprocessed frames (``StormProcessor.preprocess_frames``)."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (t, 3, H, W), got {tuple(pixel_values.shape)}")
        model = self.model
        tokens = model.encode_video(pixel_values[None].to(model.device))  # (1, t, N, D)
        if model.temporal is not None:
            tokens, self._state = model.temporal(tokens, state=self._state, return_state=True)
        k = self.settings.temporal_pool
        for frame in tokens[0]:  # (N, D) each
            self._pending_sum = frame.clone() if self._pending_sum is None else self._pending_sum + frame
            self._pending_count += 1
            if self._pending_count == k:
                self._close_group()
        self.frames_seen += pixel_values.shape[0]

    def _pooled_pending(self) -> torch.Tensor:
        assert self._pending_sum is not None, "no pending frame"  # callers check _pending_count first
        mean = (self._pending_sum / self._pending_count)[None, None]  # (1, 1, N, D)
        pooled, _ = spatial_pool(mean, self.model.config.token_grid, self.settings.spatial_pool)
        return pooled[0, 0]  # (N', D)

    def _close_group(self) -> None:
        if self._group % self.settings.temporal_sampling == 0:
            self._kept.append(self._pooled_pending())
        self._group += 1
        self._pending_sum, self._pending_count = None, 0

    def visual_tokens(self) -> torch.Tensor:
        """The tokens the LLM would see now: ``(1, T', N', D)`` (T' may be 0)."""
        frames = list(self._kept)
        if self._pending_count and self._group % self.settings.temporal_sampling == 0:
            frames.append(self._pooled_pending())
            if self.max_frames is not None:
                frames = frames[-self.max_frames :]
        if not frames:
            n = self.model.config.token_grid
            return torch.zeros(1, 0, n[0] * n[1], self.model.config.hidden_size, device=self.model.device)
        return torch.stack(frames)[None]

    @torch.inference_mode()
    def prepare(self, processor: StormProcessor, question: str) -> PreparedInputs:
        """The question with everything seen so far (within the window), embedded for the LLM:
        what the shared generate step, or a scorer, takes."""
        tokens = self.visual_tokens()
        if tokens.shape[1] == 0:
            raise ValueError("the stream has no frames yet: call add_frames first")
        visual = tokens.flatten(0, 2)
        prompt = processor.expand_placeholders(processor.build_prompt(question), [visual.shape[0]], [])
        ids = processor.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        embeds, _ = self.model.embed_inputs(ids["input_ids"], video_embeds=visual)
        return PreparedInputs(embeds, ids["attention_mask"], int(visual.shape[0]), int(ids["input_ids"].shape[1]))

    def ask(self, processor: StormProcessor, question: str, max_new_tokens: int = 64, **generate_kwargs) -> str:
        """Answer a question about everything seen so far (within the window); greedy unless
        ``do_sample=True`` (keywords go to :func:`~storm_vlm.inference.generate_answer`)."""
        generate_kwargs.setdefault("do_sample", False)
        prepared = self.prepare(processor, question)
        out = generate_answer(self.model, prepared, max_new_tokens, timed=False, **generate_kwargs)
        return processor.decode(out).strip()
