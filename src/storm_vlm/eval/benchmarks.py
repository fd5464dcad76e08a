"""Benchmark loaders (the maintainers' local layouts) and lmms-eval's prompt for each.

Every loader returns ``(items, problems)``: malformed entries are reported in ``problems`` and
skipped, never fatal; each problem is one line naming the file, the entry's index and the field
(``eval.json[3]: 'start' must be a number of seconds, got 'abc'``). When no entry is usable,
:func:`load_benchmark` fails with the first problem. Layouts are documented in ``docs/benchmarks.md``. Prompts follow
lmms-eval v0.7.2 (``lmms_eval/tasks/<task>/utils.py`` and the task yamls), so numbers are
comparable with what the field reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


class FieldError(ValueError):
    """One field of an entry is missing or of the wrong kind; the message names the field."""


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
                )

            item = _entry_item(problems, f"{json_name}[{i}]", build)
            if item is not None:
                items.append(item)
    if not found:
        raise FileNotFoundError(f"{root}: no MVBench annotation files (expected json/<task>.json)")
    return items, problems


def load_mlvu(root: Path) -> Loaded:
    """``root/json/<n_task>.json`` (MLVU dev, multiple choice) + ``root/video/<n_task>/<video>``."""
    items: list[MCItem] = []
    problems: list[str] = []
    found = False
    for stem, task in MLVU_TASKS.items():
        path = root / "json" / f"{stem}.json"
        if not path.is_file():
            continue
        found = True
        folder = next((f for f in (root / "video" / stem, root / "video" / task) if f.is_dir()), root / "video" / stem)
        for i, entry in enumerate(_read_json(path)):

            def build(entry=entry, i=i, task=task, folder=folder) -> MCItem:
                options = _options(entry, "candidates")
                duration = _seconds(entry, "duration")
                return MCItem(
                    id=f"{task}/{i}",
                    task=_text(entry, "question_type", task),
                    video=str(folder / _path(entry, "video")),
                    question=_text(entry, "question"),
                    options=options,
                    answer=letter_of(options, _text(entry, "answer")),
                    duration=duration,
                    duration_group=_duration_bucket(duration),
                )

            item = _entry_item(problems, f"{stem}.json[{i}]", build)
            if item is not None:
                items.append(item)
    if not found:
        raise FileNotFoundError(f"{root}: no MLVU annotation files (expected json/1_plotQA.json, ...)")
    return items, problems


def load_longvideobench(root: Path) -> Loaded:
    """``root/lvb_val.json`` + ``root/videos/<video_path>`` (answers as ``correct_choice`` index)."""
    items: list[MCItem] = []
    problems: list[str] = []
    for i, entry in enumerate(_read_json(root / "lvb_val.json")):

        def build(entry=entry, i=i) -> MCItem:
            options = [c for c in _options(entry, "candidates") if c != "N/A"]
            duration = _seconds(entry, "duration")
            group = _text(entry, "duration_group") if entry.get("duration_group") is not None else None
            return MCItem(
                id=_text(entry, "id", str(i)),
                task=_text(entry, "question_category", "longvideobench"),
                video=str(root / "videos" / _path(entry, "video_path")),
                question=_text(entry, "question"),
                options=options,
                answer=_choice(entry, "correct_choice", len(options)),
                duration=duration,
                duration_group=f"{group}s" if group is not None else _duration_bucket(duration),
            )

        item = _entry_item(problems, f"lvb_val.json[{i}]", build)
        if item is not None:
            items.append(item)
    return items, problems


def _videomme_rows(root: Path) -> list[dict[str, Any]]:
    for candidate in (root / "videomme" / "test-00000-of-00001.parquet", root / "test-00000-of-00001.parquet"):
        if candidate.is_file():
            try:
                import pyarrow.parquet as pq  # optional, untyped (ignore_missing_imports in pyproject)
            except ImportError:
                need = "reading parquet needs pyarrow (pip install 'storm-vlm[benchmarks]')"
                raise ValueError(f"{candidate}: {need}") from None
            return pq.read_table(candidate).to_pylist()
    return _read_json(root / "videomme.json")


def load_videomme(root: Path) -> Loaded:
    """``root/videomme/test-00000-of-00001.parquet`` (or ``root/videomme.json``) + ``root/data/<videoID>.mp4``."""
    items: list[MCItem] = []
    problems: list[str] = []
    for i, entry in enumerate(_videomme_rows(root)):

        def build(entry=entry, i=i) -> MCItem:
            options = _options(entry, "options")
            texts = [o[3:] if len(o) > 2 and o[1] == "." and o[0] in LETTERS else o for o in options]
            vid = _text(entry, "videoID")
            candidates = [root / "data" / f"{vid}{ext}" for ext in (".mp4", ".MP4", ".mkv")]
            video = next((c for c in candidates if c.exists()), candidates[0])
            return MCItem(
                id=_text(entry, "question_id"),
                task=_text(entry, "task_type", "videomme"),
                video=str(video),
                question=_text(entry, "question"),
                options=texts,
                answer=_text(entry, "answer").strip(),
                duration_group=_text(entry, "duration") if entry.get("duration") else None,
                extra={"options_as_given": options},
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


# -- prompts (lmms-eval v0.7.2) ----------------------------------------------------------------
def prompt_mvbench(item: MCItem) -> str:
    options = "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(item.options))
    return f"Question:{item.question}\nOption:\n{options}Only give the best option.\n"


def prompt_mlvu(item: MCItem) -> str:
    options = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(item.options))
    return f"Question: {item.question}\nOptions:\n{options}\nOnly give the best option.\nBest option: ("


def prompt_longvideobench(item: MCItem) -> str:
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return f"{item.question}\n{options}\n{DIRECT}\n"


def prompt_videomme(item: MCItem) -> str:
    options = item.extra.get("options_as_given") or [f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)]
    return f"{VIDEOMME_INSTRUCTION}\n{item.question}\n" + "\n".join(options) + f"\n\n{DIRECT}"


def prompt_generic(item: MCItem) -> str:
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return f"Question: {item.question}\n{options}\n{DIRECT}"


class Benchmark:
    """A benchmark's loader and prompt, and the number its papers report: ``"overall"`` accuracy, or
    ``"task_mean"`` (MLVU's M-Avg: the mean of the per-task accuracies)."""

    def __init__(
        self, name: str, loader: Callable[[Path], Loaded], prompt: Callable[[MCItem], str], headline: str = "overall"
    ) -> None:
        self.name, self.loader, self.prompt, self.headline = name, loader, prompt, headline


BENCHMARKS = {
    "mvbench": Benchmark("mvbench", load_mvbench, prompt_mvbench),
    "mlvu": Benchmark("mlvu", load_mlvu, prompt_mlvu, headline="task_mean"),
    "longvideobench": Benchmark("longvideobench", load_longvideobench, prompt_longvideobench),
    "videomme": Benchmark("videomme", load_videomme, prompt_videomme),
    "mc-json": Benchmark("mc-json", load_mc_json, prompt_generic),
    # the synthetic suite's models are trained on the bare question (free-form answers): ask the same way;
    # the parsed answer is the option whose text the output names
    "synthetic": Benchmark("synthetic", lambda root: load_mc_json(root / "eval.json"), lambda item: item.question),
}


def load_benchmark(name: str, data_root: str | Path) -> tuple[Benchmark, list[MCItem], list[str]]:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    root = Path(data_root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data root not found")
    bench = BENCHMARKS[name]
    items, problems = bench.loader(root)
    if not items:
        first = f"; the first: {problems[0]}" if problems else ""
        raise ValueError(f"{root}: no usable {name} questions ({len(problems)} malformed{first})")
    return bench, items, problems
