"""One multiple-choice video question, whatever benchmark it comes from, and answer parsing."""

from __future__ import annotations

import math
import re
import string
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LETTERS", "MCItem", "letter_of", "parse_letter"]

LETTERS = string.ascii_uppercase


@dataclass
class MCItem:
    """A question with lettered options; ``answer`` is the correct letter.

    ``start`` / ``end`` (seconds) restrict the clip when the benchmark gives bounds;
    ``duration_group`` is the benchmark's own bucket (e.g. Video-MME short/medium/long).
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
