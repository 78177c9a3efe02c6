"""LSTM step kernels (forward and backward) and their launchers.

One layer, one direction. The input projection x W_ih^T + b_ih + b_hh for all T steps is
one GEMM before the loop; then one launch per step computes, for a tile of hidden units
and all four of their gates, h_{t-1} W_hh^T + that projection, the nonlinearities and the
cell update, in registers. With ``proj_size`` a second launch per step projects h.

Buffers (T steps, B batch, H hidden, K = state width: P with proj_size, else H):
  hs (slots, B, K)  input dtype   state history; slot of h_{t-1} is ``rd``, of h_t ``wr``
  cs (slots, B, H)  fp32/fp64     cell history, same slots
  gates (T, B, 4H)  fp32/fp64     activated i, f, g, o, saved for backward
  dg (T+1, B, 4H)   fp32/fp64     pre-activation gate gradients; slot T stays zero so the
                                  last step's "next" recurrent term is a no-op
Training keeps T+1 slots (forward: rd=t, wr=t+1; reverse: rd=t+1, wr=t); inference keeps
two and alternates. A sequence past its length keeps its state and outputs zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fusedrnn.kernels.common import (TL_ACC, block_sizes, check, check_layer_args,
                                     compute_dtype, dot, dot_flags, empty, like_layout, mm_tile,
                                     sigmoid, state_grad, step_slots, tanh, time_order,
                                     valid_rows, weight_grads)


@triton.jit(do_not_specialize=["t", "rd", "wr", "hr_t"])
def lstm_fwd_step_kernel(
    xg_ptr, s_xg_t, s_xg_b,       # input projection x W_ih^T + b_ih + b_hh: (T, B, 4H)
    w_ptr, s_w,                   # W_hh: (4H, K)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, K): reads rd; writes wr (no proj)
    c_ptr, s_c_slot, s_c_b,       # cell history (slots, B, H), ACC: reads rd, writes wr
    out_ptr, s_o_t, s_o_b,        # no proj: output (T, B, H), zero past a sequence's length
    hr_ptr, s_hr_t, s_hr_b,       # proj: o * tanh(c_t) (T or 1, B, H), the projection's input
    ga_ptr, s_ga_t, s_ga_b,       # SAVE: activated gates i, f, g, o (T, B, 4H), ACC
    len_ptr,                      # HAS_LENGTHS: (B,) sequence lengths
    t, rd, wr, hr_t, B, H, K,     # time index, state slots, slot of hr, sizes
    ACC: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_h, m_b = o_h < H, o_b < B
    m = m_b[:, None] & m_h[None, :]
    o_b64 = o_b.to(tl.int64)

    # recurrent term for the four gates of the same hidden units: h_{t-1} W_hh[gate rows]^T,
    # one load of h per chunk of K shared by the four dots
    b_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    p_h = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b
    p_w = w_ptr + o_h.to(tl.int64)[None, :] * s_w
    gate_rows = H * s_w  # W_hh itself has < 2^31 elements
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_h = tl.load(p_h + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        m_w = m_k[:, None] & m_h[None, :]
        p_wk = p_w + o_k[:, None]
        b_i = dot(b_h, tl.load(p_wk, mask=m_w, other=0.0), b_i, IEEE, UPCAST)
        b_f = dot(b_h, tl.load(p_wk + gate_rows, mask=m_w, other=0.0), b_f, IEEE, UPCAST)
        b_g = dot(b_h, tl.load(p_wk + 2 * gate_rows, mask=m_w, other=0.0), b_g, IEEE, UPCAST)
        b_o = dot(b_h, tl.load(p_wk + 3 * gate_rows, mask=m_w, other=0.0), b_o, IEEE, UPCAST)

    p_x = xg_ptr + t.to(tl.int64) * s_xg_t + o_b64[:, None] * s_xg_b + o_h[None, :]
    b_i = sigmoid(b_i + tl.load(p_x, mask=m, other=0.0).to(ACC))
    b_f = sigmoid(b_f + tl.load(p_x + H, mask=m, other=0.0).to(ACC))
    b_g = tanh(b_g + tl.load(p_x + 2 * H, mask=m, other=0.0).to(ACC))
    b_o = sigmoid(b_o + tl.load(p_x + 3 * H, mask=m, other=0.0).to(ACC))

    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_c = c_ptr + o_b64[:, None] * s_c_b + o_h[None, :]
    b_c_prev = tl.load(p_c + rd.to(tl.int64) * s_c_slot, mask=m, other=0.0)
    b_c = b_f * b_c_prev + b_i * b_g
    b_hn = b_o * tanh(b_c)
    tl.store(p_c + wr.to(tl.int64) * s_c_slot, tl.where(valid, b_c, b_c_prev), mask=m)
    if HAS_PROJ:
        p_hr = hr_ptr + hr_t.to(tl.int64) * s_hr_t + o_b64[:, None] * s_hr_b + o_h[None, :]
        tl.store(p_hr, b_hn.to(hr_ptr.dtype.element_ty), mask=m)
    else:
        p_hs = h_ptr + o_b64[:, None] * s_h_b + o_h[None, :]
        b_h_prev = tl.load(p_hs + rd.to(tl.int64) * s_h_slot, mask=m, other=0.0).to(ACC)
        tl.store(p_hs + wr.to(tl.int64) * s_h_slot,
                 tl.where(valid, b_hn, b_h_prev).to(h_ptr.dtype.element_ty), mask=m)
        p_o = out_ptr + t.to(tl.int64) * s_o_t + o_b64[:, None] * s_o_b + o_h[None, :]
        tl.store(p_o, tl.where(valid, b_hn, 0.0).to(out_ptr.dtype.element_ty), mask=m)
    if SAVE:
        p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
        tl.store(p_ga, b_i, mask=m)
        tl.store(p_ga + H, b_f, mask=m)
        tl.store(p_ga + 2 * H, b_g, mask=m)
        tl.store(p_ga + 3 * H, b_o, mask=m)


@triton.jit(do_not_specialize=["t", "rd", "wr", "hr_t"])
def proj_fwd_step_kernel(
    hr_ptr, s_hr_t, s_hr_b,       # o * tanh(c_t) (T or 1, B, H)
    w_ptr, s_w,                   # W_hr: (P, H)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, P): reads rd, writes wr
    out_ptr, s_o_t, s_o_b,        # output (T, B, P), zero past a sequence's length
    len_ptr, t, rd, wr, hr_t, B, P, H,
    ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """h_t = (o * tanh(c_t)) W_hr^T for a tile of the P projected units."""
    i_p, i_b = tl.program_id(0), tl.program_id(1)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_p, m_b = o_p < P, o_b < B
    m = m_b[:, None] & m_p[None, :]
    o_b64 = o_b.to(tl.int64)
    b_h = mm_tile(tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC), hr_ptr + hr_t.to(tl.int64) * s_hr_t,
                  s_hr_b, o_b, m_b, w_ptr, 1, s_w, o_p, m_p, H, BLOCK_K, IEEE, UPCAST)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_hs = h_ptr + o_b64[:, None] * s_h_b + o_p[None, :]
    b_h_prev = tl.load(p_hs + rd.to(tl.int64) * s_h_slot, mask=m, other=0.0).to(ACC)
    tl.store(p_hs + wr.to(tl.int64) * s_h_slot,
             tl.where(valid, b_h, b_h_prev).to(h_ptr.dtype.element_ty), mask=m)
    p_o = out_ptr + t.to(tl.int64) * s_o_t + o_b64[:, None] * s_o_b + o_p[None, :]
    tl.store(p_o, tl.where(valid, b_h, 0.0).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["t", "t_next"])
def proj_bwd_step_kernel(
    dg_ptr, s_dg_t, s_dg_b,       # gate gradients (T+1, B, 4H), ACC: reads slot t_next
    w_ptr, s_w,                   # W_hh: (4H, P)
    g_ptr, s_g_b,                 # carried gradient of the state (B, P), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, P)
    dhp_ptr, s_dhp_t, s_dhp_b,    # writes: gradient of the projected h_t (T, B, P), ACC
    len_ptr, t, t_next, B, H, P,
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    i_p, i_b = tl.program_id(0), tl.program_id(1)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_p, m_b = o_p < P, o_b < B
    m = m_b[:, None] & m_p[None, :]
    o_b64 = o_b.to(tl.int64)
    b_g = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr, s_w,
                     o_b, m_b, o_p, m_p, 4 * H, BLOCK_B, BLOCK_P, BLOCK_K, IEEE, UPCAST)
    p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_p[None, :]
    b_dh = b_g + tl.load(p_do, mask=m, other=0.0).to(b_g.dtype)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_dhp = dhp_ptr + t.to(tl.int64) * s_dhp_t + o_b64[:, None] * s_dhp_b + o_p[None, :]
    tl.store(p_dhp, tl.where(valid, b_dh, 0.0), mask=m)
    tl.store(g_ptr + o_b64[:, None] * s_g_b + o_p[None, :], tl.where(valid, 0.0, b_g), mask=m)


@triton.jit(do_not_specialize=["t", "t_next", "rd", "wr"])
def lstm_bwd_step_kernel(
    dg_ptr, s_dg_t, s_dg_b,       # gate gradients (T+1, B, 4H), ACC: writes t, reads t_next
    w_ptr, s_w,                   # no proj: W_hh (4H, H)
    g_ptr, s_g_b,                 # no proj: carried gradient of the state (B, H), in place
    do_ptr, s_do_t, s_do_b,       # no proj: output gradient (T, B, H)
    dhp_ptr, s_dhp_t, s_dhp_b,    # proj: gradient of the projected h_t (T, B, P), ACC
    w_hr_ptr, s_whr,              # proj: W_hr (P, H)
    gc_ptr, s_gc_b,               # carried gradient of the cell state (B, H), ACC, in place
    ga_ptr, s_ga_t, s_ga_b,       # saved activated gates (T, B, 4H), ACC
    c_ptr, s_c_slot, s_c_b,       # cell history: c_{t-1} in slot rd, c_t in slot wr
    len_ptr, t, t_next, rd, wr, B, H, P,
    HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_h, m_b = o_h < H, o_b < B
    m = m_b[:, None] & m_h[None, :]
    o_b64 = o_b.to(tl.int64)
    ACC = gc_ptr.dtype.element_ty
    # gradient reaching o * tanh(c_t)
    if HAS_PROJ:
        b_dh = mm_tile(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC),
                       dhp_ptr + t.to(tl.int64) * s_dhp_t, s_dhp_b, o_b, m_b,
                       w_hr_ptr, s_whr, 1, o_h, m_h, P, BLOCK_K, IEEE, UPCAST)
    else:
        b_gs = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr,
                          s_w, o_b, m_b, o_h, m_h, 4 * H, BLOCK_B, BLOCK_H, BLOCK_K, IEEE,
                          UPCAST)
        p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_h[None, :]
        b_dh = b_gs + tl.load(p_do, mask=m, other=0.0).to(ACC)

    p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
    b_i = tl.load(p_ga, mask=m, other=0.0)
    b_f = tl.load(p_ga + H, mask=m, other=0.0)
    b_g = tl.load(p_ga + 2 * H, mask=m, other=0.0)
    b_o = tl.load(p_ga + 3 * H, mask=m, other=0.0)
    p_c = c_ptr + o_b64[:, None] * s_c_b + o_h[None, :]
    b_c_prev = tl.load(p_c + rd.to(tl.int64) * s_c_slot, mask=m, other=0.0)
    b_tc = tanh(tl.load(p_c + wr.to(tl.int64) * s_c_slot, mask=m, other=0.0))
    p_gc = gc_ptr + o_b64[:, None] * s_gc_b + o_h[None, :]
    b_gc = tl.load(p_gc, mask=m, other=0.0)

    b_dc = b_gc + b_dh * b_o * (1.0 - b_tc * b_tc)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_dg = dg_ptr + t.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b + o_h[None, :]
    tl.store(p_dg, tl.where(valid, b_dc * b_g * b_i * (1.0 - b_i), 0.0), mask=m)
    tl.store(p_dg + H, tl.where(valid, b_dc * b_c_prev * b_f * (1.0 - b_f), 0.0), mask=m)
    tl.store(p_dg + 2 * H, tl.where(valid, b_dc * b_i * (1.0 - b_g * b_g), 0.0), mask=m)
    tl.store(p_dg + 3 * H, tl.where(valid, b_dh * b_tc * b_o * (1.0 - b_o), 0.0), mask=m)
    tl.store(p_gc, tl.where(valid, b_dc * b_f, b_gc), mask=m)
    if not HAS_PROJ:
        # the state's gradient now lives in dg[t] (applied by the step before); past a
        # sequence's length it passes through untouched
        tl.store(g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], tl.where(valid, 0.0, b_gs),
                 mask=m)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save,
                 allow_tf32=False):
    """Runs one LSTM layer. Returns out, h_n, c_n, and (if save) the buffers backward needs."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    K = w_hh.shape[1]  # state width: proj_size or hidden
    check(T > 0, "x must have at least one time step")
    check(w_hh.shape[0] == 4 * H and H > 0, f"w_hh must have 4*hidden rows, got {w_hh.shape[0]}")
    check((b_ih is None) == (b_hh is None), "b_ih and b_hh must be given together")
    check_layer_args(x, {"h0": (h0, (B, K)), "c0": (c0, (B, H))}, {
        "w_ih": (w_ih, (4 * H, x.shape[2])), "w_hh": (w_hh, (4 * H, K)),
        "b_ih": (b_ih, (4 * H,)), "b_hh": (b_hh, (4 * H,)),
        "w_hr": (w_hr, (K, H))}, lengths)
    check(w_hr is not None or K == H, f"w_hh has {K} columns but hidden is {H} and no w_hr")
    acc = compute_dtype(x.dtype)
    dev = x.device

    xg = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
    if xg.stride(-1) != 1:
        xg = xg.contiguous()
    n_slots = T + 1 if save else 2
    hs = empty(n_slots, B, K, dtype=x.dtype, device=dev)
    cs = empty(n_slots, B, H, dtype=acc, device=dev)
    out = like_layout(x, T, B, K, x.dtype)
    gates = empty(T, B, 4 * H, dtype=acc, device=dev) if save else cs
    hraw = empty(T if save else 1, B, H, dtype=x.dtype, device=dev) if w_hr is not None else hs
    first = step_slots(T - 1 if reverse else 0, 0, T, reverse, save)[0]
    hs[first] = h0
    cs[first] = c0
    len_arg = lengths if lengths is not None else cs

    BB, BH, BK, warps = block_sizes(B, H)
    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    grid = (triton.cdiv(H, BH), triton.cdiv(B, BB))
    if w_hr is not None:
        BBp, BP, BKp, warps_p = block_sizes(B, K)
        grid_p = (triton.cdiv(K, BP), triton.cdiv(B, BBp))
    wr = first
    for s, t in enumerate(time_order(T, reverse)):
        if B == 0:
            break
        rd, wr = step_slots(t, s, T, reverse, save)
        hr_t = t if save else 0
        lstm_fwd_step_kernel[grid](
            xg, xg.stride(0), xg.stride(1), w_hh, w_hh.stride(0),
            hs, hs.stride(0), hs.stride(1), cs, cs.stride(0), cs.stride(1),
            out, out.stride(0), out.stride(1), hraw, hraw.stride(0), hraw.stride(1),
            gates, gates.stride(0), gates.stride(1), len_arg,
            t, rd, wr, hr_t, B, H, K,
            ACC=TL_ACC[acc], HAS_PROJ=w_hr is not None, SAVE=save,
            HAS_LENGTHS=lengths is not None, BLOCK_B=BB, BLOCK_H=BH, BLOCK_K=BK,
            IEEE=ieee, UPCAST=upcast, num_warps=warps)
        if w_hr is not None:
            proj_fwd_step_kernel[grid_p](
                hraw, hraw.stride(0), hraw.stride(1), w_hr, w_hr.stride(0),
                hs, hs.stride(0), hs.stride(1), out, out.stride(0), out.stride(1),
                len_arg, t, rd, wr, hr_t, B, K, H,
                ACC=TL_ACC[acc], HAS_LENGTHS=lengths is not None,
                BLOCK_B=BBp, BLOCK_P=BP, BLOCK_K=BKp, IEEE=ieee, UPCAST=upcast,
                num_warps=warps_p)
    if B == 0:
        wr = first
    # copies, not views: h_n/c_n must not alias the buffers saved for backward
    h_n, c_n = hs[wr].clone(), cs[wr].to(x.dtype, copy=True)
    saved = (hs, cs, gates, hraw if w_hr is not None else None) if save else None
    return out, h_n, c_n, saved


def lstm_backward(x, w_ih, w_hh, w_hr, lengths, reverse, saved, d_out, d_hn, d_cn,
                  needs=(True,) * 8, allow_tf32=False):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) of one LSTM layer; None where
    ``needs`` says a gradient is not wanted."""
    hs, cs, gates, hraw = saved
    T, B, _ = x.shape
    H, K = w_hh.shape[0] // 4, w_hh.shape[1]
    acc, dev = cs.dtype, x.device
    dg = empty(T + 1, B, 4 * H, dtype=acc, device=dev)
    dg[T] = 0
    g = d_hn.to(acc, copy=True)
    gc = d_cn.to(acc, copy=True)
    if d_out.stride(-1) != 1:
        d_out = d_out.contiguous()
    has_proj = w_hr is not None
    dhp = empty(T, B, K, dtype=acc, device=dev) if has_proj else dg
    len_arg = lengths if lengths is not None else cs

    BB, BH, BK, warps = block_sizes(B, H)
    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    grid = (triton.cdiv(H, BH), triton.cdiv(B, BB))
    if has_proj:
        BBp, BP, BKp, warps_p = block_sizes(B, K)
        grid_p = (triton.cdiv(K, BP), triton.cdiv(B, BBp))
    for t in (reversed(time_order(T, reverse)) if B else ()):
        rd, wr = step_slots(t, 0, T, reverse, True)
        t_next = (t - 1 if t > 0 else T) if reverse else t + 1
        if has_proj:
            proj_bwd_step_kernel[grid_p](
                dg, dg.stride(0), dg.stride(1), w_hh, w_hh.stride(0), g, g.stride(0),
                d_out, d_out.stride(0), d_out.stride(1), dhp, dhp.stride(0), dhp.stride(1),
                len_arg, t, t_next, B, H, K,
                HAS_LENGTHS=lengths is not None, BLOCK_B=BBp, BLOCK_P=BP, BLOCK_K=BKp,
                IEEE=ieee, UPCAST=upcast, num_warps=warps_p)
        lstm_bwd_step_kernel[grid](
            dg, dg.stride(0), dg.stride(1), w_hh, w_hh.stride(0), g, g.stride(0),
            d_out, d_out.stride(0), d_out.stride(1), dhp, dhp.stride(0), dhp.stride(1),
            w_hr if has_proj else w_hh, w_hr.stride(0) if has_proj else 0,
            gc, gc.stride(0), gates, gates.stride(0), gates.stride(1),
            cs, cs.stride(0), cs.stride(1), len_arg, t, t_next, rd, wr, B, H, K,
            HAS_PROJ=has_proj, HAS_LENGTHS=lengths is not None,
            BLOCK_B=BB, BLOCK_H=BH, BLOCK_K=BK, IEEE=ieee, UPCAST=upcast, num_warps=warps)

    dgs = dg[:T]
    t_first = T - 1 if reverse else 0
    prev_h = hs[1:] if reverse else hs[:T]  # h_{t-1} of each time index t
    return weight_grads(x, dgs, dgs, prev_h, w_ih, w_hh, needs, extra_dh0=(g, dg[t_first]),
                        dc0=gc, d_proj=(dhp, hraw) if has_proj else None)

