"""The CPU scan as it was before issue 21 (commit 0de0431), kept only as benchmarks/scan.py's ``baseline``.

Not part of the package's dispatch: one thread per channel walking time, the N-wide state loop
vectorised over d_state with a horizontal sum per step. Original module docstring follows.

Fast selective scan on CPU: fused numba kernels for the forward and the reverse-time backward.

Same signature and semantics as :func:`storm_vlm.modeling.mamba.selective_scan_ref` (mamba_ssm's
``selective_scan_fn``), for the layouts the mixer uses: B and C of shape ``(B, N, L)`` or
``(B, G, N, L)``.

Why a compiled kernel: each scan step is tiny (N = 16 multiply-adds per channel), so PyTorch-level
scans are bound by per-op overhead or by materialising ``(B, E, L, N)`` tensors. Here one thread
owns a channel and walks time, keeping the state h ∈ R^N in registers: discretisation
(Ā = exp(Δ A), B̄ = Δ B), recurrence, C-readout, D skip and SiLU(z) gate are fused, and nothing of
size L·N is ever written. ``exp`` is computed as 2^k · p(f) with a degree-6 polynomial (relative
error < 2e-9, below fp32 rounding) so the N-wide inner loop vectorises.

Backward (as in mamba_ssm): the forward saves the state at the start of every chunk of ``CHUNK``
steps; the backward walks chunks from last to first, recomputes the chunk's states from its
checkpoint, then runs the adjoint recurrence backwards in time:

    ĥ_t = C_t g_t + Ā_{t+1} ĥ_{t+1}                  (ĥ = dL/dh, g = dL/dy)
    dΔ_t = Σ_n ĥ_t (A h_{t-1} Ā_t + B_t u_t),  dA += ĥ_t Δ_t Ā_t h_{t-1},  dB_t = ĥ_t Δ_t u_t,
    dC_t = g_t h_t,  du_t = g_t D + Σ_n ĥ_t Δ_t B_t.

Memory: O(B·E·L) for inputs and gradients + O(B·E·N·L/CHUNK) checkpoints.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CHUNK", "is_available", "numba_cache_dir", "selective_scan_cpu"]

CHUNK = 128


def _writable(path: Path) -> bool:
    """Whether ``path`` can be made and written: its nearest existing ancestor is a writable folder."""
    try:
        for p in (path, *path.parents):
            if p.exists():
                return p.is_dir() and os.access(p, os.W_OK | os.X_OK)
    except OSError:
        return False
    return False


def _private_temp_dir() -> str:
    """``<tmp>/storm-vlm-numba-<uid>``, if it is this user's own and nobody else can write it.

    numba's cache holds pickles it loads: a folder another user could have planted or can write
    is not used; then a fresh one (no cache kept between runs, but every command works).
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = Path(tempfile.gettempdir()) / f"storm-vlm-numba-{uid if uid is not None else 'user'}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and (uid is None or info.st_uid == uid) and not info.st_mode & 0o022:
            return str(path)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="storm-vlm-numba-")


def numba_cache_dir(
    package_dir: Path, environ: Mapping[str, str], writable: Callable[[Path], bool] = _writable
) -> str | None:
    """The ``NUMBA_CACHE_DIR`` to set before numba loads, or None to leave numba's own choice.

    ``@njit(cache=True)`` caches in ``__pycache__`` next to this module, else in the user's cache
    folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``numba``); where neither can be written
    (a system-wide install, a read-only or missing HOME) the decorators fail at import and every
    command with them. Then a private folder in the temporary directory is used.
    """
    if environ.get("NUMBA_CACHE_DIR"):
        return None
    if writable(package_dir / "__pycache__"):
        return None
    home = environ.get("HOME")
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path(home) / ".cache" if home else Path("~/.cache").expanduser())
    if writable(Path(cache_home) / "numba"):
        return None
    return _private_temp_dir()


_CACHE_DIR = numba_cache_dir(Path(__file__).resolve().parent, os.environ)
if _CACHE_DIR is not None:
    os.environ["NUMBA_CACHE_DIR"] = _CACHE_DIR  # read when numba's config loads (next import)

try:  # numba is a default dependency, but the scan must still work where it cannot be installed
    import numba
    from numba import njit, prange

    _config: Any = sys.modules["numba.core.config"]
    if _CACHE_DIR is not None and not _config.CACHE_DIR:
        _config.CACHE_DIR = _CACHE_DIR  # numba was imported before this module: its config is read
    _NUMBA = True
except ImportError:  # pragma: no cover - exercised only on platforms without numba
    _NUMBA = False


def is_available() -> bool:
    return _NUMBA


if _NUMBA:
    # Only value-safe fast-math flags: reassociation lets the N-wide reductions vectorise, while
    # infinities and NaNs keep their IEEE meaning (a softplus or sigmoid may overflow on purpose).
    _FAST = {"reassoc", "contract", "nsz", "arcp"}
    _P = [
        1.000000001809769,
        0.6931469872022893,
        0.24022979483577644,
        0.05548352731495515,
        0.009678469697209258,
        0.0012443091501569692,
        0.0002169062087531426,
    ]
    _C0, _C1, _C2, _C3, _C4, _C5, _C6 = (np.float32(c) for c in _P)
    _LOG2E = np.float32(1.4426950408889634)
    _LO, _HI = np.float32(-126.0), np.float32(127.0)

    @njit(inline="always", fastmath=_FAST)
    def _exp_into(dt, a, mant, bits):
        """mant[n] · 2^k[n] = exp(dt · a[n]); the caller reads 2^k through ``bits.view(float32)``."""
        for n in range(a.shape[0]):
            z = min(max(dt * a[n] * _LOG2E, _LO), _HI)
            fl = np.floor(z)
            f = z - fl
            mant[n] = _C0 + f * (_C1 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * _C6)))))
            bits[n] = (np.int32(fl) + np.int32(127)) << np.int32(23)

    @njit(inline="always")
    def _softplus(x):
        return x if x > 20.0 else math.log1p(math.exp(x))  # torch's threshold

    @njit(inline="always")
    def _sigmoid(x):
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    @njit(parallel=True, fastmath=_FAST, cache=True)
    def _scan_fwd(u, delta, A, Bt, Ct, Dv, z, bias, x0, out, last, ckpt, chunk, softplus, has_z):
        batch, dim, length = u.shape
        nstate = A.shape[1]
        per_group = dim // Bt.shape[1]
        for bd in prange(batch * dim):
            b, d = bd // dim, bd % dim
            g = d // per_group
            a = A[d].copy()
            x = x0[b, d].copy()
            mant = np.empty(nstate, np.float32)
            bits = np.empty(nstate, np.int32)
            scale = bits.view(np.float32)
            for t in range(length):
                if t % chunk == 0:
                    ckpt[b, d, t // chunk] = x
                raw = delta[b, d, t] + bias[d]
                dt = np.float32(_softplus(raw)) if softplus else raw
                ut = u[b, d, t]
                _exp_into(dt, a, mant, bits)
                du = dt * ut
                y = np.float32(0.0)
                for n in range(nstate):
                    x[n] = mant[n] * scale[n] * x[n] + du * Bt[b, g, t, n]
                    y += x[n] * Ct[b, g, t, n]
                o = y + Dv[d] * ut
                if has_z:
                    zz = z[b, d, t]
                    o = o * zz * np.float32(_sigmoid(zz))
                out[b, d, t] = o
            last[b, d] = x

    @njit(parallel=True, fastmath=_FAST, cache=True)
    def _scan_bwd(
        u, delta, A, Bt, Ct, Dv, z, bias, ckpt, gout, glast, chunk, softplus, has_z,
        du_out, ddelta_out, dz_out, dA_out, dD_out, dbias_out, dx0_out, dB_part, dC_part,
    ):  # fmt: skip
        batch, dim, length = u.shape
        nstate = A.shape[1]
        per_group = dim // Bt.shape[1]
        parts = dB_part.shape[0]
        for p in prange(parts):
            d_lo, d_hi = (p * dim) // parts, ((p + 1) * dim) // parts
            xs = np.empty((chunk, nstate), np.float32)  # states of the chunk being walked
            ms = np.empty((chunk, nstate), np.float32)  # and their Ā (mantissa · scale)
            mant = np.empty(nstate, np.float32)
            bits = np.empty(nstate, np.int32)
            scale = bits.view(np.float32)
            hx = np.empty(nstate, np.float32)
            for d in range(d_lo, d_hi):
                g = d // per_group
                a = A[d].copy()
                dA = np.zeros(nstate, np.float32)
                dD = np.float32(0.0)
                dbias = np.float32(0.0)
                for b in range(batch):
                    hx[:] = glast[b, d]
                    for c in range((length + chunk - 1) // chunk - 1, -1, -1):
                        s = c * chunk
                        e = min(length, s + chunk)
                        x = ckpt[b, d, c].copy()
                        for t in range(s, e):  # recompute the chunk's states
                            raw = delta[b, d, t] + bias[d]
                            dt = np.float32(_softplus(raw)) if softplus else raw
                            _exp_into(dt, a, mant, bits)
                            du = dt * u[b, d, t]
                            for n in range(nstate):
                                ms[t - s, n] = mant[n] * scale[n]
                                x[n] = ms[t - s, n] * x[n] + du * Bt[b, g, t, n]
                                xs[t - s, n] = x[n]
                        for t in range(e - 1, s - 1, -1):  # adjoint recurrence, backwards in time
                            i = t - s
                            raw = delta[b, d, t] + bias[d]
                            dt = np.float32(_softplus(raw)) if softplus else raw
                            ut = u[b, d, t]
                            go = gout[b, d, t]
                            if has_z:
                                zz = z[b, d, t]
                                sg = np.float32(_sigmoid(zz))
                                y = np.float32(0.0)
                                for n in range(nstate):
                                    y += xs[i, n] * Ct[b, g, t, n]
                                o = y + Dv[d] * ut
                                dz_out[b, d, t] = go * o * sg * (1 + zz * (1 - sg))
                                go = go * zz * sg
                            dD += go * ut
                            dut = go * Dv[d]
                            ddt = np.float32(0.0)
                            for n in range(nstate):
                                dC_part[p, b, g, t, n] += go * xs[i, n]
                                h = hx[n] + go * Ct[b, g, t, n]  # dL/dh_t
                                prev = xs[i - 1, n] if i > 0 else ckpt[b, d, c, n]
                                ddt += h * (a[n] * ms[i, n] * prev + Bt[b, g, t, n] * ut)
                                dA[n] += h * dt * ms[i, n] * prev
                                dB_part[p, b, g, t, n] += h * dt * ut
                                dut += h * dt * Bt[b, g, t, n]
                                hx[n] = h * ms[i, n]  # carried to t - 1
                            if softplus and raw <= 20.0:
                                ddt = ddt * np.float32(_sigmoid(raw))
                            ddelta_out[b, d, t] = ddt
                            dbias += ddt
                            du_out[b, d, t] = dut
                    dx0_out[b, d] = hx
                dA_out[d] = dA
                dD_out[d] = dD
                dbias_out[d] = dbias


def _f32(t: torch.Tensor | None, shape: tuple[int, ...] = ()) -> np.ndarray:
    """A contiguous float32 numpy view (or zeros of ``shape`` for a missing tensor)."""
    if t is None:
        return np.zeros(shape, np.float32)
    return t.detach().to(torch.float32).contiguous().numpy()


def _grouped_t(M: torch.Tensor) -> np.ndarray:
    """``(B, N, L)`` or ``(B, G, N, L)`` → ``(B, G, L, N)`` float32, so a step reads N contiguous values."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return np.ascontiguousarray(M.detach().to(torch.float32).transpose(2, 3).numpy())


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        batch, dim, length = u.shape
        nstate = A.shape[1]
        arrays = (
            _f32(u),
            _f32(delta),
            _f32(A),
            _grouped_t(B),
            _grouped_t(C),
            _f32(D, (dim,)),
            _f32(z, (1, 1, 1)),
            _f32(delta_bias, (dim,)),
        )
        x0 = _f32(initial_state, (batch, dim, nstate))
        out = np.empty((batch, dim, length), np.float32)
        last = np.empty((batch, dim, nstate), np.float32)
        ckpt = np.empty((batch, dim, max(1, -(-length // CHUNK)), nstate), np.float32)
        if length:
            _scan_fwd(*arrays, x0, out, last, ckpt, CHUNK, bool(delta_softplus), z is not None)
        else:
            last[:] = x0
        ctx.arrays, ctx.ckpt, ctx.flags = arrays, ckpt, (bool(delta_softplus), z is not None)
        ctx.b_dim, ctx.c_dim = B.dim(), C.dim()
        ctx.has = (D is not None, delta_bias is not None, initial_state is not None)
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype, z.dtype if z is not None else None)
        ctx.set_materialize_grads(False)
        out_t = torch.from_numpy(out).to(u.dtype)
        return out_t, torch.from_numpy(last)

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, Bt, Ct, Dv, z, bias = ctx.arrays
        batch, dim, length = u.shape
        nstate = A.shape[1]
        softplus, has_z = ctx.flags
        gout = _f32(grad_out, u.shape)
        glast = _f32(grad_last, (batch, dim, nstate))
        parts = max(1, min(numba.get_num_threads(), dim))
        du, ddelta = np.zeros_like(u), np.zeros_like(u)
        dz = np.zeros_like(u) if has_z else np.zeros((1, 1, 1), np.float32)
        dA, dD, dbias = np.zeros_like(A), np.zeros(dim, np.float32), np.zeros(dim, np.float32)
        dx0 = np.zeros((batch, dim, nstate), np.float32)
        dB_part = np.zeros((parts, *Bt.shape), np.float32)
        dC_part = np.zeros((parts, *Ct.shape), np.float32)
        if length:
            _scan_bwd(
                u, delta, A, Bt, Ct, Dv, z, bias, ctx.ckpt, gout, glast, CHUNK, softplus, has_z,
                du, ddelta, dz, dA, dD, dbias, dx0, dB_part, dC_part,
            )  # fmt: skip
        else:
            dx0[:] = glast
        u_t, delta_t, A_t, B_t, C_t, z_t = ctx.dtypes

        def grouped_back(part: np.ndarray, ndim: int, dtype: torch.dtype) -> torch.Tensor:
            g = torch.from_numpy(part.sum(0)).transpose(2, 3)  # (B, G, N, L)
            return (g.squeeze(1) if ndim == 3 else g).contiguous().to(dtype)

        has_D, has_bias, has_x0 = ctx.has
        return (
            torch.from_numpy(du).to(u_t),
            torch.from_numpy(ddelta).to(delta_t),
            torch.from_numpy(dA).to(A_t),
            grouped_back(dB_part, ctx.b_dim, B_t),
            grouped_back(dC_part, ctx.c_dim, C_t),
            torch.from_numpy(dD) if has_D else None,
            torch.from_numpy(dz).to(z_t) if has_z else None,
            torch.from_numpy(dbias) if has_bias else None,
            torch.from_numpy(dx0) if has_x0 else None,
            None,
        )


def selective_scan_cpu(
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
    """Fused CPU selective scan; see the module docstring. Requires numba and B, C with 3-4 dims."""
    if not _NUMBA:
        raise RuntimeError("numba is not installed: the fast CPU scan is unavailable")
    if B.dim() < 3 or C.dim() < 3:
        raise ValueError("the fast CPU scan needs input-dependent B and C of shape (B, N, L) or (B, G, N, L)")
    out, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out
