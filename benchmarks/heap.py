"""Freed memory kept mapped (``storm_vlm.heap``, what ``storm-vlm`` does) against glibc's defaults,
side by side: the Mamba module's inference and a whole model's generate at 128 frames.

Run:  .venv/bin/python benchmarks/heap.py [--frames 128] [--rounds 3] [--repeat 3]

Each round runs one process per setting (``STORM_MALLOC=keep``, then ``=system``), so the two
take turns on the machine; a process builds the small preset with random weights, warms up, then
times ``--repeat`` calls of (a) the temporal module alone and (b) the model end to end (frames in
memory → 8 new tokens), as ``storm-vlm bench`` runs them. Reported: the median of all calls per
setting, the ratio, the minor page faults per call and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = ("keep", "system")


def _child(frames: int, repeat: int) -> None:
    from storm_vlm.heap import keep_freed_memory

    kept = keep_freed_memory()
    import torch

    from storm_vlm.modeling.modeling_storm import StormForConditionalGeneration
    from storm_vlm.presets import preset_config

    torch.manual_seed(0)
    config = preset_config("small")
    model = StormForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    pixels = torch.randn(1, frames, 3, size, size)
    rows, cols = config.token_grid
    ids = torch.tensor([[config.video_token_id] * (frames * rows * cols) + [10, 11, 12]])  # no reduction
    tokens = torch.randn(1, frames, rows * cols, config.hidden_size)

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    out: dict[str, object] = {"kept": kept}
    with torch.inference_mode():
        for name, fn in (
            ("temporal module", lambda: model.model.temporal(tokens)),
            ("end to end", lambda: model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=8)),
        ):
            fn()
            times, flts = [], []
            for _ in range(repeat):
                f0, t0 = faults(), time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
                flts.append(faults() - f0)
            out[name] = {"times": times, "faults": statistics.median(flts)}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.frames <= 512 and 1 <= args.rounds <= 20 and 1 <= args.repeat <= 20):
        parser.error("--frames must be 1 to 512, --rounds and --repeat 1 to 20")
    if args.child:
        _child(args.frames, args.repeat)
        return
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for setting in SETTINGS:
            print(f"round {r + 1}/{args.rounds}: STORM_MALLOC={setting} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", f"--frames={args.frames}", f"--repeat={args.repeat}"]
            env = {**os.environ, "STORM_MALLOC": setting}
            done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"small preset, {args.frames} frames, fp32 CPU; median of {args.rounds} x {args.repeat} calls per setting")
    print(f"  {'':16s} {'kept (default)':>16s} {'glibc defaults':>16s}   ratio   page faults per call")
    for part in ("temporal module", "end to end"):
        med = {s: statistics.median(t for run in runs[s] for t in run[part]["times"]) for s in SETTINGS}
        flt = {s: statistics.median(run[part]["faults"] for run in runs[s]) for s in SETTINGS}
        print(f"  {part:16s} {med['keep']:15.3f}s {med['system']:15.3f}s   {med['system'] / med['keep']:.2f}x"
              f"   {flt['keep']:.0f} vs {flt['system']:.0f}")  # fmt: skip
    rss = {s: max(run["peak_rss_mib"] for run in runs[s]) for s in SETTINGS}
    print(f"  peak RSS        {rss['keep']:15.0f}M {rss['system']:15.0f}M")


if __name__ == "__main__":
    main()
