"""Hostile requests against a real `storm-vlm serve` process (uvicorn on loopback).

Every case an attacker or a careless client tried: each gets a 4xx that names the field (never a
500, never a server path), the server keeps answering, and no request outlives its deadline.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storm_vlm.video import write_video

from .media import make
from .server import init_tiny, running_server

TIMEOUT_S = 2.0  # --timeout of the server under test
READ_TIMEOUT_S = 1.0  # --read-timeout


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    outside = tmp_path_factory.mktemp("outside")
    make(root / "clip.mp4", num_frames=12, height=32, width=32)
    make(outside / "secret.mp4", num_frames=4, height=32, width=32)
    write_video(root / "one.mp4", np.full((1, 32, 32, 3), 200, np.uint8))
    (root / "notes.mp4").write_text("not a video, just text\n" * 20)
    os.close(os.open(os.fsencode(root) + b"/bad\xff-name.mp4", os.O_CREAT | os.O_WRONLY, 0o644))
    return {"root": root, "outside": outside}


@pytest.fixture(scope="module")
def server(media, tmp_path_factory) -> Iterator[str]:
    model_dir = init_tiny(tmp_path_factory.mktemp("model") / "tiny")
    with running_server(model_dir, "--media-root", str(media["root"]), "--max-frames", "128",
                        "--max-upload-mb", "1", "--max-queue", "2", "--timeout", str(TIMEOUT_S),
                        "--max-new-tokens", "4096", "--read-timeout", str(READ_TIMEOUT_S)) as url:  # fmt: skip
        yield url


def post(url: str, body: bytes | dict, path: str = "/v1/chat/completions", timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def chat(video_url: str = "clip.mp4", text: str = "What happens?", **extra) -> dict:
    content = [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "frames": 8, **extra}


def data_url(payload: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def assert_refused(status: int, body: dict, code: int, *words: str, media: dict | None = None) -> None:
    assert status == code, body
    message = body["error"]["message"]
    for word in words:
        assert word in message, message
    if media is not None:
        for folder in media.values():
            assert str(folder) not in message, message  # never a server path


def test_a_concat_playlist_upload_cannot_read_files_outside_the_root(server, media):
    secret = media["outside"] / "secret.mp4"
    for target in (str(secret), os.path.relpath(secret, "/tmp"), "../" * 12 + str(secret).lstrip("/")):
        playlist = f"ffconcat version 1.0\nfile '{target}'\n".encode()
        status, body = post(server, chat(data_url(playlist), preview=4))
        assert_refused(status, body, 400, "the upload", media=media)
        assert "preview" not in json.dumps(body)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"temporal_pool": 400000}, "temporal_pool"),
        ({"temporal_pool": 1e30}, "temporal_pool"),
        ({"spatial_pool": 10**9}, "spatial_pool"),
        ({"temporal_sampling": 10**9}, "temporal_sampling"),
        ({"fps": 1e6}, "fps"),
        ({"fps": 1e12}, "fps"),
        ({"frames": 1000000}, "frames"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"token_budget": 10**12}, "token_budget"),
        ({"preview": 10**6}, "preview"),
    ],
)
def test_every_size_knob_is_bounded(server, extra, field):
    status, body = post(server, chat(**extra))
    assert_refused(status, body, 422, field)


def test_infinity_and_nan_are_refused(server):
    for literal in ("Infinity", "NaN", "-Infinity"):
        raw = json.dumps(chat()).replace('"frames": 8', f'"fps": {literal}').encode()
        status, body = post(server, raw)
        assert_refused(status, body, 422, "fps")


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("clip\0.mp4", 400, ("null character",)),
        ("a" * 5000 + ".mp4", 400, ("characters",)),
        ("./" * 1500 + "clip.mp4", 400, ("parts",)),
        ("\ud800.mp4", 400, ("Unicode",)),
        ("notes.mp4", 400, ("notes.mp4",)),  # a text file is not a video; the message names it as sent
        ("../outside/secret.mp4", 403, ("outside the media root",)),
        (data_url(b"\x00" * 64), 400, ("the upload",)),
        (data_url(os.urandom(4096)), 400, ("the upload",)),
        (data_url(b"GIF89a" + os.urandom(512), "image/gif"), 400, ("the upload",)),
    ],
)
def test_bad_media_references_are_a_clear_4xx(server, media, url, code, words):
    status, body = post(server, chat(url))
    assert_refused(status, body, code, *words, media=media)


def test_bad_question_text_is_a_clear_4xx(server, media):
    for text, words in (("what is <video> here", ("<video>", "messages[0].content")),
                        ("an <image> in text", ("<image>",)), ("\ud800", ("Unicode",)),
                        ("nul\0char", ("null",))):  # fmt: skip
        status, body = post(server, chat(text=text))
        assert_refused(status, body, 400, *words, media=media)
    status, body = post(server, chat(token_budget=1))
    assert_refused(status, body, 400, "cannot fit 1 visual tokens")


def test_a_prompt_longer_than_the_context_is_refused(server):
    status, body = post(server, chat(text="x" * 150_000))
    assert_refused(status, body, 400, "context is 8192")


def test_one_frame_videos_are_answered(server):
    status, body = post(server, chat("one.mp4"))
    assert status == 200 and body["storm"]["frames"] == 1, body


def test_media_listing_skips_names_that_are_not_utf8(server):
    with urllib.request.urlopen(server + "/v1/media", timeout=10) as r:
        files = json.loads(r.read())["files"]
    assert "clip.mp4" in files and not any(name.startswith("bad") for name in files)


def test_a_request_past_its_deadline_stops_its_work(server):
    """A long generation gets its 504 at the deadline and stops there: the next request is served."""
    started = time.perf_counter()
    status, body = post(server, chat(max_tokens=4096, frames=128))
    late = time.perf_counter() - started
    assert_refused(status, body, 504, "longer than")
    assert late < TIMEOUT_S + 1.5
    started = time.perf_counter()
    status, body = post(server, chat())
    assert status == 200, body
    assert time.perf_counter() - started < TIMEOUT_S  # not queued behind the abandoned work


def test_streaming_holds_a_queue_place_and_its_deadline(server):
    """A streamed request counts against --max-queue (2) while it streams, and ends with a 504
    event at its deadline instead of generating on."""
    from concurrent.futures import ThreadPoolExecutor

    request = urllib.request.Request(server + "/v1/chat/completions",
                                     data=json.dumps(chat(max_tokens=4096, stream=True)).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as stream, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, server, chat())  # the second place: queued behind the stream
        time.sleep(0.3)
        status, body = post(server, chat())
        assert_refused(status, body, 429, "busy")
        events = [line.decode() for line in stream if line.startswith(b"data: ")]
        assert time.perf_counter() - started < TIMEOUT_S + 1.5
        assert events[-1].strip() == "data: [DONE]" and '"code": 504' in events[-2]
        assert waiting.result()[0] in (200, 504)
    status, body = post(server, chat())
    assert status == 200, body


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("content-type", "application/json")
    conn.putheader("content-length", str(200 * 2**20))  # 200 MB announced, nothing sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "larger than the limit" in json.loads(response.read())["error"]["message"]
    conn.close()
    big = json.dumps(chat(data_url(b"\0" * 3 * 2**20))).encode()  # chunked: no length announced
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/v1/chat/completions", body=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
                 headers={"content-type": "application/json"}, encode_chunked=True)  # fmt: skip
    assert conn.getresponse().status == 413
    conn.close()


def test_stalled_connections_are_closed(server):
    host, port = server.removeprefix("http://").split(":")
    sockets = []
    for i in range(50):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"GET /hea")
        sockets.append(s)
    time.sleep(READ_TIMEOUT_S + 1.5)
    closed = 0
    for s in sockets:
        try:
            closed += s.recv(1024) == b""
        except ConnectionResetError:
            closed += 1
        s.close()
    assert closed == len(sockets)
    with urllib.request.urlopen(server + "/health", timeout=5) as r:
        assert r.status == 200
