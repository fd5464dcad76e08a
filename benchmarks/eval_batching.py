"""Generated answers per second at several batch sizes (``storm-vlm eval --batch-size``), one run.

Run:  .venv/bin/python benchmarks/eval_batching.py [--questions 32] [--frames 16] [--new-tokens 16]

Builds the tiny random STORM (its LLM weights spread so that greedy tokens vary; or loads --model
DIR), prepares ``--questions`` clips made by ``storm_vlm.synth`` with prompts of different lengths,
then generates ``--new-tokens`` greedy tokens for all of them through ``inference.generate_batch``
at each ``--batch-sizes`` value, side by side. Prints questions per second for each, the ratio to
batch size 1, and whether every answer equals the batch-size-1 answer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--model", default=None, help="A model directory (default: the tiny random preset).")
    args = parser.parse_args()

    from storm_vlm.inference import generate_batch, load_model, prepare_inputs, until_stop
    from storm_vlm.presets import build_tiny
    from storm_vlm.synth import motion_clip
    from storm_vlm.video import VideoClip

    torch.manual_seed(0)
    model, processor = load_model(args.model) if args.model else build_tiny()
    model.eval()
    if not args.model:
        with torch.no_grad():
            for param in model.language_model.parameters():
                if param.dim() > 1:
                    param.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    questions = ["What happens?", "Which colour moves, and in which direction does it go?", "Describe it."]
    prepared = []
    for q in range(args.questions):
        size = model.config.vision_config.image_size
        frames = motion_clip(["red", "blue", "green"][q % 3], ["left", "right"][q % 2], args.frames, size, rng)
        clip = VideoClip(frames, np.arange(float(args.frames)), np.arange(args.frames), 1.0, float(args.frames),
                         frames.shape[1:3], args.frames)  # fmt: skip
        prepared.append(prepare_inputs(model, processor, clip, questions[q % 3], model.reduction_settings()))

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    answers: dict[int, list[list[int]]] = {}
    seconds: dict[int, float] = {}
    generate_batch(model, prepared[:1], args.new_tokens, do_sample=False)  # warm-up
    for size in sizes:
        start = time.perf_counter()
        rows = []
        for lo in range(0, len(prepared), size):
            out = generate_batch(model, prepared[lo : lo + size], args.new_tokens, do_sample=False)
            rows += [until_stop(model, row) for row in out]
        seconds[size] = time.perf_counter() - start
        answers[size] = rows
    print(f"{args.questions} questions, {args.frames} frames, {args.new_tokens} new tokens at most")
    for size in sizes:
        same = answers[size] == answers[sizes[0]]
        print(f"  batch {size:>3}: {args.questions / seconds[size]:7.1f} questions/s, "
              f"{seconds[sizes[0]] / seconds[size]:.2f}x batch {sizes[0]}; same answers: {same}")  # fmt: skip
    print(f"  distinct answers: {len({tuple(a) for a in answers[sizes[0]]})} of {args.questions}")


if __name__ == "__main__":
    main()
