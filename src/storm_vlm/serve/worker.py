"""The one model worker: a bounded queue (429 beyond it) and deadlines (504) that stop the work.

Every model call runs on one thread, one at a time; it also keeps CUDA graphs (the fast path's
decoding step, recorded per thread) from being re-recorded for each request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .deadline import Deadline, DeadlineExceeded
from .schema import ApiError

__all__ = ["ModelWorker"]

T = TypeVar("T")


class ModelWorker:
    def __init__(self, max_queue: int, timeout_s: float) -> None:
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.pending = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storm-model")

    def deadline(self) -> Deadline:
        """A request's deadline, counted from its arrival: waiting in the queue uses it up."""
        return Deadline(self.timeout_s)

    def acquire(self) -> None:
        """Take a place in the queue (429 when full); every model request, streamed or not, holds one."""
        if self.pending >= self.max_queue:
            raise ApiError(429, f"server busy: {self.pending} requests waiting; retry later", "rate_limit_error")
        self.pending += 1

    def release(self) -> None:
        self.pending -= 1

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the model thread (the caller holds a place and watches the deadline)."""
        return self._thread.submit(fn, *args)

    async def call(self, deadline: Deadline, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(deadline, *args)`` on the model thread until the deadline (504 after it).

        At the deadline the work is told to stop (``deadline.cancel``) and stops at its next check,
        so the thread is free for the requests behind it.
        """
        future = asyncio.get_running_loop().run_in_executor(self._thread, fn, deadline, *args)
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, deadline.expires_at - time.monotonic()))
        except (TimeoutError, DeadlineExceeded):
            deadline.cancel()
            raise ApiError(504, f"request took longer than {self.timeout_s:.0f} s", "timeout") from None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """One request: a queue place, a deadline, ``fn(deadline, *args)`` on the model thread."""
        deadline = self.deadline()
        self.acquire()
        try:
            return await self.call(deadline, fn, *args)
        finally:
            self.release()
