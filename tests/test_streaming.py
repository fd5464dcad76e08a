"""Streaming: chunked passes with carried state equal one causal pass; online reduction equals offline."""

from __future__ import annotations

import pytest
import torch

from storm_vlm.modeling.mamba import MambaMixer
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.modeling.temporal import TemporalEncoder
from storm_vlm.presets import build_tiny, temporal_config
from storm_vlm.streaming import StormStream

from .conftest import random_frames


@pytest.fixture(scope="module")
def causal():
    torch.manual_seed(0)
    return build_tiny(bidirectional=False)


def test_causal_mixer_in_chunks_equals_one_pass():
    mixer = MambaMixer(temporal_config(16, d_state=4, d_conv=4, bidirectional=False)).eval()
    x = torch.randn(2, 23, 16)
    with torch.no_grad():
        whole = mixer(x)
        state, parts = None, []
        for lo, hi in [(0, 1), (1, 3), (3, 10), (10, 11), (11, 23)]:  # chunks shorter than the conv window too
            out, state = mixer(x[:, lo:hi], state, return_state=True)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-5)


def test_bidirectional_mixer_refuses_to_stream():
    with pytest.raises(ValueError, match="cannot stream"):
        MambaMixer(temporal_config(16, d_state=4, bidirectional=True))(torch.randn(1, 5, 16), return_state=True)


def test_temporal_encoder_frames_in_chunks_equal_one_pass():
    encoder = TemporalEncoder(temporal_config(16, temporal_layers=2, d_state=4, bidirectional=False)).eval()
    video = torch.randn(1, 9, 6, 16)  # (B, T, N, D)
    with torch.no_grad():
        whole = encoder(video)
        state, parts = None, []
        for lo, hi in [(0, 2), (2, 3), (3, 9)]:
            out, state = encoder(video[:, lo:hi], state, return_state=True)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("k", "p", "s"), [(1, 1, 1), (4, 1, 1), (4, 2, 2), (3, 3, 2)])
def test_stream_tokens_equal_offline_tokens(causal, k, p, s):
    model, processor = causal
    pixels = processor.preprocess_frames(random_frames(13))  # 13 frames: ragged for k = 3, 4
    offline = model.get_visual_tokens(pixels[None], ReductionSettings(k, p, s))
    stream = StormStream(model, ReductionSettings(k, p, s))
    for lo, hi in [(0, 1), (1, 6), (6, 7), (7, 13)]:
        stream.add_frames(pixels[lo:hi])
    assert stream.frames_seen == 13
    torch.testing.assert_close(stream.visual_tokens(), offline, rtol=1e-5, atol=1e-5)


def test_window_bounds_the_kept_tokens_and_ask_answers(causal):
    model, processor = causal
    pixels = processor.preprocess_frames(random_frames(10))
    stream = StormStream(model, model.reduction_settings(temporal_pool=2), max_frames=3)
    with pytest.raises(ValueError, match="no frames"):
        stream.ask(processor, "Anything?")
    for frame in pixels:
        stream.add_frames(frame[None])
    tokens = stream.visual_tokens()
    assert tokens.shape[1] == 3  # the last 3 pooled frames of 5
    offline = model.get_visual_tokens(pixels[None], ReductionSettings(2, 1, 1))
    torch.testing.assert_close(tokens, offline[:, -3:], rtol=1e-5, atol=1e-5)
    assert isinstance(stream.ask(processor, "What happened?", max_new_tokens=3), str)


def test_bidirectional_model_cannot_stream(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="bidirectional=False"):
        StormStream(model)
