"""StormProcessor: placeholder expansion, chat template, batching, save/load with the model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from storm_vlm import StormProcessor
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.processing_storm import IMAGE_TOKEN, VIDEO_TOKEN

from .conftest import random_frames


def test_placeholders_expand_to_the_reduced_token_count(tiny):
    model, processor = tiny
    prompt = processor.build_prompt("What happens?")
    assert prompt.count(VIDEO_TOKEN) == 1 and prompt.startswith("<|im_start|>system")
    for frames, k, p, s in [(8, 1, 1, 1), (32, 4, 1, 1), (33, 4, 2, 2), (128, 4, 1, 2)]:
        ids = processor.tokenize(prompt, [frames], settings=ReductionSettings(k, p, s))["input_ids"]
        expected = model.get_visual_tokens(torch.zeros(1, frames, 3, 32, 32), ReductionSettings(k, p, s))
        assert int((ids == processor.video_token_id).sum()) == expected.shape[1] * expected.shape[2]


def test_training_inputs_drop_sampling(tiny):
    _, processor = tiny
    prompt = processor.build_prompt("Q")
    train = processor(prompt, videos=[random_frames(8)], temporal_sampling=2, training=True)
    infer = processor(prompt, videos=[random_frames(8)], temporal_sampling=2)
    count = lambda b: int((b["input_ids"] == processor.video_token_id).sum())  # noqa: E731
    assert count(train) == 8 * 16 and count(infer) == 4 * 16


def test_pixels_are_resized_and_normalised(tiny):
    _, processor = tiny
    pixels = processor.preprocess_frames(random_frames(3, height=50, width=70))
    assert pixels.shape == (3, 3, 32, 32) and pixels.dtype == torch.float32
    assert -1.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0  # SigLIP: mean 0.5, std 0.5


def test_mixed_batch_of_videos_and_images(tiny):
    _, processor = tiny
    prompts = [processor.build_prompt("A?"), processor.build_prompt("B?", media="image")]
    batch = processor(prompts, videos=[random_frames(4)], images=[random_frames(1)[0]])
    assert batch["pixel_values_videos"].shape == (1, 4, 3, 32, 32) and batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["attention_mask"][1, 0] == 0  # left padding of the shorter prompt
    with pytest.raises(ValueError, match="placeholder"):
        processor(prompts, videos=[random_frames(4), random_frames(4)], images=[random_frames(1)[0]])
    with pytest.raises(ValueError, match="non-empty"):
        processor.preprocess_frames(random_frames(0))


def test_save_and_load_with_the_model(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for loaded in (StormProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, StormProcessor)
        assert loaded.token_grid == model.config.token_grid
        assert loaded.video_token_id == model.config.video_token_id
        assert loaded.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
        prompt = processor.build_prompt("Q")
        assert torch.equal(loaded.tokenize(prompt, [8])["input_ids"], processor.tokenize(prompt, [8])["input_ids"])


def test_a_question_holding_a_placeholder_is_refused(tiny):
    """``<video>`` in the user's text would take visual tokens meant for the clip."""
    _, processor = tiny
    for text in ("what is <video>?", "an <image> here"):
        with pytest.raises(ValueError, match="media placeholder"):
            processor.build_prompt(text)
