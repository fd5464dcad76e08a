"""Selective-scan speed and memory on CPU: every implementation side by side, in one run.

Run:  .venv/bin/python benchmarks/scan.py [--lengths 1024,4096,16384] [--dim 512] [--state 16]

Rows (batch 1, d_inner = --dim, d_state = --state, fp32, the mixer's call: softplus Δ with bias,
D skip, SiLU(z) gate):
  transformers  `transformers.models.mamba.modeling_mamba.mamba_selective_scan`, the scan that
                transformers' MambaMixer runs when the CUDA kernels are missing (its slow path)
  mambapy       the same with mambapy's parallel pscan (`use_mambapy=True`), if mambapy is installed
  ours-torch    storm-vlm's pure-PyTorch reference (`selective_scan_ref`, unbind loop)
  baseline      the numba kernel before issue 21 (benchmarks/scan_cpu_baseline.py: a thread per channel,
                SIMD over d_state), measured side by side so the speed-up is a ratio from one run
  ours-fast     storm-vlm's fused numba kernel (`selective_scan_cpu`: SIMD over 16 channels), what the
                model uses on CPU

Each measurement runs in a fresh process so that its peak memory (max RSS above the process's RSS
once the inputs exist) is its own; after a warm-up call on a short input (numba compiles, caches
fill) it times ``--repeat`` calls; each cell takes ``--rounds`` such processes per implementation,
in turn, and reports the median wall time of all their calls, and the median CPU time (all
threads, ``time.process_time``), the targets' second ratio. One call alone is at the
mercy of whatever else the machine runs, and its first full-size call pays page faults that the
model's repeated calls do not. "err" is the max abs difference of the output against an fp64
reference. Runs predicted to take minutes are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

IMPLS = ("transformers", "mambapy", "ours-torch", "baseline", "ours-fast")
# Skip rules, from measurements on 2 cores: transformers' loop indexes x[:, t], so its backward is
# quadratic in L (~19 s at L=1024); the unbind reference keeps one autograd node per step.
SKIP = {
    ("transformers", "fwd+bwd"): lambda L: L > 1024,
    ("ours-torch", "fwd+bwd"): lambda L: L > 16384,
}


def _inputs(length: int, dim: int, state: int, dtype):
    import torch

    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, dim, length, generator=g)
    delta = torch.randn(1, dim, length, generator=g) * 0.5 - 2.0
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1) * torch.rand(dim, 1, generator=g).add(0.5)
    B = torch.randn(1, state, length, generator=g)
    C = torch.randn(1, state, length, generator=g)
    D = torch.randn(dim, generator=g)
    z = torch.randn(1, dim, length, generator=g)
    bias = torch.randn(dim, generator=g) * 0.1
    return [t.to(dtype) for t in (u, delta, A, B, C, D, z, bias)]


def _scan_fn(impl: str):
    if impl == "transformers":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        return mamba_selective_scan
    if impl == "mambapy":
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan

        return lambda *a, **k: mamba_selective_scan(*a, use_mambapy=True, **k)
    if impl == "ours-torch":
        from storm_vlm.modeling.mamba import selective_scan_ref

        return selective_scan_ref
    if impl == "baseline":
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from scan_cpu_baseline import selective_scan_cpu as baseline

        return baseline
    from storm_vlm.modeling.scan_cpu import selective_scan_cpu

    return selective_scan_cpu


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _worker(impl: str, mode: str, length: int, dim: int, state: int, repeat: int, queue) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    fn = _scan_fn(impl)
    inputs = _inputs(length, dim, state, torch.float32)
    warm = [t[..., :64].contiguous() if t.dim() == 3 else t for t in inputs]  # the layout timed below
    fn(*warm[:5], D=warm[5], z=warm[6], delta_bias=warm[7], delta_softplus=True)  # compile / caches
    leaves = [t.clone().requires_grad_(mode == "fwd+bwd") for t in inputs]
    base = _current_rss_mib()
    walls, cpus = [], []
    out = None
    for _ in range(repeat):
        out = None  # one call's memory at a time
        for leaf in leaves:
            leaf.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            out = fn(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7], delta_softplus=True)
            if mode == "fwd+bwd":
                out.sum().backward()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)  # every thread of this process
    peak = _rss_mib() - base
    err = None
    if mode == "fwd":
        from storm_vlm.modeling.mamba import selective_scan_ref

        ref = selective_scan_ref(*[t.double() for t in inputs[:5]], D=inputs[5].double(), z=inputs[6].double(),
                                 delta_bias=inputs[7].double(), delta_softplus=True)  # fmt: skip
        err = float((out.double() - ref).abs().max())
    queue.put({"walls": walls, "cpus": cpus, "peak_mib": max(peak, 0.0), "err": err})


def measure(impl: str, mode: str, length: int, dim: int, state: int, repeat: int = 1) -> dict | str:
    if impl == "mambapy":
        try:
            import mambapy  # noqa: F401
        except ImportError:
            return "not installed"
    if SKIP.get((impl, mode), lambda L: False)(length):
        return "skipped (minutes)"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(impl, mode, length, dim, state, repeat, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return f"failed (exit {proc.exitcode})"
    return queue.get()


def measure_row(
    impls: list[str], mode: str, length: int, dim: int, state: int, repeat: int, rounds: int
) -> dict[str, dict | str]:
    """Every implementation's cell: ``rounds`` processes each, taken in turn (a, b, a, b, ...) so
    that a slow spell of the machine falls on all of them; medians over all calls."""
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    row: dict[str, dict | str] = {}
    for _ in range(rounds):
        for impl in impls:
            if impl in row:  # not installed, skipped or failed: said once
                continue
            r = measure(impl, mode, length, dim, state, repeat)
            if isinstance(r, str):
                row[impl] = r
            else:
                runs[impl].append(r)
    for impl, done in runs.items():
        if impl not in row:
            walls = [w for r in done for w in r["walls"]]
            row[impl] = {
                "seconds": statistics.median(walls),
                "cpu_seconds": statistics.median([c for r in done for c in r["cpus"]]),
                "walls": walls,
                "peak_mib": max(r["peak_mib"] for r in done),
                "err": done[0]["err"],
            }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ", ".join(IMPLS))
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per process (the median is reported)")
    parser.add_argument("--rounds", type=int, default=3, help="processes per cell, alternating implementations")
    args = parser.parse_args()
    if not (1 <= args.repeat <= 100 and 1 <= args.rounds <= 100):
        parser.error("--repeat and --rounds must be 1 to 100")
    lengths = [int(x) for x in args.lengths.split(",")]
    impls = [i for i in IMPLS if i in args.impls.split(",")]
    results: dict[str, dict] = {}
    print(
        f"batch 1, d_inner {args.dim}, d_state {args.state}, fp32; median wall time in s of {args.rounds} x "
        f"{args.repeat} calls, peak = extra RSS in MiB\n"
    )
    print(f"{'L':>6} {'mode':<8} " + " ".join(f"{i:>28}" for i in impls))
    for length in lengths:
        for mode in ("fwd", "fwd+bwd"):
            row = measure_row(impls, mode, length, args.dim, args.state, args.repeat, args.rounds)
            results[f"{length}/{mode}"] = row
            cells = []
            for impl in impls:
                r = row[impl]
                if isinstance(r, str):
                    cells.append(f"{r:>28}")
                else:
                    err = f" err {r['err']:.1e}" if r["err"] is not None else ""
                    cells.append(f"{r['seconds']:7.3f}s {r['peak_mib']:6.0f}MiB{err:>12}")
            print(f"{length:>6} {mode:<8} " + " ".join(cells), flush=True)

    def t(length: int, mode: str, impl: str, key: str = "seconds") -> float | None:
        r = results.get(f"{length}/{mode}", {}).get(impl)
        return r[key] if isinstance(r, dict) else None

    print("\nTargets (ours-fast):")
    big = max(lengths)
    for label, length, mode, baseline_impls, factor in (
        (f"fwd at L={big} vs transformers", big, "fwd", ["transformers"], 10),
        ("fwd+bwd at L=1024 vs transformers", 1024, "fwd+bwd", ["transformers"], 10),
        (f"fwd+bwd at L={big} vs best pure-PyTorch scan", big, "fwd+bwd", ["mambapy", "ours-torch"], 5),
        (f"fwd at L={big} vs the pre-issue-21 kernel (baseline)", big, "fwd", ["baseline"], 3),
        (f"fwd+bwd at L={big} vs the pre-issue-21 kernel (baseline)", big, "fwd+bwd", ["baseline"], 3),
    ):
        ours = t(length, mode, "ours-fast")
        bases = [b for b in (t(length, mode, i) for i in baseline_impls) if b is not None]
        if ours is None or not bases:
            print(f"  {label}: not measured")
            continue
        ratio = min(bases) / ours
        ours_cpu = t(length, mode, "ours-fast", "cpu_seconds")
        cpu_bases = [b for b in (t(length, mode, i, "cpu_seconds") for i in baseline_impls) if b is not None]
        cpu = f"; CPU time {min(cpu_bases) / ours_cpu:.1f}x" if ours_cpu and cpu_bases else ""
        verdict = "met" if ratio >= factor else "NOT met"
        print(f"  {label}: {ratio:.1f}x wall clock (target >= {factor}x: {verdict}){cpu}")
    fwd = t(big, "fwd", "ours-fast")
    if fwd is not None:
        rate = big * args.dim * args.state / fwd / 1e9
        print(f"  fwd at L={big}: {rate:.2f} G state updates/s (ours-fast, wall clock, all threads)")
    fast_big = results.get(f"{big}/fwd+bwd", {}).get("ours-fast")
    if isinstance(fast_big, dict):
        verdict = "met" if fast_big["peak_mib"] < 1024 else "NOT met"
        print(f"  peak memory fwd+bwd at L={big}: {fast_big['peak_mib']:.0f} MiB (target < 1024: {verdict})")
    fast_rows = [row.get("ours-fast") for row in results.values()]
    errs = [r["err"] for r in fast_rows if isinstance(r, dict) and r["err"] is not None]
    if errs:
        verdict = "met" if max(errs) <= 1e-4 else "NOT met"
        print(f"  max abs difference vs fp64: {max(errs):.1e} (target <= 1e-4: {verdict})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
