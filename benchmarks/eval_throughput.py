"""Option scoring throughput: one forward per option vs the batched path, same questions, one run.

Run:  .venv/bin/python benchmarks/eval_throughput.py [--questions 40] [--frames 16] [--options 4]

Builds the tiny random STORM (or loads --model DIR), makes ``--questions`` clips with
``storm_vlm.synth`` and scores ``--options`` option texts per question twice: the obvious way (the
prompt and one option through the whole model, option by option) and ``eval.runner.option_logprobs``
(the prompt once, its KV cache repeated, the options in one padded batch). Prints questions per
second for both, the speed-up, and the largest score difference and whether every argmax agrees.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--model", default=None, help="A model directory (default: the tiny random preset).")
    args = parser.parse_args()

    from storm_vlm.eval.runner import option_logprobs, option_logprobs_reference
    from storm_vlm.inference import load_model, prepare_inputs
    from storm_vlm.presets import build_tiny
    from storm_vlm.synth import motion_clip
    from storm_vlm.video import VideoClip

    torch.manual_seed(0)
    model, processor = load_model(args.model) if args.model else build_tiny()
    model.eval()
    rng = np.random.default_rng(0)
    words = ["red square", "a blue bar moving left", "green", "yellow circle at the top", "nothing", "two flashes"]
    prepared, option_ids = [], []
    for q in range(args.questions):
        size = model.config.vision_config.image_size
        frames = motion_clip(["red", "blue", "green"][q % 3], ["left", "right"][q % 2], args.frames, size, rng)
        clip = VideoClip(frames, np.arange(float(args.frames)), np.arange(args.frames), 1.0, float(args.frames),
                         frames.shape[1:3], args.frames)  # fmt: skip
        prepared.append(prepare_inputs(model, processor, clip, "What happens?", model.reduction_settings()))
        picks = rng.choice(len(words), args.options, replace=False)
        option_ids.append([processor.tokenizer(words[i], add_special_tokens=False)["input_ids"] for i in picks])

    ways = {"one forward per option": option_logprobs_reference, "batched (prompt once)": option_logprobs}
    scores, seconds = {}, {}
    with torch.inference_mode():
        for name, score in ways.items():
            score(model, prepared[0].inputs_embeds, prepared[0].attention_mask, option_ids[0])  # warm-up
            start = time.perf_counter()
            scores[name] = [score(model, p.inputs_embeds, p.attention_mask, o) for p, o in zip(prepared, option_ids)]
            seconds[name] = time.perf_counter() - start
    slow, fast = ways
    prompt_tokens = int(np.mean([p.prompt_tokens for p in prepared]))
    print(f"{args.questions} questions x {args.options} options, {args.frames} frames, ~{prompt_tokens} prompt tokens")
    for name in ways:
        print(f"  {name:<24} {args.questions / seconds[name]:8.1f} questions/s")
    print(f"  speed-up {seconds[slow] / seconds[fast]:.2f}x")
    diff = max(abs(a - b) for s, f in zip(scores[slow], scores[fast]) for a, b in zip(s, f))
    agree = all(np.argmax(s) == np.argmax(f) for s, f in zip(scores[slow], scores[fast]))
    print(f"  largest score difference {diff:.2e}; same choice on every question: {agree}")


if __name__ == "__main__":
    main()
