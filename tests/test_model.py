"""The full model on tiny random configs: forward, loss, gradients, generate, save/load, Auto classes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from storm_vlm import StormConfig, StormForConditionalGeneration, StormModel, StormProcessor
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
    del inputs["video_reduction"]  # without the layout the processor records, the call's k=4 is used
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(**inputs, temporal_pool=4)
    with pytest.raises(ValueError, match="give one of them"):  # and with it, a different k is refused
        model(**_inputs(processor, 8), temporal_pool=4)


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
    # Auto classes find STORM, as transformers' VLMs: AutoModel the body, the image-text-to-text class the whole
    assert isinstance(AutoConfig.from_pretrained(tmp_path), StormConfig)
    body = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(body, StormModel)
    assert isinstance(AutoModelForImageTextToText.from_pretrained(tmp_path), StormForConditionalGeneration)
    with torch.no_grad():  # the body's last hidden states, through the head, are the model's logits
        hidden = body(**inputs).last_hidden_state
        assert torch.equal(loaded.lm_head(hidden), loaded(**inputs).logits)


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


def test_vision_chunk_size_does_not_change_tokens(tiny):
    model, processor = tiny
    pixels = _inputs(processor, 9)["pixel_values_videos"]
    with torch.no_grad():
        whole = model.get_visual_tokens(pixels)
        model.config.vision_chunk_size = 2
        try:
            chunked = model.get_visual_tokens(pixels)
        finally:
            model.config.vision_chunk_size = 64
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    torch.manual_seed(0)
    from storm_vlm.presets import build_tiny

    model, processor = build_tiny()
    inputs = _inputs(processor, 6, training=True)
    labels = inputs["input_ids"].clone()
    model.train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), model.projector.proj.weight.grad.clone()))
    assert model.temporal.layers[0].gradient_checkpointing
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_bfloat16_forward():
    torch.manual_seed(0)
    from storm_vlm.presets import build_tiny

    model, processor = build_tiny()
    model.to(torch.bfloat16)
    inputs = _inputs(processor, 4)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_clip_vision_tower_drops_the_cls_token():
    from transformers import CLIPVisionConfig, Qwen2Config

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=4
    )
    text = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = StormConfig(vision_config=vision, text_config=text, video_token_id=5, temporal_layers=1, d_state=4)
    model = StormForConditionalGeneration(config).eval()
    assert config.patch_grid == (7, 7) and config.token_grid == (4, 4)  # odd grid → zero-padded 2x2
    with torch.no_grad():
        tokens = model.get_visual_tokens(torch.randn(1, 3, 3, 28, 28))
    assert tokens.shape == (1, 3, 16, 32)


def test_plain_config_api_forward_and_generate():
    """The README's 'few lines' path: a tiny StormConfig, placeholder ids by hand, 8/32/128 frames."""
    config = StormConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
        video_token_id=255, temporal_layers=1, temporal_pool=4,
    )  # fmt: skip
    model = StormForConditionalGeneration(config).eval()
    for frames in (8, 32, 128):
        video = torch.randn(1, frames, 3, 32, 32)
        n_visual = model.get_visual_tokens(video).shape[1:3].numel()  # T'·N'
        input_ids = torch.tensor([[1, 2] + [255] * n_visual + [3, 4]])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, pixel_values_videos=video, max_new_tokens=3, do_sample=False)
        assert n_visual == (frames // 4) * 4 and out.shape[1] == input_ids.shape[1] + 3


def test_the_processor_layout_makes_generate_repeat_nothing(tiny):
    """``video_reduction`` rows carry the k, p, s the placeholders were expanded with: the model
    reads them, so ``generate(**inputs)`` equals the call with the settings repeated by hand."""
    model, processor = tiny
    inputs = _inputs(processor, 16, temporal_pool=4, spatial_pool=2)
    layout = inputs.pop("video_reduction")  # what the processor returns, compared by hand below
    assert layout.tolist() == [[4, 2, 1]]
    with torch.no_grad():
        by_hand = model.generate(**inputs, temporal_pool=4, spatial_pool=2, max_new_tokens=4, do_sample=False)
        by_layout = model.generate(**inputs, video_reduction=layout, max_new_tokens=4, do_sample=False)
        logits = model(**inputs, video_reduction=layout).logits
        assert torch.equal(logits, model(**inputs, temporal_pool=4, spatial_pool=2).logits)
        with pytest.raises(ValueError, match="placeholder"):
            model(**inputs)  # without it, the config's k=1 p=1 does not match the placeholders
        with pytest.raises(ValueError, match="give one of them"):
            model(**inputs, video_reduction=layout, temporal_pool=2)
        with pytest.raises(ValueError, match="same"):
            model(**inputs, video_reduction=torch.tensor([[4, 2, 1], [2, 2, 1]]))
    assert torch.equal(by_hand, by_layout)


def test_video_and_image_features_and_placeholder_mask_as_transformers_vlms_give_them(tiny):
    """get_video_features / get_image_features / get_placeholder_mask, on the built model: the
    tokens are what forward splices in, a list of clips equals each clip alone, counts are checked."""
    model, processor = tiny
    clips = [torch.randn(4, 3, 32, 32), torch.randn(6, 3, 32, 32)]
    settings = ReductionSettings(2, 2, 1)
    with torch.no_grad():
        listed = model.get_video_features(clips, settings=settings)
        assert listed.last_hidden_state is None and len(listed.pooler_output) == 2
        for clip, tokens in zip(clips, listed.pooler_output):
            alone = model.get_video_features(clip[None], settings=settings)
            assert alone.last_hidden_state.shape == (1, -(-len(clip) // 2), 4, model.config.hidden_size)
            torch.testing.assert_close(tokens, alone.pooler_output[0], rtol=1e-5, atol=1e-5)
        layout = torch.tensor([[2, 2, 1]])  # the processor's video_reduction row
        assert torch.equal(model.get_video_features(clips[:1], video_reduction=layout).flat(), listed.pooler_output[0])
        images = model.get_image_features(torch.randn(3, 3, 32, 32))
        assert [t.shape[0] for t in images.pooler_output] == [16, 16, 16]  # one frame, N' = 16 tokens each
        inputs = processor(processor.build_prompt("What?"), videos=[random_frames(4, 32)], return_tensors="pt")
        features = model.get_video_features(inputs["pixel_values_videos"]).flat()
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        image_mask, video_mask = model.model.get_placeholder_mask(inputs["input_ids"], embeds, video_features=features)
        assert int(video_mask.sum()) == features.shape[0] and not image_mask.any()
        spliced = embeds.masked_scatter(video_mask, features)
        by_model = model.model.visual_inputs_embeds(inputs["input_ids"], inputs["pixel_values_videos"])[0]
        assert torch.equal(spliced, by_model)
        with pytest.raises(
            ValueError, match="the prompt has 64 <video> placeholder tokens but the video input gives 63"
        ):
            model.model.get_placeholder_mask(inputs["input_ids"], embeds, video_features=features[:-1])
