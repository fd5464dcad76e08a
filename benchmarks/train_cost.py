"""Training cost on CPU: samples/s and peak memory per training step, with and without checkpointing.

Run:  .venv/bin/python benchmarks/train_cost.py [--frames 16,32,64,128] [--steps 1] [--warmup 1] [--k 4]

Each (frames, checkpointing) cell trains the ``small`` preset (random weights, fp32, CPU) for
``--warmup`` untimed steps and ``--steps`` timed ones, in a fresh subprocess: the stage-2 setting
(everything trains, AdamW over ``param_groups``; the unused last vision layer frozen as in a real
run), batch 1, a random clip of T frames at 224 px and a short conversation, temporal pooling
``--k`` (4, the stage-3 recipe's; the LLM then sees T/4·64 visual tokens). Checkpointing is
transformers' ``activation_checkpointing_enable()`` on the whole model (``gradient_checkpointing_enable``
is its deprecated alias in transformers 5): every SigLIP encoder layer, Mamba block and Qwen2
decoder layer. Cells with 128 frames run ``--steps-128`` timed steps and one warm-up (each takes
tens of seconds on 2 cores).

Peak memory is the child's ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the kernel's high-water
mark of resident memory, which sees every allocation (PyTorch's CPU allocator included) and every
transient peak. ``tracemalloc`` sees only Python's own allocations, not tensor storage, and
polling psutil's RSS misses peaks between polls. Reported both whole (interpreter + weights +
grads + Adam states + activations) and above the RSS once the model is built. In one uncheckpointed
warm-up step the bytes autograd saves for backward are also counted (``saved_tensors_hooks``,
storages deduplicated, parameters excluded): that is the measured side of the analytic activation
formula (:mod:`storm_vlm.bench.train_memory`), printed beside it at the small shapes.

Then the analytic estimate for the 7B recipes (configs/7b-stage2.yaml: 32 frames, k = 1;
configs/7b-stage3.yaml: 128 frames, k = 4) under ZeRO-3 on 8 GPUs, with and without checkpointing.
Writes docs/bench/train-cost.md and .png (``--out``); the cells go to ``--json`` after each one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "<video>\nWhat happens in the video? Describe the motion over time."
ANSWER = "A red square moves from left to right, stops, and then leaves at the top of the frame."


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    """Resident memory now (Linux /proc), for the baseline once the model exists."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _saved_bytes(model: Any, step: Any) -> int:
    """Bytes of the tensors autograd saves in one forward (storages counted once, parameters not)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def measure_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One cell, in its own process: build, warm up, time ``steps`` optimizer steps."""
    import torch

    from storm_vlm.modeling.modeling_storm import StormForConditionalGeneration
    from storm_vlm.modeling.reduction import ReductionSettings
    from storm_vlm.presets import placeholder_ids, preset_config, tiny_image_processor, tiny_tokenizer
    from storm_vlm.processing_storm import StormProcessor
    from storm_vlm.train.data import StormCollator, encode_conversation
    from storm_vlm.train.recipe import OptimConfig
    from storm_vlm.train.stages import configure_stage, param_groups

    torch.manual_seed(0)
    start_rss = _current_rss_mib()
    tokenizer = tiny_tokenizer()
    config = preset_config("small")
    config.video_token_id, config.image_token_id = placeholder_ids(tokenizer)
    config.temporal_pool = spec["k"]
    config.use_cache = False
    model = StormForConditionalGeneration(config)
    processor = StormProcessor.from_config(tiny_image_processor(), tokenizer, config)
    configure_stage(model, 2)
    if spec["checkpointing"]:
        model.activation_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, OptimConfig(lr=1e-5)))

    frames = spec["frames"]
    visual = processor.num_visual_tokens(frames, ReductionSettings(spec["k"], 1, 1))
    turns = [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": ANSWER}]
    ids, labels = encode_conversation(processor, turns, "video", visual)
    size = config.vision_config.image_size
    item = {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "pixel_values_videos": torch.randn(frames, 3, size, size),
        "pixel_values": None,
        "visual_tokens": visual,
    }
    batch = StormCollator(tokenizer.pad_token_id)([item])
    batch.pop("skipped"), batch.pop("counts")
    model_rss = _current_rss_mib()

    def forward_backward() -> None:
        model(**batch).loss.backward()

    def step() -> None:
        forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    saved = None
    for i in range(spec["warmup"]):
        if i == 0 and not spec["checkpointing"]:
            saved = _saved_bytes(model, forward_backward)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            step()
    times = []
    for _ in range(spec["steps"]):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {
        "frames": frames,
        "checkpointing": spec["checkpointing"],
        "k": spec["k"],
        "sequence": len(ids),
        "visual_tokens": visual,
        "warmup": spec["warmup"],
        "steps": spec["steps"],
        "step_s": times,
        "samples_per_s": len(times) / sum(times),
        "peak_rss_mib": _rss_mib(),
        "above_model_mib": _rss_mib() - model_rss,
        "model_rss_mib": model_rss,
        "start_rss_mib": start_rss,
        "saved_activation_mib": saved / 2**20 if saved is not None else None,
        "threads": torch.get_num_threads(),
    }


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """The cell in a fresh interpreter, so that its peak RSS is its own."""
    proc = subprocess.run(
        [sys.executable, __file__, "--cell", json.dumps(spec)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cell {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(cells: list[dict[str, Any]]) -> str:
    rows = [
        "| frames | visual tokens (LLM) | checkpointing | step s (mean of timed) | samples/s | peak RSS MiB "
        "| above model MiB | saved activations MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        mean = sum(c["step_s"]) / len(c["step_s"])
        saved = f"{c['saved_activation_mib']:.0f}" if c["saved_activation_mib"] is not None else "—"
        rows.append(
            f"| {c['frames']} | {c['visual_tokens']} | {'yes' if c['checkpointing'] else 'no'} | {mean:.2f} "
            f"({len(c['step_s'])} steps) | {c['samples_per_s']:.3f} | {c['peak_rss_mib']:.0f} "
            f"| {c['above_model_mib']:.0f} | {saved} |"
        )
    return "\n".join(rows)


def _ratios(cells: list[dict[str, Any]]) -> list[str]:
    by = {(c["frames"], c["checkpointing"]): c for c in cells}
    lines = []
    for frames in sorted({c["frames"] for c in cells}):
        off, on = by.get((frames, False)), by.get((frames, True))
        if off and on:
            lines.append(
                f"- {frames} frames: checkpointing {on['samples_per_s'] / off['samples_per_s']:.2f}x the samples/s, "
                f"{on['above_model_mib'] / off['above_model_mib']:.2f}x the memory above the model "
                f"({off['above_model_mib']:.0f} → {on['above_model_mib']:.0f} MiB)"
            )
    return lines


def _plot(cells: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ckpt, style in ((False, "o-"), (True, "s--")):
        row = sorted((c for c in cells if c["checkpointing"] == ckpt), key=lambda c: c["frames"])
        label = "checkpointing" if ckpt else "no checkpointing"
        ax1.plot([c["frames"] for c in row], [c["samples_per_s"] for c in row], style, label=label)
        ax2.plot([c["frames"] for c in row], [c["peak_rss_mib"] for c in row], style, label=label)
    for ax, title in ((ax1, "samples/s per training step"), (ax2, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_yscale("log")
    fig.suptitle("STORM small preset, stage-2 training step on CPU (k=4, batch 1, fp32, AdamW)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="16,32,64,128")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per cell")
    parser.add_argument("--steps-128", type=int, default=1, help="timed steps at >= 128 frames (1 warm-up)")
    parser.add_argument("--k", type=int, default=4, help="temporal pooling of the small model (stage 3's)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "train-cost"))
    parser.add_argument(
        "--json", default=str(Path(tempfile.gettempdir()) / "train-cost.json"), help="cells, after each"
    )
    parser.add_argument("--reuse", action="store_true", help="re-render from --json's cells, measure nothing")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(measure_cell(json.loads(args.cell))))
        return

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cells: list[dict[str, Any]] = []
    command = " ".join(["python benchmarks/train_cost.py", *(argv if argv is not None else sys.argv[1:])])
    load: list[float] | None = [os.getloadavg()[0]]  # the 1-minute load average, at the start and the end
    if args.reuse:
        previous = json.loads(Path(args.json).read_text())
        cells, wall, command = previous["cells"], previous["wall_s"], previous.get("command", command)
        load = previous.get("load_avg")  # None: a run from before it was recorded
    for frames in [] if args.reuse else [int(f) for f in args.frames.split(",")]:
        for ckpt in (False, True):
            long = frames >= 128
            spec = {
                "frames": frames,
                "checkpointing": ckpt,
                "k": args.k,
                "steps": args.steps_128 if long else args.steps,
                "warmup": 1 if long else args.warmup,
            }
            print(f"measuring {frames} frames, checkpointing {'on' if ckpt else 'off'} ...", flush=True)
            cells.append(run_cell(spec))
            c = cells[-1]
            print(
                f"  {c['samples_per_s']:.3f} samples/s, peak RSS {c['peak_rss_mib']:.0f} MiB "
                f"({c['above_model_mib']:.0f} above the model)",
                flush=True,
            )
            Path(args.json).write_text(
                json.dumps({"cells": cells, "wall_s": time.perf_counter() - started, "command": command})
            )
    if not args.reuse:
        wall = time.perf_counter() - started
        load = [*(load or []), os.getloadavg()[0]]
    from storm_vlm.bench.train_memory import FORMULA, estimate_table, recipe_estimates, small_check

    table = _table(cells)
    ratios = _ratios(cells)
    estimates = recipe_estimates()
    checks = small_check(cells, args.k)
    _plot(cells, out.with_suffix(".png"))
    Path(args.json).write_text(
        json.dumps(
            {"cells": cells, "wall_s": wall, "command": command, "load_avg": load, "estimates": estimates}, indent=1
        )
    )
    text = [
        "# Training cost: samples/s and peak memory per step",
        "",
        f"`{command.strip()}` — {wall / 60:.1f} min on a 2-core CPU ({cells[0]['threads']} torch threads; "
        + (
            f"1-minute load average {load[0]:.1f} at the start, {load[-1]:.1f} at the end); "
            if load
            else "load average not recorded); "
        )
        + "no GPU was lent to this session, so there are no GPU numbers here.",
        "",
        "## Measured: small preset on CPU",
        "",
        table,
        "",
        *ratios,
        "",
        f"![samples/s and peak RSS vs frames]({out.with_suffix('.png').name})",
        "",
        "## Analytic: the 7B recipes under ZeRO-3 on 8 GPUs",
        "",
        "```",
        FORMULA.strip(),
        "```",
        "",
        estimate_table(estimates),
        "",
        "Formula against the measured saved activations at the small shapes (fp32, k as above):",
        "",
        *checks,
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
