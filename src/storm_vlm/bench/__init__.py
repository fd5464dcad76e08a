"""`storm-vlm bench`: tokens, FLOPs, latency per stage and peak memory, per compression setting.

Configurations (paper §4, Fig. 8): ``none`` (STORM, no reduction), ``k4`` (temporal pooling),
``k4s2`` (+ test-time sampling), ``k4s2p2`` (+ 2×2 spatial pooling), ``mlp`` (the no-Mamba
baseline, no reduction). Each (configuration, frames) cell runs in a fresh process, so its peak
memory is its own. Presets: ``tiny`` (tests), ``small`` (a random model with the paper's
proportions: the LLM has ~17x the vision tower's parameters and dominates uncompressed latency),
``7b-shapes`` (SigLIP-So400m-448 + Qwen2-7B: measured with random bf16 weights on CUDA, elsewhere
the arithmetic from configs only).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..modeling.reduction import PAPER_SETTINGS, ReductionSettings, num_visual_tokens, settings_for_budget
from ..presets import placeholder_ids, preset_config
from .flops import activation_bytes, kv_cache_bytes, stage_flops

__all__ = ["CONFIGS", "BenchCell", "preset_config", "run_bench"]

# (projector, settings) per bench configuration: the paper's settings, and the no-Mamba baseline
CONFIGS: dict[str, tuple[str, ReductionSettings]] = {
    **{name: ("storm", settings) for name, (_, settings) in PAPER_SETTINGS.items()},
    "mlp": ("mlp", ReductionSettings(1, 1, 1)),
}
STAGES = ("decode", "vision", "temporal", "prefill", "decoding")
NEW_TOKENS = 16  # decoded tokens per cell (--new-tokens)


@dataclass
class BenchCell:
    config: str
    frames: int
    visual_tokens: int
    settings: str
    flops: dict[str, float]
    latency_s: dict[str, float] | None = None
    runs: int = 1  # timed runs after the warm-up; latencies are their stage medians
    ttft_s: float | None = None
    decode_tokens_per_s: float | None = None
    peak_rss_mib: float | None = None
    kv_cache_mib: float | None = None
    activation_mib: float | None = None  # analytic: one vision chunk + all projected tokens + one scan layer
    end_to_end_s: float | None = None  # frames in memory → answer: vision + temporal + prefill + decoding
    peak_gpu_mib: float | None = None
    compile_s: float | None = None  # fast path: the first (compiling) run, not included in the timings
    device: str | None = None
    fast_path: bool | None = None


def _build(preset: str, projector_type: str, model_dir: str | None, device: str, fast: bool | None):
    """The measured model: a model directory, or a preset with random weights (bf16 on CUDA)."""
    import torch

    from ..inference import load_model, ready_for_inference
    from ..presets import tiny_image_processor, tiny_tokenizer
    from ..processing_storm import StormProcessor

    if model_dir is not None:
        return load_model(model_dir, device=device, fast=fast)
    from ..modeling.modeling_storm import StormForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = preset_config(preset, projector_type)
    config.video_token_id, config.image_token_id = placeholder_ids(tokenizer)
    with torch.device(device):  # random init where it runs: a 7B model is built on the GPU in seconds
        model = StormForConditionalGeneration(config)
    if model.device.type == "cuda":
        model.to(torch.bfloat16)  # type: ignore[arg-type]  # as load_model does on CUDA; @wraps(Module.to) keeps self
    ready_for_inference(model, fast)
    size = config.vision_config.image_size
    processor = StormProcessor.from_config(tiny_image_processor(), tokenizer, config)
    processor.image_processor.size = {"height": size, "width": size}
    return model, processor


def _measure_cell(args: dict[str, Any]) -> dict[str, Any]:
    """One (configuration, frames) cell, timed stage by stage (runs in its own process).

    On CUDA or with the fast path the whole cell runs twice and the second run is timed (the first
    compiles; with the fast path its time is reported as ``compile_s``).
    """
    import torch

    from ..inference import generate_answer, prepare_inputs
    from ..video import sample_frames

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, processor = _build(args["preset"], args["projector"], args.get("model_dir"), args["device"], args["fast"])
    settings = ReductionSettings(*args["settings"])
    new_tokens = args["new_tokens"]

    def run(clip_frames: int) -> tuple[dict[str, float], int]:
        started = time.perf_counter()
        clip = sample_frames(args["video"], num_frames=clip_frames)
        decode_s = time.perf_counter() - started
        prepared = prepare_inputs(model, processor, clip, "Describe what happens in the video.", settings)
        generate_answer(model, prepared, new_tokens, min_new_tokens=new_tokens)
        t = prepared.timer.timings
        latency = {"decode": decode_s, "vision": t["preprocess"] + t["vision"], "temporal": t["temporal"],
                   "prefill": t["prefill"], "decoding": t["decoding"]}  # fmt: skip
        return latency, prepared.visual_tokens

    started = time.perf_counter()
    # warm-up: load kernels (numba cache, torch); on CUDA and with the fast path at the measured
    # shapes (compilation, cuBLAS / Triton first-shape costs)
    run(args["frames"] if model.fast_path is not None or model.device.type == "cuda" else 2)
    compile_s = time.perf_counter() - started if model.fast_path is not None else None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    runs = [run(args["frames"]) for _ in range(args.get("repeat", 1))]
    visual_tokens = runs[0][1]
    # the median of each stage over the timed runs (one run: as measured)
    latency = {stage: statistics.median(r[0][stage] for r in runs) for stage in runs[0][0]}
    return {
        "latency_s": latency,
        "ttft_s": sum(latency[k] for k in ("decode", "vision", "temporal", "prefill")),
        "end_to_end_s": sum(latency[k] for k in ("vision", "temporal", "prefill", "decoding")),
        "decode_tokens_per_s": (new_tokens - 1) / latency["decoding"],
        "visual_tokens": visual_tokens,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "compile_s": compile_s,
        "runs": len(runs),
        "device": torch.cuda.get_device_name() if torch.device(args["device"]).type == "cuda" else "cpu",
        "fast_path": model.fast_path is not None,
    }


def _make_video(path: Path, frames: int, size: int) -> Path:
    import numpy as np

    from ..synth import motion_clip
    from ..video import write_video

    rng = np.random.default_rng(0)
    write_video(path, motion_clip("red", "right", frames, size, rng), fps=25)
    return path


def run_bench(
    preset: str = "small",
    frames: list[int] | tuple[int, ...] = (32, 128),
    configs: list[str] | tuple[str, ...] = tuple(CONFIGS),
    model_dir: str | None = None,
    token_budget: int | None = None,
    measure: bool = True,
    workdir: str | Path | None = None,
    log=print,
    device: str | None = None,
    fast: bool | None = None,
    new_tokens: int = NEW_TOKENS,
    repeat: int = 1,
) -> list[BenchCell]:
    """Every (configuration, frames) cell: analytic tokens and FLOPs, and (``measure``) timings.

    ``device`` defaults to CUDA when available; ``fast`` (default: on CUDA) uses the compiled
    fast path (:mod:`storm_vlm.modeling.fast_path`). ``repeat`` times each cell that many times
    after its warm-up and reports each stage's median. ``7b-shapes`` is measured only on CUDA
    (random bf16 weights); elsewhere it gives the arithmetic alone.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown bench configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if preset == "7b-shapes" and torch.device(device).type != "cuda":
        measure = False  # 15 GiB of random weights: measured on a GPU only
    work = Path(workdir or tempfile.mkdtemp(prefix="storm-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cells = []
    for name in configs:
        projector, settings = CONFIGS[name]
        config = preset_config(preset, projector)
        for n in frames:
            chosen = settings_for_budget(token_budget, n, config.token_grid) if token_budget else settings
            fl = stage_flops(config, n, chosen)
            cell = BenchCell(
                config=name if not token_budget else f"{name}@budget{token_budget}",
                frames=n,
                visual_tokens=num_visual_tokens(n, config.token_grid, chosen),
                settings=str(chosen),
                flops={
                    "vision": fl.vision,
                    "projector": fl.projector,
                    "temporal": fl.temporal,
                    "llm_prefill": fl.llm_prefill,
                    "llm_token": fl.llm_token,
                },
                kv_cache_mib=kv_cache_bytes(config, num_visual_tokens(n, config.token_grid, chosen) + 64) / 2**20,
                activation_mib=activation_bytes(config, n) / 2**20,
            )
            if measure:
                video = work / f"clip-{n}-{config.vision_config.image_size}.mp4"
                if not video.exists():
                    _make_video(video, n, config.vision_config.image_size)
                k, p, s = chosen.temporal_pool, chosen.spatial_pool, chosen.temporal_sampling
                spec = {"preset": preset, "projector": projector, "settings": [k, p, s], "frames": n,
                        "video": str(video), "model_dir": model_dir, "device": device, "fast": fast,
                        "new_tokens": new_tokens, "repeat": repeat}  # fmt: skip
                payload = json.dumps(spec)
                log(f"measuring {cell.config} at {n} frames ...")
                proc = subprocess.run(
                    [sys.executable, "-m", "storm_vlm.bench", payload], capture_output=True, text=True, timeout=3600
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"bench cell {name}/{n} failed: {proc.stderr.strip().splitlines()[-1:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                for key in ("latency_s", "ttft_s", "end_to_end_s", "decode_tokens_per_s", "peak_rss_mib",
                            "peak_gpu_mib", "compile_s", "device", "fast_path", "runs"):  # fmt: skip
                    setattr(cell, key, result[key])
                if result["visual_tokens"] != cell.visual_tokens:
                    raise RuntimeError(
                        f"{name}/{n}: measured {result['visual_tokens']} visual tokens, formula {cell.visual_tokens}"
                    )
            cells.append(cell)
    return cells


def cells_to_json(cells: list[BenchCell]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cells]
