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

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

__all__ = ["MambaMixer", "SSMBranch", "selective_scan_fn", "selective_scan_ref"]


def _per_step(M: torch.Tensor, batch: int, dim: int) -> list[torch.Tensor] | None:
    """Split a B or C argument into per-step ``(B, E, N)``-broadcastable tensors.

    mamba_ssm accepts three layouts: ``(E, N)`` time-invariant, ``(B, N, L)`` shared by all
    channels, and ``(B, G, N, L)`` shared within G channel groups.
    Returns ``None`` for the time-invariant layout (the caller broadcasts it directly).
    """
    if M.dim() == 2:
        return None
    if M.dim() == 3:  # (B, N, L) → L x (B, 1, N)
        return [m.unsqueeze(1) for m in M.float().unbind(-1)]
    if M.dim() == 4:  # (B, G, N, L) → L x (B, E, N)
        groups = M.shape[1]
        if dim % groups:
            raise ValueError(f"d_inner={dim} is not divisible by the {groups} groups of B/C")
        return [m.repeat_interleave(dim // groups, dim=1) for m in M.float().unbind(-1)]
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
        ``return_last_state``. Everything is computed in fp32, like the CUDA kernel.

    The loop iterates with ``unbind`` so that autograd keeps one small node per step; indexing
    ``x[:, t]`` instead makes the backward quadratic in L (each step's gradient is a full-size
    zero tensor with one slice filled).
    """
    if A.is_complex():
        raise NotImplementedError("complex A is not supported (Mamba-1 real-valued S4D only)")
    dtype_in = u.dtype
    batch, dim, _length = u.shape
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.float()

    if initial_state is None:
        x = u.new_zeros(batch, dim, A.shape[1])
    else:
        x = initial_state.float()
    Bs, Cs = _per_step(B, batch, dim), _per_step(C, batch, dim)
    B_const = B.float().unsqueeze(0) if Bs is None else None  # (1, E, N)
    C_const = C.float().unsqueeze(0) if Cs is None else None

    ys = []
    for t, (u_t, delta_t) in enumerate(zip(u.unbind(-1), delta.unbind(-1))):
        B_t = B_const if Bs is None else Bs[t]
        C_t = C_const if Cs is None else Cs[t]
        dA = torch.exp(delta_t.unsqueeze(-1) * A)  # Ā_t (B, E, N)
        x = dA * x + (delta_t * u_t).unsqueeze(-1) * B_t  # h_t = Ā_t h_{t-1} + B̄_t x_t
        ys.append((x * C_t).sum(-1))  # y_t = C_t h_t   (B, E)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)

    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


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
    """The selective scan the model calls: the one place that picks an implementation.

    Today this is the reference for every device; fast CPU and GPU kernels plug in here and are
    tested for equality against :func:`selective_scan_ref`.
    """
    return selective_scan_ref(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
        initial_state=initial_state,
    )


class SSMBranch(nn.Module):
    """One scan direction: causal depthwise conv1d, x_proj → (Δ, B, C), dt_proj, A_log, D.

    Weight names and initialisation follow mamba_ssm / transformers' ``MambaMixer`` so that
    checkpoints map one to one (S4D-real A = -(1..N), D = 1, Δ initialised log-uniformly in
    [dt_min, dt_max] through the inverse softplus of the dt_proj bias).
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

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: ``(B, E, L)`` → gated scan output ``(B, E, L)``."""
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])  # causal depthwise conv
        delta, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ delta.transpose(1, 2)  # (B, E, L); bias added in the scan
        A = -torch.exp(self.A_log.float())  # (E, N)
        return selective_scan_fn(
            x,
            delta,
            A,
            B.transpose(1, 2),  # (B, N, L)
            C.transpose(1, 2),
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )


class MambaMixer(nn.Module):
    """Mamba-1 mixer; with ``bidirectional=True`` the Vision-Mamba "v2" bidirectional variant.

    The paper states only "a bidirectional scanning module" (§3.2). Our choice (DESIGN.md §1):
    in_proj and out_proj are shared; each direction has its own conv1d, x_proj, dt_proj, A_log
    and D; the backward branch scans the flipped sequence; the two gated outputs are averaged
    before out_proj. Averaging after the SiLU(z) gate equals gating the average, since z is
    shared. With ``bidirectional=False`` this is exactly transformers' ``MambaMixer``.

    Shapes: ``(B, L, D) → (B, L, D)`` with d_inner E = expand · D.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.bidirectional = bidirectional
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.forward_branch = SSMBranch(d_inner, d_state, d_conv, dt_rank)
        self.backward_branch = SSMBranch(d_inner, d_state, d_conv, dt_rank) if bidirectional else None
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        y = self.forward_branch(x, z)
        if self.backward_branch is not None:
            y_back = self.backward_branch(x.flip(-1), z.flip(-1)).flip(-1)
            y = (y + y_back) / 2
        return self.out_proj(y.transpose(1, 2).to(hidden_states.dtype))
