"""The full model on tiny random configs: forward, loss, gradients, generate, save/load, Auto classes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel

from storm_vlm import StormConfig, StormForConditionalGeneration, StormProcessor
from storm_vlm.modeling.reduction import ReductionSettings

from .conftest import random_frames


def _inputs(processor: StormProcessor, num_frames: int, **settings):
    prompt = processor.build_prompt("What happens first?")
    return processor(prompt, videos=[random_frames(num_frames)], **settings)


@pytest.mark.parametrize("num_frames", [8, 32, 128])
def test_forward_and_generate_on_8_32_128_frames(tiny, num_frames):
    model, processor = tiny
    inputs = _inputs(processor, num_frames, temporal_pool=4 if num_frames == 128 else 1)
    kw = {"temporal_pool": 4} if num_frames == 128 else {}
    with torch.no_grad():
        logits = model(**inputs, **kw).logits
        out = model.generate(**inputs, **kw, max_new_tokens=4, do_sample=False)
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_generate_with_cache_equals_without(tiny):
    model, processor = tiny
    inputs = _inputs(processor, 8)
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_visual_tokens_shape_and_counts(tiny):
    model, processor = tiny
    pixels = _inputs(processor, 10)["pixel_values_videos"]
    with torch.no_grad():
        for k, p, s in [(1, 1, 1), (4, 1, 1), (4, 2, 2), (3, 3, 2)]:
            tokens = model.get_visual_tokens(pixels, ReductionSettings(k, p, s))
            grid = model.config.token_grid
            t_out = math.ceil(math.ceil(10 / k) / s)
            n_out = math.ceil(grid[0] / p) * math.ceil(grid[1] / p)
            assert tokens.shape == (1, t_out, n_out, model.config.hidden_size)


def test_loss_is_finite_and_gradients_reach_projector_and_temporal(tiny):
    model, processor = tiny
    inputs = _inputs(processor, 8, training=True, temporal_pool=4)
    labels = inputs["input_ids"].clone()
    model.train()
    try:
        out = model(**inputs, labels=labels, temporal_pool=4)
        out.loss.backward()
    finally:
        model.eval()
    assert torch.isfinite(out.loss)
    for module in (model.projector, model.temporal):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert model.temporal.layers[0].mixer.backward_branch.A_log.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_sampling_is_inference_only(tiny):
    model, _processor = tiny
    assert model.reduction_settings(temporal_sampling=2).temporal_sampling == 2
    model.train()
    try:
        assert model.reduction_settings(temporal_sampling=2).temporal_sampling == 1
    finally:
        model.eval()


def test_placeholder_count_mismatch_is_a_clear_error(tiny):
    model, processor = tiny
    inputs = _inputs(processor, 8)  # built for k=1
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(**inputs, temporal_pool=4)


def test_images_are_one_frame_videos(tiny):
    model, processor = tiny
    prompt = processor.build_prompt("What colour is it?", media="image")
    inputs = processor(prompt, images=[random_frames(1)[0]])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        via_image = model(**inputs).logits
        video_prompt = processor.build_prompt("What colour is it?")
        as_video = processor(video_prompt, videos=[random_frames(1)])
        assert torch.allclose(
            model.get_visual_tokens(inputs["pixel_values"][:, None]),
            model.get_visual_tokens(as_video["pixel_values_videos"]),
        )
    assert torch.isfinite(via_image).all()


def test_batch_of_clips_with_different_lengths(tiny):
    model, processor = tiny
    prompt = processor.build_prompt("Count the objects.")
    clips = [random_frames(6, seed=1), random_frames(9, seed=2)]
    batch = processor([prompt, prompt], videos=clips)
    assert isinstance(batch["pixel_values_videos"], list)
    with torch.no_grad():
        logits = model(**batch).logits
        for i, clip in enumerate(clips):
            single = processor(prompt, videos=[clip])
            pad = batch["input_ids"].shape[1] - single["input_ids"].shape[1]
            alone = model(**single).logits[0]
            torch.testing.assert_close(logits[i, pad:], alone, rtol=1e-4, atol=1e-4)


def test_save_load_roundtrip_gives_identical_logits(tiny, tmp_path):
    model, processor = tiny
    inputs = _inputs(processor, 8)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)
    # Auto classes find STORM
    assert isinstance(AutoConfig.from_pretrained(tmp_path), StormConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), StormForConditionalGeneration)


def test_mlp_baseline_has_no_mamba_and_runs(tiny_mlp):
    model, processor = tiny_mlp
    assert model.temporal is None
    assert not any("A_log" in n for n, _ in model.named_parameters())
    inputs = _inputs(processor, 8, temporal_pool=4)
    with torch.no_grad():
        out = model.generate(**inputs, temporal_pool=4, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="projector_type"):
        StormConfig(projector_type="transformer")
    with pytest.raises(ValueError, match="temporal_pool"):
        StormConfig(temporal_pool=0)
