"""Streaming latency: the cost of one new frame at frame 10, 100 and 1000 of the same stream.

Run:  .venv/bin/python benchmarks/streaming.py [--frames 1000] [--hidden 256]

A causal STORM (bidirectional=False; SigLIP 64 px / 8 px patches → 16 tokens per frame, Qwen2
width --hidden, 2 Mamba layers) receives frames one at a time through ``StormStream``
(temporal pooling k=4, a window of 64 kept frames). Each frame's ``add_frames`` is timed; the
median over the 25 frames from each checkpoint on is printed. Target: flat within 10%, because each
frame only advances the carried conv/SSM state.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, SiglipVisionConfig

from storm_vlm import StormConfig, StormForConditionalGeneration
from storm_vlm.streaming import StormStream

WINDOW = 25  # frames timed from each checkpoint on


def build(hidden: int) -> StormForConditionalGeneration:
    vision = SiglipVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8
    )
    text = Qwen2Config(
        vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    config = StormConfig(vision_config=vision, text_config=text, video_token_id=510, image_token_id=511,
                         bidirectional=False, temporal_layers=2, temporal_pool=4)  # fmt: skip
    return StormForConditionalGeneration(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.hidden)
    stream = StormStream(model, max_frames=64)
    frame = torch.randn(1, 3, 64, 64)
    checkpoints = [c for c in (10, 100, 1000) if c <= args.frames]
    times: dict[int, list[float]] = {c: [] for c in checkpoints}
    for i in range(args.frames + WINDOW):
        start = time.perf_counter()
        stream.add_frames(frame)
        elapsed = time.perf_counter() - start
        for c in checkpoints:
            if c <= i < c + WINDOW:
                times[c].append(elapsed)
    medians = {c: statistics.median(v) for c, v in times.items() if v}
    print(f"causal STORM, width {args.hidden}, 16 tokens/frame, k=4, window 64; one frame per add_frames call\n")
    for c, m in medians.items():
        print(f"frame {c:>5}: {m * 1000:7.2f} ms per frame (median of {WINDOW})")
    base = medians[checkpoints[0]]
    spread = max(abs(m / base - 1) for m in medians.values())
    print(f"\nlargest deviation from frame {checkpoints[0]}: {100 * spread:.1f}% (target <= 10%: "
          f"{'met' if spread <= 0.10 else 'NOT met'})")  # fmt: skip
    print(f"visual tokens kept after {stream.frames_seen} frames: {stream.visual_tokens().shape[1:3].numel()}")


if __name__ == "__main__":
    main()
