"""`storm-vlm demo`: a STORM model answering a question about a clip made on the fly, with the
visual-token accounting of each compression setting (the paper's central trade-off).

Until a trained demo model ships, the model is the tiny random preset: its answers are noise, the
token counts and timings are real.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .configuration_storm import StormConfig
from .modeling.reduction import ReductionSettings, num_visual_tokens
from .presets import build_preset

__all__ = ["PAPER_SETTINGS", "moving_square_clip", "run_demo"]

# (label, k, p, s): the paper's settings, §4 / Table 1.
PAPER_SETTINGS: list[tuple[str, ReductionSettings]] = [
    ("none", ReductionSettings(1, 1, 1)),
    ("T.Pool", ReductionSettings(4, 1, 1)),
    ("T.Pool + T.Sampling", ReductionSettings(4, 1, 2)),
    ("T.Pool + T.Samp. + S.Pool", ReductionSettings(4, 2, 2)),
]


def moving_square_clip(num_frames: int = 32, size: int = 64, seed: int = 0) -> np.ndarray:
    """A red square crossing a grey frame left to right; a blue square flashes in the middle.

    Returns ``(T, H, W, 3)`` uint8 — the same layout a decoded video has.
    """
    rng = np.random.default_rng(seed)
    frames = np.full((num_frames, size, size, 3), 128, dtype=np.uint8)
    frames += rng.integers(0, 8, frames.shape, dtype=np.uint8)  # sensor noise
    side = size // 6
    for t in range(num_frames):
        x = int((size - side) * t / max(num_frames - 1, 1))
        frames[t, size // 3 : size // 3 + side, x : x + side] = (220, 30, 30)
        if num_frames // 3 <= t < num_frames // 3 + 2:
            frames[t, 2 * size // 3 : 2 * size // 3 + side, size // 2 : size // 2 + side] = (30, 30, 220)
    return frames


@dataclass
class DemoRow:
    label: str
    settings: ReductionSettings
    tokens: int
    seconds: float
    answer: str


def run_demo(
    preset: str = "tiny",
    num_frames: int = 32,
    question: str = "Which way does the red square move, and what flashes in the middle?",
    max_new_tokens: int = 12,
    seed: int = 0,
    console: Console | None = None,
) -> list[DemoRow]:
    """Answer ``question`` about a generated clip under each paper setting; print two tables."""
    console = console or Console()
    torch.manual_seed(seed)
    model, processor = build_preset(preset)
    frames = moving_square_clip(num_frames, seed=seed)
    prompt = processor.build_prompt(question)
    rows = []
    for label, settings in PAPER_SETTINGS:
        inputs = processor(
            prompt,
            videos=[frames],
            temporal_pool=settings.temporal_pool,
            spatial_pool=settings.spatial_pool,
            temporal_sampling=settings.temporal_sampling,
        )
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                temporal_pool=settings.temporal_pool,
                spatial_pool=settings.spatial_pool,
                temporal_sampling=settings.temporal_sampling,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=processor.stop_token_ids,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        seconds = time.perf_counter() - start
        answer = processor.decode(out[0, inputs["input_ids"].shape[1] :])
        tokens = processor.num_visual_tokens(num_frames, settings)
        rows.append(DemoRow(label, settings, tokens, seconds, answer))

    grid = model.config.token_grid
    title = f"{preset} STORM (random weights): {num_frames}-frame generated clip, {grid[0] * grid[1]} tokens/frame"
    table = Table(title=title)
    for col in ("setting", "k", "p", "s", "visual tokens", "of none", "generate s", "answer"):
        table.add_column(col, justify="left" if col in ("setting", "answer") else "right")
    base = rows[0].tokens
    for r in rows:
        s = r.settings
        table.add_row(
            r.label,
            str(s.temporal_pool),
            str(s.spatial_pool),
            str(s.temporal_sampling),
            str(r.tokens),
            f"{100 * r.tokens / base:.1f}%",
            f"{r.seconds:.2f}",
            repr(r.answer),
        )
    console.print(table)
    console.print(paper_token_table())
    console.print(
        "[dim]The model is randomly initialised, so the answers are noise; token counts and timings are "
        "measured. Question: " + question + "[/dim]"
    )
    return rows


def paper_token_table(frame_counts: tuple[int, ...] = (8, 32, 128, 256)) -> Table:
    """Visual tokens reaching the LLM at the paper's shapes (SigLIP-448 → 16×16 = 256 per frame)."""
    grid = StormConfig().token_grid
    table = Table(title=f"Paper shapes (SigLIP-So400m-448 + 2×2 downsample → {grid[0] * grid[1]} tokens/frame)")
    table.add_column("setting")
    for t in frame_counts:
        table.add_column(f"{t} frames", justify="right")
    for label, settings in PAPER_SETTINGS:
        table.add_row(label, *(str(num_visual_tokens(t, grid, settings)) for t in frame_counts))
    return table
