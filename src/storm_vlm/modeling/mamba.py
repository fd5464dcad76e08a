"""Mamba-1 selective scan and mixer, uni- or bidirectional (paper §3.1, Eq. 1-2; Gu & Dao 2023).

Glossary (code name → paper symbol, as in mamba_ssm and mamba-minimal):

===========  ======  ============================================================
``u``        x_t     input sequence after conv + SiLU, ``(B, E, L)`` (E = d_inner)
``delta``    Δ_t     input-dependent step size, ``(B, E, L)``
``A``        A       diagonal state matrix, ``(E, N)``, negative real (``-exp(A_log)``)
``B``, ``C`` B_t,C_t input-dependent input/output projections, ``(B, N, L)``
``D``        D       skip connection, ``(E,)``
``z``        z       gate branch; the output is multiplied by SiLU(z)
``x``        h_t     SSM state, ``(B, E, N)``
===========  ======  ============================================================

Discretisation (zero-order hold for A, Euler for B, as in mamba_ssm):
    Ā_t = exp(Δ_t A),  B̄_t = Δ_t B_t,  h_t = Ā_t h_{t-1} + B̄_t x_t,  y_t = C_t h_t + D x_t.

The scan here is the slow, obvious reference; every fast path must equal it (tests).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from . import onednn, scan_cpu, scan_triton

if TYPE_CHECKING:
    from ..configuration_storm import StormConfig

logger = logging.getLogger(__name__)

__all__ = [
    "BranchState",
    "MambaMixer",
    "SSMBranch",
    "keep_default_init",
    "reset_default_init",
    "scan_backend",
    "selective_scan_fn",
    "selective_scan_ref",
]


def _per_step(M: torch.Tensor, batch: int, dim: int) -> list[torch.Tensor] | None:
    """Split a B or C argument into per-step ``(B, E, N)``-broadcastable tensors.

    mamba_ssm accepts three layouts: ``(E, N)`` time-invariant, ``(B, N, L)`` shared by all
    channels, and ``(B, G, N, L)`` shared within G channel groups.
    Returns ``None`` for the time-invariant layout (the caller broadcasts it directly).
    """
    if M.dim() == 2:
        return None
    if M.dim() == 3:  # (B, N, L) → L x (B, 1, N)
        return [m.unsqueeze(1) for m in M.unbind(-1)]
    if M.dim() == 4:  # (B, G, N, L) → L x (B, E, N)
        groups = M.shape[1]
        if dim % groups:
            raise ValueError(f"d_inner={dim} is not divisible by the {groups} groups of B/C")
        return [m.repeat_interleave(dim // groups, dim=1) for m in M.unbind(-1)]
    raise ValueError(f"B and C must have 2, 3 or 4 dimensions, got shape {tuple(M.shape)}")


def selective_scan_ref(
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
    """Reference selective scan with mamba_ssm's ``selective_scan_fn`` signature and semantics.

    Args:
        u, delta: ``(B, E, L)``. A: ``(E, N)`` real. B, C: ``(B, N, L)`` (or ``(E, N)`` /
        ``(B, G, N, L)``). D: ``(E,)``. z: ``(B, E, L)``. delta_bias: ``(E,)``.
        initial_state: ``(B, E, N)`` state h_0 to continue from (streaming); zeros if ``None``.

    Returns:
        y ``(B, E, L)`` in ``u``'s dtype, and the last state ``(B, E, N)`` in fp32 when
        ``return_last_state``. Everything is computed in fp32, like the CUDA kernel (in fp64 when
        the inputs are fp64, which makes this function its own high-precision reference).

    The loop iterates with ``unbind`` so that autograd keeps one small node per step; indexing
    ``x[:, t]`` instead makes the backward quadratic in L (each step's gradient is a full-size
    zero tensor with one slice filled).
    """
    if A.is_complex():
        raise NotImplementedError("complex A is not supported (Mamba-1 real-valued S4D only)")
    dtype_in = u.dtype
    wide = torch.promote_types(dtype_in, torch.float32)  # fp32, or fp64 for an fp64 reference
    batch, dim, _length = u.shape
    u = u.to(wide)
    delta = delta.to(wide)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(wide)
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(wide)

    if initial_state is None:
        x = u.new_zeros(batch, dim, A.shape[1])
    else:
        x = initial_state.to(wide)
    B_wide, C_wide = B.to(wide), C.to(wide)
    Bs, Cs = _per_step(B_wide, batch, dim), _per_step(C_wide, batch, dim)
    B_const, C_const = B_wide.unsqueeze(0), C_wide.unsqueeze(0)  # (1, E, N), used when constant

    ys = []
    for t, (u_t, delta_t) in enumerate(zip(u.unbind(-1), delta.unbind(-1))):
        B_t = B_const if Bs is None else Bs[t]
        C_t = C_const if Cs is None else Cs[t]
        dA = torch.exp(delta_t.unsqueeze(-1) * A)  # Ā_t (B, E, N)
        x = dA * x + (delta_t * u_t).unsqueeze(-1) * B_t  # h_t = Ā_t h_{t-1} + B̄_t x_t
        ys.append((x * C_t).sum(-1))  # y_t = C_t h_t   (B, E)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)

    out = y if D is None else y + u * D.to(wide)[:, None]
    if z is not None:
        out = out * F.silu(z.to(wide))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


SCAN_BACKENDS = ("auto", "reference", "cpu", "triton", "mamba_ssm")
_logged: set[tuple[str, str]] = set()


@functools.cache
def _mamba_ssm_scan() -> Callable | None:
    """mamba_ssm's CUDA ``selective_scan_fn`` if the package is installed (``storm-vlm[cuda]``)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel
    except Exception:  # ImportError, or a build that does not match this torch/CUDA
        return None
    return kernel


@functools.cache
def _causal_conv1d_kernel() -> Callable | None:
    """causal_conv1d's CUDA kernel if installed."""
    try:
        from causal_conv1d import causal_conv1d_fn as kernel
    except Exception:
        return None
    return kernel


def _forced_backend() -> str:
    """``STORM_SCAN_BACKEND`` (default ``auto``), validated."""
    forced = os.environ.get("STORM_SCAN_BACKEND", "auto")
    if forced not in SCAN_BACKENDS:
        raise ValueError(f"STORM_SCAN_BACKEND={forced!r}; expected one of {', '.join(SCAN_BACKENDS)}")
    return forced


def scan_backend(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor, initial_state: torch.Tensor | None) -> str:
    """The one place that decides which selective scan runs (override: ``STORM_SCAN_BACKEND``).

    CUDA: mamba_ssm's kernel when installed and no initial state is passed (it cannot take one),
    else the Triton kernel when triton is installed (``storm-vlm[gpu]``), else the reference.
    CPU: the fused numba kernel. Time-invariant B/C (unused by STORM) always take the reference.
    """
    forced = _forced_backend()
    if forced != "auto":
        return forced
    variable_bc = B.dim() >= 3 and C.dim() >= 3
    if not variable_bc:
        return "reference"
    if u.device.type == "cuda":
        if initial_state is None and _mamba_ssm_scan() is not None:
            return "mamba_ssm"
        return "triton" if scan_triton.is_available() else "reference"
    if u.device.type == "cpu" and scan_cpu.is_available():
        return "cpu"
    return "reference"


def _log_once(backend: str, device: torch.device) -> None:
    key = (backend, device.type)
    if key not in _logged:
        _logged.add(key)
        logger.info("selective scan on %s: %s", device.type, backend)


def selective_scan_fn(
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
    """The selective scan the model calls; :func:`scan_backend` picks the implementation.

    Every implementation has :func:`selective_scan_ref`'s signature and semantics and is tested
    for equality against it.
    """
    backend = scan_backend(u, B, C, initial_state)
    _log_once(backend, u.device)
    kwargs: dict[str, Any] = dict(
        D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state
    )
    if backend == "cpu":
        return scan_cpu.selective_scan_cpu(u, delta, A, B, C, initial_state=initial_state, **kwargs)
    if backend == "triton":
        return scan_triton.selective_scan_triton(u, delta, A, B, C, initial_state=initial_state, **kwargs)
    if backend == "mamba_ssm":
        kernel = _mamba_ssm_scan()
        if kernel is None:
            raise RuntimeError("STORM_SCAN_BACKEND=mamba_ssm but mamba_ssm is not installed")
        if initial_state is not None:
            raise ValueError("mamba_ssm's selective_scan_fn cannot start from an initial state")
        return kernel(u, delta, A, B, C, **kwargs)
    return selective_scan_ref(u, delta, A, B, C, initial_state=initial_state, **kwargs)


def _use_conv_kernel(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and _causal_conv1d_kernel() is not None


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prefix: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise causal conv + SiLU. x ``(B, E, L)``, weight ``(E, W)``, prefix ``(B, E, W-1)``.

    ``prefix`` holds the inputs that precede ``x`` (zeros when ``None``, i.e. the sequence start);
    streaming passes the previous chunk's tail. Uses causal_conv1d's kernel on CUDA when present.
    """
    width = weight.shape[-1]
    if prefix is None and _use_conv_kernel(x):
        kernel = _causal_conv1d_kernel()
        if kernel is not None:  # _use_conv_kernel checked it already
            return kernel(x, weight, bias, activation="silu")
    if prefix is None:  # zero history: let the conv pad (no copy of x), keep the first L outputs
        padded = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])
        return F.silu(padded[..., : x.shape[-1]])
    return F.silu(F.conv1d(torch.cat([prefix, x], dim=-1), weight.unsqueeze(1), bias, groups=x.shape[1]))


@dataclass
class BranchState:
    """What a scan direction carries across chunks of a stream.

    conv: the last ``d_conv - 1`` inputs of the causal conv ``(B, E, d_conv - 1)``.
    ssm: the SSM state h ``(B, E, N)``, fp32.
    """

    conv: torch.Tensor
    ssm: torch.Tensor


DEFAULT_INIT = "default_init_scale"  # attribute marking a Linear / Conv1d that keeps PyTorch's init


def keep_default_init(module: nn.Linear | nn.Conv1d, scale: float = 1.0) -> None:
    """Give ``module`` PyTorch's default init (kaiming-uniform, a = √5: U(±scale/√fan_in)) with a
    zero bias, and mark it so that :func:`reset_default_init` (which the model's ``_init_weights``
    calls after transformers' generic normal(0.02)) gives it again.

    mamba_ssm keeps this init for conv1d, x_proj, in_proj and out_proj (``scale = 1/√L`` for
    out_proj under its ``rescale_prenorm_residual``); transformers' Mamba does the same for conv1d
    and out_proj.
    """
    setattr(module, DEFAULT_INIT, scale)
    reset_default_init(module)


@torch.no_grad()
def reset_default_init(module: nn.Module) -> None:
    """Re-apply :func:`keep_default_init` to a marked module (no-op otherwise).

    It goes through ``transformers.initialization``, which skips weights loaded from a checkpoint.
    """
    scale = getattr(module, DEFAULT_INIT, None)
    if scale is None:
        return
    weight, bias = cast(torch.Tensor, module.weight), cast("torch.Tensor | None", module.bias)  # a Linear/Conv
    bound = scale / math.sqrt(weight[0].numel())
    init.uniform_(weight, -bound, bound)
    if bias is not None:
        init.zeros_(bias)


class SSMBranch(nn.Module):
    """One scan direction: causal depthwise conv1d, x_proj → (Δ, B, C), dt_proj, A_log, D.

    Weight names and initialisation follow mamba_ssm / transformers' ``MambaMixer`` so that
    checkpoints map one to one (conv1d and x_proj kaiming-uniform with a zero conv bias, S4D-real
    A = -(1..N), D = 1, Δ initialised log-uniformly in [dt_min, dt_max] through the inverse
    softplus of the dt_proj bias).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        # The depthwise conv must keep its kaiming scale (std ≈ 0.29 for d_conv 4): with the generic
        # transformers init (std 0.02) the conv output, and with it every gradient into the scan's
        # Δ, B and C, is ~100x too small, and the scan carries nothing across frames.
        keep_default_init(self.conv1d)
        keep_default_init(self.x_proj)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's initialisation of A, D and the Δ projection."""
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        init.copy_(self.A_log, torch.log(A))
        init.ones_(self.D)
        std = self.dt_rank**-0.5
        init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min)
        ).clamp(min=self.dt_init_floor)
        init.copy_(self.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(
        self, x: torch.Tensor, z: torch.Tensor, state: BranchState | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, BranchState]:
        """x, z: ``(B, E, L)`` → gated scan output ``(B, E, L)`` (and the state after it).

        ``state`` continues a sequence: the conv sees the previous inputs and the scan starts
        from the previous SSM state, so two calls on halves equal one call on the whole.
        """
        prefix = state.conv if state is not None else None
        if return_state:
            width = self.conv1d.kernel_size[0] - 1
            zeros = x.new_zeros(*x.shape[:2], width)
            tail = torch.cat([prefix if prefix is not None else zeros, x], dim=-1)[..., x.shape[-1] :]
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, prefix)
        delta, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        # (B, E, L); bias added in the scan. 3-D @ 3-D is one bmm writing this layout; 2-D @ 3-D would
        # compute its transpose and copy it (a third of this GEMM's time on CPU, measured)
        delta = torch.matmul(self.dt_proj.weight[None], delta.transpose(1, 2))
        A = -torch.exp(self.A_log.float())  # (E, N)
        result = selective_scan_fn(
            x,
            delta,
            A,
            B.transpose(1, 2),  # (B, N, L)
            C.transpose(1, 2),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=return_state,
            initial_state=state.ssm if state is not None else None,
        )
        if not return_state:
            return cast(torch.Tensor, result)
        y, last = result
        return y, BranchState(conv=tail, ssm=last)


def _fused_cpu_applies(mixer: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether :meth:`MambaMixer._branches_fused_cpu` may run: the numba scan is what
    :func:`scan_backend` picks, fp32 on CPU, and nothing needs a gradient (it has no backward)."""
    if hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32 or not scan_cpu.is_available():
        return False
    if _forced_backend() not in ("auto", "cpu"):
        return False
    if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in mixer.parameters())):
        return False
    return all(p.dtype == torch.float32 for p in mixer.parameters())


class MambaMixer(nn.Module):
    """Mamba-1 mixer; with ``bidirectional=True`` the Vision-Mamba "v2" bidirectional variant.

    Sizes come from the :class:`~storm_vlm.StormConfig` (one place for every knob).

    The paper states only "a bidirectional scanning module" (§3.2). Our choice (docs/design.md):
    in_proj and out_proj are shared; each direction has its own conv1d, x_proj, dt_proj, A_log
    and D; the backward branch scans the flipped sequence; the two gated outputs are averaged
    before out_proj. Averaging after the SiLU(z) gate equals gating the average, since z is
    shared. With ``bidirectional=False`` this is exactly transformers' ``MambaMixer``.

    Shapes: ``(B, L, D) → (B, L, D)`` with d_inner E = expand · D. ``out_scale`` scales the init
    of out_proj (1/√L in an L-block stack, mamba_ssm's ``rescale_prenorm_residual``).
    """

    def __init__(self, config: StormConfig, out_scale: float = 1.0) -> None:
        """Sizes from ``config`` (validated there): D = ``hidden_size``, ``d_state``, ``d_conv``,
        ``expand``, ``dt_rank`` and ``bidirectional``."""
        super().__init__()
        d_model = config.hidden_size
        d_inner = config.expand * d_model
        self.bidirectional = config.bidirectional
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        branch = (d_inner, config.d_state, config.d_conv, config.dt_rank)
        self.forward_branch = SSMBranch(*branch)
        self.backward_branch = SSMBranch(*branch) if config.bidirectional else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        keep_default_init(self.in_proj)
        keep_default_init(self.out_proj, out_scale)
        # inference on CPU through the fused numba path when it applies (_fused_cpu_applies);
        # False: always the general path (the fused path's reference in tests and benchmarks)
        self.fused_cpu = True

    def forward(
        self, hidden_states: torch.Tensor, state: BranchState | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, BranchState]:
        """``(B, L, D) → (B, L, D)``. With ``state`` / ``return_state`` (causal mixers only) the
        call continues a stream and returns the state to continue from."""
        # One GEMM straight into the (2E, B·L) layout, as mamba_ssm does: the conv and the scan then
        # read each channel contiguously, where in_proj(h).transpose(1, 2) would be copied first.
        batch, length, width = hidden_states.shape
        streaming = state is not None or return_state
        fused = not streaming and self.fused_cpu and _fused_cpu_applies(self, hidden_states)
        tokens = hidden_states.reshape(batch * length, width)
        # (2E, B·L); the fused path's GEMMs go through oneDNN, 2x MKL's speed on CPU (onednn.py)
        xz = onednn.matmul_nt(self.in_proj.weight, tokens) if fused else self.in_proj.weight @ tokens.T
        x, z = xz.view(-1, batch, length).transpose(0, 1).chunk(2, dim=1)  # (B, E, L) each
        if streaming:
            if self.backward_branch is not None:
                raise ValueError("a bidirectional mixer cannot stream: it needs the whole sequence")
            y, new_state = self.forward_branch(x, z, state, return_state=True)
            return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype)), new_state
        if fused:
            y = self._branches_fused_cpu(x, z)
            return onednn.batched_matmul_nt(y.transpose(1, 2), self.out_proj.weight)  # (B, L, D)
        y = self.forward_branch(x, z)
        if self.backward_branch is not None:
            y_back = self.backward_branch(x.flip(-1), z.flip(-1)).flip(-1)
            y = (y + y_back) / 2
        return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))

    @torch.no_grad()
    def _branches_fused_cpu(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Both branches' gated, averaged scan output ``(B, E, L)`` for inference on CPU.

        What the branches compute, step for step (x_proj, dt_proj, the scan), with three things
        fused away: the conv + SiLU is one numba pass (mkldnn's depthwise conv and a separate
        SiLU took 3x as long); the backward branch runs its conv anti-causally and its scan in
        reverse time instead of on flipped copies (three flips of ``(B, E, L)``); and its scan
        writes the mean of the two directions into the forward branch's output, in place. Its
        GEMMs, and in_proj's and out_proj's in :meth:`forward`, go through oneDNN (:mod:`.onednn`).
        Equal to the general path (tests/test_mixer.py).
        """
        z_np = z.numpy()
        y = scan_cpu.filled(tuple(x.shape))
        branches = [(self.forward_branch, False)]
        if self.backward_branch is not None:
            branches.append((self.backward_branch, True))
        for branch, reverse in branches:
            conv = branch.conv1d
            u = scan_cpu.conv_silu_arrays(
                x.numpy(),
                conv.weight.detach().squeeze(1).numpy(),
                cast(torch.Tensor, conv.bias).detach().numpy(),
                reverse,
            )
            r, n = branch.dt_rank, branch.d_state
            delta, B, C = torch.split(branch.x_proj(torch.from_numpy(u).transpose(1, 2)), [r, n, n], dim=-1)
            delta = onednn.batched_matmul_nt(branch.dt_proj.weight, delta)  # (B, E, L); bias added in the scan
            scan_cpu.scan_forward_arrays(
                u,
                delta.numpy(),
                np.ascontiguousarray((-torch.exp(branch.A_log.detach())).numpy()),
                scan_cpu.grouped_t(B.transpose(1, 2)),
                scan_cpu.grouped_t(C.transpose(1, 2)),
                branch.D.detach().numpy(),
                z_np,
                branch.dt_proj.bias.detach().numpy(),
                np.zeros((x.shape[0], x.shape[1], n), np.float32),
                y,
                softplus=True,
                reverse=reverse,
                average=reverse,  # the backward branch comes second: (forward + backward) / 2
            )
        return torch.from_numpy(y)
