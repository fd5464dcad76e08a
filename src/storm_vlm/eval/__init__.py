"""Evaluation: the paper's four benchmarks and custom multiple-choice sets, frame sweeps.

    storm-vlm eval runs/storm-7b --benchmark mvbench --data-root /data/MVBench --frames 16,32,64

See ``docs/benchmarks.md`` for each benchmark's local layout. With ``--mamba-usage``
(``scan_cut=True``) every question is also scored with the temporal scan cut at frame boundaries,
and the results report both accuracies and how many answers the cut changes (:func:`mamba_usage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..model_dir import model_fingerprint
from .benchmarks import BENCHMARKS, load_benchmark
from .items import MCItem, parse_letter
from .runner import EvalSettings, evaluate, mamba_usage
from .sweep import plot_lines, sweep_table

__all__ = [
    "BENCHMARKS",
    "EvalSettings",
    "MCItem",
    "evaluate",
    "load_benchmark",
    "mamba_usage",
    "parse_letter",
    "run_benchmark",
]


def run_benchmark(
    model_dir: str | Path,
    benchmark: str,
    data_root: str | Path,
    frames: list[int],
    temporal_pool: int | None = None,
    spatial_pool: int | None = None,
    temporal_sampling: int | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    scoring: str = "generate",
    tasks: list[str] | None = None,
    device: str | None = None,
    console: Console | None = None,
    token_budget: int | None = None,
    fast: bool | None = None,
    scan_cut: bool = False,
    subtitles: str | Path | None = None,
    batch_size: int = 1,
) -> dict[int, dict[str, Any]]:
    """Evaluate a model directory on a benchmark at one or more frame counts.

    Writes ``OUT/frames-N/{predictions*.jsonl,results.json,summary.md}`` per frame count and, for a
    sweep, ``OUT/sweep.md`` and ``OUT/sweep.png`` (accuracy vs frames). Returns results per N.
    With ``token_budget``, each frame count gets the least compression that fits the budget.
    With ``scan_cut``, every question is scored twice, normally and under ``model.scan_cut()``, and
    each ``results.json`` gets a ``mamba_usage`` section (not applicable to the ``mlp`` baseline).
    ``subtitles``: the subtitle folder of a ``*_w_subtitle`` benchmark, when not the default.
    ``batch_size``: questions per generate call (greedy answers equal one at a time: tested).
    """
    import torch

    from ..inference import load_model

    console = console or Console()
    if scoring not in ("generate", "loglik"):
        raise ValueError(f"scoring must be generate or loglik, got {scoring!r}")
    bench, items, problems = load_benchmark(benchmark, data_root, subtitles)
    if tasks:
        unknown = sorted(set(tasks) - {it.task for it in items})
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)} in {benchmark}")
        items = [it for it in items if it.task in tasks]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model(model_dir, device=device, fast=fast)
    reduction = model.reduction_settings(temporal_pool, spatial_pool, temporal_sampling)
    fingerprint = model_fingerprint(model_dir)
    if out is None:  # one folder per model and settings: two `.../final` models never share one
        r = reduction
        tag = (
            f"budget{token_budget}"
            if token_budget is not None
            else f"k{r.temporal_pool}p{r.spatial_pool}s{r.temporal_sampling}"
        )
        out = Path("outputs") / "eval" / f"{benchmark}-{Path(model_dir).name}-{fingerprint[:8]}-{tag}-{scoring}"
    out = Path(out)
    if problems:
        console.print(
            f"[yellow]{len(problems)} malformed {benchmark} entr(ies) skipped[/yellow] (listed in summary.md)"
        )
    config = {"benchmark": benchmark, "model": str(model_dir), "model_fingerprint": fingerprint,
              "data_root": str(Path(data_root).resolve()), "tasks": tasks, "token_budget": token_budget,
              "headline": bench.headline}  # fmt: skip
    if subtitles is not None:  # only then: the identity of runs without it stays as it was
        config["subtitles"] = str(Path(subtitles).resolve())
    results: dict[int, dict[str, Any]] = {}
    if token_budget is not None and any(v is not None for v in (temporal_pool, spatial_pool, temporal_sampling)):
        raise ValueError("give --token-budget or explicit --temporal-pool / --spatial-pool / --sample, not both")
    for n in frames:
        if token_budget is not None:
            reduction = model.settings_for_budget(token_budget, n)
            console.print(f"{n} frames, budget {token_budget} visual tokens → {reduction}")
        settings = EvalSettings(
            num_frames=n, reduction=reduction, scoring=scoring, limit=limit, scan_cut=scan_cut, batch_size=batch_size
        )
        res = evaluate(model, processor, items, bench.prompt, settings, out / f"frames-{n}", config, problems, console)
        if res is not None:
            results[n] = res
            if res["frames_short"]["items"]:
                console.print(
                    f"[yellow]{res['frames_short']['items']} question(s) have fewer than {n} frames[/yellow] "
                    f"(as few as {res['frames_short']['min_frames']}): the {n}-frame result does not measure {n} "
                    "frames for them"
                )
            headline = f"M-Avg {_pct(res['task_mean'])}, " if bench.headline == "task_mean" else ""
            console.print(
                f"{benchmark} {n} frames: {headline}accuracy {_pct(res['overall']['accuracy'])} "
                f"({res['overall']['answered']} answered, {res['overall']['errors']} errors){_usage_line(res)} "
                f"→ {out / f'frames-{n}'}"
            )
    if len(frames) > 1 and results:
        label = f"{Path(model_dir).name} " + (f"budget {token_budget}" if token_budget else str(reduction))
        points = {label: [(n, r["overall"]["accuracy"], r["mean_visual_tokens"]) for n, r in sorted(results.items())]}
        (out / "sweep.md").write_text(f"# {benchmark}: accuracy vs input frames\n\n" + sweep_table(points))
        plot_lines(
            {label: [(n, 100 * a) for n, a, _ in pts if a is not None] for label, pts in points.items()},
            out / "sweep.png",
            xlabel="input frames",
            title=f"{benchmark}: accuracy vs frames",
        )
        console.print(f"sweep table and plot: {out / 'sweep.md'}, {out / 'sweep.png'}")
    return results


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _usage_line(results: dict[str, Any]) -> str:
    """The Mamba-usage part of the console line for one frame count ("" without the diagnostic)."""
    usage = results.get("mamba_usage")
    if usage is None:
        return ""
    if not usage["applies"]:
        return "; Mamba usage: not applicable (no temporal module)"
    u = usage["overall"]
    return (
        f"; scan cut: accuracy {_pct(u['accuracy_cut'])}, answers changed {_pct(u['changed_fraction'])} "
        f"({u['changed']}/{u['answered']})"
    )
