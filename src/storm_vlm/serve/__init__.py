"""Serving: an OpenAI-compatible chat API with video input, and live video streams."""

from .app import create_app
from .config import ServerConfig
from .media import MediaError, resolve_media

__all__ = ["MediaError", "ServerConfig", "create_app", "resolve_media"]
