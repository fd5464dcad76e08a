"""`storm-vlm` command line. Each sub-command is a typed function; its signature is the CLI."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="storm-vlm",
    help="STORM: token-efficient long-video understanding (Mamba temporal module + token reduction).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 1."""


class Projector(str, Enum):
    storm = "storm"
    mlp = "mlp"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.command()
def demo(
    frames: Annotated[int, typer.Option(min=1, help="Frames in the generated clip.")] = 32,
    question: Annotated[str, typer.Option(help="Question to ask about the clip.")] = (
        "Which way does the red square move, and what flashes in the middle?"
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 12,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Answer a question about a generated clip under each compression setting; print token accounting."""
    from .demo import run_demo

    run_demo("tiny", num_frames=frames, question=question, max_new_tokens=max_new_tokens, seed=seed, console=console)


@app.command()
def init(
    out: Annotated[Path, typer.Option(help="New model directory to write.")],
    preset: Annotated[str | None, typer.Option(help="Random model preset, no download (e.g. 'tiny').")] = None,
    vision: Annotated[Path | None, typer.Option(help="Local HF directory of the vision tower (SigLIP/CLIP).")] = None,
    llm: Annotated[Path | None, typer.Option(help="Local HF directory of the causal LLM and its tokenizer.")] = None,
    projector: Annotated[Projector, typer.Option(help="'storm' (Linear + Mamba) or 'mlp' baseline.")] = Projector.storm,
    temporal_layers: Annotated[int, typer.Option(min=0, help="L, Mamba blocks.")] = 2,
    bidirectional: Annotated[bool, typer.Option(help="Bidirectional scan (off: causal, streamable).")] = True,
    temporal_pool: Annotated[int, typer.Option(min=1, help="k, temporal average pooling.")] = 1,
    spatial_pool: Annotated[int, typer.Option(min=1, help="p, p×p spatial average pooling.")] = 1,
    temporal_sampling: Annotated[int, typer.Option(min=1, help="s, test-time temporal sampling.")] = 1,
    dtype: Annotated[Dtype | None, typer.Option(help="Weight dtype for --vision/--llm loading.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random projector / temporal weights.")] = 0,
) -> None:
    """Create a STORM model directory: from a preset, or from a pretrained vision tower + LLM."""
    import torch

    from .presets import build_preset, save_model_dir

    options = dict(
        projector_type=projector.value,
        temporal_layers=temporal_layers,
        bidirectional=bidirectional,
        temporal_pool=temporal_pool,
        spatial_pool=spatial_pool,
        temporal_sampling=temporal_sampling,
    )
    if (preset is None) == (vision is None and llm is None):
        raise UserError("give either --preset NAME, or both --vision DIR and --llm DIR")
    torch.manual_seed(seed)
    if preset is not None:
        model, processor = build_preset(preset, **options)
    else:
        if vision is None or llm is None:
            raise UserError("--vision and --llm must be given together")
        for name, path in (("--vision", vision), ("--llm", llm)):
            if not (path / "config.json").is_file():
                raise UserError(f"{name} {path}: not a Hugging Face model directory (no config.json)")
        model, processor = _from_parts(vision, llm, dtype, options)
    path = save_model_dir(model, processor, out)
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"wrote {path} ({n_params / 1e6:.2f} M parameters, projector={model.config.projector_type})")


def _from_parts(vision: Path, llm: Path, dtype: Dtype | None, options: dict):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer

    from .modeling import StormForConditionalGeneration
    from .processing_storm import StormProcessor

    tokenizer = AutoTokenizer.from_pretrained(llm)
    torch_dtype = getattr(torch, dtype.value) if dtype is not None else None
    model = StormForConditionalGeneration.from_parts(vision, llm, tokenizer=tokenizer, dtype=torch_dtype, **options)
    processor = StormProcessor(tokenizer, AutoImageProcessor.from_pretrained(vision), model.config)
    return model, processor


def main() -> None:
    """Entry point: user errors become one readable line and exit code 1, never a traceback."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except (UserError, ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        sys.exit(130)


if __name__ == "__main__":
    main()
