"""The bench's outputs: a Markdown table, JSON, and plots."""

from __future__ import annotations

import json
from pathlib import Path

from ..eval.sweep import plot_lines
from . import STAGES, BenchCell, cells_to_json

__all__ = ["write_report"]


def _runs(cells: list) -> str:
    counts = sorted({c.runs for c in cells})
    if counts == [1]:
        return "one timed run per cell"
    return f"stage medians of {'/'.join(map(str, counts))} timed runs per cell"


def _fmt(x: float | None, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    return "—" if x is None else f"{x * scale:.{digits}f}{unit}"


def markdown_table(cells: list[BenchCell], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| config | frames | settings | visual tokens | GFLOPs vision / proj+Mamba / LLM prefill | "
        "decode s | vision s | Mamba+reduce s | prefill s | TTFT s | end-to-end s | decode tok/s | peak RSS MiB | "
        "peak GPU MiB | KV cache MiB | activations MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        f = c.flops
        lat = c.latency_s or {}
        lines.append(
            f"| {c.config} | {c.frames} | {c.settings} | {c.visual_tokens} | "
            f"{f['vision'] / 1e9:.1f} / {(f['projector'] + f['temporal']) / 1e9:.1f} / {f['llm_prefill'] / 1e9:.1f} | "
            f"{_fmt(lat.get('decode'))} | {_fmt(lat.get('vision'))} | {_fmt(lat.get('temporal'))} | "
            f"{_fmt(lat.get('prefill'))} | {_fmt(c.ttft_s)} | {_fmt(c.end_to_end_s)} | "
            f"{_fmt(c.decode_tokens_per_s, digits=1)} | {_fmt(c.peak_rss_mib, digits=0)} | "
            f"{_fmt(c.peak_gpu_mib, digits=0)} | {_fmt(c.kv_cache_mib, digits=1)} | "
            f"{_fmt(c.activation_mib, digits=0)} |"
        )
    measured = [c for c in cells if c.latency_s]
    if measured:
        fast = {c.fast_path for c in measured}
        lines += [
            "",
            f"Measured on {', '.join(sorted({str(c.device) for c in measured}))}; "
            f"fast path {'on' if fast == {True} else 'off' if fast == {False} else 'mixed'}; "
            f"{_runs(measured)}. "
            "TTFT includes decoding the video file; end-to-end is frames in memory → answer "
            "(vision + Mamba/reduction + prefill + decoding).",
        ]
        compiled = [c.compile_s for c in measured if c.compile_s is not None]
        if compiled:
            lines.append(f"First (compiling) run per cell, not timed above: {min(compiled):.0f}-{max(compiled):.0f} s.")
    return "\n".join(lines) + "\n"


def ratios(cells: list[BenchCell]) -> list[str]:
    """The paper's headline comparisons, from the measured cells."""
    by = {(c.config, c.frames): c for c in cells}
    out = []
    for n in sorted({c.frames for c in cells}):
        none, k4s2 = by.get(("none", n)), by.get(("k4s2", n))
        if none and k4s2 and none.ttft_s and k4s2.ttft_s:
            out.append(f"{n} frames: end-to-end (to first token) none / k4s2 = {none.ttft_s / k4s2.ttft_s:.2f}x")
        if none and k4s2 and none.end_to_end_s and k4s2.end_to_end_s:
            out.append(
                f"{n} frames: end to end (frames → answer) none {none.end_to_end_s:.3f} s, "
                f"k4s2 {k4s2.end_to_end_s:.3f} s: {none.end_to_end_s / k4s2.end_to_end_s:.2f}x"
            )
        if none and none.latency_s and none.ttft_s is not None:  # measured: both are set
            total = none.ttft_s + none.latency_s["decoding"]
            share = none.latency_s["temporal"] / total
            llm = (none.latency_s["prefill"] + none.latency_s["decoding"]) / total
            out.append(
                f"{n} frames, none: Mamba module {100 * share:.1f}% of end-to-end latency "
                f"(LLM {100 * llm:.0f}%, vision {100 * none.latency_s['vision'] / total:.0f}%)"
            )
    return out


def write_report(cells: list[BenchCell], out: str | Path, title: str, plot_title: str | None = None) -> list[str]:
    """bench.md (table + headline ratios), bench.json and three plots; returns the ratio lines."""
    out = Path(out)
    short = plot_title or title
    out.mkdir(parents=True, exist_ok=True)
    notes = ratios(cells)
    (out / "bench.md").write_text(markdown_table(cells, title) + "\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    (out / "bench.json").write_text(json.dumps(cells_to_json(cells), indent=1))
    configs = list(dict.fromkeys(c.config for c in cells))
    plot_lines(
        {cfg: [(c.frames, c.visual_tokens) for c in cells if c.config == cfg] for cfg in configs},
        out / "tokens_vs_frames.png", xlabel="input frames", ylabel="visual tokens to the LLM", title=short,
    )  # fmt: skip
    if any(c.latency_s for c in cells):
        plot_lines(
            {cfg: [(c.frames, c.ttft_s + c.latency_s["decoding"]) for c in cells
                   if c.config == cfg and c.latency_s and c.ttft_s is not None]
             for cfg in configs},
            out / "latency_vs_frames.png", xlabel="input frames", ylabel="end-to-end latency (s)", title=short,
        )  # fmt: skip
        _stacked(cells, out / "stages.png", short)
    return notes


def _stacked(cells: list[BenchCell], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [(c, c.latency_s) for c in cells if c.latency_s]
    fig, ax = plt.subplots(figsize=(max(6, len(measured) * 0.8), 4), dpi=120)
    labels = [f"{c.config}\n{c.frames}f" for c, _ in measured]
    bottom = [0.0] * len(measured)
    for stage in STAGES:
        values = [latency[stage] for _, latency in measured]
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
