"""OpenAI-compatible HTTP server with video input, and live video streams.

    storm-vlm serve runs/storm --media-root /data/videos --port 8000

Endpoints: ``POST /v1/chat/completions`` (OpenAI format; content parts ``text``, ``video_url``,
``image_url``; ``stream: true`` as server-sent events; :mod:`.chat`), ``GET /v1/models``,
``GET /health``, ``GET /v1/media``, the page at ``/``, and live streams (:mod:`.streams`). One
model worker serves requests in order; at most ``max_queue`` wait (429 beyond), streamed or not;
each request has a deadline (504) that also stops its work, so a late request does not hold up the
ones behind it (:mod:`.worker`). Bodies over the upload limit get 413 before they are parsed
(:mod:`.limits`). Errors are OpenAI-style JSON with a 4xx code naming the field (:mod:`.schema`),
and never show server paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from .chat import ChatService
from .config import ServerConfig
from .limits import BodyLimit
from .media import MediaError, is_utf8
from .schema import ApiError, ChatRequest, StreamAsk, StreamCreate, StreamFrames
from .streams import StreamService
from .worker import ModelWorker

__all__ = ["ServerConfig", "create_app"]

MEDIA_SUFFIXES = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".jpg", ".jpeg", ".png", ".webp"})


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


def create_app(model: Any, processor: Any, config: ServerConfig | None = None, model_id: str = "storm") -> FastAPI:
    """A FastAPI app serving ``model`` (already loaded) with ``processor``."""
    cfg = config or ServerConfig()
    app = FastAPI(title="storm-vlm", version="0.1.0")
    worker = ModelWorker(cfg.max_queue, cfg.request_timeout_s)
    chat = ChatService(model, processor, cfg, worker, model_id)
    streams = StreamService(model, processor, cfg, worker)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.kind)

    @app.exception_handler(MediaError)
    async def _media_error(_: Request, err: MediaError) -> JSONResponse:
        return _error(err.status, str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"invalid request: {where}: {first.get('msg', 'malformed')}" if where else
                      "invalid request body")  # fmt: skip

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:  # a bug: say so, show no internals
        return _error(500, "internal server error", "server_error")

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        return await chat.answer(req)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (Path(__file__).parent / "static" / "index.html").read_text()

    @app.get("/v1/media")
    async def media_files():
        """Videos and images under the media root (for the page's picker), at most 500."""
        return {"files": _media_files(cfg.media_root, limit=500)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "storm-vlm"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "pending": worker.pending, "streams": len(streams.streams)}

    @app.post("/v1/streams")
    async def create_stream(body: StreamCreate | None = None):
        return streams.create(body)

    @app.post("/v1/streams/{sid}/frames")
    async def add_frames(sid: str, body: StreamFrames):
        return await streams.add_frames(sid, body)

    @app.post("/v1/streams/{sid}/ask")
    async def ask_stream(sid: str, body: StreamAsk):
        return await streams.ask(sid, body)

    @app.delete("/v1/streams/{sid}")
    async def delete_stream(sid: str):
        return streams.delete(sid)

    return app


def _media_files(media_root: Path | None, limit: int) -> list[str]:
    if media_root is None:
        return []
    root = media_root.resolve()
    files = []
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if not is_utf8(name):  # a name that is not UTF-8 cannot be sent back in JSON, nor asked for
            continue
        if path.suffix.lower() in MEDIA_SUFFIXES and path.is_file() and root in path.resolve().parents:
            files.append(name)
            if len(files) >= limit:
                break
    return files
