"""OpenAI-compatible HTTP server with video input, and live video streams.

    storm-vlm serve runs/storm --media-root /data/videos --port 8000

Endpoints: ``POST /v1/chat/completions`` (OpenAI format; content parts ``text``, ``video_url``,
``image_url``; ``stream: true`` as server-sent events), ``GET /v1/models``, ``GET /health``, and
live streams ``POST /v1/streams``, ``POST /v1/streams/{id}/frames``, ``POST /v1/streams/{id}/ask``,
``DELETE /v1/streams/{id}``. One model worker serves requests in order; at most ``max_queue`` wait
(429 beyond), streamed or not; each request has a deadline (504) that also stops its work, so a late
request does not hold up the ones behind it. Bodies over the upload limit get 413 before they are
parsed. Errors are OpenAI-style JSON with a 4xx code naming the field, and never show server paths.
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
from transformers import StoppingCriteriaList

from ..inference import prepare_inputs
from ..limits import MAX_FPS, MAX_FRAMES, MAX_NEW_TOKENS, MAX_REDUCTION
from ..processing_storm import IMAGE_TOKEN, VIDEO_TOKEN
from ..video import VideoError, sample_frames
from .deadline import Deadline, DeadlineExceeded, DeadlineStop
from .limits import BodyLimit
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
    read_timeout_s: float = 60.0  # headers and body of one request (uvicorn; see serve.limits)
    max_question_chars: int = 200_000  # refused before tokenising; the context check comes after

    def __post_init__(self) -> None:
        if not 1 <= self.max_frames <= MAX_FRAMES:
            raise ValueError(f"max_frames must be from 1 to {MAX_FRAMES} (video.MAX_FRAMES), got {self.max_frames}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: one upload, base64-encoded (4/3), plus 1 MiB of JSON."""
        return self.max_upload_mb * 2**20 * 4 // 3 + 2**20


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


Pool = Field(default=None, ge=1, le=MAX_REDUCTION)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=256)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)  # then capped by the server's limit
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)  # torch's seed range
    frames: int | None = Field(default=None, ge=1, le=MAX_FRAMES)  # then capped by --max-frames
    fps: float | None = Field(default=None, gt=0, le=MAX_FPS)
    temporal_pool: int | None = Pool
    spatial_pool: int | None = Pool
    temporal_sampling: int | None = Pool
    token_budget: int | None = Field(default=None, ge=1, le=1 << 24)
    preview: int = Field(default=0, ge=0, le=64)  # this many sampled frames back as small JPEGs


class StreamFrames(BaseModel):
    video_url: UrlRef | None = None
    image_urls: list[UrlRef] = Field(default_factory=list, max_length=256)


class StreamAsk(BaseModel):
    question: str = Field(min_length=1, max_length=200_000)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)


class StreamCreate(BaseModel):
    temporal_pool: int | None = Pool
    spatial_pool: int | None = Pool
    temporal_sampling: int | None = Pool


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

    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": err.message, "type": err.kind, "code": err.status}}, err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where}: {first.get('msg', 'malformed')}" if where else "invalid request body"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": 422}}, 422)

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, show no internals
        return JSONResponse({"error": {"message": "internal server error", "type": "server_error", "code": 500}}, 500)

    def acquire() -> None:
        """Take a place in the queue (429 when full); every model request, streamed or not, holds one."""
        if state["pending"] >= cfg.max_queue:
            raise ApiError(429, f"server busy: {state['pending']} requests waiting; retry later", "rate_limit_error")
        state["pending"] += 1

    def release() -> None:
        state["pending"] -= 1

    async def on_worker(deadline: Deadline, fn, *args):
        """Run ``fn(deadline, *args)`` on the single model worker until the deadline (504 after it).

        At the deadline the work is told to stop (``deadline.cancel``) and stops at its next check,
        so the worker is free for the requests behind it.
        """
        future = asyncio.get_running_loop().run_in_executor(worker, fn, deadline, *args)
        try:
            return await asyncio.wait_for(future, timeout=max(0.0, deadline.expires_at - time.monotonic()))
        except (TimeoutError, DeadlineExceeded):
            deadline.cancel()
            raise ApiError(504, f"request took longer than {cfg.request_timeout_s:.0f} s", "timeout") from None

    async def run_exclusive(fn, *args):
        deadline = Deadline(cfg.request_timeout_s)  # counts from arrival: waiting in the queue uses it up
        acquire()
        try:
            return await on_worker(deadline, fn, *args)
        finally:
            release()

    def parse_chat(req: ChatRequest) -> tuple[str, str | None, str]:
        """(question text, media url or None, media kind)."""
        texts, media = [], []
        for i, message in enumerate(req.messages):
            if message.role == "assistant":
                continue
            parts = (
                [ContentPart(type="text", text=message.content)]
                if isinstance(message.content, str)
                else message.content
            )
            for part in parts:
                if part.type == "text":
                    text = part.text or ""
                    _check_text(text, f"messages[{i}].content")
                    texts.append(text)
                elif part.type == "video_url" and part.video_url is not None:
                    media.append((part.video_url.url, "video"))
                elif part.type == "image_url" and part.image_url is not None:
                    media.append((part.image_url.url, "image"))
                else:
                    raise ApiError(400, f"messages[{i}].content: a part of type {part.type} has no url")
        if len(media) > 1:
            raise ApiError(400, "one video or image per request is supported")
        question = "\n".join(t for t in texts if t).strip()
        if not question:
            raise ApiError(400, "the request has no question text")
        if len(question) > cfg.max_question_chars:
            raise ApiError(400, f"the question is {len(question)} characters; the limit is {cfg.max_question_chars}")
        url, kind = media[0] if media else (None, "none")
        return question, url, kind

    def clip_for(url: str, req: ChatRequest, deadline: Deadline):
        frames = min(req.frames or cfg.default_frames, cfg.max_frames)
        return load_clip(url, deadline, fps=req.fps, num_frames=None if req.fps is not None else frames,
                         max_frames=cfg.max_frames)  # fmt: skip

    def load_clip(url: str, deadline: Deadline, **sampling):
        """Frames of a request's media; errors name the media as the client gave it, not the server path."""
        name = "the upload" if url[:5].lower() == "data:" else url[:200]
        try:
            with resolve_media(url, cfg.media_root, cfg.max_upload_mb * 2**20) as path:
                try:
                    return sample_frames(path, progress=deadline.check, **sampling)
                except VideoError as err:
                    raise ApiError(400, str(err).replace(str(path), name)) from None
        except MediaError as err:
            raise ApiError(err.status, str(err)) from None

    def prepare(deadline: Deadline, req: ChatRequest):
        question, url, _ = parse_chat(req)
        if url is None:
            raise ApiError(400, "send a video_url or image_url content part (text-only chat is not served)")
        clip = clip_for(url, req, deadline)
        deadline.check()
        try:
            if req.token_budget is not None:
                settings = model.settings_for_budget(req.token_budget, len(clip))
            else:
                settings = model.reduction_settings(req.temporal_pool, req.spatial_pool, req.temporal_sampling)
            prepared = prepare_inputs(model, processor, clip, question, settings, check=deadline.check)
        except ValueError as err:  # a budget that cannot fit, a prompt over the context, bad settings
            raise ApiError(400, str(err)) from None
        return prepared, clip, settings

    def gen_kwargs(req: ChatRequest, prepared, deadline: Deadline) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": prepared.new_token_limit(min(req.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens)),
            "do_sample": req.temperature > 0,
            "stopping_criteria": StoppingCriteriaList([DeadlineStop(deadline)]),
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

    def complete(deadline: Deadline, req: ChatRequest) -> dict[str, Any]:
        if req.seed is not None:
            torch.manual_seed(req.seed)
        prepared, clip, settings = prepare(deadline, req)
        kwargs = gen_kwargs(req, prepared, deadline)
        with torch.inference_mode():
            out = model.generate(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask, **kwargs)
        deadline.check()  # generation stopped early because time ran out: a 504, not a short answer
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
        """Prepare (errors are still plain 4xx), then stream tokens; the request keeps its queue place
        and its deadline until the last token, and a client that goes away stops the generation."""
        from transformers import TextIteratorStreamer

        deadline = Deadline(cfg.request_timeout_s)
        acquire()
        try:
            prepared, clip, settings = await on_worker(deadline, prepare, req)
        except BaseException:
            release()
            raise
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        counted = {"tokens": 0}  # and "started" (0/1), set by the first put (the prompt)
        llm_time: dict[str, float] = {}  # "llm_s", set by the generation thread

        class Counter:
            def put(self, value):
                counted["tokens"] += int(value.numel()) if counted.get("started") else 0
                counted["started"] = True
                streamer.put(value)

            def end(self):
                streamer.end()

        def generate(deadline: Deadline) -> None:
            try:
                with torch.inference_mode():
                    if req.seed is not None:
                        torch.manual_seed(req.seed)
                    started = time.perf_counter()
                    model.generate(
                        inputs_embeds=prepared.inputs_embeds,
                        attention_mask=prepared.attention_mask,
                        streamer=Counter(),
                        **gen_kwargs(req, prepared, deadline),
                    )
                    llm_time["llm_s"] = time.perf_counter() - started
            except BaseException:
                streamer.end()  # the client's stream ends instead of waiting for the deadline
                raise

        def event(delta: dict[str, Any], finish: str | None = None, extra: dict | None = None) -> str:
            body = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            try:
                if deadline.expired:  # the queue wait used it up: no generation at all
                    raise DeadlineExceeded
                generation = worker.submit(generate, deadline)
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
                    "usage": usage(prepared, counted["tokens"]),
                    "storm": storm_info(clip, settings, timings, req.preview),
                }
                yield event({}, "stop", tail)
            except DeadlineExceeded:
                message = f"request took longer than {cfg.request_timeout_s:.0f} s"
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'timeout', 'code': 504}})}\n\n"
            finally:
                deadline.cancel()  # also when the client went away mid-stream: generation stops
                release()
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
            name = str(path.relative_to(root))
            if not _is_utf8(name):  # a name that is not UTF-8 cannot be sent back in JSON, nor asked for
                continue
            if path.suffix.lower() in suffixes and path.is_file() and root in path.resolve().parents:
                files.append(name)
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

        def work(deadline: Deadline):
            added = 0
            for url in urls:
                clip = load_clip(url, deadline, max_frames=cfg.max_frames)
                deadline.check()
                live.stream.add_frames(processor.preprocess_frames(clip.frames))
                added += len(clip)
            return added

        added = await run_exclusive(work)
        return {"id": sid, "added": added, "frames_seen": live.stream.frames_seen,
                "visual_tokens": int(live.stream.visual_tokens().shape[1:3].numel())}  # fmt: skip

    @app.post("/v1/streams/{sid}/ask")
    async def ask_stream(sid: str, body: StreamAsk):
        live = get_stream(sid)
        _check_text(body.question, "question")

        def work(deadline: Deadline):
            try:
                answer = live.stream.ask(
                    processor,
                    body.question,
                    max_new_tokens=min(body.max_tokens or 64, cfg.max_new_tokens),
                    stopping_criteria=StoppingCriteriaList([DeadlineStop(deadline)]),
                )
            except ValueError as err:
                raise ApiError(400, str(err)) from None
            deadline.check()
            return answer

        answer = await run_exclusive(work)
        return {"id": sid, "answer": answer, "frames_seen": live.stream.frames_seen}

    @app.delete("/v1/streams/{sid}")
    async def delete_stream(sid: str):
        if streams.pop(sid, None) is None:
            raise ApiError(404, f"no stream {sid!r}")
        return {"id": sid, "deleted": True}

    return app


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable file names, or "\\ud800" in JSON
        return False
    return True


def _check_text(text: str, where: str) -> None:
    """Question text the tokenizer and the prompt template can take, or a 400 naming the field."""
    if not _is_utf8(text):
        raise ApiError(400, f"{where}: the text is not valid Unicode (a lone surrogate)")
    if "\0" in text:
        raise ApiError(400, f"{where}: the text contains a null character")
    for token in (VIDEO_TOKEN, IMAGE_TOKEN):
        if token in text:
            raise ApiError(400, f"{where}: the text contains {token}, the media placeholder; send media as a "
                                "video_url / image_url part")  # fmt: skip
