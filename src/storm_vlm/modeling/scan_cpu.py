"""Fast selective scan on CPU: fused numba kernels for the forward and the reverse-time backward.

Same signature and semantics as :func:`storm_vlm.modeling.mamba.selective_scan_ref` (mamba_ssm's
``selective_scan_fn``), for the layouts the mixer uses: B and C of shape ``(B, N, L)`` or
``(B, G, N, L)``.

Why a compiled kernel: each scan step is tiny (N = 16 multiply-adds per channel), so PyTorch-level
scans are bound by per-op overhead or by materialising ``(B, E, L, N)`` tensors. Here one job owns
a block of ``LANES`` = 16 channels (one AVX-512 register of fp32) of one batch row and walks time;
the lanes are the SIMD axis, so B_t and C_t (shared by the block) are broadcasts and the readout
y = C_t h_t needs no horizontal sum (issue 21: 3x the earlier kernel, which vectorised over the 16
states and summed across them every step). Discretisation (Ā = exp(Δ A), B̄ = Δ B), recurrence,
C-readout, D skip and SiLU(z) gate are fused, and nothing of size L·N is written. ``exp`` is
2^k · p(f) with a degree-6 polynomial (relative error < 2e-9, below fp32 rounding), softplus and
sigmoid are built on it, all branch-free so every lane loop vectorises. Inputs are copied in tiles
of ``TILE`` steps into lane-major buffers (long rows: the transposing copy stays cheap), in either
memory order of ``(B, E, L)``: time- or channel-contiguous.

Backward (as in mamba_ssm): the forward saves the state at the start of every chunk of ``CHUNK``
steps; the backward walks chunks from last to first, recomputes the chunk's states from its
checkpoint, then runs the adjoint recurrence backwards in time:

    ĥ_t = C_t g_t + Ā_{t+1} ĥ_{t+1}                  (ĥ = dL/dh, g = dL/dy)
    dΔ_t = Σ_n ĥ_t (A h_{t-1} Ā_t + B_t u_t),  dA += ĥ_t Δ_t Ā_t h_{t-1},  dB_t = ĥ_t Δ_t u_t,
    dC_t = g_t h_t,  du_t = g_t D + Σ_n ĥ_t Δ_t B_t.

Memory: O(B·E·L) for inputs and gradients + O(B·E·N·L/CHUNK) checkpoints.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHUNK",
    "conv_silu_arrays",
    "grouped_t",
    "is_available",
    "numba_cache_dir",
    "scan_forward_arrays",
    "selective_scan_cpu",
]

CHUNK = 128  # steps per state checkpoint (and per tile of the backward)
TILE = 512  # steps per tile of the forward (a multiple of CHUNK): long rows keep the transposing copies cheap
LANES = 16  # channels per SIMD block: one AVX-512 register of fp32


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
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba import njit, prange, types
    from numba.extending import intrinsic

    _config: Any = sys.modules["numba.core.config"]
    if _CACHE_DIR is not None and not _config.CACHE_DIR:
        _config.CACHE_DIR = _CACHE_DIR  # numba was imported before this module: its config is read
    _NUMBA = True
except ImportError:  # pragma: no cover - exercised only on platforms without numba
    _NUMBA = False


def is_available() -> bool:
    return _NUMBA


if _NUMBA:
    # Only value-safe fast-math flags: reassociation lets the reductions vectorise, while
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
    _ZERO, _ONE, _TWO, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
    _L3, _L5, _L7, _L9, _L11, _L13 = (np.float32(2.0 / k) for k in (3, 5, 7, 9, 11, 13))

    @intrinsic
    def _as_f32(typingctx, bits):
        """Reinterpret int32 bits as a float32 (a scalar bitcast, which LLVM vectorises)."""
        sig = types.float32(types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return sig, codegen

    @njit(inline="always", fastmath=_FAST)
    def _exp2(z):
        """2^z for float32 z, as 2^⌊z⌋ · p(z - ⌊z⌋) with a degree-6 polynomial (rel. error < 2e-9);
        branch-free so that loops over lanes vectorise. z is clamped to [-126, 127]."""
        z = min(max(z, _LO), _HI)
        fl = np.floor(z)
        f = z - fl
        p = _C0 + f * (_C1 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * _C6)))))
        return p * _as_f32(np.int32((np.int32(fl) + np.int32(127)) << np.int32(23)))

    @njit(inline="always", fastmath=_FAST)
    def _softplus(x):
        """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), log1p(y) = 2 atanh(y / (2 + y)) as an odd series
        in s ≤ 1/3 (truncation < 5e-9): within fp32 rounding of torch's softplus, and vectorisable."""
        y = _exp2(-abs(x) * _LOG2E)
        s = y / (_TWO + y)
        s2 = s * s
        lg = s * (_TWO + s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * (_L9 + s2 * (_L11 + s2 * _L13))))))
        return max(x, _ZERO) + lg

    @njit(inline="always", fastmath=_FAST)
    def _sigmoid(x):
        return _ONE / (_ONE + _exp2(-x * _LOG2E))

    @njit(inline="always")
    def _load_tile(src, b, d0, w, base, step, s0, tl, buf):
        """buf[i, j] = src[b, d0 + j, base + step · (s0 + i)] for i < tl, j < w, walking memory in order."""
        if src.strides[2] <= src.strides[1]:  # time is the contiguous axis: (B, E, L)
            for j in range(w):
                for i in range(tl):
                    buf[i, j] = src[b, d0 + j, base + step * (s0 + i)]
        else:  # channels are: (B, L, E) seen as (B, E, L)
            for i in range(tl):
                for j in range(w):
                    buf[i, j] = src[b, d0 + j, base + step * (s0 + i)]

    @njit(inline="always")
    def _store_tile(dst, b, d0, w, base, step, s0, tl, buf, average):
        """The inverse of :func:`_load_tile`; with ``average`` the mean of what is there and buf."""
        if dst.strides[2] <= dst.strides[1]:
            for j in range(w):
                for i in range(tl):
                    t = base + step * (s0 + i)
                    dst[b, d0 + j, t] = (dst[b, d0 + j, t] + buf[i, j]) * _HALF if average else buf[i, j]
        else:
            for i in range(tl):
                for j in range(w):
                    t = base + step * (s0 + i)
                    dst[b, d0 + j, t] = (dst[b, d0 + j, t] + buf[i, j]) * _HALF if average else buf[i, j]

    @njit(parallel=True, fastmath=_FAST, cache=True)
    def _scan_fwd(u, delta, A, Bt, Ct, Dv, z, bias, x0, out, last, ckpt, blocks, chunk, softplus, has_z, rev,
                  average):  # fmt: skip
        """One job = one batch row × one block of ≤ LANES channels of one group; the lanes are the
        SIMD axis (B_t, C_t are shared by the block: broadcasts, no horizontal sums)."""
        batch, dim, length = u.shape
        nstate = A.shape[1]
        per_group = dim // Bt.shape[1]
        nblocks = blocks.shape[0]
        base, step = (length - 1, -1) if rev else (0, 1)
        for job in prange(batch * nblocks):
            b = job // nblocks
            d0, w = blocks[job % nblocks, 0], blocks[job % nblocks, 1]
            g = d0 // per_group
            a2 = np.zeros((nstate, LANES), np.float32)  # A · log2(e)
            h = np.zeros((nstate, LANES), np.float32)
            dv = np.zeros(LANES, np.float32)
            bv = np.zeros(LANES, np.float32)
            for j in range(w):
                dv[j], bv[j] = Dv[d0 + j], bias[d0 + j]
                for n in range(nstate):
                    a2[n, j] = A[d0 + j, n] * _LOG2E
                    h[n, j] = x0[b, d0 + j, n]
            ub = np.zeros((TILE, LANES), np.float32)
            db = np.zeros((TILE, LANES), np.float32)
            zb = np.zeros((TILE, LANES), np.float32)
            ob = np.zeros((TILE, LANES), np.float32)
            dtv = np.zeros(LANES, np.float32)
            duv = np.zeros(LANES, np.float32)
            y = np.zeros(LANES, np.float32)
            for s0 in range(0, length, TILE):
                tl = min(TILE, length - s0)
                _load_tile(u, b, d0, w, base, step, s0, tl, ub)
                _load_tile(delta, b, d0, w, base, step, s0, tl, db)
                if has_z:
                    _load_tile(z, b, d0, w, base, step, s0, tl, zb)
                for i in range(tl):
                    t = base + step * (s0 + i)
                    if (s0 + i) % chunk == 0:
                        c = (s0 + i) // chunk
                        for n in range(nstate):
                            for j in range(w):
                                ckpt[b, c, n, d0 + j] = h[n, j]
                    for j in range(LANES):
                        raw = db[i, j] + bv[j]
                        dt = _softplus(raw) if softplus else raw
                        dtv[j] = dt
                        duv[j] = dt * ub[i, j]
                        y[j] = _ZERO
                    for n in range(nstate):
                        bn = Bt[b, g, t, n]
                        cn = Ct[b, g, t, n]
                        for j in range(LANES):
                            hv = _exp2(dtv[j] * a2[n, j]) * h[n, j] + duv[j] * bn
                            h[n, j] = hv
                            y[j] += hv * cn
                    for j in range(LANES):
                        o = y[j] + dv[j] * ub[i, j]
                        if has_z:
                            zz = zb[i, j]
                            o = o * zz * _sigmoid(zz)
                        ob[i, j] = o
                _store_tile(out, b, d0, w, base, step, s0, tl, ob, average)
            for j in range(w):
                for n in range(nstate):
                    last[b, d0 + j, n] = h[n, j]

    @njit(parallel=True, fastmath=_FAST, cache=True)
    def _conv_silu(x, weight, bias, out, reverse):
        """Depthwise conv + SiLU per channel row of ``(B, E, L)`` (time contiguous):
        out[t] = SiLU(bias + Σ_k w[k] · x[t - (W-1) + k]), zeros before the start; with ``reverse``
        the anti-causal mirror x[t + (W-1) - k], zeros after the end (the causal conv of the
        flipped row, flipped back). One pass over the row per tap, time innermost: it vectorises."""
        batch, dim, length = x.shape
        width = weight.shape[1]
        for job in prange(batch * dim):
            b, d = job // dim, job % dim
            row, res = x[b, d], out[b, d]
            acc = np.empty(length, np.float32)  # its own buffer: provably not `row`, so no alias checks
            for t in range(length):
                acc[t] = bias[d]
            for k in range(width):
                wk = weight[d, k]
                shift = width - 1 - k  # tap k reads `shift` steps back (reverse: ahead)
                if reverse:
                    for t in range(length - shift):
                        acc[t] += wk * row[t + shift]
                else:
                    for t in range(shift, length):
                        acc[t] += wk * row[t - shift]
            for t in range(length):
                res[t] = acc[t] * _sigmoid(acc[t])

    @njit(parallel=True, fastmath=_FAST, cache=True)
    def _scan_bwd(
        u, delta, A, Bt, Ct, Dv, z, bias, ckpt, gout, glast, blocks, chunk, softplus, has_z, rev,
        du_out, ddelta_out, dz_out, dA_out, dD_out, dbias_out, dx0_out, dB_part, dC_part,
    ):  # fmt: skip
        """Thread p owns blocks [p·K/P, (p+1)·K/P) over every batch row (dA, dD, dbias are its own)
        and its slice p of the dB, dC partial sums (lane sums per step: one horizontal add per state)."""
        batch, dim, length = u.shape
        nstate = A.shape[1]
        per_group = dim // Bt.shape[1]
        nblocks = blocks.shape[0]
        parts = dB_part.shape[0]
        base, step = (length - 1, -1) if rev else (0, 1)
        for p in prange(parts):
            hs = np.zeros((chunk + 1, nstate, LANES), np.float32)  # hs[i + 1]: the state after step i
            es = np.zeros((chunk, nstate, LANES), np.float32)  # Ā of step i
            yb = np.zeros((chunk, LANES), np.float32)  # C_t h_t of step i
            hx = np.zeros((nstate, LANES), np.float32)  # dL/dh carried backwards in time
            a = np.zeros((nstate, LANES), np.float32)
            a2 = np.zeros((nstate, LANES), np.float32)
            dacc = np.zeros((nstate, LANES), np.float32)
            tiles = np.zeros((8, TILE, LANES), np.float32)
            ub, db, zb, gb, dtb, dub, ddb, dzb = tiles[0], tiles[1], tiles[2], tiles[3], tiles[4], tiles[5], \
                tiles[6], tiles[7]  # fmt: skip
            vec = np.zeros((9, LANES), np.float32)
            dv, bv, dD, dbias, gov, dut, ddt, dtu, y = vec[0], vec[1], vec[2], vec[3], vec[4], vec[5], vec[6], \
                vec[7], vec[8]  # fmt: skip
            for k in range(p * nblocks // parts, (p + 1) * nblocks // parts):
                d0, w = blocks[k, 0], blocks[k, 1]
                g = d0 // per_group
                tiles[:] = 0  # padding lanes must add nothing to the lane sums
                vec[:] = 0
                a[:] = 0
                a2[:] = 0
                dacc[:] = 0
                hs[0] = 0
                for j in range(w):
                    dv[j], bv[j] = Dv[d0 + j], bias[d0 + j]
                    for n in range(nstate):
                        a[n, j] = A[d0 + j, n]
                        a2[n, j] = A[d0 + j, n] * _LOG2E
                for b in range(batch):
                    hx[:] = 0
                    for j in range(w):
                        for n in range(nstate):
                            hx[n, j] = glast[b, d0 + j, n]
                    for s0 in range((length - 1) // TILE * TILE, -1, -TILE):
                        tl = min(TILE, length - s0)
                        _load_tile(u, b, d0, w, base, step, s0, tl, ub)
                        _load_tile(delta, b, d0, w, base, step, s0, tl, db)
                        _load_tile(gout, b, d0, w, base, step, s0, tl, gb)
                        if has_z:
                            _load_tile(z, b, d0, w, base, step, s0, tl, zb)
                        for c in range((s0 + tl - 1) // chunk, s0 // chunk - 1, -1):
                            cs = c * chunk
                            cl = min(chunk, length - cs)
                            o0 = cs - s0
                            for n in range(nstate):
                                for j in range(w):
                                    hs[0, n, j] = ckpt[b, c, n, d0 + j]
                            for i in range(cl):  # recompute the chunk's states, Ā and C h from its checkpoint
                                t = base + step * (cs + i)
                                for j in range(LANES):
                                    raw = db[o0 + i, j] + bv[j]
                                    dt = _softplus(raw) if softplus else raw
                                    dtb[o0 + i, j] = dt
                                    dtu[j] = dt * ub[o0 + i, j]
                                    y[j] = _ZERO
                                for n in range(nstate):
                                    bn = Bt[b, g, t, n]
                                    cn = Ct[b, g, t, n]
                                    for j in range(LANES):
                                        e = _exp2(dtb[o0 + i, j] * a2[n, j])
                                        es[i, n, j] = e
                                        hv = e * hs[i, n, j] + dtu[j] * bn
                                        hs[i + 1, n, j] = hv
                                        y[j] += hv * cn
                                for j in range(LANES):
                                    yb[i, j] = y[j]
                            for i in range(cl - 1, -1, -1):  # adjoint recurrence, backwards in time
                                t = base + step * (cs + i)
                                for j in range(LANES):
                                    ut = ub[o0 + i, j]
                                    go = gb[o0 + i, j]
                                    if has_z:
                                        zz = zb[o0 + i, j]
                                        sg = _sigmoid(zz)
                                        o = yb[i, j] + dv[j] * ut
                                        dzb[o0 + i, j] = go * o * sg * (_ONE + zz * (_ONE - sg))
                                        go = go * zz * sg
                                    gov[j] = go
                                    dD[j] += go * ut
                                    dut[j] = go * dv[j]
                                    ddt[j] = _ZERO
                                    dtu[j] = dtb[o0 + i, j] * ut
                                for n in range(nstate):
                                    bn = Bt[b, g, t, n]
                                    cn = Ct[b, g, t, n]
                                    sb = _ZERO
                                    sc = _ZERO
                                    for j in range(LANES):
                                        hv = hx[n, j] + gov[j] * cn  # dL/dh_t
                                        e = es[i, n, j]
                                        q = hv * e * hs[i, n, j]
                                        ddt[j] += a[n, j] * q + hv * bn * ub[o0 + i, j]
                                        dacc[n, j] += dtb[o0 + i, j] * q
                                        dut[j] += hv * dtb[o0 + i, j] * bn
                                        sb += hv * dtu[j]
                                        sc += gov[j] * hs[i + 1, n, j]
                                        hx[n, j] = hv * e  # carried to t - 1
                                    dB_part[p, b, g, t, n] += sb
                                    dC_part[p, b, g, t, n] += sc
                                for j in range(LANES):
                                    dd = ddt[j]
                                    if softplus:
                                        dd = dd * _sigmoid(db[o0 + i, j] + bv[j])
                                    ddb[o0 + i, j] = dd
                                    dbias[j] += dd
                                    dub[o0 + i, j] = dut[j]
                        _store_tile(du_out, b, d0, w, base, step, s0, tl, dub, False)
                        _store_tile(ddelta_out, b, d0, w, base, step, s0, tl, ddb, False)
                        if has_z:
                            _store_tile(dz_out, b, d0, w, base, step, s0, tl, dzb, False)
                    for j in range(w):
                        for n in range(nstate):
                            dx0_out[b, d0 + j, n] = hx[n, j]
                for j in range(w):
                    dD_out[d0 + j] = dD[j]
                    dbias_out[d0 + j] = dbias[j]
                    for n in range(nstate):
                        dA_out[d0 + j, n] = dacc[n, j]


def _f32(t: torch.Tensor | None, shape: tuple[int, ...] = ()) -> np.ndarray:
    """A float32 numpy view, strides kept (zeros of ``shape`` for a missing tensor).

    The kernels read ``(B, E, L)`` arrays in either memory order (time- or channel-contiguous),
    so a channels-last tensor seen through ``transpose(1, 2)`` is not copied.
    """
    if t is None:
        return np.zeros(shape, np.float32)
    t = t.detach().to(torch.float32)
    if t.stride(-1) != 1 and t.stride(-2) != 1:
        t = t.contiguous()
    return t.numpy()


def filled(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of zeros whose pages this thread has already touched.

    Large arrays are fresh ``mmap`` pages; their first-touch faults, taken inside a parallel
    kernel by both threads at once, cost that kernel about as much as the scan itself (measured:
    forward at L = 16384, E = 512 on 2 threads 0.079 s into a fresh output, 0.041 s into a
    touched one). Filling them here first costs ~4 ms per 32 MB.
    """
    out = np.empty(shape, np.float32)
    out.fill(0.0)
    return out


def grouped_t(M: torch.Tensor) -> np.ndarray:
    """``(B, N, L)`` or ``(B, G, N, L)`` → ``(B, G, L, N)`` float32, so a step reads N contiguous values."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return np.ascontiguousarray(M.detach().to(torch.float32).transpose(2, 3).numpy())


def _blocks(dim: int, groups: int) -> np.ndarray:
    """``(d0, width)`` of the channel blocks: ``LANES`` wide, never across two groups of B/C."""
    if dim % groups:
        raise ValueError(f"d_inner={dim} is not divisible by the {groups} groups of B/C")
    per = dim // groups
    rows = [(g * per + s, min(LANES, per - s)) for g in range(groups) for s in range(0, per, LANES)]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def scan_forward_arrays(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    Bt: np.ndarray,
    Ct: np.ndarray,
    D: np.ndarray,
    z: np.ndarray | None,
    bias: np.ndarray,
    x0: np.ndarray,
    out: np.ndarray,
    softplus: bool,
    reverse: bool = False,
    average: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the forward kernel on float32 arrays; returns (last state, checkpoints).

    ``u``, ``delta``, ``z`` and ``out`` are ``(B, E, L)`` in either memory order, ``Bt``/``Ct``
    ``(B, G, L, N)``. ``reverse`` scans from the last step to the first (the backward direction of
    a bidirectional mixer, without flipped copies); ``average`` writes ``(out + y) / 2`` (the mean
    of the two directions, in place).
    """
    batch, dim, length = u.shape
    nstate = A.shape[1]
    last = np.empty((batch, dim, nstate), np.float32)
    ckpt = filled((batch, max(1, -(-length // CHUNK)), nstate, dim))
    if not length:
        last[:] = x0
        return last, ckpt
    blocks = _blocks(dim, Bt.shape[1])
    zz = z if z is not None else np.zeros((1, 1, 1), np.float32)
    _scan_fwd(u, delta, A, Bt, Ct, D, zz, bias, x0, out, last, ckpt, blocks, CHUNK, softplus, z is not None,
              reverse, average)  # fmt: skip
    return last, ckpt


def conv_silu_arrays(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, reverse: bool = False) -> np.ndarray:
    """SiLU(depthwise conv) of ``x`` ``(B, E, L)`` with ``weight`` ``(E, W)``, ``bias`` ``(E,)``: causal
    (:func:`storm_vlm.modeling.mamba.causal_conv1d` with zero history), or with ``reverse`` its
    mirror, what the backward branch computes on the flipped sequence, without flipping."""
    out = filled(x.shape)
    _conv_silu(x, np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias, np.float32), out, reverse)
    return out


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        batch, dim, length = u.shape
        nstate = A.shape[1]
        arrays = (
            _f32(u),
            _f32(delta),
            np.ascontiguousarray(_f32(A)),
            grouped_t(B),
            grouped_t(C),
            _f32(D, (dim,)),
            _f32(z, (1, 1, 1)),
            _f32(delta_bias, (dim,)),
        )
        x0 = np.ascontiguousarray(_f32(initial_state, (batch, dim, nstate)))
        out = filled((batch, dim, length))
        last, ckpt = scan_forward_arrays(*arrays[:6], arrays[6] if z is not None else None, arrays[7], x0, out,
                                         bool(delta_softplus))  # fmt: skip
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
        gout = _f32(grad_out, (1, 1, 1)) if grad_out is not None else filled((batch, dim, length))
        glast = np.ascontiguousarray(_f32(grad_last, (batch, dim, nstate)))
        blocks = _blocks(dim, Bt.shape[1])
        parts = max(1, min(numba.get_num_threads(), len(blocks)))
        du, ddelta = filled((batch, dim, length)), filled((batch, dim, length))
        dz = filled((batch, dim, length)) if has_z else np.zeros((1, 1, 1), np.float32)
        dA, dD, dbias = np.zeros_like(A), np.zeros(dim, np.float32), np.zeros(dim, np.float32)
        dx0 = np.zeros((batch, dim, nstate), np.float32)
        dB_part = filled((parts, *Bt.shape))
        dC_part = filled((parts, *Ct.shape))
        if length:
            _scan_bwd(
                u, delta, A, Bt, Ct, Dv, z, bias, ctx.ckpt, gout, glast, blocks, CHUNK, softplus, has_z, False,
                du, ddelta, dz, dA, dD, dbias, dx0, dB_part, dC_part,
            )  # fmt: skip
        else:
            dx0[:] = glast
        u_t, delta_t, A_t, B_t, C_t, z_t = ctx.dtypes

        def grouped_back(part: np.ndarray, ndim: int, dtype: torch.dtype) -> torch.Tensor:
            g = torch.from_numpy(part.sum(0) if len(part) > 1 else part[0]).transpose(2, 3)  # (B, G, N, L)
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
