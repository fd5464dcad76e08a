"""The temporal module as the model builds it carries context across frames (issue: init killed the scan).

Every check runs on the model as users get it: the constructor, a preset, ``from_pretrained`` and
``from_parts`` (through ``storm-vlm init``), never on a bare module beside it.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import MambaConfig, MambaModel
from typer.testing import CliRunner

from storm_vlm import StormConfig, StormForConditionalGeneration
from storm_vlm.cli import app
from storm_vlm.presets import build_tiny, tiny_config, tiny_tokenizer

FRAMES = 8  # 8 frames x 16 tokens, hidden 64, 2 Mamba layers: the shapes the issue measured


def _built(how: str, tmp_path, bidirectional: bool = True) -> StormForConditionalGeneration:
    torch.manual_seed(0)
    if how == "preset":
        return build_tiny(bidirectional=bidirectional)[0]
    if how == "constructor":
        tok = tiny_tokenizer()
        video_id, image_id = tok.convert_tokens_to_ids(["<video>", "<image>"])
        return StormForConditionalGeneration(tiny_config(len(tok), video_id, image_id, bidirectional=bidirectional))
    if how == "from_pretrained":
        build_tiny(bidirectional=bidirectional)[0].save_pretrained(tmp_path / "m")
        return StormForConditionalGeneration.from_pretrained(tmp_path / "m")
    if how == "init-cli":
        args = ["init", "--preset", "tiny", "--out", str(tmp_path / "cli")]
        result = CliRunner().invoke(app, args + ([] if bidirectional else ["--no-bidirectional"]))
        assert result.exit_code == 0, result.output
        return StormForConditionalGeneration.from_pretrained(tmp_path / "cli")
    raise AssertionError(how)


def _first_frame_shift(model: StormForConditionalGeneration) -> float:
    """How far the first frame's visual tokens move when only the last frame's pixels change,
    relative to those tokens' own scale (fp32, default scan backend)."""
    model = model.float().eval()
    size = model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(1, FRAMES, 3, size, size, generator=gen)
    changed = video.clone()
    changed[:, -1] = torch.randn(1, 3, size, size, generator=gen)
    with torch.no_grad():
        before = model.get_visual_tokens(video)[:, 0]
        after = model.get_visual_tokens(changed)[:, 0]
    return float((before - after).abs().max() / before.abs().max())


@pytest.mark.parametrize("how", ["preset", "constructor", "from_pretrained", "init-cli"])
def test_last_frame_moves_first_frame_in_bidirectional_models(how, tmp_path):
    assert _first_frame_shift(_built(how, tmp_path)) >= 1e-6


@pytest.mark.parametrize("how", ["preset", "constructor"])
def test_causal_models_never_look_ahead(how, tmp_path):
    assert _first_frame_shift(_built(how, tmp_path, bidirectional=False)) == 0.0


def test_gradient_from_first_frame_output_reaches_last_frame_input(tmp_path):
    model = _built("preset", tmp_path).float().eval()
    tokens = torch.randn(1, FRAMES, 16, model.config.hidden_size, requires_grad=True)
    first = model.apply_temporal(tokens)[:, 0]
    (first * torch.randn_like(first)).sum().backward()  # a random readout (the final LayerNorm fixes the norm)
    grad = tokens.grad.abs()
    # the first frame's own input dominates; the last frame's is ~2e-6 of it with mamba_ssm's init
    # (~3e-13 with the generic normal(0.02) init this replaced)
    assert grad[:, -1].mean() > 1e-7 * grad[:, 0].mean() > 0


def test_scan_parameters_get_gradients_at_init(tmp_path):
    """A_log, x_proj and dt_proj learn from the first step (with the old init: 1e-13, below AdamW's eps)."""
    model = _built("preset", tmp_path).float().train()
    tokens = torch.randn(2, FRAMES, 16, model.config.hidden_size)
    out = model.apply_temporal(tokens)
    (out * torch.randn_like(out)).sum().backward()
    branch = model.temporal.layers[0].mixer.forward_branch
    for name in ("A_log", "x_proj.weight", "dt_proj.weight"):
        grad = dict(branch.named_parameters())[name].grad
        assert grad.abs().max() > 1e-7, name


def _std(t: torch.Tensor) -> float:
    return float(t.float().std())


def test_temporal_parameters_match_mamba_init_statistics():
    """Per block: conv1d, out_proj, A, D and Δ as transformers' Mamba (with mamba_ssm's residual
    rescaling); in_proj and x_proj as mamba_ssm (PyTorch's Linear default; transformers' Mamba draws
    them from normal(initializer_range = 0.1), which grows with the width)."""
    torch.manual_seed(0)
    d_model, layers = 128, 2
    storm = StormForConditionalGeneration(
        StormConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=16, patch_size=4),
            text_config=dict(model_type="qwen2", vocab_size=128, hidden_size=d_model, intermediate_size=128,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
            temporal_layers=layers, d_state=16, video_token_id=127,
        )
    )  # fmt: skip
    hf = MambaModel(
        MambaConfig(hidden_size=d_model, state_size=16, expand=2, conv_kernel=4, time_step_rank=math.ceil(d_model / 16),
                    num_hidden_layers=layers, rescale_prenorm_residual=True, vocab_size=16)
    )  # fmt: skip
    for ours, theirs in zip(storm.temporal.layers, hf.layers):
        mixer, ref = ours.mixer, theirs.mixer
        for branch in (mixer.forward_branch, mixer.backward_branch):
            for name in ("conv1d.weight", "dt_proj.weight"):
                mine, want = _std(branch.get_parameter(name)), _std(ref.get_parameter(name))
                assert abs(mine / want - 1) < 0.1, (name, mine, want)
            torch.testing.assert_close(branch.A_log, ref.A_log)
            torch.testing.assert_close(branch.D, ref.D)
            assert not branch.conv1d.bias.any() and not ref.conv1d.bias.any()
            dt = torch.nn.functional.softplus(branch.dt_proj.bias)
            assert 1e-3 * 0.99 <= dt.min() and dt.max() <= 1e-1 * 1.01
        assert abs(_std(mixer.out_proj.weight) / _std(ref.out_proj.weight) - 1) < 0.1
        for name, fan_in in (("in_proj", d_model), ("forward_branch.x_proj", 2 * d_model)):
            expected = 1 / math.sqrt(3 * fan_in)  # std of U(±1/√fan_in)
            assert abs(_std(mixer.get_submodule(name).weight) / expected - 1) < 0.1, name
    # the projector: PyTorch's Linear default as LLaVA builds it, zero bias
    proj = storm.projector.proj
    assert abs(_std(proj.weight) / (1 / math.sqrt(3 * proj.in_features)) - 1) < 0.1 and not proj.bias.any()


def test_loading_reinitialises_nothing(tmp_path):
    model = _built("preset", tmp_path)
    model.save_pretrained(tmp_path / "saved")
    loaded = StormForConditionalGeneration.from_pretrained(tmp_path / "saved")
    saved = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_scan_cut_equals_each_frame_alone_and_undoes_itself(tmp_path):
    model = _built("preset", tmp_path).float().eval()
    tokens = torch.randn(2, 5, 16, model.config.hidden_size)
    with torch.no_grad():
        full = model.apply_temporal(tokens)
        with model.scan_cut():
            cut = model.apply_temporal(tokens)
        alone = torch.cat([model.apply_temporal(tokens[:, t : t + 1]) for t in range(5)], dim=1)
        again = model.apply_temporal(tokens)
    torch.testing.assert_close(cut, alone)
    assert not torch.allclose(cut[:, 1:], full[:, 1:])  # the scan did carry something across frames
    assert torch.equal(again, full)
