"""StormProcessor / StormVideoProcessor as transformers' multimodal processors are called.

The call patterns of Qwen2-VL / LLaVA-OneVision users (typed chat messages, media paths, per-modality
kwargs, ``return_tensors``, ``decode(skip_special_tokens=...)``), the preprocessing against the vision
tower's image processor (SigLIP and CLIP), save / load (and directories saved before the video
processor existed), and the layout rows the model reads.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessor, SiglipImageProcessorPil

from storm_vlm import StormProcessor, StormVideoProcessor
from storm_vlm.demo import DEMO_MODEL
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.presets import tiny_image_processor, tiny_tokenizer
from storm_vlm.processing_storm import flatten_content
from storm_vlm.tokens import CHATML_TEMPLATE, PLAIN_TEMPLATE
from storm_vlm.video_processing_storm import pil_resize

from .conftest import random_frames
from .media import make, pattern

QUESTION = "What happens?"


def _video_message(**source) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", **source}, {"type": "text", "text": QUESTION}]}]


def _count(ids: torch.Tensor, token_id: int) -> int:
    return int((ids == token_id).sum())


# -- chat templates ----------------------------------------------------------------------------------
def test_typed_content_renders_the_placeholder_line_on_any_template(tiny):
    """``{"type": "video"}`` is ``<video>\\n`` (as build_prompt writes it), also with the shipped demo
    model's string-only template; the package's templates render typed parts natively the same way."""
    _, processor = tiny
    messages = _video_message()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == processor.build_prompt(QUESTION) and prompt.count("<video>\n") == 1
    assert processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    demo = StormProcessor.from_pretrained(DEMO_MODEL)
    assert "part" not in demo.chat_template  # the demo keeps its stored template ...
    assert demo.apply_chat_template(messages, add_generation_prompt=True) == demo.build_prompt(
        QUESTION
    )  # ... and works
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    assert processor.apply_chat_template(image, add_generation_prompt=True) == processor.build_prompt(
        "Colour?", "image"
    )
    for template in (CHATML_TEMPLATE, PLAIN_TEMPLATE):  # string content renders as it always did
        tok = tiny_tokenizer()
        tok.chat_template = template
        typed = tok.apply_chat_template(messages + image, tokenize=False)
        flat = [{"role": m["role"], "content": flatten_content(m["content"])} for m in messages + image]
        assert typed == tok.apply_chat_template(flat, tokenize=False) and "[{" not in typed


def test_chat_template_loads_the_video_and_returns_model_inputs(tiny, tmp_path):
    model, processor = tiny
    clip = make(tmp_path / "clip.mp4", num_frames=12, height=40, width=48)
    for source in ({"path": str(clip)}, {"video": str(clip)}, {"url": f"file://{clip}"}):
        inputs = processor.apply_chat_template(
            _video_message(**source), add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt", num_frames=4, temporal_pool=2,
        )  # fmt: skip
        assert inputs["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
        assert inputs["video_reduction"].tolist() == [[2, 1, 1]]
        assert _count(inputs["input_ids"], processor.video_token_id) == processor.num_visual_tokens(
            4, ReductionSettings(2)
        )
    with torch.no_grad():  # the layout travels with the inputs: nothing repeated
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert logits.shape[1] == inputs["input_ids"].shape[1] and out.shape[1] == logits.shape[1] + 3
    by_fps = processor.apply_chat_template(
        _video_message(path=str(clip)), tokenize=True, return_dict=True, processor_kwargs={"fps": 5}
    )
    assert by_fps["pixel_values_videos"].shape[1] == 3  # 12 frames at 25 fps = 0.48 s, one frame per 0.2 s
    ids = processor.apply_chat_template(_video_message(path=str(clip)), tokenize=True, num_frames=2)
    assert _count(ids, processor.video_token_id) == processor.num_visual_tokens(2)


def test_a_batch_of_conversations_some_without_video(tiny):
    """Batched apply_chat_template where one conversation has no video: each row, left-padded,
    gives the next-token logits its conversation gives alone."""
    model, processor = tiny
    frames = random_frames(4, 32)
    with_video = [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "What?"}]}]
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Hello there, who are you?"}]}]
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    batch = processor.apply_chat_template([with_video, text_only], padding=True, **kw)
    assert batch["pixel_values_videos"].shape[0] == 1
    with torch.no_grad():
        together = model(**batch).logits[:, -1]
        for row, conversation in enumerate((with_video, text_only)):
            alone = model(**processor.apply_chat_template(conversation, **kw)).logits[0, -1]
            torch.testing.assert_close(together[row], alone, rtol=1e-4, atol=1e-4)


def test_chat_template_loads_an_image_file(tiny, tmp_path):
    _, processor = tiny
    Image.fromarray(random_frames(1)[0]).save(tmp_path / "pic.png")
    messages = [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "pic.png")},
                                             {"type": "text", "text": "Colour?"}]}]  # fmt: skip
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32) and inputs["image_reduction"].tolist() == [[1, 1, 1]]
    direct = processor(text=processor.build_prompt("Colour?", "image"), images=[random_frames(1)[0]])
    assert torch.equal(inputs["pixel_values"], direct["pixel_values"])
    assert torch.equal(inputs["input_ids"], direct["input_ids"])


def test_bad_chat_content_is_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="media placeholder"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "a <video> b"}]}])
    with pytest.raises(ValueError, match="text, image or video"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="only local video files"):
        processor.apply_chat_template(_video_message(url="https://example.invalid/a.mp4"), tokenize=True)


# -- the processor call ------------------------------------------------------------------------------
def test_every_input_form_of_one_clip_gives_the_same_inputs(tiny, tmp_path):
    _, processor = tiny
    frames = random_frames(4)
    prompt = processor.build_prompt(QUESTION)
    reference = processor(prompt, videos=[frames])  # the former positional form
    assert reference["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    forms = [
        dict(text=prompt, videos=[frames], return_tensors="pt"),
        dict(text=prompt, videos=frames, padding=True),
        dict(text=[prompt], videos=torch.from_numpy(frames).permute(0, 3, 1, 2)),  # (T, 3, H, W)
        dict(text=prompt, videos=[[Image.fromarray(f) for f in frames]]),
        dict(text=prompt, videos=[frames], videos_kwargs={"do_resize": True}, text_kwargs={"padding": "longest"}),
    ]
    for form in forms:
        inputs = processor(**form)
        assert torch.equal(inputs["pixel_values_videos"], reference["pixel_values_videos"]), form.keys()
        assert torch.equal(inputs["input_ids"], reference["input_ids"])
        assert inputs["video_reduction"].tolist() == [[1, 1, 1]]
    path = make(tmp_path / "clip.mp4", num_frames=10, height=36, width=44)
    from_file = processor(text=prompt, videos=str(path), num_frames=4)
    assert from_file["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    lists = processor(text=prompt, videos=[frames], return_tensors=None)
    assert isinstance(lists["input_ids"], list) and isinstance(lists["input_ids"][0], list)


def test_hf_argument_order_padding_and_decode(tiny):
    _, processor = tiny
    prompts = [processor.build_prompt("Which colour?", media="image"), processor.build_prompt("Which?", None)]
    batch = processor([random_frames(1)[0]], prompts, padding=True, return_tensors="pt")  # (images, text)
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["attention_mask"][1].tolist()[:2] == [0, 0] and batch["attention_mask"][1, -1] == 1  # left
    right = processor(images=[random_frames(1)[0]], text=prompts, padding_side="right")
    assert right["attention_mask"][1, 0] == 1 and right["attention_mask"][1, -1] == 0
    ids = batch["input_ids"][1]
    assert "<|im_end|>" in processor.decode(ids, skip_special_tokens=False)
    assert "<|im_end|>" not in processor.decode(ids) and "Which?" in processor.decode(ids)
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=False)[1].count("<|im_start|>") == 3
    with pytest.raises(TypeError, match="multiple values for argument 'images'"):
        processor([random_frames(1)[0]], prompts, images=[random_frames(1)[0]])


def test_model_input_names_cover_the_outputs(tiny):
    _, processor = tiny
    names = processor.model_input_names
    for name in ("input_ids", "attention_mask", "pixel_values", "pixel_values_videos", "video_reduction",
                 "image_reduction"):  # fmt: skip
        assert name in names
    prompts = [processor.build_prompt("A?"), processor.build_prompt("B?", media="image")]
    out = processor(text=prompts, videos=[random_frames(3)], images=[random_frames(1)[0]])
    assert set(out) <= set(names)


@pytest.mark.parametrize("k, p, s, training", [(1, 1, 1, False), (4, 1, 1, False), (3, 2, 2, False), (4, 3, 2, True)])
def test_placeholder_counts_and_layout_rows_follow_k_p_s(tiny, k, p, s, training):
    model, processor = tiny
    prompts = [processor.build_prompt("A?"), processor.build_prompt("B?"), processor.build_prompt("C?", "image")]
    clips = [random_frames(9, seed=1), random_frames(5, seed=2)]
    out = processor(text=prompts, videos=clips, images=[random_frames(1)[0]], temporal_pool=k, spatial_pool=p,
                    temporal_sampling=s, training=training)  # fmt: skip
    used = ReductionSettings(k, p, s).for_training() if training else ReductionSettings(k, p, s)
    per_row = [_count(row, processor.video_token_id) for row in out["input_ids"]]
    assert per_row == [processor.num_visual_tokens(9, used), processor.num_visual_tokens(5, used), 0]
    assert _count(out["input_ids"], processor.image_token_id) == processor.num_visual_tokens(1, used)
    row = [used.temporal_pool, used.spatial_pool, used.temporal_sampling]
    assert out["video_reduction"].tolist() == [row, row] and out["image_reduction"].tolist() == [row]
    assert out["video_reduction"].dtype == torch.long
    tokens = model.get_visual_tokens(out["pixel_values_videos"][0][None], used)
    assert tokens.shape[1] * tokens.shape[2] == per_row[0]  # the model's own count for that clip


# -- preprocessing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width", [(32, 32), (36, 44), (50, 70), (20, 28), (90, 30)])
def test_preprocessing_equals_the_siglip_image_processor(tiny, height, width):
    """preprocess_frames (now the video processor) against the former path, the image processor."""
    _, processor = tiny
    frames = random_frames(3, height=height, width=width)
    expected = processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor.preprocess_frames(frames), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(processor.preprocess_frames(frames[0]), expected[:1], rtol=0, atol=1e-5)


def test_the_torch_resize_is_pillows_resize():
    """pil_resize (the resize on a GPU) equals Pillow for every filter it has, up and down, where
    Pillow's edge-overshooting filters clip, and with either pass order."""
    rng = np.random.default_rng(0)
    for trial in range(120):
        height, width, out_h, out_w = (int(v) for v in rng.integers(1, 70, 4))
        resample = (1, 2, 3, 4, 5)[trial % 5]
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if trial % 2:
            frame = (frame // 128 * 255).astype(np.uint8)  # hard edges: lanczos / bicubic overshoot
        expected = np.asarray(Image.fromarray(frame).resize((out_w, out_h), resample))
        got = pil_resize(torch.from_numpy(frame).permute(2, 0, 1)[None], (out_h, out_w), resample)
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), expected), (height, width, out_h, out_w, resample)


def test_a_clip_image_processor_config_works(tiny, tmp_path):
    """CLIP's shortest-edge resize + centre crop and its mean/std (the former CUDA path read
    size["height"] and failed on it)."""
    _, siglip = tiny
    clip_ip = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    processor = StormProcessor(clip_ip, siglip.tokenizer, token_grid=siglip.token_grid)
    for height, width in [(36, 44), (60, 40), (32, 32)]:
        frames = random_frames(2, height=height, width=width)
        expected = clip_ip(images=list(frames), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(processor.preprocess_frames(frames), expected, rtol=0, atol=1e-5)
    processor.save_pretrained(tmp_path)
    loaded = StormProcessor.from_pretrained(tmp_path)
    assert loaded.video_processor.crop_size.height == 32 and loaded.video_processor.size.shortest_edge == 40
    frames = random_frames(2, height=50, width=70)
    assert torch.equal(loaded.preprocess_frames(frames), processor.preprocess_frames(frames))


def test_frames_are_sampled_in_memory_like_files(tiny, tmp_path):
    _, processor = tiny
    frames = pattern(12, 36, 44)
    video = processor.video_processor
    by_count = video(frames, num_frames=4, return_metadata=True)
    assert by_count["video_metadata"][0].frames_indices == [0, 4, 7, 11]  # first and last included
    path = make(tmp_path / "clip.mp4", num_frames=12, height=36, width=44)
    from_file = video(str(path), num_frames=4, return_metadata=True)
    assert from_file["video_metadata"][0].frames_indices == [0, 4, 7, 11]
    by_fps = video(frames, fps=5, video_metadata={"fps": 25, "total_num_frames": 12}, return_metadata=True)
    assert by_fps["video_metadata"][0].frames_indices == [0, 5, 10]
    assert len(video(frames, max_frames=3)["pixel_values_videos"][0]) == 3
    assert len(video(frames, num_frames=4, do_sample_frames=False)["pixel_values_videos"][0]) == 12
    with pytest.raises(ValueError, match="frame rate"):
        video(frames, fps=5)
    with pytest.raises(ValueError, match="non-empty"):
        processor.preprocess_frames(frames[:0])


# -- save / load -------------------------------------------------------------------------------------
def test_the_video_processor_is_saved_and_loaded_with_the_processor(tiny, tmp_path):
    _, tiny_processor = tiny
    image_processor = tiny_image_processor()  # 32 px; the video processor is given another size
    video_processor = StormVideoProcessor.from_image_processor(image_processor, size={"height": 24, "width": 24})
    processor = StormProcessor(image_processor, tiny_processor.tokenizer, video_processor, token_grid=(4, 4))
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["video_processor"]["video_processor_type"] == "StormVideoProcessor"
    for loaded in (StormProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, StormProcessor) and isinstance(loaded.video_processor, StormVideoProcessor)
        assert loaded.preprocess_frames(random_frames(2)).shape == (2, 3, 24, 24)
        assert loaded.token_grid == (4, 4) and loaded.image_processor.size["height"] == 32
    alone = StormVideoProcessor.from_pretrained(tmp_path)
    assert alone.size.height == 24
    alone.save_pretrained(tmp_path / "alone")  # transformers' own file: video_preprocessor_config.json
    shutil.copy(tmp_path / "alone" / "video_preprocessor_config.json", tmp_path)
    del saved["video_processor"]
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    assert StormProcessor.from_pretrained(tmp_path).video_processor.size.height == 24


def test_directories_without_a_video_processor_still_load(tiny, tmp_path):
    """Model directories saved before the video processor existed: it is made from the image processor."""
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    del saved["video_processor"]
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    frames = random_frames(3, height=40, width=30)
    for directory in (tmp_path, DEMO_MODEL):
        loaded = StormProcessor.from_pretrained(directory)
        assert isinstance(loaded.video_processor, StormVideoProcessor)
        assert torch.equal(loaded.preprocess_frames(frames), processor.preprocess_frames(frames))


def test_a_video_processor_made_from_the_image_processor_follows_it(tiny):
    """Callers that resize the image processor after building the processor (the bench does) get
    frames at the new size; a video processor given explicitly is left alone."""
    _, tiny_processor = tiny
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    processor = StormProcessor(image_processor, tiny_processor.tokenizer, token_grid=(4, 4))
    processor.image_processor.size = {"height": 48, "width": 48}
    assert processor.preprocess_frames(random_frames(1)).shape == (1, 3, 48, 48)
    explicit = StormProcessor(image_processor, tiny_processor.tokenizer, StormVideoProcessor(size={"height": 16,
                              "width": 16}), token_grid=(4, 4))  # fmt: skip
    assert explicit.preprocess_frames(random_frames(1)).shape == (1, 3, 16, 16)


def test_auto_video_processor_where_transformers_has_it(tiny, tmp_path):
    pytest.importorskip("torchvision")
    from transformers import AutoVideoProcessor

    _, processor = tiny
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoVideoProcessor.from_pretrained(tmp_path), StormVideoProcessor)
