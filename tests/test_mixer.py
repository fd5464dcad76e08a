"""The Mamba mixer and temporal module: Mamba-1 semantics, and what bidirectionality buys."""

from __future__ import annotations

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
