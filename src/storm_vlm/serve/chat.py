"""``POST /v1/chat/completions``: a question about one video or image, answered whole or streamed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import torch
from fastapi.responses import StreamingResponse
from transformers import StoppingCriteriaList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from ..inference import PreparedInputs, generate_answer, prepare_inputs
from ..modeling.reduction import ReductionSettings
from ..video import VideoClip
from .config import ServerConfig
from .deadline import Deadline, DeadlineExceeded, DeadlineStop
from .media import load_clip
from .preview import frame_previews
from .schema import ApiError, ChatRequest, parse_chat
from .worker import ModelWorker

__all__ = ["ChatService"]


class ChatService:
    """The chat endpoint's work, run on the model worker under each request's deadline."""

    def __init__(self, model: Any, processor: Any, cfg: ServerConfig, worker: ModelWorker, model_id: str) -> None:
        self.model, self.processor, self.cfg, self.worker, self.model_id = model, processor, cfg, worker, model_id

    async def answer(self, req: ChatRequest) -> Any:
        return await self.worker.run(self.complete, req) if not req.stream else await self.stream(req)

    # -- the stages -------------------------------------------------------------------------------
    def prepare(self, deadline: Deadline, req: ChatRequest) -> tuple[PreparedInputs, VideoClip, ReductionSettings]:
        question, url, _ = parse_chat(req, self.cfg.max_question_chars)
        if url is None:
            raise ApiError(400, "send a video_url or image_url content part (text-only chat is not served)")
        cfg = self.cfg
        frames = min(req.frames or cfg.default_frames, cfg.max_frames)
        clip = load_clip(url, cfg.media_root, cfg.max_upload_mb * 2**20, deadline.check, fps=req.fps,
                         num_frames=None if req.fps is not None else frames, max_frames=cfg.max_frames)  # fmt: skip
        deadline.check()
        model = self.model
        try:
            if req.token_budget is not None:
                settings = model.settings_for_budget(req.token_budget, len(clip))
            else:
                settings = model.reduction_settings(req.temporal_pool, req.spatial_pool, req.temporal_sampling)
            prepared = prepare_inputs(model, self.processor, clip, question, settings, check=deadline.check)
        except ValueError as err:  # a budget that cannot fit, a prompt over the context, bad settings
            raise ApiError(400, str(err)) from None
        return prepared, clip, settings

    def max_new_tokens(self, req: ChatRequest, prepared: PreparedInputs) -> int:
        """The request's ``max_tokens``, capped by the server and by what fits the context."""
        cap = self.cfg.max_new_tokens
        return prepared.new_token_limit(min(req.max_tokens or cap, cap))

    def generate(
        self, req: ChatRequest, prepared: PreparedInputs, deadline: Deadline, streamer: BaseStreamer | None = None
    ) -> torch.Tensor:
        """The shared generate step (untimed: the response reports the visual stages), with the
        request's sampling, stopped at the deadline; seeded just before it, so that a seeded answer
        is the same streamed or not."""
        if req.seed is not None:
            torch.manual_seed(req.seed)
        sampling = req.temperature > 0
        return generate_answer(
            self.model, prepared, self.max_new_tokens(req, prepared), do_sample=sampling,
            temperature=req.temperature, top_p=req.top_p, streamer=streamer, timed=False,
            stopping_criteria=StoppingCriteriaList([DeadlineStop(deadline)]),
        )  # fmt: skip

    @staticmethod
    def usage(prepared: PreparedInputs, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prepared.prompt_tokens,
            "visual_tokens": prepared.visual_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prepared.prompt_tokens + completion_tokens,
        }

    @staticmethod
    def storm_info(clip: VideoClip, settings: ReductionSettings, timings: dict[str, float], preview: int) -> dict:
        info: dict[str, Any] = {"frames": len(clip), "settings": str(settings), "timings_s": timings}
        if preview:
            info["preview"] = frame_previews(clip, preview)
        return info

    # -- a whole answer -----------------------------------------------------------------------------
    def complete(self, deadline: Deadline, req: ChatRequest) -> dict[str, Any]:
        prepared, clip, settings = self.prepare(deadline, req)
        out = self.generate(req, prepared, deadline)
        deadline.check()  # generation stopped early because time ran out: a 504, not a short answer
        text = self.processor.decode(out).strip()
        finish = "length" if out.shape[0] >= self.max_new_tokens(req, prepared) else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": self.usage(prepared, int(out.shape[0])),
            "storm": self.storm_info(clip, settings, prepared.timer.timings, req.preview),
        }

    # -- a streamed answer --------------------------------------------------------------------------
    async def stream(self, req: ChatRequest) -> StreamingResponse:
        """Prepare (errors are still plain 4xx), then stream tokens; the request keeps its queue place
        and its deadline until the last token, and a client that goes away stops the generation."""
        worker = self.worker
        deadline = worker.deadline()
        worker.acquire()
        try:
            prepared, clip, settings = await worker.call(deadline, self.prepare, req)
        except BaseException:
            worker.release()
            raise
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        counted = {"tokens": 0}  # and "started" (0/1), set by the first put (the prompt)
        llm_time: dict[str, float] = {}  # "llm_s", set by the generation thread

        class Counter(BaseStreamer):
            def put(self, value: torch.Tensor) -> None:
                counted["tokens"] += int(value.numel()) if counted.get("started") else 0
                counted["started"] = True
                streamer.put(value)

            def end(self) -> None:
                streamer.end()

        def generate() -> None:
            try:
                started = time.perf_counter()
                self.generate(req, prepared, deadline, streamer=Counter())
                llm_time["llm_s"] = time.perf_counter() - started
            except BaseException:
                streamer.end()  # the client's stream ends instead of waiting for the deadline
                raise

        def event(delta: dict[str, Any], finish: str | None = None, extra: dict | None = None) -> str:
            body = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": self.model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **(extra or {})}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            try:
                if deadline.expired:  # the queue wait used it up: no generation at all
                    raise DeadlineExceeded
                generation = worker.submit(generate)
                yield event({"role": "assistant"})
                iterator = iter(streamer)
                while True:
                    piece = await asyncio.to_thread(next, iterator, None)
                    if piece is None:
                        break
                    if piece:
                        yield event({"content": piece})
                with contextlib.suppress(Exception):  # a failed generation has ended the stream already
                    await asyncio.wait_for(asyncio.wrap_future(generation), timeout=1)
                if deadline.expired:
                    raise DeadlineExceeded
                timings = dict(prepared.timer.timings, llm=llm_time.get("llm_s", 0.0))
                tail = {
                    "usage": self.usage(prepared, counted["tokens"]),
                    "storm": self.storm_info(clip, settings, timings, req.preview),
                }
                yield event({}, "stop", tail)
            except DeadlineExceeded:
                message = f"request took longer than {self.cfg.request_timeout_s:.0f} s"
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'timeout', 'code': 504}})}\n\n"
            finally:
                deadline.cancel()  # also when the client went away mid-stream: generation stops
                worker.release()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
