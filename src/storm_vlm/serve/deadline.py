"""A request's deadline, checked by the work itself so a late request stops instead of running on.

The server answers 504 when a request's time is up, but the model thread cannot be interrupted
from outside: without these checks a request past its deadline would keep the one model worker
busy (and every request queued behind it would time out too). The work checks the deadline
between stages, after each decoded frame and each vision chunk, and at every generated token.
"""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteria

__all__ = ["Deadline", "DeadlineExceeded", "DeadlineStop"]


class DeadlineExceeded(Exception):
    """The request ran out of time (or its client went away); the work stopped where it was."""


class Deadline:
    """Expires ``seconds`` after creation, or when cancelled (a 504 was sent, the client left)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.cancelled = False

    @property
    def expired(self) -> bool:
        return self.cancelled or time.monotonic() >= self.expires_at

    def cancel(self) -> None:
        self.cancelled = True

    def check(self, *_: object) -> None:
        """Raise :class:`DeadlineExceeded` when expired (also usable as a progress callback)."""
        if self.expired:
            raise DeadlineExceeded(f"request took longer than {self.seconds:.0f} s")


class DeadlineStop(StoppingCriteria):
    """Stops ``generate`` at the next token once the deadline has passed."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        done = self.deadline.expired
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
