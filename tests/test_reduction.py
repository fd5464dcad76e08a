"""Token reduction (Eq. 6-8) and the projector's space-to-depth."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storm_vlm import StormConfig
from storm_vlm.modeling.projector import Projector, space_to_depth
from storm_vlm.modeling.reduction import (
    ReductionSettings,
    num_visual_tokens,
    reduce_tokens,
    spatial_pool,
    temporal_pool,
    temporal_sample,
)

dims = st.integers(min_value=1, max_value=7)


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 20), h=dims, w=dims, k=st.integers(1, 6), p=st.integers(1, 4), s=st.integers(1, 4))
def test_token_counts_match_formula(frames, h, w, k, p, s):
    settings_ = ReductionSettings(k, p, s)
    x = torch.randn(2, frames, h * w, 3)
    out, grid = reduce_tokens(x, (h, w), settings_)
    t_out = math.ceil(math.ceil(frames / k) / s)
    n_out = math.ceil(h / p) * math.ceil(w / p)
    assert out.shape == (2, t_out, n_out, 3)
    assert grid == (math.ceil(h / p), math.ceil(w / p))
    assert num_visual_tokens(frames, (h, w), settings_) == t_out * n_out


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(1, 12), h=dims, w=dims, k=st.integers(1, 5), p=st.integers(1, 4), s=st.integers(1, 3))
def test_constant_video_stays_constant(frames, h, w, k, p, s):
    value = torch.randn(5)
    x = value.expand(1, frames, h * w, 5).clone()
    out, _ = reduce_tokens(x, (h, w), ReductionSettings(k, p, s))
    torch.testing.assert_close(out, value.expand_as(out).contiguous())


def test_ragged_groups_average_what_they_have():
    x = torch.arange(5.0).view(1, 5, 1, 1)  # frames 0..4
    assert temporal_pool(x, 2).flatten().tolist() == [0.5, 2.5, 4.0]
    grid = torch.arange(9.0).view(1, 1, 9, 1)  # 3x3 grid 0..8
    pooled, new_grid = spatial_pool(grid, (3, 3), 2)
    assert new_grid == (2, 2)
    assert pooled.flatten().tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]
    assert temporal_sample(torch.arange(7.0).view(1, 7, 1, 1), 3).flatten().tolist() == [0.0, 3.0, 6.0]


def test_paper_token_counts_at_128_frames():
    grid = StormConfig().token_grid  # SigLIP-448/14 → 32x32 patches → 2x2 downsample
    assert grid == (16, 16)
    expected = {(1, 1, 1): 32768, (4, 1, 1): 8192, (4, 2, 1): 4096, (4, 2, 2): 1024}
    for (k, s, p), tokens in expected.items():
        assert (
            num_visual_tokens(128, grid, ReductionSettings(temporal_pool=k, spatial_pool=p, temporal_sampling=s))
            == tokens
        )


def test_settings_are_validated():
    with pytest.raises(ValueError, match="temporal_pool"):
        ReductionSettings(temporal_pool=0)
    with pytest.raises(ValueError, match="spatial_pool"):
        ReductionSettings(spatial_pool=1.5)
    assert ReductionSettings(4, 2, 2).for_training() == ReductionSettings(4, 2, 1)


def test_space_to_depth_groups_neighbours_and_pads():
    x = torch.arange(9.0).view(1, 3, 3, 1)
    out = space_to_depth(x, 2)
    assert out.shape == (1, 2, 2, 4)
    assert out[0, 0, 0].tolist() == [0.0, 1.0, 3.0, 4.0]  # top-left 2x2 window, row-major
    assert out[0, 1, 1].tolist() == [8.0, 0.0, 0.0, 0.0]  # zero padding at the odd edge


def test_projector_shapes_for_both_kinds():
    feats = torch.randn(6, 7 * 7, 12)
    for kind in ("storm", "mlp"):
        proj = Projector(12, 20, downsample=2, kind=kind)
        assert proj(feats, (7, 7)).shape == (6, 16, 20)
    assert isinstance(Projector(12, 20, kind="storm").proj, torch.nn.Linear)
    with pytest.raises(ValueError, match="unknown projector"):
        Projector(12, 20, kind="conv")


def test_token_budget_follows_the_papers_order():
    from storm_vlm.modeling.reduction import settings_for_budget

    grid = (16, 16)
    assert settings_for_budget(32768, 128, grid) == ReductionSettings(1, 1, 1)
    assert settings_for_budget(20000, 128, grid) == ReductionSettings(2, 1, 1)  # pooling first
    assert settings_for_budget(8192, 128, grid) == ReductionSettings(4, 1, 1)
    assert settings_for_budget(4096, 128, grid) == ReductionSettings(4, 1, 2)  # then sampling
    assert settings_for_budget(1024, 128, grid, allow_spatial=True) == ReductionSettings(4, 2, 2)
    assert settings_for_budget(1024, 128, grid) == ReductionSettings(4, 1, 8)
    with pytest.raises(ValueError, match="cannot fit"):
        settings_for_budget(10, 128, grid)


@settings(max_examples=50, deadline=None)
@given(budget=st.integers(1, 5000), frames=st.integers(1, 300))
def test_token_budget_is_respected(budget, frames):
    from storm_vlm.modeling.reduction import settings_for_budget

    try:
        chosen = settings_for_budget(budget, frames, (4, 4), allow_spatial=True)
    except ValueError:
        return
    assert num_visual_tokens(frames, (4, 4), chosen) <= budget


def test_pools_larger_than_the_input_equal_pooling_over_all_of_it():
    """k >= T and p >= the grid side are clamped to the input: same result, no padding allocated."""
    from storm_vlm.limits import MAX_REDUCTION

    x = torch.randn(1, 5, 16, 8)
    huge, grid = reduce_tokens(x, (4, 4), ReductionSettings(MAX_REDUCTION, MAX_REDUCTION, 1))
    exact, _ = reduce_tokens(x, (4, 4), ReductionSettings(5, 4, 1))
    assert grid == (1, 1) and torch.allclose(huge, exact)
    assert torch.allclose(huge[0, 0, 0], x.mean(dim=(1, 2))[0], atol=1e-6)
    with pytest.raises(ValueError, match="temporal_pool must be an integer from 1 to 4096"):
        ReductionSettings(MAX_REDUCTION + 1)


def test_a_token_budget_pools_in_time_no_more_than_the_model_was_trained_to():
    """A k=1 model meets a budget by sampling (training-free), a k=4 model may pool up to 4."""
    from storm_vlm.presets import build_tiny

    for trained, expected in ((1, ReductionSettings(1, 1, 4)), (4, ReductionSettings(4, 1, 1))):
        model, _ = build_tiny(temporal_pool=trained)
        assert model.settings_for_budget(256, 64) == expected  # 64 frames x 16 tokens into 16 frames
