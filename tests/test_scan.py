"""The reference selective scan: hand-computed values, state continuation, layouts, and agreement
with transformers' independent implementation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.mamba.modeling_mamba import mamba_selective_scan

from storm_vlm.modeling.mamba import selective_scan_fn, selective_scan_ref


def _random_inputs(batch=2, dim=6, length=11, state=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, dim, length, generator=g, dtype=dtype)
    delta = torch.randn(batch, dim, length, generator=g, dtype=dtype)
    A = -torch.rand(dim, state, generator=g) * 2 - 0.1
    B = torch.randn(batch, state, length, generator=g, dtype=dtype)
    C = torch.randn(batch, state, length, generator=g, dtype=dtype)
    D = torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, length, generator=g, dtype=dtype)
    bias = torch.randn(dim, generator=g)
    return u, delta, A, B, C, D, z, bias


def test_hand_computed_tiny_case():
    # One channel, one state, A=-1, Δ=1: Ā=e^-1, B̄=1. u = [1, 0, 2], C = 1, D = 0.5.
    u = torch.tensor([[[1.0, 0.0, 2.0]]])
    delta = torch.ones(1, 1, 3)
    A = torch.tensor([[-1.0]])
    B = torch.ones(1, 1, 3)
    C = torch.ones(1, 1, 3)
    D = torch.tensor([0.5])
    e = math.exp(-1)
    h = [1.0, e, e * e + 2.0]  # h_t = e^-1 h_{t-1} + u_t
    expected = torch.tensor([[[h[0] + 0.5, h[1] + 0.0, h[2] + 1.0]]])
    out, last = selective_scan_ref(u, delta, A, B, C, D=D, return_last_state=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(last, torch.tensor([[[h[2]]]]))
    # gate: y · SiLU(z)
    z = torch.tensor([[[0.0, 1.0, -1.0]]])
    gated = selective_scan_ref(u, delta, A, B, C, D=D, z=z)
    torch.testing.assert_close(gated, expected * torch.nn.functional.silu(z))


def test_matches_transformers_recurrent_scan():
    u, delta, A, B, C, D, z, bias = _random_inputs()
    ours, our_state = selective_scan_ref(
        u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, return_last_state=True
    )
    theirs, their_state = mamba_selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, return_last_state=True
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_state, their_state, rtol=1e-5, atol=1e-5)


def test_initial_state_continues_the_scan():
    u, delta, A, B, C, D, z, bias = _random_inputs(length=12)
    kw = dict(D=D, delta_bias=bias, delta_softplus=True, return_last_state=True)
    full, full_state = selective_scan_ref(u, delta, A, B, C, z=z, **kw)
    cut = 5
    first, state = selective_scan_ref(
        u[..., :cut], delta[..., :cut], A, B[..., :cut], C[..., :cut], z=z[..., :cut], **kw
    )
    second, last = selective_scan_ref(
        u[..., cut:], delta[..., cut:], A, B[..., cut:], C[..., cut:], z=z[..., cut:], initial_state=state, **kw
    )
    torch.testing.assert_close(torch.cat([first, second], -1), full)
    torch.testing.assert_close(last, full_state)


def test_B_C_layouts_agree():
    u, delta, A, B, C, D, _, _ = _random_inputs(dim=6, state=4)
    # (B, G, N, L) with G groups == (B, N, L) repeated per group
    grouped = selective_scan_ref(u, delta, A, B[:, None].expand(-1, 3, -1, -1), C[:, None].expand(-1, 3, -1, -1), D=D)
    torch.testing.assert_close(grouped, selective_scan_ref(u, delta, A, B, C, D=D))
    # (E, N) time-invariant == (B, N, L) constant in time, per channel
    B_const = torch.randn(6, 4)
    per_channel = torch.stack(
        [
            selective_scan_ref(
                u[:, d : d + 1], delta[:, d : d + 1], A[d : d + 1], B_const[d][None, :, None].expand(2, 4, 11), C
            )
            for d in range(6)
        ],
        dim=1,
    ).squeeze(2)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B_const, C), per_channel)


def test_dtype_and_gradients():
    u, delta, A, B, C, D, z, bias = _random_inputs(length=7)
    out = selective_scan_fn(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D=D, z=z.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = selective_scan_fn(
        u.bfloat16().float(),
        delta.bfloat16().float(),
        A,
        B.bfloat16().float(),
        C.bfloat16().float(),
        D=D,
        z=z.bfloat16().float(),
    )
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    leaves = [t.clone().requires_grad_() for t in (u, delta, B, C)]
    selective_scan_fn(*leaves[:2], A, *leaves[2:], D=D, z=z, delta_bias=bias, delta_softplus=True).sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_empty_sequence_and_bad_layout():
    u, delta, A, B, C, *_ = _random_inputs(length=0)
    out, state = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    assert out.shape == (2, 6, 0) and state.abs().sum() == 0
    with pytest.raises(ValueError, match="2, 3 or 4 dimensions"):
        selective_scan_ref(u, delta, A, B[None, None], C)
