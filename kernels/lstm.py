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

import torch.nn.functional as F
import triton
import triton.language as tl

from fusedrnn.kernels.common import (TL_ACC, block_sizes, bwd_step, check, check_layer_args,
                                     compute_dtype, cudnn_tf32_gemms, dot_flags, empty,
                                     first_slot, fwd_step, gate_grad_dtype, grid_barrier, last_slot,
                                     like_layout, mm_tile, pointer_args, recurrent_gates,
                                     run_steps, sigmoid, state_grad, store_four, store_step,
                                     tanh, tile_offsets, valid_rows, weight_grads,
                                     hmask_args, zoneout_args, zoneout_rate, divert,
                                     init_slot, restart_flags, restarted, resets_args,
                                     restart_rows, restarted_prev, carried)
from fusedrnn.kernels.pairing import Launch, run
from fusedrnn.kernels.plan import plan_blocks, plan_for


@triton.jit
def _gates_fwd_tile(
    i_h, i_b,                     # the tile: block of hidden units, block of batch rows
    xg_ptr, s_xg_t, s_xg_b,       # input projection x W_ih^T + b_ih + b_hh: (T, B, 4H)
    w_ptr, s_w,                   # W_hh: (4H, K)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, K): reads rd; writes wr (no proj)
    c_ptr, s_c_slot, s_c_b,       # cell history (slots, B, H), ACC: reads rd, writes wr
    out_ptr, s_o_t, s_o_b,        # no proj: output (T, B, H), zero past a sequence's length
    hr_ptr, s_hr_t, s_hr_b,       # proj: o * tanh(c_t) (T or 1, B, H), the projection's input
    ga_ptr, s_ga_t, s_ga_b,       # SAVE: activated gates i, f, g, o (T, B, 4H), ACC
    len_ptr,                      # HAS_LENGTHS: (B,) sequence lengths
    hm_ptr, s_hm_b,               # HAS_HMASK: variational mask of h_{t-1} (B, K)
    z_seed, z_th_h, z_th_c, z_dir,  # ZONEOUT: see lstm_update_fwd
    rs_ptr, s_rs_t, init,         # HAS_RESETS: restart flags (T + 1, B), slot of h0 and c0
    t, rd, wr, hr_t, B, H, K,     # time index, state slots, slot of hr, sizes
    ACC: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    p_h = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b
    p_h0 = h_ptr + init.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b
    b_rs = restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS)
    b_i, b_f, b_g, b_o = recurrent_gates(p_h, m_b, w_ptr, s_w, o_h, m_h, H, K, ACC, True,
                                         BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST,
                                         hm_ptr, s_hm_b, o_b, HAS_HMASK, p_h0, b_rs,
                                         HAS_RESETS)
    lstm_update_fwd(b_i, b_f, b_g, b_o, i_h, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot,
                    s_h_b, c_ptr, s_c_slot, s_c_b, out_ptr, s_o_t, s_o_b, hr_ptr, s_hr_t,
                    s_hr_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, hr_t, B, H,
                    z_seed, z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init,
                    ACC, HAS_PROJ, SAVE, HAS_LENGTHS, BLOCK_B, BLOCK_H, ZONEOUT, HAS_RESETS)


@triton.jit
def lstm_update_fwd(
    b_i, b_f, b_g, b_o,           # (BLOCK_B, BLOCK_H) recurrent parts h_{t-1} W_hh^T per gate
    i_h, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot, s_c_b,
    out_ptr, s_o_t, s_o_b, hr_ptr, s_hr_t, s_hr_b, ga_ptr, s_ga_t, s_ga_b,
    len_ptr, t, rd, wr, hr_t, B, H,  # as in _gates_fwd_tile
    z_seed, z_th_h, z_th_c, z_dir,  # ZONEOUT: seed, thresholds of h and c, direction
    rs_ptr, s_rs_t, init,         # HAS_RESETS: restart flags, slot of h0 and c0
    ACC: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    """The rest of a forward step for one tile, shared with the weight-stationary kernel:
    input projection, nonlinearities, cell update, and the stores. ZONEOUT (no proj):
    c_t and h_t blend the new values with the previous ones (common.zoneout_rate).
    Returns h_t as stored (without proj; with it, o * tanh(c_t))."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    p_x = xg_ptr + t.to(tl.int64) * s_xg_t + o_b64[:, None] * s_xg_b + o_h[None, :]
    b_i = sigmoid(b_i + tl.load(p_x, mask=m, other=0.0).to(ACC))
    b_f = sigmoid(b_f + tl.load(p_x + H, mask=m, other=0.0).to(ACC))
    b_g = tanh(b_g + tl.load(p_x + 2 * H, mask=m, other=0.0).to(ACC))
    b_o = sigmoid(b_o + tl.load(p_x + 3 * H, mask=m, other=0.0).to(ACC))

    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    b_rs = restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS)
    p_c = c_ptr + o_b64[:, None] * s_c_b + o_h[None, :]
    b_c_prev = tl.load(p_c + rd.to(tl.int64) * s_c_slot, mask=m, other=0.0)
    b_c_prev = restarted(b_c_prev, p_c + init.to(tl.int64) * s_c_slot, m, b_rs, HAS_RESETS)
    b_c = b_f * b_c_prev + b_i * b_g
    b_hn = b_o * tanh(b_c)
    if ZONEOUT:
        z_c = zoneout_rate(z_seed, z_th_c, 2 * z_dir + 1, t, o_b64, o_h, B, H, ZONEOUT)
        b_c = z_c.to(ACC) * b_c_prev + (1.0 - z_c.to(ACC)) * b_c
    tl.store(p_c + wr.to(tl.int64) * s_c_slot, tl.where(valid, b_c, b_c_prev), mask=m)
    if HAS_PROJ:
        p_hr = hr_ptr + hr_t.to(tl.int64) * s_hr_t + o_b64[:, None] * s_hr_b + o_h[None, :]
        tl.store(p_hr, b_hn.to(hr_ptr.dtype.element_ty), mask=m)
    else:
        p_hs = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_h[None, :]
        b_h_prev = tl.load(p_hs, mask=m, other=0.0).to(ACC)
        b_h_prev = restarted(b_h_prev, p_hs + (init - rd).to(tl.int64) * s_h_slot, m, b_rs,
                             HAS_RESETS)
        if ZONEOUT:
            z_h = zoneout_rate(z_seed, z_th_h, 2 * z_dir, t, o_b64, o_h, B, H, ZONEOUT)
            b_hn = z_h.to(ACC) * b_h_prev + (1.0 - z_h.to(ACC)) * b_hn
        b_hn = store_step(h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, t, wr, o_b64, o_h,
                          m, valid, b_hn, b_h_prev)
    if SAVE:
        store_four(ga_ptr, s_ga_t, s_ga_b, t, o_b64, o_h, m, H, b_i, b_f, b_g, b_o)
    return b_hn


@triton.jit
def _proj_fwd_tile(
    i_p, i_b,                     # the tile: block of projected units, block of batch rows
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
    o_p, o_b, m_p, m_b, m, o_b64 = tile_offsets(i_p, i_b, P, B, BLOCK_P, BLOCK_B)
    b_h = mm_tile(tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC), hr_ptr + hr_t.to(tl.int64) * s_hr_t,
                  s_hr_b, o_b, m_b, w_ptr, 1, s_w, o_p, m_p, H, BLOCK_K, IEEE, UPCAST)
    proj_store(b_h, i_p, i_b, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, len_ptr, t, rd,
               wr, B, P, ACC, HAS_LENGTHS, BLOCK_B, BLOCK_P)


@triton.jit
def proj_store(b_h, i_p, i_b, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, len_ptr, t, rd,
               wr, B, P, ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """The stores of a projection tile's h_t (BLOCK_B, BLOCK_P), shared with the
    weight-stationary forward (stationary._proj_tile): the state into history slot wr and
    the output, the previous state kept where a sequence has ended."""
    o_p, o_b, m_p, m_b, m, o_b64 = tile_offsets(i_p, i_b, P, B, BLOCK_P, BLOCK_B)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_hs = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_p[None, :]
    b_h_prev = tl.load(p_hs, mask=m, other=0.0).to(ACC)
    store_step(h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, t, wr, o_b64, o_p, m, valid,
               b_h, b_h_prev)


@triton.jit
def _proj_bwd_tile(
    i_p, i_b,
    dg_ptr, s_dg_t, s_dg_b,       # gate gradients (T+1, B, 4H), gate_grad_dtype: reads t_next
    w_ptr, s_w,                   # W_hh: (4H, P)
    g_ptr, s_g_b,                 # carried gradient of the state (B, P), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, P)
    dhp_ptr, s_dhp_t, s_dhp_b,    # writes: grad. of the projected h_t (T, B, P), gate_grad_dtype
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, t, t_next, B, H, P,
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    o_p, o_b, m_p, m_b, m, o_b64 = tile_offsets(i_p, i_b, P, B, BLOCK_P, BLOCK_B)
    b_g = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr, s_w,
                     o_b, m_b, o_p, m_p, 4 * H, BLOCK_B, BLOCK_P, BLOCK_K, IEEE, UPCAST,
                     hm_ptr, s_hm_b, HAS_HMASK)
    proj_bwd_store(b_g, i_p, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, dhp_ptr, s_dhp_t,
                   s_dhp_b, len_ptr, rs_ptr, s_rs_t, t, t_next, B, P, HAS_LENGTHS, BLOCK_B,
                   BLOCK_P, HAS_RESETS)


@triton.jit
def proj_bwd_store(b_g, i_p, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, dhp_ptr, s_dhp_t,
                   s_dhp_b, len_ptr, rs_ptr, s_rs_t, t, t_next, B, P,
                   HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
                   HAS_RESETS: tl.constexpr):
    """The rest of a projection tile's backward step, given b_g (BLOCK_B, BLOCK_P): the
    carried plus the recurrent gradient of the projected h_t. With the output's gradient it
    goes to dhp (the projection's, for the gates' phase and dW_hr); past a sequence's
    length it stays carried. Shared with the weight-stationary backward
    (stationary._proj_bwd_tile)."""
    o_p, o_b, m_p, m_b, m, o_b64 = tile_offsets(i_p, i_b, P, B, BLOCK_P, BLOCK_B)
    b_g = divert(b_g, g_ptr + o_b64[:, None] * s_g_b + o_p[None, :], B, s_g_b, m,
                 restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)
    p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_p[None, :]
    b_dh = b_g + tl.load(p_do, mask=m, other=0.0).to(b_g.dtype)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_dhp = dhp_ptr + t.to(tl.int64) * s_dhp_t + o_b64[:, None] * s_dhp_b + o_p[None, :]
    tl.store(p_dhp, tl.where(valid, b_dh, 0.0), mask=m)
    tl.store(g_ptr + o_b64[:, None] * s_g_b + o_p[None, :], tl.where(valid, 0.0, b_g), mask=m)


@triton.jit
def _gates_bwd_tile(
    i_h, i_b,
    dg_ptr, s_dg_t, s_dg_b,       # gate gradients (T+1, B, 4H), gate_grad_dtype: t, t_next
    w_ptr, s_w,                   # no proj: W_hh (4H, H)
    g_ptr, s_g_b,                 # no proj: carried gradient of the state (B, H), in place
    do_ptr, s_do_t, s_do_b,       # no proj: output gradient (T, B, H)
    dhp_ptr, s_dhp_t, s_dhp_b,    # proj: grad. of the projected h_t (T, B, P), gate_grad_dtype
    w_hr_ptr, s_whr,              # proj: W_hr (P, H)
    gc_ptr, s_gc_b,               # carried gradient of the cell state (B, H), ACC, in place
    ga_ptr, s_ga_t, s_ga_b,       # saved activated gates (T, B, 4H), ACC
    c_ptr, s_c_slot, s_c_b,       # cell history: c_{t-1} in slot rd, c_t in slot wr
    dcs_ptr, s_dcs_t, s_dcs_b,    # HAS_DCS: gradient of the returned cell states (T, B, H)
    len_ptr, hm_ptr, s_hm_b,      # HAS_HMASK: variational mask of h_{t-1} (B, K)
    z_seed, z_th_h, z_th_c, z_dir,  # ZONEOUT: see lstm_update_fwd
    rs_ptr, s_rs_t, init,         # HAS_RESETS: restart flags, slot of h0 and c0
    t, t_next, rd, wr, B, H, P,
    HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_DCS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    ACC = gc_ptr.dtype.element_ty
    # gradient reaching o * tanh(c_t)
    if HAS_PROJ:
        b_dh = mm_tile(tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC),
                       dhp_ptr + t.to(tl.int64) * s_dhp_t, s_dhp_b, o_b, m_b,
                       w_hr_ptr, s_whr, 1, o_h, m_h, P, BLOCK_K, IEEE, UPCAST)
        b_gs = b_dh
    else:
        b_gs = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr,
                          s_w, o_b, m_b, o_h, m_h, 4 * H, BLOCK_B, BLOCK_H, BLOCK_K, IEEE,
                          UPCAST, hm_ptr, s_hm_b, HAS_HMASK)
        b_gs = divert(b_gs, g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], B, s_g_b, m,
                      restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)
        p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_h[None, :]
        b_dh = b_gs + tl.load(p_do, mask=m, other=0.0).to(ACC)
    lstm_update_bwd(b_dh, b_gs, i_h, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, gc_ptr, s_gc_b,
                    ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, dcs_ptr, s_dcs_t, s_dcs_b,
                    len_ptr, t, t_next, rd, wr, B, H, z_seed, z_th_h, z_th_c, z_dir,
                    rs_ptr, s_rs_t, init, HAS_PROJ, HAS_LENGTHS, HAS_DCS, BLOCK_B, BLOCK_H,
                    ZONEOUT, HAS_RESETS)


@triton.jit
def lstm_update_bwd(
    b_dh, b_gs,                   # gradient reaching o * tanh(c_t); the state's (no proj)
    i_h, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b,
    c_ptr, s_c_slot, s_c_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, t, t_next, rd, wr, B, H,
    z_seed, z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init,  # as in _gates_bwd_tile and
    HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr,     # lstm_update_fwd
    HAS_DCS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    """The rest of a backward step for one tile, shared with the weight-stationary kernel:
    the gate gradients of step t and the carried cell and state gradients. ZONEOUT: the
    forward's choices drawn again; the new c and h get (1 - z) of their gradients, the
    previous ones z of it, directly."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)

    p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
    b_i = tl.load(p_ga, mask=m, other=0.0)
    b_f = tl.load(p_ga + H, mask=m, other=0.0)
    b_g = tl.load(p_ga + 2 * H, mask=m, other=0.0)
    b_o = tl.load(p_ga + 3 * H, mask=m, other=0.0)
    p_c = c_ptr + o_b64[:, None] * s_c_b + o_h[None, :]
    b_c_prev = tl.load(p_c + rd.to(tl.int64) * s_c_slot, mask=m, other=0.0)
    b_c_prev = restarted(b_c_prev, p_c + init.to(tl.int64) * s_c_slot, m,
                         restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS), HAS_RESETS)
    if ZONEOUT:  # the slot holds the blended c_t; h_t's tanh saw the new value
        b_tc = tanh(b_f * b_c_prev + b_i * b_g)
    else:
        b_tc = tanh(tl.load(p_c + wr.to(tl.int64) * s_c_slot, mask=m, other=0.0))
    p_gc = gc_ptr + o_b64[:, None] * s_gc_b + o_h[None, :]
    b_gc = tl.load(p_gc, mask=m, other=0.0)
    b_gc = divert(b_gc, p_gc, B, s_gc_b, m,
                  restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)

    b_dct = b_gc  # gradient reaching c_t
    if HAS_DCS:  # c_t is also an output (return_cell_states): its own gradient joins here
        p_dcs = dcs_ptr + t.to(tl.int64) * s_dcs_t + o_b64[:, None] * s_dcs_b + o_h[None, :]
        b_dct += tl.load(p_dcs, mask=m, other=0.0).to(b_gc.dtype)
    if ZONEOUT:
        ACC = b_gc.dtype
        z_h = zoneout_rate(z_seed, z_th_h, 2 * z_dir, t, o_b64, o_h, B, H, ZONEOUT).to(ACC)
        z_c = zoneout_rate(z_seed, z_th_c, 2 * z_dir + 1, t, o_b64, o_h, B, H, ZONEOUT).to(ACC)
        b_dhn = (1.0 - z_h) * b_dh
        b_dc = (1.0 - z_c) * b_dct + b_dhn * b_o * (1.0 - b_tc * b_tc)
        b_gc_prev = b_dc * b_f + z_c * b_dct
        b_g_prev = z_h * b_dh
    else:
        b_dhn = b_dh
        b_dc = b_dct + b_dh * b_o * (1.0 - b_tc * b_tc)
        b_gc_prev = b_dc * b_f
        b_g_prev = 0.0
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    store_four(dg_ptr, s_dg_t, s_dg_b, t, o_b64, o_h, m, H,
               tl.where(valid, b_dc * b_g * b_i * (1.0 - b_i), 0.0),
               tl.where(valid, b_dc * b_c_prev * b_f * (1.0 - b_f), 0.0),
               tl.where(valid, b_dc * b_i * (1.0 - b_g * b_g), 0.0),
               tl.where(valid, b_dhn * b_tc * b_o * (1.0 - b_o), 0.0))
    tl.store(p_gc, tl.where(valid, b_gc_prev, b_gc), mask=m)
    if not HAS_PROJ:
        # the state's recurrent gradient now lives in dg[t] (applied by the step before),
        # its direct one (zoneout) here; past a sequence's length it passes through
        tl.store(g_ptr + o_b64[:, None] * s_g_b + o_h[None, :],
                 tl.where(valid, b_g_prev, b_gs), mask=m)


# ----------------------------------------------------------------------------------------
# kernels: one per direction of the pass, in step mode (one step, a program per tile) or
# sequence mode (every step, programs loop over tiles and meet at grid barriers)
# ----------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["s0", "n_steps", "T", "z_seed"])
def lstm_fwd_kernel(
    xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w, h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot, s_c_b,
    out_ptr, s_o_t, s_o_b, hr_ptr, s_hr_t, s_hr_b, ga_ptr, s_ga_t, s_ga_b,  # see the tiles
    w_hr_ptr, s_whr,              # proj: W_hr (P, H)
    len_ptr,                      # HAS_LENGTHS: (B,) sequence lengths
    hm_ptr, s_hm_b,               # HAS_HMASK: variational mask of h_{t-1} (B, K)
    z_seed, z_th_h, z_th_c,       # ZONEOUT: see lstm_update_fwd
    rs_ptr, s_rs_t,               # HAS_RESETS: restart flags (T + 1, B), see restart_flags
    sem_ptr, err_ptr,             # PERSISTENT: the grid barrier's int32 and its error word
    s0, n_steps, T, B, H, K,      # steps s0 .. s0+n_steps-1 of T; K: state width (P or H)
    ACC: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr, RUN_GATES: tl.constexpr, RUN_PROJ: tl.constexpr,
    PERSISTENT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h, n_p = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H), tl.cdiv(K, BLOCK_P)
    z_dir = 1 if REVERSE else 0
    init = init_slot(T, z_dir, SAVE)
    for s in range(s0, s0 + n_steps):
        t, rd, wr = fwd_step(s, T, REVERSE, SAVE)
        if SAVE:
            hr_t = t
        else:
            hr_t = t * 0
        if RUN_GATES:
            for tile in range(pid, n_h * n_b, n_progs):
                _gates_fwd_tile(tile % n_h, tile // n_h, xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w,
                                h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot, s_c_b,
                                out_ptr, s_o_t, s_o_b, hr_ptr, s_hr_t, s_hr_b,
                                ga_ptr, s_ga_t, s_ga_b, len_ptr, hm_ptr, s_hm_b, z_seed,
                                z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init, t, rd, wr, hr_t,
                                B, H, K, ACC, HAS_PROJ, SAVE, HAS_LENGTHS, BLOCK_B, BLOCK_H,
                                BLOCK_K, IEEE, UPCAST, HAS_HMASK, ZONEOUT, HAS_RESETS)
            if PERSISTENT:
                grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
        if RUN_PROJ:
            for tile in range(pid, n_p * n_b, n_progs):
                _proj_fwd_tile(tile % n_p, tile // n_p, hr_ptr, s_hr_t, s_hr_b, w_hr_ptr, s_whr,
                               h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b,
                               len_ptr, t, rd, wr, hr_t, B, K, H,
                               ACC, HAS_LENGTHS, BLOCK_B, BLOCK_P, BLOCK_K, IEEE, UPCAST)
            if PERSISTENT:
                grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


@triton.jit(do_not_specialize=["s0", "n_steps", "T", "z_seed"])
def lstm_bwd_kernel(
    dg_ptr, s_dg_t, s_dg_b, w_ptr, s_w, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    dhp_ptr, s_dhp_t, s_dhp_b, w_hr_ptr, s_whr, gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b,
    c_ptr, s_c_slot, s_c_b, dcs_ptr, s_dcs_t, s_dcs_b,  # see the tiles
    len_ptr, hm_ptr, s_hm_b, z_seed, z_th_h, z_th_c, rs_ptr, s_rs_t, sem_ptr, err_ptr,
    s0, n_steps, T, B, H, K,      # backward steps s0 .. s0+n_steps-1 (0 = last forward step)
    HAS_PROJ: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_DCS: tl.constexpr,
    REVERSE: tl.constexpr,
    RUN_GATES: tl.constexpr, RUN_PROJ: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr,
    SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h, n_p = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H), tl.cdiv(K, BLOCK_P)
    z_dir = 1 if REVERSE else 0
    init = init_slot(T, z_dir, True)
    for s in range(s0, s0 + n_steps):
        t, t_next, rd, wr = bwd_step(s, T, REVERSE)
        if RUN_PROJ:
            for tile in range(pid, n_p * n_b, n_progs):
                _proj_bwd_tile(tile % n_p, tile // n_p, dg_ptr, s_dg_t, s_dg_b, w_ptr, s_w,
                               g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, dhp_ptr, s_dhp_t, s_dhp_b,
                               len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, t, t_next, B, H, K,
                               HAS_LENGTHS, BLOCK_B, BLOCK_P, BLOCK_K, IEEE, UPCAST, HAS_HMASK,
                               HAS_RESETS)
            if PERSISTENT:
                grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
        if RUN_GATES:
            for tile in range(pid, n_h * n_b, n_progs):
                _gates_bwd_tile(tile % n_h, tile // n_h, dg_ptr, s_dg_t, s_dg_b, w_ptr, s_w,
                                g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, dhp_ptr, s_dhp_t, s_dhp_b,
                                w_hr_ptr, s_whr, gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b,
                                c_ptr, s_c_slot, s_c_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr,
                                hm_ptr, s_hm_b, z_seed, z_th_h, z_th_c, z_dir, rs_ptr,
                                s_rs_t, init, t, t_next, rd, wr, B, H, K, HAS_PROJ,
                                HAS_LENGTHS, HAS_DCS, BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST,
                                HAS_HMASK, ZONEOUT, HAS_RESETS)
            if PERSISTENT:
                grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _tiling(kplan, B, H, K, tensor_cores, max_rows=64):
    """Block sizes and tile counts of the gates (over H: the plan's, plan_blocks) and
    projection (over K) phases. max_rows caps the batch rows of a tile (block_sizes allows
    64)."""
    BB, BH, BK, warps = plan_blocks(kplan, tensor_cores, max_rows)
    _, BP, _, warps_p = block_sizes(min(B, max_rows), K, tensor_cores)
    n_b = triton.cdiv(B, BB)
    return dict(BLOCK_B=BB, BLOCK_H=BH, BLOCK_P=BP, BLOCK_K=BK), \
        n_b * triton.cdiv(H, BH), n_b * triton.cdiv(K, BP), max(warps, warps_p)


def lstm_forward(*args, **kwargs):
    """One LSTM layer, launched now (see lstm_forward_steps)."""
    return run(lstm_forward_steps(*args, **kwargs))


def lstm_forward_steps(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save,
                       allow_tf32=None, directions=1, hmask=None, zoneout=None, resets=None):
    """Runs one LSTM layer. Returns out, h_n, c_n, and (if save) the buffers backward needs.
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction.
    Regularizers (issue 14): ``hmask`` (B, K) multiplies h_{t-1} in the recurrent product
    (variational dropout); ``zoneout`` (seed, thresh_h, thresh_c, mode), see
    common.zoneout_args. ``resets`` (T, B) bool: the state restarts from (h0, c0) where set
    (common.restart_rows has the rule), inside the time loop."""
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
    check(zoneout is None or w_hr is None, "zoneout does not run with proj_size")
    acc = compute_dtype(x.dtype)
    dev = x.device
    has_proj = w_hr is not None

    with cudnn_tf32_gemms(dev):
        xg = F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)
    if xg.stride(-1) != 1:
        xg = xg.contiguous()
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    # inference alternates two slots; with restarts a third keeps (h0, c0) (init_slot)
    n_slots = T + 1 if save else (2 if rs is None else 3)
    hs = empty(n_slots, B, K, dtype=x.dtype, device=dev)
    cs = empty(n_slots, B, H, dtype=acc, device=dev)
    out = like_layout(x, T, B, K, x.dtype)
    gates = empty(T, B, 4 * H, dtype=acc, device=dev) if save else cs
    hraw = empty(T if save else 1, B, H, dtype=x.dtype, device=dev) if has_proj else hs
    first = first_slot(T, reverse, save)
    hs[first] = h0
    cs[first] = c0
    if rs is not None and not save:
        hs[2], cs[2] = h0, c0
    regs = dict(**hmask_args(hmask, hs, B, K, x.dtype), **zoneout_args(zoneout),
                **resets_args(rs, hs))

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("lstm", x.dtype, B, H, K, has_proj, dev, save, ieee,
                     directions=directions) if B > 0 else None
    if B > 0 and kplan["kernel"] == "stationary":
        yield Launch("fwd", kplan, dict(
            **pointer_args(xg=(xg, "tb"), w=(w_hh, ("",)), h=(hs, ("slot", "b")),
                           c=(cs, ("slot", "b")), out=(out, "tb", "o"), ga=(gates, "tb")),
            **(dict(**pointer_args(hr=(hraw, "tb"), w_hr=(w_hr, ("",), "whr")), K=K)
               if has_proj else {}),
            bhn_ptr=cs, len_ptr=lengths if lengths is not None else cs, T=T, B=B, H=H,
            LSTM=True, RNN=0, ACC=TL_ACC[acc], HAS_BIAS=False, SAVE=save,
            HAS_LENGTHS=lengths is not None, REVERSE=reverse, IEEE=ieee, UPCAST=upcast,
            **regs), B, dev)
    elif B > 0:
        blocks, n_gate_tiles, n_proj_tiles, warps = _tiling(kplan, B, H, K, not ieee)
        args = dict(
            **pointer_args(xg=(xg, "tb"), w=(w_hh, ("",)), h=(hs, ("slot", "b")),
                           c=(cs, ("slot", "b")), out=(out, "tb", "o"), hr=(hraw, "tb"),
                           ga=(gates, "tb")),
            w_hr_ptr=w_hr if has_proj else w_hh, s_whr=w_hr.stride(0) if has_proj else 0,
            len_ptr=lengths if lengths is not None else cs, T=T, B=B, H=H, K=K,
            ACC=TL_ACC[acc], HAS_PROJ=has_proj, SAVE=save, HAS_LENGTHS=lengths is not None,
            REVERSE=reverse, IEEE=ieee, UPCAST=upcast, **regs, **blocks)
        phases = [(dict(RUN_GATES=True, RUN_PROJ=False), n_gate_tiles)]
        if has_proj:
            phases.append((dict(RUN_GATES=False, RUN_PROJ=True), n_proj_tiles))
        run_steps(lstm_fwd_kernel, args, T, phases, kplan["kernel"] == "sequence", dev, warps,
                  kplan["stages"])
    last = last_slot(T, reverse, save) if B > 0 else first
    # copies, not views: h_n/c_n must not alias the buffers saved for backward
    h_n, c_n = hs[last].clone(), cs[last].to(x.dtype, copy=True)
    saved = (hs, cs, gates, hraw if has_proj else None) if save else None
    return out, h_n, c_n, saved


def lstm_backward(*args, **kwargs):
    """Gradients of one LSTM layer, launched now (see lstm_backward_steps)."""
    return run(lstm_backward_steps(*args, **kwargs))


def lstm_backward_steps(x, w_ih, w_hh, w_hr, lengths, reverse, saved, d_out, d_hn, d_cn,
                        needs=(True,) * 8, allow_tf32=None, directions=1, d_cs=None,
                        hmask=None, zoneout=None, resets=None):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) of one LSTM layer; None where
    ``needs`` says a gradient is not wanted. d_cs: the gradient of the cell states c_t the
    layer returned (return_cell_states), (T, B, H), or None. hmask, zoneout: the forward's.
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction."""
    hs, cs, gates, hraw = saved
    T, B, _ = x.shape
    H, K = w_hh.shape[0] // 4, w_hh.shape[1]
    acc, dev = cs.dtype, x.device
    has_proj = w_hr is not None
    dg = empty(T + 1, B, 4 * H, dtype=gate_grad_dtype(x.dtype), device=dev)
    dg[T] = 0
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    g, g_restarts = carried(d_hn, acc, rs is not None)
    gc, gc_restarts = carried(d_cn, acc, rs is not None)
    if d_out.stride(-1) != 1:
        d_out = d_out.contiguous()
    # (every product that reads dhp casts it to the layer's dtype: gate_grad_dtype's rule)
    dhp = empty(T, B, K, dtype=dg.dtype, device=dev) if has_proj else dg
    if d_cs is not None and d_cs.stride(-1) != 1:
        d_cs = d_cs.contiguous()
    dcs = (pointer_args(dcs=(d_cs, "tb")) if d_cs is not None else
           dict(dcs_ptr=gc, s_dcs_t=0, s_dcs_b=0))
    regs = dict(**hmask_args(hmask, g, B, K, x.dtype), **zoneout_args(zoneout),
                **resets_args(rs, g))

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("lstm", x.dtype, B, H, K, has_proj, dev, True, ieee, backward=True,
                     directions=directions) if B > 0 else None
    if B > 0 and kplan["kernel"] == "stationary":
        yield Launch("bwd", kplan, dict(
            **pointer_args(dg=(dg, "tb"), w=(w_hh, ("",)), g=(g, "b"), do=(d_out, "tb"),
                           gc=(gc, "b"), ga=(gates, "tb"), c=(cs, ("slot", "b")),
                           h=(hs, ("slot", "b"))),
            dxn_ptr=dg, s_dxn_t=0, s_dxn_b=0, **dcs,
            **(dict(**pointer_args(dhp=(dhp, "tb"), w_hr=(w_hr, ("",), "whr")), K=K)
               if has_proj else {}),
            len_ptr=lengths if lengths is not None else cs, T=T, B=B, H=H, LSTM=True,
            RNN=0, ACC=TL_ACC[acc], HAS_LENGTHS=lengths is not None,
            HAS_DCS=d_cs is not None, REVERSE=reverse, IEEE=ieee, UPCAST=upcast, **regs),
            B, dev)
    elif B > 0:
        # the cell states' gradient is one more (rows x units) operand a step: at 64 x 32
        # fp32 it spilled (96 B, one access in the K loop on sm_80); 32 rows do not
        rows = 32 if d_cs is not None else 64
        blocks, n_gate_tiles, n_proj_tiles, warps = _tiling(kplan, B, H, K, not ieee, rows)
        args = dict(
            **pointer_args(dg=(dg, "tb"), w=(w_hh, ("",)), g=(g, "b"), do=(d_out, "tb"),
                           dhp=(dhp, "tb"), gc=(gc, "b"), ga=(gates, "tb"),
                           c=(cs, ("slot", "b"))), **dcs,
            w_hr_ptr=w_hr if has_proj else w_hh, s_whr=w_hr.stride(0) if has_proj else 0,
            len_ptr=lengths if lengths is not None else cs, T=T, B=B, H=H, K=K,
            HAS_PROJ=has_proj, HAS_LENGTHS=lengths is not None, HAS_DCS=d_cs is not None,
            REVERSE=reverse, IEEE=ieee, UPCAST=upcast, **regs, **blocks)
        phases = [(dict(RUN_GATES=True, RUN_PROJ=False), n_gate_tiles)]
        if has_proj:
            phases.insert(0, (dict(RUN_GATES=False, RUN_PROJ=True), n_proj_tiles))
        run_steps(lstm_bwd_kernel, args, T, phases, kplan["kernel"] == "sequence", dev, warps,
                  kplan["stages"])

    dgs = dg[:T]
    t_first = T - 1 if reverse else 0
    prev_h = hs[1:] if reverse else hs[:T]  # h_{t-1} of each time index t
    if rs is not None:  # what restarts sent to the initial state
        prev_h = restarted_prev(prev_h, rs, hs[first_slot(T, reverse, True)])
        g, gc = g + g_restarts, gc + gc_restarts
    return weight_grads(x, dgs, dgs, prev_h, w_ih, w_hh, needs, extra_dh0=(g, dg[t_first]),
                        dc0=gc, d_proj=(dhp, hraw) if has_proj else None, hmask=hmask)
