"""Serving: chat completions with video, SSE streaming, errors, security, backpressure, live streams."""

from __future__ import annotations

import base64
import io
import json
import os

import httpx
import pytest
from fastapi.testclient import TestClient

from storm_vlm.presets import build_tiny
from storm_vlm.serve import ServerConfig, create_app

from .media import make
from .server import init_tiny, running_server


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make(root / "clip.mp4", num_frames=12, height=32, width=32)
    (root / "notes.mp4").write_text("not a video")
    outside = tmp_path_factory.mktemp("outside")
    make(outside / "secret.mp4", num_frames=4, height=32, width=32)
    os.symlink(outside / "secret.mp4", root / "link.mp4")
    return root


@pytest.fixture(scope="module")
def client(media_root):
    model, processor = build_tiny()
    causal, causal_processor = build_tiny(bidirectional=False)
    app = create_app(model, processor, ServerConfig(media_root=media_root, max_frames=16, max_upload_mb=1))
    stream_app = create_app(causal, causal_processor, ServerConfig(media_root=media_root, stream_window=4))
    return TestClient(app), TestClient(stream_app)


def chat(video_url, text="What happens?", **extra):
    content = [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": text}]
    return {"model": "storm", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def test_chat_completion_with_a_video_under_the_media_root(client):
    api, _ = client
    r = api.post("/v1/chat/completions", json=chat("clip.mp4", frames=8, temporal_pool=4))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["visual_tokens"] == 2 * 16 and body["storm"]["frames"] == 8
    assert body["usage"]["completion_tokens"] <= 4


def test_preview_returns_the_sampled_frames_as_small_jpegs(client):
    from PIL import Image

    api, _ = client
    body = api.post("/v1/chat/completions", json=chat("clip.mp4", frames=8, preview=3)).json()
    previews = body["storm"]["preview"]
    assert len(previews) == 3 and [p["t"] for p in previews] == sorted(p["t"] for p in previews)
    for p in previews:
        header, data = p["image"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "JPEG" and image.height == 96
    assert "preview" not in api.post("/v1/chat/completions", json=chat("clip.mp4", frames=8)).json()["storm"]
    streamed = api.post("/v1/chat/completions", json=chat("clip.mp4", frames=8, preview=2, stream=True)).text
    tail = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")][-1]
    assert len(tail["storm"]["preview"]) == 2
    r = api.post("/v1/chat/completions", json=chat("clip.mp4", frames=8, preview=65))
    assert r.status_code == 422 and "preview" in r.text


def test_every_model_call_runs_on_one_worker_thread(media_root, monkeypatch):
    """CUDA graphs are recorded per thread: plain and streamed requests must share one model thread."""
    import threading

    model, processor = build_tiny()
    threads = set()
    generate = model.generate

    def recording_generate(*args, **kwargs):
        threads.add(threading.get_ident())
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    api = TestClient(create_app(model, processor, ServerConfig(media_root=media_root)))
    for stream in (False, True, False, True):
        assert api.post("/v1/chat/completions", json=chat("clip.mp4", frames=4, stream=stream)).status_code == 200
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_data_url_upload_and_token_budget(client, media_root):
    api, _ = client
    data = base64.b64encode((media_root / "clip.mp4").read_bytes()).decode()
    r = api.post("/v1/chat/completions", json=chat(f"data:video/mp4;base64,{data}", frames=8, token_budget=16))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["visual_tokens"] <= 16


def test_streaming_sends_sse_chunks(client):
    api, _ = client
    with api.stream("POST", "/v1/chat/completions", json=chat("clip.mp4", stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" in chunks[-1]


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("../outside/secret.mp4", 403, "outside the media root"),
        ("/etc/passwd", 403, "outside the media root"),
        ("link.mp4", 403, "outside the media root"),  # a symlink escaping the root
        ("http://example.com/v.mp4", 400, "remote URLs are not fetched"),
        ("missing.mp4", 404, "no such file"),
        ("notes.mp4", 400, "not a video"),
        ("data:video/mp4;base64,@@@", 400, "not valid base64"),
        ("data:application/zip;base64,AAAA", 415, "unsupported media type"),
        ("data:video/mp4;base64," + "A" * (2 * 2**20), 413, "larger than the limit"),
    ],
)
def test_hostile_media_gets_a_clear_4xx(client, url, status, message):
    api, _ = client
    r = api.post("/v1/chat/completions", json=chat(url))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_malformed_requests_are_4xx(client):
    api, _ = client
    assert (
        api.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    r = api.post("/v1/chat/completions", json={"messages": "hello"})
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
    r = api.post("/v1/chat/completions", json=chat("clip.mp4", max_tokens=-1))
    assert r.status_code == 422
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "no video"}]})
    assert r.status_code == 400 and "video_url" in r.json()["error"]["message"]
    assert api.get("/health").json()["status"] == "ok"  # still up
    assert api.get("/v1/models").json()["data"][0]["id"] == "storm"


def test_backpressure_answers_429(client, media_root):
    model, processor = build_tiny()
    api = TestClient(create_app(model, processor, ServerConfig(media_root=media_root, max_queue=0)))
    r = api.post("/v1/chat/completions", json=chat("clip.mp4"))
    assert r.status_code == 429 and "busy" in r.json()["error"]["message"]


def test_live_stream_lifecycle(client, media_root):
    api, stream_api = client
    assert api.post("/v1/streams").status_code == 400  # bidirectional model: cannot stream
    sid = stream_api.post("/v1/streams", json={"temporal_pool": 2}).json()["id"]
    for _ in range(3):
        r = stream_api.post(f"/v1/streams/{sid}/frames", json={"video_url": {"url": "clip.mp4"}})
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["frames_seen"] == 36 and body["visual_tokens"] == 4 * 16  # window of 4 pooled frames
    r = stream_api.post(f"/v1/streams/{sid}/ask", json={"question": "What happened?", "max_tokens": 3})
    assert r.status_code == 200 and isinstance(r.json()["answer"], str)
    assert stream_api.delete(f"/v1/streams/{sid}").status_code == 200
    assert stream_api.post(f"/v1/streams/{sid}/ask", json={"question": "?"}).status_code == 404


@pytest.fixture(scope="module")
def live_server(media_root, tmp_path_factory):
    """A real `storm-vlm serve` process (uvicorn) on a free loopback port."""
    model_dir = init_tiny(tmp_path_factory.mktemp("model") / "tiny")
    with running_server(model_dir, "--media-root", str(media_root), "--max-frames", "16") as url:
        yield url


def test_openai_client_against_a_real_server(live_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=live_server + "/v1", api_key="unused")
    content = [{"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "text", "text": "What happens?"}]
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=4)
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens <= 4
    pieces = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=4, stream=True
    )
    chunks = list(pieces)
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError):
        bad = [{"type": "video_url", "video_url": {"url": "http://example.com/x.mp4"}}, {"type": "text", "text": "?"}]
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": bad}])


def test_page_in_headless_chromium(live_server, tmp_path):
    """The page at / lists the media, asks with streaming, and shows the answer and the stats."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    question = "Which way does the bar move?"
    content = [{"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "text", "text": question}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 64, "frames": 8}
    reply = httpx.post(live_server + "/v1/chat/completions", json=body, timeout=120)
    expected = reply.json()["choices"][0]["message"]["content"]
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--disable-sync"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(live_server + "/")
            page.wait_for_selector("#video option[value='clip.mp4']", state="attached", timeout=30_000)
            page.select_option("#video", "clip.mp4")
            page.fill("#nframes", "8")
            page.fill("#question", question)
            page.click("#ask")
            page.wait_for_function("document.getElementById('stats').textContent.includes('visual tokens')",
                                   timeout=60_000)  # fmt: skip
            # the page shows exactly the model's answer (the same request through the API, not
            # streamed), or its note when the answer is only whitespace; waited for, since the
            # stats arrive before the stream's last chunk
            shown = expected if expected.strip() else "(the model produced no visible text)"
            page.wait_for_function(
                f"document.getElementById('answer').textContent === {json.dumps(shown)}", timeout=30_000
            )
            assert "frames 8" in page.text_content("#stats")
            assert page.locator("#frames img").count() == 8  # the sampled frames, previewed
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_idle_streams_expire(media_root):
    causal, processor = build_tiny(bidirectional=False)
    api = TestClient(
        create_app(causal, processor, ServerConfig(media_root=media_root, stream_idle_s=0.0, max_streams=1))
    )
    sid = api.post("/v1/streams").json()["id"]
    r = api.post(f"/v1/streams/{sid}/frames", json={"video_url": {"url": "clip.mp4"}})
    assert r.status_code == 404 and "expired" in r.json()["error"]["message"]
    assert api.post("/v1/streams").status_code == 200  # the expired one no longer counts against max_streams
