"""Evaluation throughput, the plain way against the batched one, same questions, one run.

Run:  .venv/bin/python benchmarks/eval_throughput.py [--questions 32] [--frames 16] [--options 4]
          [--new-tokens 16] [--batch-sizes 1,4,8] [--model DIR]

Builds the tiny random STORM (its LLM weights spread so that greedy tokens vary; or loads --model
DIR) and prepares ``--questions`` clips made by ``storm_vlm.synth``, with prompts of different
lengths. Then, side by side:

* option scoring (``--scoring loglik``): ``--options`` option texts per question, the obvious way
  (prompt and one option through the whole model, option by option) against
  ``eval.runner.option_logprobs`` (the prompt once, its KV cache repeated, the options in one batch);
* generation (``--batch-size``): ``--new-tokens`` greedy tokens for every question through
  ``inference.generate_batch``, at each of ``--batch-sizes`` questions per call.

Prints questions per second for each, the ratios, and whether the answers agree (largest score
difference and same argmax; generated answers equal to batch size 1's).
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
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--model", default=None, help="A model directory (default: the tiny random preset).")
    args = parser.parse_args()

    from storm_vlm.inference import load_model, prepare_inputs
    from storm_vlm.presets import build_tiny, spread_llm_weights
    from storm_vlm.synth import motion_clip
    from storm_vlm.video import VideoClip

    torch.manual_seed(0)
    model, processor = load_model(args.model) if args.model else build_tiny()
    model.eval()
    if not args.model:
        spread_llm_weights(model, 0.5)
    rng = np.random.default_rng(0)
    questions = ["What happens?", "Which colour moves, and in which direction does it go?", "Describe it."]
    prepared = []
    for q in range(args.questions):
        size = model.config.vision_config.image_size
        frames = motion_clip(["red", "blue", "green"][q % 3], ["left", "right"][q % 2], args.frames, size, rng)
        clip = VideoClip(frames, np.arange(float(args.frames)), np.arange(args.frames), 1.0, float(args.frames),
                         frames.shape[1:3], args.frames)  # fmt: skip
        prepared.append(prepare_inputs(model, processor, clip, questions[q % 3], model.reduction_settings()))
    prompt_tokens = int(np.mean([p.prompt_tokens for p in prepared]))
    print(f"{args.questions} questions, {args.frames} frames, ~{prompt_tokens} prompt tokens")
    scoring(model, processor, prepared, args.options, rng)
    generation(model, prepared, args.new_tokens, [int(b) for b in args.batch_sizes.split(",")])


def scoring(model, processor, prepared, n_options: int, rng: np.random.Generator) -> None:
    from storm_vlm.eval.runner import option_logprobs, option_logprobs_reference

    words = ["red square", "a blue bar moving left", "green", "yellow circle at the top", "nothing", "two flashes"]
    option_ids = []
    for _ in prepared:
        picks = rng.choice(len(words), n_options, replace=False)
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
    print(f"option scoring, {n_options} options per question:")
    for name in ways:
        print(f"  {name:<24} {len(prepared) / seconds[name]:8.1f} questions/s")
    print(f"  speed-up {seconds[slow] / seconds[fast]:.2f}x")
    diff = max(abs(a - b) for s, f in zip(scores[slow], scores[fast]) for a, b in zip(s, f))
    agree = all(np.argmax(s) == np.argmax(f) for s, f in zip(scores[slow], scores[fast]))
    print(f"  largest score difference {diff:.2e}; same choice on every question: {agree}")


def generation(model, prepared, new_tokens: int, sizes: list[int]) -> None:
    from storm_vlm.inference import generate_batch, until_stop

    answers: dict[int, list[list[int]]] = {}
    seconds: dict[int, float] = {}
    generate_batch(model, prepared[:1], new_tokens, do_sample=False)  # warm-up
    for size in sizes:
        start = time.perf_counter()
        rows = []
        for lo in range(0, len(prepared), size):
            out = generate_batch(model, prepared[lo : lo + size], new_tokens, do_sample=False)
            rows += [until_stop(model, row) for row in out]
        seconds[size] = time.perf_counter() - start
        answers[size] = rows
    print(
        f"generation, {new_tokens} new tokens at most ({len({tuple(a) for a in answers[sizes[0]]})} distinct answers):"
    )
    for size in sizes:
        same = answers[size] == answers[sizes[0]]
        print(f"  batch {size:>3}: {len(prepared) / seconds[size]:7.1f} questions/s, "
              f"{seconds[sizes[0]] / seconds[size]:.2f}x batch {sizes[0]}; same answers: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
