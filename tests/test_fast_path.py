"""The fast inference path gives the plain path's outputs (on CPU, compiled with inductor).

On CUDA the same code also replays the decoding step as a CUDA graph; that part needs a GPU
(benchmarks/README and the bench's 7b-shapes preset measure it), the maths is checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from storm_vlm.inference import ask, load_model
from storm_vlm.modeling.fast_path import enable_fast_path, static_cache_length
from storm_vlm.presets import build_tiny, save_model_dir, spread_llm_weights
from storm_vlm.synth import motion_clip
from storm_vlm.video import VideoClip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_tiny()


def _clip(frames: int = 8, size: int = 32) -> VideoClip:
    pixels = motion_clip("red", "right", frames, size, np.random.default_rng(0))
    return VideoClip(
        frames=pixels, timestamps=np.arange(frames) / 8.0, indices=np.arange(frames), fps=8.0,
        duration=frames / 8.0, size=(size, size), num_source_frames=frames,
    )  # fmt: skip


@given(st.integers(1, 100_000), st.integers(1, 4096))
def test_static_cache_length_is_the_smallest_bucket_multiple_that_fits(needed, bucket):
    length = static_cache_length(needed, bucket)
    assert length % bucket == 0 and needed <= length < needed + bucket


def test_siglip_tower_stops_at_the_feature_layer(tiny):
    """Running only the layers up to vision_feature_layer equals the full tower's hidden state."""
    model, _ = tiny
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = model.vision_tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
        short = model.model.vision_features(pixels)
    assert model.config.vision_layers_run == model.config.vision_config.num_hidden_layers - 1
    torch.testing.assert_close(short, full, rtol=0, atol=0)


def test_torch_preprocessing_matches_the_image_processor(tiny):
    _, processor = tiny
    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # no resize: identical up to fp32 rounding
    torch.testing.assert_close(processor.preprocess_frames_torch(same), processor.preprocess_frames(same))
    other = rng.integers(0, 256, (4, 50, 70, 3), dtype=np.uint8)  # resized: within one grey level
    diff = (processor.preprocess_frames_torch(other) - processor.preprocess_frames(other)).abs()
    assert diff.max() <= 2 / 255 + 1e-6 and diff.mean() < 0.5 / 255


def test_fast_path_generates_the_plain_path_tokens(tiny):
    """Greedy decoding with a static cache and compiled vision + decoding step == plain decoding."""
    model, processor = tiny
    clip = _clip()
    kwargs = dict(num_frames=None, max_new_tokens=12, temporal_pool=2)
    plain = ask(model, processor, clip, "What moves?", **kwargs)
    plain_feats = model.model.encode_frames(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    fast = enable_fast_path(model, compile_vision=True)
    try:
        first = ask(model, processor, clip, "What moves?", **kwargs)  # compiles
        again = ask(model, processor, clip, "What moves, and where?", **kwargs)  # same cache bucket: no recompile
        fast_feats = model.model.encode_frames(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    finally:
        model.fast_path = None
    assert fast.compile_vision and fast.compile_decode
    assert first.text == plain.text and first.new_tokens == plain.new_tokens
    torch.testing.assert_close(fast_feats, plain_feats, rtol=1e-4, atol=1e-5)
    reference = ask(model, processor, clip, "What moves, and where?", **kwargs)
    assert again.text == reference.text


@pytest.fixture(scope="module")
def chatty():
    """A tiny random model whose greedy tokens vary from step to step (a plain init repeats one)."""
    torch.manual_seed(0)
    model, processor = build_tiny()
    spread_llm_weights(model, 0.5)
    ids = processor.tokenize(processor.build_prompt("Hello there?", media=None))
    return model, processor, model.get_input_embeddings()(ids["input_ids"]).detach(), ids["attention_mask"]


class Recorder:
    def __init__(self) -> None:
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.flatten().tolist())

    def end(self) -> None:
        self.ended = True


@pytest.mark.parametrize("compiled", [False, True])
def test_greedy_loop_equals_generate(chatty, compiled):
    """The fast greedy loop (compiled step, stop tokens checked one step behind) == generate:
    free running, stopped by a stop token, forced lengths (min_new_tokens), streamer calls."""
    model, _, embeds, mask = chatty

    def gen(**kw):
        with torch.inference_mode():
            return model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, **kw)

    model.fast_path = None
    free = gen(max_new_tokens=20, eos_token_id=[])
    assert len(set(free[0].tolist())) > 5
    stop = int(free[0, 6])  # stops at its first occurrence, within the 20 tokens
    cases = [
        dict(max_new_tokens=20, eos_token_id=[]),
        dict(max_new_tokens=20, eos_token_id=[stop, 99999]),
        dict(max_new_tokens=20, eos_token_id=stop, min_new_tokens=9),  # the stop token is masked until 9
        dict(max_new_tokens=12, eos_token_id=stop, min_new_tokens=12),
        dict(max_new_tokens=1, eos_token_id=[]),
    ]
    plain = []
    for kw in cases:
        recorder = Recorder()
        plain.append((gen(streamer=recorder, **kw), recorder))
    fast = enable_fast_path(model, compile_vision=False, compile_decode=compiled)
    try:
        for kw, (want, want_rec) in zip(cases, plain):
            assert fast.can_decode(dict(inputs_embeds=embeds, attention_mask=mask, **kw), model.generation_config)
            recorder = Recorder()
            got = gen(streamer=recorder, **kw)
            assert torch.equal(got, want), kw
            assert recorder.puts == want_rec.puts and recorder.ended
        assert len(fast._caches) == 1  # one bucket, reset and reused for every call
    finally:
        model.fast_path = None
    assert plain[1][0].shape[1] < 20 and plain[2][0].shape[1] > plain[1][0].shape[1]


def test_greedy_loop_hands_other_requests_to_generate(chatty):
    model, _, embeds, mask = chatty
    fast = enable_fast_path(model, compile_vision=False, compile_decode=False)
    try:
        config = model.generation_config
        base = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4)
        assert fast.can_decode(base, config)
        assert not fast.can_decode(dict(base, do_sample=True), config)
        assert not fast.can_decode(dict(base, num_beams=2), config)
        assert not fast.can_decode(dict(base, inputs_embeds=embeds.expand(2, -1, -1)), config)
        assert not fast.can_decode(dict(base, attention_mask=torch.zeros_like(mask)), config)
        assert not fast.can_decode({k: v for k, v in base.items() if k != "max_new_tokens"}, config)
        assert not fast.can_decode(dict(base, max_new_tokens=0), config)
        torch.manual_seed(3)
        with torch.inference_mode():
            sampled = model.generate(**base, do_sample=True, top_k=0)  # through generate's static cache
        assert sampled.shape == (1, 4)
    finally:
        model.fast_path = None


def test_static_caches_are_reused_per_bucket_and_bounded(chatty):
    model = chatty[0]
    fast = enable_fast_path(model, compile_decode=False, cache_bucket=8)
    fast.max_caches = 2
    try:
        first = fast._cache(model, 10)
        assert fast._cache(model, 12) is first  # same bucket (16): the same tensors, reset
        fast._cache(model, 20)
        fast._cache(model, 30)  # a third bucket evicts the least recently used (16)
        assert sorted(fast._caches) == [24, 32]
    finally:
        model.fast_path = None


def test_fast_path_forces_lengths_and_keeps_explicit_cache_choices(tiny):
    model, processor = tiny
    fast = enable_fast_path(model, compile_vision=False, compile_decode=False, cache_bucket=64)
    try:
        embeds = torch.zeros(1, 70, model.config.hidden_size)
        filled = fast.generate_kwargs(model, {"inputs_embeds": embeds, "max_new_tokens": 10})
        assert filled["cache_implementation"] == "static" and filled["max_cache_len"] == 128
        assert filled["disable_compile"] is True
        mine = {"inputs_embeds": embeds, "cache_implementation": "dynamic"}
        assert fast.generate_kwargs(model, mine) is mine
        ids = processor.tokenize(processor.build_prompt("Hi?", media=None))
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        model.fast_path = None
        with torch.no_grad():
            ref = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert torch.equal(out, ref)
    finally:
        model.fast_path = None
    with pytest.raises(ValueError, match="cache_bucket"):
        enable_fast_path(model, cache_bucket=0)


def test_load_model_turns_the_fast_path_on_for_cuda_or_when_asked(tiny, tmp_path):
    model, processor = tiny
    save_model_dir(model, processor, tmp_path / "m")
    plain, _ = load_model(tmp_path / "m")
    assert plain.fast_path is None  # CPU default
    fast, _ = load_model(tmp_path / "m", fast=True)
    assert fast.fast_path is not None and fast.fast_path.decode_mode == "default"  # no CUDA graphs on CPU
