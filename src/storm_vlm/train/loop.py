"""The training loop on 🤗 accelerate: one CPU, DDP, FSDP or DeepSpeed from the same code.

    storm-vlm train configs/tiny-stage2.yaml optim.lr=1e-3
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml \
        -m storm_vlm.cli train configs/7b-stage2.yaml

AdamW, cosine schedule with linear warmup, gradient accumulation, clipping, mixed precision,
gradient checkpointing and optional LoRA (peft) on the LLM. A step's loss is the mean over the target
tokens of its whole global batch (every micro-batch of the accumulation window on every process), so
batch 8, 2 × 4 accumulation and 2 processes × 4 give the same gradient. Every ``save_every`` optimizer steps a
checkpoint (model, optimizer, scheduler, RNG states, data position) is written to a temporary
folder and renamed into ``output_dir/checkpoints/step-NNNNNN``; the last ``keep_last`` are kept.
A rerun of the same recipe continues from the newest one (``resume``, on by default) so that every
later step sees the same batches and gives the same loss as an uninterrupted run. SIGTERM or SIGINT
(a preemption, Ctrl-C) ends the run after the step in progress with such a checkpoint and
:class:`TrainingInterrupted`. The final model is a ``from_pretrained`` directory
(``output_dir/final``) with processor files; a run whose final model is complete is not trained
again unless ``overwrite``. Progress goes to the console (a bar with ETA on a terminal, a line per
logged step otherwise), to ``output_dir/train_log.jsonl`` and to accelerate's trackers (``log_with``:
tensorboard under ``output_dir/logs``, wandb); only the main process prints and writes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from ..model_dir import atomic_directory, share_like_umask
from ..modeling.modeling_storm import StormForConditionalGeneration
from ..modeling.reduction import ReductionSettings
from ..processing_storm import StormProcessor
from .data import DataError, LengthGroupedSampler, PackedBatchSampler, SeededSampler, StormCollator
from .mixture import build_training_dataset
from .recipe import RecipeError, TrainRecipe
from .stages import configure_stage, module_of, param_groups

__all__ = ["TrainResult", "TrainingInterrupted", "train"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNFINISHED = ".unfinished"  # in output_dir while a run has not written its final model
# recipe keys that do not change the final model: a finished run rerun with other values is still done
_NOT_THE_MODEL = {
    "resume",
    "overwrite",
    "log_every",
    "log_with",
    "save_every",
    "keep_last",
    "data.num_workers",
    "gradient_checkpointing",
}
TRACKER_PROJECT = "storm-vlm"  # tensorboard: output_dir/logs/storm-vlm; wandb: the project


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    steps: int  # optimizer steps the run has made (0 when ``already_done``: nothing trained now)
    skipped: list[str] = field(default_factory=list)
    last_loss: float = float("nan")
    last_accuracy: float = float("nan")
    already_done: bool = False  # final/ was complete: not trained again (``overwrite`` would)
    is_main_process: bool = True  # only the main process of a distributed run should report the result


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a step, whose checkpoint was written.

    ``exit_code`` is the shell's for the signal (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, step: int, checkpoint: Path, signum: int) -> None:
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted ({name}) at step {step}; checkpoint written to {checkpoint}; rerun the same command to resume"
        )


def build_model(recipe: TrainRecipe) -> tuple[StormForConditionalGeneration, StormProcessor]:
    """The model a recipe starts from: a model directory, a preset, or pretrained parts."""
    if recipe.model is not None:
        from ..inference import load_model

        return load_model(recipe.model)
    from ..presets import build_from_parts, build_preset

    init = recipe.init
    if init is None:
        raise RecipeError("give exactly one of `model` (a model directory) or `init` (a new model)")
    options = dict(
        projector_type=init.projector_type, temporal_layers=init.temporal_layers, bidirectional=init.bidirectional
    )
    if init.preset is not None:
        return build_preset(init.preset, **options)
    if init.vision is None or init.llm is None:
        raise RecipeError("init needs either `preset` or both `vision` and `llm`")
    dtype = torch.bfloat16 if recipe.mixed_precision == "bf16" else None
    return build_from_parts(init.vision, init.llm, dtype=dtype, **options)


def _apply_lora(model: StormForConditionalGeneration, options: dict[str, Any]) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RecipeError("lora needs peft: pip install 'storm-vlm[lora]'") from None
    config = LoraConfig(
        r=int(options.get("r", 16)),
        lora_alpha=int(options.get("alpha", 32)),
        lora_dropout=float(options.get("dropout", 0.05)),
        target_modules=options.get("target_modules", LORA_TARGETS),
    )
    model.model.language_model = get_peft_model(model.model.language_model, config)


def _merge_lora(model: StormForConditionalGeneration) -> None:
    merge = getattr(model.model.language_model, "merge_and_unload", None)  # a peft model's
    if merge is not None:
        model.model.language_model = merge()


def _token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Teacher-forced next-token accuracy on label positions: (correct, total)."""
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    return int((predicted[mask] == target[mask]).sum()), int(mask.sum())


def _windows(loader: DataLoader, size: int) -> Iterator[list[dict[str, Any]]]:
    """The loader's batches, ``size`` at a time: one optimizer step's micro-batches (the last of an epoch may be short).

    The loss of a step is a mean over all its target tokens, so their number must be known before
    the step's first micro-batch runs: the whole window is fetched first.
    """
    batches = iter(loader)
    while window := list(itertools.islice(batches, size)):
        yield window


def _global_target_count(accelerator: Accelerator, micro_batches: list[dict[str, Any]]) -> torch.Tensor:
    """The number of target tokens of one optimizer step, over its micro-batches on every process.

    The loss is Σ token losses / this count (``num_items_in_batch``, as in transformers' Trainer), so a
    step weights every target token alike however the global batch is split into micro-batches and
    processes; a mean of per-micro-batch means would weight a sample by 1 / its micro-batch's count.
    Counted as transformers' ``ForCausalLMLoss`` does: labels shifted by one, ``-100`` ignored.
    """
    count = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches if "labels" in b)
    total = accelerator.reduce(torch.tensor(count, device=accelerator.device), reduction="sum")
    return total.clamp(min=1)  # no target at all: the losses are 0, not 0 / 0


@contextlib.contextmanager
def _micro_batch(accelerator: Accelerator, model: torch.nn.Module, last: bool) -> Iterator[None]:
    """``accelerator.accumulate`` with the window's end given rather than counted.

    ``accumulate`` also ends a window at the loader's last batch, and with the window fetched ahead
    the loader is at its end before the last window's first micro-batch runs. Here gradients are
    reduced across processes, and the optimizer (or DeepSpeed's engine) steps, only on ``last``.
    """
    accelerator.gradient_state._set_sync_gradients(last)
    with contextlib.nullcontext() if last else accelerator.no_sync(model):
        yield


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def _complete_model_dir(path: Path) -> bool:
    """A final model as this loop writes it (atomically: if it is there, all of it is)."""
    weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return (path / "config.json").is_file() and (path / "recipe.yaml").is_file() and weights


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def _finished(out: Path, recipe: TrainRecipe) -> bool:
    """Whether ``out`` holds a finished run; one of another recipe is refused unless ``overwrite``."""
    final = out / "final"
    if (out / UNFINISHED).exists() or not _complete_model_dir(final):
        return False
    try:
        before = _flat(yaml.safe_load((final / "recipe.yaml").read_text()))
    except (yaml.YAMLError, OSError, ValueError, RecursionError):
        return False  # not a recipe this loop wrote: train, and replace it
    if recipe.overwrite:
        return True
    now = _flat(yaml.safe_load(yaml.safe_dump(recipe.to_dict())))  # tuples as YAML lists, as saved
    for key in sorted(before.keys() & now.keys() - _NOT_THE_MODEL):
        if before[key] != now[key]:
            raise RecipeError(
                f"{final} was trained with {key}: {before[key]!r}, this recipe has {now[key]!r}; "
                "pass --overwrite (overwrite=true) to replace it, or choose another output_dir"
            )
    return True


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of writes that an interruption or a crash cut short."""
    for tmp in [*out.glob(".final.tmp-*"), *(out / "checkpoints").glob(".step-*.tmp")]:
        shutil.rmtree(tmp, ignore_errors=True)
    if _complete_model_dir(out / "final"):  # else an ``.old`` may be the only copy of the last one
        for old in out.glob(".final.old-*"):
            shutil.rmtree(old, ignore_errors=True)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step``: the resumed run logs the later ones again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the interruption
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


class _StopSignals:
    """SIGTERM / SIGINT handlers that only note the signal: the loop stops at the end of the step.

    A second signal gets the previous handler (Ctrl-C twice: KeyboardInterrupt at once). Signal
    handlers can only be set from the main thread; elsewhere nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            previous = self._previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)  # None: not set from Python
        self._previous.clear()


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGINT to the main process, which stops after the step.

    Ctrl-C and a scheduler's SIGTERM reach the whole process group: a worker dying of it would
    fail the main process's next fetch before it could write its checkpoint. The workers still
    end with the main process (their loader shuts them down; they exit when it is gone).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prepare_output(out: Path, recipe: TrainRecipe, finished: bool, is_main: bool) -> Path | None:
    """Decide from ``output_dir`` how this run starts; returns the checkpoint to resume from.

    An unfinished run's checkpoints are resumed, also under ``overwrite`` (so that rerunning an
    interrupted ``--overwrite`` command continues it) unless ``resume`` is false. A fresh run drops
    earlier checkpoints and log; ``final/`` stays until the new one is written. Every process
    decides alike from the shared folder.
    """
    fresh = recipe.overwrite and (finished or not recipe.resume)
    checkpoints = [] if fresh else _checkpoints(out)
    if checkpoints and not recipe.resume:
        raise RecipeError(
            f"{out} holds checkpoints of an unfinished run (newest {checkpoints[-1].name}) and resume is false: "
            "set resume=true to continue it, or also pass --overwrite (overwrite=true) to start again"
        )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / UNFINISHED).touch()
        _remove_leftovers(out)
        if not checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # another run's: a later resume must not use them
            (out / "train_log.jsonl").unlink(missing_ok=True)
            (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return checkpoints[-1] if checkpoints else None


def train(recipe: TrainRecipe, stop_after_steps: int | None = None, console: Console | None = None) -> TrainResult:
    """Run a recipe. ``stop_after_steps`` ends the run after that optimizer step (and its
    checkpoint), as a preemption would; running the recipe again then continues it.

    Raises :class:`TrainingInterrupted` after SIGTERM / SIGINT (checkpoint written),
    :class:`RecipeError` when the loss diverges and :class:`DataError` when no sample of the data
    can be used: none of them saves a final model.
    """
    recipe.validate()
    console = console or Console()
    out = Path(recipe.output_dir)
    final = out / "final"
    accelerator = _accelerator(recipe)
    is_main = accelerator.is_main_process
    if not is_main:  # the other processes of a distributed run: what the caller prints with it is silenced too
        console.quiet = True
    finished = _finished(out, recipe)
    if finished and not recipe.overwrite:
        if is_main:
            message = f"{final} is complete: already trained; pass --overwrite (overwrite=true) to train again"
            console.print(message, markup=False, highlight=False, soft_wrap=True)
        return TrainResult(out, final, 0, already_done=True, is_main_process=is_main)
    accelerator.wait_for_everyone()  # every process has looked at output_dir before the main one changes it
    latest = _prepare_output(out, recipe, finished, is_main)
    accelerator.wait_for_everyone()
    set_seed(recipe.seed)

    model, processor, counts = _model_for_stage(recipe)
    dataset, sampler, loader = _data(recipe, model, processor)
    optimizer = torch.optim.AdamW(param_groups(model, recipe.optim), betas=recipe.optim.betas)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / recipe.optim.grad_accum))
    total_steps = recipe.optim.max_steps or max(1, math.ceil(recipe.optim.epochs * steps_per_epoch))
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(recipe.optim.warmup_ratio * total_steps), total_steps
    )  # stepped once per optimizer step, by us (not through accelerate, which would step it per process)
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, batches_done, skipped = 0, 0, 0, []
    trained = 0  # samples trained on, over every process and every earlier part of the run
    log_path = out / "train_log.jsonl"
    if latest is not None:
        accelerator.load_state(str(latest))
        state = json.loads((latest / "trainer_state.json").read_text())
        step, epoch, batches_done, skipped = state["step"], state["epoch"], state["batches_done"], state["skipped"]
        trained = state.get("trained", 1)  # not recorded by earlier versions: assume some
        if is_main:
            _truncate_log(log_path, step)
            message = f"resuming from {latest} (step {step}, epoch {epoch}, batch {batches_done})"
            console.print(message, markup=False, highlight=False, soft_wrap=True)
    if is_main:
        params = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())
        console.print(f"stage {recipe.stage}: trainable {params}; {len(dataset)} samples, {total_steps} steps")
    _start_trackers(accelerator, recipe, resumed_at=step)

    window = _new_window()
    last_loss, last_acc = float("nan"), float("nan")
    run_start, first_step = time.perf_counter(), step
    model.train()
    progress = Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        _StepsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not (is_main and console.is_terminal),
    )
    with _closing_trackers(accelerator), progress, _StopSignals() as stop:
        task = progress.add_task("train", total=total_steps, completed=step, info="")
        while step < total_steps:
            # resuming mid-epoch: skip the batches every process already consumed
            _start_epoch(sampler, epoch, batches_done * accelerator.num_processes, recipe.optim.batch_size)
            whole_epoch, epoch_samples = batches_done == 0, 0
            for micro_batches in _windows(loader, recipe.optim.grad_accum):
                batches_done += len(micro_batches)
                for batch in micro_batches:
                    skipped += batch.pop("skipped", [])
                _optimizer_step(accelerator, model, optimizer, micro_batches, recipe.optim.max_grad_norm, window)
                scheduler.step()
                step += 1
                stats = _reduced_stats(accelerator, window, stop.received)
                trained += int(stats[4])
                epoch_samples += int(stats[4])
                last_loss = float(stats[0])  # the shares of every micro-batch of every process: the token mean
                last_acc = float(stats[1] / stats[2]) if stats[2] > 0 else float("nan")
                if not math.isfinite(last_loss):  # every rank sees the same reduced loss: all stop together
                    raise RecipeError(
                        f"the loss is {last_loss} at step {step}: training diverged (optim.lr too high, or bad data); "
                        "no final model was saved"
                    )
                now = time.perf_counter()
                elapsed = max(now - window["t0"], 1e-9)
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": last_loss,
                    "accuracy": last_acc,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": window["grad_norm"],  # before clipping; the same on every process
                    "tokens_per_s": float(stats[3]) / elapsed,
                    "samples_per_s": float(stats[4]) / elapsed,
                    "samples": int(stats[4]),  # this step's, over every process (packed rows: varies)
                    "visual_tokens_per_sample": float(stats[7] / stats[4]) if stats[4] > 0 else 0.0,
                    "skipped": len(skipped),
                    "processes": accelerator.num_processes,
                    "distributed": accelerator.distributed_type.value,
                }
                window = _new_window()
                if step % recipe.log_every == 0 or step == total_steps:
                    accelerator.log({f"train/{k}": record[k] for k in _TRACKED}, step=step)  # main process only
                    if is_main:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                        if not console.is_terminal:
                            rate = (step - first_step) / max(now - run_start, 1e-9)
                            console.print(
                                f"step {step}/{total_steps} loss {last_loss:.4f} acc {last_acc:.3f} "
                                f"lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s "
                                f"{rate:.2f} steps/s eta {_duration((total_steps - step) / rate if rate > 0 else 0)}"
                            )
                if is_main:
                    progress.update(task, completed=step, info=f"loss {last_loss:.4f} acc {last_acc:.3f}")
                end_of_run = step >= total_steps
                position = (step, epoch, batches_done, skipped, trained)
                saved = None
                if recipe.save_every and (step % recipe.save_every == 0 or step == stop_after_steps) and not end_of_run:
                    saved = _save_checkpoint(accelerator, out, *position, recipe.keep_last)
                if stats[5] > 0 or stats[6] > 0:
                    saved = saved or _save_checkpoint(accelerator, out, *position, recipe.keep_last)
                    raise TrainingInterrupted(step, saved, signal.SIGTERM if stats[5] > 0 else signal.SIGINT)
                if end_of_run or step == stop_after_steps:
                    break
            else:  # the epoch's data is used up
                if whole_epoch and epoch_samples == 0:
                    _refuse_bad_data(recipe, skipped)
            if step >= total_steps or step == stop_after_steps:
                break
            epoch, batches_done = epoch + 1, 0
    if trained == 0:
        _refuse_bad_data(recipe, skipped)

    if stop_after_steps is not None and step == stop_after_steps and step < total_steps:
        return TrainResult(out, None, step, skipped, last_loss, last_acc, is_main_process=is_main)
    _save_final(accelerator, model, processor, recipe, final)
    if is_main:
        _report_skipped(console, skipped)
        console.print(f"saved {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out, final, step, skipped, last_loss, last_acc, is_main_process=is_main)


# the scalars of a log record sent to the trackers (as train/<name>)
_TRACKED = ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "visual_tokens_per_sample")


def _new_window() -> dict[str, Any]:
    """What one optimizer step adds up (its micro-batches on this process) until it is logged."""
    return {
        "loss": 0.0,
        "correct": 0,
        "total": 0,
        "tokens": 0,
        "samples": 0,
        "visual": 0,
        "grad_norm": float("nan"),
        "t0": time.perf_counter(),
    }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _StepsPerSecond(ProgressColumn):
    """Optimizer steps per second, from rich's speed estimate (steps are too slow for a bytes/s column)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} steps/s" if speed else "- steps/s", style="progress.data.speed")


def _tracker_config(recipe: TrainRecipe) -> dict[str, Any]:
    """The recipe as tracker hyperparameters: flat keys, values tensorboard's hparams take (scalars, str)."""
    flat = _flat(recipe.to_dict())
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def _check_trackers(recipe: TrainRecipe) -> None:
    """A named tracker whose package is missing is refused before the model is built."""
    needs = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
    for name in recipe.log_with:
        module, extra = needs[name]
        if importlib.util.find_spec(module) is None:
            install = f"pip install 'storm-vlm[{extra}]'" if name == "tensorboard" else f"pip install {extra}"
            raise RecipeError(f"log_with {name} needs the {module} package: {install}")


def _start_trackers(accelerator: Accelerator, recipe: TrainRecipe, resumed_at: int) -> None:
    """``accelerator.init_trackers`` with the recipe as the run's configuration (main process only).

    A resumed run's tensorboard writer purges the events after the checkpoint's step, which the
    interrupted run logged and this one logs again (as ``train_log.jsonl`` is truncated).
    """
    if not recipe.log_with:
        return
    init_kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in recipe.log_with and resumed_at > 0:
        init_kwargs["tensorboard"] = {"purge_step": resumed_at + 1}
    if "wandb" in recipe.log_with:
        init_kwargs["wandb"] = {"name": Path(recipe.output_dir).name}
    accelerator.init_trackers(TRACKER_PROJECT, config=_tracker_config(recipe), init_kwargs=init_kwargs)


@contextlib.contextmanager
def _closing_trackers(accelerator: Accelerator) -> Iterator[None]:
    """Trackers flushed and closed however the run ends (interrupted, stopped, diverged or done)."""
    try:
        yield
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()  # end_training would finish them again


def _accelerator(recipe: TrainRecipe) -> Accelerator:
    """An Accelerator for this recipe's accumulation and precision.

    One process may train several times (notebooks, tests) with different precision settings, and
    accelerate keeps its settings in process-wide singletons that refuse a second configuration;
    accelerate offers no public reset, so its own ``_reset_state`` (what its test suite uses)
    forgets the previous run's settings while keeping the process group.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    _check_trackers(recipe)
    out = Path(recipe.output_dir)
    return Accelerator(
        gradient_accumulation_steps=recipe.optim.grad_accum,
        mixed_precision=recipe.mixed_precision,
        cpu=not torch.cuda.is_available(),  # CPU-only: several processes form a gloo group (DDP on CPU)
        log_with=list(recipe.log_with) or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def _model_for_stage(recipe: TrainRecipe) -> tuple[StormForConditionalGeneration, StormProcessor, dict[str, int]]:
    """The model with the recipe's k / p, the stage's trainable parts (LoRA on the LLM if asked) and
    gradient checkpointing; returns the trainable parameter counts per part too."""
    model, processor = build_model(recipe)
    if recipe.temporal_pool is not None:
        model.config.temporal_pool = processor.temporal_pool = recipe.temporal_pool
    if recipe.spatial_pool is not None:
        model.config.spatial_pool = processor.spatial_pool = recipe.spatial_pool
    counts = configure_stage(model, recipe.stage)
    if recipe.lora:
        _apply_lora(model, recipe.lora)
        counts = configure_stage_with_lora(model, recipe.stage)
    enable_checkpointing(model, recipe.checkpointed_parts, required=not isinstance(recipe.gradient_checkpointing, bool))
    model.config.use_cache = False
    return model, processor, counts


def enable_checkpointing(
    model: StormForConditionalGeneration, parts: tuple[str, ...] | list[str], required: bool = True
) -> None:
    """Gradient (activation) checkpointing on the named parts: ``vision``, ``temporal``, ``llm``.

    Each part's repeated blocks (SigLIP / CLIP encoder layers, :class:`TemporalBlock`, the LLM's
    decoder layers: transformers' ``GradientCheckpointingLayer``) then recompute their activations
    in the backward pass instead of keeping them, trading about one more forward of that part for
    its activation memory; the gradients are the same. The vision tower and the LLM body are
    transformers models and go through their ``activation_checkpointing_enable`` (the current name
    of ``gradient_checkpointing_enable``); the temporal module is not one, so its blocks are set as
    transformers sets them, with the same non-reentrant ``torch.utils.checkpoint``. A part the
    model lacks (no temporal module with the ``mlp`` projector) is refused when ``required``
    (named in a list), skipped otherwise (``gradient_checkpointing: true``).
    """
    body = model.model
    for part in parts:
        if part == "vision":
            _enable_on_transformers_model(body.vision_tower, part)
        elif part == "llm":
            llm = body.language_model
            base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm  # under LoRA: peft's model
            _enable_on_transformers_model(base, part)
        elif part == "temporal":
            if body.temporal is None:
                if required:
                    raise RecipeError(
                        "gradient_checkpointing: temporal: this model has no temporal module (projector_type mlp)"
                    )
                continue
            func = functools.partial(checkpoint, use_reentrant=False)
            for module in body.temporal.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module._gradient_checkpointing_func = func
                    module.gradient_checkpointing = True
        else:
            raise RecipeError(f"gradient_checkpointing: unknown part {part!r} (choose among vision, temporal, llm)")


def _enable_on_transformers_model(module: torch.nn.Module, part: str) -> None:
    enable = getattr(module, "activation_checkpointing_enable", None)
    if enable is None or not getattr(module, "supports_gradient_checkpointing", False):
        raise RecipeError(f"gradient_checkpointing: {part}: {type(module).__name__} does not support checkpointing")
    enable()


def _data(
    recipe: TrainRecipe, model: StormForConditionalGeneration, processor: StormProcessor
) -> tuple[Any, SeededSampler | PackedBatchSampler, DataLoader]:
    """The dataset, its seeded (resumable) sampler and the loader.

    With ``data.group_by_length`` the sampler batches samples of similar estimated length, in
    windows whose blocks of one step's batches (every process's) stay together; with
    ``data.pack_tokens`` a batch sampler packs samples into ``batch_size`` rows of that many
    tokens. Decoding runs in ``data.num_workers`` worker processes; the sampler's order is drawn in
    the main process, so workers change nothing about which samples a step sees, and resume stays
    exact.
    """
    settings = ReductionSettings.resolve(model.config, training=True)
    dataset = build_training_dataset(recipe.data, processor, settings, recipe.seed)
    collate = StormCollator(processor.tokenizer.pad_token_id, pack_tokens=recipe.data.pack_tokens)
    loader_for = functools.partial(
        DataLoader,
        dataset,
        collate_fn=collate,
        num_workers=recipe.data.num_workers,
        worker_init_fn=_ignore_stop_signals if recipe.data.num_workers > 0 else None,
    )
    sampler: SeededSampler | PackedBatchSampler
    if recipe.data.group_by_length or recipe.data.pack_tokens is not None:
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            option = "data.group_by_length" if recipe.data.group_by_length else "data.pack_tokens"
            raise RecipeError(f"{option} needs data.json or data.mixture (generated clips are one length)")
        if recipe.data.pack_tokens is not None:
            sampler = PackedBatchSampler(
                lengths(), recipe.data.pack_tokens, recipe.optim.batch_size, recipe.seed, recipe.data.group_size
            )
            return dataset, sampler, loader_for(batch_sampler=sampler)
        sampler = LengthGroupedSampler(
            lengths(),
            recipe.optim.batch_size,
            recipe.seed,
            group_size=recipe.data.group_size,
            num_processes=PartialState().num_processes,
        )
    else:
        sampler = SeededSampler(len(dataset), recipe.seed)
    loader = loader_for(batch_size=recipe.optim.batch_size, sampler=sampler)
    return dataset, sampler, loader


def _start_epoch(sampler: SeededSampler | PackedBatchSampler, epoch: int, batches: int, batch_size: int) -> None:
    """Start ``epoch`` after ``batches`` global batches (every process's) already consumed."""
    if isinstance(sampler, PackedBatchSampler):
        sampler.start_epoch(epoch, skip_batches=batches)  # batches of varying sample counts
    else:
        sampler.start_epoch(epoch, skip=batches * batch_size)


def _optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict[str, Any]],
    max_grad_norm: float,
    window: dict[str, Any],
) -> None:
    """One optimizer step over a window of micro-batches: the loss is the mean over every target
    token of the window on every process (see ``_global_target_count``); adds to ``window``.

    The gradient norm (before clipping) comes from ``accelerator.clip_grad_norm_``, which knows how
    to take it over DDP, FSDP shards and DeepSpeed's engine; without clipping it is called with an
    infinite bound, which scales the gradients by exactly 1.
    """
    targets = _global_target_count(accelerator, micro_batches)
    for i, batch in enumerate(micro_batches):
        with _micro_batch(accelerator, model, last=i == len(micro_batches) - 1):
            if "input_ids" in batch:
                counts = batch.pop("counts")  # samples, tokens, visual tokens: the collator's (packed or not)
                outputs = model(**batch, num_items_in_batch=targets)  # Σ token losses / targets
                loss = outputs.loss
                correct, total = _token_accuracy(outputs.logits.detach(), batch["labels"])
                window["tokens"] += counts["tokens"]
                window["samples"] += counts["samples"]
                window["visual"] += counts["visual"]
            else:  # every sample of the batch was bad: a zero step keeps processes in sync
                loss = sum(p.reshape(-1)[0] * 0.0 for p in model.parameters() if p.requires_grad)
                correct = total = 0
            # accelerate divides by grad_accum and DDP averages over processes: undo both
            accelerator.backward(loss * accelerator.gradient_accumulation_steps * accelerator.num_processes)
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
                if norm is not None:  # DeepSpeed before its engine has a norm
                    window["grad_norm"] = float(norm)
            optimizer.step()
            optimizer.zero_grad()
        window["loss"] += float(loss.detach())  # this micro-batch's share of the global token mean
        window["correct"] += correct
        window["total"] += total


def _reduced_stats(accelerator: Accelerator, window: dict[str, Any], received: int | None) -> torch.Tensor:
    """(loss, correct, total, tokens, samples, SIGTERM seen, SIGINT seen, visual tokens) summed over
    processes: a signal on any process stops them all at the same step."""
    stats = torch.tensor(
        [
            window["loss"],
            window["correct"],
            window["total"],
            window["tokens"],
            window["samples"],
            float(received == signal.SIGTERM),
            float(received == signal.SIGINT),
            window["visual"],
        ],
        device=accelerator.device,
        dtype=torch.float64,
    )
    return accelerator.reduce(stats, reduction="sum")


def _save_final(
    accelerator: Accelerator,
    model: torch.nn.Module,
    processor: StormProcessor,
    recipe: TrainRecipe,
    final: Path,
) -> None:
    """``final/`` written whole or not at all (gathering FSDP / ZeRO-3 shards first), LoRA merged."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards
    if accelerator.is_main_process:
        _merge_lora(unwrapped)
        unwrapped.config.use_cache = True

        def write(tmp: Path) -> None:
            unwrapped.save_pretrained(tmp, state_dict=None if recipe.lora else state_dict)
            processor.save_pretrained(tmp)
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

        atomic_directory(final, write, overwrite=True)
        (final.parent / UNFINISHED).unlink(missing_ok=True)


def configure_stage_with_lora(model: StormForConditionalGeneration, stage: int) -> dict[str, int]:
    """With LoRA the LLM's base weights stay frozen; its adapters and the other modules follow the stage."""
    counts = configure_stage(model, stage)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
        elif module_of(name) == "llm":
            param.requires_grad_(False)
    counts["llm"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return counts


def _refuse_bad_data(recipe: TrainRecipe, skipped: list[str]) -> None:
    """No sample could be used: a "trained" model would be the initial one. One line, the first reason."""
    source = recipe.data.json or recipe.data.mixture or "data.synth"
    first = f"; the first: {' '.join(skipped[0].split())}" if skipped else ""
    raise DataError(
        f"{source}: no sample could be used ({len(skipped)} skipped as bad{first}); no final model was saved"
    )


def _save_checkpoint(
    accelerator: Accelerator,
    out: Path,
    step: int,
    epoch: int,
    batches_done: int,
    skipped: list[str],
    trained: int,
    keep: int,
) -> Path:
    """Every process writes its part to a temporary folder; the main process renames it."""
    root = out / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, "batches_done": batches_done, "skipped": skipped, "trained": trained}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        share_like_umask(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _report_skipped(console: Console, skipped: list[str]) -> None:
    if not skipped:
        return
    console.print(f"[yellow]skipped {len(skipped)} bad sample(s)[/yellow] (first reasons below)")
    for reason in skipped[:5]:
        console.print(f"  {reason}", markup=False, highlight=False)
