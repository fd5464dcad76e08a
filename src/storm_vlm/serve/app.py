"""OpenAI-compatible HTTP server with video input, and live video streams.

    storm-vlm serve runs/storm --media-root /data/videos --port 8000

Endpoints: ``POST /v1/chat/completions`` (OpenAI format; content parts ``text``, ``video_url``,
``image_url``; ``stream: true`` as server-sent events), ``GET /v1/models``, ``GET /health``, and
live streams ``POST /v1/streams``, ``POST /v1/streams/{id}/frames``, ``POST /v1/streams/{id}/ask``,
``DELETE /v1/streams/{id}``. One model worker serves requests in order; at most ``max_queue`` wait
(429 beyond); each request has a deadline (504). Errors are OpenAI-style JSON with a 4xx/5xx code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..inference import prepare_inputs
from ..modeling.reduction import settings_for_budget
from ..video import VideoError, sample_frames
from .media import MediaError, resolve_media
from .preview import frame_previews

__all__ = ["ServerConfig", "create_app"]


@dataclass
class ServerConfig:
    media_root: Path | None = None
    max_frames: int = 128
    default_frames: int = 32
    max_upload_mb: int = 64
    max_queue: int = 8
    request_timeout_s: float = 120.0
    max_new_tokens: int = 512
    max_streams: int = 8
    stream_idle_s: float = 300.0
    stream_window: int = 256  # reduced frames kept per stream


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# -- request schema (OpenAI chat completions + storm extras) ------------------------------------
class UrlRef(BaseModel):
    url: str


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "video_url", "image_url"]
    text: str | None = None
    video_url: UrlRef | None = None
    image_url: UrlRef | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    frames: int | None = Field(default=None, ge=1)
    fps: float | None = Field(default=None, gt=0)
    temporal_pool: int | None = Field(default=None, ge=1)
    spatial_pool: int | None = Field(default=None, ge=1)
    temporal_sampling: int | None = Field(default=None, ge=1)
    token_budget: int | None = Field(default=None, ge=1)
    preview: int = Field(default=0, ge=0, le=64)  # this many sampled frames back as small JPEGs


class StreamFrames(BaseModel):
    video_url: UrlRef | None = None
    image_urls: list[UrlRef] = Field(default_factory=list)


class StreamAsk(BaseModel):
    question: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)


class StreamCreate(BaseModel):
    temporal_pool: int | None = Field(default=None, ge=1)
    spatial_pool: int | None = Field(default=None, ge=1)
    temporal_sampling: int | None = Field(default=None, ge=1)


@dataclass
class LiveStream:
    stream: Any
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)


# -- the app ------------------------------------------------------------------------------------
def create_app(model, processor, config: ServerConfig | None = None, model_id: str = "storm") -> FastAPI:
    """A FastAPI app serving ``model`` (already loaded) with ``processor``."""
    cfg = config or ServerConfig()
    app = FastAPI(title="storm-vlm", version="0.1.0")
    # Every model call runs on this one thread, one at a time; it also keeps CUDA graphs (the fast
    # path's decoding step, recorded per thread) from being re-recorded for each request.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storm-model")
    state = {"pending": 0}
    streams: dict[str, LiveStream] = {}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": err.message, "type": err.kind, "code": err.status}}, err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where}: {first.get('msg', 'malformed')}" if where else "invalid request body"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": 422}}, 422)

    async def run_exclusive(fn, *args):
        """Run ``fn`` on the single model worker, with backpressure and a deadline."""
        if state["pending"] >= cfg.max_queue:
            raise ApiError(429, f"server busy: {state['pending']} requests waiting; retry later", "rate_limit_error")
        state["pending"] += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(worker, fn, *args)
            return await asyncio.wait_for(future, timeout=cfg.request_timeout_s)
        except TimeoutError:
            raise ApiError(504, f"request took longer than {cfg.request_timeout_s:.0f} s", "timeout") from None
        finally:
            state["pending"] -= 1

    def parse_chat(req: ChatRequest) -> tuple[str, str | None, str]:
        """(question text, media url or None, media kind)."""
        texts, media = [], []
        for message in req.messages:
            if message.role == "assistant":
                continue
            parts = (
                [ContentPart(type="text", text=message.content)]
                if isinstance(message.content, str)
                else message.content
            )
            for part in parts:
                if part.type == "text":
                    texts.append(part.text or "")
                elif part.type == "video_url" and part.video_url is not None:
                    media.append((part.video_url.url, "video"))
                elif part.type == "image_url" and part.image_url is not None:
                    media.append((part.image_url.url, "image"))
                else:
                    raise ApiError(400, f"content part of type {part.type} has no url")
        if len(media) > 1:
            raise ApiError(400, "one video or image per request is supported")
        question = "\n".join(t for t in texts if t).strip()
        if not question:
            raise ApiError(400, "the request has no question text")
        url, kind = media[0] if media else (None, "none")
        return question, url, kind

    def clip_for(url: str, req: ChatRequest):
        frames = min(req.frames or cfg.default_frames, cfg.max_frames)
        try:
            with resolve_media(url, cfg.media_root, cfg.max_upload_mb * 2**20) as path:
                if req.fps is not None:
                    return sample_frames(path, fps=req.fps, max_frames=cfg.max_frames)
                return sample_frames(path, num_frames=frames)
        except MediaError as err:
            raise ApiError(err.status, str(err)) from None
        except VideoError as err:
            raise ApiError(400, str(err)) from None

    def prepare(req: ChatRequest):
        question, url, _ = parse_chat(req)
        if url is None:
            raise ApiError(400, "send a video_url or image_url content part (text-only chat is not served)")
        clip = clip_for(url, req)
        if req.token_budget is not None:
            settings = settings_for_budget(req.token_budget, len(clip), model.config.token_grid)
        else:
            settings = model.reduction_settings(req.temporal_pool, req.spatial_pool, req.temporal_sampling)
        prepared = prepare_inputs(model, processor, clip, question, settings)
        return prepared, clip, settings

    def gen_kwargs(req: ChatRequest) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": min(req.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens),
            "pad_token_id": processor.tokenizer.pad_token_id,
            "eos_token_id": processor.stop_token_ids,
            "do_sample": req.temperature > 0,
        }
        if req.temperature > 0:
            kw.update(temperature=req.temperature, top_p=req.top_p)
        return kw

    def usage(prepared, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prepared.prompt_tokens,
            "visual_tokens": prepared.visual_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prepared.prompt_tokens + completion_tokens,
        }

    def storm_info(clip, settings, timings: dict[str, float], preview: int) -> dict[str, Any]:
        info: dict[str, Any] = {"frames": len(clip), "settings": str(settings), "timings_s": timings}
        if preview:
            info["preview"] = frame_previews(clip, preview)
        return info

    def complete(req: ChatRequest) -> dict[str, Any]:
        if req.seed is not None:
            torch.manual_seed(req.seed)
        prepared, clip, settings = prepare(req)
        kwargs = gen_kwargs(req)
        with torch.inference_mode():
            out = model.generate(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask, **kwargs)
        text = processor.decode(out[0]).strip()
        finish = "length" if out.shape[1] >= kwargs["max_new_tokens"] else "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage(prepared, int(out.shape[1])),
            "storm": storm_info(clip, settings, prepared.timer.timings, req.preview),
        }

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if not req.stream:
            return await run_exclusive(complete, req)
        return await stream_chat(req)

    async def stream_chat(req: ChatRequest) -> StreamingResponse:
        from transformers import TextIteratorStreamer

        prepared, clip, settings = await run_exclusive(
            prepare, req
        )  # the queue check (429) happens here  # errors surface as 4xx before streaming
        streamer = TextIteratorStreamer(
            processor.tokenizer, skip_prompt=False, skip_special_tokens=True, timeout=cfg.request_timeout_s
        )
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        counted = {"tokens": 0}

        class Counter:
            def put(self, value):
                counted["tokens"] += int(value.numel()) if counted.get("started") else 0
                counted["started"] = True
                streamer.put(value)

            def end(self):
                streamer.end()

        def generate():
            try:
                with torch.inference_mode():
                    if req.seed is not None:
                        torch.manual_seed(req.seed)
                    started = time.perf_counter()
                    model.generate(
                        inputs_embeds=prepared.inputs_embeds,
                        attention_mask=prepared.attention_mask,
                        streamer=Counter(),
                        **gen_kwargs(req),
                    )
                    counted["llm_s"] = time.perf_counter() - started
            except Exception:
                streamer.end()  # the client's stream ends instead of waiting for the deadline
                raise

        def event(delta: dict[str, Any], finish: str | None = None, extra: dict | None = None) -> str:
            body = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        async def events():
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
            timings = dict(prepared.timer.timings, llm=counted.get("llm_s", 0.0))
            tail = {
                "usage": usage(prepared, counted["tokens"]),
                "storm": storm_info(clip, settings, timings, req.preview),
            }
            yield event({}, "stop", tail)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (Path(__file__).parent / "static" / "index.html").read_text()

    @app.get("/v1/media")
    async def media_files():
        """Videos and images under the media root (for the page's picker), at most 500."""
        if cfg.media_root is None:
            return {"files": []}
        root = cfg.media_root.resolve()
        suffixes = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".jpg", ".jpeg", ".png", ".webp"}
        files = []
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in suffixes and path.is_file() and root in path.resolve().parents:
                files.append(str(path.relative_to(root)))
                if len(files) >= 500:
                    break
        return {"files": files}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "storm-vlm"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "pending": state["pending"], "streams": len(streams)}

    # -- live streams ---------------------------------------------------------------------------
    def expire_streams() -> None:
        now = time.time()
        for sid in [s for s, live in streams.items() if now - live.last_used > cfg.stream_idle_s]:
            streams.pop(sid, None)

    def get_stream(sid: str) -> LiveStream:
        expire_streams()
        live = streams.get(sid)
        if live is None:
            raise ApiError(404, f"no stream {sid!r} (it may have expired after {cfg.stream_idle_s:.0f} s idle)")
        live.last_used = time.time()
        return live

    @app.post("/v1/streams")
    async def create_stream(body: StreamCreate | None = None):
        expire_streams()
        if len(streams) >= cfg.max_streams:
            raise ApiError(429, f"too many open streams ({cfg.max_streams}); delete one first", "rate_limit_error")
        body = body or StreamCreate()
        try:
            stream = model.start_stream(body.temporal_pool, body.spatial_pool, body.temporal_sampling,
                                        max_frames=cfg.stream_window)  # fmt: skip
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        sid = uuid.uuid4().hex[:16]
        streams[sid] = LiveStream(stream)
        return {"id": sid, "object": "stream", "window": cfg.stream_window, "settings": str(stream.settings)}

    @app.post("/v1/streams/{sid}/frames")
    async def add_frames(sid: str, body: StreamFrames):
        live = get_stream(sid)
        urls = ([body.video_url.url] if body.video_url else []) + [u.url for u in body.image_urls]
        if not urls:
            raise ApiError(400, "send a video_url (a chunk) or image_urls (frames)")

        def work():
            added = 0
            for url in urls:
                try:
                    with resolve_media(url, cfg.media_root, cfg.max_upload_mb * 2**20) as path:
                        clip = sample_frames(path, max_frames=cfg.max_frames)
                except MediaError as err:
                    raise ApiError(err.status, str(err)) from None
                except VideoError as err:
                    raise ApiError(400, str(err)) from None
                live.stream.add_frames(processor.preprocess_frames(clip.frames))
                added += len(clip)
            return added

        added = await run_exclusive(work)
        return {"id": sid, "added": added, "frames_seen": live.stream.frames_seen,
                "visual_tokens": int(live.stream.visual_tokens().shape[1:3].numel())}  # fmt: skip

    @app.post("/v1/streams/{sid}/ask")
    async def ask_stream(sid: str, body: StreamAsk):
        live = get_stream(sid)

        def work():
            try:
                return live.stream.ask(
                    processor, body.question, max_new_tokens=min(body.max_tokens or 64, cfg.max_new_tokens)
                )
            except ValueError as err:
                raise ApiError(400, str(err)) from None

        answer = await run_exclusive(work)
        return {"id": sid, "answer": answer, "frames_seen": live.stream.frames_seen}

    @app.delete("/v1/streams/{sid}")
    async def delete_stream(sid: str):
        if streams.pop(sid, None) is None:
            raise ApiError(404, f"no stream {sid!r}")
        return {"id": sid, "deleted": True}

    return app
