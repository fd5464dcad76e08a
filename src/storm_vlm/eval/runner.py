"""Multiple-choice video QA evaluation: resumable, sharded over processes, per-item error reports.

For each question: sample the clip (uniform N frames, within the benchmark's start/end bounds),
build the benchmark's prompt, then either generate a short answer and parse its option letter
(``scoring="generate"``, what lmms-eval does) or pick the option whose text is most likely after
the prompt, log-probabilities summed over its tokens (``scoring="loglik"``). Every prediction is
appended to a per-process JSONL as soon as it is made, so a rerun skips what is already answered.
Under ``accelerate launch`` each process takes every k-th question; the main process merges the
shards (each question once) and writes ``results.json`` (every prediction, accuracy per task /
duration group / overall, config, frames, visual tokens, timings) and ``summary.md``.

With ``EvalSettings.scan_cut`` every question is also scored a second time inside
``model.scan_cut()`` (the temporal Mamba scans each frame alone) on the same sampled frames: the
Mamba-usage diagnostic. Each row then holds both predictions (``parsed`` / ``parsed_cut``,
``correct`` / ``correct_cut``, ``raw_output`` / ``raw_output_cut``, ``changed``) and the results a
``mamba_usage`` section (see :func:`mamba_usage`): both accuracies and the fraction of answers the
cut changes, overall and per task. A model whose answers do not change does not use its scan
across frames. The ``mlp`` baseline has no temporal module: the section says the diagnostic does
not apply and the second pass is not run.
"""

from __future__ import annotations

import hashlib
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

from ..inference import generate_batch, prepare_inputs, until_stop
from ..modeling.modeling_storm import StormForConditionalGeneration
from ..modeling.reduction import ReductionSettings
from ..processing_storm import StormProcessor
from ..video import VideoClip, VideoError, sample_frames
from .items import LETTERS, MCItem, counts_in_accuracy, parse_item_answer

__all__ = ["EvalSettings", "evaluate", "mamba_usage", "summarize"]

PromptFn = Callable[[MCItem], str]


@dataclass
class EvalSettings:
    num_frames: int
    reduction: ReductionSettings
    scoring: str = "generate"  # or "loglik"
    max_new_tokens: int = 16
    limit: int | None = None
    scan_cut: bool = False  # also score every question under model.scan_cut(): the Mamba-usage diagnostic
    batch_size: int = 1  # questions per generate call (generate scoring; greedy rows equal one at a time)


NOT_APPLICABLE = "the model has no temporal module (mlp baseline): the scan cut changes nothing, nothing to measure"


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


def _sample(item: MCItem, settings: EvalSettings) -> tuple[VideoClip, float]:
    """The question's clip (uniform ``num_frames`` within its bounds) and the seconds decoding took."""
    started = time.perf_counter()
    clip = sample_frames(
        item.video,
        num_frames=settings.num_frames,
        start=item.start,
        end=item.end,
        frame_fps=item.extra.get("frame_fps", 1.0),
    )
    return clip, time.perf_counter() - started


Sampled = tuple[VideoClip, float]  # a question's clip and the seconds decoding it took


def _row(item: MCItem, raw: str, letter: str | None, prepared: Any, clip: VideoClip, timings: dict) -> dict[str, Any]:
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


def _predict(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    item: MCItem,
    prompt: str,
    settings: EvalSettings,
    sampled: Sampled | None = None,
) -> dict[str, Any]:
    """Score one question: its row. ``sampled`` (clip, decode seconds) reuses frames already decoded."""
    sampled = sampled if sampled is not None else _sample(item, settings)
    if settings.scoring != "loglik":
        return _generate_rows(model, processor, [(item, prompt, sampled)], settings)[0]
    clip, decode_s = sampled
    prepared = prepare_inputs(model, processor, clip, prompt, settings.reduction)
    letters = LETTERS[: len(item.options)]
    with torch.inference_mode():
        gen_start = time.perf_counter()
        ids = [processor.tokenizer(o, add_special_tokens=False)["input_ids"] for o in item.options]
        scores = option_logprobs(model, prepared.inputs_embeds, prepared.attention_mask, ids)
        llm_s = time.perf_counter() - gen_start
    letter = letters[max(range(len(scores)), key=scores.__getitem__)]
    raw = " ".join(f"{c}:{v:.3f}" for c, v in zip(letters, scores))
    timings = dict(prepared.timer.timings, decode=decode_s, llm=llm_s)
    return {**_row(item, raw, letter, prepared, clip, timings), "scores": scores}  # full precision: raw rounds


def _generate_rows(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    batch: list[tuple[MCItem, str, Sampled]],
    settings: EvalSettings,
) -> list[dict[str, Any]]:
    """Generated answers to several questions in one generate call (one question: unpadded), each
    parsed as its benchmark parses it. ``llm`` seconds are the call's, shared out per question."""
    prepared = [prepare_inputs(model, processor, clip, prompt, settings.reduction) for _, prompt, (clip, _) in batch]
    gen_start = time.perf_counter()
    out = generate_batch(model, prepared, settings.max_new_tokens, do_sample=False)
    llm_s = (time.perf_counter() - gen_start) / len(batch)
    rows = []
    for (item, _, (clip, decode_s)), ids, ready in zip(batch, out, prepared):
        raw = processor.decode(until_stop(model, ids)).strip()
        timings = dict(ready.timer.timings, decode=decode_s, llm=llm_s)
        row = _row(item, raw, parse_item_answer(item, raw), ready, clip, timings)
        rows.append({**row, "counted": counts_in_accuracy(item, raw), "batch": len(batch)})
    return rows


def option_logprobs(
    model: StormForConditionalGeneration,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    options: list[list[int]],
) -> list[float]:
    """log p(option | prompt) summed over each option's tokens, for every option in one batch.

    The prompt (visual tokens included: the long part) runs once; its KV cache is repeated for the
    options, which run together right-padded (padding after a sequence cannot change it). The same
    numbers as one forward of prompt + option per option (tested), at a fraction of the cost.
    """
    if not options or any(len(o) == 0 for o in options):
        raise ValueError("every option needs at least one token")
    device = prompt_embeds.device
    out = model(inputs_embeds=prompt_embeds, attention_mask=prompt_mask, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)  # predicts each option's first token
    n, longest = len(options), max(len(o) for o in options)
    ids = torch.zeros(n, longest, dtype=torch.long, device=device)
    mask = torch.zeros(n, longest, dtype=prompt_mask.dtype, device=device)
    for i, option in enumerate(options):
        ids[i, : len(option)] = torch.tensor(option, device=device)
        mask[i, : len(option)] = 1
    cache = out.cache
    cache.batch_repeat_interleave(n)
    rest = model(
        inputs_embeds=model.get_input_embeddings()(ids),
        attention_mask=torch.cat([prompt_mask.expand(n, -1), mask], dim=1),
        cache=cache,
        use_cache=True,
    ).logits.float()
    logprobs = torch.log_softmax(rest, -1)  # position j predicts token j + 1
    scores = []
    for i, option in enumerate(options):
        total = first[option[0]]
        if len(option) > 1:
            picked = logprobs[i, : len(option) - 1].gather(-1, ids[i, 1 : len(option), None])
            total = total + picked.sum()
        scores.append(float(total))
    return scores


def option_logprobs_reference(
    model: StormForConditionalGeneration,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    options: list[list[int]],
) -> list[float]:
    """The obvious way :func:`option_logprobs` must agree with: the prompt and one option through
    the whole model, option by option (tests and ``benchmarks/eval_throughput.py``)."""
    scores = []
    for option in options:
        ids = torch.tensor([option], device=prompt_embeds.device)
        embeds = torch.cat([prompt_embeds, model.get_input_embeddings()(ids)], dim=1)
        mask = torch.cat([prompt_mask, torch.ones_like(ids)], dim=1)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0, -ids.shape[1] - 1 : -1]
        scores.append(float(torch.log_softmax(logits.float(), -1).gather(-1, ids[0][:, None]).sum()))
    return scores


def _score_batch(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    batch: list[tuple[MCItem, str, Sampled]],
    settings: EvalSettings,
    cut: bool,
) -> list[dict[str, Any]]:
    """The questions' rows; with ``cut``, each scored again under ``model.scan_cut()`` on the same
    frames. Generate scoring runs the batch in one call, log-likelihood scoring one by one."""

    def rows(batch: list[tuple[MCItem, str, Sampled]]) -> list[dict[str, Any]]:
        if settings.scoring == "loglik" or len(batch) == 1:
            return [_predict(model, processor, item, prompt, settings, sampled) for item, prompt, sampled in batch]
        return _generate_rows(model, processor, batch, settings)

    scored = rows(batch)
    if not cut:
        return scored
    with model.scan_cut():  # decoded once: the cut pass reuses the frames
        under_cut = rows([(item, prompt, (clip, 0.0)) for item, prompt, (clip, _) in batch])
    for row, other in zip(scored, under_cut):
        for key in ("raw_output", "parsed", "correct", "scores"):  # scores: loglik scoring only
            if key in other:
                row[f"{key}_cut"] = other[key]
        row["changed"] = row["parsed_cut"] != row["parsed"]
        row["timings_cut"] = {k: v for k, v in other["timings"].items() if k != "decode"}
    return scored


def _error_row(item: MCItem, err: Exception) -> dict[str, Any]:
    return {"id": item.id, "task": item.task, "duration_group": item.duration_group,
            "answer": item.answer, "error": str(err).splitlines()[0]}  # fmt: skip


def _score_shard_part(
    model: StormForConditionalGeneration,
    processor: StormProcessor,
    items: list[MCItem],
    prompt_fn: PromptFn,
    settings: EvalSettings,
    cut: bool,
) -> list[dict[str, Any]]:
    """Rows for a few questions, in order. A question whose video or prompt is bad becomes an error
    row (reported, counted, the run goes on); if the batch's call itself fails on bad data, its
    questions are scored one by one, so one bad question costs only its own row."""
    rows: dict[str, dict[str, Any]] = {}
    batch: list[tuple[MCItem, str, Sampled]] = []
    for item in items:
        try:
            batch.append((item, prompt_fn(item), _sample(item, settings)))
        except (VideoError, ValueError, OSError) as err:  # bad data: report, count, go on
            rows[item.id] = _error_row(item, err)
    parts = [batch] if batch else []
    while parts:
        part = parts.pop()
        try:
            for row in _score_batch(model, processor, part, settings, cut):
                rows[row["id"]] = row
        except (VideoError, ValueError, OSError) as err:
            if len(part) == 1:
                rows[part[0][0].id] = _error_row(part[0][0], err)
            else:
                parts += [[one] for one in part]
    return [rows[item.id] for item in items]


def _complete(row: dict[str, Any], fields: tuple[str, ...]) -> bool:
    """An answered row holding every prediction field this run needs (a no-cut row lacks the cut's)."""
    return "error" not in row and all(f in row for f in fields)


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
    identity = {**(config or {}), **settings_identity(settings), "prompt_sha": prompt_digest(items, prompt_fn)}
    # Before the limit (a rerun with another --limit is the same run). Every process checks the same
    # folder before any writes to it, so all of them refuse or none; then the main one records the run.
    _check_claim(out, identity)
    if state is not None and world > 1:
        state.wait_for_everyone()
    if rank == 0:
        _record_claim(out, identity)
    if settings.limit is not None:
        items = items[: settings.limit]
    has_temporal = model.temporal is not None
    cut = settings.scan_cut and has_temporal  # the mlp baseline: the cut is a no-op, one pass is enough
    if settings.scan_cut and not has_temporal and rank == 0:
        console.print(f"[yellow]Mamba usage: not applicable[/yellow] ({NOT_APPLICABLE})")
    needed = ("parsed", "parsed_cut") if cut else ("parsed",)
    rows = _read_rows(sorted(out.glob("predictions*.jsonl")))
    done = {row["id"] for row in rows if _complete(row, needed)}
    shard = [it for i, it in enumerate(items) if i % world == rank and it.id not in done]
    mine = out / f"predictions.rank{rank}.jsonl"
    correct = correct_cut = changed = answered = 0
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
        for lo in range(0, len(shard), settings.batch_size):
            for row in _score_shard_part(
                model, processor, shard[lo : lo + settings.batch_size], prompt_fn, settings, cut
            ):
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                if "error" not in row:
                    answered += 1
                    correct += int(row["correct"])
                    correct_cut += int(row.get("correct_cut", False))
                    changed += int(row.get("changed", False))
                acc = f"acc {correct / max(answered, 1):.3f}"
                if cut:
                    acc += f", cut {correct_cut / max(answered, 1):.3f}, changed {changed / max(answered, 1):.3f}"
                progress.update(task, advance=1, acc=acc)
    if state is not None and world > 1:
        state.wait_for_everyone()
    if rank != 0:
        return None
    rows = _read_rows(sorted(out.glob("predictions*.jsonl")))
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:  # each question once; a complete answer wins over an earlier error or no-cut row
        if row["id"] not in merged or not _complete(merged[row["id"]], needed):
            merged[row["id"]] = row
    wanted = [it.id for it in items]
    results = summarize(
        [merged[i] for i in wanted if i in merged],
        settings,
        identity,
        load_problems or [],
        has_temporal=has_temporal,
    )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(markdown_summary(results))
    return results


RUN_FILE = "run.json"
IDENTITY_IGNORED = ("model", "tasks")  # a moved model directory is the same model; tasks filter the same run


def settings_identity(settings: EvalSettings) -> dict[str, Any]:
    """What in the settings decides a prediction (``limit`` and ``scan_cut`` only choose which are made)."""
    return {
        "num_frames": settings.num_frames,
        "temporal_pool": settings.reduction.temporal_pool,
        "spatial_pool": settings.reduction.spatial_pool,
        "temporal_sampling": settings.reduction.temporal_sampling,
        "scoring": settings.scoring,
        "max_new_tokens": settings.max_new_tokens,
    }


def prompt_digest(items: list[MCItem], prompt_fn: PromptFn) -> str:
    """The prompt version: a hash of the prompts of the first 16 questions, as the model sees them."""
    digest = hashlib.sha256()
    for item in items[:16]:
        digest.update(prompt_fn(item).encode("utf-8", "replace"))
    return digest.hexdigest()[:12]


def _check_claim(out: Path, identity: dict[str, Any]) -> None:
    """Resume only the same run: ``out/run.json`` records what produced its predictions.

    Predictions are resumed by question id, so another model or other settings in the same folder
    would silently pass for new results; they are refused instead, with the fields that differ.
    """
    run_file = out / RUN_FILE
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())
        keys = sorted((set(recorded) | set(identity)) - set(IDENTITY_IGNORED))
        differ = [k for k in keys if recorded.get(k) != identity.get(k)]
        if differ:
            what = ", ".join(f"{k} {recorded.get(k)!r} → {identity.get(k)!r}" for k in differ)
            raise ValueError(f"{out} holds predictions of another run ({what}): pass another --out or remove it")
    elif any(out.glob("predictions*.jsonl")):
        raise ValueError(
            f"{out} holds predictions without {RUN_FILE} (no record of the model and settings that made them): "
            "pass another --out or remove it"
        )


def _record_claim(out: Path, identity: dict[str, Any]) -> None:
    run_file = out / RUN_FILE
    if not run_file.is_file():
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(identity, indent=1, sort_keys=True))
        tmp.replace(run_file)


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over answered rows; rows the benchmark's own metric leaves out (``counted`` False:
    MVBench's empty answers, :func:`counts_in_accuracy`) are in neither numerator nor denominator."""
    ok = [r for r in rows if "error" not in r]
    counted = [r for r in ok if r.get("counted", True)]
    left_out = len(ok) - len(counted)
    n_correct = sum(r["correct"] for r in counted)
    return {
        "accuracy": n_correct / len(counted) if counted else None,
        "accuracy_with_errors_wrong": n_correct / (len(rows) - left_out) if len(rows) > left_out else None,
        "answered": len(ok),
        "errors": len(rows) - len(ok),
        "unparsed": sum(r["parsed"] is None for r in ok),
        "left_out": left_out,
    }


def _usage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    n_correct, n_cut = sum(bool(r["correct"]) for r in rows), sum(bool(r["correct_cut"]) for r in rows)
    n_changed = sum(r["parsed"] != r["parsed_cut"] for r in rows)
    return {
        "answered": n,
        "correct": n_correct,
        "correct_cut": n_cut,
        "changed": n_changed,
        "accuracy": n_correct / n if n else None,
        "accuracy_cut": n_cut / n if n else None,
        "changed_fraction": n_changed / n if n else None,
    }


def mamba_usage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The Mamba-usage diagnostic from rows scored with and without the scan cut.

    Rows with an ``error`` are left out; every other row needs ``parsed``, ``parsed_cut``,
    ``correct`` and ``correct_cut``. Returns ``{"applies": True, "overall": ..., "per_task": ...}``,
    each part with ``answered``, ``correct``, ``correct_cut``, ``changed`` (answers whose parsed
    letter differs under the cut, an unparsed answer included) and ``accuracy``, ``accuracy_cut``,
    ``changed_fraction`` (None when nothing was answered).
    """
    ok = [r for r in rows if "error" not in r]
    lacking = [r["id"] for r in ok if "parsed_cut" not in r or "correct_cut" not in r]
    if lacking:
        raise ValueError(
            f"{len(lacking)} row(s) lack the scan-cut prediction (e.g. {lacking[0]!r}): score them with scan_cut"
        )
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in ok:
        by_task[row["task"]].append(row)
    return {
        "applies": True,
        "overall": _usage(ok),
        "per_task": {t: _usage(v) for t, v in sorted(by_task.items())},
    }


def summarize(
    rows: list[dict[str, Any]],
    settings: EvalSettings,
    config: dict[str, Any],
    load_problems: list[str],
    has_temporal: bool = True,
) -> dict[str, Any]:
    by_task, by_group = defaultdict(list), defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
        if row.get("duration_group"):
            by_group[row["duration_group"]].append(row)
    ok = [r for r in rows if "error" not in r]
    timing_keys = sorted({k for r in ok for k in r["timings"]})
    usage: dict[str, Any] = {}
    if settings.scan_cut:
        usage = {"mamba_usage": mamba_usage(rows) if has_temporal else {"applies": False, "reason": NOT_APPLICABLE}}
    short = [r for r in ok if r["frames"] < settings.num_frames]
    per_task = {t: _accuracy(v) for t, v in sorted(by_task.items())}
    task_accuracies = [a["accuracy"] for a in per_task.values() if a["accuracy"] is not None]
    return {
        "overall": _accuracy(rows),
        # the mean over tasks (MLVU's headline, "M-Avg"): every task counts the same, however many questions
        "task_mean": statistics.mean(task_accuracies) if task_accuracies else None,
        "frames_short": {"items": len(short), "min_frames": min((r["frames"] for r in short), default=None)},
        "per_task": per_task,
        "per_duration_group": {g: _accuracy(v) for g, v in sorted(by_group.items())},
        "config": {**config, **settings_identity(settings), "scan_cut": settings.scan_cut},
        "mean_frames": statistics.mean(r["frames"] for r in ok) if ok else None,
        "mean_visual_tokens": statistics.mean(r["visual_tokens"] for r in ok) if ok else None,
        "mean_timings_s": {k: statistics.mean(r["timings"].get(k, 0.0) for r in ok) for k in timing_keys},
        "load_problems": load_problems,
        "item_errors": [{"id": r["id"], "error": r["error"]} for r in rows if "error" in r],
        **usage,
        "predictions": rows,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _short_note(results: dict[str, Any], num_frames: int) -> list[str]:
    short = results.get("frames_short") or {}
    if not short.get("items"):
        return []
    return [
        f"**{short['items']} question(s) got fewer than {num_frames} frames** (their clips are shorter; as few as "
        f"{short['min_frames']}): this column does not measure {num_frames} frames for them.",
        "",
    ]


def markdown_summary(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"# {c.get('benchmark', 'evaluation')}: {c.get('model', '')}",
        "",
        f"{c['num_frames']} frames, k={c['temporal_pool']} p={c['spatial_pool']} s={c['temporal_sampling']}"
        + (f" (token budget {c['token_budget']})" if c.get("token_budget") else "")
        + f", scoring {c['scoring']}; mean visual tokens {results['mean_visual_tokens']}",
        "",
        f"model fingerprint {c.get('model_fingerprint', '?')}, prompt version {c.get('prompt_sha', '?')}, "
        f"data {c.get('data_root', '?')}",
        "",
        *_short_note(results, c["num_frames"]),
        "| task | accuracy (%) | answered | errors | unparsed |",
        "|---|---|---|---|---|",
    ]
    for name, acc in [*results["per_task"].items(), ("**overall**", results["overall"])]:
        lines.append(f"| {name} | {_pct(acc['accuracy'])} | {acc['answered']} | {acc['errors']} | {acc['unparsed']} |")
    if results.get("task_mean") is not None:
        lines.append(f"| **mean over tasks (M-Avg)** | {_pct(results['task_mean'])} | | | |")
    if results["per_duration_group"]:
        lines += ["", "| duration group | accuracy (%) | answered |", "|---|---|---|"]
        for name, acc in results["per_duration_group"].items():
            lines.append(f"| {name} | {_pct(acc['accuracy'])} | {acc['answered']} |")
    usage = results.get("mamba_usage")
    if usage is not None and not usage["applies"]:
        lines += ["", f"Mamba usage (scan cut at frame boundaries): not applicable, {usage['reason']}."]
    elif usage is not None:
        lines += [
            "",
            "## Mamba usage: the temporal scan cut at frame boundaries",
            "",
            "The same questions and frames, scored again with every frame scanned alone; answers that do not "
            "change under the cut do not use the scan across frames.",
            "",
            "| task | accuracy (%) | accuracy, scan cut (%) | answers changed (%) | changed / answered |",
            "|---|---|---|---|---|",
        ]
        for name, u in [*usage["per_task"].items(), ("**overall**", usage["overall"])]:
            lines.append(
                f"| {name} | {_pct(u['accuracy'])} | {_pct(u['accuracy_cut'])} | {_pct(u['changed_fraction'])} "
                f"| {u['changed']} / {u['answered']} |"
            )
    problems = results["load_problems"] + [f"{e['id']}: {e['error']}" for e in results["item_errors"]]
    if problems:
        lines += ["", f"{len(problems)} data problem(s):", ""] + [f"- {p}" for p in problems[:50]]
    return "\n".join(lines) + "\n"
