"""What a request may say: the OpenAI chat-completions body with storm's extras, the live-stream
bodies, every size bounded (a 422 names the field), and the text checks that make a bad question
a 400 instead of a crash in the tokenizer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..limits import MAX_FPS, MAX_FRAMES, MAX_NEW_TOKENS, MAX_REDUCTION
from ..processing_storm import IMAGE_TOKEN, VIDEO_TOKEN
from .media import is_utf8

__all__ = [
    "ApiError",
    "ChatRequest",
    "ContentPart",
    "Message",
    "StreamAsk",
    "StreamCreate",
    "StreamFrames",
    "UrlRef",
    "check_text",
    "parse_chat",
]


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


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


def parse_chat(req: ChatRequest, max_question_chars: int) -> tuple[str, str | None, str]:
    """(question text, media url or None, media kind) of a chat request, or a 400 naming the field."""
    texts, media = [], []
    for i, message in enumerate(req.messages):
        if message.role == "assistant":
            continue
        parts = (
            [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
        )
        for part in parts:
            if part.type == "text":
                text = part.text or ""
                check_text(text, f"messages[{i}].content")
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
    if len(question) > max_question_chars:
        raise ApiError(400, f"the question is {len(question)} characters; the limit is {max_question_chars}")
    url, kind = media[0] if media else (None, "none")
    return question, url, kind


def check_text(text: str, where: str) -> None:
    """Question text the tokenizer and the prompt template can take, or a 400 naming the field."""
    if not is_utf8(text):
        raise ApiError(400, f"{where}: the text is not valid Unicode (a lone surrogate)")
    if "\0" in text:
        raise ApiError(400, f"{where}: the text contains a null character")
    for token in (VIDEO_TOKEN, IMAGE_TOKEN):
        if token in text:
            raise ApiError(400, f"{where}: the text contains {token}, the media placeholder; send media as a "
                                "video_url / image_url part")  # fmt: skip
