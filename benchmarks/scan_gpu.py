"""Selective-scan speed and memory on a CUDA GPU: PyTorch loop vs mamba_ssm vs Triton, one run.

Run:  python benchmarks/scan_gpu.py [--dim 7168] [--state 16] [--lengths 8192,32768] [--reps 5]
                                   [--dtype float32|bfloat16] [--no-backward]

The mixer's call (softplus Δ with bias, D skip, SiLU(z) gate), batch 1, fp32 inputs (or bf16 u, Δ,
B, C, z as the model runs on a GPU; A, D and the Δ bias stay fp32), at the
paper's width (Qwen2-7B: d_model 3584 → d_inner 7168). Rows:
  torch-loop  storm-vlm's reference (`selective_scan_ref`): what a GPU without kernels runs
  mamba_ssm   `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`, if installed
  triton      storm-vlm's Triton kernel (`selective_scan_triton`)
Time: median of --reps runs after a warm-up (1 run for the loop); peak: torch.cuda peak allocated
memory above the inputs. "err": max abs difference of the output against an fp64 reference on
the first 64 channels. Targets: triton >= 20x faster than the loop at the longest L, peak memory
O(L x d_inner), within 2x of mamba_ssm where both run.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from storm_vlm.modeling.mamba import selective_scan_ref
from storm_vlm.modeling.scan_triton import selective_scan_triton


def mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # not installed, or built for another torch
        return None, f"{type(err).__name__}: {err}".splitlines()[0][:80]
    return selective_scan_fn, ""


def inputs(length: int, dim: int, state: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", generator=g)
    u = torch.randn(1, dim, length, **kw)
    delta = torch.randn(1, dim, length, **kw) * 0.5 - 2.0
    A = -torch.rand(dim, state, **kw) * 4 - 0.5
    B = torch.randn(1, state, length, **kw)
    C = torch.randn(1, state, length, **kw)
    D = torch.randn(dim, **kw)
    z = torch.randn(1, dim, length, **kw)
    bias = torch.randn(dim, **kw) * 0.1
    u, delta, B, C, z = (t.to(dtype) for t in (u, delta, B, C, z))
    return u, delta, A, B, C, D, z, bias


def call(fn, x, grad: bool):
    leaves = [t.detach().clone().requires_grad_(grad) for t in x]
    u, delta, A, B, C, D, z, bias = leaves
    out = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
    if grad:
        out.sum().backward()
    return out


def measure(fn, x, grad: bool, reps: int) -> tuple[float, float, torch.Tensor]:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    out = None
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.set_grad_enabled(grad):
            out = call(fn, x, grad)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
        if grad:
            out = out.detach()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return statistics.median(times), peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=7168)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loop-bwd-max", type=int, default=32768, help="skip the loop's fwd+bwd above this L")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ssm, why = mamba_ssm_fn()
    impls = {"torch-loop": selective_scan_ref, "triton": selective_scan_triton}
    if ssm is not None:
        impls["mamba_ssm"] = ssm
    print(f"{torch.cuda.get_device_name()}; batch 1, d_inner {args.dim}, d_state {args.state}, {args.dtype} inputs")
    if ssm is None:
        print(f"mamba_ssm: not measured ({why})")
    print(f"\n{'L':>6} {'mode':<8} {'impl':<11} {'time':>10} {'peak GiB':>9} {'err':>9}")
    results = {}
    for length in [int(v) for v in args.lengths.split(",")]:
        x = inputs(length, args.dim, args.state, dtype)
        u, delta, A, B, C, D, z, bias = (t.double() for t in x)
        ref = selective_scan_ref(u[:, :64], delta[:, :64], A[:64], B, C, D=D[:64], z=z[:, :64],
                                 delta_bias=bias[:64], delta_softplus=True)  # fmt: skip
        del u, delta, A, B, C, D, z, bias
        for name, fn in impls.items():
            for grad in (False,) if args.no_backward else (False, True):
                mode = "fwd+bwd" if grad else "fwd"
                if name == "torch-loop" and grad and length > args.loop_bwd_max:
                    print(f"{length:>6} {mode:<8} {name:<11} {'skipped':>10}")
                    continue
                reps = 1 if name == "torch-loop" else args.reps
                try:
                    if name != "torch-loop":
                        call(fn, x, grad)  # warm-up: Triton compiles here
                    seconds, peak, out = measure(fn, x, grad, reps)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    print(f"{length:>6} {mode:<8} {name:<11} {'OOM':>10}")
                    continue
                err = float((out[:, :64].double() - ref).abs().max()) if not grad else float("nan")
                results[(length, mode, name)] = seconds
                print(f"{length:>6} {mode:<8} {name:<11} {seconds * 1000:8.2f}ms {peak:9.2f} {err:9.1e}", flush=True)
                del out
                torch.cuda.empty_cache()
    longest = max(int(v) for v in args.lengths.split(","))
    print()
    for mode in ("fwd", "fwd+bwd"):
        loop, tri, ms = (results.get((longest, mode, n)) for n in ("torch-loop", "triton", "mamba_ssm"))
        if loop and tri:
            r = loop / tri
            verdict = "met" if r >= 20 else "NOT met"
            print(f"L={longest} {mode}: triton {r:.1f}x faster than the loop (target >= 20x: {verdict})")
        if ms and tri:
            r = tri / ms
            verdict = "met" if r <= 2 else "NOT met"
            print(f"L={longest} {mode}: triton / mamba_ssm time = {r:.2f} (target <= 2: {verdict})")


if __name__ == "__main__":
    main()
