"""Selective scan in Triton: fast on any CUDA GPU with a plain ``pip install storm-vlm[gpu]``.

Same signature and semantics as :func:`storm_vlm.modeling.mamba.selective_scan_ref` (mamba_ssm's
``selective_scan_fn``) for input-dependent B and C, ``(B, N, L)`` or ``(B, G, N, L)``.

Layout of the work (as in mamba_ssm's CUDA kernel): one program per (batch, block of BLOCK_D
channels) walks time in chunks of BLOCK_T steps. Inside a chunk the recurrence
h_t = Ā_t h_{t-1} + B̄_t x_t is a parallel associative scan over (Ā, B̄x) pairs held in registers,
with the state entering the chunk folded into its first element; discretisation, C readout, D skip
and SiLU(z) gate are fused around it. Nothing of size (B, E, L, N) touches global memory; the state
at each chunk start is saved for the backward.

Backward: chunks are walked from last to first. Each recomputes its states from its checkpoint,
then runs the adjoint recurrence ĥ_t = C_t g_t + Ā_{t+1} ĥ_{t+1} as a reverse associative scan
(the gradient flowing in from the next chunk folded into the last element). With
Ā_t h_{t-1} = h_t − B̄_t x_t no division is needed:
dΔ_t = Σ_n ĥ_t (A (h_t − B̄_t x_t) + B_t x_t), dA = Σ_t ĥ_t Δ_t (h_t − B̄_t x_t),
dB_t = Σ_e ĥ_t Δ_t x_t and dC_t = Σ_e g_t h_t (atomically added over channel blocks, as
mamba_ssm does), dx_t = g_t D + Σ_n ĥ_t Δ_t B_t.

Tested on CPU with ``TRITON_INTERPRET=1`` against the reference.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["is_available", "selective_scan_triton"]


@functools.cache
def is_available() -> bool:
    """Triton importable (``storm-vlm[gpu]``)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _kernels():
    from . import _scan_triton_kernels as k

    return k._fwd, k._bwd


def _launch_shape(dim: int, groups: int, nstate: int, block_d: int, block_t: int) -> tuple[int, int, int]:
    """Blocks of channels never straddle a B/C group; N is padded to a power of two."""
    import triton

    per_group = dim // groups
    bd = min(block_d, triton.next_power_of_2(per_group))
    while per_group % bd:  # a power of two dividing the group size
        bd //= 2
    return bd, block_t, max(triton.next_power_of_2(nstate), 2)


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """``(B, N, L)`` → ``(B, 1, N, L)``, contiguous in L."""
    M = M.unsqueeze(1) if M.dim() == 3 else M
    return M if M.stride(-1) == 1 else M.contiguous()


class _SelectiveScanTriton(torch.autograd.Function):
    # Tuned on an H200 at d_inner 7168, d_state 16, L = 32768, fp32 (sweeps over chunk length,
    # channels per program, warps, stages): small channel blocks keep the (BLOCK_D, BLOCK_T, N)
    # tiles in registers. Backward sweep (fwd+bwd ms): BLOCK_D 2 / 4 warps / dA deferred 55.6,
    # not deferred 55.8; BLOCK_D 4: 59.0; BLOCK_D 8: 152; 8 warps: 73.6 (mamba_ssm: 30.7).
    BLOCK_T = 64
    BLOCK_D = 2
    NUM_WARPS = 2
    BWD_BLOCK_D = 2
    BWD_NUM_WARPS = 4
    BWD_NUM_STAGES = None  # Triton's default
    BWD_DEFER_DA = True  # accumulate dA per element, reduce once after the time loop

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        fwd, _ = _kernels()
        batch, dim, length = u.shape
        nstate = A.shape[1]
        u, delta = u.contiguous(), delta.contiguous()
        z = z.contiguous() if z is not None else None
        Bg, Cg = _grouped(B), _grouped(C)
        groups = Bg.shape[1]
        bd, bt, bn = _launch_shape(dim, groups, nstate, _SelectiveScanTriton.BLOCK_D, _SelectiveScanTriton.BLOCK_T)
        nchunk = max(1, -(-length // bt))
        A32 = A.float().contiguous()
        out = torch.empty_like(u)
        last = torch.empty(batch, dim, nstate, device=u.device, dtype=torch.float32)
        ckpt = torch.empty(batch, dim, nchunk, nstate, device=u.device, dtype=torch.float32)
        x0 = initial_state.float().contiguous() if initial_state is not None else last  # dummy when absent
        dummy = A32
        grid = (batch, -(-dim // bd))
        fwd[grid](
            u, delta, A32, Bg, Cg,
            D if D is not None else dummy, z if z is not None else u,
            delta_bias if delta_bias is not None else dummy, x0,
            out, last, ckpt,
            length, dim, nstate, dim // groups, nchunk,
            u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
            Cg.stride(0), Cg.stride(1), Cg.stride(2),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            HAS_X0=initial_state is not None, SOFTPLUS=bool(delta_softplus),
            BLOCK_D=bd, BLOCK_T=bt, BLOCK_N=bn, num_warps=_SelectiveScanTriton.NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A32, Bg, Cg, D, z, delta_bias, ckpt)
        ctx.meta = (bool(delta_softplus), B.dim(), C.dim(), initial_state is not None, (bd, bt, bn), nchunk)
        ctx.dtypes = (delta.dtype, A.dtype, B.dtype, C.dtype)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        _, bwd = _kernels()
        u, delta, A32, Bg, Cg, D, z, delta_bias, ckpt = ctx.saved_tensors
        softplus, b_dim, c_dim, has_x0, (bd, bt, bn), nchunk = ctx.meta
        batch, dim, length = u.shape
        nstate = A32.shape[1]
        groups = Bg.shape[1]
        f32 = dict(device=u.device, dtype=torch.float32)
        gout = grad_out.contiguous() if grad_out is not None else torch.zeros_like(u)
        du, ddelta = torch.empty(batch, dim, length, **f32), torch.empty(batch, dim, length, **f32)
        dz = torch.empty(batch, dim, length, **f32) if z is not None else du
        dA = torch.zeros(dim, nstate, **f32)
        dB = torch.zeros(Bg.shape, **f32)
        dC = torch.zeros(Cg.shape, **f32)
        dD = torch.zeros(dim, **f32)
        dbias = torch.zeros(dim, **f32)
        dx0 = torch.empty(batch, dim, nstate, **f32)
        glast = grad_last.float().contiguous() if grad_last is not None else dx0
        bd = _launch_shape(dim, groups, nstate, _SelectiveScanTriton.BWD_BLOCK_D, bt)[0]  # same chunks
        grid = (batch, -(-dim // bd))
        bwd[grid](
            u, delta, A32, Bg, Cg,
            D if D is not None else A32, z if z is not None else u,
            delta_bias if delta_bias is not None else A32, ckpt, gout, glast,
            du, ddelta, dz, dA, dB, dC, dD, dbias, dx0,
            length, dim, nstate, dim // groups, nchunk,
            u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
            Cg.stride(0), Cg.stride(1), Cg.stride(2),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            HAS_GLAST=grad_last is not None, SOFTPLUS=softplus,
            BLOCK_D=bd, BLOCK_T=bt, BLOCK_N=bn, DEFER_DA=_SelectiveScanTriton.BWD_DEFER_DA,
            num_warps=_SelectiveScanTriton.BWD_NUM_WARPS,
            **({"num_stages": _SelectiveScanTriton.BWD_NUM_STAGES} if _SelectiveScanTriton.BWD_NUM_STAGES else {}),
        )  # fmt: skip
        delta_t, A_t, B_t, C_t = ctx.dtypes
        return (
            du.to(u.dtype),
            ddelta.to(delta_t),
            dA.to(A_t),
            (dB.squeeze(1) if b_dim == 3 else dB).to(B_t),
            (dC.squeeze(1) if c_dim == 3 else dC).to(C_t),
            dD.to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None,
            dx0 if has_x0 else None,
            None,
        )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton selective scan; see the module docstring. Needs B, C with 3 or 4 dimensions."""
    if B.dim() < 3 or C.dim() < 3:
        raise ValueError("the Triton scan needs input-dependent B and C of shape (B, N, L) or (B, G, N, L)")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    out, last = _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out
