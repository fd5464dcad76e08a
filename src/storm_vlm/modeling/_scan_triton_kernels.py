"""Triton kernels of the selective scan (see :mod:`storm_vlm.modeling.scan_triton`).

Kept apart so that importing storm_vlm never imports triton: this module loads on first use.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _affine(a1, b1, a2, b2):
    # composition of h -> a1 h + b1 then h -> a2 h + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _dt(raw, SOFTPLUS: tl.constexpr):
    """Δ = softplus(raw) (torch's threshold 20); log1p through log(u)·e/(u − 1), exact to fp32."""
    if SOFTPLUS:
        e = tl.exp(tl.minimum(raw, 20.0))
        u = 1.0 + e
        log1p = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))
        return tl.where(raw > 20.0, raw, log1p)
    return raw


@triton.jit
def _fwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, x0_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    L, DIM, NSTATE, CH_PER_GROUP, NCHUNK,
    s_ub, s_ud, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_X0: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_tt = tl.arange(0, BLOCK_T)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // CH_PER_GROUP  # a block never spans two groups (see launcher)
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = pid_b * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :]
    if HAS_X0:
        h = tl.load(x0_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    row = pid_b * s_ub + offs_d[:, None] * s_ud  # (BLOCK_D, 1)
    first = (offs_tt == 0)[None, :, None]
    last_col = (offs_tt == BLOCK_T - 1)[None, :, None]
    for c in range(0, NCHUNK):
        offs_t = c * BLOCK_T + offs_tt
        mask_t = offs_t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        ckpt_off = ((pid_b * DIM + offs_d[:, None]) * NCHUNK + c) * NSTATE + offs_n[None, :]
        tl.store(ckpt_ptr + ckpt_off, h, mask=mask_dn)
        u = tl.load(u_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        raw = tl.load(delta_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
        dt = tl.where(m2, _dt(raw, SOFTPLUS), 0.0)  # padded steps: Ā = 1, B̄x = 0 (pass-through)
        mtn = mask_t[:, None] & mask_n[None, :]
        Bt = tl.load(B_ptr + pid_b * s_bb + group * s_bg + offs_n[None, :] * s_bn + offs_t[:, None],
                     mask=mtn, other=0.0).to(tl.float32)  # fmt: skip
        Ct = tl.load(C_ptr + pid_b * s_cb + group * s_cg + offs_n[None, :] * s_cn + offs_t[:, None],
                     mask=mtn, other=0.0).to(tl.float32)  # fmt: skip
        a = tl.exp(dt[:, :, None] * A[:, None, :])  # (BLOCK_D, BLOCK_T, BLOCK_N)
        bx = (dt * u)[:, :, None] * Bt[None, :, :]
        bx = tl.where(first, bx + a * h[:, None, :], bx)  # fold in the state entering the chunk
        _, hh = tl.associative_scan((a, bx), axis=1, combine_fn=_affine)
        y = tl.sum(hh * Ct[None, :, :], axis=2)  # (BLOCK_D, BLOCK_T)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + row + offs_t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where(last_col, hh, 0.0), axis=1)
    tl.store(last_ptr + state_off, h, mask=mask_dn)


@triton.jit
def _bwd(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, gout_ptr, glast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dx0_ptr,
    L, DIM, NSTATE, CH_PER_GROUP, NCHUNK,
    s_ub, s_ud, s_bb, s_bg, s_bn, s_cb, s_cg, s_cn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    DEFER_DA: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_tt = tl.arange(0, BLOCK_T)
    mask_d = offs_d < DIM
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // CH_PER_GROUP
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = pid_b * DIM * NSTATE + offs_d[:, None] * NSTATE + offs_n[None, :]
    if HAS_GLAST:
        carry = tl.load(glast_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    # per-element accumulators, reduced once after the time loop (not once per chunk)
    if DEFER_DA:
        dA3 = tl.zeros((BLOCK_D, BLOCK_T, BLOCK_N), dtype=tl.float32)
    else:
        dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD2 = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    dbias2 = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    row = pid_b * s_ub + offs_d[:, None] * s_ud
    first = (offs_tt == 0)[None, :, None]
    last_col = (offs_tt == BLOCK_T - 1)[None, :, None]
    for ci in range(0, NCHUNK):
        c = NCHUNK - 1 - ci
        offs_t = c * BLOCK_T + offs_tt
        mask_t = offs_t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        mtn = mask_t[:, None] & mask_n[None, :]
        ckpt_off = ((pid_b * DIM + offs_d[:, None]) * NCHUNK + c) * NSTATE + offs_n[None, :]
        h0 = tl.load(ckpt_ptr + ckpt_off, mask=mask_dn, other=0.0)
        u = tl.load(u_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        raw = tl.load(delta_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
        dt = tl.where(m2, _dt(raw, SOFTPLUS), 0.0)
        # Ā_{t+1}: the multiplier linking step t to t + 1 inside the chunk
        m2n = mask_d[:, None] & ((offs_t + 1) < L)[None, :] & ((offs_tt + 1) < BLOCK_T)[None, :]
        raw_n = tl.load(delta_ptr + row + offs_t[None, :] + 1, mask=m2n, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw_n = raw_n + bias[:, None]
        dt_n = tl.where(m2n, _dt(raw_n, SOFTPLUS), 0.0)
        Bt = tl.load(B_ptr + pid_b * s_bb + group * s_bg + offs_n[None, :] * s_bn + offs_t[:, None],
                     mask=mtn, other=0.0).to(tl.float32)  # fmt: skip
        Ct = tl.load(C_ptr + pid_b * s_cb + group * s_cg + offs_n[None, :] * s_cn + offs_t[:, None],
                     mask=mtn, other=0.0).to(tl.float32)  # fmt: skip
        a = tl.exp(dt[:, :, None] * A[:, None, :])
        bx = (dt * u)[:, :, None] * Bt[None, :, :]
        _, hh = tl.associative_scan((a, tl.where(first, bx + a * h0[:, None, :], bx)), axis=1, combine_fn=_affine)
        g = tl.load(gout_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + row + offs_t[None, :], mask=m2, other=0.0).to(tl.float32)
            sg = tl.sigmoid(zz)
            o = tl.sum(hh * Ct[None, :, :], axis=2)
            if HAS_D:
                o = o + Dv[:, None] * u
            tl.store(dz_ptr + row + offs_t[None, :], g * o * sg * (1.0 + zz * (1.0 - sg)), mask=m2)
            g = g * zz * sg
        # adjoint recurrence, backwards in time: ĥ_t = C_t g_t + Ā_{t+1} ĥ_{t+1}
        v = g[:, :, None] * Ct[None, :, :]
        v = tl.where(last_col, v + carry[:, None, :], v)
        alpha = tl.exp(dt_n[:, :, None] * A[:, None, :])
        _, hx = tl.associative_scan((alpha, v), axis=1, combine_fn=_affine, reverse=True)
        hb = hh - bx  # Ā_t h_{t-1}
        ddt = tl.sum(hx * (A[:, None, :] * hb + Bt[None, :, :] * u[:, :, None]), axis=2)
        if DEFER_DA:
            dA3 += hx * dt[:, :, None] * hb
        else:
            dA += tl.sum(hx * dt[:, :, None] * hb, axis=1)
        dBt = tl.sum(hx * (dt * u)[:, :, None], axis=0)  # (BLOCK_T, BLOCK_N)
        dCt = tl.sum(g[:, :, None] * hh, axis=0)
        # relaxed: plain reductions need no ordering (the default acq_rel fences every atomic)
        tl.atomic_add(dB_ptr + pid_b * s_bb + group * s_bg + offs_n[None, :] * s_bn + offs_t[:, None], dBt,
                      mask=mtn, sem="relaxed")  # fmt: skip
        tl.atomic_add(dC_ptr + pid_b * s_cb + group * s_cg + offs_n[None, :] * s_cn + offs_t[:, None], dCt,
                      mask=mtn, sem="relaxed")  # fmt: skip
        du = tl.sum(hx * dt[:, :, None] * Bt[None, :, :], axis=2)
        if HAS_D:
            du = du + g * Dv[:, None]
            dD2 += tl.where(m2, g * u, 0.0)
        if SOFTPLUS:
            ddt = ddt * tl.where(raw > 20.0, 1.0, tl.sigmoid(raw))
        ddt = tl.where(m2, ddt, 0.0)
        dbias2 += ddt
        tl.store(du_ptr + row + offs_t[None, :], du, mask=m2)
        tl.store(ddelta_ptr + row + offs_t[None, :], ddt, mask=m2)
        carry = tl.sum(tl.where(first, a * hx, 0.0), axis=1)  # Ā_s ĥ_s → dL/dh_{s-1}
    tl.store(dx0_ptr + state_off, carry, mask=mask_dn)
    if DEFER_DA:
        dA = tl.sum(dA3, axis=1)
    tl.atomic_add(dA_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], dA, mask=mask_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, tl.sum(dD2, axis=1), mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, tl.sum(dbias2, axis=1), mask=mask_d, sem="relaxed")
