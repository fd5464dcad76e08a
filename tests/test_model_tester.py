"""A transformers-style model tester: tiny variants driving one set of shared checks.

As in transformers' ``tests/models/*/test_modeling_*.py``, :class:`StormModelTester` builds a tiny
config, model and processor for one variant and prepares inputs; the ``Test*`` classes run the
same checks on every variant:

* ``storm``: the paper's model (SigLIP tower, projector, bidirectional Mamba, Qwen2);
* ``mlp``: the no-Mamba baseline (``projector_type="mlp"``);
* ``causal``: the causal Mamba (``bidirectional=False``) that streaming needs;
* ``clip``: a CLIP vision tower (a CLS token to drop) with CLIP's image processor.

The checks: save / load (also through the Auto classes), generate (cache, the processor's k/p/s
layout), a batch against its clips alone, SDPA against eager attention, the processor's placeholder
counts against the model's visual tokens, the chat-template path against the older
``build_prompt`` / ``preprocess_frames`` / ``embed_inputs`` path, and streaming against the
offline answer. Every check compares against a reference computed another way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionModel,
    LogitsProcessor,
    LogitsProcessorList,
    SiglipVisionModel,
)

from storm_vlm import StormConfig, StormForConditionalGeneration, StormModel, StormProcessor
from storm_vlm.inference import prepare_inputs
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.presets import (
    set_generation_tokens,
    tiny_config,
    tiny_image_processor,
    tiny_text_config,
    tiny_tokenizer,
)
from storm_vlm.streaming import StormStream
from storm_vlm.video import sample_frames, write_video

from .conftest import tiny_clip_vision_config
from .media import pattern

VARIANTS = ("storm", "mlp", "causal", "clip")
QUESTION = "What happens in the video?"


class StormModelTester:
    """Tiny config, model, processor and inputs for one variant (transformers' ``ModelTester``)."""

    def __init__(
        self,
        variant: str,
        num_frames: int = 4,
        frame_height: int = 36,
        frame_width: int = 44,
        new_tokens: int = 4,
        seed: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.variant = variant
        self.num_frames = num_frames
        self.frame_height = frame_height
        self.frame_width = frame_width
        self.new_tokens = new_tokens
        self.seed = seed
        self.tokenizer = tiny_tokenizer()
        ids = cast("list[int]", self.tokenizer.convert_tokens_to_ids(["<video>", "<image>"]))
        self.video_token_id, self.image_token_id = ids

    # -- config, model, processor ------------------------------------------------------------
    def get_config(self, **overrides: Any) -> StormConfig:
        vocab = len(self.tokenizer)
        options: dict[str, Any] = {
            "storm": {},
            "mlp": {"projector_type": "mlp"},
            "causal": {"bidirectional": False},
            "clip": {"temporal_layers": 1, "d_state": 8, "vision_chunk_size": 64},
        }[self.variant]
        options |= overrides
        if self.variant == "clip":
            vision = tiny_clip_vision_config()
            return StormConfig(
                vision_config=vision,
                text_config=tiny_text_config(-(-vocab // 64) * 64),
                video_token_id=self.video_token_id,
                image_token_id=self.image_token_id,
                **options,
            )
        return tiny_config(vocab, self.video_token_id, self.image_token_id, **options)

    def get_image_processor(self):
        if self.variant == "clip":  # CLIP's shortest-edge resize and centre crop, its mean / std
            return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return tiny_image_processor()

    def create_model_and_processor(self) -> tuple[StormForConditionalGeneration, StormProcessor]:
        torch.manual_seed(self.seed)
        config = self.get_config()
        model = StormForConditionalGeneration(config).eval()
        set_generation_tokens(model, self.tokenizer)
        return model, StormProcessor.from_config(self.get_image_processor(), self.tokenizer, config)

    # -- inputs ------------------------------------------------------------------------------
    def frames(self, num_frames: int | None = None, seed: int = 0) -> np.ndarray:
        n = self.num_frames if num_frames is None else num_frames
        return pattern(n, self.frame_height, self.frame_width, seed=seed)

    def prompt(self, processor: StormProcessor, question: str = QUESTION) -> str:
        return processor.build_prompt(question)

    def prepare_inputs(self, processor: StormProcessor, **kwargs: Any):
        return processor(text=self.prompt(processor), videos=[self.frames()], **kwargs)


def greedy_by_hand(model: StormForConditionalGeneration, inputs, steps: int) -> torch.Tensor:
    """Greedy decoding as a loop of full forward passes (no cache), end-of-turn tokens barred the
    way ``min_new_tokens`` bars them: the reference for ``generate``. Returns the new ids."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    stops = model.generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops)
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, **rest).logits[:, -1].clone()
        logits[:, stops] = -torch.inf
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return ids[:, inputs["input_ids"].shape[1] :]


def generate_new(model: StormForConditionalGeneration, inputs, steps: int, **kwargs: Any) -> torch.Tensor:
    """``generate``'s new ids, exactly ``steps`` of them (greedy)."""
    out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, **kwargs)
    return out[:, inputs["input_ids"].shape[1] :] if "input_ids" in inputs else out


# -- fixtures: one tester, model and saved directory per variant --------------------------------------
@pytest.fixture(scope="module", params=VARIANTS)
def tester(request) -> StormModelTester:
    return StormModelTester(request.param)


@pytest.fixture(scope="module")
def built(tester) -> tuple[StormForConditionalGeneration, StormProcessor]:
    return tester.create_model_and_processor()


@pytest.fixture(scope="module")
def saved(built, tmp_path_factory) -> Path:
    model, processor = built
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def video_file(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", pattern(10, 36, 44, seed=3))


# -- the variants are what they say ---------------------------------------------------------------
def test_the_variants_build_what_they_name(tester, built):
    model, processor = built
    tower = {"clip": CLIPVisionModel}.get(tester.variant, SiglipVisionModel)
    assert type(model.vision_tower) is tower
    assert (model.temporal is None) == (tester.variant == "mlp")
    if model.temporal is not None:
        assert model.config.bidirectional == (tester.variant != "causal")
        assert all(layer.mixer.bidirectional == model.config.bidirectional for layer in model.temporal.layers)
    assert processor.token_grid == model.config.token_grid == (4, 4)
    assert model.config.hidden_size <= 128 and model.config.text_config.num_hidden_layers <= 2


# -- 1. save / load --------------------------------------------------------------------------------
class TestSaveLoad:
    def test_round_trip_gives_identical_logits_and_generate(self, tester, built, saved):
        model, processor = built
        loaded = StormForConditionalGeneration.from_pretrained(saved).eval()
        loaded_processor = StormProcessor.from_pretrained(saved)
        assert type(loaded_processor.image_processor) is type(processor.image_processor)
        inputs, again = tester.prepare_inputs(processor), tester.prepare_inputs(loaded_processor)
        assert set(again) == set(inputs)
        for key in inputs:
            assert torch.equal(again[key], inputs[key]), key
        state, loaded_state = model.state_dict(), loaded.state_dict()
        assert set(loaded_state) == set(state)
        assert all(torch.equal(loaded_state[k], state[k]) for k in state)
        assert loaded.generation_config.eos_token_id == model.generation_config.eos_token_id
        with torch.no_grad():
            assert torch.equal(loaded(**again).logits, model(**inputs).logits)
            out = model.generate(**inputs, max_new_tokens=tester.new_tokens, do_sample=False)
            assert torch.equal(loaded.generate(**again, max_new_tokens=tester.new_tokens, do_sample=False), out)

    def test_auto_classes_load_the_directory(self, tester, built, saved):
        model, processor = built
        inputs = tester.prepare_inputs(processor)
        with torch.no_grad():
            reference = model(**inputs).logits
            full = AutoModelForImageTextToText.from_pretrained(saved).eval()
            assert type(full) is StormForConditionalGeneration
            assert torch.equal(full(**inputs).logits, reference)
            body = AutoModel.from_pretrained(saved).eval()  # as for transformers' VLMs: the model without its head
            assert type(body) is StormModel
            assert torch.equal(full.lm_head(body(**inputs).last_hidden_state), reference)
        auto_processor = AutoProcessor.from_pretrained(saved)
        assert type(auto_processor) is StormProcessor
        assert auto_processor.token_grid == processor.token_grid
        remade = tester.prepare_inputs(auto_processor)
        for key in inputs:
            assert torch.equal(remade[key], inputs[key]), key


# -- 2. generate -----------------------------------------------------------------------------------
class TestGenerate:
    def test_greedy_with_cache_equals_without_and_by_hand(self, tester, built):
        model, processor = built
        inputs = tester.prepare_inputs(processor)
        steps = tester.new_tokens
        with torch.no_grad():
            by_hand = greedy_by_hand(model, inputs, steps)
            cached = generate_new(model, inputs, steps, use_cache=True)
            uncached = generate_new(model, inputs, steps, use_cache=False)
        assert by_hand.shape == (1, steps)
        assert torch.equal(cached, by_hand)
        assert torch.equal(uncached, by_hand)

    def test_generate_takes_the_reduction_from_the_processor_outputs(self, tester, built):
        """k/p/s given to the processor only: the outputs carry them (``video_reduction``) and the
        model uses them, against visual tokens computed with those settings and spliced by hand."""
        model, processor = built
        settings = ReductionSettings(2, 2, 2)
        frames = tester.frames(6)
        inputs = processor(text=tester.prompt(processor), videos=[frames], temporal_pool=2, spatial_pool=2,
                           temporal_sampling=2)  # fmt: skip
        assert inputs["video_reduction"].tolist() == [[2, 2, 2]]
        assert model.reduction_settings() != settings  # the model's own defaults would not fit
        with torch.no_grad():
            visual = model.get_visual_tokens(inputs["pixel_values_videos"], settings)
            assert visual.shape[1:3] == (2, 4)  # ⌈⌈6/2⌉/2⌉ frames of ⌈4/2⌉² tokens
            embeds, _ = model.embed_inputs(inputs["input_ids"], video_embeds=visual.flatten(0, 2))
            mask = inputs["attention_mask"]
            reference = model(inputs_embeds=embeds, attention_mask=mask).logits
            torch.testing.assert_close(model(**inputs).logits, reference, rtol=0, atol=1e-6)
            out = generate_new(model, inputs, tester.new_tokens)
            by_embeds = generate_new(model, {"inputs_embeds": embeds, "attention_mask": mask}, tester.new_tokens)
        assert torch.equal(out, by_embeds)


# -- 3. a batch equals its clips alone ---------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(tester, built):
    """Two clips of one length, prompts of different lengths, left padded."""
    _, processor = built
    prompts = [tester.prompt(processor, "Count the objects."), tester.prompt(processor, QUESTION + " Describe it.")]
    clips = [tester.frames(seed=1), tester.frames(seed=2)]
    inputs = processor(text=prompts, videos=clips)
    singles = [processor(text=p, videos=[c]) for p, c in zip(prompts, clips)]
    return inputs, singles


class TestBatch:
    def test_batch_logits_equal_single_logits(self, built, batch):
        model, _ = built
        inputs, singles = batch
        pads = [inputs["input_ids"].shape[1] - s["input_ids"].shape[1] for s in singles]
        assert min(pads) == 0 < max(pads)  # one row is padded
        assert torch.is_tensor(inputs["pixel_values_videos"]) and inputs["pixel_values_videos"].shape[0] == 2
        with torch.no_grad():
            logits = model(**inputs).logits
            for row, (pad, single) in enumerate(zip(pads, singles)):
                assert inputs["attention_mask"][row, :pad].sum() == 0
                assert torch.equal(inputs["input_ids"][row, pad:], single["input_ids"][0])
                alone = model(**single).logits[0]
                torch.testing.assert_close(logits[row, pad:], alone, rtol=0, atol=1e-5)

    def test_batch_greedy_continuation_equals_single(self, tester, built, batch):
        model, _ = built
        inputs, singles = batch
        with torch.no_grad():
            together = generate_new(model, inputs, tester.new_tokens)
            for row, single in enumerate(singles):
                assert torch.equal(together[row], generate_new(model, single, tester.new_tokens)[0])


# -- 4. SDPA equals eager ------------------------------------------------------------------------------
class TestAttention:
    def test_sdpa_equals_eager(self, saved, batch):
        inputs, singles = batch
        pads = [inputs["input_ids"].shape[1] - s["input_ids"].shape[1] for s in singles]
        logits = {}
        for implementation in ("sdpa", "eager"):
            model = StormForConditionalGeneration.from_pretrained(saved, attn_implementation=implementation).eval()
            for part in (model, model.language_model, model.vision_tower):
                assert part.config._attn_implementation == implementation
            with torch.no_grad():
                logits[implementation] = model(**inputs).logits
        for row, pad in enumerate(pads):  # the padded positions' logits are not defined
            torch.testing.assert_close(logits["sdpa"][row, pad:], logits["eager"][row, pad:], rtol=0, atol=1e-5)

    def test_attention_set_in_the_config(self, tester, built, batch):
        """``attn_implementation`` given to the config reaches the LLM and the tower of a new model."""
        model, _ = built
        inputs, _ = batch
        assert model.language_model.config._attn_implementation == "sdpa"  # the default, compared below
        config = tester.get_config(attn_implementation="eager")
        eager = StormForConditionalGeneration(config).eval()
        assert eager.language_model.config._attn_implementation == "eager"
        assert eager.vision_tower.config._attn_implementation == "eager"
        eager.load_state_dict(model.state_dict())
        mask = inputs["attention_mask"].bool()
        with torch.no_grad():
            a, b = eager(**inputs).logits, model(**inputs).logits
        torch.testing.assert_close(a[mask], b[mask], rtol=0, atol=1e-5)


# -- 5. processor and model agree on token counts ---------------------------------------------------
@pytest.mark.parametrize(
    ("num_frames", "k", "p", "s"),
    [(4, 1, 1, 1), (5, 2, 1, 1), (6, 2, 2, 2), (7, 3, 3, 2), (3, 4, 2, 1), (1, 1, 4, 3)],
)
def test_processor_and_model_agree_on_token_counts(tester, built, num_frames, k, p, s):
    model, processor = built
    settings = ReductionSettings(k, p, s)
    inputs = processor(text=tester.prompt(processor), videos=[tester.frames(num_frames)], temporal_pool=k,
                       spatial_pool=p, temporal_sampling=s)  # fmt: skip
    written = int((inputs["input_ids"] == processor.video_token_id).sum())
    with torch.no_grad():
        produced = model.get_visual_tokens(inputs["pixel_values_videos"], settings).shape[1:3].numel()
        model(**inputs)  # and the model accepts them (it checks slots against tokens)
    assert written == produced == processor.num_visual_tokens(num_frames, settings)
    assert (
        written
        == processor.tokenize(tester.prompt(processor), [num_frames], settings=settings)["input_ids"]
        .eq(processor.video_token_id)
        .sum()
    )


# -- 6. the chat-template path equals the older path ---------------------------------------------------
@pytest.mark.parametrize("settings", [ReductionSettings(), ReductionSettings(2, 2, 1)], ids=str)
def test_chat_template_path_equals_the_older_path(tester, built, video_file, settings):
    """``apply_chat_template`` on a video file against ``sample_frames`` + ``build_prompt`` /
    ``tokenize`` + ``preprocess_frames`` + ``embed_inputs`` (and ``inference.prepare_inputs``)."""
    model, processor = built
    num_frames = 4
    messages = [{"role": "user", "content": [{"type": "video", "path": str(video_file)},
                                             {"type": "text", "text": QUESTION}]}]  # fmt: skip
    reduction = {
        "temporal_pool": settings.temporal_pool,
        "spatial_pool": settings.spatial_pool,
        "temporal_sampling": settings.temporal_sampling,
    }
    new = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        num_frames=num_frames, **reduction)  # fmt: skip

    clip = sample_frames(video_file, num_frames=num_frames)
    ids = processor.tokenize(processor.build_prompt(QUESTION), [len(clip)], settings=settings)
    pixels = processor.preprocess_frames(clip.frames)
    assert torch.equal(new["input_ids"], ids["input_ids"])
    assert torch.equal(new["pixel_values_videos"][0], pixels)
    with torch.no_grad():
        visual = model.get_visual_tokens(pixels[None], settings).flatten(0, 2)
        embeds, _ = model.embed_inputs(ids["input_ids"], video_embeds=visual)
        old = model(inputs_embeds=embeds, attention_mask=ids["attention_mask"]).logits
        prepared = prepare_inputs(model, processor, clip, QUESTION, settings)
        served = model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask)
        logits = model(**new).logits
        torch.testing.assert_close(logits, old, rtol=0, atol=1e-6)
        torch.testing.assert_close(logits, served.logits, rtol=0, atol=1e-6)
        out = generate_new(model, new, tester.new_tokens)
        by_embeds = generate_new(
            model, {"inputs_embeds": prepared.inputs_embeds, "attention_mask": prepared.attention_mask},
            tester.new_tokens,
        )  # fmt: skip
    assert torch.equal(out, by_embeds)


# -- 7. streaming ---------------------------------------------------------------------------------------
def test_a_stream_answers_as_the_offline_path(tester, built):
    """Streamable variants (causal Mamba, or none): frames fed in chunks, then ``ask``, give the
    answer ``generate(**processor(...))`` gives on the whole clip: the same ids and the same logits
    at every step (recorded by a logits processor; ``ask`` returns only text, and a random model's
    answer may be special tokens only, which decode to ""). That the stream's visual tokens equal
    the offline ones, for many k/p/s, is tests/test_streaming.py's."""
    model, processor = built
    if tester.variant in ("storm", "clip"):  # bidirectional: must see the whole clip
        with pytest.raises(ValueError, match="bidirectional=False"):
            StormStream(model)
        return
    frames = tester.frames(7)
    settings = {"temporal_pool": 2, "spatial_pool": 2}
    inputs = processor(text=processor.build_prompt(QUESTION), videos=[frames], **settings)
    steps = tester.new_tokens
    offline, streamed = _Record(), _Record()
    with torch.no_grad():
        ids = generate_new(model, inputs, steps, logits_processor=LogitsProcessorList([offline]))[0]
    stream = StormStream(model, model.reduction_settings(**settings))
    pixels = processor.preprocess_frames(frames)
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:
        stream.add_frames(pixels[lo:hi])
    answer = stream.ask(processor, QUESTION, max_new_tokens=steps, min_new_tokens=steps,
                        logits_processor=LogitsProcessorList([streamed]))  # fmt: skip
    assert len(streamed.scores) == len(offline.scores) == steps
    for a, b in zip(streamed.scores, offline.scores):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert torch.equal(torch.stack([s.argmax(-1)[0] for s in streamed.scores]), ids)
    assert answer == processor.decode(ids).strip()


class _Record(LogitsProcessor):
    """Keeps the scores of every step (a copy) and changes nothing."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores.append(scores.clone())
        return scores
