"""The Mamba module on CPU, inference: the fused path against the general one, side by side, and
how much of it is GEMMs.

Run:  .venv/bin/python benchmarks/mixer.py [--frames 128] [--preset small] [--repeat 5]

The temporal module of the preset (random weights, fp32, ``inference_mode``) on ``--frames`` x
tokens-per-frame tokens, as ``storm-vlm bench`` runs it: the fused path (what the model runs)
and the general path (``MambaMixer.fused_cpu = False``: mkldnn's depthwise conv, SiLU, flipped
copies for the backward branch, the scan's autograd entry, the mean), alternating call by call so
that the machine's slow spells fall on both; the median of ``--repeat`` calls each. Then the
module's GEMMs alone (in_proj, out_proj, and per direction x_proj and dt_proj, at the module's
shapes and layouts, every layer), twice: through oneDNN as the fused path runs them, and through
torch's mm (MKL) as the general path does. That is the floor no scan or conv work can go below,
and the rate it runs at. The process keeps freed memory mapped, as ``storm-vlm`` does
(``STORM_MALLOC=system`` for glibc's defaults; benchmarks/heap.py compares the two).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from storm_vlm.heap import keep_freed_memory
from storm_vlm.modeling import onednn
from storm_vlm.modeling.mamba import MambaMixer
from storm_vlm.modeling.temporal import TemporalEncoder
from storm_vlm.presets import preset_config


def _median_interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "7b-shapes"])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not (1 <= args.frames <= 1024 and 1 <= args.repeat <= 100):
        parser.error("--frames must be 1 to 1024 and --repeat 1 to 100")
    kept = keep_freed_memory()  # as the `storm-vlm` command does
    torch.manual_seed(0)
    config = preset_config(args.preset)
    encoder = TemporalEncoder(config).eval()
    mixers = [m for m in encoder.modules() if isinstance(m, MambaMixer)]
    rows, cols = config.token_grid
    tokens = torch.randn(1, args.frames, rows * cols, config.hidden_size)
    length, d, e = args.frames * rows * cols, config.hidden_size, config.expand * config.hidden_size
    r, n = config.dt_rank, config.d_state
    directions = 2 if config.bidirectional else 1

    def run(fused: bool) -> torch.Tensor:
        for m in mixers:
            m.fused_cpu = fused
        return encoder(tokens)

    w_in, h = torch.randn(2 * e, d), torch.randn(length, d)
    w_out, y = torch.randn(d, e), torch.randn(1, e, length)
    w_x, w_dt, u = torch.randn(r + 2 * n, e), torch.randn(e, r), torch.randn(1, e, length)

    def gemms_mkl() -> None:  # the general path's GEMMs: torch's fp32 mm (MKL)
        for _ in range(config.temporal_layers):
            w_in @ h.T  # in_proj into (2E, L)
            for _ in range(directions):
                proj = torch.nn.functional.linear(u.transpose(1, 2), w_x)  # x_proj
                torch.matmul(w_dt[None], proj[..., :r].transpose(1, 2))  # dt_proj
            torch.nn.functional.linear(y.transpose(1, 2), w_out)  # out_proj

    def gemms_onednn() -> None:  # the fused path's: in_proj, dt_proj and out_proj through oneDNN
        for _ in range(config.temporal_layers):
            onednn.matmul_nt(w_in, h)
            for _ in range(directions):
                proj = torch.nn.functional.linear(u.transpose(1, 2), w_x)
                onednn.batched_matmul_nt(w_dt, proj[..., :r])
            onednn.batched_matmul_nt(y.transpose(1, 2), w_out)

    with torch.inference_mode():
        fused_out, general_out = run(True), run(False)  # warm-up (numba compiles or loads its cache)
        diff = float((fused_out - general_out).abs().max())
        gemms_mkl()
        gemms_onednn()
        t = _median_interleaved(
            {"fused": lambda: run(True), "general": lambda: run(False), "mkl": gemms_mkl, "onednn": gemms_onednn},
            args.repeat,
        )
    gemm_flops = config.temporal_layers * (
        2 * length * d * 2 * e + 2 * length * e * d + directions * 2 * length * (e * (r + 2 * n) + r * e)
    )
    kind = "bidirectional" if directions == 2 else "unidirectional"
    print(f"{args.preset} preset, {args.frames} frames = {length} tokens, {config.temporal_layers} layers, {kind}, "
          f"d_inner {e}, d_state {n}; median of {args.repeat}")  # fmt: skip
    print(f"  general path  {t['general']:.3f} s")
    print(f"  fused path    {t['fused']:.3f} s   ({t['general'] / t['fused']:.2f}x; max abs difference {diff:.1e})")
    for key, label, path in (("onednn", "GEMMs, oneDNN", "fused"), ("mkl", "GEMMs, MKL  ", "general")):
        rate = gemm_flops / t[key] / 1e9
        print(f"  {label}  {t[key]:.3f} s   ({gemm_flops / 1e9:.1f} GFLOP at {rate:.0f} GFLOP/s; "
              f"{t[key] / t[path]:.0%} of the {path} path)")  # fmt: skip
    print(f"  malloc: {'freed memory kept (storm_vlm.heap)' if kept else 'glibc defaults (STORM_MALLOC=system)'}")


if __name__ == "__main__":
    main()
