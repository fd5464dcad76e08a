"""One multiple-choice video question, whatever benchmark it comes from, and answer parsing.

Generated answers are parsed the way lmms-eval v0.7.3 parses them for the item's benchmark
(:func:`parse_item_answer`; each parser is a port of that task's ``utils.py``, compared in
``docs/evaluation.md``), so accuracies are comparable with numbers produced by lmms-eval.
"""

from __future__ import annotations

import math
import random
import re
import string
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BENCHMARK_KINDS",
    "LETTERS",
    "MCItem",
    "counts_in_accuracy",
    "extract_mcq_answer",
    "letter_of",
    "parse_item_answer",
    "parse_letter",
    "parse_longvideobench",
    "parse_mvbench",
    "strip_reasoning",
]

LETTERS = string.ascii_uppercase
# the answer parsers :func:`parse_item_answer` knows; "generic" is :func:`parse_letter`
BENCHMARK_KINDS = ("generic", "mvbench", "mlvu", "longvideobench", "videomme")


@dataclass
class MCItem:
    """A question with lettered options; ``answer`` is the correct letter.

    ``start`` / ``end`` (seconds) restrict the clip when the benchmark gives bounds;
    ``duration_group`` is the benchmark's own bucket (e.g. Video-MME short/medium/long).
    ``benchmark`` picks the answer parser (:func:`parse_item_answer`); ``subtitles`` is the subtitle
    text the prompt shows (None: the benchmark is asked without subtitles).
    """

    id: str
    task: str
    video: str  # absolute path to a video file (or a folder of frames)
    question: str
    options: list[str]
    answer: str
    start: float | None = None
    end: float | None = None
    duration: float | None = None
    duration_group: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "generic"
    subtitles: str | None = None

    def __post_init__(self) -> None:
        """Fields of the wrong kind fail here, naming the field, not later inside frame sampling."""
        for name in ("start", "end", "duration"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            ):
                raise ValueError(f"item {self.id}: {name} must be a number of seconds >= 0 or None, got {value!r}")
        if self.duration_group is not None and not isinstance(self.duration_group, str):
            raise ValueError(f"item {self.id}: duration_group must be a string or None, got {self.duration_group!r}")
        if not isinstance(self.options, list) or not all(isinstance(o, str) for o in self.options):
            raise ValueError(f"item {self.id}: options must be a list of strings, got {self.options!r}")
        if self.benchmark not in BENCHMARK_KINDS:
            raise ValueError(
                f"item {self.id}: benchmark must be one of {', '.join(BENCHMARK_KINDS)}, got {self.benchmark!r}"
            )
        if self.subtitles is not None and not isinstance(self.subtitles, str):
            raise ValueError(f"item {self.id}: subtitles must be a string or None, got {type(self.subtitles).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def letter_of(options: list[str], answer_text: str) -> str:
    """The letter of the option equal to ``answer_text`` (benchmarks that store the text)."""
    for i, option in enumerate(options):
        if option.strip() == answer_text.strip():
            return LETTERS[i]
    raise ValueError(f"answer {answer_text!r} is not one of the options")


_PATTERNS = [
    re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)\s]|$)"),  # "B", "(B)", "B.", "B) text"
    re.compile(r"(?:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE),  # "The answer is (C)"
    re.compile(r"\(([A-Z])\)"),  # "(D)" anywhere
    re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])"),  # a lone capital letter anywhere
]


def parse_letter(output: str, num_options: int, options: list[str] | None = None) -> str | None:
    """The option letter a free-form answer names, or ``None``.

    Tries, in order: a leading letter ("B", "(B)", "B. text"), "answer is C", "(D)" anywhere, a
    lone capital letter; then an option's text appearing in the output. Letters beyond
    ``num_options`` are ignored.
    """
    valid = set(LETTERS[:num_options])
    text = output.strip()
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            letter = match.group(1).upper()
            if letter in valid:
                return letter
    if options:
        lowered = text.lower()
        hits = [LETTERS[i] for i, opt in enumerate(options) if opt.strip() and opt.strip().lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


# -- lmms-eval's parsers (v0.7.3; the same code in v0.7.2) -------------------------------------
# lmms-eval strips these reasoning blocks from every generation before a task parses it
# (``--reasoning_tags`` default, ``lmms_eval/api/reasoning.py``).
REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def strip_reasoning(text: str) -> str:
    """``strip_reasoning_tags`` with lmms-eval's default tags: closed blocks removed; with only a
    closing tag (the opening one prefilled by a chat template), the text after the last one kept."""
    result = text
    for start_tag, end_tag in REASONING_TAGS:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(end_tag) :]
        if end_tag in result and start_tag not in result:
            result = result.rsplit(end_tag, 1)[-1]
    return result.strip()


_MCQ_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)  # fmt: skip
_MCQ_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
                 "space": 2, "fallback": 0}  # fmt: skip


def extract_mcq_answer(response: str, choices: str = "ABCD") -> str | None:
    """lmms-eval's shared ``_task_utils/mcq_extract.extract_mcq_answer`` (MLVU and Video-MME call it
    with choices A-D): every letter found in any of its formats is a candidate; the best format
    wins (a leading letter, a trailing letter, "the answer is X", "(X)", "X.", "X:", "X)", "X "),
    the last position within a format; a bare letter anywhere only when nothing else matched.
    ``None`` where lmms-eval returns ``""``.
    """
    if not response or not response.strip():
        return None
    text = response.strip()
    for char in ",.!?;:'\"":
        text = text.strip(char)
    text = f" {text} "
    found: list[tuple[str, int, str]] = []
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                         ("space", "{} ")):  # fmt: skip
        for ch in choices:
            if pattern.format(ch) in text:
                found.append((ch, text.rfind(pattern.format(ch)), fmt))
    lowered = text.lower()
    for phrase in _MCQ_PHRASES:
        at = lowered.find(phrase)
        if at != -1:
            for ch in choices:
                pos = text.find(ch, at + len(phrase))
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    stripped = text.strip()
    for ch in choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            found.append((ch, len(text) - 1, "end"))
    if not found:
        found = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
    if not found:
        return None
    found.sort(key=lambda c: (_MCQ_PRIORITY[c[2]], c[1]), reverse=True)
    return found[0][0]


_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: lmms-eval's pattern (a lookahead, not a lookbehind)
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_MVBENCH_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_MVBENCH_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def _mvbench_process(answer: str) -> str:
    """``mcq_acc.process`` of lmms-eval's ``tasks/mvbench/utils.py``: a letter, or the cleaned text."""
    match = _MVBENCH_OPTION.match(answer.strip())
    if match:
        return match.group(1).upper()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    out = answer
    for p in _PUNCT:
        if (p + " " in answer or " " + p in answer) or _COMMA_STRIP.search(answer) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, re.UNICODE)  # sic: lmms-eval passes re.UNICODE (32) as the count
    out = out.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = _MVBENCH_LETTER.search(out)
    return letter.group(1).upper() if letter else out


def parse_mvbench(output: str) -> str | None:
    """MVBench (lmms-eval ``mcq_acc``): "X. text" at the start, else the first standalone a-e word
    after punctuation clean-up, case-insensitive (so an article "a" reads as A, as in lmms-eval).

    ``None`` for an empty output, which lmms-eval leaves out of MVBench's accuracy, and for text
    with no letter, which lmms-eval scores wrong.
    """
    if not output:
        return None
    processed = _mvbench_process(output)
    return processed if len(processed) == 1 and processed in "ABCDE" else None


_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                 "The correct option is", "Best answer:", "Best option:")  # fmt: skip


def parse_longvideobench(output: str, num_options: int, seed: str) -> str:
    """LongVideoBench (lmms-eval ``parse_multi_choice_response``): the answer prefixes removed, the
    first of A-E anywhere in what is left; nothing found, a random option letter.

    lmms-eval draws that letter from the global ``random`` (seeded 0 once per run, so it depends on
    the order questions are scored in); here it is ``random.Random(seed).choice(...)`` with the
    item's id as the seed: the same letter for the same question in every run, shard and order.
    """
    s = output.strip()
    for prefix in _LVB_PREFIXES:
        s = s.replace(prefix, "")
    match = re.search(r"[ABCDE]", s)  # (lmms-eval's "> 10 words and no letter" branch draws too)
    if match is None:
        return random.Random(seed).choice(LETTERS[:num_options])
    return match[0]


def parse_item_answer(item: MCItem, output: str) -> str | None:
    """The option letter a generated answer names, parsed as lmms-eval parses it for the item's
    benchmark (after stripping lmms-eval's default reasoning tags); ``None`` when it names none.

    mvbench: :func:`parse_mvbench`; mlvu and videomme: :func:`extract_mcq_answer` with A-D;
    longvideobench: :func:`parse_longvideobench` (never None: its seeded random fallback);
    generic (mc-json, synthetic): :func:`parse_letter`. A letter beyond the item's options may be
    returned where lmms-eval's parser returns one; it is scored wrong, as there.
    """
    if item.benchmark == "generic":
        return parse_letter(output, len(item.options), item.options)
    text = strip_reasoning(output)
    if item.benchmark == "mvbench":
        return parse_mvbench(text)
    if item.benchmark in ("mlvu", "videomme"):
        return extract_mcq_answer(text, "ABCD")
    if item.benchmark == "longvideobench":
        return parse_longvideobench(text, len(item.options), f"longvideobench/{item.id}")
    raise ValueError(f"item {item.id}: no answer parser for benchmark {item.benchmark!r}")


def counts_in_accuracy(item: MCItem, output: str) -> bool:
    """Whether the benchmark's own metric counts this answer: lmms-eval's MVBench aggregation leaves
    answers that are empty after stripping out of its denominator; every other benchmark counts all."""
    return not (item.benchmark == "mvbench" and not output.strip())
