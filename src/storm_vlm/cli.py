"""`storm-vlm` command line. Each sub-command is a typed function; its signature is the CLI."""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .heap import keep_freed_memory
from .limits import (
    MAX_BENCH_REPEAT,
    MAX_EVAL_BATCH_SIZE,
    MAX_FPS,
    MAX_FRAMES,
    MAX_NEW_TOKENS,
    MAX_REDUCTION,
    MAX_SYNTH_SAMPLES,
    MAX_SYNTH_SIZE,
    MAX_TEMPORAL_LAYERS,
    MIN_SYNTH_SIZE,
)
from .train.prepare import app as data_app

app = typer.Typer(
    name="storm-vlm",
    help="STORM: token-efficient long-video understanding (Mamba temporal module + token reduction).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"storm-vlm {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """STORM: token-efficient long-video understanding (Mamba temporal module + token reduction)."""


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


EXIT_USER_ERROR = 2


Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps (default: cuda if available).")]
Fast = Annotated[
    bool | None,
    typer.Option(
        "--fast/--no-fast",
        help="Compiled vision tower, static KV cache and CUDA-graph decoding (default: on with CUDA).",
    ),
]


class Projector(str, Enum):
    storm = "storm"
    mlp = "mlp"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.command()
def demo(
    frames: Annotated[int, typer.Option(min=1, help="Frames per generated clip.")] = 16,
    seed: Annotated[int | None, typer.Option(help="Seed of the fresh clips (default: from the clock).")] = None,
    model: Annotated[Path | None, typer.Option(help="Model directory (default: the shipped demo model).")] = None,
) -> None:
    """Answer questions about freshly generated clips; compare compression settings side by side."""
    from .demo import run_demo

    run_demo(num_frames=frames, seed=seed, model_dir=model, console=console)


@app.command()
def ask(
    model_dir: Annotated[Path, typer.Argument(help="STORM model directory (from `storm-vlm init` or training).")],
    media: Annotated[Path, typer.Argument(help="Video (mp4, webm, mkv, avi, mov, gif, ...) or image file.")],
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    frames: Annotated[
        int | None, typer.Option(min=1, max=MAX_FRAMES, help="Frames sampled uniformly (default 32).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(min=0.001, max=MAX_FPS, help="Instead: frames per second of video.")
    ] = None,
    max_frames: Annotated[int | None, typer.Option(min=1, max=MAX_FRAMES, help="Cap on frames with --fps.")] = None,
    start: Annotated[float | None, typer.Option(min=0, help="Window start (seconds).")] = None,
    end: Annotated[float | None, typer.Option(min=0, help="Window end (seconds).")] = None,
    temporal_pool: Annotated[
        int | None, typer.Option(min=1, max=MAX_REDUCTION, help="k, temporal pooling (model default).")
    ] = None,
    spatial_pool: Annotated[
        int | None, typer.Option(min=1, max=MAX_REDUCTION, help="p, spatial pooling (model default).")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, max=MAX_REDUCTION, help="s, test-time temporal sampling (model default).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, max=MAX_NEW_TOKENS, help="Most tokens in the answer (also cut to the context).")
    ] = 128,
    token_budget: Annotated[
        int | None, typer.Option(min=1, help="Fit at most N visual tokens (chooses k, then s).")
    ] = None,
    device: Device = None,
    fast: Fast = None,
    stats: Annotated[bool, typer.Option(help="Also print frames, visual tokens and time per stage.")] = False,
) -> None:
    """Answer a question about a video or image."""
    import time

    import torch

    from .inference import ask as ask_fn
    from .inference import load_model
    from .model_dir import check_model_dir
    from .video import sample_frames

    if frames is not None and fps is not None:
        raise UserError("give --frames or --fps, not both")
    check_model_dir(model_dir)
    started = time.perf_counter()
    with _progress("decoding") as update:  # decode first: a bad file fails before the model loads
        clip = sample_frames(
            media,
            num_frames=frames if frames is not None else (None if fps is not None else 32),
            fps=fps,
            max_frames=max_frames,
            start=start,
            end=end,
            progress=update,
        )
    decode_seconds = time.perf_counter() - started
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model(model_dir, device=device, fast=fast)
    answer = ask_fn(
        model,
        processor,
        clip,
        question,
        temporal_pool=temporal_pool,
        spatial_pool=spatial_pool,
        temporal_sampling=sample,
        max_new_tokens=max_new_tokens,
        token_budget=token_budget,
    )
    answer.timings["decode"] = decode_seconds
    if answer.text:
        console.print(answer.text, markup=False, highlight=False)
    else:
        console.print("[dim](the model produced no text)[/dim]")
    if stats:
        _print_stats(answer)


@contextmanager
def _progress(label: str):
    """A rich progress bar fed by ``update(done, total)``; silent when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        f"[dim]{label}[/dim]",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _print_stats(answer) -> None:
    from rich.table import Table

    s = answer.settings
    table = Table(title="stats", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("frames used", str(answer.num_frames))
    table.add_row("source", f"{answer.source_duration:.2f} s at {answer.source_fps:.2f} fps")
    table.add_row("reduction", f"k={s.temporal_pool} p={s.spatial_pool} s={s.temporal_sampling}")
    table.add_row("visual tokens to the LLM", str(answer.visual_tokens))
    table.add_row("prompt tokens (incl. visual)", str(answer.prompt_tokens))
    table.add_row("new tokens", str(answer.new_tokens))
    for stage in ("decode", "preprocess", "vision", "temporal", "prefill", "decoding"):
        table.add_row(f"time: {stage}", f"{answer.timings.get(stage, 0.0) * 1000:.1f} ms")
    table.add_row("time: total", f"{sum(answer.timings.values()) * 1000:.1f} ms")
    console.print(table)


class Scoring(str, Enum):
    generate = "generate"
    loglik = "loglik"


@app.command(name="eval")
def eval_(
    model_dir: Annotated[Path, typer.Argument(help="STORM model directory.")],
    benchmark: Annotated[
        str,
        typer.Option(
            help="mvbench, mlvu, longvideobench, videomme, videomme_w_subtitle, longvideobench_w_subtitle, "
            "synthetic or mc-json."
        ),
    ],
    data_root: Annotated[Path, typer.Option(help="Benchmark folder (or the JSON file for mc-json).")],
    frames: Annotated[str, typer.Option(help="Frame counts, comma-separated (a sweep when several).")] = "32",
    subtitles: Annotated[
        Path | None,
        typer.Option(
            help="Subtitle folder of a *_w_subtitle benchmark (default DATA_ROOT/subtitle for Video-MME, "
            "DATA_ROOT/subtitles for LongVideoBench)."
        ),
    ] = None,
    temporal_pool: Annotated[int | None, typer.Option(min=1, max=MAX_REDUCTION, help="k (model default).")] = None,
    spatial_pool: Annotated[int | None, typer.Option(min=1, max=MAX_REDUCTION, help="p (model default).")] = None,
    sample: Annotated[
        int | None, typer.Option(min=1, max=MAX_REDUCTION, help="s, test-time sampling (model default).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_EVAL_BATCH_SIZE, help="Questions per generate call (generate scoring; left-padded prompts)."
        ),
    ] = 1,
    token_budget: Annotated[
        int | None, typer.Option(min=1, help="Fit at most N visual tokens per question (chooses k, then s).")
    ] = None,
    tasks: Annotated[str | None, typer.Option(help="Only these tasks, comma-separated.")] = None,
    scoring: Annotated[
        Scoring, typer.Option(help="Parse a generated letter, or pick the most likely option text (summed log-probs).")
    ] = (Scoring.generate),
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default outputs/eval/BENCH-MODEL-FINGERPRINT-kKpPsS-SCORING).")
    ] = None,
    mamba_usage: Annotated[
        bool,
        typer.Option(
            "--mamba-usage/--no-mamba-usage",
            help="Also score every question with the temporal scan cut at frame boundaries (each frame scanned "
            "alone, same frames): results.json and summary.md add both accuracies and the fraction of answers "
            "the cut changes, per task. Unchanged answers do not use the Mamba across frames. Not applicable "
            "to the mlp baseline. Costs a second model pass per question.",
        ),
    ] = False,
    device: Device = None,
    fast: Fast = None,
) -> None:
    """Evaluate on a video QA benchmark (resumable; shard with `accelerate launch`)."""
    from .eval import run_benchmark
    from .model_dir import check_model_dir

    check_model_dir(model_dir)
    frame_counts = _frame_counts(frames)
    run_benchmark(
        model_dir,
        benchmark,
        data_root,
        frame_counts,
        temporal_pool=temporal_pool,
        spatial_pool=spatial_pool,
        temporal_sampling=sample,
        out=out,
        limit=limit,
        scoring=scoring.value,
        tasks=[t.strip() for t in tasks.split(",")] if tasks else None,
        device=device,
        fast=fast,
        console=console,
        token_budget=token_budget,
        scan_cut=mamba_usage,
        subtitles=subtitles,
        batch_size=batch_size,
    )


def _frame_counts(text: str) -> list[int]:
    """``--frames 8,32``: at least one count, each from 1 to MAX_FRAMES (checked before any model loads)."""
    try:
        counts = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--frames must be comma-separated integers, got {text!r}") from None
    if not counts:
        raise UserError(f"--frames needs at least one frame count, got {text!r}")
    bad = [n for n in counts if not 1 <= n <= MAX_FRAMES]
    if bad:
        raise UserError(f"--frames: each count must be from 1 to {MAX_FRAMES}, got {bad[0]}")
    return counts


class BenchPreset(str, Enum):
    tiny = "tiny"
    small = "small"
    shapes_7b = "7b-shapes"


@app.command()
def bench(
    preset: Annotated[BenchPreset, typer.Option(help="tiny, small (paper proportions, CPU minutes), 7b-shapes.")] = (
        BenchPreset.small
    ),
    frames: Annotated[str, typer.Option(help="Frame counts, comma-separated.")] = "32,128",
    configs: Annotated[str, typer.Option(help="none, k4, k4s2, k4s2p2, mlp (comma-separated).")] = (
        "none,k4,k4s2,k4s2p2,mlp"
    ),
    model: Annotated[Path | None, typer.Option(help="Measure this model directory instead of a preset.")] = None,
    token_budget: Annotated[int | None, typer.Option(min=1, help="Fit every cell into N visual tokens.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.md, bench.json and plots.")] = Path("outputs/bench"),
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens decoded per cell.")] = 16,
    repeat: Annotated[
        int, typer.Option(min=1, max=MAX_BENCH_REPEAT, help="Timed runs per cell after its warm-up (stage medians).")
    ] = 1,
    device: Device = None,
    fast: Fast = None,
) -> None:
    """Tokens, FLOPs, latency per stage and memory for each compression setting, side by side.

    7b-shapes is measured (random bf16 weights) only on CUDA; elsewhere it is arithmetic.
    """
    from .bench import run_bench
    from .bench.report import write_report

    frame_counts = _frame_counts(frames)
    names = [c.strip() for c in configs.split(",") if c.strip()]
    cells = run_bench(
        preset.value,
        frame_counts,
        names,
        model_dir=str(model) if model else None,
        token_budget=token_budget,
        log=lambda msg: err_console.print(f"[dim]{escape(msg)}[/dim]"),
        device=device,
        fast=fast,
        new_tokens=new_tokens,
        repeat=repeat,
    )
    what = {
        "tiny": "tiny random STORM (tests)",
        "small": "small random STORM with the paper's proportions (LLM ~17x the vision tower), 64 tokens/frame",
        "7b-shapes": "SigLIP-So400m-448 + Qwen2-7B shapes (random bf16 weights on CUDA; arithmetic only elsewhere)",
    }[preset.value]
    title = f"storm-vlm bench: {model or what}"
    write_report(cells, out, title, plot_title=f"storm-vlm bench ({model.name if model else preset.value})")
    console.print((out / "bench.md").read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out / 'bench.md'}, {out / 'bench.json'} and plots", markup=False)


@app.command()
def repro(
    quick: Annotated[bool, typer.Option(help="One seed, fewer steps and questions: a few minutes.")] = False,
    out: Annotated[Path, typer.Option(help="Report folder (the committed report is docs/repro).")] = Path(
        "outputs/repro"
    ),
    work: Annotated[Path, typer.Option(help="Trained models (a finished model is reused when rerun).")] = Path(
        "runs/repro"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing REPORT.md in --out.")] = False,
    report_only: Annotated[
        bool, typer.Option(help="Only rewrite REPORT.md and the plots from --out's results.json.")
    ] = False,
) -> None:
    """Test the paper's ablation claims in miniature: train tiny models, evaluate, write a report."""
    from .repro import FULL, QUICK, rewrite_report, run_repro

    if report_only:
        rewrite_report(out)
        console.print(f"rewrote {out / 'REPORT.md'} and its plots from {out / 'results.json'}", markup=False)
        return
    if (out / "REPORT.md").exists() and not overwrite:
        raise UserError(f"{out / 'REPORT.md'} exists: pass --overwrite to replace it, or another --out")
    run_repro(QUICK if quick else FULL, out, work, console=console, overwrite=overwrite)


@app.command()
def serve(
    model_dir: Annotated[Path, typer.Argument(help="STORM model directory.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    media_root: Annotated[Path | None, typer.Option(help="Only files under this folder may be read.")] = None,
    max_frames: Annotated[int, typer.Option(min=1, help="Most frames sampled per request.")] = 128,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest data: URL upload.")] = 64,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests allowed to wait (429 beyond).")] = 8,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request (504 beyond).")] = 120.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=MAX_NEW_TOKENS, help="Most tokens per answer.")] = 512,
    read_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to receive a request's headers and body (closed beyond).")
    ] = 60.0,
    device: Device = None,
    fast: Fast = None,
) -> None:
    """Serve the model behind an OpenAI-compatible API (and live streams) with uvicorn."""
    import torch
    import uvicorn

    from .inference import load_model
    from .model_dir import check_model_dir
    from .serve import ServerConfig, create_app
    from .serve.limits import read_timeout_protocol

    check_model_dir(model_dir)
    if media_root is not None and not media_root.is_dir():
        raise UserError(f"--media-root {media_root}: not a directory")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_model(model_dir, device=device, fast=fast)
    config = ServerConfig(media_root=media_root, max_frames=max_frames, max_upload_mb=max_upload_mb,
                          max_queue=max_queue, request_timeout_s=timeout, max_new_tokens=max_new_tokens,
                          read_timeout_s=read_timeout)  # fmt: skip
    app_ = create_app(model, processor, config, model_id=model_dir.name)
    console.print(
        f"serving {model_dir} on http://{host}:{port} (media root: {media_root or 'none: data: URLs only'})",
        markup=False,
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", http=read_timeout_protocol(read_timeout),
                h11_max_incomplete_event_size=64 * 1024)  # fmt: skip


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the clips and the JSON.")],
    samples: Annotated[int, typer.Option(min=1, max=MAX_SYNTH_SAMPLES, help="Number of clips.")] = 16,
    frames: Annotated[int, typer.Option(min=2, max=MAX_FRAMES, help="Frames per clip.")] = 32,
    size: Annotated[
        int, typer.Option(min=MIN_SYNTH_SIZE, max=MAX_SYNTH_SIZE, help="Frame side in pixels (even).")
    ] = 32,
    questions: Annotated[str, typer.Option(help="Motion set: comma-separated color, direction.")] = "color",
    suite: Annotated[bool, typer.Option(help="The task suite instead (train.json or MC eval.json).")] = False,
    split: Annotated[str, typer.Option(help="Suite split: train (free-form) or test (multiple choice).")] = "train",
    tasks: Annotated[str, typer.Option(help="Suite tasks, comma-separated.")] = "color,needle,order,count",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate video QA whose answers need the video, as mp4 + JSON (see storm_vlm.synth)."""
    from .synth import make_motion_qa, make_suite

    if suite:
        kinds = tuple(t.strip() for t in tasks.split(",") if t.strip())
        path = make_suite(out, split=split, num_samples=samples, tasks=kinds, num_frames=frames, size=size, seed=seed)
    else:
        kinds = tuple(q.strip() for q in questions.split(",") if q.strip())
        path = make_motion_qa(out, num_samples=samples, num_frames=frames, size=size, seed=seed, questions=kinds)
    console.print(f"wrote {samples} clips and {path}", markup=False)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe (see configs/).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.lr=1e-4")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Train again although output_dir/final is complete (replaced once the new one is).")
    ] = False,
) -> None:
    """Train a stage from a recipe (run under `accelerate launch` for several processes/GPUs).

    Rerunning the command resumes an interrupted run (SIGTERM/SIGINT write a checkpoint, exit 143/130)
    and does nothing for a finished one.
    """
    from .train import TrainingInterrupted, load_recipe
    from .train import train as run_training

    loaded = load_recipe(recipe, overrides or [])
    loaded.overwrite = loaded.overwrite or overwrite
    try:
        result = run_training(loaded, console=console)
    except TrainingInterrupted as stop:
        err_console.print(str(stop), markup=False, highlight=False)
        raise SystemExit(stop.exit_code) from None  # not typer.Exit: main() would add its own "interrupted"
    if result.final_dir is not None and not result.already_done and result.is_main_process:
        console.print(f"final loss {result.last_loss:.4f}, answer-token accuracy {result.last_accuracy:.3f}")


@app.command()
def init(
    out: Annotated[Path, typer.Option(help="New model directory to write.")],
    preset: Annotated[str | None, typer.Option(help="Random model preset, no download (e.g. 'tiny').")] = None,
    vision: Annotated[Path | None, typer.Option(help="Local HF directory of the vision tower (SigLIP/CLIP).")] = None,
    vision_preset: Annotated[
        str | None, typer.Option(help="'tiny': a small random SigLIP tower instead of --vision (beside a real LLM).")
    ] = None,
    llm: Annotated[
        Path | None,
        typer.Option(help="Local HF directory of the causal LLM and its tokenizer, or a .gguf file (needs gguf)."),
    ] = None,
    projector: Annotated[Projector, typer.Option(help="'storm' (Linear + Mamba) or 'mlp' baseline.")] = Projector.storm,
    temporal_layers: Annotated[int, typer.Option(min=0, max=MAX_TEMPORAL_LAYERS, help="L, Mamba blocks.")] = 2,
    bidirectional: Annotated[bool, typer.Option(help="Bidirectional scan (off: causal, streamable).")] = True,
    temporal_pool: Annotated[int, typer.Option(min=1, max=MAX_REDUCTION, help="k, temporal average pooling.")] = 1,
    spatial_pool: Annotated[int, typer.Option(min=1, max=MAX_REDUCTION, help="p, p×p spatial average pooling.")] = 1,
    temporal_sampling: Annotated[
        int, typer.Option(min=1, max=MAX_REDUCTION, help="s, test-time temporal sampling.")
    ] = 1,
    dtype: Annotated[Dtype | None, typer.Option(help="Weight dtype for --vision/--llm loading.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random projector / temporal weights.")] = 0,
) -> None:
    """Create a STORM model directory: from a preset, or from a pretrained vision tower + LLM."""
    import torch

    from .presets import build_from_parts, build_preset, save_model_dir, tiny_vision_tower

    options = dict(
        projector_type=projector.value,
        temporal_layers=temporal_layers,
        bidirectional=bidirectional,
        temporal_pool=temporal_pool,
        spatial_pool=spatial_pool,
        temporal_sampling=temporal_sampling,
    )
    if (preset is None) == (vision is None and vision_preset is None and llm is None):
        raise UserError("give either --preset NAME, or --vision DIR (or --vision-preset tiny) and --llm DIR")
    torch.manual_seed(seed)
    if preset is not None:
        model, processor = build_preset(preset, **options)
    else:
        if (vision is None) == (vision_preset is None) or llm is None:
            raise UserError("--llm needs one of --vision DIR or --vision-preset tiny")
        if vision_preset is not None and vision_preset != "tiny":
            raise UserError(f"--vision-preset {vision_preset!r}: the only one is 'tiny'")
        if vision is not None and not (vision / "config.json").is_file():
            raise UserError(f"--vision {vision}: not a Hugging Face model directory (no config.json)")
        if llm.suffix == ".gguf":
            if not llm.is_file():
                raise UserError(f"--llm {llm}: no such GGUF file")
            if importlib.util.find_spec("gguf") is None:
                raise UserError(f"--llm {llm}: reading GGUF needs the gguf package: pip install 'storm-vlm[gguf]'")
        elif not (llm / "config.json").is_file():
            raise UserError(f"--llm {llm}: not a Hugging Face model directory (no config.json) nor a .gguf file")
        torch_dtype = getattr(torch, dtype.value) if dtype is not None else None
        tower = tiny_vision_tower() if vision is None else vision
        model, processor = build_from_parts(tower, llm, dtype=torch_dtype, **options)
    path = save_model_dir(model, processor, out)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"wrote {path} ({n_params / 1e6:.2f} M parameters, projector={model.config.projector_type})", markup=False
    )


def _quiet_transformers() -> None:
    """Errors only, no progress bars: through the environment, so that commands which never load a
    model (``--help``, ``synth``) never import transformers (and torch) for it."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one readable line and exit code 2, never a traceback.

    Click's own usage errors (a value out of range, an unknown option) are one line too, instead
    of Typer's framed panel: ``error: <what> (see `storm-vlm CMD --help`)``. ``argv`` defaults to
    ``sys.argv[1:]``; only then, as the process's own entry, is malloc tuned (:mod:`.heap`): tests
    that pass their own run in the test process and leave its allocator alone.
    """
    if argv is None:
        try:
            keep_freed_memory()
        except ValueError as err:  # a bad STORM_MALLOC
            _print_error(str(err))
            sys.exit(EXIT_USER_ERROR)
    _quiet_transformers()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .model_dir import ModelLoadError
    from .video import VideoError

    try:
        code = app(args=argv, standalone_mode=False)
    except typer.TyperException as err:  # Typer's (vendored) click errors: usage, a value out of range, ...
        if type(err).__name__ == "NoArgsIsHelpError":  # `storm-vlm` alone: its message is the help
            console.print(err.format_message(), markup=False, highlight=False)
        else:
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _print_error(" ".join(err.format_message().split()) + hint)
        sys.exit(err.exit_code)
    except (UserError, VideoError, ModelLoadError, ValueError, OSError) as err:
        _print_error(str(err))
        sys.exit(EXIT_USER_ERROR)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:  # Typer turns Ctrl-C into Exit(130)
        err_console.print("[red]interrupted[/red]")
    if isinstance(code, int) and code:  # an Exit's code, e.g. from a callback
        sys.exit(code)


def _print_error(message: str) -> None:
    # the message is text, not markup: a path or question may hold square brackets
    err_console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)


if __name__ == "__main__":
    main()
