"""The Mamba mixer and temporal module: Mamba-1 semantics, and what bidirectionality buys."""

from __future__ import annotations

import pytest
import torch
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

from storm_vlm.modeling.mamba import MambaMixer
from storm_vlm.modeling.temporal import TemporalEncoder
from storm_vlm.presets import temporal_config


def _copy_from_hf(ours: MambaMixer, hf: HFMambaMixer) -> None:
    mapping = {"in_proj.weight": "in_proj.weight", "out_proj.weight": "out_proj.weight"}
    for name in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"):
        mapping[f"forward_branch.{name}"] = name
    hf_state = hf.state_dict()
    ours.load_state_dict({k: hf_state[v] for k, v in mapping.items()}, strict=True)


def test_unidirectional_mixer_equals_transformers_mamba_mixer():
    config = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=4, num_hidden_layers=1)
    hf = HFMambaMixer(config, layer_idx=0).eval()
    ours = MambaMixer(temporal_config(32, d_state=8, d_conv=4, expand=2, dt_rank=4, bidirectional=False)).eval()
    _copy_from_hf(ours, hf)
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-5)


def test_bidirectional_is_the_mirror_of_itself_with_branches_swapped():
    mixer = MambaMixer(temporal_config(16, d_state=4, bidirectional=True)).eval()
    swapped = MambaMixer(temporal_config(16, d_state=4, bidirectional=True)).eval()
    state = mixer.state_dict()
    swapped.load_state_dict(
        {
            k.replace("forward_branch", "TMP")
            .replace("backward_branch", "forward_branch")
            .replace("TMP", "backward_branch"): v
            for k, v in state.items()
        }
    )
    x = torch.randn(1, 13, 16)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x.flip(1)), mixer(x).flip(1), rtol=1e-5, atol=1e-5)


def _first_frame_output(encoder: TemporalEncoder, video: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(video)[:, 0]


def test_last_frame_reaches_first_frame_only_when_bidirectional():
    frames, tokens, width = 5, 4, 16
    video = torch.randn(1, frames, tokens, width)
    changed = video.clone()
    changed[:, -1] = torch.randn(
        1, tokens, width
    )  # change only the last frame (not by a constant: LayerNorm hides that)
    for bidirectional, should_change in ((True, True), (False, False)):
        encoder = TemporalEncoder(
            temporal_config(width, temporal_layers=2, d_state=4, bidirectional=bidirectional)
        ).eval()
        before, after = _first_frame_output(encoder, video), _first_frame_output(encoder, changed)
        moved = (before - after).abs().max().item()
        assert (moved > 1e-6) == should_change, (bidirectional, moved)


def test_temporal_encoder_is_residual_prenorm_with_final_norm():
    encoder = TemporalEncoder(temporal_config(8, temporal_layers=1, d_state=4)).eval()
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        block = encoder.layers[0]
        seq = x.reshape(2, 12, 8)
        expected = encoder.norm(seq + block.mixer(block.norm(seq))).view(2, 3, 4, 8)  # Eq. 5 + final norm
        torch.testing.assert_close(encoder(x), expected)


def _fused_calls(monkeypatch) -> list[bool]:
    """Record every call of the fused path's conv kernel (its ``reverse`` flag)."""
    from storm_vlm.modeling import scan_cpu

    calls: list[bool] = []
    real = scan_cpu.conv_silu_arrays

    def spy(x, weight, bias, reverse=False):
        calls.append(reverse)
        return real(x, weight, bias, reverse)

    monkeypatch.setattr(scan_cpu, "conv_silu_arrays", spy)
    return calls


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("length", [1, 2, 3, 37, 600])
def test_fused_cpu_inference_equals_the_general_path(monkeypatch, bidirectional, length):
    """The fused CPU path (numba conv + SiLU, reverse-time scan averaging in place) against the
    branches as written (conv, SiLU, flips, the scan through autograd's entry, the mean)."""
    calls = _fused_calls(monkeypatch)
    mixer = MambaMixer(temporal_config(48, d_state=8, bidirectional=bidirectional)).eval()
    x = torch.randn(2, length, 48)
    with torch.no_grad():
        fused = mixer(x)
        assert calls == ([False, True] if bidirectional else [False])  # it ran, both directions
        mixer.fused_cpu = False
        general = mixer(x)
    assert len(calls) == (2 if bidirectional else 1)  # the general path does not use it
    torch.testing.assert_close(fused, general, rtol=1e-5, atol=1e-6)
    assert fused.abs().max() > 1e-3  # not trivially equal


def test_the_built_model_runs_the_fused_path_in_inference_and_the_general_path_in_training(monkeypatch):
    """As users run it: the built model's temporal module is fused under no_grad and equal to the
    general path; with gradients it takes the general path (the fused one has no backward)."""
    from storm_vlm.presets import build_tiny

    calls = _fused_calls(monkeypatch)
    model, _ = build_tiny()
    tokens = torch.randn(1, 3, 16, model.config.hidden_size)
    with torch.no_grad():
        fused = model.model.apply_temporal(tokens)
    assert len(calls) == 2 * model.config.temporal_layers  # both directions of every block
    mixers = [m for m in model.modules() if isinstance(m, MambaMixer)]
    for m in mixers:
        m.fused_cpu = False
    with torch.no_grad():
        general = model.model.apply_temporal(tokens)
    torch.testing.assert_close(fused, general, rtol=1e-5, atol=1e-6)
    for m in mixers:
        m.fused_cpu = True
    calls.clear()
    model.train()
    model.model.apply_temporal(tokens).sum().backward()  # gradients: the general path
    assert calls == [] and mixers[0].forward_branch.conv1d.weight.grad is not None


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 41])
def test_conv_silu_kernel_is_the_causal_conv_and_its_mirror(length):
    from storm_vlm.modeling.mamba import causal_conv1d
    from storm_vlm.modeling.scan_cpu import conv_silu_arrays

    x, w, b = torch.randn(2, 24, length), torch.randn(24, 4), torch.randn(24)
    torch.testing.assert_close(torch.from_numpy(conv_silu_arrays(x.numpy(), w.numpy(), b.numpy())),
                               causal_conv1d(x, w, b), rtol=1e-5, atol=1e-6)  # fmt: skip
    mirror = causal_conv1d(x.flip(-1), w, b).flip(-1)  # what the backward branch computes
    got = conv_silu_arrays(x.numpy(), w.numpy(), b.numpy(), reverse=True)
    torch.testing.assert_close(torch.from_numpy(got), mirror, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "a_shape, b_shape, a_view, b_view",
    [
        ((70, 33), (45, 33), "plain", "plain"),
        ((70, 33), (45, 60), "transposed", "column slice"),  # out_proj's y[b].T, dt_proj's Δ slice
        ((1, 70, 33), (45, 33), "plain", "plain"),
        ((45, 33), (3, 70, 33), "plain", "plain"),
    ],
)
def test_onednn_matmul_nt_equals_torch(a_shape, b_shape, a_view, b_view):
    """The fused path's GEMMs (in_proj, dt_proj, out_proj) against ``a @ b.T``, in the layouts
    the mixer passes: a transposed view read in place, a strided slice, batched either side."""
    from storm_vlm.modeling import onednn

    a = (
        torch.randn(*a_shape[:-2], a_shape[-1], a_shape[-2]).transpose(-1, -2)
        if a_view == "transposed"
        else torch.randn(a_shape)
    )
    b = torch.randn(b_shape)[..., : a.shape[-1]] if b_view == "column slice" else torch.randn(b_shape)
    expected = a @ b.transpose(-1, -2)
    got = onednn.batched_matmul_nt(a, b) if a.dim() == 3 or b.dim() == 3 else onednn.matmul_nt(a, b)
    torch.testing.assert_close(got, expected)
    assert got.is_contiguous()


def test_onednn_is_what_runs_on_x86_and_bad_shapes_are_refused():
    import platform

    from storm_vlm.modeling import onednn

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert onednn.available()  # else the fused path would silently fall back to MKL's half speed
    with pytest.raises(ValueError, match="matmul_nt needs"):
        onednn.matmul_nt(torch.randn(3, 4), torch.randn(5, 6))
    wide = onednn.matmul_nt(torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64))
    assert wide.dtype == torch.float64 and wide.shape == (3, 5)  # not fp32: plain torch
