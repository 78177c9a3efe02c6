"""Weight-stationary sequence kernels, LSTM, GRU and plain RNN, forward and backward (GUIDE
section 3).

One launch runs all T steps of a layer pass. Program (i_u, i_b) owns U hidden units (all
gate rows of them: 4U rows of W_hh for LSTM, 3U for GRU, U for the plain RNN, whose plan
takes four times the units) for BB batch rows. Before the time
loop it loads its slice of W_hh once; every step it only reads the state of its batch rows
(the broadcast of h_{t-1}, or of the gate gradients in backward) and its own inputs, so W
never comes from L2 again. In standard Triton the forward's hoisted slice lives in shared
memory and is re-read per step with ldmatrix, which costs shared-memory bandwidth only.

Forward, per step: gates^T (4U, BB) = W_slice (4U, K) . h_{t-1}^T (K, BB), the gate rows
as the MMA's M side so U can be small. K = H is NK chunks of KC columns (768 = 3 x 256),
each its own dot, and each chunk is split in KS runs of KC/KS columns (plan.k_runs): the
product is a dot batched over the runs, (KS, 4U, KC/KS) . (KS, KC/KS, BB), one warp a run,
summed over the runs after. So each warp's accumulator chain is K/(16 KS) MMAs deep (12
at H=768, against 48 with the whole K on each warp: a dependent HMMA waits ~33 cycles).
The gate tile is transposed and split into the four (BB, U) gate blocks, and the pointwise
update is the streaming kernels' own (lstm.lstm_update_fwd, gru.gru_update_fwd): the same
math and stores.

Backward, per step: dh (BB, U) = sum over gates g and chunks c of dgates_{t+1} (BB, KC) .
W_hh[g*H + c*KC : ..., units] (KC, U): each program keeps the columns of W_hh its units'
state gradient needs, as NK chunks of (4 KS, KC/KS, U) in shared memory (gate g's run s
at g*KS + s), and runs the product as a dot batched over the gates (a GRU's
three padded to four) and the KS runs of each chunk, so each (gate, run) has its own
warp and each of its K chunks its own accumulator chain, KC/(16 KS) deep (_chunks_dot);
they are summed after. (One warp for all gates ran them as one chain, 4H/16 dependent
MMAs a step, with the whole slice in its registers: 3.4 KB of stack at H=768.) dgates are
read in the gate gradients' dtype, 16-bit for a 16-bit layer (common.gate_grad_dtype),
every chunk before the first MMA where shared memory allows (plan.x_ahead), as the
forward reads h_{t-1}.
Then the gate gradients of step t, as in the streaming kernels (lstm_update_bwd,
gru_update_bwd).

Warps: Triton 3.6 lays a batched dot's warps all along its batch, so the batch is the
warp count (plan.stationary_warps): KS forward, 4 KS backward (the plain RNN: KS).
No atomics in the math: deterministic.

Barriers: each batch group has its own counter (its programs exchange only its rows of h),
so more batch groups split the broadcast instead of multiplying it. RESIDENT (one tile per
program, the plan's normal case) is what keeps W on chip; otherwise (forced with more
tiles than programs, or under the interpreter, where programs run one after another and
the grid is one program) a program loops over the tiles, re-loading each slice, with a
grid barrier. Where the plan says so (not yet by default): RED, the batch groups' barriers
arrive with a red.release (common.group_barrier); LL, the resident forward sends h as
words that carry their step and meets at no barrier at all (kernels/ll.py).

The partial products of a batched dot (the forward's runs of K, the backward's gates and
runs, a warp each) are summed by _sum_runs, in registers after one layout conversion.

CLOCK (bench.phases only): each step's clocks at its operands, product, update and
barrier (kernels/stepclock.py); off, the kernels read no clock.

SPLIT (the forward, plan.sub_rows: fp32 at 64 rows a program, and 128 or 256 rows where no
tiling of at most 64 is resident): a tile's batch rows as SPLIT sub-tiles of BB rows, each a
whole product and update, one after another a step, with the one slice; a batch group (its
barrier counter) is the tile's BB * SPLIT rows. The sub-tiles are a loop, not unrolled:
unrolled (fp32 B=64 H=768 and 1024, Triton 3.6, sm_90) the two bodies' values overlapped
and spilled 128-430 B; as a loop, 0-24 B and no spill access in the step. The loop is not
pipelined (num_stages=1): pipelined, Triton staged two sub-tiles' h in shared memory at
once (304 KB).

PROJ (the LSTM's proj_size; plan.proj_tiling): two phases a step, each ending at the batch
group's barrier. Forward: the state is P wide, so the gates' product runs over K = P, and
the update writes m_t = o * tanh(c_t) (hr_ptr) instead of h_t; then unit group i's
program makes h_t for P units [i PROJ, (i + 1) PROJ) of its batch rows, W_hr's rows
(PROJ, H) . m_t^T (H, BB), those rows of W_hr loaded once before the time loop as a plain
RNN's W_hh (_proj_tile, the same chunks and runs of K). Backward: first the gradient of
h_t for P units [i PROJ, (i + 1) PROJ), dgates_{t+1} . W_hh[:, those units] (the product
without a projection on PROJ columns, on chip; _proj_bwd_tile), to dhp with the output's
gradient; then the gate gradients of the program's own U units from all of dhp_t . W_hr[:,
units] (W_hr's columns on chip, as the backward's batch of one gate; _proj_gates_bwd_tile).
Not with LL, RED, the wide tiles nor split-K (the plan's).

PAIRED: both directions of a bidirectional layer in one launch (kernels/pairing.py drives
the two launchers): programs [0, P) run the forward direction and [P, 2P) the reverse one,
each with its own buffers and barrier counters, planned on half the SMs each.
"""
from __future__ import annotations

import triton
import triton.language as tl

from fusedrnn.kernels import ll, stepclock
from fusedrnn.kernels.common import (any_restart, barrier_flags, barrier_words, bwd_step,
                                     divert, dot, first_slot, fwd_step, grid_barrier,
                                     group_barrier, init_slot, launch_sequence, prefetch,
                                     restart_flags, state_mask, tile_offsets)
from fusedrnn.kernels.gru import gru_update_bwd, gru_update_fwd
from fusedrnn.kernels.lstm import lstm_update_bwd, lstm_update_fwd, proj_bwd_store, proj_store
from fusedrnn.kernels.rnn import rnn_update_bwd, rnn_update_fwd


# ----------------------------------------------------------------------------------------
# the slices of W_hh a program keeps, and the per-step products with them
# ----------------------------------------------------------------------------------------
@triton.jit
def _w_chunk(w_ptr, s_w, i_u, c, H, K, G: tl.constexpr, U: tl.constexpr, KC: tl.constexpr,
             ROWS: tl.constexpr, KS: tl.constexpr = 1):
    """Chunk c (columns, or rows, c*KC ..) of a program's slice of W_hh (G*H, K), K the
    state's width (H, or P with a projection); or of W_hr (P, H) as one gate (G = 1), the
    arguments H = P and K = H. H bounds a gate's rows, K the columns.

    ROWS (forward): (KS, 4U, KC / KS), the chunk's columns split in KS runs (s, ., k) =
    column c*KC + s*KC/KS + k; row r is gate r // U of unit i_u*U + r % U (a GRU's gate 3
    is zero); a plain RNN (G = 1): (KS, U, KC / KS), row r unit i_u*U + r.
    Otherwise (backward): (GP*KS, KC/KS, U), element (g*KS + s, k, u) = W_hh[g*H + c*KC +
    s*KC/KS + k, i_u*U + u], the gates as a batch of GP = 4 (a GRU's gate 3 zero), or 1
    for the plain RNN, each in KS runs; columns past K are zero."""
    if ROWS:
        KQ: tl.constexpr = KC // KS
        o_k = (c * KC + tl.arange(0, KS)[:, None, None] * KQ
               + tl.arange(0, KQ)[None, None, :])                      # (KS, 1, KQ)
        if G == 1:
            r = tl.arange(0, U)
            gate, unit = r * 0, i_u * U + r
        else:
            r = tl.arange(0, 4 * U)
            gate, unit = r // U, i_u * U + r % U
        m = ((gate < G) & (unit < H))[None, :, None] & (o_k < K)
        p = w_ptr + (gate * H + unit).to(tl.int64)[None, :, None] * s_w + o_k
    else:
        GP: tl.constexpr = 1 if G == 1 else 4
        KQ: tl.constexpr = KC // KS
        o_j = tl.arange(0, GP * KS)[:, None, None]
        o_g = o_j // KS
        o_k = c * KC + (o_j % KS) * KQ + tl.arange(0, KQ)[None, :, None]  # (GP*KS, KQ, 1)
        o_u = i_u * U + tl.arange(0, U)[None, None, :]
        m = (o_g < G) & (o_k < H) & (o_u < K)
        p = w_ptr + (o_g * H + o_k).to(tl.int64) * s_w + o_u
    return tl.load(p, mask=m, other=0.0)


@triton.jit
def _w_chunks(w_ptr, s_w, i_u, H, K, G: tl.constexpr, U: tl.constexpr, KC: tl.constexpr,
              NK: tl.constexpr, ROWS: tl.constexpr, KS: tl.constexpr = 1):
    """The slice as NK chunks (repeats of chunk 0 past NK, never used)."""
    w0 = _w_chunk(w_ptr, s_w, i_u, 0, H, K, G, U, KC, ROWS, KS)
    w1, w2, w3 = w0, w0, w0
    if NK > 1:
        w1 = _w_chunk(w_ptr, s_w, i_u, 1, H, K, G, U, KC, ROWS, KS)
    if NK > 2:
        w2 = _w_chunk(w_ptr, s_w, i_u, 2, H, K, G, U, KC, ROWS, KS)
    if NK > 3:
        w3 = _w_chunk(w_ptr, s_w, i_u, 3, H, K, G, U, KC, ROWS, KS)
    return w0, w1, w2, w3


@triton.jit
def _chunk_x(w, p_x, m_b, c, H, KC: tl.constexpr, ROWS: tl.constexpr, p_m=0,
             HAS_MASK: tl.constexpr = False, p_x0=0, b_rs=0, HAS_RESETS: tl.constexpr = False,
             G: tl.constexpr = 4, pre=0, HAS_PRE: tl.constexpr = False):
    """The step's operand for chunk c, in w's dtype, laid out for _chunk_mma with w.

    ROWS (forward): x^T chunk c as KS runs (KS, KC/KS, BB), KS = w.shape[0]; p_x (1, BB)
    at the batch rows of x (times the same block of a mask at p_m where HAS_MASK: the
    variational mask of h_{t-1}; the initial state at p_x0 in the columns b_rs marks where
    HAS_RESETS: restarts); HAS_PRE: x^T chunk c as ``pre`` holds it (the decoded LL words,
    _operand), not loaded.
    Otherwise (backward): x chunk c of every gate in KS runs (GP*KS, BB, KC/KS), p_x
    (1, BB, 1) at gate 0 of the batch rows of x, gate g H columns on."""
    if ROWS:
        KS: tl.constexpr = w.shape[0]
        KQ: tl.constexpr = KC // KS
        o_k = (c * KC + tl.arange(0, KS)[:, None, None] * KQ
               + tl.arange(0, KQ)[None, :, None])                      # (KS, KQ, 1)
        m_x = (o_k < H) & m_b[None, None, :]
        if HAS_PRE:
            b_x = pre
        else:
            b_x = tl.load(p_x + o_k, mask=m_x, other=0.0)
        if HAS_RESETS:
            if any_restart(b_rs):  # (the initial state, for the restarting columns only)
                b_x0 = tl.load(p_x0 + o_k, mask=m_x & b_rs[None, None, :], other=0.0)
                b_x = tl.where(b_rs[None, None, :], b_x0, b_x)
        if HAS_MASK:
            b_x = b_x * tl.load(p_m + o_k, mask=m_x, other=0.0).to(b_x.dtype)
    else:
        GPK: tl.constexpr = w.shape[0]
        KQ: tl.constexpr = w.shape[1]
        KS: tl.constexpr = KC // KQ
        o_j = tl.arange(0, GPK)[:, None, None]
        o_g = o_j // KS
        o_k = c * KC + (o_j % KS) * KQ + tl.arange(0, KQ)[None, None, :]  # (GP*KS, 1, KQ)
        m_x = (o_g < G) & m_b[None, :, None] & (o_k < H)
        b_x = tl.load(p_x + o_g * H + o_k, mask=m_x, other=0.0)
    return b_x.to(w.dtype)


@triton.jit
def _ll_at(p_l, m_b, c, H, KC: tl.constexpr, KS: tl.constexpr):
    """Where the LL words of x^T chunk c (KS, KC/KS, BB) are, from p_l (1, BB), and which."""
    KQ: tl.constexpr = KC // KS
    o_k = (c * KC + tl.arange(0, KS)[:, None, None] * KQ
           + tl.arange(0, KQ)[None, :, None])                          # (KS, KQ, 1)
    return p_l + o_k, (o_k < H) & m_b[None, None, :]


@triton.jit
def _ll_words(p_l, m_b, c, H, KC: tl.constexpr, KS: tl.constexpr, tag, LL: tl.constexpr):
    """The LL words of x^T chunk c as first loaded (from L2: another program wrote them),
    on time where masked."""
    p, m = _ll_at(p_l, m_b, c, H, KC, KS)
    return tl.load(p, mask=m, other=ll.on_time(tag, LL)[:, None, None], cache_modifier=".cg")


@triton.jit
def _ll_settle(y0, y1, y2, y3, p_l, m_b, c, H, KC: tl.constexpr, KS: tl.constexpr,
               N: tl.constexpr, tag, err_ptr, step, members, LL: tl.constexpr,
               SPIN_LIMIT: tl.constexpr):
    """Chunks c..c+N-1's words y0.. (N > 1: every chunk loaded ahead) once all carry the
    step's tag, waited for together (ll.settle_n)."""
    p0, m0 = _ll_at(p_l, m_b, c, H, KC, KS)
    p1, m1, p2, m2, p3, m3 = p0, m0, p0, m0, p0, m0
    if N > 1:
        p1, m1 = _ll_at(p_l, m_b, c + 1, H, KC, KS)
    if N > 2:
        p2, m2 = _ll_at(p_l, m_b, c + 2, H, KC, KS)
    if N > 3:
        p3, m3 = _ll_at(p_l, m_b, c + 3, H, KC, KS)
    return ll.settle_n(y0, y1, y2, y3, p0, p1, p2, p3, m0, m1, m2, m3, N, tag, err_ptr, step,
                       members, LL, SPIN_LIMIT)


@triton.jit
def _operand(w, y, c, p_x, m_b, H, KC: tl.constexpr, ROWS: tl.constexpr, p_m,
             HAS_MASK: tl.constexpr, p_x0, b_rs, HAS_RESETS: tl.constexpr, G: tl.constexpr,
             p_l, tag, err_ptr, step, members, LL: tl.constexpr, SPIN_LIMIT: tl.constexpr,
             READY: tl.constexpr):
    """_chunk_x, or with LL (the forward) from the words of h_{t-1} at p_l: y where READY
    (every chunk loaded ahead and waited for together), else loaded and waited for here."""
    if LL:
        if not READY:
            y = _ll_settle(_ll_words(p_l, m_b, c, H, KC, w.shape[0], tag, LL), y, y, y,
                           p_l, m_b, c, H, KC, w.shape[0], 1, tag, err_ptr, step, members,
                           LL, SPIN_LIMIT)[0]
        x = _chunk_x(w, p_x, m_b, c, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs, HAS_RESETS, G,
                     ll.decode(y, p_x.dtype.element_ty, LL), True)
    else:
        x = _chunk_x(w, p_x, m_b, c, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs, HAS_RESETS, G)
    return x


@triton.jit
def _chunk_mma(w, x, ACC: tl.constexpr, ROWS: tl.constexpr, IEEE: tl.constexpr,
               UPCAST: tl.constexpr, zero=0.0):
    """ROWS: w (KS, M, KC/KS) . x (KS, KC/KS, BB): (KS, M, BB), one run per warp.
    Otherwise (backward): x (GP*KS, BB, KC/KS) . w (GP*KS, KC/KS, U): (GP*KS, BB, U), one
    (gate, run) per warp. Their sums are the callers'. The accumulator starts at ``zero``
    (see _chunks_dot)."""
    if ROWS and w.shape[0] == 1:
        # one run (a wide tile, plan.k_runs, or a K of 16): a plain dot, (4U, KC) . (KC,
        # BB), its warps over M and N (a wide tile's: a wgmma on sm_90), reshaped from and
        # back to the runs' 3D shapes.
        # Both reshapes matter to the sm_90 builds (bf16 B=128 H=1024, 8 warps): from the
        # loads' (1, ., .), W comes to the MMA from registers (ldmatrix), where straight
        # from its load Triton fed the wgmma from shared memory by descriptor, with ~300
        # R2UR/UMOV of address arithmetic a step and 344-440 B of spills; and returned
        # 2D, its layout chain laid the 8 warps along the 64 rows (112 wgmma a warp a step
        # where the work is 64, 16-40 B of spills) where as (1, 4U, BB), summed like the
        # runs', they split the batch: 64, 239 registers, no spill (Triton 3.6: 254)
        acc = tl.zeros((w.shape[1], x.shape[2]), dtype=ACC) + zero
        acc = dot(tl.reshape(w, (w.shape[1], w.shape[2])),
                  tl.reshape(x, (x.shape[1], x.shape[2])), acc, IEEE, UPCAST)
        acc = tl.reshape(acc, (1, w.shape[1], x.shape[2]))
    elif ROWS:
        acc = tl.zeros((w.shape[0], w.shape[1], x.shape[2]), dtype=ACC) + zero
        acc = dot(w, x, acc, IEEE, UPCAST)
    else:
        acc = tl.zeros((w.shape[0], x.shape[1], w.shape[2]), dtype=ACC) + zero
        acc = dot(x, w, acc, IEEE, UPCAST)
    return acc


@triton.jit
def _chunks_dot(w0, w1, w2, w3, p_x, m_b, H, ACC: tl.constexpr, KC: tl.constexpr,
                NK: tl.constexpr, ROWS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                p_m=0, HAS_MASK: tl.constexpr = False, p_x0=0, b_rs=0,
                HAS_RESETS: tl.constexpr = False, G: tl.constexpr = 4,
                AHEAD: tl.constexpr = False, p_l=0, tag=0, err_ptr=0, step=0, members=0,
                LL: tl.constexpr = 0, SPIN_LIMIT: tl.constexpr = 0, ck=0,
                CLOCK: tl.constexpr = False, ASM: tl.constexpr = False):
    """The sum over the NK chunks.

    Triton folds tl.dot(a, b, 0) + acc into tl.dot(a, b, acc): the NK products become one
    chain of dependent MMAs on each warp, K/(16 KS) deep, each waiting out the last one's
    latency. The backward's chunks past the first start from a zero computed at run time,
    which Triton cannot fold: NK chains KC/(16 KS) deep, summed at the end (sm_90 builds,
    an in-order issue model of the step's SASS, HMMA latency 33 cycles: 5-13% fewer
    cycles, same registers, no spills). The forward keeps the one chain: split, its builds
    at BB=16 (with the whole K on each warp, before the runs) reached 255 registers and
    spilled 40-72 B inside the time loop (fp16 H=768, bf16 H=1024), and ptxas interleaves
    little across the chunks (each stages its h chunk through shared memory behind a block
    barrier); the runs shorten its chain four times instead.

    AHEAD (the forward, where plan.x_ahead finds the shared memory): every chunk's
    operand is loaded before the first MMA, one L2 round trip a step (chunk by chunk, the
    sm_90 builds issued the last chunk's loads among the MMAs of the one before).
    Otherwise each chunk is loaded as it goes.

    LL (the forward, plan ``ll``: 16 or 32, the state's bits): h_{t-1} comes as the words
    at p_l (kernels/ll.py) with ``tag``; AHEAD issues every chunk's first loads before
    waiting on any.

    CLOCK: stepclock slot 0 at ck once the operands loaded ahead (AHEAD: every chunk's;
    else the first) are in registers; ASM: on CUDA."""
    if ROWS:
        zero = 0.0
    else:
        zero = H.to(ACC) * 0.0
    KS: tl.constexpr = w0.shape[0]
    y0 = 0
    y1, y2, y3 = y0, y0, y0
    if LL and AHEAD:  # every chunk's first loads, then one wait for all of them
        y0 = _ll_words(p_l, m_b, 0, H, KC, KS, tag, LL)
        y1, y2, y3 = y0, y0, y0
        if NK > 1:
            y1 = _ll_words(p_l, m_b, 1, H, KC, KS, tag, LL)
        if NK > 2:
            y2 = _ll_words(p_l, m_b, 2, H, KC, KS, tag, LL)
        if NK > 3:
            y3 = _ll_words(p_l, m_b, 3, H, KC, KS, tag, LL)
        y0, y1, y2, y3 = _ll_settle(y0, y1, y2, y3, p_l, m_b, 0, H, KC, KS, NK, tag,
                                    err_ptr, step, members, LL, SPIN_LIMIT)
    x0 = _operand(w0, y0, 0, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs, HAS_RESETS, G,
                  p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT, AHEAD)
    x1, x2, x3 = x0, x0, x0
    if AHEAD:
        if NK > 1:
            x1 = _operand(w1, y1, 1, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          AHEAD)
        if NK > 2:
            x2 = _operand(w2, y2, 2, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          AHEAD)
        if NK > 3:
            x3 = _operand(w3, y3, 3, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          AHEAD)
    if CLOCK:  # (the last chunk's operand: its loads were issued last)
        x_last = x0
        if AHEAD and NK == 2:
            x_last = x1
        if AHEAD and NK == 3:
            x_last = x2
        if AHEAD and NK == 4:
            x_last = x3
        stepclock.stamp(ck, 0, step, x_last, CLOCK, ASM)
    acc = _chunk_mma(w0, x0, ACC, ROWS, IEEE, UPCAST)
    if NK > 1:
        if not AHEAD:
            x1 = _operand(w1, y1, 1, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          False)
        acc += _chunk_mma(w1, x1, ACC, ROWS, IEEE, UPCAST, zero)
    if NK > 2:
        if not AHEAD:
            x2 = _operand(w2, y2, 2, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          False)
        acc += _chunk_mma(w2, x2, ACC, ROWS, IEEE, UPCAST, zero)
    if NK > 3:
        if not AHEAD:
            x3 = _operand(w3, y3, 3, p_x, m_b, H, KC, ROWS, p_m, HAS_MASK, p_x0, b_rs,
                          HAS_RESETS, G, p_l, tag, err_ptr, step, members, LL, SPIN_LIMIT,
                          False)
        acc += _chunk_mma(w3, x3, ACC, ROWS, IEEE, UPCAST, zero)
    return acc


@triton.jit
def _sum_runs(acc):
    """(R, M, N) -> (M, N): the sum over the R (1, 2, 4 or 8) partial products of a batched
    dot, whose warps each hold one (forward: a run of K; backward: a gate's run).

    As tl.sum(acc, axis=0), the sm_90 builds reduced across the warps in rounds of four
    floats a thread: a shared-memory store, a block barrier, a load and a barrier each, 8
    rounds at fp16 B=16 H=768 (16 floats a thread), and the gate split after it 4 more,
    24 of the forward step's 31 block barriers. Moved to the last dimension and halved by
    tl.split, the partials come to each thread in one layout conversion and are summed in
    registers: 9 block barriers a step, 474 instructions a warp where there were 562,
    registers and shared memory no higher (the same MMAs and chains)."""
    R: tl.constexpr = acc.shape[0]
    M: tl.constexpr = acc.shape[1]
    N: tl.constexpr = acc.shape[2]
    x = tl.permute(acc, (1, 2, 0))                                     # (M, N, R)
    if R == 8:
        a, b = tl.split(tl.reshape(x, (M, N, 4, 2)))
        x = a + b
    if R >= 4:
        a, b = tl.split(tl.reshape(x, (M, N, 2, 2)))
        x = a + b
    if R >= 2:
        a, b = tl.split(x)
        x = a + b
    else:
        x = tl.reshape(x, (M, N))
    return x


@triton.jit
def _split_gates(acc, U: tl.constexpr, BB: tl.constexpr):
    """(4U, BB) gate rows -> four (BB, U) blocks, gates 0..3: column j of the transpose is
    gate j // U = 2a + b, unit j % U."""
    x = tl.reshape(tl.trans(acc), (BB, 2, 2, U))
    x = tl.permute(x, (0, 3, 1, 2))           # (BB, U, a, b)
    lo, hi = tl.split(x)                      # b = 0, 1: (BB, U, a)
    g0, g2 = tl.split(lo)
    g1, g3 = tl.split(hi)
    return g0, g1, g2, g3


# ----------------------------------------------------------------------------------------
# what a tile's pointwise update loads, prefetched under the step's product
# ----------------------------------------------------------------------------------------
# The forward update's loads (the input projection, the previous states, the lengths) do
# not depend on the product, but the sm_90 builds issue most of them after it: the block
# barriers that stage each K chunk through shared memory keep ptxas from hoisting them, so
# the step waited out one more L2 round trip (~300-600 cycles; the barrier's acquire
# invalidates L1 every step) after its last MMA. Prefetched to L1 before the product, their
# latency hides under it: 13 prefetches a thread, +10 registers, no spill (fp16 H=768
# B=16). A hint only: nothing changes where it is off. The backward's update has the same
# pattern (its inputs loaded after the product and the sum over its 8 warps): with its
# 4-warp gate product its builds took ~90 more registers with the prefetches and spilled
# 8-128 B; with 8 warps and dgates loaded ahead, 8-11 prefetches a thread, +6-46
# registers (fp16 B=16 H=768: 172-194, 3.9 and 3.6), no spill.
@triton.jit
def _prefetch_fwd(i_u, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot,
                  s_c_b, len_ptr, t, rd, B, H, G: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                  U: tl.constexpr, BB: tl.constexpr, ON: tl.constexpr,
                  HAS_PROJ: tl.constexpr = False):
    """One prefetch per batch row and buffer: a row's U units are one aligned line (U times
    the element size is a power of two <= 128 B, at a multiple of itself). With a
    projection the update reads no h (the projection's phase does)."""
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)
    m_b = o_b < B
    u0 = i_u * U
    p_x = xg_ptr + t.to(tl.int64) * s_xg_t + o_b * s_xg_b + u0
    for g in tl.static_range(G):
        prefetch(p_x + g * H, m_b, ON)
    if not HAS_PROJ:
        prefetch(h_ptr + rd.to(tl.int64) * s_h_slot + o_b * s_h_b + u0, m_b, ON)
    if G == 4:  # the LSTM's cell state
        prefetch(c_ptr + rd.to(tl.int64) * s_c_slot + o_b * s_c_b + u0, m_b, ON)
    if HAS_LENGTHS:
        prefetch(len_ptr + o_b, m_b, ON)


@triton.jit
def _prefetch_bwd(i_u, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b,
                  c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot, s_h_b, gc_ptr, s_gc_b, dcs_ptr,
                  s_dcs_t, s_dcs_b, len_ptr, t, rd, wr, B, H, LSTM: tl.constexpr,
                  RNN: tl.constexpr, HAS_DCS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                  U: tl.constexpr, BB: tl.constexpr, ON: tl.constexpr,
                  HAS_PROJ: tl.constexpr = False):
    """The backward update's inputs (lstm_update_bwd, gru_update_bwd, rnn_update_bwd and
    _bwd_tile's own): the carried state gradient, the output gradient, the saved gates,
    the LSTM's cell history, carried cell gradient and cell-state gradient, the GRU's
    state history, the lengths. One prefetch per batch row and buffer, as _prefetch_fwd.
    HAS_PROJ (the gates' phase with a projection): not the state's and the output's
    gradients, which are P wide (the projection's phase reads them)."""
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)
    m_b = o_b < B
    u0 = i_u * U
    t64 = t.to(tl.int64)
    if not HAS_PROJ:
        prefetch(g_ptr + o_b * s_g_b + u0, m_b, ON)
        prefetch(do_ptr + t64 * s_do_t + o_b * s_do_b + u0, m_b, ON)
    p_ga = ga_ptr + t64 * s_ga_t + o_b * s_ga_b + u0
    for g in tl.static_range(1 if RNN else 4):
        prefetch(p_ga + g * H, m_b, ON)
    if LSTM:
        prefetch(c_ptr + rd.to(tl.int64) * s_c_slot + o_b * s_c_b + u0, m_b, ON)
        prefetch(c_ptr + wr.to(tl.int64) * s_c_slot + o_b * s_c_b + u0, m_b, ON)
        prefetch(gc_ptr + o_b * s_gc_b + u0, m_b, ON)
        if HAS_DCS:
            prefetch(dcs_ptr + t64 * s_dcs_t + o_b * s_dcs_b + u0, m_b, ON)
    elif not RNN:  # the GRU's h_{t-1}
        prefetch(h_ptr + rd.to(tl.int64) * s_h_slot + o_b * s_h_b + u0, m_b, ON)
    if HAS_LENGTHS:
        prefetch(len_ptr + o_b, m_b, ON)


# ----------------------------------------------------------------------------------------
# one tile of one step
# ----------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(
    i_u, i_b, w0, w1, w2, w3,
    xg_ptr, s_xg_t, s_xg_b, bhn_ptr, h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot, s_c_b,
    out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, hm_ptr, s_hm_b,
    z_seed, z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init, t, rd, wr, B, H,
    ll_ptr, s_ll_slot, s_ll_b, s, err_ptr, members, hr_ptr, s_hr_t, s_hr_b, hr_t, K,
    LSTM: tl.constexpr, RNN: tl.constexpr, ACC: tl.constexpr, HAS_BIAS: tl.constexpr,
    SAVE: tl.constexpr, HAS_LENGTHS: tl.constexpr, U: tl.constexpr, BB: tl.constexpr,
    KC: tl.constexpr, NK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
    PREFETCH: tl.constexpr, X_AHEAD: tl.constexpr, LL: tl.constexpr, SPIN_LIMIT: tl.constexpr,
    ck, CLOCK: tl.constexpr, ASM: tl.constexpr, HAS_PROJ: tl.constexpr = False,
):
    """Step s (time t) of tile (i_u, i_b). LL: h_{t-1} from the words of state index s at
    ll_ptr, h_t sent as index s + 1 (kernels/ll.py); else from the history slot rd.
    CLOCK: stepclock slots 0 and 1 of the step's line ck. K: the state's width (the
    product's K). HAS_PROJ (the LSTM's proj_size, K = P): o * tanh(c_t) goes to hr_ptr at
    hr_t, and the projection's phase (_proj_tile) makes h_t."""
    G: tl.constexpr = 4 if LSTM else (1 if RNN else 3)
    _prefetch_fwd(i_u, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, c_ptr, s_c_slot,
                  s_c_b, len_ptr, t, rd, B, H, G, HAS_LENGTHS, U, BB, PREFETCH, HAS_PROJ)
    o_b = i_b * BB + tl.arange(0, BB)
    m_b = o_b < B
    p_h = h_ptr + rd.to(tl.int64) * s_h_slot + o_b.to(tl.int64)[None, :] * s_h_b
    p_h0 = h_ptr + init.to(tl.int64) * s_h_slot + o_b.to(tl.int64)[None, :] * s_h_b
    p_hm = hm_ptr + o_b.to(tl.int64)[None, :] * s_hm_b
    p_l = ll_ptr + (s % 2) * s_ll_slot + o_b.to(tl.int64)[None, :] * s_ll_b
    # (KS, 4U, BB): each of the KS runs of K on its own warps, summed after
    acc = _sum_runs(_chunks_dot(w0, w1, w2, w3, p_h, m_b, K, ACC, KC, NK, True, IEEE, UPCAST,
                             p_hm, HAS_HMASK, p_h0,
                             restart_flags(rs_ptr, s_rs_t, t, o_b, m_b, HAS_RESETS),
                             HAS_RESETS, G, X_AHEAD, p_l, ll.tag_of(s), err_ptr, s, members,
                             LL, SPIN_LIMIT, ck, CLOCK, ASM))
    stepclock.stamp(ck, 1, s, acc, CLOCK, ASM)
    if RNN:  # one gate: the (U, BB) tile is the pre-activation
        b_h = rnn_update_fwd(
            tl.trans(acc), i_u, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, out_ptr,
            s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, B, H, ACC, RNN, SAVE,
            HAS_LENGTHS, BB, U)
    elif LSTM:
        g0, g1, g2, g3 = _split_gates(acc, U, BB)
        b_h = lstm_update_fwd(
            g0, g1, g2, g3, i_u, i_b, xg_ptr, s_xg_t, s_xg_b, h_ptr, s_h_slot, s_h_b, c_ptr,
            s_c_slot, s_c_b, out_ptr, s_o_t, s_o_b, hr_ptr, s_hr_t, s_hr_b, ga_ptr, s_ga_t,
            s_ga_b, len_ptr, t, rd, wr, hr_t, B, H, z_seed, z_th_h, z_th_c, z_dir, rs_ptr,
            s_rs_t, init, ACC, HAS_PROJ, SAVE, HAS_LENGTHS, BB, U, ZONEOUT, HAS_RESETS)
    else:
        g0, g1, g2, g3 = _split_gates(acc, U, BB)
        b_h = gru_update_fwd(
            g0, g1, g2, i_u, i_b, xg_ptr, s_xg_t, s_xg_b, bhn_ptr, h_ptr, s_h_slot, s_h_b,
            out_ptr, s_o_t, s_o_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, rd, wr, B, H, rs_ptr,
            s_rs_t, init, z_seed, z_th_h, z_dir, ACC, HAS_BIAS, SAVE, HAS_LENGTHS, BB, U,
            HAS_RESETS, ZONEOUT)
    if LL:  # h_t, as stored in the history, to the batch group as state index s + 1
        o_u = i_u * U + tl.arange(0, U)
        p_w = (ll_ptr + ((s + 1) % 2) * s_ll_slot
               + o_b.to(tl.int64)[:, None] * s_ll_b + o_u[None, :])
        tl.store(p_w, ll.encode(b_h, ll.tag_of(s + 1), LL),
                 mask=m_b[:, None] & (o_u < H)[None, :])


@triton.jit
def _proj_tile(
    i_p, i_b, v0, v1, v2, v3, hr_ptr, s_hr_t, s_hr_b, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t,
    s_o_b, len_ptr, t, rd, wr, hr_t, B, P, H,
    ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr, PU: tl.constexpr, BB: tl.constexpr,
    PKC: tl.constexpr, PNK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    AHEAD: tl.constexpr,
):
    """The projection's phase of step t for tile (i_p, i_b): h_t^T (PU, BB) = W_hr[units]
    (PU, H) . m_t^T (H, BB), m_t = o * tanh(c_t) of every hidden unit (hr_ptr at hr_t,
    written by the batch group's programs before the barrier that ends the gates' phase).
    The product is the gates' own (_chunks_dot: the slice v0..v3 on chip, as a plain RNN's
    W_hh in runs of K); then the streaming kernel's stores (lstm.proj_store)."""
    o_b = i_b * BB + tl.arange(0, BB)
    p_m = hr_ptr + hr_t.to(tl.int64) * s_hr_t + o_b.to(tl.int64)[None, :] * s_hr_b
    acc = _sum_runs(_chunks_dot(v0, v1, v2, v3, p_m, o_b < B, H, ACC, PKC, PNK, True, IEEE,
                                UPCAST, G=1, AHEAD=AHEAD))
    proj_store(tl.trans(acc), i_p, i_b, h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b,
               len_ptr, t, rd, wr, B, P, ACC, HAS_LENGTHS, BB, PU)


@triton.jit
def _bwd_tile(
    i_u, i_b, w0, w1, w2, w3,
    dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot, s_h_b,
    dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, hm_ptr, s_hm_b, z_seed, z_th_h, z_th_c, z_dir,
    rs_ptr, s_rs_t, init, t, t_next, rd, wr, B, H,
    LSTM: tl.constexpr, RNN: tl.constexpr, ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_DCS: tl.constexpr,
    U: tl.constexpr, BB: tl.constexpr, KC: tl.constexpr, NK: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr, HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr, X_AHEAD: tl.constexpr, PREFETCH: tl.constexpr,
    s=0, ck=0, CLOCK: tl.constexpr = False, ASM: tl.constexpr = False,
):
    """Step s (time t) of tile (i_u, i_b). CLOCK: stepclock slots 0 and 1 at ck."""
    _prefetch_bwd(i_u, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b,
                  c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot, s_h_b, gc_ptr, s_gc_b, dcs_ptr,
                  s_dcs_t, s_dcs_b, len_ptr, t, rd, wr, B, H, LSTM, RNN, HAS_DCS,
                  HAS_LENGTHS, U, BB, PREFETCH)
    _, _, _, m_b, _, o_b64 = tile_offsets(i_u, i_b, H, B, U, BB)
    p_dg = dg_ptr + t_next.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b
    # dgates_{t+1} (BB, G*H) . W_hh[:, units] (G*H, U): each gate's product on its own
    # warp (a dot batched over the gates), then their sum
    G: tl.constexpr = 4 if LSTM else (1 if RNN else 3)
    acc = _sum_runs(_chunks_dot(w0, w1, w2, w3, p_dg[None, :, :], m_b, H, ACC, KC, NK, False,
                                IEEE, UPCAST, G=G, AHEAD=X_AHEAD, step=s, ck=ck,
                                CLOCK=CLOCK, ASM=ASM))
    stepclock.stamp(ck, 1, s, acc, CLOCK, ASM)
    bwd_update(acc, i_u, i_b, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, g_ptr, s_g_b,
               do_ptr, s_do_t, s_do_b, gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot,
               s_c_b, h_ptr, s_h_slot, s_h_b, dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, hm_ptr, s_hm_b,
               z_seed, z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init, t, t_next, rd, wr, B, H,
               LSTM, RNN, ACC, HAS_LENGTHS, HAS_DCS, U, BB, HAS_HMASK, ZONEOUT, HAS_RESETS)


@triton.jit
def _proj_bwd_tile(
    i_p, i_b, w0, w1, w2, w3, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    dhp_ptr, s_dhp_t, s_dhp_b, len_ptr, hm_ptr, s_hm_b, rs_ptr, s_rs_t, t, t_next, B, H, P,
    ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr, PU: tl.constexpr, BB: tl.constexpr,
    KC: tl.constexpr, NK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    HAS_HMASK: tl.constexpr, HAS_RESETS: tl.constexpr, X_AHEAD: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """The projection's phase of backward step t (its first) for tile (i_p, i_b) of the P
    projected units: the recurrent gradient of h_t, dgates_{t+1} (BB, 4H) . W_hh[:, P
    units] (4H, PU), the product without a projection on PU columns of W_hh (w0..w3, on
    chip), plus the carried gradient (times the variational mask), then with the output's
    gradient to dhp for the gates' phase (lstm.proj_bwd_store, the streaming kernel's).
    What it adds to the product (the carried and the output's gradients, the lengths) is
    prefetched to L1 first, as _prefetch_bwd does for the gates' update."""
    o_p, o_b, m_p, m_b, m, o_b64 = tile_offsets(i_p, i_b, P, B, PU, BB)
    u0 = i_p * PU
    prefetch(g_ptr + o_b64 * s_g_b + u0, m_b, PREFETCH)
    prefetch(do_ptr + t.to(tl.int64) * s_do_t + o_b64 * s_do_b + u0, m_b, PREFETCH)
    if HAS_LENGTHS:
        prefetch(len_ptr + o_b64, m_b, PREFETCH)
    p_dg = dg_ptr + t_next.to(tl.int64) * s_dg_t + o_b64[:, None] * s_dg_b
    acc = _sum_runs(_chunks_dot(w0, w1, w2, w3, p_dg[None, :, :], m_b, H, ACC, KC, NK, False,
                                IEEE, UPCAST, G=4, AHEAD=X_AHEAD))
    b_g = tl.load(g_ptr + o_b64[:, None] * s_g_b + o_p[None, :], mask=m, other=0.0)
    b_g = b_g + state_mask(acc, hm_ptr, s_hm_b, o_b, m_b, o_p, m_p, HAS_HMASK)
    proj_bwd_store(b_g, i_p, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, dhp_ptr, s_dhp_t,
                   s_dhp_b, len_ptr, rs_ptr, s_rs_t, t, t_next, B, P, HAS_LENGTHS, BB, PU,
                   HAS_RESETS)


@triton.jit
def _proj_gates_bwd_tile(
    i_u, i_b, q0, q1, q2, q3, dhp_ptr, s_dhp_t, s_dhp_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b,
    do_ptr, s_do_t, s_do_b, gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b,
    dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, z_seed, z_th_h, z_th_c, z_dir, rs_ptr, s_rs_t, init,
    t, t_next, rd, wr, B, H, P,
    ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_DCS: tl.constexpr, U: tl.constexpr,
    BB: tl.constexpr, PKC: tl.constexpr, PNK: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr, ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
    P_AHEAD: tl.constexpr, PREFETCH: tl.constexpr,
):
    """The gates' phase of backward step t with a projection, tile (i_u, i_b): the gradient
    reaching m_t = o * tanh(c_t) of its units, dhp_t (BB, P) . W_hr[:, units] (P, U), W_hr's
    columns on chip (q0..q3) as the backward's batch of one gate (_chunks_dot), then the
    gate gradients (lstm.lstm_update_bwd with its projection)."""
    _prefetch_bwd(i_u, i_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b,
                  c_ptr, s_c_slot, s_c_b, c_ptr, s_c_slot, s_c_b, gc_ptr, s_gc_b, dcs_ptr,
                  s_dcs_t, s_dcs_b, len_ptr, t, rd, wr, B, H, True, 0, HAS_DCS,
                  HAS_LENGTHS, U, BB, PREFETCH, True)
    _, _, _, m_b, _, o_b64 = tile_offsets(i_u, i_b, H, B, U, BB)
    p_x = dhp_ptr + t.to(tl.int64) * s_dhp_t + o_b64[:, None] * s_dhp_b
    acc = _sum_runs(_chunks_dot(q0, q1, q2, q3, p_x[None, :, :], m_b, P, ACC, PKC, PNK, False,
                                IEEE, UPCAST, G=1, AHEAD=P_AHEAD))
    lstm_update_bwd(acc, acc, i_u, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, gc_ptr, s_gc_b,
                    ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, dcs_ptr, s_dcs_t, s_dcs_b,
                    len_ptr, t, t_next, rd, wr, B, H, z_seed, z_th_h, z_th_c, z_dir, rs_ptr,
                    s_rs_t, init, True, HAS_LENGTHS, HAS_DCS, BB, U, ZONEOUT, HAS_RESETS)


@triton.jit
def bwd_update(
    acc, i_u, i_b,
    dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b, g_ptr, s_g_b, do_ptr, s_do_t, s_do_b,
    gc_ptr, s_gc_b, ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, h_ptr, s_h_slot, s_h_b,
    dcs_ptr, s_dcs_t, s_dcs_b, len_ptr, hm_ptr, s_hm_b, z_seed, z_th_h, z_th_c, z_dir,
    rs_ptr, s_rs_t, init, t, t_next, rd, wr, B, H,
    LSTM: tl.constexpr, RNN: tl.constexpr, ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_DCS: tl.constexpr, U: tl.constexpr, BB: tl.constexpr, HAS_HMASK: tl.constexpr,
    ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
):
    """The rest of a backward step for tile (i_u, i_b), given acc (BB, U) = dgates_{t+1} .
    W_hh[:, units]: the state gradient, then the gate gradients of step t (lstm_update_bwd,
    gru_update_bwd, rnn_update_bwd), as the streaming kernels. Shared with the split-K
    backward (kernels/splitk.py), whose acc is a sum of partial products."""
    o_h, o_b, m_h, m_b, m, o_b64 = tile_offsets(i_u, i_b, H, B, U, BB)
    b_g = tl.load(g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], mask=m, other=0.0)
    # carried + dgates_{t+1} W_hh (times the variational mask the product saw), (BB, U)
    b_gs = b_g + state_mask(acc, hm_ptr, s_hm_b, o_b, m_b, o_h, m_h, HAS_HMASK)
    b_gs = divert(b_gs, g_ptr + o_b64[:, None] * s_g_b + o_h[None, :], B, s_g_b, m,
                  restart_flags(rs_ptr, s_rs_t, t_next, o_b, m_b, HAS_RESETS), HAS_RESETS)
    if RNN:
        rnn_update_bwd(b_gs, i_u, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, do_ptr, s_do_t,
                       s_do_b, ga_ptr, s_ga_t, s_ga_b, len_ptr, t, B, H, HAS_LENGTHS, BB, U)
    elif LSTM:
        p_do = do_ptr + t.to(tl.int64) * s_do_t + o_b64[:, None] * s_do_b + o_h[None, :]
        b_dh = b_gs + tl.load(p_do, mask=m, other=0.0).to(ACC)
        lstm_update_bwd(b_dh, b_gs, i_u, i_b, dg_ptr, s_dg_t, s_dg_b, g_ptr, s_g_b, gc_ptr,
                        s_gc_b, ga_ptr, s_ga_t, s_ga_b, c_ptr, s_c_slot, s_c_b, dcs_ptr,
                        s_dcs_t, s_dcs_b, len_ptr, t, t_next, rd, wr, B, H, z_seed, z_th_h,
                        z_th_c, z_dir, rs_ptr, s_rs_t, init, False, HAS_LENGTHS, HAS_DCS, BB,
                        U, ZONEOUT, HAS_RESETS)
    else:
        gru_update_bwd(b_gs, i_u, i_b, dg_ptr, s_dg_t, s_dg_b, dxn_ptr, s_dxn_t, s_dxn_b,
                       g_ptr, s_g_b, do_ptr, s_do_t, s_do_b, ga_ptr, s_ga_t, s_ga_b, h_ptr,
                       s_h_slot, s_h_b, len_ptr, t, rd, B, H, rs_ptr, s_rs_t, init, z_seed,
                       z_th_h, z_dir, HAS_LENGTHS, BB, U, HAS_RESETS, ZONEOUT)


# ----------------------------------------------------------------------------------------
# both directions in one launch (PAIRED): programs [0, tiles) run the forward direction and
# [tiles, 2 tiles) the reverse one, each direction with its own buffers (same shapes and
# strides, so one set of strides serves both) and its own barrier counters. A reverse
# buffer is addressed as the forward one's pointer plus an element offset (r_*, computed
# by the launcher from the two addresses, as grouped GEMMs address their operands): plain
# pointer arithmetic, so the W slice's load stays hoisted out of the time loop, where
# choosing between two pointer arguments by branch let Triton sink it back in (and spill).
# ----------------------------------------------------------------------------------------
@triton.jit
def _fwd_step_dir(s, T, d, PAIRED: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr):
    """fwd_step of direction d: REVERSE's, or in a paired launch, forward for d = 0 and
    reverse for d = 1."""
    t, rd, wr = fwd_step(s, T, REVERSE, SAVE)
    if PAIRED:
        t_r, rd_r, wr_r = fwd_step(s, T, True, SAVE)
        rev = d == 1
        t, rd, wr = tl.where(rev, t_r, t), tl.where(rev, rd_r, rd), tl.where(rev, wr_r, wr)
    return t, rd, wr


@triton.jit
def _bwd_step_dir(s, T, d, PAIRED: tl.constexpr, REVERSE: tl.constexpr):
    t, t_next, rd, wr = bwd_step(s, T, REVERSE)
    if PAIRED:
        t_r, t_next_r, rd_r, wr_r = bwd_step(s, T, True)
        rev = d == 1
        t, t_next = tl.where(rev, t_r, t), tl.where(rev, t_next_r, t_next)
        rd, wr = tl.where(rev, rd_r, rd), tl.where(rev, wr_r, wr)
    return t, t_next, rd, wr


# ----------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "z_seed"])
def stationary_fwd_kernel(
    xg_ptr, s_xg_t, s_xg_b,       # input projection (T, B, G*H) (GRU: r, z biases in)
    w_ptr, s_w,                   # W_hh (G*H, H)
    bhn_ptr,                      # GRU with bias: b_hn (H,)
    h_ptr, s_h_slot, s_h_b,       # state history (slots, B, H): reads rd, writes wr
    c_ptr, s_c_slot, s_c_b,       # LSTM: cell history (slots, B, H), ACC
    out_ptr, s_o_t, s_o_b,        # output (T, B, H), zero past a sequence's length
    ga_ptr, s_ga_t, s_ga_b,       # SAVE: gates (T, B, 4H), ACC (see lstm.py, gru.py, rnn.py)
    hm_ptr, s_hm_b,               # HAS_HMASK: variational mask of h_{t-1} (B, H)
    rs_ptr, s_rs_t,               # HAS_RESETS: restart flags (T + 1, B), int8
    ll_ptr, s_ll_slot, s_ll_b,    # LL: the words of h (2 slots, B, H), kernels/ll.py
    hr_ptr, s_hr_t, s_hr_b,       # PROJ: o * tanh(c_t) (T or 1, B, H), the projection's input
    w_hr_ptr, s_whr,              # PROJ: W_hr (P, H)
    r_xg, r_w, r_bhn, r_h, r_c, r_out, r_ga, r_hm, r_rs, r_ll, r_hr, r_w_hr,  # PAIRED:
                                  # elements from each buffer above to the reverse
                                  # direction's (same strides)
    len_ptr,                      # HAS_LENGTHS: (B,) sequence lengths
    z_seed, z_th_h, z_th_c,       # LSTM / GRU ZONEOUT: see lstm.lstm_update_fwd
    sem_ptr, err_ptr,             # barrier counters (one per batch group and direction),
                                  # error word
    ck_ptr,                       # CLOCK: the steps' clocks (tiles, T, 8), kernels/stepclock.py
    T, B, H, K,                   # K: the state's width (PROJ: proj_size P; else H)
    LSTM: tl.constexpr,           # else a GRU, or with RNN a plain RNN
    RNN: tl.constexpr,            # plain RNN: 1 tanh, 2 relu; 0 otherwise
    ACC: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr,
    HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr, PAIRED: tl.constexpr,
    RESIDENT: tl.constexpr, U: tl.constexpr, BB: tl.constexpr, KC: tl.constexpr,
    NK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr,
    SPIN_LIMIT: tl.constexpr, HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    PREFETCH: tl.constexpr,       # CUDA: the tile's update inputs to L1 under the product
    KS: tl.constexpr = 1,         # K split in KS runs, each on its own warps
    X_AHEAD: tl.constexpr = False,  # every chunk of h_{t-1} loaded before the product
    SPLIT: tl.constexpr = 1,      # a tile's batch rows as SPLIT sub-tiles of BB, one
                                  # after another a step, with the one slice
                                  # (plan.sub_rows)
    LL: tl.constexpr = 0,         # 16 or 32 (the state's bits): h exchanged as words that
                                  # carry their step (kernels/ll.py); RESIDENT, no barrier
    RED: tl.constexpr = False,    # CUDA: the batch groups' barriers arrive with a
                                  # red.release (common.group_barrier)
    CLOCK: tl.constexpr = False,  # record where each step's time goes (bench.phases)
    PROJ: tl.constexpr = 0,       # the LSTM's proj_size: the projected units a program
                                  # (0: none), a second phase a step (_proj_tile)
    PKC: tl.constexpr = 16,       # PROJ: W_hr's slice as PNK chunks of PKC columns of H,
    PNK: tl.constexpr = 1,        # each in PKS runs (as KC, NK, KS), every chunk of m_t
    PKS: tl.constexpr = 1,        # loaded before the product where P_AHEAD
    P_AHEAD: tl.constexpr = False,
):
    G: tl.constexpr = 4 if LSTM else (1 if RNN else 3)
    DIRS: tl.constexpr = 2 if PAIRED else 1
    REV: tl.constexpr = 1 if REVERSE else 0  # direction d + REV: zoneout's stream
    HAS_PROJ: tl.constexpr = PROJ > 0
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_u, n_bg = tl.cdiv(H, U), tl.cdiv(B, BB * SPLIT)
    n_tiles = n_u * n_bg
    # PROJ: unit group i's program also projects units [i PROJ, (i + 1) PROJ) of P, for its
    # batch rows, after the barrier that ends the step's gates (the plan keeps n_p <= n_u)
    n_p = tl.cdiv(K, PROJ) if HAS_PROJ else 0
    if RESIDENT:  # one tile a program; the slice, loaded once: no W from global in the loop
        d, tile = pid // n_tiles, pid % n_tiles
        w0, w1, w2, w3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, K, G, U, KC, NK, True,
                                    KS)
        if HAS_PROJ:  # its rows of W_hr, as a plain RNN's W_hh (G = 1)
            q0, q1, q2, q3 = _w_chunks(w_hr_ptr + d * r_w_hr, s_whr, tile % n_u, K, H, 1, PROJ,
                                        PKC, PNK, True, PKS)
    for s in range(0, T):
        if RESIDENT:
            t, rd, wr = _fwd_step_dir(s, T, d, PAIRED, REVERSE, SAVE)
            hr_t = t if SAVE else t * 0  # (inference keeps one step of m_t)
            ck = stepclock.line(ck_ptr, pid, s, T)
            for j in tl.range(0, SPLIT, num_stages=1):
                _fwd_tile(tile % n_u, (tile // n_u) * SPLIT + j, w0, w1, w2, w3,
                          xg_ptr + d * r_xg, s_xg_t, s_xg_b, bhn_ptr + d * r_bhn,
                          h_ptr + d * r_h, s_h_slot, s_h_b, c_ptr + d * r_c, s_c_slot, s_c_b,
                          out_ptr + d * r_out, s_o_t, s_o_b, ga_ptr + d * r_ga, s_ga_t,
                          s_ga_b, len_ptr, hm_ptr + d * r_hm, s_hm_b, z_seed, z_th_h, z_th_c,
                          d + REV, rs_ptr + d * r_rs, s_rs_t, init_slot(T, d + REV, SAVE), t,
                          rd, wr, B, H, ll_ptr + d * r_ll, s_ll_slot, s_ll_b, s, err_ptr, n_u,
                          hr_ptr + d * r_hr, s_hr_t, s_hr_b, hr_t, K,
                          LSTM, RNN, ACC, HAS_BIAS, SAVE, HAS_LENGTHS, U, BB, KC, NK, IEEE,
                          UPCAST, HAS_HMASK, ZONEOUT, HAS_RESETS, PREFETCH, X_AHEAD, LL,
                          SPIN_LIMIT, ck, CLOCK, ASM_ACQUIRE, HAS_PROJ)
            stepclock.mark(ck, 2, s, CLOCK, ASM_ACQUIRE)
            if LL:  # the words are the barrier; the block's own history is read next step
                tl.debug_barrier()
            else:
                group_barrier(sem_ptr + d * n_bg + tile // n_u, n_u, tile % n_u == 0, err_ptr,
                              s, ASM_ACQUIRE, SPIN_LIMIT, RED)
            if HAS_PROJ:  # (the plan takes no RED with PROJ: two barriers a step)
                if tile % n_u < n_p:
                    for j in tl.range(0, SPLIT, num_stages=1):
                        _proj_tile(tile % n_u, (tile // n_u) * SPLIT + j, q0, q1, q2, q3,
                                   hr_ptr + d * r_hr, s_hr_t, s_hr_b, h_ptr + d * r_h,
                                   s_h_slot, s_h_b, out_ptr + d * r_out, s_o_t, s_o_b,
                                   len_ptr, t, rd, wr, hr_t, B, K, H, ACC, HAS_LENGTHS, PROJ,
                                   BB, PKC, PNK, IEEE, UPCAST, P_AHEAD)
                group_barrier(sem_ptr + d * n_bg + tile // n_u, n_u, tile % n_u == 0, err_ptr,
                              s, ASM_ACQUIRE, SPIN_LIMIT, False)
            stepclock.mark(ck, 3, s, CLOCK, ASM_ACQUIRE)
        else:
            for k in range(pid, DIRS * n_tiles, n_progs):
                d, tile = k // n_tiles, k % n_tiles
                t, rd, wr = _fwd_step_dir(s, T, d, PAIRED, REVERSE, SAVE)
                hr_t = t if SAVE else t * 0
                ck = stepclock.line(ck_ptr, k, s, T)
                v0, v1, v2, v3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, K, G, U, KC,
                                           NK, True, KS)
                for j in tl.range(0, SPLIT, num_stages=1):
                    _fwd_tile(tile % n_u, (tile // n_u) * SPLIT + j, v0, v1, v2, v3,
                              xg_ptr + d * r_xg, s_xg_t, s_xg_b, bhn_ptr + d * r_bhn,
                              h_ptr + d * r_h, s_h_slot, s_h_b, c_ptr + d * r_c, s_c_slot,
                              s_c_b, out_ptr + d * r_out, s_o_t, s_o_b, ga_ptr + d * r_ga,
                              s_ga_t, s_ga_b, len_ptr, hm_ptr + d * r_hm, s_hm_b, z_seed,
                              z_th_h, z_th_c, d + REV, rs_ptr + d * r_rs, s_rs_t,
                              init_slot(T, d + REV, SAVE), t, rd, wr, B, H,
                              ll_ptr + d * r_ll, s_ll_slot, s_ll_b, s, err_ptr, n_u,
                              hr_ptr + d * r_hr, s_hr_t, s_hr_b, hr_t, K, LSTM,
                              RNN, ACC, HAS_BIAS, SAVE, HAS_LENGTHS, U, BB, KC, NK, IEEE,
                              UPCAST, HAS_HMASK, ZONEOUT, HAS_RESETS, PREFETCH, X_AHEAD, LL,
                              SPIN_LIMIT, ck, CLOCK, ASM_ACQUIRE, HAS_PROJ)
                stepclock.mark(ck, 2, s, CLOCK, ASM_ACQUIRE)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
            if HAS_PROJ:
                for k in range(pid, DIRS * n_tiles, n_progs):
                    d, tile = k // n_tiles, k % n_tiles
                    if tile % n_u < n_p:
                        t, rd, wr = _fwd_step_dir(s, T, d, PAIRED, REVERSE, SAVE)
                        hr_t = t if SAVE else t * 0
                        v0, v1, v2, v3 = _w_chunks(w_hr_ptr + d * r_w_hr, s_whr, tile % n_u, K,
                                                   H, 1, PROJ, PKC, PNK, True, PKS)
                        for j in tl.range(0, SPLIT, num_stages=1):
                            _proj_tile(tile % n_u, (tile // n_u) * SPLIT + j, v0, v1, v2, v3,
                                       hr_ptr + d * r_hr, s_hr_t, s_hr_b, h_ptr + d * r_h,
                                       s_h_slot, s_h_b, out_ptr + d * r_out, s_o_t, s_o_b,
                                       len_ptr, t, rd, wr, hr_t, B, K, H, ACC, HAS_LENGTHS,
                                       PROJ, BB, PKC, PNK, IEEE, UPCAST, P_AHEAD)
                grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
            if CLOCK:
                for k in range(pid, DIRS * n_tiles, n_progs):
                    stepclock.mark(stepclock.line(ck_ptr, k, s, T), 3, s, CLOCK, ASM_ACQUIRE)


@triton.jit(do_not_specialize=["T", "z_seed"])
def stationary_bwd_kernel(
    dg_ptr, s_dg_t, s_dg_b,       # recurrent pre-activation gradients (T+1, B, G*H),
                                  # common.gate_grad_dtype
    dxn_ptr, s_dxn_t, s_dxn_b,    # GRU: gradient of the input's n pre-activation (T, B, H)
    w_ptr, s_w,                   # W_hh (G*H, H)
    g_ptr, s_g_b,                 # carried gradient of the state (B, H), ACC, in place
    do_ptr, s_do_t, s_do_b,       # output gradient (T, B, H)
    gc_ptr, s_gc_b,               # LSTM: carried gradient of the cell state (B, H), ACC
    ga_ptr, s_ga_t, s_ga_b,       # saved gates (T, B, 4H), ACC (rnn.py: (T, B, H))
    c_ptr, s_c_slot, s_c_b,       # LSTM: cell history
    h_ptr, s_h_slot, s_h_b,       # GRU: state history
    dcs_ptr, s_dcs_t, s_dcs_b,    # LSTM, HAS_DCS: gradient of the returned cell states
    hm_ptr, s_hm_b,               # HAS_HMASK: variational mask of h_{t-1} (B, H)
    rs_ptr, s_rs_t,               # HAS_RESETS: restart flags (T + 1, B), int8
    dhp_ptr, s_dhp_t, s_dhp_b,    # PROJ: grad. of the projected h_t (T, B, P), gate_grad_dtype
    w_hr_ptr, s_whr,              # PROJ: W_hr (P, H)
    r_dg, r_dxn, r_w, r_g, r_do, r_gc, r_ga, r_c, r_h, r_dcs, r_hm, r_rs, r_dhp, r_w_hr,
                                  # PAIRED: elements from each buffer above to the reverse's
    len_ptr, z_seed, z_th_h, z_th_c, sem_ptr, err_ptr,
    ck_ptr,                       # CLOCK: the steps' clocks (tiles, T, 8), kernels/stepclock.py
    T, B, H, K,                   # K: the state's width (PROJ: P; else H)
    LSTM: tl.constexpr, RNN: tl.constexpr, ACC: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_DCS: tl.constexpr,
    REVERSE: tl.constexpr, PAIRED: tl.constexpr, RESIDENT: tl.constexpr, U: tl.constexpr,
    BB: tl.constexpr, KC: tl.constexpr, NK: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr, ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr,
    HAS_HMASK: tl.constexpr, ZONEOUT: tl.constexpr, HAS_RESETS: tl.constexpr,
    KS: tl.constexpr = 1,         # each gate's K chunk split in KS runs, a warp each
    X_AHEAD: tl.constexpr = False,  # every chunk of dgates_{t+1} loaded before the product
    PREFETCH: tl.constexpr = False,  # CUDA: the tile's update inputs to L1 under the product
    RED: tl.constexpr = False,    # CUDA: the barriers arrive with a red.release
    CLOCK: tl.constexpr = False,  # record where each step's time goes (bench.phases)
    PROJ: tl.constexpr = 0,       # the LSTM's proj_size: the projected units a program's
                                  # first phase takes (0: none; see below)
    PKC: tl.constexpr = 16,       # PROJ: W_hr's columns of the program's units as PNK
    PNK: tl.constexpr = 1,        # chunks of PKC rows of P, each in PKS runs, every
    PKS: tl.constexpr = 1,        # chunk of dhp_t loaded before the product where P_AHEAD
    P_AHEAD: tl.constexpr = False,
):
    DIRS: tl.constexpr = 2 if PAIRED else 1
    REV: tl.constexpr = 1 if REVERSE else 0  # direction d + REV: zoneout's stream
    HAS_PROJ: tl.constexpr = PROJ > 0
    pid, n_progs = tl.program_id(0), tl.num_programs(0)
    n_u, n_bg = tl.cdiv(H, U), tl.cdiv(B, BB)
    n_tiles = n_u * n_bg
    G: tl.constexpr = 4 if LSTM else (1 if RNN else 3)
    # PROJ, two phases a step, each ending at the batch group's barrier: unit group i's
    # program first makes the gradient of P units [i PROJ, (i + 1) PROJ) of h_t (with the
    # columns of W_hh they multiply: _proj_bwd_tile), then its own units' gate gradients
    # from all of it (with its units' columns of W_hr: _proj_gates_bwd_tile)
    n_p = tl.cdiv(K, PROJ) if HAS_PROJ else 0
    if RESIDENT:
        d, tile = pid // n_tiles, pid % n_tiles
        if HAS_PROJ:
            w0, w1, w2, w3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, K, G, PROJ, KC,
                                        NK, False, KS)
            q0, q1, q2, q3 = _w_chunks(w_hr_ptr + d * r_w_hr, s_whr, tile % n_u, K, H, 1, U,
                                        PKC, PNK, False, PKS)
        else:
            w0, w1, w2, w3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, H, G, U, KC, NK,
                                        False, KS)
    for s in range(0, T):
        if RESIDENT and HAS_PROJ:
            t, t_next, rd, wr = _bwd_step_dir(s, T, d, PAIRED, REVERSE)
            if tile % n_u < n_p:
                _proj_bwd_tile(tile % n_u, tile // n_u, w0, w1, w2, w3, dg_ptr + d * r_dg,
                               s_dg_t, s_dg_b, g_ptr + d * r_g, s_g_b, do_ptr + d * r_do,
                               s_do_t, s_do_b, dhp_ptr + d * r_dhp, s_dhp_t, s_dhp_b, len_ptr,
                               hm_ptr + d * r_hm, s_hm_b, rs_ptr + d * r_rs, s_rs_t, t, t_next,
                               B, H, K, ACC, HAS_LENGTHS, PROJ, BB, KC, NK, IEEE, UPCAST,
                               HAS_HMASK, HAS_RESETS, X_AHEAD, PREFETCH)
            group_barrier(sem_ptr + d * n_bg + tile // n_u, n_u, tile % n_u == 0, err_ptr, s,
                          ASM_ACQUIRE, SPIN_LIMIT, False)
            _proj_gates_bwd_tile(tile % n_u, tile // n_u, q0, q1, q2, q3, dhp_ptr + d * r_dhp,
                                 s_dhp_t, s_dhp_b, dg_ptr + d * r_dg, s_dg_t, s_dg_b,
                                 g_ptr + d * r_g, s_g_b, do_ptr + d * r_do, s_do_t, s_do_b,
                                 gc_ptr + d * r_gc, s_gc_b, ga_ptr + d * r_ga, s_ga_t, s_ga_b,
                                 c_ptr + d * r_c, s_c_slot, s_c_b, dcs_ptr + d * r_dcs,
                                 s_dcs_t, s_dcs_b, len_ptr, z_seed, z_th_h, z_th_c, d + REV,
                                 rs_ptr + d * r_rs, s_rs_t, init_slot(T, d + REV, True), t,
                                 t_next, rd, wr, B, H, K, ACC, HAS_LENGTHS, HAS_DCS, U, BB,
                                 PKC, PNK, IEEE, UPCAST, ZONEOUT, HAS_RESETS, P_AHEAD,
                                 PREFETCH)
            group_barrier(sem_ptr + d * n_bg + tile // n_u, n_u, tile % n_u == 0, err_ptr, s,
                          ASM_ACQUIRE, SPIN_LIMIT, False)
        elif HAS_PROJ:  # (tiles looping on the programs: grid barriers)
            for k in range(pid, DIRS * n_tiles, n_progs):
                d, tile = k // n_tiles, k % n_tiles
                if tile % n_u < n_p:
                    t, t_next, rd, wr = _bwd_step_dir(s, T, d, PAIRED, REVERSE)
                    v0, v1, v2, v3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, K, G, PROJ,
                                               KC, NK, False, KS)
                    _proj_bwd_tile(tile % n_u, tile // n_u, v0, v1, v2, v3, dg_ptr + d * r_dg,
                                   s_dg_t, s_dg_b, g_ptr + d * r_g, s_g_b, do_ptr + d * r_do,
                                   s_do_t, s_do_b, dhp_ptr + d * r_dhp, s_dhp_t, s_dhp_b,
                                   len_ptr, hm_ptr + d * r_hm, s_hm_b, rs_ptr + d * r_rs,
                                   s_rs_t, t, t_next, B, H, K, ACC, HAS_LENGTHS, PROJ, BB, KC,
                                   NK, IEEE, UPCAST, HAS_HMASK, HAS_RESETS, X_AHEAD, PREFETCH)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
            for k in range(pid, DIRS * n_tiles, n_progs):
                d, tile = k // n_tiles, k % n_tiles
                t, t_next, rd, wr = _bwd_step_dir(s, T, d, PAIRED, REVERSE)
                v0, v1, v2, v3 = _w_chunks(w_hr_ptr + d * r_w_hr, s_whr, tile % n_u, K, H, 1,
                                           U, PKC, PNK, False, PKS)
                _proj_gates_bwd_tile(tile % n_u, tile // n_u, v0, v1, v2, v3,
                                     dhp_ptr + d * r_dhp, s_dhp_t, s_dhp_b, dg_ptr + d * r_dg,
                                     s_dg_t, s_dg_b, g_ptr + d * r_g, s_g_b,
                                     do_ptr + d * r_do, s_do_t, s_do_b, gc_ptr + d * r_gc,
                                     s_gc_b, ga_ptr + d * r_ga, s_ga_t, s_ga_b,
                                     c_ptr + d * r_c, s_c_slot, s_c_b, dcs_ptr + d * r_dcs,
                                     s_dcs_t, s_dcs_b, len_ptr, z_seed, z_th_h, z_th_c,
                                     d + REV, rs_ptr + d * r_rs, s_rs_t,
                                     init_slot(T, d + REV, True), t, t_next, rd, wr, B, H, K,
                                     ACC, HAS_LENGTHS, HAS_DCS, U, BB, PKC, PNK, IEEE, UPCAST,
                                     ZONEOUT, HAS_RESETS, P_AHEAD, PREFETCH)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
        elif RESIDENT:
            t, t_next, rd, wr = _bwd_step_dir(s, T, d, PAIRED, REVERSE)
            ck = stepclock.line(ck_ptr, pid, s, T)
            _bwd_tile(tile % n_u, tile // n_u, w0, w1, w2, w3,
                      dg_ptr + d * r_dg, s_dg_t, s_dg_b, dxn_ptr + d * r_dxn, s_dxn_t,
                      s_dxn_b, g_ptr + d * r_g, s_g_b, do_ptr + d * r_do, s_do_t, s_do_b,
                      gc_ptr + d * r_gc, s_gc_b, ga_ptr + d * r_ga, s_ga_t, s_ga_b,
                      c_ptr + d * r_c, s_c_slot, s_c_b, h_ptr + d * r_h, s_h_slot, s_h_b,
                      dcs_ptr + d * r_dcs, s_dcs_t, s_dcs_b, len_ptr, hm_ptr + d * r_hm,
                      s_hm_b, z_seed, z_th_h, z_th_c, d + REV, rs_ptr + d * r_rs, s_rs_t,
                      init_slot(T, d + REV, True), t, t_next, rd, wr, B, H,
                      LSTM, RNN, ACC, HAS_LENGTHS, HAS_DCS, U, BB, KC, NK, IEEE, UPCAST,
                      HAS_HMASK, ZONEOUT, HAS_RESETS, X_AHEAD, PREFETCH, s, ck, CLOCK,
                      ASM_ACQUIRE)
            stepclock.mark(ck, 2, s, CLOCK, ASM_ACQUIRE)
            group_barrier(sem_ptr + d * n_bg + tile // n_u, n_u, tile % n_u == 0, err_ptr, s,
                          ASM_ACQUIRE, SPIN_LIMIT, RED)
            stepclock.mark(ck, 3, s, CLOCK, ASM_ACQUIRE)
        else:
            for k in range(pid, DIRS * n_tiles, n_progs):
                d, tile = k // n_tiles, k % n_tiles
                t, t_next, rd, wr = _bwd_step_dir(s, T, d, PAIRED, REVERSE)
                ck = stepclock.line(ck_ptr, k, s, T)
                v0, v1, v2, v3 = _w_chunks(w_ptr + d * r_w, s_w, tile % n_u, H, H, G, U, KC,
                                           NK, False, KS)
                _bwd_tile(tile % n_u, tile // n_u, v0, v1, v2, v3,
                          dg_ptr + d * r_dg, s_dg_t, s_dg_b, dxn_ptr + d * r_dxn, s_dxn_t,
                          s_dxn_b, g_ptr + d * r_g, s_g_b, do_ptr + d * r_do, s_do_t, s_do_b,
                          gc_ptr + d * r_gc, s_gc_b, ga_ptr + d * r_ga, s_ga_t, s_ga_b,
                          c_ptr + d * r_c, s_c_slot, s_c_b, h_ptr + d * r_h, s_h_slot, s_h_b,
                          dcs_ptr + d * r_dcs, s_dcs_t, s_dcs_b, len_ptr, hm_ptr + d * r_hm,
                          s_hm_b, z_seed, z_th_h, z_th_c, d + REV, rs_ptr + d * r_rs, s_rs_t,
                          init_slot(T, d + REV, True), t, t_next, rd, wr,
                          B, H, LSTM, RNN, ACC, HAS_LENGTHS, HAS_DCS, U, BB, KC, NK, IEEE,
                          UPCAST, HAS_HMASK, ZONEOUT, HAS_RESETS, X_AHEAD, PREFETCH, s, ck,
                          CLOCK, ASM_ACQUIRE)
                stepclock.mark(ck, 2, s, CLOCK, ASM_ACQUIRE)
            grid_barrier(sem_ptr, err_ptr, s, ASM_ACQUIRE, SPIN_LIMIT)
            if CLOCK:
                for k in range(pid, DIRS * n_tiles, n_progs):
                    stepclock.mark(stepclock.line(ck_ptr, k, s, T), 3, s, CLOCK, ASM_ACQUIRE)


# ----------------------------------------------------------------------------------------
# launchers: the buffers come from lstm.py / gru.py / rnn.py, whose launchers hand their
# launch over as a pairing.Launch (see kernels/pairing.py)
# ----------------------------------------------------------------------------------------
_FWD_DIR_ARGS = ("xg", "w", "bhn", "h", "c", "out", "ga", "hm", "rs", "hr", "w_hr")
_BWD_DIR_ARGS = ("dg", "dxn", "w", "g", "do", "gc", "ga", "c", "h", "dcs", "hm", "rs", "dhp",
                 "w_hr")


def _kernel(launch):
    """(kernel, its per-direction buffers, warps, name, its flags for the device)."""
    plan = launch.plan
    proj = {} if not plan.get("PU") else dict(
        PROJ=plan["PU"], PKC=plan["PKC"], PNK=plan["PNK"], PKS=plan["PKS"],
        P_AHEAD=plan["p_ahead"])
    if launch.kind == "fwd":
        return (stationary_fwd_kernel, _FWD_DIR_ARGS, plan["warps"],
                "stationary forward", dict(PREFETCH=launch.device.type == "cuda",
                                           KS=plan["KS"], X_AHEAD=plan["x_ahead"],
                                           SPLIT=plan["split"], RED=red_arrival(launch),
                                           **proj))
    return (stationary_bwd_kernel, _BWD_DIR_ARGS, launch.plan["warps_bwd"],
            "stationary backward", dict(KS=launch.plan["KS_bwd"],
                                        X_AHEAD=launch.plan["x_ahead"],
                                        PREFETCH=launch.device.type == "cuda",
                                        RED=red_arrival(launch), **proj))


def _args(launch) -> dict:
    """The launch's arguments, with the projection's where its layer has none (PROJ 0: the
    pointers only stand in, never read)."""
    a = launch.args
    if "w_hr_ptr" in a:
        return a
    stand_in = dict(hr_ptr=a["h_ptr"], s_hr_t=0, s_hr_b=0) if launch.kind == "fwd" else \
        dict(dhp_ptr=a["dg_ptr"], s_dhp_t=0, s_dhp_b=0)
    return dict(a, **stand_in, w_hr_ptr=a["w_ptr"], s_whr=0, K=a["H"])


def red_arrival(launch) -> bool:
    """Whether the launch's barriers arrive with a red.release (plan ``red``, made for a
    CUDA device: the interpreter has no inline PTX)."""
    return bool(launch.plan.get("red")) and bool(launch.plan.get("cuda"))


def launch(one) -> None:
    """One direction: plan["programs"] programs (one under the interpreter: the plan was
    made for one SM), each owning one tile when there are as many tiles (RESIDENT)."""
    if one.kind == "bwd" and one.plan.get("ksplit", 1) > 1:
        from fusedrnn.kernels import splitk
        splitk.launch(one)
        return
    kernel, names, warps, what, flags = _kernel(one)
    plan = one.plan
    programs = plan["programs"]
    sem, err = barrier_words(triton.cdiv(one.B, plan["BB"]), one.device)
    unused = {f"r_{n}": 0 for n in names}
    launch_sequence(kernel, programs, dict(
        **_args(one), **unused, **_ll_args([one], err), **_clock_args(one, 1, err),
        sem_ptr=sem, err_ptr=err, PAIRED=False,
        RESIDENT=programs == plan["tiles"], U=plan["U"], BB=_rows(one), KC=plan["KC"],
        NK=plan["NK"], **barrier_flags(one.device), **flags, num_warps=warps), err, one.device,
        what)


def _ll_args(launches, err) -> dict:
    """The forward's LL arguments (kernels/ll.py): where the plan says ``ll``, the words of
    each direction's h0, else none (the error word stands in for the unused pointer)."""
    one = launches[0]
    if one.kind != "fwd":
        return {}
    if not one.plan.get("ll"):
        return dict(ll_ptr=err, s_ll_slot=0, s_ll_b=0, r_ll=0, LL=0)
    h0s = [a.args["h_ptr"][first_slot(a.args["T"], a.args["REVERSE"], a.args["SAVE"])]
           for a in launches]
    words = ll.words(h0s)
    return dict(ll_ptr=words, s_ll_slot=words.stride(1), s_ll_b=words.stride(2),
                r_ll=words.stride(0), LL=ll.bits(h0s[0].dtype))


def _clock_args(one, dirs: int, err) -> dict:
    """The clock arguments (kernels/stepclock.py): a line a tile and step inside
    stepclock.recording(), else off."""
    return stepclock.args(one.kind, one.args["T"], triton.cdiv(one.args["H"], one.plan["U"]),
                          triton.cdiv(one.B, one.plan["BB"]), dirs, err, one.device)


def _rows(one) -> int:
    """BB, the rows of one product and update: a tile's (the plan's BB), or its sub-tiles'
    where the forward splits it (plan.sub_rows)."""
    return one.plan["BB"] // one.plan["split"] if one.kind == "fwd" else one.plan["BB"]


def pairable(fwd, rev) -> bool:
    """Whether a layer's two directions can share one launch: both planned as a pair, the
    same kernel and tiles, the same strides and flags, forward then reverse."""
    kernel, names, *_ = _kernel(fwd)
    same = all(v == _args(rev)[k] for k, v in _args(fwd).items()
               if k != "REVERSE" and not hasattr(v, "data_ptr"))
    return (fwd.kind == rev.kind and fwd.plan.get("paired", False) and fwd.plan == rev.plan
            and same and not fwd.args["REVERSE"] and rev.args["REVERSE"]
            and all(_offset(fwd, rev, n) is not None for n in names))


def _offset(fwd, rev, name):
    """Elements from the forward direction's buffer to the reverse's (None if the two are
    not a whole number of elements apart, or differ in dtype)."""
    a, b = _args(fwd)[f"{name}_ptr"], _args(rev)[f"{name}_ptr"]
    size = a.element_size()
    gap = b.data_ptr() - a.data_ptr()
    return gap // size if a.dtype == b.dtype and gap % size == 0 else None


def launch_pair(fwd, rev) -> None:
    """Both directions in one launch: programs [0, P) run ``fwd``, [P, 2P) ``rev`` (P the
    plan's programs, planned for half the SMs), each direction with its own barrier
    counters. Under the interpreter one program runs every tile of both."""
    kernel, names, warps, what, flags = _kernel(fwd)
    plan, device = fwd.plan, fwd.device
    programs = 2 * plan["programs"] if plan["cuda"] else plan["programs"]
    sem, err = barrier_words(2 * triton.cdiv(fwd.B, plan["BB"]), device)
    offsets = {f"r_{n}": _offset(fwd, rev, n) for n in names}
    launch_sequence(kernel, programs, dict(
        **_args(fwd), **offsets, **_ll_args([fwd, rev], err), **_clock_args(fwd, 2, err),
        sem_ptr=sem, err_ptr=err, PAIRED=True,
        RESIDENT=programs == 2 * plan["tiles"], U=plan["U"], BB=_rows(fwd), KC=plan["KC"],
        NK=plan["NK"], **barrier_flags(device), **flags, num_warps=warps), err, device,
        what + ", both directions")
