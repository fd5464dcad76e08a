"""Benchmark loaders (the maintainers' local layouts and lmms-eval's) and lmms-eval's prompt for each.

Every loader returns ``(items, problems)``: malformed entries are reported in ``problems`` and
skipped, never fatal; each problem is one line naming the file, the entry's index and the field
(``eval.json[3]: 'start' must be a number of seconds, got 'abc'``), or the subtitle file at fault.
When no entry is usable, :func:`load_benchmark` fails with the first problem. Layouts are documented
in ``docs/benchmarks.md``. Prompts follow lmms-eval v0.7.3 (``lmms_eval/tasks/<task>/utils.py`` and
the task yamls; these tasks are the same in v0.7.2), so numbers are comparable with what the field
reports; ``docs/evaluation.md`` compares every step. Subtitle files are bounded by
:data:`storm_vlm.limits.MAX_SUBTITLE_BYTES`, the text one question shows by
:data:`storm_vlm.limits.MAX_SUBTITLE_CHARS`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..limits import MAX_SUBTITLE_BYTES, MAX_SUBTITLE_CHARS
from .items import LETTERS, MCItem, letter_of

__all__ = ["BENCHMARKS", "Benchmark", "load_benchmark"]

Loaded = tuple[list[MCItem], list[str]]

# MVBench: task -> (annotation file, official video prefix, lmms-eval "video" branch prefix, bounded)
# From OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb (data_list) and lmms-eval tasks/mvbench/utils.py.
MVBENCH_TASKS: dict[str, tuple[str, str, str, bool]] = {
    "action_sequence": ("action_sequence.json", "star/Charades_v1_480", "star/Charades_segment", True),
    "action_prediction": ("action_prediction.json", "star/Charades_v1_480", "star/Charades_segment", True),
    "action_antonym": ("action_antonym.json", "ssv2_video", "ssv2_video_mp4", False),
    "fine_grained_action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos", False),  # noqa: E501
    "unexpected_action": ("unexpected_action.json", "FunQA_test/test", "FunQA_test/test", False),
    "object_existence": ("object_existence.json", "clevrer/video_validation", "clevrer/video_validation", False),
    "object_interaction": ("object_interaction.json", "star/Charades_v1_480", "star/Charades_segment", True),
    "object_shuffle": ("object_shuffle.json", "perception/videos", "perception/videos", False),
    "moving_direction": ("moving_direction.json", "clevrer/video_validation", "clevrer/video_validation", False),
    "action_localization": ("action_localization.json", "sta/sta_video", "sta/sta_video_segment", True),
    "scene_transition": ("scene_transition.json", "scene_qa/video", "scene_qa/video", False),
    "action_count": ("action_count.json", "perception/videos", "perception/videos", False),
    "moving_count": ("moving_count.json", "clevrer/video_validation", "clevrer/video_validation", False),
    "moving_attribute": ("moving_attribute.json", "clevrer/video_validation", "clevrer/video_validation", False),
    "state_change": ("state_change.json", "perception/videos", "perception/videos", False),
    "fine_grained_pose": ("fine_grained_pose.json", "nturgbd", "nturgbd_convert", False),
    "character_order": ("character_order.json", "perception/videos", "perception/videos", False),
    "egocentric_navigation": ("egocentric_navigation.json", "vlnqa", "vlnqa", False),
    "episodic_reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment", True),
    "counterfactual_inference": ("counterfactual_inference.json", "clevrer/video_validation", "clevrer/video_validation", False),  # noqa: E501
}  # fmt: skip

MLVU_TASKS = {
    "1_plotQA": "plotQA",
    "2_needle": "needle",
    "3_ego": "ego",
    "4_count": "count",
    "5_order": "order",
    "6_anomaly_reco": "anomaly_reco",
    "7_topic_reasoning": "topic_reasoning",
}
VIDEOMME_INSTRUCTION = (  # lmms-eval keeps "and the subtitles" in the no-subtitle task too
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
DIRECT = "Answer with the option's letter from the given choices directly."
MLVU_POST_PROMPT = "\nOnly give the best option.\nBest option: ("  # mlvu_dev.yaml, lmms_eval_specific_kwargs.default
VIDEOMME_SUBTITLE_INTRO = "This video's subtitles are listed below: \n"  # videomme_doc_to_text_subtitle
VIDEOMME_NO_SUBTITLES = "No subtitles available"  # its text for a video without a subtitle file
VIDEOMME_SUBTITLE_END = "The best answer is:"  # the w_subtitle prompt's fixed ending (its post_prompt is unused)
# lmms-eval chooses subtitle lines by the times of a fixed number of uniformly spaced frames, whatever
# the model is given: frame_num in videomme_w_subtitle.yaml, max_num_frames' default in longvideobench utils
VIDEOMME_SUBTITLE_FRAMES = 32
LONGVIDEOBENCH_SUBTITLE_FRAMES = 16
_SRT_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')  # the only text lmms-eval keeps of a cue
_INLINE_OPTION = re.compile(r"^\(([A-Z])\) ?(.*)$")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq  # optional, untyped (ignore_missing_imports in pyproject)
    except ImportError:
        raise ValueError(f"{path}: reading parquet needs pyarrow (pip install 'storm-vlm[benchmarks]')") from None
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None


def _read_rows(path: Path) -> list[Any]:
    """The rows of a ``.parquet``, ``.jsonl`` (one object a line) or ``.json`` (a list) file."""
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err})") from None
        return rows
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows")
    return data


class FieldError(ValueError):
    """One field of an entry (or the subtitle file it names) is missing or of the wrong kind; the
    message names the field or the file."""


def _field(entry: Any, key: str) -> Any:
    if not isinstance(entry, dict):
        raise FieldError(f"the entry is a JSON {type(entry).__name__}, not an object")
    if key not in entry:
        raise FieldError(f"missing field {key!r}")
    return entry[key]


def _text(entry: Any, key: str, default: str | None = None) -> str:
    """A string field (numbers are accepted as their text, as benchmarks store ids); ``default``
    when given and the field is absent or null."""
    if default is not None and isinstance(entry, dict) and entry.get(key) is None:
        return default
    value = _field(entry, key)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FieldError(f"{key!r} must be a string, got {value!r}")
    return str(value)


def _path(entry: Any, key: str) -> str:
    value = _field(entry, key)
    if not isinstance(value, str) or not value:
        raise FieldError(f"{key!r} must be a file path (a string), got {value!r}")
    return value


def _options(entry: Any, key: str) -> list[str]:
    value = _field(entry, key)
    if not isinstance(value, list) or any(isinstance(o, bool) or not isinstance(o, str | int | float) for o in value):
        raise FieldError(f"{key!r} must be a list of strings, got {value!r}")
    return [str(o) for o in value]


def _seconds(entry: Any, key: str) -> float | None:
    """An optional time in seconds: absent or null is None, anything but a finite number >= 0 a problem."""
    if not isinstance(entry, dict) or entry.get(key) is None:  # (a non-object entry fails on its other fields)
        return None
    value = entry[key]
    if isinstance(value, str):  # some annotation files store times as text ("12.5")
        try:
            value = float(value)
        except ValueError:
            raise FieldError(f"{key!r} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
        raise FieldError(f"{key!r} must be a number of seconds (>= 0), got {value!r}")
    return float(value)


def _window(entry: Any, start_key: str = "start", end_key: str = "end") -> tuple[float | None, float | None]:
    start, end = _seconds(entry, start_key), _seconds(entry, end_key)
    if start is not None and end is not None and end <= start:
        raise FieldError(f"{end_key!r} ({end}) must be after {start_key!r} ({start})")
    return start, end


def _choice(entry: Any, key: str, num_options: int) -> str:
    """An option given by its 0-based index."""
    value = _field(entry, key)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_options:
        raise FieldError(f"{key!r} must be an option index from 0 to {num_options - 1}, got {value!r}")
    return LETTERS[value]


def _entry_item(
    problems: list[str],
    where: str,
    build: Callable[[], MCItem],
) -> MCItem | None:
    try:
        item = build()
    except FieldError as err:
        problems.append(f"{where}: {err}")
        return None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        problems.append(f"{where}: malformed entry ({type(err).__name__}: {err})")
        return None
    if not 2 <= len(item.options) <= len(LETTERS) or item.answer not in LETTERS[: len(item.options)]:
        problems.append(f"{where}: answer {item.answer!r} does not match the {len(item.options)} options")
        return None
    return item


def _duration_bucket(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    for limit, name in ((180, "0-3 min"), (600, "3-10 min"), (1800, "10-30 min")):
        if seconds < limit:
            return name
    return "30+ min"


# -- subtitles -----------------------------------------------------------------------------------
def _subtitle_file(path: Path) -> str:
    """A subtitle file's text (UTF-8, newlines as ``\\n``, as Python's text mode reads it), bounded."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FieldError(f"{path}: subtitle file not found") from None
    if size > MAX_SUBTITLE_BYTES:
        raise FieldError(
            f"{path}: subtitle file of {size} bytes, over the {MAX_SUBTITLE_BYTES} allowed (MAX_SUBTITLE_BYTES)"
        )
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        raise FieldError(f"{path}: subtitle file is not UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise FieldError(f"{path}: subtitle file unreadable ({err.strerror or err})") from None


def _bounded(text: str, path: Path) -> str:
    if len(text) > MAX_SUBTITLE_CHARS:
        raise FieldError(
            f"{path}: the subtitle lines chosen for the question hold {len(text)} characters, over the "
            f"{MAX_SUBTITLE_CHARS} allowed (MAX_SUBTITLE_CHARS)"
        )
    return text


def _srt_seconds(stamp: str, path: Path, cue: int) -> float:
    """``HH:MM:SS,mmm`` as lmms-eval's ``parse_subtitle_time`` reads it."""
    try:
        h, m, s_ms = stamp.split(":")
        sec, ms = s_ms.split(",")
        return int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000
    except ValueError:
        raise FieldError(f"{path}: cue {cue}: bad time {stamp.strip()!r} (expected HH:MM:SS,mmm)") from None


def parse_srt(path: Path) -> list[tuple[float, float, str]]:
    """A Video-MME ``.srt`` as lmms-eval's ``load_subtitles`` reads it: blocks split at blank lines,
    blocks under 3 lines skipped, the text lines joined by spaces, a repeated time range keeping
    the last text (lmms-eval keys a dict by it)."""
    cues: dict[tuple[float, float], str] = {}
    for n, block in enumerate(_subtitle_file(path).split("\n\n"), 1):
        lines = block.split("\n")
        if not block.strip() or len(lines) < 3:
            continue
        span = lines[1].split(" --> ")
        if len(span) < 2:
            raise FieldError(f"{path}: cue {n}: bad time range {lines[1].strip()!r} (expected 'start --> end')")
        cues[(_srt_seconds(span[0], path, n), _srt_seconds(span[1], path, n))] = " ".join(lines[2:])
    return [(start, end, text) for (start, end), text in cues.items()]


def _frame_count_and_fps(video: Path) -> tuple[int, float] | None:
    """Frame count and rate from the container, as OpenCV reports them to lmms-eval (``nb_frames``,
    else duration x rate; the guessed rate); ``None`` when the file cannot be opened."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            fps = float(stream.guessed_rate or stream.average_rate or 0)
            frames = int(stream.frames or 0)
            if frames <= 0 and fps > 0:
                seconds = (
                    float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
                )
                frames = int(seconds * fps + 0.5)
    except (OSError, IndexError, ValueError, av.error.FFmpegError):
        return None
    return (frames, fps) if frames > 0 and fps > 0 else None


def videomme_subtitle_lines(cues: list[tuple[float, float, str]], total_frames: int, fps: float) -> list[str]:
    """The subtitle lines lmms-eval's ``videomme_doc_to_text_subtitle`` shows: the cues covering any
    of ``VIDEOMME_SUBTITLE_FRAMES`` uniformly spaced frame indices (``np.linspace(0, total - 1, 32)``,
    cue bounds as frame indices ``int(seconds * fps)``), in its order (a ``set`` of cue indices), each
    cue's first ``<font color="white" size=".72c">`` text, cues without one dropped."""
    import numpy as np

    by_frame = [(int(start * fps), int(end * fps), text) for start, end, text in cues]
    chosen: list[int] = []
    for frame in np.linspace(0, total_frames - 1, VIDEOMME_SUBTITLE_FRAMES, dtype=int).tolist():
        chosen += [i for i, (first, last, _) in enumerate(by_frame) if first <= frame < last]
    lines = []
    for i in list(set(chosen)):  # lmms-eval's order, kept on purpose
        found = _SRT_FONT.findall(by_frame[i][2])
        if found:
            lines.append(found[0])
    return lines


def _lvb_seconds(stamp: Any, path: Path, k: int) -> float:
    """``H:M:S.fff`` as lmms-eval's ``timestamp_to_seconds`` reads it."""
    try:
        h, m, s = str(stamp).split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        raise FieldError(f"{path}: entry {k}: bad time {stamp!r} (expected H:M:S.fff)") from None


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def parse_lvb_subtitles(path: Path) -> list[tuple[float, float | None, str]]:
    """A LongVideoBench subtitle JSON: a list of ``{"timestamp": [start, end], "text"}`` (seconds)
    or ``{"start": "H:M:S.fff", "end", "line"}``; an end that is not a float is ``None`` (lmms-eval
    puts the video's duration there)."""
    try:
        data = json.loads(_subtitle_file(path))
    except json.JSONDecodeError as err:
        raise FieldError(f"{path}: subtitle file is not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise FieldError(f"{path}: subtitle file must be a JSON list, got a {type(data).__name__}")
    cues: list[tuple[float, float | None, str]] = []
    for k, cue in enumerate(data):
        if not isinstance(cue, dict):
            raise FieldError(f"{path}: entry {k}: expected an object, got {cue!r}"[:300])
        if "timestamp" in cue:
            span, text = cue["timestamp"], cue.get("text")
            if not isinstance(span, list) or len(span) != 2 or not _number(span[0]):
                raise FieldError(f"{path}: entry {k}: 'timestamp' must be [start, end] in seconds, got {span!r}")
            end = float(span[1]) if isinstance(span[1], float) and math.isfinite(span[1]) else None
            start = float(span[0])
        else:
            if "start" not in cue or "end" not in cue:
                raise FieldError(f"{path}: entry {k}: needs 'timestamp', or 'start' and 'end'")
            start, end, text = _lvb_seconds(cue["start"], path, k), _lvb_seconds(cue["end"], path, k), cue.get("line")
        if not isinstance(text, str):
            raise FieldError(f"{path}: entry {k}: the text ('text' or 'line') must be a string, got {text!r}"[:300])
        cues.append((start, end, text))
    return cues


def longvideobench_subtitle_lines(
    cues: list[tuple[float, float | None, str]], duration: float, offset: float
) -> list[str]:
    """The subtitle lines lmms-eval's ``insert_subtitles_into_frames`` keeps (``longvideobench_val_i``):
    times shifted by ``starting_timestamp_for_subtitles``, a cue shorter than 1 s widened to 1 s around
    its middle, kept when one of ``LONGVIDEOBENCH_SUBTITLE_FRAMES`` frame times lies strictly inside."""
    n = LONGVIDEOBENCH_SUBTITLE_FRAMES
    times = [duration / n * i for i in range(n)] if duration > n else [float(i) for i in range(int(duration))]
    lines = []
    for start, end, text in cues:
        start, stop = start - offset, (duration if end is None else end) - offset
        middle = (start + stop) / 2
        if stop - start < 1:
            start, stop = middle - 0.5, middle + 0.5
        if any(start < t < stop for t in times):
            lines.append(text)
    return lines


def _cached(cache: dict[Path, Any], path: Path, parse: Callable[[Path], Any]) -> Any:
    """Parse each subtitle file once (questions share videos); a bad file fails every question using it."""
    if path not in cache:
        try:
            cache[path] = parse(path)
        except FieldError as err:
            cache[path] = err
    if isinstance(cache[path], FieldError):
        raise cache[path]
    return cache[path]


def _subtitle_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: subtitle folder not found ({what})")
    return folder


# -- loaders -----------------------------------------------------------------------------------
def load_mvbench(root: Path) -> Loaded:
    """``root/json/<task>.json`` + video folders (official layout or lmms-eval's ``video`` branch)."""
    items: list[MCItem] = []
    problems: list[str] = []
    found = False
    for task, (json_name, official, lmms, bounded) in MVBENCH_TASKS.items():
        path = root / "json" / json_name
        if not path.is_file():
            continue
        found = True
        prefix, use_bounds = (official, bounded) if (root / official).exists() else (lmms, False)
        for i, entry in enumerate(_read_json(path)):

            def build(entry=entry, i=i, task=task, prefix=prefix, use_bounds=use_bounds) -> MCItem:
                options = _options(entry, "candidates")
                start, end = _window(entry) if use_bounds else (None, None)
                return MCItem(
                    id=f"{task}/{i}",
                    task=task,
                    video=str(root / prefix / _path(entry, "video")),
                    question=_text(entry, "question"),
                    options=options,
                    answer=letter_of(options, _text(entry, "answer")),
                    start=start,
                    end=end,
                    extra={"frame_fps": 3.0} if task == "episodic_reasoning" else {},
                    benchmark="mvbench",
                )

            item = _entry_item(problems, f"{json_name}[{i}]", build)
            if item is not None:
                items.append(item)
    if not found:
        raise FileNotFoundError(f"{root}: no MVBench annotation files (expected json/<task>.json)")
    return items, problems


def _mlvu_inline(question: str, options: list[str]) -> str:
    """An MLVU question with its options inline, as the lmms-eval rows (``sy1998/MLVU_dev``) hold them."""
    return question + "\n" + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))


def _split_inline(question: str) -> tuple[str, list[str]]:
    """The stem and the ``(A) ...`` option lines of a question that carries its options inline."""
    stem: list[str] = []
    options: list[str] = []
    for line in question.split("\n"):
        match = _INLINE_OPTION.match(line.strip())
        if match and len(options) < len(LETTERS) and match.group(1) == LETTERS[len(options)]:
            options.append(match.group(2).strip())
        elif not options:
            stem.append(line)
        elif line.strip():
            raise FieldError(f"'question' has text after its options: {line.strip()!r}"[:300])
    return "\n".join(stem).strip(), options


def _mlvu_video(root: Path, name: str) -> Path:
    """``video_name`` under the folder (lmms-eval joins it to its cache folder), ``video/`` or
    ``videos/``; a name without an extension tries ``.mp4`` too."""
    folders = (root, root / "video", root / "videos")
    candidates = [f / name for f in folders]
    if not Path(name).suffix:
        candidates += [f / f"{name}.mp4" for f in folders]
    return next((c for c in candidates if c.exists()), candidates[0])


def _mlvu_row_files(root: Path) -> list[Path]:
    """lmms-eval's layout: the rows of ``sy1998/MLVU_dev`` as parquet / jsonl / json files in the folder
    or its ``mlvu/`` subfolder (where the dataset keeps its parquet)."""
    files: list[Path] = []
    for folder in (root, root / "mlvu"):
        if folder.is_dir():
            files += sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in (".parquet", ".jsonl", ".json"))
    return files


def mlvu_layout(root: Path) -> str:
    """``"original"`` (``json/<n_task>.json``, MLVU's own release) or ``"lmms-eval"`` (the HF rows)."""
    if any((root / "json" / f"{stem}.json").is_file() for stem in MLVU_TASKS):
        return "original"
    if _mlvu_row_files(root):
        return "lmms-eval"
    raise FileNotFoundError(
        f"{root}: no MLVU annotation files (expected json/1_plotQA.json, ... or lmms-eval's rows: "
        "*.parquet / *.jsonl / *.json with video_name, question, answer, task_type)"
    )


def load_mlvu(root: Path) -> Loaded:
    """MLVU dev, multiple choice, in either layout (:func:`mlvu_layout`): ``root/json/<n_task>.json`` +
    ``root/video/<n_task>/<video>``, or lmms-eval's rows + ``root/<video_name>``."""
    if mlvu_layout(root) == "lmms-eval":
        return _load_mlvu_rows(root)
    items: list[MCItem] = []
    problems: list[str] = []
    for stem, task in MLVU_TASKS.items():
        path = root / "json" / f"{stem}.json"
        if not path.is_file():
            continue
        folder = next((f for f in (root / "video" / stem, root / "video" / task) if f.is_dir()), root / "video" / stem)
        for i, entry in enumerate(_read_json(path)):

            def build(entry=entry, i=i, task=task, folder=folder) -> MCItem:
                options = _options(entry, "candidates")
                duration = _seconds(entry, "duration")
                question = _text(entry, "question")
                return MCItem(
                    id=f"{task}/{i}",
                    task=_text(entry, "question_type", task),
                    video=str(folder / _path(entry, "video")),
                    question=question,
                    options=options,
                    answer=letter_of(options, _text(entry, "answer")),
                    duration=duration,
                    duration_group=_duration_bucket(duration),
                    extra={"question_as_given": _mlvu_inline(question, options), "layout": "original"},
                    benchmark="mlvu",
                )

            item = _entry_item(problems, f"{stem}.json[{i}]", build)
            if item is not None:
                items.append(item)
    return items, problems


def _load_mlvu_rows(root: Path) -> Loaded:
    """lmms-eval's ``mlvu_dev`` rows: ``video_name``, ``question`` (options inline), ``answer`` (a
    letter), ``task_type``; ``candidates``, ``duration`` and ``question_id`` when present."""
    items: list[MCItem] = []
    problems: list[str] = []
    n = 0
    for path in _mlvu_row_files(root):
        for i, entry in enumerate(_read_rows(path)):

            def build(entry=entry, n=n) -> MCItem:
                raw = _text(entry, "question")
                if isinstance(entry, dict) and entry.get("candidates") is not None:
                    options = _options(entry, "candidates")
                    try:  # the stem only names the question in results; the row's text is what is asked
                        stem = _split_inline(raw)[0]
                    except FieldError:
                        stem = raw
                else:
                    stem, options = _split_inline(raw)
                if not options:
                    raise FieldError("'question' has no '(A) ...' option lines and there is no 'candidates' list")
                task = _text(entry, "task_type")
                duration = _seconds(entry, "duration")
                return MCItem(
                    id=_text(entry, "question_id", f"{task}/{n}"),
                    task=task,
                    video=str(_mlvu_video(root, _path(entry, "video_name"))),
                    question=stem or raw,
                    options=options,
                    answer=_text(entry, "answer").strip(),
                    duration=duration,
                    duration_group=_duration_bucket(duration),
                    extra={"question_as_given": raw, "layout": "lmms-eval"},
                    benchmark="mlvu",
                )

            item = _entry_item(problems, f"{path.name}[{i}]", build)
            if item is not None:
                items.append(item)
            n += 1
    return items, problems


def _lvb_options(entry: Any) -> list[str]:
    """``candidates`` (lvb_val.json) or ``option0`` ... ``option4`` (the HF rows lmms-eval reads), "N/A" left out."""
    if isinstance(entry, dict) and "candidates" not in entry and "option0" in entry:
        values = [entry[f"option{i}"] for i in range(5) if entry.get(f"option{i}") is not None]
        return [c for c in _options({"options": values}, "options") if c != "N/A"]
    return [c for c in _options(entry, "candidates") if c != "N/A"]


def load_longvideobench(root: Path, subtitles: Path | None = None) -> Loaded:
    """``root/lvb_val.json`` + ``root/videos/<video_path>`` (answers as ``correct_choice`` index).

    With ``subtitles`` (a folder holding each entry's ``subtitle_path``), every item gets the lines
    lmms-eval's ``longvideobench_val_i`` shows (:func:`longvideobench_subtitle_lines`).
    """
    items: list[MCItem] = []
    problems: list[str] = []
    data = _read_json(root / "lvb_val.json")
    if not isinstance(data, list):
        raise ValueError(f"{root / 'lvb_val.json'}: expected a JSON list of questions")
    if subtitles is not None:
        _subtitle_folder(subtitles, "LongVideoBench's subtitles.tar unpacked there")
    cache: dict[Path, Any] = {}
    for i, entry in enumerate(data):

        def build(entry=entry, i=i) -> MCItem:
            options = _lvb_options(entry)
            duration = _seconds(entry, "duration")
            group = _text(entry, "duration_group") if entry.get("duration_group") is not None else None
            text = None
            if subtitles is not None:
                path = subtitles / _path(entry, "subtitle_path")
                offset = _seconds(entry, "starting_timestamp_for_subtitles")
                if duration is None or offset is None:
                    raise FieldError("subtitles need 'duration' and 'starting_timestamp_for_subtitles'")
                cues = _cached(cache, path, parse_lvb_subtitles)
                text = _bounded("\n".join(longvideobench_subtitle_lines(cues, duration, offset)), path)
            return MCItem(
                id=_text(entry, "id", str(i)),
                task=_text(entry, "question_category", "longvideobench"),
                video=str(root / "videos" / _path(entry, "video_path")),
                question=_text(entry, "question"),
                options=options,
                answer=_choice(entry, "correct_choice", len(options)),
                duration=duration,
                duration_group=f"{group}s" if group is not None else _duration_bucket(duration),
                benchmark="longvideobench",
                subtitles=text,
            )

        item = _entry_item(problems, f"lvb_val.json[{i}]", build)
        if item is not None:
            items.append(item)
    return items, problems


def _videomme_rows(root: Path) -> list[dict[str, Any]]:
    for candidate in (root / "videomme" / "test-00000-of-00001.parquet", root / "test-00000-of-00001.parquet"):
        if candidate.is_file():
            return _read_parquet(candidate)
    return _read_json(root / "videomme.json")


def _videomme_subtitles(folder: Path, vid: str, video: Path, cache: dict[Path, Any]) -> tuple[str, str]:
    """The subtitle text lmms-eval's ``videomme_w_subtitle`` shows for a video, and how it was found."""
    path = folder / f"{vid}.srt"
    if not path.exists():
        return VIDEOMME_NO_SUBTITLES, "no subtitle file"
    cues = _cached(cache, path, parse_srt)
    shape = _cached(cache, video, _frame_count_and_fps)
    if shape is None:  # the run reports the unreadable video for this question; no frame times to choose by
        return "", "video unreadable: no lines chosen"
    return _bounded("\n".join(videomme_subtitle_lines(cues, *shape)), path), str(path.name)


def load_videomme(root: Path, subtitles: Path | None = None) -> Loaded:
    """``root/videomme/test-00000-of-00001.parquet`` (or ``root/videomme.json``) + ``root/data/<videoID>.mp4``.

    With ``subtitles`` (a folder of ``<videoID>.srt``), every item gets the lines lmms-eval's
    ``videomme_w_subtitle`` shows (:func:`videomme_subtitle_lines`; "No subtitles available" without a file).
    """
    items: list[MCItem] = []
    problems: list[str] = []
    if subtitles is not None:
        _subtitle_folder(subtitles, "Video-MME's subtitle.zip unpacked there")
    cache: dict[Path, Any] = {}
    for i, entry in enumerate(_videomme_rows(root)):

        def build(entry=entry, i=i) -> MCItem:
            options = _options(entry, "options")
            texts = [o[3:] if len(o) > 2 and o[1] == "." and o[0] in LETTERS else o for o in options]
            vid = _text(entry, "videoID")
            candidates = [root / "data" / f"{vid}{ext}" for ext in (".mp4", ".MP4", ".mkv")]
            video = next((c for c in candidates if c.exists()), candidates[0])
            extra: dict[str, Any] = {"options_as_given": options}
            text = None
            if subtitles is not None:
                text, extra["subtitle_source"] = _videomme_subtitles(subtitles, vid, video, cache)
            return MCItem(
                id=_text(entry, "question_id"),
                task=_text(entry, "task_type", "videomme"),
                video=str(video),
                question=_text(entry, "question"),
                options=texts,
                answer=_text(entry, "answer").strip(),
                duration_group=_text(entry, "duration") if entry.get("duration") else None,
                extra=extra,
                benchmark="videomme",
                subtitles=text,
            )

        item = _entry_item(problems, f"videomme[{i}]", build)
        if item is not None:
            items.append(item)
    return items, problems


def load_mc_json(path: Path) -> Loaded:
    """A list of ``{id?, video, question, options, answer, task?, start?, end?, duration?}``.

    ``answer`` may be an upper-case letter, an option index or the option text; video paths are relative to
    the JSON file's folder.
    """
    base = path.parent
    items: list[MCItem] = []
    problems: list[str] = []
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions")
    for i, entry in enumerate(data):

        def build(entry=entry, i=i) -> MCItem:
            options = _options(entry, "options")
            answer = _field(entry, "answer")
            if isinstance(answer, int) and not isinstance(answer, bool):
                letter = _choice(entry, "answer", len(options))
            elif isinstance(answer, str) and answer.strip() in LETTERS[: len(options)]:
                letter = answer.strip()  # an upper-case option letter
            else:
                letter = letter_of(options, _text(entry, "answer"))
            start, end = _window(entry)
            duration = _seconds(entry, "duration")
            group = _text(entry, "duration_group") if entry.get("duration_group") is not None else None
            return MCItem(
                id=_text(entry, "id", str(i)),
                task=_text(entry, "task", "mc"),
                video=str(base / _path(entry, "video")),
                question=_text(entry, "question"),
                options=options,
                answer=letter,
                start=start,
                end=end,
                duration=duration,
                duration_group=group or _duration_bucket(duration),
            )

        item = _entry_item(problems, f"{path}[{i}]", build)
        if item is not None:
            items.append(item)
    return items, problems


# -- prompts (lmms-eval v0.7.3) ----------------------------------------------------------------
def prompt_mvbench(item: MCItem) -> str:
    options = "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(item.options))
    return f"Question:{item.question}\nOption:\n{options}Only give the best option.\n"


def prompt_mlvu(item: MCItem) -> str:
    """``pre_prompt + question + post_prompt`` (``mlvu_doc_to_text``): the row's question, options inline."""
    given = item.extra.get("question_as_given") or _mlvu_inline(item.question, item.options)
    return f"{given}{MLVU_POST_PROMPT}"


def prompt_longvideobench(item: MCItem) -> str:
    """``longvideobench_doc_to_text``; with subtitles, the lines ``longvideobench_val_i`` interleaves
    with its frames come first, without the ``<image>`` markers (the video is given whole)."""
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    body = f"{item.question}\n{options}\n{DIRECT}\n"
    return f"{item.subtitles}\n{body}" if item.subtitles else body


def prompt_videomme(item: MCItem) -> str:
    """``videomme_doc_to_text``, or ``videomme_doc_to_text_subtitle`` when the item has subtitles."""
    options = item.extra.get("options_as_given") or [f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)]
    question = f"{VIDEOMME_INSTRUCTION}\n{item.question}\n" + "\n".join(options)
    if item.subtitles is None:
        return f"{question}\n\n{DIRECT}"
    return f"{VIDEOMME_SUBTITLE_INTRO}{item.subtitles}\n{question}\n{VIDEOMME_SUBTITLE_END}"


def prompt_generic(item: MCItem) -> str:
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return f"Question: {item.question}\n{options}\n{DIRECT}"


class Benchmark:
    """A benchmark's loader and prompt, and the number its papers report: ``"overall"`` accuracy, or
    ``"task_mean"`` (MLVU's M-Avg: the mean of the per-task accuracies). ``subtitles``: the folder
    under the data root its subtitle files live in by default (its loader takes that folder), or
    None for a benchmark asked without subtitles."""

    def __init__(
        self,
        name: str,
        loader: Callable[..., Loaded],
        prompt: Callable[[MCItem], str],
        headline: str = "overall",
        subtitles: str | None = None,
    ) -> None:
        self.name, self.loader, self.prompt, self.headline = name, loader, prompt, headline
        self.subtitles = subtitles


BENCHMARKS = {
    "mvbench": Benchmark("mvbench", load_mvbench, prompt_mvbench),
    "mlvu": Benchmark("mlvu", load_mlvu, prompt_mlvu, headline="task_mean"),
    "longvideobench": Benchmark("longvideobench", load_longvideobench, prompt_longvideobench),
    "videomme": Benchmark("videomme", load_videomme, prompt_videomme),
    # lmms-eval's videomme_w_subtitle and longvideobench_val_i: subtitle lines chosen by frame times
    "videomme_w_subtitle": Benchmark("videomme_w_subtitle", load_videomme, prompt_videomme, subtitles="subtitle"),
    "longvideobench_w_subtitle": Benchmark(
        "longvideobench_w_subtitle", load_longvideobench, prompt_longvideobench, subtitles="subtitles"
    ),
    "mc-json": Benchmark("mc-json", load_mc_json, prompt_generic),
    # the synthetic suite's models are trained on the bare question (free-form answers): ask the same way;
    # the parsed answer is the option whose text the output names
    "synthetic": Benchmark("synthetic", lambda root: load_mc_json(root / "eval.json"), lambda item: item.question),
}


def load_benchmark(
    name: str, data_root: str | Path, subtitles: str | Path | None = None
) -> tuple[Benchmark, list[MCItem], list[str]]:
    """Load a benchmark's questions. ``subtitles``: the subtitle folder of a ``*_w_subtitle`` benchmark
    when it is not the default (``DATA_ROOT/subtitle`` for Video-MME, ``DATA_ROOT/subtitles`` for
    LongVideoBench)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    root = Path(data_root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data root not found")
    bench = BENCHMARKS[name]
    if bench.subtitles is None:
        if subtitles is not None:
            with_subs = ", ".join(n for n, b in BENCHMARKS.items() if b.subtitles)
            raise ValueError(f"{name} is asked without subtitles; subtitles go with {with_subs}")
        items, problems = bench.loader(root)
    else:
        items, problems = bench.loader(root, Path(subtitles) if subtitles is not None else root / bench.subtitles)
    if not items:
        first = f"; the first: {problems[0]}" if problems else ""
        raise ValueError(f"{root}: no usable {name} questions ({len(problems)} malformed{first})")
    return bench, items, problems
