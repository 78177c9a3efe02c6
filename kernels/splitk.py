"""The weight-stationary backward split over K (the gate rows of W_hh), LSTM and GRU.

Where no tiling of the backward (kernels/stationary.py) keeps its W_hh slice on chip within
the SMs (16-bit and fp32 at B >= 128 and H = 1024, fp32 from B = 32; larger batches at
H = 256-768), it streamed W_hh from L2 every step, at 0.24-0.66x cuDNN's training step on
the H200 (bf16 LSTM B=128 H=1024: ~70 us a step of backward against cuDNN's ~29; B=512:
~215 against ~40). Its weight-stationary form cannot
help by itself: the backward's product is dh_t (B, H) = dgates_{t+1} (B, G*H) . W_hh
(G*H, H), and a program owning U units of dh reads every gate column of its batch rows a
step, so the broadcast of dgates is n_u * B * G * H elements a step whatever the batch
groups: at U = 8 (what 128 programs allow at H = 1024) 128 MB a step (bf16 B=128), five
times what the forward reads of h.

Split over K, a program keeps the rows of W_hh of a K part for U units, (G * KC, U) with
KC = H / S of each gate, and S programs share a tile of units: with U = 64 and S = 4 the
broadcast is 16 unit groups' worth, 16 MB (bf16 B=128 H=1024), and the partial products
add 2 * S * B * H fp32 (4 MB) of traffic: 21 MB a step against 64-128 MB (plan._splitk
takes the tiling with the least).

Per step, program (i_b, i_u, i_k):
1. partial (BB, U) = dgates_{t+1}[rows, gate g's part i_k] . W_hh[g*H + part i_k, units],
   summed over the gates (one dot a gate: (PR, KC) . (KC, U), the BB rows as BB / PR
   such products one after another), stored in the partials buffer (S, B, H) at slot i_k;
2. the S programs of the tile meet at the tile's own barrier;
3. each sums the S partials of its RB = BB / S rows (rows i_k * RB on, in a fixed order:
   deterministic, no atomics) and runs the rest of the step on them
   (stationary.bwd_update: the state gradient, the gate gradients of step t); where S is
   not a power of two (3 parts of 256 at H = 768), RB is BB / S rounded up to a power of
   two and the first BB / RB programs of the tile run the update, the others a row group
   past B, every access masked off (_row_group); past 64 rows (KSPLIT_UPDATE_ROWS) the RB
   rows run as passes of UR = 32, one after another (plan.splitk_pass_rows);
4. the programs of the batch group meet at its barrier (dgates_t is complete).
The partials buffer is reused every step: a program writes its slot again only after the
batch group's barrier, which every reader of the slot passed after reading it.

Not paired (one direction a launch) and not for the plain RNN (one gate: its backward
reads no more than its forward; it stays weight-stationary at these sizes).
RESIDENT: one tile a program, W loaded once. Otherwise (the interpreter: one program; or
forced past the SMs) a program loops over the tiles twice a step, the products then the
updates, with a grid barrier after each, re-loading each tile's W part.
"""
from __future__ import annotations

import triton
import triton.language as tl

from fusedrnn.kernels.common import (barrier_flags, barrier_words, bwd_step, dot, empty,
                                     grid_barrier, group_barrier, init_slot, launch_sequence)
from fusedrnn.kernels.stationary import _prefetch_bwd, bwd_update, red_arrival


@triton.jit
def _w_part(w_ptr, s_w, i_u, i_k, g, H, U: tl.constexpr, KC: tl.constexpr):
    """(KC, U): W_hh[g*H + i_k*KC + k, i_u*U + u], zero past H (a GRU's gate 3 unused)."""
    o_k = i_k * KC + tl.arange(0, KC)[:, None]
    o_u = i_u * U + tl.arange(0, U)[None, :]
    m = (o_k < H) & (o_u < H)
    return tl.load(w_ptr + (g * H + o_k).to(tl.int64) * s_w + o_u, mask=m, other=0.0)


@triton.jit
def _w_parts(w_ptr, s_w, i_u, i_k, H, G: tl.constexpr, U: tl.constexpr, KC: tl.constexpr):
    w0 = _w_part(w_ptr, s_w, i_u, i_k, 0, H, U, KC)
    w1 = _w_part(w_ptr, s_w, i_u, i_k, 1, H, U, KC)
    w2 = _w_part(w_ptr, s_w, i_u, i_k, 2, H, U, KC)
    w3 = w0
    if G == 4:
        w3 = _w_part(w_ptr, s_w, i_u, i_k, 3, H, U, KC)
    return w0, w1, w2, w3


@triton.jit
def _dg_part(p_dg, m_b, i_k, g, H, KC: tl.constexpr, w):
    """(BB, KC): dgates_{t+1}[rows, g*H + i_k*KC + k] in w's dtype, zero past H."""
    o_k = i_k * KC + tl.arange(0, KC)[None, :]
    return tl.load(p_dg + g * H + o_k, mask=m_b[:, None] & (o_k < H), other=0.0).to(w.dtype)


@triton.jit
def _gate_dot(x, w, acc, zero, IEEE: tl.constexpr, UPCAST: tl.constexpr,
              CHAINED: tl.constexpr):
    """acc plus gate's product x . w: continuing acc's chain, or (not CHAINED) a chain of
    its own from ``zero``, added after (see _partial)."""
    if CHAINED:
        acc = dot(x, w, acc, IEEE, UPCAST)
    else:
        acc += dot(x, w, zero, IEEE, UPCAST)
    return acc


@triton.jit
def _partial(w0, w1, w2, w3, dg_ptr, s_dg_t, s_dg_b, part_ptr, s_p_k, s_p_b, i_u, i_b, i_k,
             t_next, B, H, G: tl.constexpr, U: tl.constexpr, BB: tl.constexpr,
             KC: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
             AHEAD: tl.constexpr, CHAINED: tl.constexpr):
    """Step 1 of the module doc: the tile's partial product over K part i_k, stored. AHEAD:
    every gate's operand loaded before the first MMA (one L2 round trip a step)."""
    o_b = i_b * BB + tl.arange(0, BB)
    m_b = o_b < B
    o_b64 = o_b.to(tl.int64)
    p_dg = dg_ptr + t_next.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b
    x0 = _dg_part(p_dg, m_b, i_k, 0, H, KC, w0)
    x1, x2, x3 = x0, x0, x0
    if AHEAD:
        x1 = _dg_part(p_dg, m_b, i_k, 1, H, KC, w1)
        x2 = _dg_part(p_dg, m_b, i_k, 2, H, KC, w2)
        if G == 4:
            x3 = _dg_part(p_dg, m_b, i_k, 3, H, KC, w3)
    # CHAINED: one accumulator, each gate's product continuing the last one's. Triton lays a
    # chain of dots with every warp along the rows, so below 16 rows a warp (64 a
    # warpgroup's wgmma) the warps repeat each other's MMAs (bf16 BB=64 on 8 warps: 112
    # wgmma a warp a step where the work is 64). Otherwise each gate's product is its own
    # chain, from a zero computed at run time (a literal zero Triton folds into the last
    # product's accumulator), laid over rows and columns, and summed after: G
    # accumulators, chains a quarter as deep.
    if CHAINED:
        zero = tl.zeros((BB, U), dtype=ACC)
    else:
        zero = tl.zeros((BB, U), dtype=ACC) + H.to(ACC) * 0.0
    acc = dot(x0, w0, zero, IEEE, UPCAST)
    if not AHEAD:
        x1 = _dg_part(p_dg, m_b, i_k, 1, H, KC, w1)
    acc = _gate_dot(x1, w1, acc, zero, IEEE, UPCAST, CHAINED)
    if not AHEAD:
        x2 = _dg_part(p_dg, m_b, i_k, 2, H, KC, w2)
    acc = _gate_dot(x2, w2, acc, zero, IEEE, UPCAST, CHAINED)
    if G == 4:
        if not AHEAD:
            x3 = _dg_part(p_dg, m_b, i_k, 3, H, KC, w3)
        acc = _gate_dot(x3, w3, acc, zero, IEEE, UPCAST, CHAINED)
    o_u = i_u * U + tl.arange(0, U)
    p = part_ptr + i_k * s_p_k + o_b64[:, None] * s_p_b + o_u[None, :]
    tl.store(p, acc, mask=m_b[:, None] & (o_u < H)[None, :])


@triton.jit
def _sum_partials(part_ptr, s_p_k, s_p_b, i_u, i_r, B, H, U: tl.constexpr, RB: tl.constexpr,
                  S: tl.constexpr):
    """Step 3: (RB, U), the sum over the S partials of rows i_r*RB.., slot 0 first."""
    o_b = i_r * RB + tl.arange(0, RB)
    o_u = i_u * U + tl.arange(0, U)
    m = (o_b < B)[:, None] & (o_u < H)[None, :]
    p = part_ptr + o_b.to(tl.int64)[:, None] * s_p_b + o_u[None, :]
    acc = tl.load(p, mask=m, other=0.0)
    for k in tl.static_range(1, S):
        acc += tl.load(p + k * s_p_k, mask=m, other=0.0)
    return acc


@triton.jit
def _row_group(i_b, i_k, B, S: tl.constexpr, RB: tl.constexpr, BB: tl.constexpr):
    """The group of RB rows (rows i_r * RB on) whose update K part i_k of batch group i_b
    runs: its share of the tile's BB rows, or, past the BB / RB shares (S not a power of
    two), the first group wholly past B: every load and store of the update masked off."""
    NRB: tl.constexpr = BB // RB
    i_r = i_b * NRB + i_k
    if NRB < S:
        i_r = tl.where(i_k < NRB, i_r, tl.cdiv(B, RB))
    return i_r


@triton.jit(do_not_specialize=["T", "z_seed"])
def splitk_bwd_kernel(
    dg_ptr, s_dg_t, s_dg_b,       # recurrent pre-activation gradients (T+1, B, G*H)
    dxn_ptr, s_dxn_t, s_dxn_b,    # GRU: gradient of the input's n pre-activation (T, B, H)
    w_ptr, s_w,                   # W_hh (G*H, H)
    g_ptr, s_g_b,                 # carried gradient of the state (B, H), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, H)
    gc_ptr, s_gc_b,               # LSTM: carried gradient of the cell state (B, H), ACC
    ga_ptr, s_ga_t, s_ga_b,       # saved gates (T, B, 4H), ACC
    c_ptr, s_c_slot, s_c_b,       # LSTM: cell history
    h_ptr, s_h_slot, s_h_b,       # GRU: state history
    dcs_ptr, s_dcs_t, s_dcs_b,    # LSTM, HAS_DCS: gradient of the returned cell states
    hm_ptr, s_hm_b,               # HAS_HMASK: variational mask of h_{t-1} (B, H)
    rs_ptr, s_rs_t,               # HAS_RESETS: restart flags (T + 1, B), int8
    part_ptr, s_p_k, s_p_b,       # partial products (S, B, H), ACC
    len_ptr, z_seed, z_th_h, z_th_c,
    sem_ptr, err_ptr,             # barrier counters: n_bg batch groups, then n_bg * n_u
                                  # tiles; error word
    T, B, H,
    LSTM: tl.constexpr, ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_DCS: tl.constexpr,
    REVERSE: tl.constexpr, RESIDENT: tl.constexpr, U: tl.constexpr, BB: tl.constexpr,
    KC: tl.constexpr, S: tl.constexpr,
    RB: tl.constexpr,             # rows of the update a program runs (plan.splitk_update_rows)
    UR: tl.constexpr,             # ... as RB / UR passes of UR rows (plan.splitk_pass_rows)
    PR: tl.constexpr,             # rows of one partial product: the tile's BB rows as BB / PR
                                  # of them, one after another a step
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
    ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
    AHEAD: tl.constexpr = False,  # every gate's dgates part loaded before the product
    PREFETCH: tl.constexpr = False,  # CUDA: the update's inputs to L1 under the product
    CHAINED: tl.constexpr = False,  # the gates' products as one accumulator chain (_partial)
    RED: tl.constexpr = False,    # CUDA: both barriers arrive with a red.release
):
    G: tl.constexpr = 4 if LSTM else 3
    NR: tl.constexpr = BB // PR
    NQ: tl.constexpr = RB // UR   # passes of the update
    REV: tl.constexpr = 1 if REVERSE else 0
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_u, n_bg = tl.cdiv(H, U), tl.cdiv(B, BB)
    n_tiles = n_bg * n_u * S      # tile = (i_b * n_u + i_u) * S + i_k
    init = init_slot(T, REV, True)
    if RESIDENT:
        i_k, i_u, i_b = pid % S, (pid // S) % n_u, pid // (S * n_u)
        w0, w1, w2, w3 = _w_parts(w_ptr, s_w, i_u, i_k, H, G, U, KC)
    for s in range(0, T):
        t, t_next, rd, wr = bwd_step(s, T, REVERSE)
        if RESIDENT:
            i_r = _row_group(i_b, i_k, B, S, RB, BB)
            for q in tl.range(0, NQ, num_stages=1):  # (a pass's rows at a time, as updated)
                _prefetch_bwd(i_u, i_r * NQ + q, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr,
                              s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot, s_h_b,
                              gc_ptr, s_gc_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, t, rd, wr,
                              B, H, LSTM, 0, HAS_DCS, HAS_LENGTHS, U, UR, PREFETCH)
            for j in tl.range(0, NR, num_stages=1):
                _partial(w0, w1, w2, w3, dg_ptr, s_dg_t, s_dg_b, part_ptr, s_p_k, s_p_b,
                         i_u, i_b * NR + j, i_k, t_next, B, H, G, U, PR, KC, ACC, IEEE,
                         UPCAST, AHEAD, CHAINED)
            group_barrier(sem_ptr + n_bg + i_b * n_u + i_u, S, i_k == 0, err_ptr, s,
                          ASM_ACQUIRE, SPIN_LIMIT, RED)
            for q in tl.range(0, NQ, num_stages=1):  # (rows i_r*RB + q*UR on: group i_q)
                i_q = i_r * NQ + q
                acc = _sum_partials(part_ptr, s_p_k, s_p_b, i_u, i_q, B, H, U, UR, S)
                bwd_update(acc, i_u, i_q, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t,
                           s_dxn_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, gc_ptr, s_gc_b,
                           ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot,
                           s_h_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, hm_ptr, s_hm_b, z_seed,
                           z_th_h, z_th_c, REV, rs_ptr, s_rs_t, init, t, t_next, rd, wr, B,
                           H, LSTM, 0, ACC, HAS_LENGTHS, HAS_DCS, U, UR, HAS_HMASK, ZONEOUT,
                           HAS_RESETS)
            group_barrier(sem_ptr + i_b, n_u * S, pid % (n_u * S) == 0, err_ptr, s,
                          ASM_ACQUIRE, SPIN_LIMIT, RED)
        else:
            for tile in range(pid, n_tiles, n_progs):
                i_k, i_u, i_b = tile % S, (tile // S) % n_u, tile // (S * n_u)
                v0, v1, v2, v3 = _w_parts(w_ptr, s_w, i_u, i_k, H, G, U, KC)
                for j in tl.range(0, NR, num_stages=1):
                    _partial(v0, v1, v2, v3, dg_ptr, s_dg_t, s_dg_b, part_ptr, s_p_k, s_p_b,
                             i_u, i_b * NR + j, i_k, t_next, B, H, G, U, PR, KC, ACC, IEEE,
                             UPCAST, AHEAD, CHAINED)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
            for tile in range(pid, n_tiles, n_progs):
                i_k, i_u, i_b = tile % S, (tile // S) % n_u, tile // (S * n_u)
                i_r = _row_group(i_b, i_k, B, S, RB, BB)
                for q in tl.range(0, NQ, num_stages=1):
                    i_q = i_r * NQ + q
                    acc = _sum_partials(part_ptr, s_p_k, s_p_b, i_u, i_q, B, H, U, UR, S)
                    bwd_update(acc, i_u, i_q, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t,
                               s_dxn_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, gc_ptr, s_gc_b,
                               ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, h_ptr,
                               s_h_slot, s_h_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, hm_ptr,
                               s_hm_b, z_seed, z_th_h, z_th_c, REV, rs_ptr, s_rs_t, init, t,
                               t_next, rd, wr, B, H, LSTM, 0, ACC, HAS_LENGTHS, HAS_DCS, U,
                               UR, HAS_HMASK, ZONEOUT, HAS_RESETS)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)


def launch(one) -> None:
    """One direction's backward (a pairing.Launch whose plan has ``ksplit`` > 1): the
    stationary backward's arguments plus the partials buffer and the tiles' counters."""
    plan, dev = one.plan, one.device
    S, BB, U = plan["ksplit"], plan["BB"], plan["U"]
    args = {k: v for k, v in one.args.items() if k != "RNN"}
    # (fp32, or fp64 for fp64 layers: the saved gates' dtype)
    part = empty(S, one.B, args["H"], dtype=args["ga_ptr"].dtype, device=dev)
    n_bg, n_u = triton.cdiv(one.B, BB), triton.cdiv(args["H"], U)
    sem, err = barrier_words(n_bg * (1 + n_u), dev)
    programs = plan["programs"]
    launch_sequence(splitk_bwd_kernel, programs, dict(
        **args, part_ptr=part, s_p_k=part.stride(0), s_p_b=part.stride(1), sem_ptr=sem,
        err_ptr=err, RESIDENT=programs == plan["tiles"], U=U, BB=BB, KC=plan["KC"], S=S,
        RB=plan["update_rows"], UR=plan["pass_rows"],
        **barrier_flags(dev), AHEAD=plan["x_ahead"], PREFETCH=dev.type == "cuda",
        CHAINED=plan["chained"], PR=plan["product_rows"], RED=red_arrival(one),
        num_warps=plan["warps_bwd"]), err, dev, "split-K backward")
