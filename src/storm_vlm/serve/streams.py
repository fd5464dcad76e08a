"""Live streams (causal models): frames arrive chunk by chunk, questions come at any time.

``POST /v1/streams``, ``POST /v1/streams/{id}/frames``, ``POST /v1/streams/{id}/ask``,
``DELETE /v1/streams/{id}``; a window bounds each stream's tokens and idle streams expire.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from transformers import StoppingCriteriaList

from ..streaming import StormStream
from .config import ServerConfig
from .deadline import Deadline, DeadlineStop
from .media import load_clip
from .schema import ApiError, StreamAsk, StreamCreate, StreamFrames, check_text
from .worker import ModelWorker

__all__ = ["LiveStream", "StreamService"]


@dataclass
class LiveStream:
    stream: Any
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


class StreamService:
    def __init__(self, model: Any, processor: Any, cfg: ServerConfig, worker: ModelWorker) -> None:
        self.model, self.processor, self.cfg, self.worker = model, processor, cfg, worker
        self.streams: dict[str, LiveStream] = {}

    def expire(self) -> None:
        now = time.time()
        for sid in [s for s, live in self.streams.items() if now - live.last_used > self.cfg.stream_idle_s]:
            self.streams.pop(sid, None)

    def get(self, sid: str) -> LiveStream:
        self.expire()
        live = self.streams.get(sid)
        if live is None:
            raise ApiError(404, f"no stream {sid!r} (it may have expired after {self.cfg.stream_idle_s:.0f} s idle)")
        live.last_used = time.time()
        return live

    def create(self, body: StreamCreate | None) -> dict[str, Any]:
        self.expire()
        cfg = self.cfg
        if len(self.streams) >= cfg.max_streams:
            raise ApiError(429, f"too many open streams ({cfg.max_streams}); delete one first", "rate_limit_error")
        body = body or StreamCreate()
        try:
            settings = self.model.reduction_settings(body.temporal_pool, body.spatial_pool, body.temporal_sampling)
            stream = StormStream(self.model, settings, max_frames=cfg.stream_window)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        sid = uuid.uuid4().hex[:16]
        self.streams[sid] = LiveStream(stream)
        return {"id": sid, "object": "stream", "window": cfg.stream_window, "settings": str(stream.settings)}

    async def add_frames(self, sid: str, body: StreamFrames) -> dict[str, Any]:
        live = self.get(sid)
        urls = ([body.video_url.url] if body.video_url else []) + [u.url for u in body.image_urls]
        if not urls:
            raise ApiError(400, "send a video_url (a chunk) or image_urls (frames)")
        cfg = self.cfg

        def work(deadline: Deadline) -> int:
            added = 0
            for url in urls:
                clip = load_clip(url, cfg.media_root, cfg.max_upload_mb * 2**20, deadline.check,
                                 max_frames=cfg.max_frames)  # fmt: skip
                deadline.check()
                live.stream.add_frames(self.processor.preprocess_frames(clip.frames))
                added += len(clip)
            return added

        added = await self.worker.run(work)
        return {"id": sid, "added": added, "frames_seen": live.stream.frames_seen,
                "visual_tokens": int(live.stream.visual_tokens().shape[1:3].numel())}  # fmt: skip

    async def ask(self, sid: str, body: StreamAsk) -> dict[str, Any]:
        live = self.get(sid)
        check_text(body.question, "question")

        def work(deadline: Deadline) -> str:
            try:
                answer = live.stream.ask(
                    self.processor,
                    body.question,
                    max_new_tokens=min(body.max_tokens or 64, self.cfg.max_new_tokens),
                    stopping_criteria=StoppingCriteriaList([DeadlineStop(deadline)]),
                )
            except ValueError as err:
                raise ApiError(400, str(err)) from None
            deadline.check()
            return answer

        answer = await self.worker.run(work)
        return {"id": sid, "answer": answer, "frames_seen": live.stream.frames_seen}

    def delete(self, sid: str) -> dict[str, Any]:
        if self.streams.pop(sid, None) is None:
            raise ApiError(404, f"no stream {sid!r}")
        return {"id": sid, "deleted": True}
