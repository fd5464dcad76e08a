"""Where the fast path's time goes on a CUDA GPU (the pieces behind docs/bench/gpu-h200.md).

Run:  python benchmarks/fast_path_gpu.py [--skip decode,temporal,vision]

1. decode: on a small fp32 random model, the CUDA-graph greedy loop against transformers'
   ``generate`` (tokens must be equal: free running, stopped by a stop token, forced length),
   and the time of 32 tokens each way (the small model makes the loop's host time visible).
2. temporal: the Mamba module at the paper's shapes (128 frames x 256 tokens, D 3584, two
   bidirectional blocks, bf16) with the Triton and the mamba_ssm scan, a kernel profile, and
   PyTorch's depthwise conv against a shifted-sum conv (eager and compiled).
3. vision: one 32-frame chunk through 26 SigLIP-So400m-448 layers, eager and compiled, profiled.
The end-to-end numbers come from ``storm-vlm bench --preset 7b-shapes`` (see the doc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def timeit(fn, reps: int = 5) -> float:
    """Median milliseconds of ``fn`` after one warm-up call."""
    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_table(fn, rows: int = 12) -> str:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def decode() -> None:
    from storm_vlm.modeling.fast_path import enable_fast_path
    from storm_vlm.modeling.modeling_storm import StormForConditionalGeneration
    from storm_vlm.presets import small_model_config, spread_llm_weights

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = StormForConditionalGeneration(small_model_config()).eval()
        spread_llm_weights(model, 0.1)  # varied tokens
    embeds = torch.randn(1, 300, model.config.hidden_size, device="cuda")

    def gen(**kw):
        with torch.inference_mode():
            return model.generate(inputs_embeds=embeds, do_sample=False, pad_token_id=0, **kw)

    stop = int(gen(max_new_tokens=32, eos_token_id=[])[0, 10])
    cases = [
        dict(max_new_tokens=32, eos_token_id=[]),
        dict(max_new_tokens=32, eos_token_id=[stop]),
        dict(max_new_tokens=32, min_new_tokens=32, eos_token_id=[stop]),
    ]
    want = [gen(**kw) for kw in cases]
    enable_fast_path(model)
    started = time.perf_counter()
    got = [gen(**kw) for kw in cases]
    print(f"decode: first fast calls (compiling) {time.perf_counter() - started:.1f} s")
    for kw, a, b in zip(cases, want, got):
        print(f"  {'equal' if torch.equal(a, b) else 'DIFFERENT'} to generate: {kw} ({b.shape[1]} tokens)")

    def timed() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        gen(**cases[0])
        torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    def per_token() -> float:  # (64 tokens - 1 token) / 63: the prefill cancels out
        times = []
        for n in (64, 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            gen(max_new_tokens=n, min_new_tokens=n)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return (times[0] - times[1]) / 63 * 1000

    fast, fast_step = min(timed() for _ in range(3)), min(per_token() for _ in range(3))
    model.fast_path = None
    plain, plain_step = min(timed() for _ in range(3)), min(per_token() for _ in range(3))
    print(f"decode: 32 tokens, small fp32 model: generate {plain:.1f} ms, fast loop {fast:.1f} ms; "
          f"per token {plain_step:.2f} vs {fast_step:.2f} ms (mostly host time at this size)")  # fmt: skip


def temporal() -> None:
    from storm_vlm.modeling import mamba
    from storm_vlm.modeling.temporal import TemporalEncoder
    from storm_vlm.presets import temporal_config

    torch.manual_seed(0)
    encoder = TemporalEncoder(temporal_config(3584, temporal_layers=2)).cuda().to(torch.bfloat16).eval()
    tokens = torch.randn(1, 128, 256, 3584, device="cuda", dtype=torch.bfloat16)
    for backend in ("triton", "mamba_ssm"):
        os.environ["STORM_SCAN_BACKEND"] = backend
        try:
            print(f"temporal: eager, scan={backend}: {timeit(lambda: encoder(tokens)):.1f} ms")
        except Exception as err:  # mamba_ssm not installed
            print(f"temporal: scan={backend} unavailable ({type(err).__name__})")
    os.environ["STORM_SCAN_BACKEND"] = "triton"
    print(kernel_table(lambda: encoder(tokens)))
    del os.environ["STORM_SCAN_BACKEND"]
    E, L = 7168, 32768
    u = torch.randn(1, E, L, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(E, 4, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(E, device="cuda", dtype=torch.bfloat16)

    def shifted() -> torch.Tensor:
        padded = F.pad(u, (3, 0))
        y = bias[:, None] + w[:, 3:4] * u
        for k in range(3):
            y = y + w[:, k : k + 1] * padded[..., k : k + L]
        return F.silu(y)

    diff = float((shifted().float() - mamba.causal_conv1d(u, w, bias).float()).abs().max())
    print(
        f"conv (1, {E}, {L}) bf16: conv1d+SiLU {timeit(lambda: mamba.causal_conv1d(u, w, bias)):.2f} ms; "
        f"shifted sum eager {timeit(shifted):.2f} ms, compiled {timeit(torch.compile(shifted)):.2f} ms "
        f"(max diff {diff:.3f}, bf16 rounding)"
    )


def vision() -> None:
    from transformers import SiglipVisionModel

    from storm_vlm.configuration_storm import StormConfig

    config = StormConfig()
    tower = SiglipVisionModel(config.vision_config).cuda().to(torch.bfloat16).eval()
    pixels = torch.randn(32, 3, 448, 448, device="cuda", dtype=torch.bfloat16)

    def run() -> torch.Tensor:
        hidden = tower.embeddings(pixels)
        for block in tower.encoder.layers[: config.vision_layers_run]:
            hidden = block(hidden, None)
        return hidden

    print(f"vision: attention {tower.config._attn_implementation}; 32 frames, {config.vision_layers_run} layers: "
          f"eager {timeit(run):.1f} ms, compiled {timeit(torch.compile(run)):.1f} ms")  # fmt: skip
    print(kernel_table(run, rows=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: decode, temporal, vision")
    skip = set(parser.parse_args().skip.split(","))
    print(torch.cuda.get_device_name())
    for name, part in (("decode", decode), ("temporal", temporal), ("vision", vision)):
        if name not in skip:
            part()


if __name__ == "__main__":
    main()
