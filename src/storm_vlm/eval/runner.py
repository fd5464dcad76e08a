"""Multiple-choice video QA evaluation: resumable, sharded over processes, per-item error reports.

For each question: sample the clip (uniform N frames, within the benchmark's start/end bounds),
build the benchmark's prompt, then either generate a short answer and parse its option letter
(``scoring="generate"``, what lmms-eval does) or compare the next-token log-likelihood of each
option letter (``scoring="loglik"``). Every prediction is appended to a per-process JSONL as soon
as it is made, so a rerun skips what is already answered. Under ``accelerate launch`` each process
takes every k-th question; the main process merges the shards (each question once) and writes
``results.json`` (every prediction, accuracy per task / duration group / overall, config, frames,
visual tokens, timings) and ``summary.md``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..inference import prepare_inputs
from ..modeling.modeling_storm import StormForConditionalGeneration
from ..modeling.reduction import ReductionSettings
from ..processing_storm import StormProcessor
from ..video import VideoError, sample_frames
from .items import LETTERS, MCItem, parse_letter

__all__ = ["EvalSettings", "evaluate", "summarize"]

PromptFn = Callable[[MCItem], str]


@dataclass
class EvalSettings:
    num_frames: int
    reduction: ReductionSettings
    scoring: str = "generate"  # or "loglik"
    max_new_tokens: int = 16
    limit: int | None = None


def _rank_world() -> tuple[int, int, Any]:
    """(rank, world size, PartialState or None): one process unless launched by accelerate."""
    try:
        from accelerate import PartialState

        # cpu=True on CPU-only machines: a torchrun / `accelerate launch --multi_gpu` start then
        # forms a gloo process group instead of running every process as rank 0
        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes, state
    except Exception:  # pragma: no cover - accelerate is a dependency
        return 0, 1, None


def _read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash: that question is simply redone
    return rows


def _predict(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    item: MCItem,
    prompt: str,
    settings: EvalSettings,
) -> dict[str, Any]:
    started = time.perf_counter()
    clip = sample_frames(
        item.video,
        num_frames=settings.num_frames,
        start=item.start,
        end=item.end,
        frame_fps=item.extra.get("frame_fps", 1.0),
    )
    decode_s = time.perf_counter() - started
    prepared = prepare_inputs(model, processor, clip, prompt, settings.reduction)
    letters = LETTERS[: len(item.options)]
    with torch.inference_mode():
        gen_start = time.perf_counter()
        if settings.scoring == "loglik":
            # option log-likelihood: log p(option text | prompt), summed over its tokens
            scores = []
            for option in item.options:
                ids = processor.tokenizer(option, add_special_tokens=False, return_tensors="pt")["input_ids"]
                ids = ids.to(prepared.inputs_embeds.device)
                embeds = torch.cat([prepared.inputs_embeds, model.get_input_embeddings()(ids)], dim=1)
                mask = torch.cat([prepared.attention_mask, torch.ones_like(ids)], dim=1)
                logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0, -ids.shape[1] - 1 : -1]
                logprobs = torch.log_softmax(logits.float(), -1).gather(-1, ids[0][:, None])
                scores.append(float(logprobs.sum()))
            letter = letters[max(range(len(scores)), key=scores.__getitem__)]
            raw = " ".join(f"{c}:{v:.3f}" for c, v in zip(letters, scores))
        else:
            out = model.generate(
                inputs_embeds=prepared.inputs_embeds,
                attention_mask=prepared.attention_mask,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=processor.tokenizer.pad_token_id,
                eos_token_id=processor.stop_token_ids,
            )
            raw = processor.decode(out[0]).strip()
            letter = parse_letter(raw, len(item.options), item.options)
        llm_s = time.perf_counter() - gen_start
    timings = dict(prepared.timer.timings, decode=decode_s, llm=llm_s)
    return {
        "id": item.id,
        "task": item.task,
        "duration_group": item.duration_group,
        "answer": item.answer,
        "raw_output": raw,
        "parsed": letter,
        "correct": letter == item.answer,
        "frames": len(clip),
        "visual_tokens": prepared.visual_tokens,
        "timings": timings,
    }


def evaluate(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    items: list[MCItem],
    prompt_fn: PromptFn,
    settings: EvalSettings,
    out_dir: str | Path,
    config: dict[str, Any] | None = None,
    load_problems: list[str] | None = None,
    console: Console | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``items`` into ``out_dir``; returns the merged results on the main process."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, state = _rank_world()
    if settings.limit is not None:
        items = items[: settings.limit]
    done = {row["id"] for row in _read_rows(sorted(out.glob("predictions*.jsonl"))) if "error" not in row}
    shard = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
    mine = out / f"predictions.rank{rank}.jsonl"
    correct = answered = 0
    progress = Progress(
        TextColumn("[bold]eval[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not (rank == 0 and console.is_terminal),
    )
    with progress, mine.open("a") as sink:
        task = progress.add_task("eval", total=len(shard), acc="")
        for item in shard:
            try:
                row = _predict(model, processor, item, prompt_fn(item), settings)
            except (VideoError, ValueError, OSError) as err:  # bad data: report, count, go on
                row = {"id": item.id, "task": item.task, "duration_group": item.duration_group,
                       "answer": item.answer, "error": str(err).splitlines()[0]}  # fmt: skip
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            if "error" not in row:
                answered += 1
                correct += int(row["correct"])
            progress.update(task, advance=1, acc=f"acc {correct / max(answered, 1):.3f}")
    if state is not None and world > 1:
        state.wait_for_everyone()
    if rank != 0:
        return None
    rows = _read_rows(sorted(out.glob("predictions*.jsonl")))
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:  # each question once; a real answer wins over an earlier error
        if row["id"] not in merged or "error" in merged[row["id"]]:
            merged[row["id"]] = row
    wanted = [it.id for it in items]
    results = summarize([merged[i] for i in wanted if i in merged], settings, config or {}, load_problems or [])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(markdown_summary(results))
    return results


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    n_correct = sum(r["correct"] for r in ok)
    return {
        "accuracy": n_correct / len(ok) if ok else None,
        "accuracy_with_errors_wrong": n_correct / len(rows) if rows else None,
        "answered": len(ok),
        "errors": len(rows) - len(ok),
        "unparsed": sum(r["parsed"] is None for r in ok),
    }


def summarize(
    rows: list[dict[str, Any]], settings: EvalSettings, config: dict[str, Any], load_problems: list[str]
) -> dict[str, Any]:
    by_task, by_group = defaultdict(list), defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
        if row.get("duration_group"):
            by_group[row["duration_group"]].append(row)
    ok = [r for r in rows if "error" not in r]
    timing_keys = sorted({k for r in ok for k in r["timings"]})
    return {
        "overall": _accuracy(rows),
        "per_task": {t: _accuracy(v) for t, v in sorted(by_task.items())},
        "per_duration_group": {g: _accuracy(v) for g, v in sorted(by_group.items())},
        "config": {
            **config,
            "num_frames": settings.num_frames,
            "temporal_pool": settings.reduction.temporal_pool,
            "spatial_pool": settings.reduction.spatial_pool,
            "temporal_sampling": settings.reduction.temporal_sampling,
            "scoring": settings.scoring,
        },
        "mean_frames": statistics.mean(r["frames"] for r in ok) if ok else None,
        "mean_visual_tokens": statistics.mean(r["visual_tokens"] for r in ok) if ok else None,
        "mean_timings_s": {k: statistics.mean(r["timings"].get(k, 0.0) for r in ok) for k in timing_keys},
        "load_problems": load_problems,
        "item_errors": [{"id": r["id"], "error": r["error"]} for r in rows if "error" in r],
        "predictions": rows,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_summary(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"# {c.get('benchmark', 'evaluation')}: {c.get('model', '')}",
        "",
        f"{c['num_frames']} frames, k={c['temporal_pool']} p={c['spatial_pool']} s={c['temporal_sampling']}, "
        f"scoring {c['scoring']}; mean visual tokens {results['mean_visual_tokens']}",
        "",
        "| task | accuracy (%) | answered | errors | unparsed |",
        "|---|---|---|---|---|",
    ]
    for name, acc in [*results["per_task"].items(), ("**overall**", results["overall"])]:
        lines.append(f"| {name} | {_pct(acc['accuracy'])} | {acc['answered']} | {acc['errors']} | {acc['unparsed']} |")
    if results["per_duration_group"]:
        lines += ["", "| duration group | accuracy (%) | answered |", "|---|---|---|"]
        for name, acc in results["per_duration_group"].items():
            lines.append(f"| {name} | {_pct(acc['accuracy'])} | {acc['answered']} |")
    problems = results["load_problems"] + [f"{e['id']}: {e['error']}" for e in results["item_errors"]]
    if problems:
        lines += ["", f"{len(problems)} data problem(s):", ""] + [f"- {p}" for p in problems[:50]]
    return "\n".join(lines) + "\n"
