"""`storm-vlm data`: the released datasets turned into the training format, checked and counted.

Converters (each writes one LLaVA-style JSON list that ``data.json`` or a mixture source reads, and
a ``*.summary.json`` beside it):

- ``llava-pretrain``: LLaVA-Pretrain 558K (``blip_laion_cc_sbu_558k.json`` + its ``images/``
  folders), the stage-1 image-caption pairs.
- ``llava-video``: LLaVA-Video-178K as released (``lmms-lab/LLaVA-Video-178K``): one folder per
  subset (``0_30_s_academic_v0_1``, ``2_3_m_youtube_v0_1``, ...) holding the caption, open-ended
  and multiple-choice files (``*cap*.json``, ``*oe*.json``, ``*mc*.json``, the dataset card's
  splits) and the videos unpacked from its ``*_videos_N.tar.gz``. A sample's ``video`` is relative
  to its subset folder (``academic_source/Charades/RW587.mp4``) or, failing that, to the root.
- ``llava``: any LLaVA-format JSON / JSON-lines (``image`` or ``video`` paths under a media root).

Every sample is checked (an object; turns ``{from: human|gpt|system, value: str}`` with an
assistant turn; one media path; exactly one placeholder for it: ``<image>`` for images, ``<video>``
or ``<image>`` for videos, written as ``<video>``; the media file present) and kept or dropped with
a reason; the counts are printed and written. Outputs are written to a temporary file and renamed:
an interrupted or failed conversion leaves no half-written file. ``mixture`` shows what a mixture
file draws, without loading a model.

The module imports nothing heavy at load (the CLI registers its commands before any of them runs,
and ``storm-vlm --help`` loads no torch): the training-data code is imported where it is used.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..limits import MAX_DATA_SAMPLES
from ..model_dir import share_files_like_umask

__all__ = [
    "ConversionSummary",
    "InputFile",
    "app",
    "convert",
    "llava_video_inputs",
    "normalize_sample",
]


def _error(message: str) -> Exception:
    """The trainer's :class:`~storm_vlm.train.data.DataError` (a ValueError: one line on the CLI)."""
    from .data import DataError

    return DataError(message)


# LLaVA-Video-178K's splits, as its dataset card globs them inside each subset folder
VIDEO_KINDS = {"caption": "*cap*.json", "open_ended": "*oe*.json", "multi_choice": "*mc*.json"}
EXAMPLES_PER_REASON = 5


@dataclass
class InputFile:
    """One annotation file and how its media paths resolve: candidate paths relative to the
    output's media root, the first that exists is written."""

    path: Path
    label: str  # shown in the summary (e.g. "0_30_s_academic_v0_1/caption")
    candidates: Callable[[str], list[str]]


@dataclass
class ConversionSummary:
    output: str
    media_root: str
    kept: int = 0
    dropped: int = 0
    by_media: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "media_root": self.media_root,
            "kept": self.kept,
            "dropped": self.dropped,
            "kept_by_media": dict(self.by_media),
            "dropped_by_reason": dict(self.by_reason),
            "examples": self.examples,
            "inputs": self.inputs,
        }


class Dropped(Exception):
    """A sample the converter leaves out: ``reason`` is the counted category, the message the detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def normalize_sample(
    sample: Any, default_id: str, media_root: Path, candidates: Callable[[str], list[str]], check_media: bool
) -> dict[str, Any]:
    """One annotation in the training format, or :class:`Dropped` saying why not.

    Returns ``{"id", "video"|"image" (path relative to media_root), "conversations"}`` plus the
    sample's ``data_source`` if it has one; the placeholder of a video is written as ``<video>``.
    """
    from ..tokens import IMAGE_TOKEN, VIDEO_TOKEN
    from .data import ROLES

    if not isinstance(sample, dict):
        raise Dropped("not an object", f"a {type(sample).__name__}, not a JSON object")
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise Dropped("malformed conversation", "`conversations` is not a non-empty list")
    conversations = []
    for turn in turns:
        role = turn.get("from") if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in ROLES or not isinstance(turn.get("value"), str):
            raise Dropped("malformed conversation", "a turn is not {from: human|gpt|system, value: str}")
        conversations.append({"from": role, "value": turn["value"]})
    if not any(ROLES[t["from"]] == "assistant" for t in conversations):
        raise Dropped("no assistant turn")
    if "video" in sample and "image" in sample:
        raise Dropped("both video and image")
    media = "video" if "video" in sample else "image" if "image" in sample else None
    text = "".join(t["value"] for t in conversations)
    videos, images = text.count(VIDEO_TOKEN), text.count(IMAGE_TOKEN)
    out: dict[str, Any] = {}
    raw_id = sample.get("id")
    out["id"] = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else default_id
    if media is None:
        if videos or images:
            raise Dropped("placeholder without media", f"{videos} <video> and {images} <image> but no media field")
    else:
        value = sample[media]
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, list):
            raise Dropped(f"multiple {media}s", f"{len(value)} {media} paths (one per sample is supported)")
        if not isinstance(value, str) or not value:
            raise Dropped("malformed media path", f"`{media}` is not a path string")
        if media == "image" and (images, videos) != (1, 0):
            found_text = f"found {images} <image> and {videos} <video>"
            raise Dropped("placeholder count", f"an image sample needs one <image>, {found_text}")
        if media == "video":
            if videos + images != 1:
                found_text = f"found {videos + images}"
                raise Dropped("placeholder count", f"a video sample needs one <video> (or <image>), {found_text}")
            for t in conversations:
                t["value"] = t["value"].replace(IMAGE_TOKEN, VIDEO_TOKEN)
        options = candidates(value)
        found = next((c for c in options if (media_root / c).is_file()), None) if check_media else options[0]
        if found is None:
            raise Dropped(f"missing {media}", f"{media_root / options[0]} does not exist")
        out[media] = found
    out["conversations"] = conversations
    if isinstance(sample.get("data_source"), str):
        out["data_source"] = sample["data_source"]
    return out


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file written under a temporary name beside ``path`` and renamed onto it when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        share_files_like_umask([tmp])  # mkstemp made it 0600
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def summary_path(out: Path) -> Path:
    """Where the summary of ``out`` goes: ``train.json`` -> ``train.summary.json``."""
    return out.with_name(f"{out.stem}.summary.json")


def convert(
    inputs: list[InputFile],
    media_root: Path,
    out: Path,
    check_media: bool = True,
    overwrite: bool = False,
    console: Console | None = None,
) -> ConversionSummary:
    """Convert ``inputs`` into one training file ``out`` (+ its summary); returns the counts.

    Raises :class:`DataError` (one line) for an unreadable input, an existing output without
    ``overwrite``, more than ``MAX_DATA_SAMPLES`` samples, or no sample kept; nothing is written then.
    """
    from .data import read_samples

    console = console or Console()
    if not inputs:
        raise _error("no input annotation file")
    for target in (out, summary_path(out)):
        if target.exists() and not overwrite:
            raise _error(f"{target} exists; pass --overwrite to replace it")
    summary = ConversionSummary(str(out), str(media_root))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with _atomic_file(out) as handle, progress:
        handle.write("[")
        first = True
        for item in inputs:
            samples = read_samples(item.path)
            kept, reasons = 0, Counter[str]()
            task = progress.add_task(item.label, total=len(samples))
            for i, sample in enumerate(samples):
                try:
                    row = normalize_sample(sample, f"{item.path.stem}-{i}", media_root, item.candidates, check_media)
                except Dropped as drop:
                    reasons[drop.reason] += 1
                    shown = summary.examples.setdefault(drop.reason, [])
                    if len(shown) < EXAMPLES_PER_REASON:
                        shown.append(f"{item.path}[{i}]: {drop}")
                else:
                    if summary.kept >= MAX_DATA_SAMPLES:
                        raise _error(f"{out}: more than {MAX_DATA_SAMPLES:,} samples; convert fewer inputs at once")
                    handle.write(("\n" if first else ",\n") + json.dumps(row, ensure_ascii=False))
                    first = False
                    kept += 1
                    summary.kept += 1
                    summary.by_media["video" if "video" in row else "image" if "image" in row else "text"] += 1
                if i % 1024 == 0:
                    progress.update(task, completed=i + 1)
            progress.update(task, completed=len(samples))
            dropped = sum(reasons.values())
            summary.dropped += dropped
            summary.by_reason.update(reasons)
            counts = {"kept": kept, "dropped": dropped, "by_reason": dict(reasons)}
            summary.inputs.append({"file": str(item.path), "label": item.label, **counts})
        handle.write("\n]\n")
        if summary.kept == 0:
            print_summary(console, summary)
            first_reason = next(iter(summary.examples.values()), ["(no sample)"])[0]
            raise _error(f"{out}: no sample kept ({summary.dropped} dropped; the first: {first_reason})")
    with _atomic_file(summary_path(out)) as handle:
        json.dump(summary.to_dict(), handle, indent=2)
        handle.write("\n")
    print_summary(console, summary)
    return summary


def print_summary(console: Console, summary: ConversionSummary) -> None:
    """Per input: kept and dropped; then the reasons with an example each."""
    table = Table(title=f"{summary.output} (media_root {summary.media_root})", title_justify="left")
    table.add_column("input")
    table.add_column("kept", justify="right")
    table.add_column("dropped", justify="right")
    table.add_column("why dropped")
    for row in summary.inputs:
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(row["by_reason"].items(), key=lambda x: -x[1]))
        table.add_row(row["label"], f"{row['kept']:,}", f"{row['dropped']:,}", why)
    table.add_row("[bold]total[/bold]", f"[bold]{summary.kept:,}[/bold]", f"[bold]{summary.dropped:,}[/bold]", "")
    console.print(table)
    media = ", ".join(f"{n:,} {kind}" for kind, n in sorted(summary.by_media.items()))
    if media:
        console.print(f"kept: {media}", markup=False, highlight=False)
    for reason, examples in summary.examples.items():
        console.print(f"  {reason}: {examples[0]}", markup=False, highlight=False, soft_wrap=True)


def _same_path(value: str) -> list[str]:
    return [value]


def llava_video_inputs(root: Path, subsets: list[str], kinds: list[str]) -> list[InputFile]:
    """LLaVA-Video-178K's annotation files under ``root``: the subset folders matching ``subsets``
    (shell patterns), their files of ``kinds`` (caption, open_ended, multi_choice)."""
    if not root.is_dir():
        raise _error(f"{root}: no such folder (the LLaVA-Video-178K download)")
    unknown = [k for k in kinds if k not in VIDEO_KINDS]
    if unknown or not kinds:
        raise _error(f"--kinds: unknown or no kind(s) {unknown}; choose from {', '.join(VIDEO_KINDS)}")
    inputs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(fnmatch.fnmatchcase(folder.name, pattern) for pattern in subsets):
            continue
        taken: set[Path] = set()
        for kind in kinds:
            for path in sorted(folder.glob(VIDEO_KINDS[kind])):
                if path in taken or not path.is_file():
                    continue
                taken.add(path)

                def candidates(value: str, subset: str = folder.name) -> list[str]:
                    return [f"{subset}/{value}", value]  # the tarballs unpack into the subset folder

                inputs.append(InputFile(path, f"{folder.name}/{kind}", candidates))
    if not inputs:
        patterns = ", ".join(VIDEO_KINDS[k] for k in kinds)
        raise _error(
            f"{root}: no LLaVA-Video-178K annotation files ({patterns}) in subset folders matching {', '.join(subsets)}"
        )
    return inputs


# -- the command line (registered as `storm-vlm data`) ---------------------------------------

app = typer.Typer(
    name="data",
    help="Convert the released datasets to the training format (checked, counted); show a mixture's draw.",
    no_args_is_help=True,
)
console = Console()

Out = Annotated[Path, typer.Option(help="Training JSON to write (a .summary.json is written beside it).")]
CheckMedia = Annotated[bool, typer.Option(help="Drop samples whose image or video file is missing.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output.")]


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@app.command("llava-pretrain")
def llava_pretrain(
    json_file: Annotated[Path, typer.Option("--json", help="blip_laion_cc_sbu_558k.json")],
    images: Annotated[Path, typer.Option(help="The folder its images.zip unpacks to (00000/..., 00001/...).")],
    out: Out,
    check_media: CheckMedia = True,
    overwrite: Overwrite = False,
) -> None:
    """LLaVA-Pretrain 558K (stage 1): image-caption pairs; media_root is the images folder."""
    if not images.is_dir():
        raise _error(f"--images {images}: no such folder")
    convert([InputFile(json_file, json_file.name, _same_path)], images, out, check_media, overwrite, console)
    console.print(f"wrote {out}: train with data.json={out} data.media_root={images}", markup=False)


@app.command("llava-video")
def llava_video(
    root: Annotated[Path, typer.Option(help="The LLaVA-Video-178K download (one folder per subset).")],
    out: Out,
    subsets: Annotated[
        str, typer.Option(help="Subset folders, comma-separated shell patterns (e.g. '1_2_m_*,2_3_m_*').")
    ] = "*",
    kinds: Annotated[str, typer.Option(help="Splits: caption, open_ended, multi_choice.")] = ",".join(VIDEO_KINDS),
    check_media: CheckMedia = True,
    overwrite: Overwrite = False,
) -> None:
    """LLaVA-Video-178K: caption, open-ended and multiple-choice files of its subsets; media_root is --root."""
    inputs = llava_video_inputs(root, _split(subsets) or ["*"], _split(kinds))
    convert(inputs, root, out, check_media, overwrite, console)
    console.print(f"wrote {out}: train with data.json={out} data.media_root={root}", markup=False)


@app.command("llava")
def llava(
    json_files: Annotated[list[Path], typer.Option("--json", help="LLaVA-format JSON / JSON-lines (repeatable).")],
    media_root: Annotated[Path, typer.Option(help="Folder the `image` / `video` paths are relative to.")],
    out: Out,
    check_media: CheckMedia = True,
    overwrite: Overwrite = False,
) -> None:
    """Any LLaVA-format data (e.g. LLaVA-665K, LLaVA-OneVision single-image files), checked and merged."""
    if not media_root.is_dir():
        raise _error(f"--media-root {media_root}: no such folder")
    inputs = [InputFile(path, path.name, _same_path) for path in json_files]
    convert(inputs, media_root, out, check_media, overwrite, console)
    console.print(f"wrote {out}: train with data.json={out} data.media_root={media_root}", markup=False)


@app.command("mixture")
def show_mixture(
    path: Annotated[Path, typer.Argument(help="Mixture YAML (configs/mixtures/).")],
    seed: Annotated[int, typer.Option(help="The recipe's seed, used when the mixture sets none.")] = 0,
) -> None:
    """What a mixture draws: samples per source (file size, drawn, frames), without loading a model."""
    from .data import read_samples
    from .mixture import draw_indices, load_mixture

    mixture = load_mixture(path)
    table = Table(title=str(path), title_justify="left")
    for column in ("source", "file", "samples in file", "drawn", "frames"):
        table.add_column(column, justify="right" if column in ("samples in file", "drawn", "frames") else "left")
    total = 0
    for position, source in enumerate(mixture.sources):
        size = len(read_samples(source.json))
        drawn = len(draw_indices(size, source, mixture.seed if mixture.seed is not None else seed, position))
        total += drawn
        frames = str(source.num_frames) if source.num_frames else "recipe's"
        table.add_row(source.name, source.json, f"{size:,}", f"{drawn:,}", frames)
    table.add_row("[bold]total[/bold]", "", "", f"[bold]{total:,}[/bold]", "")
    console.print(table)
