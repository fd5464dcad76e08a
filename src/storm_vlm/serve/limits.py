"""Connection-level limits the ASGI app cannot enforce by itself.

* :class:`BodyLimit` — an ASGI middleware answering 413 for a request body over the limit before
  anything parses it (a ``Content-Length`` over the limit is refused unread; a chunked body is
  counted as it arrives). FastAPI reads and parses the whole body first otherwise.
* :func:`read_timeout_protocol` — uvicorn's h11 protocol with a deadline on reading a request:
  headers and body must arrive within ``read_timeout`` seconds of their first byte, or the
  connection is closed. Stock uvicorn times out only idle keep-alive connections, so a client that
  sends half a header line keeps its connection (and a file descriptor) forever.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BodyLimit", "read_timeout_protocol"]

DRAIN_FACTOR = 4  # a body over the limit is read (and dropped) up to this many times the limit
Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with an OpenAI-style 413, without reading past it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send, declared.isdigit())
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # buffered up to the limit: the app would read it all anyway
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                # Read on (discarding) up to a bound before answering: a client still sending when
                # the connection closes gets a reset instead of the 413 (the lingering close of nginx).
                while more and size <= DRAIN_FACTOR * self.max_bytes:
                    message = await receive()
                    size += len(message.get("body", b""))
                    more = message.get("more_body", False) and message["type"] != "http.disconnect"
                await self._refuse(send, True)
                return
            chunks.append(body)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Any, too_large: bool) -> None:
        status = 413 if too_large else 400
        message = (
            f"request body larger than the limit of {self.max_bytes / 2**20:.0f} MiB"
            if too_large
            else "invalid Content-Length header"
        )
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def read_timeout_protocol(read_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class that closes a connection whose request is not fully read in time."""

    class ReadTimeoutProtocol(H11Protocol):
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._reading() and self._read_timer is None:
                self._arm()  # the first byte of a next request on a kept-alive connection
            super().data_received(data)
            if not self._reading():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _reading(self) -> bool:
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout, self._expire)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _expire(self) -> None:
            self._read_timer = None
            if self._reading() and not self.transport.is_closing():
                self.transport.close()

    return ReadTimeoutProtocol
