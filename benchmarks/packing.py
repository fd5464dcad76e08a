"""Padding with plain batches, length grouping and packing, side by side on one length mix.

Run:  .venv/bin/python benchmarks/packing.py [--samples 20000] [--batch-size 8] [--pack-tokens 4096]

No model runs: the three samplers the trainer uses (``SeededSampler``, ``LengthGroupedSampler``,
``PackedBatchSampler``) order the same lengths and each batch is laid out as the collator lays it
out (one sample per row padded to the longest, or rows first-fit packed to the budget). Printed
per way: batches per epoch (optimizer steps at one batch a step), rows per batch, token slots
computed per batch (rows x the longest row: what memory and attention cost follow) and the share
of those slots that are real tokens (the rest is padding).

The default mix is modelled on configs/mixtures/stage2-sft.yaml at the 7B recipe's shapes: 70 %
videos (32 frames, k = 1 in stage 2, 64 tokens a frame: 2,048 visual tokens) and 30 % images
(64 visual tokens), each with a log-normal text length (median 120 tokens for videos, 180 for
images, σ 0.8), capped at ``--max-length``. Pass ``--lengths FILE`` (a JSON list of token counts)
to measure your own data's estimates instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from storm_vlm.train.data import LengthGroupedSampler, PackedBatchSampler, SeededSampler, first_fit_decreasing


def synthetic_lengths(samples: int, max_length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = rng.random(samples) < 0.7
    visual = np.where(video, 32 * 64, 64)
    text = rng.lognormal(np.log(np.where(video, 120, 180)), 0.8).astype(np.int64) + 20
    return np.minimum(visual + text, max_length)


def measure(lengths: np.ndarray, batches: list[list[int]], pack_tokens: int | None) -> dict[str, float]:
    real = slots = rows = 0
    for batch in batches:
        if pack_tokens is None:
            widths = [int(lengths[i]) for i in batch]
        else:
            packed = first_fit_decreasing(lengths[batch], pack_tokens)  # as the collator packs them
            widths = [sum(int(lengths[batch[j]]) for j in row) for row in packed]
        rows += len(widths)
        real += sum(widths)
        slots += len(widths) * max(widths)
    return {"batches": len(batches), "rows_per_batch": rows / len(batches), "real_share": real / slots,
            "slots_per_batch": slots / len(batches)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch (samples per batch without packing)")
    parser.add_argument("--pack-tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--lengths", type=Path, help="a JSON list of token counts instead of the synthetic mix")
    args = parser.parse_args()
    if args.lengths is not None:
        lengths = np.minimum(np.asarray(json.loads(args.lengths.read_text()), dtype=np.int64), args.max_length)
    else:
        lengths = synthetic_lengths(args.samples, args.max_length)
    n, b = len(lengths), args.batch_size

    def cut(order: list[int]) -> list[list[int]]:
        return [order[i : i + b] for i in range(0, n, b)]

    ways = {
        "plain (seeded shuffle)": (cut(SeededSampler(n, 0).order()), None),
        "length-grouped": (cut(LengthGroupedSampler(lengths, b, 0, args.group_size).order()), None),
        f"packed to {args.pack_tokens}": (
            PackedBatchSampler(lengths, args.pack_tokens, b, 0, args.group_size).batches(),
            args.pack_tokens,
        ),
    }
    print(f"{n} samples, mean {lengths.mean():.0f} tokens (min {lengths.min()}, max {lengths.max()}); batch {b} rows")
    print(f"{'way':<24} {'batches':>8} {'rows/batch':>10} {'slots/batch':>11} {'real share':>10}")
    for name, (batches, pack) in ways.items():
        m = measure(lengths, batches, pack)
        print(
            f"{name:<24} {m['batches']:>8} {m['rows_per_batch']:>10.2f} {m['slots_per_batch']:>11.0f} "
            f"{m['real_share']:>10.1%}"
        )


if __name__ == "__main__":
    main()
