"""Building STORM from pretrained parts saved to local HF directories, and `storm-vlm init`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import Qwen2ForCausalLM
from typer.testing import CliRunner

from storm_vlm import StormForConditionalGeneration, StormProcessor
from storm_vlm.cli import app
from storm_vlm.presets import tiny_text_config, tiny_tokenizer

from .conftest import random_frames
from .test_from_parts import save_part
from .test_temporal_init import _first_frame_shift

runner = CliRunner()


PART_KINDS = {  # fixture param → (checkpoint kind, saved layout) of tests/test_from_parts.py
    "vision-only": ("siglip-vision", "saved"),
    "dual-encoder": ("siglip-dual", "saved"),
    "paligemma": ("paligemma", "hub"),  # configs/7b-stage1.yaml's tower: keys vision_tower.vision_model.*
}


@pytest.fixture(scope="module", params=list(PART_KINDS))
def parts(request, tmp_path_factory):
    """A tiny 'pretrained' SigLIP (alone, in a dual encoder or in PaliGemma) and Qwen2 with tokenizer."""
    root = tmp_path_factory.mktemp(request.param)
    vision_dir, llm_dir = root / "vision", root / "qwen2"
    kind, layout = PART_KINDS[request.param]
    vision_state = save_part(kind, vision_dir, layout)
    torch.manual_seed(1)
    tokenizer = tiny_tokenizer(placeholders=False)
    llm = Qwen2ForCausalLM(tiny_text_config(len(tokenizer)))  # no spare rows: placeholders force a resize
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return vision_dir, llm_dir, vision_state, llm.state_dict()


def test_init_from_parts_keeps_pretrained_weights_and_runs(parts, tmp_path):
    vision_dir, llm_dir, vision_state, llm_state = parts
    out = tmp_path / "storm"
    result = runner.invoke(app, ["init", "--vision", str(vision_dir), "--llm", str(llm_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (out / name).is_file(), name

    model = StormForConditionalGeneration.from_pretrained(out).eval()
    processor = StormProcessor.from_pretrained(out)
    for name, value in vision_state.items():
        torch.testing.assert_close(model.vision_tower.state_dict()[name], value, msg=name)
    old_rows = llm_state["model.embed_tokens.weight"].shape[0]
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] > old_rows  # grew to hold <video> / <image>
    torch.testing.assert_close(embeddings[:old_rows], llm_state["model.embed_tokens.weight"])
    torch.testing.assert_close(
        model.language_model.layers[0].mlp.up_proj.weight, llm_state["model.layers.0.mlp.up_proj.weight"]
    )
    assert model.config.video_token_id == processor.video_token_id < embeddings.shape[0]

    # the temporal module starts as mamba_ssm's Mamba here too: the last frame reaches the first
    assert _first_frame_shift(model) >= 1e-6
    model.eval()

    inputs = processor(processor.build_prompt("What happens?"), videos=[random_frames(4)])
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_init_preset_tiny_and_options(tmp_path):
    out = tmp_path / "tiny"
    args = ["init", "--preset", "tiny", "--out", str(out), "--projector", "mlp", "--temporal-pool", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = StormForConditionalGeneration.from_pretrained(out)
    assert model.config.projector_type == "mlp" and model.config.temporal_pool == 4
    assert StormProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids("<video>") == model.config.video_token_id
    # refusing to overwrite a non-empty directory
    again = runner.invoke(app, ["init", "--preset", "tiny", "--out", str(out)])
    assert again.exit_code != 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "--out", "X"], "either --preset"),
        (["init", "--vision", "/nonexistent/siglip", "--llm", "/nonexistent/qwen", "--out", "X"], "no config.json"),
        (["init", "--preset", "huge", "--out", "X"], "unknown preset"),
    ],
)
def test_bad_init_is_one_clear_line(args, message, tmp_path):
    args = [a.replace("X", str(tmp_path / "out")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "storm_vlm.cli", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()  # nothing half-written
