"""Shared pieces of the RNN kernels: jit helpers (activations, the one dot, tile GEMMs,
the carried state gradient) and the launch-side rules (block sizes, allocation, checks)."""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from fusedrnn.kernels import barrier_errors, residency


# ----------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------
@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # libdevice's tanh does not run in the interpreter; exp(-2|x|) never overflows
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b. Every tl.dot of the package goes through here.

    IEEE: full-precision fp32 (no tf32). UPCAST: the interpreter multiplies bf16 operands
    as raw integers (GUIDE section 4), so under it they are upcast; on a GPU bf16 stays on
    the tensor cores.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    # out_dtype: Triton 3.6's tl.dot defaults it to fp32 and asserts that an fp64
    # accumulator matches it (newer Tritons follow the operands)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
    else:
        acc = tl.dot(a, b, acc, out_dtype=acc.dtype)
    return acc


@triton.jit
def mm_tile(acc, a_ptr, stride_am, offs_m, mask_m, w_ptr, stride_wk, stride_wn, offs_n, mask_n,
            K, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
            am_ptr=0, s_am=0, A_MASK: tl.constexpr = False, a0_ptr=0, b_rs=0,
            HAS_RESETS: tl.constexpr = False):
    """acc[m, n] += sum_k a[m, k] * w[k, n], for k < K.

    a: rows ``offs_m`` of a row-major (M, K) operand, element stride 1 along k.
    w: any strides, so W (stride_wk=row stride, stride_wn=1) and W^T (stride_wk=1,
       stride_wn=row stride) are both one call. a is cast to w's dtype, so fp32 gradient
       buffers meet bf16/fp16 weights on the tensor cores. A_MASK: a times the same block
       of a mask (M, K) with row stride s_am (state_mask). HAS_RESETS: rows where b_rs is
       set read a0_ptr (same strides as a) instead (restart_flags).
    """
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    w_cols = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if HAS_RESETS:
            if any_restart(b_rs):  # (a uniform branch: steps without restarts skip it)
                a0 = tl.load(a0_ptr + offs_m.to(tl.int64)[:, None] * stride_am
                             + offs_k[None, :], mask=(mask_m & b_rs)[:, None] & mask_k[None, :],
                             other=0.0)
                a = tl.where(b_rs[:, None], a0, a)
        a = state_mask(a, am_ptr, s_am, offs_m, mask_m, offs_k, mask_k, A_MASK)
        w = tl.load(w_cols + offs_k.to(tl.int64)[:, None] * stride_wk,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = dot(a.to(w.dtype), w, acc, IEEE, UPCAST)
    return acc


@triton.jit
def state_grad(g_ptr, stride_gb, dg_next_ptr, stride_dgb, w_ptr, stride_w, offs_b, mask_b,
               offs_k, mask_k, NG_H, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_J: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
               hm_ptr=0, s_hm_b=0, HAS_HMASK: tl.constexpr = False):
    """Gradient w.r.t. the state h_t, columns ``offs_k``: the carried part in g (what the
    step after t left: its direct term, or the whole gradient where that step was padding)
    plus the recurrent part dgates_{t+1} @ W_hh, reduced over all NG_H gate rows (times the
    variational mask where the forward's product saw mask * h_t: HAS_HMASK)."""
    mask = mask_b[:, None] & mask_k[None, :]
    g = tl.load(g_ptr + offs_b.to(tl.int64)[:, None] * stride_gb + offs_k[None, :], mask=mask,
                other=0.0)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=g.dtype)
    acc = mm_tile(acc, dg_next_ptr, stride_dgb, offs_b, mask_b, w_ptr, stride_w, 1, offs_k,
                  mask_k, NG_H, BLOCK_J, IEEE, UPCAST)
    return g + state_mask(acc, hm_ptr, s_hm_b, offs_b, mask_b, offs_k, mask_k, HAS_HMASK)


@triton.jit
def state_mask(b_h, hm_ptr, s_hm_b, offs_b, mask_b, offs_k, mask_k, HAS_HMASK: tl.constexpr):
    """b_h (rows offs_b, columns offs_k of a state) times the same block of the variational
    recurrent-state mask (B, K) (0 or 1/(1-p), fixed over time; issue 14), or b_h as is."""
    if HAS_HMASK:
        p_m = hm_ptr + offs_b.to(tl.int64)[:, None] * s_hm_b + offs_k[None, :]
        b_m = tl.load(p_m, mask=mask_b[:, None] & mask_k[None, :], other=0.0)
        b_h = b_h * b_m.to(b_h.dtype)
    return b_h


@triton.jit
def tile_offsets(i_n, i_b, N, B, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """Offsets and masks of tile (i_n, i_b): columns o_n < N, batch rows o_b < B (and o_b
    widened to int64 for row offsets), and the 2-D mask."""
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)
    m_n, m_b = o_n < N, o_b < B
    return o_n, o_b, m_n, m_b, m_b[:, None] & m_n[None, :], o_b.to(tl.int64)


@triton.jit
def recurrent_gates(p_h, m_b, w_ptr, s_w, o_h, m_h, H, K, ACC: tl.constexpr,
                    FOUR: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                    hm_ptr=0, s_hm_b=0, o_b=0, HAS_HMASK: tl.constexpr = False,
                    p_h0=0, b_rs=0, HAS_RESETS: tl.constexpr = False):
    """h_{t-1} W_hh^T for the gates (3, or 4 if FOUR) of hidden units o_h: rows o_h, H + o_h,
    ... of W_hh (NG*H, K). p_h points at the batch rows (o_b) of h_{t-1}; HAS_HMASK: h_{t-1}
    times its variational mask (state_mask). One load of h per chunk of K is shared by the
    gates' dots, so a tile's gates come out side by side for the pointwise update. Returns
    four accumulators (the fourth zero unless FOUR). HAS_RESETS: rows where b_rs is set read
    the initial state at p_h0 instead (restart_flags)."""
    b_0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    b_3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
    p_w = w_ptr + o_h.to(tl.int64)[None, :] * s_w
    gate_rows = H * s_w  # W_hh itself has < 2^31 elements
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_h = tl.load(p_h + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        if HAS_RESETS:
            if any_restart(b_rs):  # (a uniform branch: steps without restarts skip it)
                b_h0 = tl.load(p_h0 + o_k[None, :], mask=(m_b & b_rs)[:, None] & m_k[None, :],
                               other=0.0)
                b_h = tl.where(b_rs[:, None], b_h0, b_h)
        b_h = state_mask(b_h, hm_ptr, s_hm_b, o_b, m_b, o_k, m_k, HAS_HMASK)
        m_w = m_k[:, None] & m_h[None, :]
        p_wk = p_w + o_k[:, None]
        b_0 = dot(b_h, tl.load(p_wk, mask=m_w, other=0.0), b_0, IEEE, UPCAST)
        b_1 = dot(b_h, tl.load(p_wk + gate_rows, mask=m_w, other=0.0), b_1, IEEE, UPCAST)
        b_2 = dot(b_h, tl.load(p_wk + 2 * gate_rows, mask=m_w, other=0.0), b_2, IEEE, UPCAST)
        if FOUR:
            b_3 = dot(b_h, tl.load(p_wk + 3 * gate_rows, mask=m_w, other=0.0), b_3, IEEE,
                      UPCAST)
    return b_0, b_1, b_2, b_3


@triton.jit
def store_step(h_ptr, s_h_slot, s_h_b, out_ptr, s_o_t, s_o_b, t, wr, o_b64, o_n, m, valid,
               b_new, b_prev):
    """Write step t of one tile: the state h_t into history slot wr (the previous state
    where a sequence has ended) and the output (zero where it has ended). Returns the state
    as stored (the weight-stationary forward sends the same to the other programs)."""
    p_hs = h_ptr + wr.to(tl.int64) * s_h_slot + o_b64[:, None] * s_h_b + o_n[None, :]
    b_h = tl.where(valid, b_new, b_prev).to(h_ptr.dtype.element_ty)
    tl.store(p_hs, b_h, mask=m)
    p_o = out_ptr + t.to(tl.int64) * s_o_t + o_b64[:, None] * s_o_b + o_n[None, :]
    tl.store(p_o, tl.where(valid, b_new, 0.0).to(out_ptr.dtype.element_ty), mask=m)
    return b_h


@triton.jit
def store_four(ptr, s_t, s_b, t, o_b64, o_n, m, N, b_0, b_1, b_2, b_3):
    """Write four (BLOCK_B, BLOCK_N) blocks side by side at row t: columns o_n, N + o_n, ..."""
    p = ptr + t.to(tl.int64) * s_t + o_b64[:, None] * s_b + o_n[None, :]
    tl.store(p, b_0, mask=m)
    tl.store(p + N, b_1, mask=m)
    tl.store(p + 2 * N, b_2, mask=m)
    tl.store(p + 3 * N, b_3, mask=m)


@triton.jit
def prefetch(p, m, ON: tl.constexpr):
    """Start bringing the lines of the pointers p (where m) from L2 into L1 now, so that a
    tl.load of them later hits L1: ``prefetch.global.L1``, a hint that never faults or
    changes a value. ON: CUDA only (inline PTX; the interpreter has none)."""
    if ON:
        tl.inline_asm_elementwise(
            "{ .reg .pred q; setp.ne.b32 q, $2, 0; @q prefetch.global.L1 [$1]; "
            "mov.u32 $0, 0; }", "=r,l,r", [p, m.to(tl.int32)], dtype=tl.int32,
            is_pure=False, pack=1)


@triton.jit
def valid_rows(len_ptr, offs_b, mask_b, t, HAS_LENGTHS: tl.constexpr):
    """(BLOCK_B,) mask of the sequences still running at time t."""
    if HAS_LENGTHS:
        n = tl.load(len_ptr + offs_b, mask=mask_b, other=0)
        return mask_b & (t < n)
    else:
        return mask_b


@triton.jit
def restart_flags(rs_ptr, s_rs_t, t, offs_b, mask_b, HAS_RESETS: tl.constexpr):
    """(BLOCK_B,) mask of the sequences whose state entering step t is the initial state
    again (an episode restarts: resets, fusedrnn/episodes.py); rs (T + 1, B) int8, in this
    pass's direction, row T zero. All false without HAS_RESETS."""
    if HAS_RESETS:
        r = tl.load(rs_ptr + t.to(tl.int64) * s_rs_t + offs_b, mask=mask_b, other=0)
        return r != 0
    else:
        return offs_b < 0


@triton.jit
def any_restart(b_rs):
    """Whether any row of the tile restarts at this step: one uniform branch around the
    restart work, so the steps without one (nearly all of them) pay a few instructions."""
    return tl.max(b_rs.to(tl.int32), axis=0) > 0


@triton.jit
def restarted(b_prev, p_init, m, b_rs, HAS_RESETS: tl.constexpr):
    """The state entering a step: b_prev, or where b_rs marks a restart the initial state
    (loaded at p_init, the block's place in the initial state's slot)."""
    if HAS_RESETS:
        if any_restart(b_rs):  # (loaded for the restarting rows only)
            b_init = tl.load(p_init, mask=m & b_rs[:, None], other=0.0).to(b_prev.dtype)
            b_prev = tl.where(b_rs[:, None], b_init, b_prev)
    return b_prev


@triton.jit
def divert(b_g, p_g, B, s_g_b, m, b_rs, HAS_RESETS: tl.constexpr):
    """The gradient b_g of the state entering the next step of the pass. Where that state
    was the initial one (b_rs: a restart) the gradient belongs to the initial state: it is
    added to its accumulator (the carried buffer's second half, B rows past p_g: each
    element has one owner per step, so no atomics) and nothing flows on."""
    if HAS_RESETS:
        if any_restart(b_rs):  # (memory traffic for the restarting rows only)
            p_acc = p_g + B * s_g_b
            m_rs = m & b_rs[:, None]
            tl.store(p_acc, tl.load(p_acc, mask=m_rs, other=0.0) + b_g, mask=m_rs)
            b_g = tl.where(b_rs[:, None], 0.0, b_g)
    return b_g


@triton.jit
def init_slot(T, rev, SAVE: tl.constexpr):
    """History slot of the initial state, rev 1 in reverse else 0: the first slot in
    training (T + 1 slots, never overwritten), the third of the inference history
    (fwd_step alternates 0 and 1; the launchers keep h0 there when there are resets)."""
    if SAVE:
        init = T * rev
    else:
        init = T * 0 + 2
    return init


@triton.jit
def group_barrier(sem_ptr, n_members, leader, err_ptr, step, ASM_ACQUIRE: tl.constexpr,
                  SPIN_LIMIT: tl.constexpr, RED: tl.constexpr = False):
    """The programs of one group (the whole grid, or one batch group) wait here until all
    n_members have arrived. Reusable without reset. Bounded: never hangs.

    sem_ptr: the group's int32 counter, zero-initialized, for this launch only. Each arrival
    adds 1, except the group's leader which adds INT_MIN - (n_members - 1): the sum over one
    barrier flips the sign bit exactly once, and each program waits to see that bit differ
    from what it read on arrival (the scheme of PyTorch inductor's cooperative reductions).
    The arrival is a release, the polling an acquire, both at GPU scope, so the stores
    before the barrier are visible to every member after it. ASM_ACQUIRE polls with a plain
    ``ld.acquire.gpu`` from every thread: a scalar tl.atomic_add in the loop would add a
    block barrier and a shared-memory broadcast to every iteration (Triton issue 7125).

    The bound (issue 15): a program gives up after SPIN_LIMIT polls (about a second on a
    GPU, far beyond any real wait), and records [1, step, program, n_members] in err_ptr
    (int32[4], zeroed per launch; the first failure wins). Once err_ptr is set, no program
    waits at any barrier again, so the whole grid leaves the kernel promptly; the launcher
    reads the word and raises (fusedrnn.kernels.barrier_errors). A program never knows
    whether another is merely late or gone, so the error word, not the data, is the truth.

    RED (with ASM_ACQUIRE; measured by bench.micro, not yet used by the kernels): the
    arrival as a ``red.release`` from one thread, which returns nothing, so the program
    polls at once instead of first waiting out the atomic's round trip to L2. What the
    atomic returned only served for its sign bit, which is the parity of the barriers
    completed before: barrier ``step`` (the step-th on this counter, from 0) starts at
    sign ``step & 1``. Valid where each step has exactly one barrier on the counter.
    """
    tl.debug_barrier()  # every warp's stores are issued before this program arrives
    if leader:
        arrive = tl.full((), -2147483648, tl.int32) - (n_members - 1)
    else:
        arrive = tl.full((), 1, tl.int32)
    if RED and ASM_ACQUIRE:  # (its output, 0, starts the poll count: the asm is kept)
        n = tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0;\n"
            "@p red.release.gpu.global.add.s32 [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [sem_ptr, arrive], dtype=tl.int32, is_pure=False, pack=1)
        old = tl.where((step & 1) == 1, -2147483648, 0).to(tl.int32)
    else:
        old = tl.atomic_add(sem_ptr, arrive, sem="release", scope="gpu")
        n = 0
    ok = (tl.load(err_ptr, volatile=True) != 0).to(tl.int32)  # a failure: never wait again
    while (ok == 0) & (n < SPIN_LIMIT):
        if ASM_ACQUIRE:
            now = tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l",
                                            [sem_ptr], dtype=tl.int32, is_pure=False, pack=1)
        else:
            now = tl.atomic_add(sem_ptr, 0, sem="acquire", scope="gpu")
        ok = (((old ^ now) & -2147483648) != 0).to(tl.int32)
        n += 1
        if n % 256 == 0:  # a failure elsewhere ends this wait too
            ok = ok | (tl.load(err_ptr, volatile=True) != 0).to(tl.int32)
    if ok == 0:
        first = tl.atomic_cas(err_ptr, 0, 1, sem="relaxed", scope="gpu") == 0
        if first:
            tl.store(err_ptr + 1, step)
            tl.store(err_ptr + 2, tl.program_id(0))
            tl.store(err_ptr + 3, n_members)
    tl.debug_barrier()


@triton.jit
def grid_barrier(sem_ptr, err_ptr, step, ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr):
    """Every program of the grid waits here (group_barrier over the whole grid)."""
    group_barrier(sem_ptr, tl.num_programs(0), tl.program_id(0) == 0, err_ptr, step,
                  ASM_ACQUIRE, SPIN_LIMIT)


@triton.jit
def fwd_step(s, T, REVERSE: tl.constexpr, SAVE: tl.constexpr):
    """Forward step s -> (t, rd, wr): its time index and the history slots of h_{t-1}, h_t.
    Training keeps T+1 slots, indexed so slot t+1 (forward) / t (reverse) holds h_t;
    inference keeps two and alternates."""
    s = tl.full((), 0, tl.int32) + s  # a tensor even where the interpreter's loop gives an int
    if REVERSE:
        t = T - 1 - s
    else:
        t = s
    if SAVE:
        if REVERSE:
            rd, wr = t + 1, t
        else:
            rd, wr = t, t + 1
    else:
        rd, wr = s % 2, (s + 1) % 2
    return t, rd, wr


@triton.jit
def bwd_step(s, T, REVERSE: tl.constexpr):
    """Backward step s (0 is the forward pass's last step) -> (t, t_next, rd, wr): t_next is
    the step the forward pass ran after t; past the end it is slot T, which stays zero."""
    s = tl.full((), 0, tl.int32) + s  # a tensor even where the interpreter's loop gives an int
    if REVERSE:
        t = s
        t_next = tl.where(s == 0, T, s - 1)
        rd, wr = t + 1, t
    else:
        t = T - 1 - s
        t_next = t + 1
        rd, wr = t, t + 1
    return t, t_next, rd, wr


# ----------------------------------------------------------------------------------------
# launch side
# ----------------------------------------------------------------------------------------
def empty(*shape, dtype, device):
    """Every buffer a kernel writes comes from here, so tests can poison them with NaN."""
    return torch.empty(*shape, dtype=dtype, device=device)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and cell-state dtype: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gate_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The gate gradients' buffer (T+1, B, G*H): in the layer's dtype for fp16/bf16, where
    every product that reads it (the recurrence's dgates . W_hh, dx, dW_ih, dW_hh) casts it
    to that dtype anyway, as cuDNN keeps them; only the bias gradients, summed in fp32, see
    the rounding. It halves the bytes of the backward's per-step broadcast (each program
    reads dgates_{t+1} of its batch rows: 192 KB a step at B=16, H=768 in fp32). fp32 and
    fp64 layers keep their compute dtype."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else compute_dtype(dtype)


def block_sizes(batch: int, width: int, tensor_cores: bool = False,
                block_n: int | None = None, block_k: int | None = None
                ) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_K, num_warps) for a step kernel: batch rows and output
    columns per program, the reduction chunk, and warps. A rule, not autotuning, and never
    a function of T. tl.dot needs M and K >= 16 (N >= 8: plan.STREAM_UNITS). Register
    budget, read off the sm_80/sm_90 compile check: the four fp32 LSTM accumulators of a
    64 x 32 tile plus the dot operands spill with 4 warps or with a 32-deep chunk where the
    dots run exactly (fp32 without TF32, fp64: on FMAs, operands in registers), so those
    chunks are 16 deep; tiles of >= 1024 values get 8 warps.

    tensor_cores (fp16/bf16, TF32): chunks up to 64 deep. Their operands go through shared
    memory (cp.async, 3 stages; a sequence kernel's: plan.stream_stages), and each chunk of the K loop pays a fixed round of waits
    (cp.async, a block barrier, on sm_90 the wgmma fence and wait) for one chunk's MMAs: at
    16 deep, bf16 B=512 H=1024, the forward's loop ran 64 of them a tile and step, 4 HGMMA
    each, and the backward's (K = 4H) 256, one HMMA each. 64 deep: 16 and 64 rounds, 112-151
    registers, no spill, 37-74 KB of shared memory (sm_90). block_n, block_k: the output
    columns and the chunk chosen elsewhere (plan.stream_blocks), the warps then by them."""
    block_b = min(64, max(16, triton.next_power_of_2(batch)))
    block_n = block_n or min(32, max(16, triton.next_power_of_2(width)))
    block_k = block_k or (min(64, max(16, triton.next_power_of_2(width))) if tensor_cores
                          else 16)
    warps = 8 if block_b * block_n >= 1024 else 4
    return block_b, block_n, block_k, warps


TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def first_slot(T: int, reverse: bool, save: bool) -> int:
    """History slot of h0 (see fwd_step)."""
    return T if (save and reverse) else 0


def last_slot(T: int, reverse: bool, save: bool) -> int:
    """History slot of h_n (see fwd_step)."""
    if not save:
        return T % 2
    return 0 if reverse else T


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _cooperative_launch() -> dict:
    """Triton's cooperative launch where the installed version has it: the driver then
    refuses a grid that cannot be co-resident instead of letting the barrier hang."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return {"launch_cooperative_grid": True} if "launch_cooperative_grid" in fields else {}


def run_steps(kernel, args: dict, T: int, phases, persistent: bool, device, num_warps: int,
              num_stages: int = 3):
    """Launch a recurrent kernel over T steps (num_stages: the sequence kernel's K loop
    pipeline, plan.stream_stages; step kernels keep Triton's default).

    ``phases``: [(flags, n_tiles)] in their order within a step, e.g. the gates then the
    projection; a later phase reads what every tile of the earlier one wrote. Step mode
    launches each phase of each step on its own grid of n_tiles programs (the launch
    boundary is the barrier); sequence mode launches once, with min(tiles, SMs) programs
    (one under the interpreter) that loop over the tiles and meet at grid barriers.
    """
    if persistent:
        n_tiles = max(n for _, n in phases)
        n_progs = 1 if device.type == "cpu" else min(n_tiles, sm_count(device))
        flags = {k: any(f[k] for f, _ in phases) for k in phases[0][0]}
        sem, err = barrier_words(1, device)
        launch_sequence(kernel, n_progs, dict(**args, **flags, sem_ptr=sem, err_ptr=err, s0=0,
                                              n_steps=T, PERSISTENT=True,
                                              **barrier_flags(device), num_warps=num_warps,
                                              num_stages=num_stages),
                        err, device, getattr(kernel, "__name__", getattr(kernel, "name", "")))
        return
    for s in range(T):
        for flags, n_tiles in phases:
            kernel[(n_tiles,)](**args, **flags, sem_ptr=args["len_ptr"], err_ptr=args["len_ptr"],
                               s0=s, n_steps=1, PERSISTENT=False, ASM_ACQUIRE=False,
                               SPIN_LIMIT=1, num_warps=num_warps)


# Polls before a barrier gives up: ~0.3 us each on a GPU (an L2 round trip), so about a
# second, far beyond any real wait between two steps. Tests lower it.
BARRIER_SPIN_LIMIT = 1 << 22


def barrier_words(n_groups: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed barrier counters (one per group) and the int32[4] error word, one allocation."""
    words = torch.zeros(n_groups + 4, dtype=torch.int32, device=device)
    return words[:n_groups], words[n_groups:]


def barrier_flags(device) -> dict:
    return dict(ASM_ACQUIRE=device.type == "cuda", SPIN_LIMIT=BARRIER_SPIN_LIMIT)


def launch_sequence(kernel, programs: int, kwargs: dict, err, device, what: str) -> None:
    """Launch a sequence kernel (its programs meet at barriers): cooperatively where Triton
    can, else after the co-residency check; then watch its barrier's error word."""
    coop = _cooperative_launch() if device.type == "cuda" else {}
    residency.guard(kernel, programs, kwargs, device, bool(coop), what)
    kernel[(programs,)](**kwargs, **coop)
    barrier_errors.watch(err, what)


def pointer_args(**tensors) -> dict:
    """Keyword arguments ``{name}_ptr`` and ``s_{prefix}_{dim}`` (``s_{prefix}`` for dim "")
    for a kernel's pointer and its strides. Each value: (tensor, dims[, prefix])."""
    out = {}
    for name, (t, dims, *prefix) in tensors.items():
        out[f"{name}_ptr"] = t
        pre = prefix[0] if prefix else name
        for d, dim in enumerate(dims):
            out[f"s_{pre}_{dim}" if dim else f"s_{pre}"] = t.stride(d)
    return out


def dot_flags(dtype: torch.dtype, device: torch.device, allow_tf32: bool | None = None):
    """(IEEE, UPCAST) constexprs of :func:`dot` for operands of this dtype and device.

    fp32 follows torch: ``torch.backends.cudnn.allow_tf32`` (True by default, what cuDNN's
    fp32 RNN does) gives TF32 MMAs on CUDA; False gives exact fp32. The interpreter (CPU
    tensors) always computes exactly."""
    if allow_tf32 is None:
        allow_tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    ieee = dtype == torch.float64 or (dtype == torch.float32 and not allow_tf32)
    upcast = device.type == "cpu" and dtype == torch.bfloat16  # interpreter trap
    return ieee, upcast


def like_layout(x: torch.Tensor, T: int, B: int, N: int, dtype) -> torch.Tensor:
    """A new (T, B, N) tensor laid out like x: batch-major storage when x is a batch-first
    view, so batch_first input gives batch_first output without a transpose copy."""
    if x.dim() == 3 and x.stride(0) < x.stride(1):
        return empty(B, T, N, dtype=dtype, device=x.device).transpose(0, 1)
    return empty(T, B, N, dtype=dtype, device=x.device)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"fusedrnn: {msg}")


def check_layer_args(x, states, weights, lengths):
    """Shapes, dtypes, devices of a layer call. states: {name: (tensor, (B, N))};
    weights: {name: (tensor or None, expected shape)}."""
    check(x.dim() == 3, f"x must be 3-D (T, B, I), got shape {tuple(x.shape)}")
    check(x.is_floating_point(), f"x must be a floating-point tensor, got {x.dtype}")
    for name, (t, shape) in {**states, **weights}.items():
        if t is None:
            continue
        check(tuple(t.shape) == tuple(shape),
              f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        check(t.dtype == x.dtype, f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
        check(t.device == x.device, f"{name} must be on x's device {x.device}, got {t.device}")
    if lengths is not None:
        check(tuple(lengths.shape) == (x.shape[1],),
              f"lengths must have shape ({x.shape[1]},), got {tuple(lengths.shape)}")
        check(not lengths.is_floating_point(), f"lengths must be integers, got {lengths.dtype}")
        check(lengths.device == x.device,
              f"lengths must be on x's device {x.device}, got {lengths.device}")


@contextlib.contextmanager
def cudnn_tf32_gemms(device: torch.device):
    """The layer's fp32 GEMMs (input projection, gradient GEMMs) follow
    ``torch.backends.cudnn.allow_tf32``, as cuDNN's RNN does for all of its math, rather
    than the matmul flag (False by default): the same precision as the recurrence's dots
    (:func:`dot_flags`). Nothing changes off CUDA."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def weight_grads(x, dgi, dgh, prev_h, w_ih, w_hh, needs, extra_dh0, dc0=None, d_proj=None,
                 hmask=None):
    """The GEMMs over all steps after the recurrence: dx, dh0, [dc0], dW_ih, dW_hh, db_ih,
    db_hh, [dW_hr]. dgi: gradients of x W_ih^T + b_ih; dgh: of h W_hh^T + b_hh. fp32 in
    TF32 where cuDNN would (:func:`cudnn_tf32_gemms`). hmask: the variational mask the
    recurrent product applied to every h_{t-1}."""
    with cudnn_tf32_gemms(x.device):
        return _weight_grads(x, dgi, dgh, prev_h, w_ih, w_hh, needs, extra_dh0, dc0, d_proj,
                             hmask)


def _weight_grads(x, dgi, dgh, prev_h, w_ih, w_hh, needs, extra_dh0, dc0, d_proj, hmask):
    lp = x.dtype
    g_carry, dg_first = extra_dh0
    need_x, need_h0 = needs[0], needs[1]
    k = 3 if dc0 is not None else 2  # index of w_ih's flag in `needs`
    need_wih, need_whh, need_bih, need_bhh = needs[k:k + 4]
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    dx = (dgi.to(lp) @ w_ih) if need_x else None
    dh0 = None
    if need_h0:
        dh_rec = dg_first.to(g_carry.dtype) @ w_hh.to(g_carry.dtype)
        if hmask is not None:
            dh_rec = dh_rec * hmask.to(dh_rec.dtype)
        dh0 = (g_carry + dh_rec).to(lp)
    if hmask is not None and need_whh:
        prev_h = prev_h * hmask
    dw_ih = (flat(dgi).t().to(lp) @ flat(x)) if need_wih else None
    dw_hh = (flat(dgh).t().to(lp) @ flat(prev_h)) if need_whh else None
    acc = g_carry.dtype  # (the gate gradients may be fp16/bf16: gate_grad_dtype)
    db_ih = flat(dgi).sum(0, dtype=acc).to(lp) if need_bih else None
    db_hh = flat(dgh).sum(0, dtype=acc).to(lp) if need_bhh else None
    grads = [dx, dh0]
    if dc0 is not None:
        grads.append(dc0.to(lp) if needs[2] else None)
    grads += [dw_ih, dw_hh, db_ih, db_hh]
    if dc0 is not None:
        dw_hr = None
        if d_proj is not None and needs[7]:
            dhp, hraw = d_proj
            dw_hr = flat(dhp).t().to(lp) @ flat(hraw)
        grads.append(dw_hr)
    return tuple(grads)


# ----------------------------------------------------------------------------------------
# zoneout (issue 14): per step and unit, a counter-based draw, so the backward regenerates
# the forward's choices instead of storing them (fusedrnn.regularizers.zoneout_rate is the
# same draw in PyTorch, for the reference)
# ----------------------------------------------------------------------------------------
@triton.jit
def zoneout_rate(seed, thresh, stream, t, o_b64, o_n, B, N, ZONEOUT: tl.constexpr):
    """The weight z of the previous value in step t's blend ``z * prev + (1 - z) * new``,
    for rows o_b64, columns o_n of a (B, N) state, at the zoneout rate p = thresh / 2^24:
    ZONEOUT 1 (training): 1.0 where the unit zones out (probability p), else 0.0, an exact
    choice; 2 (eval): the expectation p.

    The draw: 32 bits of Philox (tl.randint keyed by ``seed``) at the counter
    ((t * 4 + stream) * B + b) * N + n, stream = 2 * direction + (0 for h, 1 for c); a unit
    zones out where the draw's top 24 bits are below ``thresh``."""
    if ZONEOUT == 1:
        offs = ((t.to(tl.int64) * 4 + stream) * B + o_b64[:, None]) * N + o_n[None, :]
        bits = tl.randint(seed, offs)
        z = tl.where((bits >> 8).to(tl.int32) < thresh, 1.0, 0.0)
    else:
        z = tl.zeros((o_b64.shape[0], o_n.shape[0]), dtype=tl.float32) + \
            thresh * 5.9604644775390625e-08  # 2^-24: exact
    return z


def hmask_args(hmask, placeholder, B: int, K: int, dtype) -> dict:
    """Kernel arguments of the variational recurrent-state mask: (B, K) in the input's dtype,
    multiplying h_{t-1} where the recurrent product reads it, or none (``placeholder``
    stands in for the unused pointer)."""
    if hmask is None:
        return dict(hm_ptr=placeholder, s_hm_b=0, HAS_HMASK=False)
    check(tuple(hmask.shape) == (B, K) and hmask.dtype == dtype,
          f"the recurrent mask must be ({B}, {K}) in {dtype}, got {tuple(hmask.shape)} in "
          f"{hmask.dtype}")
    check(hmask.stride(-1) == 1, "the recurrent mask must be contiguous along its last dim")
    return dict(hm_ptr=hmask, s_hm_b=hmask.stride(0), HAS_HMASK=True)


def zoneout_args(zoneout) -> dict:
    """Kernel arguments of zoneout: ``zoneout`` is None or (seed, thresh_h, thresh_c, mode),
    mode 1 training, 2 eval (see zoneout_rate)."""
    if zoneout is None:
        return dict(z_seed=0, z_th_h=0, z_th_c=0, ZONEOUT=0)
    seed, th_h, th_c, mode = zoneout
    check(mode in (1, 2), f"zoneout mode must be 1 (training) or 2 (eval), got {mode}")
    return dict(z_seed=seed, z_th_h=th_h, z_th_c=th_c, ZONEOUT=mode)


def restart_rows(resets, lengths, reverse: bool) -> torch.Tensor:
    """The kernels' restart flags (T + 1, B) int8 of one direction (restart_flags): the
    state entering step t is the initial state again. Forward: where resets[t] (t >= 1,
    within the sequence); reverse, which runs each episode backwards from its last step:
    where resets[t + 1] (t + 1 within the sequence). Row T stays zero: the backward reads
    the flags of the step after t, and past the end there is none."""
    T, B = resets.shape
    rs = torch.zeros(T + 1, B, dtype=torch.int8, device=resets.device)
    if T < 2:
        return rs
    starts = resets[1:]  # a reset at 0 changes nothing
    if lengths is not None:
        steps = torch.arange(1, T, device=resets.device).unsqueeze(1)
        starts = starts & (steps < lengths.to(resets.device).unsqueeze(0))
    if reverse:
        rs[:T - 1] = starts
    else:
        rs[1:T] = starts
    return rs


def resets_args(rs, placeholder) -> dict:
    """Kernel arguments of the restart flags (restart_rows), or none."""
    if rs is None:
        return dict(rs_ptr=placeholder, s_rs_t=0, HAS_RESETS=False)
    return dict(rs_ptr=rs, s_rs_t=rs.stride(0), HAS_RESETS=True)


def restarted_prev(prev_h, rs, h0):
    """The state entering each step (T, B, K) for the weight gradients: the history, or
    the initial state where the step restarts (rs: restart_rows)."""
    if rs is None:
        return prev_h
    return torch.where(rs[:-1].unsqueeze(-1) != 0, h0, prev_h)


def carried(d_state, acc, with_restarts: bool):
    """The carried gradient buffer of a state, (B, N) in ``acc`` dtype, initialized from
    the final state's gradient. With restarts it is the first half of a (2, B, N) buffer
    whose second half, zeroed, accumulates what restarts send to the initial state
    (divert). Returns (carried, accumulator or None)."""
    if not with_restarts:
        return d_state.to(acc, copy=True), None
    both = torch.zeros(2, *d_state.shape, dtype=acc, device=d_state.device)
    both[0] = d_state
    return both[0], both[1]
