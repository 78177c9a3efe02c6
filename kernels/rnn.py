"""Plain RNN (Elman) kernels, tanh or relu, forward and backward, and their launchers.

One layer, one direction; the structure and buffers of :mod:`fusedrnn.kernels.gru` with one
gate: h_t = act(x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T). Both biases add before the
nonlinearity, so they are folded into the input projection, one GEMM before the loop.

Saved per step besides the state history: the nonlinearity's derivative (T, B, H), ACC.
tanh's is 4e / (1 + e)^2 with e = exp(-2|a|), the form without cancellation: 1 - h_t^2
from a rounded h_t near +-1 loses most of its digits (a relative error of 1e-5 on dx in
fp32 where exact fp32 must give 1e-6). relu's is a > 0 (zero at zero, like torch's).
Backward keeps one gradient buffer dg (T+1, B, H) of the pre-activations, which is also
the input's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fusedrnn.kernels.common import (TL_ACC, bwd_step, check, check_layer_args,
                                     compute_dtype, cudnn_tf32_gemms, dot_flags, empty,
                                     first_slot, fwd_step, gate_grad_dtype, grid_barrier, last_slot,
                                     like_layout, mm_tile, pointer_args, run_steps,
                                     state_grad, store_step, tile_offsets, valid_rows,
                                     weight_grads, hmask_args, zoneout_args, carried, divert,
                                     init_slot, restart_flags, restart_rows, restarted_prev,
                                     resets_args)
from fusedrnn.kernels.pairing import Launch, run
from fusedrnn.kernels.plan import plan_blocks, plan_for

NONLINEARITIES = {"tanh": 1, "relu": 2}  # the kernels' RNN constexpr (0: not a plain RNN)


@triton.jit
def rnn_update_fwd(
    b_pre,                        # (BLOCK_B, BLOCK_H) recurrent part h_{t-1} W_hh^T
    i_h, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b,
    ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, B, H,  # as in _rnn_fwd_tile
    ACC: tl.constexpr, RNN: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """The rest of a forward step for one tile, shared with the weight-stationary kernel.
    Returns h_t as stored."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    p_x = xg_ptr + t.to(tl.int64) * s_xg_t + o_b64[:, None] * s_xg_b + o_h[None, :]
    b_pre += tl.load(p_x, mask=m, other=0.0).to(ACC)
    if RNN == 1:
        e = tl.exp(-2.0 * tl.abs(b_pre))
        b_hn = (1.0 - e) / (1.0 + e)
        b_hn = tl.where(b_pre < 0, -b_hn, b_hn)
        b_d = 4.0 * e / ((1.0 + e) * (1.0 + e))
    else:
        b_hn = tl.maximum(b_pre, 0.0)
        b_d = tl.where(b_pre > 0.0, 1.0, 0.0)
    if SAVE:
        p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
        tl.store(p_ga, b_d.to(ga_ptr.dtype.element_ty), mask=m)
    p_hs = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_h[None, :]
    b_h_prev = tl.load(p_hs, mask=m, other=0.0).to(ACC)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    return store_step(h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, t, wr, o_b64, o_h, m,
                      valid, b_hn, b_h_prev)


@triton.jit
def rnn_update_bwd(
    b_gs,                         # gradient of h_t so far: carried + dg_{t+1} W_hh
    i_h, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    ga_ptr, s_ga_t, s_ga_b, len_ptr, t, B, H,  # as in _rnn_bwd_tile
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """The rest of a backward step for one tile, shared with the weight-stationary kernel."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    ACC = b_gs.dtype
    p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_h[None, :]
    b_dh = b_gs + tl.load(p_do, mask=m, other=0.0).to(ACC)
    p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
    b_da = b_dh * tl.load(p_ga, mask=m, other=0.0)    # the saved derivative
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_dg = dg_ptr + t.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b + o_h[None, :]
    tl.store(p_dg, tl.where(valid, b_da, 0.0), mask=m)
    # h_t depends on h_{t-1} only through W_hh (dg): nothing carried, except past a length
    tl.store(g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], tl.where(valid, 0.0, b_gs), mask=m)


@triton.jit
def _rnn_fwd_tile(
    i_h, i_b,                     # the tile: block of hidden units, block of batch rows
    xg_ptr, s_xg_t, s_xg_b,       # input projection (T, B, H), both biases in
    w_ptr, s_w,                   # W_hh: (H, H)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, H): reads rd, writes wr
    out_ptr, s_o_t, s_o_b,        # output (T, B, H), zero past a sequence's length
    ga_ptr, s_ga_t, s_ga_b,       # SAVE: the nonlinearity's derivative (T, B, H), ACC
    len_ptr, hm_ptr, s_hm_b,      # HAS_HMASK: variational mask of h_{t-1} (B, H)
    rs_ptr, s_rs_t, init,         # HAS_RESETS: restart flags (T + 1, B), slot of h0
    t, rd, wr, B, H,
    ACC: tl.constexpr, RNN: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    b_pre = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    # h_{t-1} (B, H) . W_hh^T: w[k, n] = W_hh[n, k] (h0 where the step restarts)
    b_pre = mm_tile(b_pre, h_ptr + rd.to(tl.int64) * s_h_slot, s_h_b, o_b, m_b, w_ptr, 1, s_w,
                    o_h, m_h, H, BLOCK_K, IEEE, UPCAST, hm_ptr, s_hm_b, HAS_HMASK,
                    h_ptr + init.to(tl.int64) * s_h_slot,
                    restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS), HAS_RESETS)
    rnn_update_fwd(b_pre, i_h, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, out_ptr,
                   s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, B, H, ACC, RNN,
                   SAVE, HAS_LENGTHS, BLOCK_B, BLOCK_H)


@triton.jit
def _rnn_bwd_tile(
    i_h, i_b,
    dg_ptr, s_dg_t, s_dg_b,       # pre-activation gradients (T+1, B, H), gate_grad_dtype: writes t,
                                  # reads t_next
    w_ptr, s_w,                   # W_hh: (H, H)
    g_ptr, s_g_b,                 # carried gradient of the state (B, H), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, H)
    ga_ptr, s_ga_t, s_ga_b,       # saved derivative of the nonlinearity (T, B, H), ACC
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, t, t_next, B, H,
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    b_gs = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr, s_w,
                      o_b, m_b, o_h, m_h, H, BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST,
                      hm_ptr, s_hm_b, HAS_HMASK)
    b_gs = divert(b_gs, g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], B, s_g_b, m,
                  restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)
    rnn_update_bwd(b_gs, i_h, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, do_ptr, s_do_t,
                   s_do_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, B, H, HAS_LENGTHS, BLOCK_B,
                   BLOCK_H)


# ----------------------------------------------------------------------------------------
# kernels: step mode or sequence mode (see fusedrnn.kernels.common.run_steps)
# ----------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["s0", "n_steps", "T"])
def rnn_fwd_kernel(
    xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w, h_ptr, s_h_slot, s_h_b,
    out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b,  # see the tile
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, sem_ptr, err_ptr, s0, n_steps, T, B, H,
    ACC: tl.constexpr, RNN: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr,
    SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H)
    init = init_slot(T, 1 if REVERSE else 0, SAVE)
    for s in range(s0, s0 + n_steps):
        t, rd, wr = fwd_step(s, T, REVERSE, SAVE)
        for tile in range(pid, n_h * n_b, n_progs):
            _rnn_fwd_tile(tile % n_h, tile // n_h, xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w,
                          h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b,
                          len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, init, t, rd, wr, B, H,
                          ACC, RNN, SAVE, HAS_LENGTHS, BLOCK_B, BLOCK_H, BLOCK_K, IEEE,
                          UPCAST, HAS_HMASK, HAS_RESETS)
        if PERSISTENT:
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


@triton.jit(do_not_specialize=["s0", "n_steps", "T"])
def rnn_bwd_kernel(
    dg_ptr, s_dg_t, s_dg_b, w_ptr, s_w, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    ga_ptr, s_ga_t, s_ga_b,       # see the tile
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, sem_ptr, err_ptr, s0, n_steps, T, B, H,
    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    PERSISTENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H)
    for s in range(s0, s0 + n_steps):
        t, t_next, rd, wr = bwd_step(s, T, REVERSE)
        for tile in range(pid, n_h * n_b, n_progs):
            _rnn_bwd_tile(tile % n_h, tile // n_h, dg_ptr, s_dg_t, s_dg_b, w_ptr, s_w,
                          g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b,
                          len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, t, t_next, B, H,
                          HAS_LENGTHS, BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST, HAS_HMASK,
                          HAS_RESETS)
        if PERSISTENT:
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _nonlinearity(nonlinearity: str) -> int:
    check(nonlinearity in NONLINEARITIES,
          f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return NONLINEARITIES[nonlinearity]


def rnn_forward(*args, **kwargs):
    """One RNN layer, launched now (see rnn_forward_steps)."""
    return run(rnn_forward_steps(*args, **kwargs))


def rnn_forward_steps(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save,
                      nonlinearity="tanh", allow_tf32=None, directions=1, hmask=None,
                      resets=None):
    """Runs one plain RNN layer. Returns out, h_n, and (if save) the buffers backward needs.
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction.
    ``hmask`` (B, H): variational dropout of h_{t-1} in the recurrent product. ``resets``
    (T, B) bool: restarts from h0 inside the time loop (common.restart_rows)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    act = _nonlinearity(nonlinearity)
    check(T > 0, "x must have at least one time step")
    check((b_ih is None) == (b_hh is None), "b_ih and b_hh must be given together")
    check_layer_args(x, {"h0": (h0, (B, H))}, {
        "w_ih": (w_ih, (H, x.shape[2])), "w_hh": (w_hh, (H, H)),
        "b_ih": (b_ih, (H,)), "b_hh": (b_hh, (H,))}, lengths)
    acc = compute_dtype(x.dtype)
    dev = x.device

    with cudnn_tf32_gemms(dev):
        xg = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
    if xg.stride(-1) != 1:
        xg = xg.contiguous()
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    n_slots = T + 1 if save else (2 if rs is None else 3)  # (init_slot)
    hs = empty(n_slots, B, H, dtype=x.dtype, device=dev)
    out = like_layout(x, T, B, H, x.dtype)
    dact = empty(T, B, H, dtype=acc, device=dev) if save else hs
    first = first_slot(T, reverse, save)
    hs[first] = h0
    if rs is not None and not save:
        hs[2] = h0

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("rnn", x.dtype, B, H, H, False, dev, save, ieee,
                     directions=directions) if B > 0 else None
    common = dict(len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H,
                  ACC=TL_ACC[acc], SAVE=save, HAS_LENGTHS=lengths is not None,
                  REVERSE=reverse, IEEE=ieee, UPCAST=upcast,
                  **hmask_args(hmask, hs, B, H, x.dtype), **resets_args(rs, hs))
    ptrs = pointer_args(xg=(xg, "tb"), w=(w_hh, ("",)), h=(hs, ("slot", "b")),
                        out=(out, "tb", "o"), ga=(dact, "tb"))
    if B > 0 and kplan["kernel"] == "stationary":
        yield Launch("fwd", kplan, dict(
            **ptrs, **common, c_ptr=hs, s_c_slot=0, s_c_b=0, bhn_ptr=hs, LSTM=False, RNN=act,
            HAS_BIAS=False, **zoneout_args(None)), B, dev)
    elif B > 0:
        BB, BH, BK, warps = plan_blocks(kplan, not ieee)
        n_tiles = triton.cdiv(B, BB) * triton.cdiv(H, BH)
        run_steps(rnn_fwd_kernel, dict(**ptrs, **common, RNN=act, BLOCK_B=BB, BLOCK_H=BH,
                                       BLOCK_K=BK), T, [({}, n_tiles)],
                  kplan["kernel"] == "sequence", dev, warps, kplan["stages"])
    last = last_slot(T, reverse, save) if B > 0 else first
    h_n = hs[last].clone()  # not a view of the buffers saved for backward
    return out, h_n, ((hs, dact) if save else None)


def rnn_backward(*args, **kwargs):
    """Gradients of one RNN layer, launched now (see rnn_backward_steps)."""
    return run(rnn_backward_steps(*args, **kwargs))


def rnn_backward_steps(x, w_ih, w_hh, lengths, reverse, saved, d_out, d_hn,
                       needs=(True,) * 6, allow_tf32=None, directions=1, hmask=None,
                       resets=None):
    """Gradients (x, h0, w_ih, w_hh, b_ih, b_hh) of one RNN layer; None where not needed.
    (The nonlinearity is in the saved derivative; ``hmask`` is the forward's.)
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction."""
    hs, dact = saved
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc, dev = dact.dtype, x.device
    dg = empty(T + 1, B, H, dtype=gate_grad_dtype(x.dtype), device=dev)
    dg[T] = 0
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    g, g_restarts = carried(d_hn, acc, rs is not None)
    if d_out.stride(-1) != 1:
        d_out = d_out.contiguous()

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("rnn", x.dtype, B, H, H, False, dev, True, ieee, backward=True,
                     directions=directions) if B > 0 else None
    common = dict(len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H,
                  HAS_LENGTHS=lengths is not None, REVERSE=reverse, IEEE=ieee, UPCAST=upcast,
                  **hmask_args(hmask, g, B, H, x.dtype), **resets_args(rs, g))
    ptrs = pointer_args(dg=(dg, "tb"), w=(w_hh, ("",)), g=(g, "b"), do=(d_out, "tb"),
                        ga=(dact, "tb"))
    if B > 0 and kplan["kernel"] == "stationary":
        # RNN=1 only marks the one-gate cell: the nonlinearity is in the saved derivative
        yield Launch("bwd", kplan, dict(
            **ptrs, **common, dxn_ptr=dg, s_dxn_t=0, s_dxn_b=0, gc_ptr=g, s_gc_b=0, c_ptr=g,
            s_c_slot=0, s_c_b=0, h_ptr=hs, s_h_slot=0, s_h_b=0, LSTM=False, RNN=1,
            ACC=TL_ACC[acc], dcs_ptr=g, s_dcs_t=0, s_dcs_b=0, HAS_DCS=False,
            **zoneout_args(None)), B, dev)
    elif B > 0:
        BB, BH, BK, warps = plan_blocks(kplan, not ieee)
        n_tiles = triton.cdiv(B, BB) * triton.cdiv(H, BH)
        run_steps(rnn_bwd_kernel, dict(**ptrs, **common, BLOCK_B=BB, BLOCK_H=BH,
                                       BLOCK_K=BK), T, [({}, n_tiles)],
                  kplan["kernel"] == "sequence", dev, warps, kplan["stages"])

    dgh = dg[:T]
    t_first = T - 1 if reverse else 0
    prev_h = hs[1:] if reverse else hs[:T]
    if rs is not None:  # what restarts sent to the initial state
        prev_h = restarted_prev(prev_h, rs, hs[first_slot(T, reverse, True)])
        g = g + g_restarts
    return weight_grads(x, dgh, dgh, prev_h, w_ih, w_hh, needs, extra_dh0=(g, dg[t_first]),
                        hmask=hmask)
