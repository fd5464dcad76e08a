"""Checkpoints written by storm-vlm 0.1 (before ``.model`` / ``.lm_head``) load into today's classes.

``tests/fixtures/checkpoint-0.1`` was saved by storm-vlm 0.1 (commit d5c7fcd), a tiny model in
fp16 with ``reference.safetensors``: a prompt, four frames and the last four logits that version
computed in fp32. The renaming in ``modeling_storm.CHECKPOINT_RENAMES`` maps its keys on load and
back on save.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageTextToText

from storm_vlm import StormForConditionalGeneration, StormModel, StormProcessor
from storm_vlm.presets import build_tiny

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint-0.1"
OLD_PREFIXES = {"language_model", "projector", "temporal", "vision_tower"}


def _prefixes(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {key.split(".", 1)[0] for key in f.keys()}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "reference.safetensors")


def test_fixture_is_in_the_old_layout():
    assert _prefixes(FIXTURE / "model.safetensors") == OLD_PREFIXES


def test_old_checkpoint_gives_the_logits_it_gave(reference):
    model, info = StormForConditionalGeneration.from_pretrained(FIXTURE, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        logits = model(
            input_ids=reference["input_ids"],
            pixel_values_videos=reference["pixel_values_videos"],
            video_reduction=reference["video_reduction"],
        ).logits
    torch.testing.assert_close(logits[0, -4:], reference["logits"], rtol=0, atol=1e-5)


def test_old_checkpoint_through_the_auto_classes_and_its_processor(reference):
    full = AutoModelForImageTextToText.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    body, info = AutoModel.from_pretrained(FIXTURE, dtype=torch.float32, output_loading_info=True)
    assert type(full) is StormForConditionalGeneration and type(body) is StormModel
    assert not info["missing_keys"], info  # lm_head is the one key the body has no place for
    processor = StormProcessor.from_pretrained(FIXTURE)
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == full.config.video_token_id
    inputs = dict(input_ids=reference["input_ids"], pixel_values_videos=reference["pixel_values_videos"])
    with torch.no_grad():
        hidden = body.eval()(**inputs).last_hidden_state
        torch.testing.assert_close(full.lm_head(hidden)[0, -4:], reference["logits"], rtol=0, atol=1e-5)


def test_saving_writes_the_old_layout_readable_and_reloads_exactly(tmp_path):
    """transformers reverses the renaming on save: a directory written today loads in 0.1 too."""
    model, _ = build_tiny()
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    assert _prefixes(weights) == OLD_PREFIXES
    expected_mode = 0o666 & ~_umask()
    assert stat.S_IMODE(os.stat(weights).st_mode) == expected_mode
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path)
    state, again = model.state_dict(), loaded.state_dict()
    assert set(state) == set(again) and all(torch.equal(state[k], again[k]) for k in state)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight  # tied, as the tiny LLM's config says


def test_a_saved_body_loads_into_the_full_model(tmp_path):
    model, _ = build_tiny()
    model.model.save_pretrained(tmp_path)
    loaded, info = StormForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = model.model.state_dict()
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in state.items())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
