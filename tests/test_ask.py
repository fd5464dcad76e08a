"""`storm-vlm ask` end to end on encoded files, and its one-line errors (exit status 2)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from storm_vlm.cli import app
from storm_vlm.inference import ask, load_model

from .media import make

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    result = runner.invoke(app, ["init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "720p": make(d / "hd.mp4", num_frames=50, height=720, width=1280, fps=25),  # H.264 with B-frames
        "qcif": make(d / "qcif.mp4", num_frames=60, height=144, width=176, fps=29.97),
    }


@pytest.mark.parametrize(
    ("clip", "args", "frames", "tokens"),
    [
        ("720p", [], 32, 32 * 16),
        ("720p", ["--frames", "32", "--temporal-pool", "4"], 32, 8 * 16),
        ("qcif", ["--frames", "32", "--temporal-pool", "4", "--sample", "2"], 32, 4 * 16),
        ("qcif", ["--frames", "32", "--temporal-pool", "4", "--sample", "2", "--spatial-pool", "2"], 32, 4 * 4),
        ("qcif", ["--fps", "10", "--max-frames", "12"], 12, 12 * 16),
    ],
)
def test_ask_answers_with_stats(model_dir, clips, clip, args, frames, tokens):
    cmd = ["ask", str(model_dir), str(clips[clip]), "What happens?", "--max-new-tokens", "4", "--stats", *args]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    assert re.search(rf"frames used\s*│\s*{frames}\s*│", result.output)
    assert re.search(rf"visual tokens to the LLM\s*│\s*{tokens}\s*│", result.output)
    for stage in ("decode", "vision", "temporal", "prefill", "decoding"):
        assert f"time: {stage}" in result.output


def test_python_api_matches_the_model_forward(model_dir, clips):
    import torch

    model, processor = load_model(model_dir)
    model.config.vision_chunk_size = 3  # the staged pipeline preprocesses and encodes 3 frames at a time
    answer = ask(model, processor, clips["qcif"], "Q?", num_frames=8, temporal_pool=4, max_new_tokens=3)
    assert answer.num_frames == 8 and answer.visual_tokens == 2 * 16 and answer.new_tokens <= 3
    assert set(answer.timings) == {"decode", "preprocess", "vision", "temporal", "prefill", "decoding"}
    # the staged pipeline generates what model.generate does from processor outputs
    from storm_vlm.video import sample_frames

    clip = sample_frames(clips["qcif"], num_frames=8)
    inputs = processor(processor.build_prompt("Q?"), videos=[clip.frames], temporal_pool=4)
    with torch.inference_mode():
        out = model.generate(**inputs, temporal_pool=4, max_new_tokens=3, do_sample=False)
    assert processor.decode(out[0, inputs["input_ids"].shape[1] :]).strip() == answer.text


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storm_vlm.cli", *args], capture_output=True, text=True, timeout=120)


def test_bad_inputs_exit_2_with_one_line(model_dir, clips, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated-model"
    shutil.copytree(model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cases = [
        (["ask", str(model_dir), str(tmp_path / "nope.mp4"), "Q"], "no such file"),
        (["ask", str(model_dir), str(text), "Q"], "not a video"),
        (["ask", str(model_dir), str(empty), "Q"], "empty"),
        (["ask", str(tmp_path), str(clips["qcif"]), "Q"], "no config.json"),
        (["ask", str(model_dir), str(clips["qcif"]), "Q", "--frames", "4", "--fps", "2"], "not both"),
        (["ask", str(model_dir), str(tmp_path / "[/b]clip[x].mp4"), "Q"], "[/b]clip[x].mp4: no such file"),
        (["ask", str(model_dir), str(clips["qcif"]), "Q", "--device", "bogus"], "is not a device"),
        (["ask", str(truncated), str(clips["qcif"]), "Q"], "model.safetensors: not a readable weight file"),
        (["synth", "--suite", "--tasks", ",", "--out", str(tmp_path / "s")], "no synth task"),
        (["train", "configs/tiny-stage2.yaml", "optim.lr=[1"], "is not a YAML value"),
    ]
    if not torch.cuda.is_available():
        cases.append((["ask", str(model_dir), str(clips["qcif"]), "Q", "--device", "cuda"], "CUDA is not available"))
    for args, message in cases:
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_token_budget_in_ask(model_dir, clips):
    model, processor = load_model(model_dir)
    answer = ask(model, processor, clips["qcif"], "Q?", num_frames=32, token_budget=100, max_new_tokens=2)
    # the tiny model was built with k=1: the budget is met by sampling (training-free), not by a k it never saw
    assert answer.visual_tokens <= 100 and answer.settings.temporal_pool == 1 and answer.settings.temporal_sampling == 8
    with pytest.raises(ValueError, match="not both"):
        ask(model, processor, clips["qcif"], "Q?", token_budget=100, temporal_pool=2)
    result = runner.invoke(app, ["ask", str(model_dir), str(clips["qcif"]), "Q", "--token-budget", "64", "--stats"])
    assert result.exit_code == 0 and "k=1 p=1 s=8" in result.output  # 32 frames x 16 tokens into 64


def test_a_prompt_over_the_context_is_refused_before_any_frame_is_encoded(model_dir, clips, monkeypatch):
    from storm_vlm.inference import PromptTooLongError, context_length, prepare_inputs
    from storm_vlm.video import sample_frames

    model, processor = load_model(model_dir)
    context = context_length(model)
    assert context == model.config.text_config.max_position_embeddings

    def no_vision(*args, **kwargs):
        raise AssertionError("the vision tower ran for a prompt that cannot fit")

    monkeypatch.setattr(model, "encode_video", no_vision)
    with pytest.raises(PromptTooLongError, match=f"model's context is {context}"):
        ask(model, processor, clips["qcif"], "x" * (context + 10), num_frames=4)
    monkeypatch.undo()
    clip = sample_frames(clips["qcif"], num_frames=4)
    prepared = prepare_inputs(model, processor, clip, "x" * 100, model.reduction_settings())
    assert prepared.new_token_limit(10**6) == context - prepared.prompt_tokens  # answers capped to what fits
    assert prepared.new_token_limit(7) == 7
