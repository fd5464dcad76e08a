"""One inference pipeline: ask, eval, the lmms-eval plugin, serve, live streams and the bench all
generate through ``inference.generate_batch`` (``generate_answer`` for one prompt), and a caller's
streamer changes nothing in the answer."""

from __future__ import annotations

import json
import sys
from types import CodeType

import pytest
import torch
from fastapi.testclient import TestClient
from transformers.generation.streamers import BaseStreamer

from storm_vlm import inference
from storm_vlm.inference import ask, generate_answer, prepare_inputs
from storm_vlm.modeling.modeling_storm import StormForConditionalGeneration
from storm_vlm.presets import build_tiny
from storm_vlm.serve import ServerConfig, create_app
from storm_vlm.streaming import StormStream
from storm_vlm.video import sample_frames

from .conftest import random_frames
from .media import make


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make(root / "clip.mp4", num_frames=12, height=32, width=32)
    return root


@pytest.fixture
def generate_callers(monkeypatch) -> list[CodeType]:
    """The code of the function behind every ``model.generate`` call (any model, any thread)."""
    callers: list[CodeType] = []
    generate = StormForConditionalGeneration.generate

    def recording(self, *args, **kwargs):
        callers.append(sys._getframe(1).f_code)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(StormForConditionalGeneration, "generate", recording)
    return callers


def only_the_shared_step(callers: list[CodeType]) -> bool:
    return bool(callers) and all(code is inference.generate_batch.__code__ for code in callers)


class Recorder(BaseStreamer):
    """Keeps what generate streams: the prompt's put first, then one put per new token."""

    def __init__(self) -> None:
        self.puts: list[torch.Tensor] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.clone())

    def end(self) -> None:
        self.ended = True


def test_ask_generates_through_the_shared_step(media_root, generate_callers):
    model, processor = build_tiny()
    answer = ask(model, processor, media_root / "clip.mp4", "What happens?", num_frames=4, max_new_tokens=3)
    assert only_the_shared_step(generate_callers)
    assert {"prefill", "decoding"} <= set(answer.timings)  # ask is the timed pipeline


def test_serve_chat_generates_through_the_shared_step(media_root, generate_callers):
    model, processor = build_tiny()
    api = TestClient(create_app(model, processor, ServerConfig(media_root=media_root)))
    content = [{"type": "video_url", "video_url": {"url": "clip.mp4"}}, {"type": "text", "text": "What happens?"}]
    body = {"model": "storm", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "frames": 4}
    whole = api.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    streamed = api.post("/v1/chat/completions", json=dict(body, stream=True))
    assert streamed.status_code == 200
    assert len(generate_callers) == 2 and only_the_shared_step(generate_callers)
    # the SSE text streamer rides on the shared step's streamer; the answer is the one not streamed
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() == whole.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == whole.json()["usage"]["completion_tokens"]


def test_stream_ask_generates_through_the_shared_step(generate_callers):
    torch.manual_seed(0)
    model, processor = build_tiny(bidirectional=False)
    stream = StormStream(model, model.reduction_settings(temporal_pool=2))
    stream.add_frames(processor.preprocess_frames(random_frames(4)))
    prepared = stream.prepare(processor, "What happened?")  # what a scorer reads
    assert prepared.inputs_embeds.shape[:2] == prepared.attention_mask.shape == (1, prepared.prompt_tokens)
    answer = stream.ask(processor, "What happened?", max_new_tokens=3)
    assert only_the_shared_step(generate_callers)
    expected = generate_answer(model, prepared, 3, do_sample=False, timed=False)
    assert answer == processor.decode(expected).strip()


def test_bench_cell_generates_through_the_shared_step(tmp_path, generate_callers):
    from storm_vlm.bench import _make_video, _measure_cell, preset_config

    size = preset_config("tiny").vision_config.image_size
    video = _make_video(tmp_path / "clip.mp4", 4, size)
    spec = {"preset": "tiny", "projector": "storm", "settings": [1, 1, 1], "frames": 4, "video": str(video),
            "model_dir": None, "device": "cpu", "fast": False, "new_tokens": 3}  # fmt: skip
    result = _measure_cell(spec)
    assert only_the_shared_step(generate_callers)  # the warm-up and the measured run
    assert result["latency_s"]["prefill"] > 0 and result["latency_s"]["decoding"] > 0


def test_a_callers_streamer_sees_every_token_and_changes_nothing(tiny, media_root):
    model, processor = tiny
    clip = sample_frames(media_root / "clip.mp4", num_frames=4)
    prepared = prepare_inputs(model, processor, clip, "What happens?", model.reduction_settings())
    alone = generate_answer(model, prepared, 6, min_new_tokens=6)
    first = dict(prepared.timer.timings)
    recorder = Recorder()
    streamed = generate_answer(model, prepared, 6, min_new_tokens=6, streamer=recorder)
    assert torch.equal(alone, streamed) and alone.shape == (6,)
    assert recorder.ended and torch.equal(torch.cat([p.flatten() for p in recorder.puts[1:]]), streamed)
    # the first-token clock still ran beside the caller's streamer: the timings grew
    assert prepared.timer.timings["prefill"] > first["prefill"] and prepared.timer.timings["decoding"] > 0
    untimed = dict(prepared.timer.timings)
    assert torch.equal(generate_answer(model, prepared, 6, min_new_tokens=6, timed=False), alone)
    assert prepared.timer.timings == untimed


def test_stop_and_pad_ids_come_from_the_generation_config(tiny, media_root):
    model, processor = tiny
    assert model.generation_config.eos_token_id == processor.stop_token_ids
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    clip = sample_frames(media_root / "clip.mp4", num_frames=2)
    prepared = prepare_inputs(model, processor, clip, "Q?", model.reduction_settings())
    for name in ("eos_token_id", "pad_token_id"):
        with pytest.raises(TypeError, match="generation config"):
            generate_answer(model, prepared, 2, **{name: 0})
