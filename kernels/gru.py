"""GRU step kernels (forward and backward) and their launchers.

One layer, one direction; same structure and buffers as :mod:`fusedrnn.kernels.lstm`.
The input projection x W_ih^T + b_ih (+ b_hr, b_hz folded in: they add before the
sigmoid) is one GEMM before the loop. b_hn stays apart since the reset gate multiplies
the recurrent term after its bias: n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)).

Saved per step (T, B, 4H): r, z, n and W_hn h + b_hn. Backward keeps two gradient
buffers: dg (T+1, B, 3H) of the recurrent pre-activations (r, z, r * dn) and dxn (T, B, H)
of the input's n part (dn), since the reset gate separates them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fusedrnn.kernels.common import (TL_ACC, bwd_step, check, check_layer_args,
                                     compute_dtype, cudnn_tf32_gemms, dot_flags, empty,
                                     first_slot, fwd_step, gate_grad_dtype, grid_barrier, last_slot,
                                     like_layout, pointer_args, recurrent_gates, run_steps,
                                     sigmoid, state_grad, store_four, store_step, tanh,
                                     tile_offsets, valid_rows, weight_grads,
                                     hmask_args, zoneout_args, carried, divert, init_slot,
                                     restart_flags, restart_rows, restarted, restarted_prev,
                                     resets_args, zoneout_rate)
from fusedrnn.kernels.pairing import Launch, run
from fusedrnn.kernels.plan import plan_blocks, plan_for


@triton.jit
def _gru_fwd_tile(
    i_h, i_b,                     # the tile: block of hidden units, block of batch rows
    xg_ptr, s_xg_t, s_xg_b,       # input projection (T, B, 3H), r and z recurrent biases in
    w_ptr, s_w,                   # W_hh: (3H, H)
    bhn_ptr,                      # HAS_BIAS: b_hn (H,)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, H): reads rd, writes wr
    out_ptr, s_o_t, s_o_b,        # output (T, B, H), zero past a sequence's length
    ga_ptr, s_ga_t, s_ga_b,       # SAVE: r, z, n, W_hn h + b_hn (T, B, 4H), ACC
    len_ptr, hm_ptr, s_hm_b,      # HAS_HMASK: variational mask of h_{t-1} (B, H)
    rs_ptr, s_rs_t, init,         # HAS_RESETS: restart flags (T + 1, B), slot of h0
    z_seed, z_th_h, z_dir,        # ZONEOUT: see gru_update_fwd
    t, rd, wr, B, H,
    ACC: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr, ZONEOUT: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    p_h = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b
    p_h0 = h_ptr + init.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b
    b_rs = restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS)
    b_r, b_z, b_n, _ = recurrent_gates(p_h, m_b, w_ptr, s_w, o_h, m_h, H, H, ACC, False,
                                       BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST,
                                       hm_ptr, s_hm_b, o_b, HAS_HMASK, p_h0, b_rs, HAS_RESETS)
    gru_update_fwd(b_r, b_z, b_n, i_h, i_b, xg_ptr, s_xg_t, s_xg_b, bhn_ptr, h_ptr, s_h_slot,
                   s_h_b, out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr,
                   B, H, rs_ptr, s_rs_t, init, z_seed, z_th_h, z_dir, ACC, HAS_BIAS, SAVE,
                   HAS_LENGTHS, BLOCK_B, BLOCK_H, HAS_RESETS, ZONEOUT)


@triton.jit
def gru_update_fwd(
    b_r, b_z, b_n,                # (BLOCK_B, BLOCK_H) recurrent parts h_{t-1} W_hh^T per gate
    i_h, i_b, xg_ptr, s_xg_t, s_xg_b, bhn_ptr, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b,
    ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, B, H,  # as in _gru_fwd_tile
    rs_ptr, s_rs_t, init,
    z_seed, z_th_h, z_dir,        # ZONEOUT: seed, threshold of h, direction (lstm.py's)
    ACC: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, HAS_RESETS: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    """The rest of a forward step for one tile, shared with the weight-stationary kernel.
    ZONEOUT: h_t blends the new value with h_{t-1} (common.zoneout_rate). Returns h_t as
    stored."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    if HAS_BIAS:
        b_n += tl.load(bhn_ptr + o_h, mask=m_h, other=0.0).to(ACC)[None, :]

    p_x = xg_ptr + t.to(tl.int64) * s_xg_t + o_b64[:, None] * s_xg_b + o_h[None, :]
    b_r = sigmoid(b_r + tl.load(p_x, mask=m, other=0.0).to(ACC))
    b_z = sigmoid(b_z + tl.load(p_x + H, mask=m, other=0.0).to(ACC))
    b_nn = tanh(tl.load(p_x + 2 * H, mask=m, other=0.0).to(ACC) + b_r * b_n)

    p_hs = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_h[None, :]
    b_h_prev = tl.load(p_hs, mask=m, other=0.0).to(ACC)
    b_h_prev = restarted(b_h_prev, p_hs + (init - rd).to(tl.int64) * s_h_slot, m,
                         restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS), HAS_RESETS)
    b_hn = (1.0 - b_z) * b_nn + b_z * b_h_prev
    if ZONEOUT:
        z_h = zoneout_rate(z_seed, z_th_h, 2 * z_dir, t, o_b64, o_h, B, H, ZONEOUT).to(ACC)
        b_hn = z_h * b_h_prev + (1.0 - z_h) * b_hn
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    b_h = store_step(h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, t, wr, o_b64, o_h, m,
                     valid, b_hn, b_h_prev)
    if SAVE:
        store_four(ga_ptr, s_ga_t, s_ga_b, t, o_b64, o_h, m, H, b_r, b_z, b_nn, b_n)
    return b_h


@triton.jit
def _gru_bwd_tile(
    i_h, i_b,
    dg_ptr, s_dg_t, s_dg_b,       # recurrent pre-activation gradients (T+1, B, 3H),
                                  # gate_grad_dtype: writes t, reads t_next
    dxn_ptr, s_dxn_t, s_dxn_b,    # gradient of the input's n pre-activation (T, B, H), ACC
    w_ptr, s_w,                   # W_hh: (3H, H)
    g_ptr, s_g_b,                 # carried gradient of the state (B, H), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, H)
    ga_ptr, s_ga_t, s_ga_b,       # saved r, z, n, W_hn h + b_hn (T, B, 4H)
    h_ptr, s_h_slot, s_h_b,       # state history: h_{t-1} in slot rd
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, init, z_seed, z_th_h, z_dir, t, t_next, rd, B, H,
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr,
    HAS_RESETS: tl.constexpr, ZONEOUT: tl.constexpr,
):
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    b_gs = state_grad(g_ptr, s_g_b, dg_ptr + t_next.to(tl.int64) * s_dg_t, s_dg_b, w_ptr, s_w,
                      o_b, m_b, o_h, m_h, 3 * H, BLOCK_B, BLOCK_H, BLOCK_K, IEEE, UPCAST,
                      hm_ptr, s_hm_b, HAS_HMASK)
    b_gs = divert(b_gs, g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], B, s_g_b, m,
                  restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)
    gru_update_bwd(b_gs, i_h, i_b, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, g_ptr,
                   s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b, h_ptr, s_h_slot,
                   s_h_b, len_ptr, t, rd, B, H, rs_ptr, s_rs_t, init, z_seed, z_th_h, z_dir,
                   HAS_LENGTHS, BLOCK_B, BLOCK_H, HAS_RESETS, ZONEOUT)


@triton.jit
def gru_update_bwd(
    b_gs,                         # gradient of h_t so far: carried + dgates_{t+1} W_hh
    i_h, i_b, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, g_ptr, s_g_b,
    do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b, h_ptr, s_h_slot, s_h_b,
    len_ptr, t, rd, B, H,         # as in _gru_bwd_tile
    rs_ptr, s_rs_t, init, z_seed, z_th_h, z_dir,
    HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_RESETS: tl.constexpr, ZONEOUT: tl.constexpr,
):
    """The rest of a backward step for one tile, shared with the weight-stationary kernel.
    ZONEOUT: the forward's choices drawn again; the cell's own h gets (1 - z) of h_t's
    gradient and h_{t-1} z of it directly."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_h, i_b, H, B, BLOCK_H, BLOCK_B)
    ACC = b_gs.dtype
    p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_h[None, :]
    b_dh_all = b_gs + tl.load(p_do, mask=m, other=0.0).to(ACC)  # gradient of h_t
    if ZONEOUT:
        z_h = zoneout_rate(z_seed, z_th_h, 2 * z_dir, t, o_b64, o_h, B, H, ZONEOUT).to(ACC)
        b_dh = (1.0 - z_h) * b_dh_all  # of the cell's own new state
        b_direct = z_h * b_dh_all
    else:
        b_dh = b_dh_all
        b_direct = 0.0

    p_ga = ga_ptr + t.to(tl.int64) * s_ga_t + o_b64[:, None] * s_ga_b + o_h[None, :]
    b_r = tl.load(p_ga, mask=m, other=0.0)
    b_z = tl.load(p_ga + H, mask=m, other=0.0)
    b_nn = tl.load(p_ga + 2 * H, mask=m, other=0.0)
    b_n = tl.load(p_ga + 3 * H, mask=m, other=0.0)
    p_hs = h_ptr + rd.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_h[None, :]
    b_h_prev = tl.load(p_hs, mask=m, other=0.0).to(ACC)
    b_h_prev = restarted(b_h_prev, p_hs + (init - rd).to(tl.int64) * s_h_slot, m,
                         restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS), HAS_RESETS)

    b_dnn = b_dh * (1.0 - b_z) * (1.0 - b_nn * b_nn)      # through n = tanh(.)
    b_dz = b_dh * (b_h_prev - b_nn) * b_z * (1.0 - b_z)
    b_dr = b_dnn * b_n * b_r * (1.0 - b_r)
    valid = valid_rows(len_ptr, o_b, m_b, t, HAS_LENGTHS)[:, None]
    p_dg = dg_ptr + t.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b + o_h[None, :]
    tl.store(p_dg, tl.where(valid, b_dr, 0.0), mask=m)
    tl.store(p_dg + H, tl.where(valid, b_dz, 0.0), mask=m)
    tl.store(p_dg + 2 * H, tl.where(valid, b_dnn * b_r, 0.0), mask=m)
    p_dxn = dxn_ptr + t.to(tl.int64) * s_dxn_t + o_b64[:, None] * s_dxn_b + o_h[None, :]
    tl.store(p_dxn, tl.where(valid, b_dnn, 0.0), mask=m)
    # h_t = ... + z * h_{t-1}: the direct term is carried; past a length, all of it is
    tl.store(g_ptr + o_b64[:, None] * s_g_b + o_h[None, :],
             tl.where(valid, b_dh * b_z + b_direct, b_gs), mask=m)


# ----------------------------------------------------------------------------------------
# kernels: step mode (one step, a program per tile) or sequence mode (every step, programs
# loop over tiles and meet at grid barriers); see fusedrnn.kernels.common.run_steps
# ----------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["s0", "n_steps", "T", "z_seed"])
def gru_fwd_kernel(
    xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w, bhn_ptr, h_ptr, s_h_slot, s_h_b,
    out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b,  # see the tile
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, z_seed, z_th_h, z_th_c, sem_ptr, err_ptr,
    s0, n_steps, T, B, H,
    ACC: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    REVERSE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr,
    SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr, HAS_RESETS: tl.constexpr,
    ZONEOUT: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H)
    z_dir = 1 if REVERSE else 0
    init = init_slot(T, z_dir, SAVE)
    for s in range(s0, s0 + n_steps):
        t, rd, wr = fwd_step(s, T, REVERSE, SAVE)
        for tile in range(pid, n_h * n_b, n_progs):
            _gru_fwd_tile(tile % n_h, tile // n_h, xg_ptr, s_xg_t, s_xg_b, w_ptr, s_w, bhn_ptr,
                          h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b,
                          len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, init, z_seed, z_th_h,
                          z_dir, t, rd, wr, B, H, ACC, HAS_BIAS, SAVE, HAS_LENGTHS, BLOCK_B,
                          BLOCK_H, BLOCK_K, IEEE, UPCAST, HAS_HMASK, HAS_RESETS, ZONEOUT)
        if PERSISTENT:
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


@triton.jit(do_not_specialize=["s0", "n_steps", "T", "z_seed"])
def gru_bwd_kernel(
    dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, w_ptr, s_w, g_ptr, s_g_b,
    do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b, h_ptr, s_h_slot, s_h_b,  # see the tile
    len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, z_seed, z_th_h, z_th_c, sem_ptr, err_ptr,
    s0, n_steps, T, B, H,
    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr,
    HAS_HMASK: tl.constexpr, HAS_RESETS: tl.constexpr, ZONEOUT: tl.constexpr,
):
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_b, n_h = tl.cdiv(B, BLOCK_B), tl.cdiv(H, BLOCK_H)
    z_dir = 1 if REVERSE else 0
    init = init_slot(T, z_dir, True)
    for s in range(s0, s0 + n_steps):
        t, t_next, rd, wr = bwd_step(s, T, REVERSE)
        for tile in range(pid, n_h * n_b, n_progs):
            _gru_bwd_tile(tile % n_h, tile // n_h, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t,
                          s_dxn_b, w_ptr, s_w, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
                          ga_ptr, s_ga_t, s_ga_b, h_ptr, s_h_slot, s_h_b,
                          len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, init, z_seed, z_th_h,
                          z_dir, t, t_next, rd, B, H, HAS_LENGTHS, BLOCK_B, BLOCK_H, BLOCK_K,
                          IEEE, UPCAST, HAS_HMASK, HAS_RESETS, ZONEOUT)
        if PERSISTENT:
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def gru_forward(*args, **kwargs):
    """One GRU layer, launched now (see gru_forward_steps)."""
    return run(gru_forward_steps(*args, **kwargs))


def gru_forward_steps(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, allow_tf32=None,
                      directions=1, hmask=None, resets=None, zoneout=None):
    """Runs one GRU layer. Returns out, h_n, and (if save) the buffers backward needs.
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction.
    ``hmask`` (B, H): variational dropout of h_{t-1} in the recurrent product (the
    interpolation z * h_{t-1} keeps the state unmasked). ``resets`` (T, B) bool: restarts
    from h0 inside the time loop (common.restart_rows). ``zoneout``: as the LSTM's, on h
    (its c threshold unused)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    check(T > 0, "x must have at least one time step")
    check((b_ih is None) == (b_hh is None), "b_ih and b_hh must be given together")
    check_layer_args(x, {"h0": (h0, (B, H))}, {
        "w_ih": (w_ih, (3 * H, x.shape[2])), "w_hh": (w_hh, (3 * H, H)),
        "b_ih": (b_ih, (3 * H,)), "b_hh": (b_hh, (3 * H,))}, lengths)
    acc = compute_dtype(x.dtype)
    dev = x.device

    bias = None
    if b_ih is not None:
        bias = torch.cat([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
    with cudnn_tf32_gemms(dev):
        xg = F.linear(x, w_ih, bias)
    if xg.stride(-1) != 1:
        xg = xg.contiguous()
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    n_slots = T + 1 if save else (2 if rs is None else 3)  # (init_slot)
    hs = empty(n_slots, B, H, dtype=x.dtype, device=dev)
    out = like_layout(x, T, B, H, x.dtype)
    gates = empty(T, B, 4 * H, dtype=acc, device=dev) if save else hs
    first = first_slot(T, reverse, save)
    hs[first] = h0
    if rs is not None and not save:
        hs[2] = h0
    hm = dict(**hmask_args(hmask, hs, B, H, x.dtype), **resets_args(rs, hs),
              **zoneout_args(zoneout))

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("gru", x.dtype, B, H, H, False, dev, save, ieee,
                     directions=directions) if B > 0 else None
    if B > 0 and kplan["kernel"] == "stationary":
        yield Launch("fwd", kplan, dict(
            **pointer_args(xg=(xg, "tb"), w=(w_hh, ("",)), h=(hs, ("slot", "b")),
                           out=(out, "tb", "o"), ga=(gates, "tb")),
            c_ptr=hs, s_c_slot=0, s_c_b=0,
            bhn_ptr=b_hh[2 * H:] if b_hh is not None else hs,
            len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H, LSTM=False,
            RNN=0, ACC=TL_ACC[acc], HAS_BIAS=b_hh is not None, SAVE=save,
            HAS_LENGTHS=lengths is not None, REVERSE=reverse, IEEE=ieee, UPCAST=upcast,
            **hm), B, dev)
    elif B > 0:
        BB, BH, BK, warps = plan_blocks(kplan, not ieee)
        args = dict(
            **pointer_args(xg=(xg, "tb"), w=(w_hh, ("",)), h=(hs, ("slot", "b")),
                           out=(out, "tb", "o"), ga=(gates, "tb")),
            bhn_ptr=b_hh[2 * H:] if b_hh is not None else hs,
            len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H,
            ACC=TL_ACC[acc], HAS_BIAS=b_hh is not None, SAVE=save,
            HAS_LENGTHS=lengths is not None, REVERSE=reverse, BLOCK_B=BB, BLOCK_H=BH,
            BLOCK_K=BK, IEEE=ieee, UPCAST=upcast, **hm)
        n_tiles = triton.cdiv(B, BB) * triton.cdiv(H, BH)
        run_steps(gru_fwd_kernel, args, T, [({}, n_tiles)], kplan["kernel"] == "sequence", dev,
                  warps, kplan["stages"])
    last = last_slot(T, reverse, save) if B > 0 else first
    h_n = hs[last].clone()  # not a view of the buffers saved for backward
    return out, h_n, ((hs, gates) if save else None)


def gru_backward(*args, **kwargs):
    """Gradients of one GRU layer, launched now (see gru_backward_steps)."""
    return run(gru_backward_steps(*args, **kwargs))


def gru_backward_steps(x, w_ih, w_hh, lengths, reverse, saved, d_out, d_hn,
                       needs=(True,) * 6, allow_tf32=None, directions=1, hmask=None,
                       resets=None, zoneout=None):
    """Gradients (x, h0, w_ih, w_hh, b_ih, b_hh) of one GRU layer; None where not needed;
    ``hmask`` the forward's.
    A generator (kernels/pairing.py): it yields its weight-stationary launch, if any, and
    finishes when resumed; ``directions=2`` plans a bidirectional layer's direction."""
    hs, gates = saved
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc, dev = gates.dtype, x.device
    dg = empty(T + 1, B, 3 * H, dtype=gate_grad_dtype(x.dtype), device=dev)
    dg[T] = 0
    dxn = empty(T, B, H, dtype=acc, device=dev)
    rs = restart_rows(resets, lengths, reverse) if resets is not None else None
    g, g_restarts = carried(d_hn, acc, rs is not None)
    if d_out.stride(-1) != 1:
        d_out = d_out.contiguous()
    hm = dict(**hmask_args(hmask, g, B, H, x.dtype), **resets_args(rs, g),
              **zoneout_args(zoneout))

    ieee, upcast = dot_flags(x.dtype, dev, allow_tf32)
    kplan = plan_for("gru", x.dtype, B, H, H, False, dev, True, ieee, backward=True,
                     directions=directions) if B > 0 else None
    if B > 0 and kplan["kernel"] == "stationary":
        yield Launch("bwd", kplan, dict(
            **pointer_args(dg=(dg, "tb"), dxn=(dxn, "tb"), w=(w_hh, ("",)), g=(g, "b"),
                           do=(d_out, "tb"), ga=(gates, "tb"), h=(hs, ("slot", "b"))),
            gc_ptr=g, s_gc_b=0, c_ptr=g, s_c_slot=0, s_c_b=0,
            len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H, LSTM=False,
            RNN=0, ACC=TL_ACC[acc], HAS_LENGTHS=lengths is not None, REVERSE=reverse,
            IEEE=ieee, UPCAST=upcast, dcs_ptr=g, s_dcs_t=0, s_dcs_b=0, HAS_DCS=False,
            **hm), B, dev)
    elif B > 0:
        BB, BH, BK, warps = plan_blocks(kplan, not ieee)
        args = dict(
            **pointer_args(dg=(dg, "tb"), dxn=(dxn, "tb"), w=(w_hh, ("",)), g=(g, "b"),
                           do=(d_out, "tb"), ga=(gates, "tb"), h=(hs, ("slot", "b"))),
            len_ptr=lengths if lengths is not None else hs, T=T, B=B, H=H,
            HAS_LENGTHS=lengths is not None, REVERSE=reverse, BLOCK_B=BB, BLOCK_H=BH,
            BLOCK_K=BK, IEEE=ieee, UPCAST=upcast, **hm)
        n_tiles = triton.cdiv(B, BB) * triton.cdiv(H, BH)
        run_steps(gru_bwd_kernel, args, T, [({}, n_tiles)], kplan["kernel"] == "sequence", dev,
                  warps, kplan["stages"])

    dgh = dg[:T]
    dgi = torch.cat([dgh[..., :2 * H], dxn], dim=-1)
    t_first = T - 1 if reverse else 0
    prev_h = hs[1:] if reverse else hs[:T]
    if rs is not None:  # what restarts sent to the initial state
        prev_h = restarted_prev(prev_h, rs, hs[first_slot(T, reverse, True)])
        g = g + g_restarts
    return weight_grads(x, dgi, dgh, prev_h, w_ih, w_hh, needs, extra_dh0=(g, dg[t_first]),
                        hmask=hmask)
