"""The plan: which recurrent kernel runs a layer pass, on how many programs, with what tiles.

One function, :func:`plan`, maps (cell, dtype, batch, hidden, state width, projection,
training, SM count, forward or backward pass) to a dict with the kernel ("stationary",
"sequence" or "step"), its grid, blocks and warps, whether W_hh stays on chip, and a
one-line reason.
``fusedrnn.explain`` shows it per layer and direction; the benchmark records it.

The kernels (GUIDE section 3):
- ``stationary``: weight-stationary sequence kernel (kernels/stationary.py). A program owns
  U hidden units (all gate rows of them) for BB batch rows, loads that slice of W_hh once
  and keeps it on chip (shared memory) for all T steps; the programs of a batch group meet
  at their own barrier between steps. Needs every program co-resident: one per SM at most.
- ``sequence``: the streaming sequence kernel (one launch, programs loop over tiles, W_hh
  re-read from L2 every step): where the slice does not fit on chip.
- ``step``: one launch per step: where a step has far more tiles than the GPU has SMs.
``FUSEDRNN_KERNEL=step|sequence|stationary|splitk|ll|red|narrow|stream32`` overrides the
choice.
"""
from __future__ import annotations

import functools
import os

import torch
import triton

from fusedrnn.kernels.common import block_sizes, gate_grad_dtype, sm_count
from fusedrnn.kernels.ll import bits as ll_bits

KERNEL_ENV = "FUSEDRNN_KERNEL"  # "auto" | "step" | "sequence" | "stationary" | ... (KERNELS)
# ("splitk": the plan's own choice, except that an LSTM/GRU backward is split over K
# wherever a split-K tiling exists: what the benchmark's fused-splitk rows time against
# the weight-stationary backward where both exist. "ll": the plan's own choice, with the
# weight-stationary forward exchanging h as words that carry their step instead of meeting
# at a barrier (kernels/ll.py): what the fused-ll rows time against the barrier. "red": the
# plan's own choice, with the weight-stationary kernels' barriers arriving with a
# red.release instead of an atomic whose value they wait for (common.group_barrier): the
# fused-red rows)
# "narrow": the plan's own choice, except that a 16-bit LSTM or GRU takes the narrow
# 16-unit tiles (NARROW_UNITS) wherever one is resident, before 4 or 8 units: what the
# fused-narrow rows time against the 8-unit tiles on one GPU (an H200 times there what an
# A100 or an H100 PCIe plans at H=1024).
# "stream32": the plan's own choice, except that the streaming kernels keep 32-unit tiles,
# block_sizes' K chunks and Triton's default stages (what they ran before stream_blocks and
# stream_stages): what the fused-stream32 rows time against the plan's narrower, deeper
# tiles and deeper pipeline where W_hh streams.
KERNELS = ("auto", "step", "sequence", "stationary", "splitk", "ll", "red", "narrow",
           "stream32")

# Bytes of W_hh one program may keep in shared memory: an H100/H200 block gets up to 227 KB;
# the rest is left for the h chunks and the layout conversions of the gate split.
SMEM_W_BUDGET = 160 * 1024
# All of a program's shared memory (stationary_smem), at most what a block may have: past it
# the launch fails (OutOfResources). An H100/H200's, the default; plan_for takes the
# device's (an A100 163 KB, sm_86/89 99 KB: plans made for an H100 failed to launch there).
SMEM_BLOCK_LIMIT = 227 * 1024
# U: hidden units per program; 4U gate rows are the MMA's M.
UNIT_CHOICES = (4, 8)
# Past them, the forward where no tiling of 4 or 8 units is resident (16-bit B=128 at
# H=1024 and H=768, which streamed W_hh at 0.5x cuDNN): 16 units, M=64 rows, as one plain
# dot with the warps over M and N (k_runs: one run; a wgmma on sm_90). Its batched form,
# each warp a whole (64, BB) partial product, spilled 96-1232 B; the plain dot with 4
# warps 300-600 B (B=128 H=1024: 255 registers); with WIDE_WARPS none (239 / 254
# registers on Triton 3.9 / 3.6, sm_90). 16-bit only: fp32 (TF32) spilled 136-384 B (fp32
# H=512 B=256). (The backward's batched dot at U=16 BB=64 spilled 472-480 B on Triton 3.6,
# fp16 H=768, 112 spill accesses a step: it streams there.)
WIDE_UNITS = 16
WIDE_WARPS = 8
# Where no tiling of 4 or 8 units, nor a wide one, is resident, 16 units as a narrow tile:
# the batched runs of K (k_runs, 4 warps forward) and the gate-batched backward (8 warps),
# as at 4 and 8 units (plan.wide's wide_tiles False). Without it every 16-bit LSTM and GRU
# at H=1024 streamed W_hh on an A100 (sm_80, no wgmma, 108 SMs, 163 KB a block), even B=8
# (8 units: 128 groups > 108 SMs), and on an H100 PCIe (114 SMs); a bidirectional 16-bit
# layer at H=768-1024 B <= 32 now pairs its directions on half the SMs with them. sm_80
# builds (Triton 3.9 / 3.6): bf16 LSTM B=8 H=1024 forward 94 / 92 registers, backward 120
# / 128, bf16 GRU B=16 H=1024 backward 152 / 190, no spill; fp16 GRU B=64 H=768's backward
# (32 rows) 255, 0 / 24 B. sm_90: bf16 LSTM B=8 H=1024 forward 90 / 94, backward 170 / 128
# (0 / 8 B); fp16 LSTM B=16 H=768 paired 120-126 and 144-174, no spill; bf16 B=32 H=1024
# paired backward 255, 8 / 24 B. Each warp's MMAs the work (mma.sync). B=32's backward at
# H=1024 needs 192 KB of shared memory (not on an A100). 16-bit LSTM and GRU only (fp32's
# slice at H >= 768 is over SMEM_W_BUDGET; the plain RNN's 16 or 32 units, 4 x 4 or 8,
# cover H=1024 already).
# At most 32 batch rows a program: each forward warp holds a (64, BB) fp32 partial product,
# and at 64 rows (bf16 B=128 H=768) the sm_80 builds spilled 88 B (Triton 3.9) and 376 B,
# 93 accesses a step (3.6), with 29-32 block barriers a step; at 32 rows none.
NARROW_UNITS = 16
NARROW_MAX_BATCH = 32
# Their slice of W_hh may be up to 192 KB (16-bit H=1280-1536: 64 rows x 3 chunks of 512,
# which streamed on an H100: 8 units make 160-192 groups), the program's whole shared
# memory still within the GPU's (216-224 KB of an H100's 227: never an A100's 163), and
# only within the register budgets: sm_90 builds of bf16 LSTM/GRU B=8 H=1536, forward and
# backward, 96-206 registers, no spill (Triton 3.9 and 3.6); the forward at 32 rows (768 B
# of h a thread, past the budget) spilled 24 / 248 B, 82 accesses a step on 3.6.
NARROW_W_BUDGET = 192 * 1024
# ... and only at BB >= 64: each warpgroup's wgmma then 64 rows by 32 (a narrower batch
# leaves the tensor cores short tiles while both warpgroups still read all of W)
WIDE_MIN_BATCH = 64
# Units a program where the weight-stationary kernel is forced past what stays resident
# (the interpreter, one program looping over the tiles)
FORCED_UNITS = 8
# Batch sub-tiles a program's forward runs one after another where the plan forces it (the
# interpreter; the tests set 2 to run the split path, see sub_rows)
FORCED_SPLIT = 1
# A plain RNN has one gate: U units are U rows, so it takes four times the units for the
# same M (16 or 32 rows) and the same compiled shape.
RNN_UNIT_SCALE = 4
BATCH_CHOICES = (64, 32, 16, 8)   # BB: batch rows per program, the MMA's N
# Past 64 rows a program (where no tiling of at most 64 is resident: bf16 B=512 H=1024,
# fp32 B=128 H=1024, which streamed W_hh at 0.44x and 0.68x cuDNN on the H200), the
# forward's rows as up to MAX_SPLIT sub-tiles of at most 64 (sub_rows), one after another
# a step with the one slice: the grid stays within the SMs and W_hh on chip.
SPLIT_CHOICES = (256, 128)
MAX_SPLIT = 4
MAX_K_CHUNKS = 4                  # K as at most 4 power-of-two chunks (768 = 3 x 256)
# The backward split over K (kernels/splitk.py): where no tiling of the backward above is
# resident (16-bit and fp32 B >= 128 at H = 1024, which streamed W_hh at 0.45-0.66x
# cuDNN's training step on the H200), S programs share a tile of U units, each with the
# rows of W_hh of one K part (KC = H / S rows of each gate), their partial products summed
# through global memory. U: wide, since the broadcast of dgates a step is n_u * B * G * H.
# (FUSEDRNN_KERNEL=splitk takes it wherever it has a tiling, for the benchmark.)
# sm_90 only (plan.wgmma, as the wide tiles): its sm_80 builds (mma.sync) laid the 8 warps
# along the rows, every MMA twice (bf16 B=128 H=1024: 512 a warp a step where the work is
# 256), and spilled 104-112 B.
KSPLIT_UNITS = (64, 32)
# S: 3, 6 and 12 parts cover a hidden size of 3 power-of-two chunks exactly (768 = 3 x 256),
# where 2 parts of 512 would hold a third of W_hh's rows as zeros: fp32 B=64-128 H=768
# (4 x 512 x 32 x 4 B = 256 KB a program at 2 parts, past the budget) streamed its
# backward on 24-48 programs before them
KSPLIT_CHOICES = (2, 3, 4, 6, 8, 12, 16)
# BB: a program's batch rows (its tile's, and its barrier group's); each step's product
# runs them as BB / PR partial products of PR rows (splitk_product_rows), one after another
KSPLIT_ROWS = (512, 256, 128, 64)
KSPLIT_PRODUCT_ROWS = (128, 64)
KSPLIT_WARPS = 8
# the (BB, U) fp32 partial products a thread holds (one, or G: splitk_chained), at most
# 64 registers, beside the staged dgates part and the W part's fragments
KSPLIT_ACC_BYTES = 256
# A gate's dgates part (BB, KC) staged through registers a thread: within 128 B, no spill
# (bf16 B=128 H=1024, BB=64 KC=256: 208-234 registers); at 256 B, fp32 B=128 H=1024
# (BB=128 KC=128) and bf16 B=256 H=1024 spilled 160-672 B (Triton 3.9 / 3.6, sm_90), 40-137
# spill accesses a step. A preference, as the register budgets above: past it the plan
# takes a tiling over streaming W_hh (not measured)
KSPLIT_X_BYTES = 128
# Every gate's part loaded before the product (ahead) within 256 B a thread: the GRU's
# three at 384 B spilled 8 B (B=128, 16 update rows) and 304 B (B=512, 64 rows) on Triton
# 3.6, sm_90; 0 on 3.9
KSPLIT_AHEAD_BYTES = 256
# The rows of the update a program runs at once, at most 64: at 128 (bf16 B=1024 H=1024)
# the builds spilled 736-776 B, 219-271 accesses a step. A program whose share of the
# tile's rows is more (16-bit B=512 H=768: 128 rows; it streamed its backward, 0.44-0.79x
# cuDNN at B=512 on the H200) runs it as passes of KSPLIT_PASS_ROWS (splitk_pass_rows); the
# plan prefers tilings of one pass (every earlier plan's), taking passes only where no such
# tiling fits. Passes of 64 spilled 40-160 B, 11-59 accesses a step (sm_90, Triton 3.9 and
# 3.6: bf16 LSTM B=512 H=768, bf16 GRU B=1024 H=1024, fp32 LSTM B=512 H=768); of 32, 8-56
# B and 2-13; of 16, 0-72 B (3.9's LSTM spilled as much at 16 as at 32).
KSPLIT_UPDATE_ROWS = 64
KSPLIT_PASS_ROWS = 32
# S where the plan forces the weight-stationary kernels (the interpreter; tests set 2 to 6),
# and its partial products' rows (of 16; tests set 8: two a step). On a GPU (the tests'
# native run) a FORCED_KSPLIT past 1 takes the split-K tiling its search finds with that S,
# else with any, wherever there is one, so that the tests run it there too.
FORCED_KSPLIT = 1
FORCED_PRODUCT_ROWS = 16
# and the rows of one pass of its update (None: the whole share; tests set 4: two passes)
FORCED_PASS_ROWS = None
# The weight-stationary forward's h exchange as LL words (kernels/ll.py) where the plan is
# forced to it (FUSEDRNN_KERNEL=ll; the tests set this). Not the default until a GPU run
# shows it correct and faster than the barrier (bench's fused-ll rows): the model saves two
# or three L2 round trips a step (~0.6-1 us of the ~1.06 us barrier) and pays twice the
# broadcast's bytes.
FORCED_LL = False
# The weight-stationary kernels' barriers arriving with a red.release (common.group_barrier,
# RED) where the plan is forced to it (FUSEDRNN_KERNEL=red; the tests set this). Not the
# default until a GPU run shows it faster (bench.micro's barrier rows, the fused-red rows):
# the model saves the atomic's round trip and a block barrier a step (~0.3 us).
FORCED_RED = False
# The per-step operand (h_{t-1}^T forward, a K chunk of dgates_{t+1} backward) is staged
# through registers, divided over the program's warps (stationary_warps; the budgets were
# measured when the forward had one warp per 16 gate rows and the backward one per gate,
# and the compile check still holds every tiling within them to no spill). Forward: 512
# bytes a thread spilled 80-680 B (sm_80/sm_90) and 384 did not (measured on builds
# without a launch's 16-byte alignment hints, so conservative: as launched, fp16 H=768
# BB=16 takes 168 registers, not 255). Backward, a dot batched over the gates (W_hh's
# columns in shared memory), one chunk over the warps (4 x BB x KC): no spill up to 512 B a
# thread (fp32 LSTM BB=16) with 4 warps; with 8 (4 gates x 2 runs of K), 512 B spilled
# 272 B on Triton 3.6 (bf16 BB=64 H=1024; 8-56 B on 3.9), and 256 B (fp16 BB=16 H=768:
# 150-180 registers) did not. The plain RNN's backward (one gate) keeps its W_hh columns
# in registers instead, and spilled past ~192 B of them a thread (320 B of stack at fp32
# U=16 H=1024).
X_REG_BYTES = 384
X_REG_BYTES_BWD = 256
RNN_BWD_W_REG_BYTES = 192
# The plain RNN's forward at 32 rows (U=32; then 2 warps) has its whole (BB, U) state tile in
# one block after the transpose, and spilled more (sm_80/sm_90 compile check): 104-120 B
# at 256 B of h a thread, 144 B at 192, 184-200 B at 384; 8 B at 128, and none with one
# warp (U=16) at 384.
X_REG_BYTES_RNN_2W = 128
# The LSTM's projection (proj_size P) in the weight-stationary kernels (proj_tiling).
# Forward: each step a second phase after the gates' barrier, where unit group i's programs
# also make h_t = W_hr m_t of P units [i PU, (i + 1) PU) for their batch rows, from
# m_t = o * tanh(c_t) of every hidden unit, with their PU rows of W_hr on chip as a plain
# RNN's W_hh (runs of K), then a second barrier. PU at least 16 rows, the gates' least M
# (4U at U=4). The backward likewise in two phases a step: unit group i's programs first
# make the gradient of P units [i U, (i + 1) U) of h_t (dgates_{t+1} times those U columns
# of W_hh, on chip: the product without a projection, on fewer programs, so fewer read the
# broadcast of dgates_{t+1}: P / U of each batch group's H / U), then, after a barrier,
# their own units' gate gradients from all of it (dh_t times their U columns of W_hr, on
# chip). Neither pass takes the wide tiles, the LL words, the red.release nor split-K.
PROJ_MIN_UNITS = 16


def kernel_choice() -> str:
    choice = os.environ.get(KERNEL_ENV, "auto")
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {KERNELS}, got {choice!r}")
    return choice


def k_chunks(K: int) -> tuple[int, int]:
    """(NK, KC): K columns as NK <= 4 chunks of KC (a power of two >= 16), with the least
    padding, chunks of at most 256 where that covers K, then the fewest chunks."""
    best = None
    for nk in range(1, MAX_K_CHUNKS + 1):
        kc = max(16, triton.next_power_of_2(triton.cdiv(K, nk)))
        key = (kc > 256, nk * kc, nk)
        if best is None or key < best[0]:
            best = (key, nk, kc)
    return best[1], best[2]


_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


# The streaming kernels' tiles (kernels/lstm.py, gru.py, rnn.py, where W_hh does not stay on
# chip): units per tile (BLOCK_H), largest first. Every step a program reads the W_hh rows
# of its tiles' units (G per unit) and their batch rows of the state (the backward: of the
# gate gradients, G per row), each K chunk by K chunk. At 32 units, 16-bit LSTM and GRU at
# H=2048, B <= 32 made 64 programs on 132 SMs, each streaming 512 KB of W_hh a step (H200,
# bf16 LSTM B=8: 29.9 us a step against cuDNN's 19.5; GRU 27.3 against 23.3), and H=1536
# 48. Halving the tile halves what a program reads a step; and since each K chunk pays a
# round of waits (block_sizes), a narrower tile takes deeper chunks (up to STREAM_MAX_K)
# while a chunk's operands stay within a 32-unit, 64-row, 64-deep tile's: half the rounds
# a step at half the tile, and no more shared memory for the K loop's pipeline than those
# tiles took (the buffers of 3 stages: fp32 LSTM forward 144 KB on sm_90; 96 KB on sm_80
# and sm_86, 2 buffers, within an RTX 3090's 99 KB).
STREAM_UNITS = (32, 16, 8)
STREAM_MAX_K = 256
# Tests: streaming tiles of this many units, and K chunks this deep, whatever the rule (the
# interpreter's one program takes the largest tile and block_sizes' chunk; the narrower
# tiles' and deeper chunks' masks and offsets are run there so).
FORCED_STREAM_UNITS = None
FORCED_STREAM_K = None


def stream_blocks(cell: str, B: int, H: int, tensor_cores: bool, sm_count: int,
                  cuda: bool, backward: bool = False, max_rows: int = 64,
                  K: int | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_H, BLOCK_K, num_warps) of the streaming and step kernels of ``cell``
    over H units with a state K wide (proj_size, else H): block_sizes' batch rows (at most
    ``max_rows``) and K chunk, and the units a tile (STREAM_UNITS) whose programs read the
    fewest elements a step on a GPU with ``sm_count`` SMs: rounds of tiles a program (tiles
    over SMs) times a tile's W_hh rows plus its state (or gate-gradient) rows, the fewer
    units on a tie; a tile narrowed so, on the tensor cores, deeper K chunks (see
    STREAM_UNITS). Under the interpreter (``cuda`` False: one program) block_sizes'
    own."""
    rows = min(B, max_rows)
    bb, bh, bk, _ = block_sizes(rows, H, tensor_cores)
    g = _GATES[cell]

    def per_program(n):  # (elements a program reads a step, over K; then the wider tile)
        tiles = triton.cdiv(B, bb) * triton.cdiv(H, n)
        return triton.cdiv(tiles, sm_count) * (g * n + (g if backward else 1) * bb), -n

    def chunk(n, k, b):  # elements of a K chunk's operands: W_hh's (all gates forward), state's
        return ((1 if backward else g) * n + b) * k

    if FORCED_STREAM_UNITS:
        bh = FORCED_STREAM_UNITS
    elif cuda and kernel_choice() != "stream32":
        narrowest = min((n for n in STREAM_UNITS if n <= bh), key=per_program)
        if tensor_cores and narrowest < bh:
            deepest = min(STREAM_MAX_K, triton.next_power_of_2(min(H, K or H)))
            while 2 * bk <= deepest and chunk(narrowest, 2 * bk, bb) <= chunk(32, 64, 64):
                bk *= 2
        bh = narrowest
    return block_sizes(rows, H, tensor_cores, bh, FORCED_STREAM_K or bk)


# The streaming sequence kernels' K loop copies each chunk's operands (W_hh's rows of the
# tile, the state's or gate gradients' rows) into shared memory with cp.async, Triton's
# software pipeline of num_stages: at Triton's default of 3, two buffers on sm_80 (three
# where sm_90 runs the dot as a wgmma), the wait for chunk i leaving chunk i+1's copies in
# flight (read off the sm_90 TTGIR). The H200 run of 2026-11-27 streamed 4.6 KB chunks (32
# units, 16 rows, 16 deep, bf16 LSTM B=8 H=2048) at 0.23 us, ~410 clocks, a chunk with two
# in flight: ~820 clocks from issue to use. Keeping an SM's ~64 B a clock from L2 busy over
# that takes ~52 KB in flight, more than two of the narrowed tiles' chunks (16-bit: 12-24
# KB). So a sequence kernel, which has an SM to itself, takes stages enough for
# STREAM_IN_FLIGHT bytes (at most STREAM_MAX_STAGES), as far as twice num_stages chunks fit
# the device's shared memory a block: the builds take up to 4/3 of num_stages chunks (the
# LSTM backward's projection phase; 8-unit tiles pad to 16), the compile check holds them
# within twice. Stages cost no registers (the sm_80 and sm_90 builds: the same count at 3
# and 4). An estimate from one measurement, not a timing: fused-stream32 (Triton's default
# stages, the old tiles) is timed beside it.
STREAM_IN_FLIGHT = 820 * 64
STREAM_MAX_STAGES = 5
STREAM_DEFAULT_STAGES = 3  # Triton's default num_stages: step kernels, and stream32


def stream_chunk_bytes(cell: str, itemsize: int, bb: int, bh: int, bk: int,
                       backward: bool) -> int:
    """Bytes of one K chunk's operands in a streaming kernel's tile of bb rows and bh units:
    the forward's W_hh rows of every gate and the state's rows, the backward's W_hh columns
    of the tile and the gate gradients' rows, bk deep."""
    return ((1 if backward else _GATES[cell]) * bh + bb) * bk * itemsize


def stream_stages(cell: str, dtype: torch.dtype, bb: int, bh: int, bk: int, backward: bool,
                  smem_limit: int) -> int:
    """num_stages of a streaming sequence kernel's K loop (see STREAM_IN_FLIGHT)."""
    chunk = stream_chunk_bytes(cell, dtype.itemsize, bb, bh, bk, backward)
    enough = 1 - (-STREAM_IN_FLIGHT // chunk)  # (buffers: one more than chunks in flight)
    stages = min(STREAM_MAX_STAGES, max(STREAM_DEFAULT_STAGES, enough))
    while stages > STREAM_DEFAULT_STAGES and 2 * stages * chunk > smem_limit:
        stages -= 1
    return stages


def plan_blocks(p: dict, tensor_cores: bool, max_rows: int = 64
                ) -> tuple[int, int, int, int]:
    """stream_blocks of the pass a streaming or step plan ``p`` is of: the tiles its
    launcher runs (max_rows: fewer batch rows a tile, as the LSTM's backward with the cell
    states' gradient)."""
    return stream_blocks(p["cell"], p["B"], p["H"], tensor_cores, p["sm_count"], p["cuda"],
                         p["pass"] == "backward", max_rows, p["K"])


# The forward's K runs (k_runs): 4, one warp each, one per SM sub-partition. 8 spilled on
# Triton 3.6 (GRU, fp16 H=768 BB=16: 24 B, 6 accesses in the time step) and needed more
# shared memory for the sum over the runs than the staged h chunk.
MAX_K_RUNS = 4


def proj_tiling(dtype: torch.dtype, P: int, H: int, u: int, bb: int, warps: int,
                cuda_rules: bool = True, ahead: bool = True, room: int | None = None,
                backward: bool = False) -> dict:
    """The projection's phase of a weight-stationary LSTM pass (PROJ_MIN_UNITS) for a tiling
    of U units, BB rows a product and ``warps`` warps: PU projected units a unit group (so
    that the H / U groups cover P). Forward: W_hr's PU rows as PNK chunks of PKC columns
    of H, the product's operand m_t; backward: W_hr's U columns as PNK chunks of PKC rows of
    P, the operand dh_t (in the gate gradients' dtype) and PU = U. Each chunk in PKS runs
    (one a warp, as the gates' runs of K), every chunk of the operand loaded before the
    product (p_ahead) within X_REG_BYTES (backward: X_REG_BYTES_BWD) a thread and ``room``
    bytes of shared memory (under the interpreter: ``ahead``, the gates' own choice).
    ``smem``: its W_hr slice plus the staged operand, beside the gates' (stationary_smem;
    whose columns of W_hh are the backward's at PU = U); ``w_bytes``: the
    slice."""
    pu = u if backward else max(PROJ_MIN_UNITS, triton.next_power_of_2(
        triton.cdiv(P, triton.cdiv(H, u))))
    extent = P if backward else H
    pnk, pkc = k_chunks(extent)
    if pkc > 512:  # (k_chunks takes one chunk of 2048 for H=2048: four of 512 here)
        pnk = MAX_K_CHUNKS
        pkc = triton.next_power_of_2(triton.cdiv(extent, pnk))
    pks = max(1, min(warps, pkc // 16))
    elt = torch.empty((), dtype=gate_grad_dtype(dtype) if backward else dtype).element_size()
    rows = u if backward else pu
    w = rows * pnk * pkc * elt
    partials = pks * rows * bb * 4

    def smem(chunks):
        return w + max(chunks * pkc * bb * elt, partials)

    if cuda_rules:
        held = pnk * pkc * bb * elt // (32 * warps)
        ahead = (held <= (X_REG_BYTES_BWD if backward else X_REG_BYTES)
                 and (room is None or smem(pnk) <= room))
    return dict(PU=pu, PNK=pnk, PKC=pkc, PKS=pks, p_ahead=ahead,
                smem=smem(pnk if ahead else 1), w_bytes=w)


def _batch_gates(cell: str) -> int:
    """The backward's batch of gates: 4 (a GRU's three padded to four), 1 for the plain RNN."""
    return 1 if cell == "rnn" else 4


def k_runs(cell: str, kc: int, bb: int, backward: bool, u: int,
           wide_tiles: bool = True) -> int:
    """KS: each K chunk of a weight-stationary program's product split in KS runs of KC / KS
    columns (at least 16, a tl.dot's K), each run's product on its own warp, summed after.

    Both products are dots batched over their warps' work, and Triton 3.6, what the GPU
    machines run, lays a batched dot's warps all along the batch (warpsPerCTA
    [num_warps, 1, 1]; 3.9 also spreads them over M): a warp past the batch redoes another
    warp's MMAs (the backward at BB=32 with 8 warps over 4 gates did each MMA twice). So
    the batch is the warps, and the runs make the batch.
    Forward: the batch is MAX_K_RUNS runs. One warp with the whole K ran each step's product
    as chains of K/16 dependent MMAs (48 at H=768, ~33 cycles each); 4 runs make them K/64.
    Backward: the 4 gates times 2 runs, 8 warps (4, one a gate, had chains of KC/16 and
    twice the registers' share of the staged chunk); the plain RNN's one gate in 8 runs
    (it keeps its W_hh columns in registers: with 4 runs, fp16 U=16 BB=64 H=768 spilled
    136 B on Triton 3.6; with 8, none).
    Wide (u: 64 gate rows or more, WIDE_UNITS): the forward's product is one plain dot,
    one run, its warps (WIDE_WARPS) over the rows and the batch: the tile has work for
    every warp without splitting K."""
    most = max(1, kc // 16)
    if wide(cell, u, backward, wide_tiles):
        return 1
    if backward:
        return min(2, most) if cell != "rnn" else min(8, most)
    return min(MAX_K_RUNS, most)


def stationary_warps(cell: str, kc: int, bb: int, backward: bool, u: int,
                     wide_tiles: bool = True) -> int:
    """Warps of a weight-stationary program: one per element of its product's batch (see
    k_runs); a wide forward's plain dot, WIDE_WARPS."""
    if wide(cell, u, backward, wide_tiles):
        return WIDE_WARPS
    return (k_runs(cell, kc, bb, backward, u, wide_tiles)
            * (_batch_gates(cell) if backward else 1))


def _rows(cell: str, u: int) -> int:
    """Rows of a program's forward slice, the MMA's M: 4U (a GRU's fourth gate is zero
    padding), or U for the plain RNN."""
    return u if cell == "rnn" else 4 * u


def wide(cell: str, u: int, backward: bool, wide_tiles: bool = True) -> bool:
    """Whether a forward tiling is wide (WIDE_UNITS: 64 gate rows or more), one plain dot.
    wide_tiles False (a GPU without wgmma, plan.wgmma, or a narrow tiling): never; 64 gate
    rows are then a narrow tile (NARROW_UNITS), the batched runs of K as at 4 and 8 units."""
    return wide_tiles and not backward and _rows(cell, u) >= 64


def sub_rows(cell: str, dtype: torch.dtype, u: int, bb: int, kc: int,
             backward: bool, wide_tiles: bool = True) -> int:
    """The rows of one product and update of a program that owns BB batch rows: its forward
    runs them as BB / sub_rows sub-tiles one after another a step (SPLIT), each a whole
    product and update with the same W_hh slice, so the program keeps its rows and the grid
    its size. At most 64 (the largest of BATCH_CHOICES), and 32 where one K chunk of
    h_{t-1}^T for 64 rows (KC x 64, what a thread stages at once even chunk by chunk) is
    over X_REG_BYTES a thread. Only fp32 (TF32) at 64 rows is over: 512 B a thread, whose
    sm_90 builds on Triton 3.6 (what the GPU machines run) spilled 104 B to 16 KB, the
    LSTM's at H >= 768 with 32 registers and 12-16 KB of stack (6-8 thousand spill accesses
    a step; ptxas 12.8 and 12.9 alike, from Triton 3.6's PTX); measured on the H200 before,
    fp32 LSTM B=128 H=512 (BB=64) ran 17.8 us a step where B=32 (BB=32) ran 4.6. As two
    sub-tiles of 32 rows (fp32 B=64 H=768 and 1024, B=128 H=512, B=256 H=256; LSTM and GRU,
    sm_90, Triton 3.6 and 3.9): 0-24 B of spills at H=1024, none at the others. (16-bit at
    64 rows, 256 B a chunk, and the backward stay whole: their spills are 100-500 B, L1
    hits, against a second round trip a step for a second sub-tile; not measured.)"""
    sub = min(bb, BATCH_CHOICES[0])
    if backward or wide(cell, u, backward, wide_tiles) or sub < BATCH_CHOICES[0]:
        return sub
    one_chunk = register_bytes(cell, dtype, u, sub, 1, kc, False, wide_tiles)
    return sub // 2 if one_chunk > X_REG_BYTES else sub


def register_bytes(cell: str, dtype: torch.dtype, u: int, bb: int, nk: int, kc: int,
                   backward: bool, wide_tiles: bool = True) -> int:
    """Bytes a thread of a weight-stationary program holds in registers of the per-step
    operand: forward, h_{t-1}^T (all NK chunks; a wide tile, the chunks it loads at once:
    its builds stage them through shared memory one at a time, see x_ahead); backward,
    one K chunk of dgates_{t+1} for the batch of gates (4, or 1 for the plain RNN), in the
    gate gradients' dtype."""
    if backward:
        elt = torch.empty((), dtype=gate_grad_dtype(dtype)).element_size()
        warps = stationary_warps(cell, kc, bb, True, u, wide_tiles)
        return _batch_gates(cell) * kc * bb * elt // (32 * warps)
    elt = torch.empty((), dtype=dtype).element_size()
    chunks = (nk if x_ahead(cell, dtype, u, bb, nk, kc, False) else 1) if wide(
        cell, u, False, wide_tiles) else nk
    return chunks * kc * bb * elt // (32 * stationary_warps(cell, kc, bb, False, u,
                                                            wide_tiles))


def within_register_budget(cell: str, dtype: torch.dtype, u: int, bb: int, nk: int, kc: int,
                           backward: bool, wide_tiles: bool = True) -> bool:
    """Whether :func:`register_bytes` stays under the budgets above, where the sm_80/sm_90
    builds do not spill; past them the plan still takes a resident tiling."""
    operand = register_bytes(cell, dtype, u, bb, nk, kc, backward, wide_tiles)
    if backward:
        elt = torch.empty((), dtype=dtype).element_size()
        warps = stationary_warps(cell, kc, bb, True, u, wide_tiles)
        w_rnn = nk * kc * u * elt // (32 * warps) if cell == "rnn" else 0
        return operand <= X_REG_BYTES_BWD and w_rnn <= RNN_BWD_W_REG_BYTES
    if cell == "rnn" and _rows(cell, u) > 16 and not wide(cell, u, backward, wide_tiles):
        return operand <= X_REG_BYTES_RNN_2W
    return operand <= X_REG_BYTES


def stationary_smem(cell: str, dtype: torch.dtype, u: int, bb: int, nk: int, kc: int,
                    backward: bool, ahead: bool = False, partials: bool = True,
                    wide_tiles: bool = True) -> int:
    """Shared memory of a weight-stationary program, as its sm_90 builds have it (compile
    check, to the byte on every tiling measured): the W_hh slice, plus the step's operand
    staged for the MMA. Forward: chunks of h_{t-1}^T (KC, BB), one reused chunk to chunk,
    or with ``ahead`` (x_ahead) all NK, loaded together before the product. Backward: one
    chunk of dgates_{t+1} for the batch of gates (4, or 1 for the plain RNN; (4, BB, KC))
    in the gate gradients' dtype (common.gate_grad_dtype), reused chunk to chunk."""
    elt = torch.empty((), dtype=dtype).element_size()
    w = _rows(cell, u) * nk * kc * elt
    # the sum over the batched dot's warps goes through shared memory too (the same space:
    # the larger of the two): fp32 partial products, one (M, N) tile a warp. (Triton 3.6
    # on sm_90 keeps them there where they outgrow the staged operand, 3.9 on sm_80 did
    # not: the plain RNN's backward at U=32 BB=8, 24 KB against 20. ``partials=False`` is
    # the model without them; the limit takes them.)
    runs = k_runs(cell, kc, bb, backward, u, wide_tiles) if partials else 0
    if wide(cell, u, backward, wide_tiles):  # chunks staged one at a time (ahead: from registers)
        return w + max(kc * bb * elt, runs * _rows(cell, u) * bb * 4)
    if not backward:
        return w + max((nk if ahead else 1) * kc * bb * elt, runs * _rows(cell, u) * bb * 4)
    dg_elt = torch.empty((), dtype=gate_grad_dtype(dtype)).element_size()
    gp = _batch_gates(cell)
    return w + max((nk if ahead else 1) * gp * bb * kc * dg_elt, gp * runs * bb * u * 4)


def x_ahead(cell: str, dtype: torch.dtype, u: int, bb: int, nk: int, kc: int,
            backward: bool, cuda_rules: bool = True,
            smem_limit: int = SMEM_BLOCK_LIMIT, wide_tiles: bool = True) -> bool:
    """Whether a pass loads every chunk of its operand before its product (X_AHEAD). The
    forward, every chunk of h_{t-1}: one L2 round trip a step where chunk by chunk the
    sm_90 builds issued the last chunk's loads among the MMAs of the one before (two). It
    stages all NK chunks in shared memory at once, so only where that fits (fp32 BB >= 32
    at H >= 768 does not); its builds also
    took fewer registers (bf16 H=1024 BB=64: 170-200, no spill, against 255 and 32-56 B
    of spills; Triton 3.6: 96-112 B against 368-560).
    A wide tile's builds keep the chunks loaded ahead in registers and stage them one at a
    time: ahead where they fit X_REG_BYTES (fp16 H=768 BB=64: 3 chunks, 244-254 registers,
    no spill; bf16 H=1024 BB=64, 4 chunks, would be 512 B a thread: chunk by chunk).
    The backward likewise, every chunk of dgates_{t+1} for the batch of gates: chunk by
    chunk, the sm_90 builds issued each chunk's loads at the start of the MMAs of the one
    before, 8 dependent HMMAs (~260 cycles) against an L2 round trip (~600): the step
    waited out most of NK round trips. Ahead (fp16 B=16 H=768, bf16 B=8 H=1024): no load
    among the MMAs, fewer registers (145-172 against 176-182), no spill."""
    if wide(cell, u, backward, wide_tiles):
        elt = torch.empty((), dtype=dtype).element_size()
        return (not cuda_rules or nk * kc * bb * elt // (32 * WIDE_WARPS) <= X_REG_BYTES)
    return not cuda_rules or stationary_smem(cell, dtype, u, bb, nk, kc, backward, True,
                                             wide_tiles=wide_tiles) <= smem_limit


def splitk_smem(cell: str, dtype: torch.dtype, u: int, pr: int, kc: int,
                ahead: bool = False) -> int:
    """Shared memory of a split-K backward program (kernels/splitk.py): its W_hh part,
    G x (KC, U), and one partial product's dgates part staged for the MMA, (PR, KC) one
    gate at a time, or with ``ahead`` every gate's."""
    g = _GATES[cell]
    elt = torch.empty((), dtype=dtype).element_size()
    dg_elt = torch.empty((), dtype=gate_grad_dtype(dtype)).element_size()
    return g * kc * u * elt + (g if ahead else 1) * pr * kc * dg_elt


def splitk_chained(pr: int) -> bool:
    """Whether a split-K program's gate products are one accumulator chain (kernels/
    splitk.py, _partial): where the PR rows of one product cover its warps along the rows
    (16 rows a warp), as Triton lays a chain of dots; else one accumulator a gate."""
    return pr >= 16 * KSPLIT_WARPS


def splitk_staged(dtype: torch.dtype, pr: int, kc: int) -> int:
    """Bytes a thread stages of one gate's dgates part, (PR, KC), through registers."""
    dg_elt = torch.empty((), dtype=gate_grad_dtype(dtype)).element_size()
    return pr * kc * dg_elt // (32 * KSPLIT_WARPS)


def splitk_product_rows(cell: str, dtype: torch.dtype, bb: int, u: int, kc: int) -> int:
    """PR: the rows of one partial product, the most of KSPLIT_PRODUCT_ROWS (at most BB)
    whose accumulators and staged part keep within KSPLIT_ACC_BYTES and KSPLIT_X_BYTES;
    the fewest rows where none does. (Below 64 rows, 8 warps would repeat each other's
    MMAs: a wgmma takes 64 rows a warpgroup.)"""
    fits = [pr for pr in KSPLIT_PRODUCT_ROWS if pr <= bb]
    for pr in fits:
        accs = 1 if splitk_chained(pr) else _GATES[cell]
        if (accs * pr * u * 4 // (32 * KSPLIT_WARPS) <= KSPLIT_ACC_BYTES
                and splitk_staged(dtype, pr, kc) <= KSPLIT_X_BYTES):
            return pr
    return fits[-1]


def splitk_update_rows(bb: int, s: int) -> int:
    """RB: the rows of the update one of a tile's S programs runs a step, BB / S rounded up
    to a power of two (a tl.arange); where S is not a power of two (3 parts) the first
    BB / RB of the S programs run the update and the others only the product."""
    return triton.next_power_of_2(triton.cdiv(bb, s))


def splitk_pass_rows(rb: int) -> int:
    """UR: the rows of one pass of a split-K program's update: all RB where they are at most
    KSPLIT_UPDATE_ROWS, else RB / UR passes of KSPLIT_PASS_ROWS."""
    return rb if rb <= KSPLIT_UPDATE_ROWS else KSPLIT_PASS_ROWS


def splitk_traffic(cell: str, dtype: torch.dtype, B: int, H: int, u: int, s: int) -> int:
    """Bytes a split-K backward step moves through L2: the broadcast of dgates_{t+1} (every
    unit group reads all gate columns of every batch row) and the fp32 partial products,
    written once and read once."""
    dg_elt = torch.empty((), dtype=gate_grad_dtype(dtype)).element_size()
    return triton.cdiv(H, u) * B * _GATES[cell] * H * dg_elt + 2 * s * B * H * 4


def _splitk(cell, dtype, B, H, sm, smem_limit, parts=KSPLIT_CHOICES):
    """(U, BB, PR, KC, S, programs, w bytes, ahead) of the split-K tiling that moves the
    fewest bytes a step (splitk_traffic) within the SMs and shared memory, or None;
    preferring tilings within the budgets, then the fewest partial products a step.
    parts: the S to choose from."""
    elt = torch.empty((), dtype=dtype).element_size()
    g = _GATES[cell]
    best = None
    for bb in KSPLIT_ROWS:
        if bb > max(KSPLIT_ROWS[-1], triton.next_power_of_2(B)):
            continue
        for u in KSPLIT_UNITS:
            for s in parts:
                kc = max(16, triton.next_power_of_2(triton.cdiv(H, s)))
                pr = splitk_product_rows(cell, dtype, bb, u, kc)
                programs = triton.cdiv(H, u) * s * triton.cdiv(B, bb)
                accs = 1 if splitk_chained(pr) else g
                if ((s - 1) * kc >= H or programs > sm or g * kc * u * elt > SMEM_W_BUDGET
                        or accs * pr * u * 4 // (32 * KSPLIT_WARPS) > KSPLIT_ACC_BYTES
                        or splitk_smem(cell, dtype, u, pr, kc) > smem_limit):
                    continue
                ahead = (splitk_smem(cell, dtype, u, pr, kc, True) <= smem_limit
                         and g * splitk_staged(dtype, pr, kc) <= KSPLIT_AHEAD_BYTES)
                key = (splitk_staged(dtype, pr, kc) > KSPLIT_X_BYTES,
                       splitk_update_rows(bb, s) > KSPLIT_UPDATE_ROWS,
                       splitk_traffic(cell, dtype, B, H, u, s), bb // pr, -programs)
                if best is None or key < best[0]:
                    best = (key, (u, bb, pr, kc, s, programs, g * kc * u * elt, ahead))
    return None if best is None else best[1]


def _splitk_plan(base: dict, cell, dtype, B, H, sm, cuda, smem_limit,
                 forced: bool) -> dict | None:
    """The plan dict of the split-K backward, or None where no tiling fits. Under the
    interpreter only where ``forced`` (FORCED_KSPLIT or FUSEDRNN_KERNEL=splitk), with a
    forced tiling: FORCED_KSPLIT parts (2 if unset) of FORCED_UNITS units."""
    if cuda:
        st = None
        if forced and FORCED_KSPLIT > 1:  # (the tests' native run: their S where it fits)
            st = _splitk(cell, dtype, B, H, sm, smem_limit, (FORCED_KSPLIT,))
        st = st or _splitk(cell, dtype, B, H, sm, smem_limit)
        if st is None:
            return None
        u, bb, pr, kc, s, programs, w, ahead = st
    elif forced:
        u, s, bb, pr = FORCED_UNITS, max(2, FORCED_KSPLIT), 16, FORCED_PRODUCT_ROWS
        kc = triton.next_power_of_2(triton.cdiv(H, s))
        programs = triton.cdiv(H, u) * s * triton.cdiv(B, bb)
        w, ahead = _GATES[cell] * kc * u * torch.empty((), dtype=dtype).element_size(), True
    else:
        return None
    tiles = programs
    programs = min(tiles, sm)
    reason = (f"weight-stationary, split over K: {triton.cdiv(H, u)} unit groups of {u} x "
              f"{triton.cdiv(B, bb)} batch groups of {bb} x {s} K parts = {tiles} programs "
              f"on {sm} SMs, {w // 1024} KB of W_hh each on chip, partial products summed "
              f"through L2 ({splitk_traffic(cell, dtype, B, H, u, s) / 2**20:.0f} MB a step)")
    if programs < tiles:
        reason = (f"split-K backward forced ({KERNEL_ENV} or the interpreter), {tiles} tiles "
                  f"on {programs} programs: W_hh re-read per tile")
    rb = splitk_update_rows(bb, s)
    ur = splitk_pass_rows(rb) if cuda or FORCED_PASS_ROWS is None else FORCED_PASS_ROWS
    if ur < rb:
        reason += f", each program's update as {rb // ur} passes of {ur} rows"
    return dict(base, kernel="stationary", programs=programs, tiles=tiles,
                weights_on_chip=programs == tiles, reason=reason, U=u, BB=bb, NK=1, KC=kc,
                split=1, ksplit=s, update_rows=rb, pass_rows=ur, product_rows=pr,
                chained=splitk_chained(pr),
                x_ahead=ahead, KS=1, warps=KSPLIT_WARPS, KS_bwd=1, warps_bwd=KSPLIT_WARPS,
                w_bytes=w, gates=_GATES[cell])


def _stationary(cell, dtype, B, H, sm, forced, backward, cuda_rules, wide_tiles=True,
                smem_limit=SMEM_BLOCK_LIMIT, narrow_first=False, P=None, bwd_pass=None):
    """(U, BB, NK, KC, programs, smem, split, wide) of the best weight-stationary tiling, or
    None: of UNIT_CHOICES at most 64 rows a program, else of WIDE_UNITS (wide_tiles: the
    GPU builds them as wgmma), else of NARROW_UNITS, else of UNIT_CHOICES past 64 rows
    (split: sub_rows). Each later set only where the one before has no resident tiling
    (narrow_first: NARROW_UNITS first).
    wide: whether the tiling is a wide tile (plan.wide's wide_tiles for its helpers).
    P: the LSTM's proj_size (the forward's product's K; proj_tiling's phase beside it).
    bwd_pass: whether the pass is the backward (``backward`` is, on a GPU; under the
    interpreter, whose rules have no backward, it is False for both passes)."""
    bwd_pass = backward if bwd_pass is None else bwd_pass
    scale = RNN_UNIT_SCALE if cell == "rnn" else 1
    two_bytes = torch.empty((), dtype=dtype).element_size() == 2
    # (units, least rows, split tiles, most rows, wide, W_hh budget)
    wider = (((WIDE_UNITS,), WIDE_MIN_BATCH, True, None, True, SMEM_W_BUDGET),) if (
        wide_tiles and two_bytes and not backward) else ()
    # (16-bit has the wide tiles past 64 rows; 4 or 8 units for B=128 rows would read
    # h_{t-1} more than the streaming kernel reads W_hh and h together: bf16 H=1024 32 MB
    # a step against 24. fp32's 64 MB against 48 at B=128 H=1024 too, where the streaming
    # kernel measured 1.4 TB/s, latency-bound: kept, not measured)
    narrow = (((NARROW_UNITS,), 1, False, NARROW_MAX_BATCH, False, NARROW_W_BUDGET),) if (
        two_bytes and cell != "rnn") else ()
    more = ((UNIT_CHOICES, 1, True, None, wide_tiles, SMEM_W_BUDGET),) if not (
        backward or two_bytes) else ()
    sets = ((UNIT_CHOICES, 1, False, None, wide_tiles, SMEM_W_BUDGET), *wider, *narrow, *more)
    if narrow_first:
        sets = (*narrow, *sets)
    for units, least_bb, split, most_bb, wide_set, w_budget in sets:
        best = _best_tiling(cell, dtype, B, H, sm, backward, cuda_rules,
                            [c * scale for c in units], least_bb, split, smem_limit,
                            wide_set, most_bb, w_budget, P, bwd_pass)
        if best is not None:
            return (*best, wide_set)
    if forced and not cuda_rules:
        # forced where it cannot stay on chip: stream W per tile, programs loop over tiles.
        # Under the interpreter only: on an H200 such tilings failed to compile (shared
        # memory 245-788 KB, OutOfResources) or ran slower than streaming, so a forced plan
        # on a GPU streams there, and says why
        nk, kc = k_chunks(H if bwd_pass else P or H)
        elt = torch.empty((), dtype=dtype).element_size()
        u = (FORCED_UNITS if H > 8 else 4) * scale
        bb = min(16, max(8, triton.next_power_of_2(B)))
        split = 1 if backward else FORCED_SPLIT
        return (u, bb * split, nk, kc, triton.cdiv(H, u) * triton.cdiv(B, bb * split),
                _rows(cell, u) * nk * kc * elt, split, wide_tiles)
    return None


def _best_tiling(cell, dtype, B, H, sm, backward, cuda_rules, units, least_bb,
                 more_rows=False, smem_limit=SMEM_BLOCK_LIMIT, wide_tiles=True,
                 most_bb=None, w_budget=SMEM_W_BUDGET, P=None, bwd_pass=None):
    """(U, BB, NK, KC, programs, smem, split) of the best resident tiling with U in
    ``units`` and least_bb <= BB <= most_bb rows a program (more_rows: also SPLIT_CHOICES);
    a split tiling's registers and shared memory are those of its sub-tiles (BB / split
    rows). A slice of W_hh up to ``w_budget``; past SMEM_W_BUDGET, only within the
    register budgets. P: the LSTM's proj_size (the forward's product's K); the projection's
    slice of W_hr and staged operand (proj_tiling) count in the budgets too; bwd_pass: see
    _stationary."""
    bwd_pass = backward if bwd_pass is None else bwd_pass
    nk, kc = k_chunks(H if bwd_pass else P or H)
    elt = torch.empty((), dtype=dtype).element_size()
    best = None
    for bb in (SPLIT_CHOICES if more_rows else ()) + BATCH_CHOICES:
        if bb > max(8, triton.next_power_of_2(B)) or bb < least_bb or bb > (most_bb or bb):
            continue
        for u in units:
            rows = _rows(cell, u)
            smem = rows * nk * kc * elt
            n_u, n_b = triton.cdiv(H, u), triton.cdiv(B, bb)
            if smem > w_budget or n_u * n_b > sm:
                continue
            sub = sub_rows(cell, dtype, u, bb, kc, backward, wide_tiles) if cuda_rules else bb
            split = bb // sub
            if split > MAX_SPLIT or sub < least_bb:
                continue
            gates_smem = stationary_smem(cell, dtype, u, sub, nk, kc, backward,
                                         wide_tiles=wide_tiles)
            proj = proj_tiling(dtype, P, H, u, sub, stationary_warps(
                cell, kc, sub, backward, u, wide_tiles), cuda_rules,
                room=smem_limit - gates_smem, backward=bwd_pass) if P else dict(smem=0,
                                                                               w_bytes=0)
            if smem + proj["w_bytes"] > w_budget:
                continue
            if cuda_rules and gates_smem + proj["smem"] > smem_limit:
                continue  # (fp32 LSTM H=1024 BB=32 backward: 256 KB)
            # the register budgets are preferences, not limits: on an H200 (bench/results/
            # 20261127-191927-NVIDIA_H200.json) every resident tiling past them still beat
            # the streaming kernel 2-5x (bf16 LSTM B=8 H=1024 training: 4.5 ms against
            # 12.4), its spills cost less than streaming W_hh from L2 every step
            # (at most 64 rows, a tiling ranks as a whole one, as before the sub-tiles: its
            # split changes its build, not which tiling the plan takes)
            ranked = sub if bb > BATCH_CHOICES[0] else bb
            held = register_bytes(cell, dtype, u, ranked, nk, kc, backward, wide_tiles)
            in_regs = not cuda_rules or within_register_budget(cell, dtype, u, ranked, nk,
                                                               kc, backward, wide_tiles)
            if smem > SMEM_W_BUDGET and not in_regs:
                continue  # (a slice past the usual budget only within the register budgets)
            # within the budgets: the most programs; past them: the least held a thread;
            # then the most units a program: U x BB is the same at the same programs, and a
            # program reads BB rows of the state a step (half the broadcast at U=8 BB=32
            # as at U=4 BB=64), where a wider BB only saves batch groups' barriers (1.14 us
            # with 2 groups, 1.25 with 4, on an H200: bench/results/, micro)
            key = (in_regs, 0 if in_regs else -held, n_u * n_b, u)
            if best is None or key > best[0]:
                best = (key, (u, bb, nk, kc, n_u * n_b, smem, split))
    return None if best is None else best[1]


def plan(cell: str, dtype: torch.dtype, B: int, H: int, K: int | None = None,
         proj: bool = False, training: bool = False, sm_count: int = 132,
         cuda: bool = True, ieee: bool = False, backward: bool = False,
         directions: int = 1, wide_tiles: bool = True,
         smem_limit: int = SMEM_BLOCK_LIMIT) -> dict:
    """The kernel, grid and tiles for one layer pass in one direction (see module doc).

    cell: "lstm", "gru" or "rnn"; K: the state width (proj_size, else H); training: the forward
    saves for a backward; sm_count: SMs of the GPU (1 under the interpreter, where programs
    run one after another); cuda: False under the interpreter; ieee: exact fp32 (no TF32);
    backward: plan the backward pass instead of the forward; directions: 2 for a direction
    of a bidirectional layer, planned (``paired``) to share one launch with the other
    direction on half the SMs where the weight-stationary kernel fits there; wide_tiles:
    the GPU builds the wide tiles' dot and the split-K backward's as wgmma (sm_90: H100,
    H200; see WIDE_UNITS, KSPLIT_UNITS);
    smem_limit: the most shared memory a program may have (SMEM_BLOCK_LIMIT)."""
    K = K or H
    choice = kernel_choice()
    if directions == 2:
        rules = dict(wide_tiles=wide_tiles, smem_limit=smem_limit)
        half = plan(cell, dtype, B, H, K, proj, training, max(1, sm_count // 2) if cuda else
                    sm_count, cuda, ieee, backward, **rules)
        whole = None
        if half["kernel"] == "stationary" and half["BB"] > BATCH_CHOICES[0]:
            # a pair past 64 rows a program (SPLIT_CHOICES) only where the whole GPU would
            # stream: elsewhere the two directions take the whole GPU one after the other,
            # as before those tilings (not measured against a pair of them)
            whole = plan(cell, dtype, B, H, K, proj, training, sm_count, cuda, ieee,
                         backward, **rules)
        if (half["kernel"] == "stationary" and half.get("ksplit", 1) == 1
                and (whole is None or whole["kernel"] != "stationary")):
            return dict(half, sm_count=sm_count, directions=2, paired=True,
                        reason=half["reason"].replace(f"on {half['sm_count']} SMs",
                                                      f"on half of {sm_count} SMs")
                        + "; both directions in one launch")
        return dict(whole or plan(cell, dtype, B, H, K, proj, training, sm_count, cuda, ieee,
                                  backward, **rules), directions=2)
    g = _GATES[cell]
    base = dict(cell=cell, dtype=str(dtype).replace("torch.", ""), B=B, H=H, K=K,
                training=training, sm_count=sm_count, cuda=cuda)
    base["pass"] = "backward" if backward else "forward"
    why_not = None
    if cuda and ieee and dtype == torch.float32 and choice != "stationary":
        # (forced, as the tests force it in exact fp32 on a GPU, it runs: correct, not fast)
        why_not = ("exact fp32 (allow_tf32 off) runs its dots on FMAs with W in registers, "
                   "which does not fit on chip")
    if why_not is None and choice not in ("step", "sequence"):
        # (a projection: no wide tiles, LL words, red.release nor split-K; see
        # PROJ_MIN_UNITS)
        st = _stationary(cell, dtype, B, H, sm_count, choice == "stationary" or not cuda,
                         backward and cuda, cuda, wide_tiles and not proj, smem_limit,
                         choice == "narrow", K if proj else None, backward)
        forced_splitk = FORCED_KSPLIT > 1 or choice == "splitk"
        use_red = (choice == "red" or FORCED_RED) and not proj
        if (backward and cell != "rnn" and not proj
                and (st is None and wide_tiles or forced_splitk)):
            sk = _splitk_plan(base, cell, dtype, B, H, sm_count, cuda, smem_limit,
                              forced_splitk)
            if sk is not None:
                return dict(sk, red=use_red)
        if st is not None:
            u, bb, nk, kc, tiles, smem, split, as_wide = st
            sub = bb // split  # the rows of one product and update (sub_rows)
            programs = min(tiles, sm_count)
            resident = programs == tiles
            reason = (f"weight-stationary: {triton.cdiv(H, u)} unit groups of {u} x "
                      f"{triton.cdiv(B, bb)} batch groups of {bb} = {tiles} programs "
                      f"on {sm_count} SMs, {smem // 1024} KB of W_hh each on chip")
            if split > 1:
                reason += f", each step as {split} sub-tiles of {sub} rows"
            use_ll = (not backward and (choice == "ll" or FORCED_LL)
                      and ll_bits(dtype) > 0 and not proj)
            if use_ll:
                reason += ", h exchanged as words that carry their step (no barrier)"
            if not resident:
                reason = (f"weight-stationary kernel forced ({KERNEL_ENV}), {tiles} tiles on "
                          f"{programs} programs: W_hh re-read per tile")
            warps = stationary_warps(cell, kc, sub, False, u, as_wide)
            pj, room = {}, smem_limit
            if proj:  # (its phase's shared memory first on a GPU: see proj_tiling)
                rows = bb if backward else sub
                pj = proj_tiling(dtype, K, H, u, rows, stationary_warps(
                    cell, kc, rows, backward, u, as_wide), cuda, x_ahead(
                    cell, dtype, u, rows, nk, kc, backward, cuda, smem_limit, as_wide),
                    smem_limit - stationary_smem(cell, dtype, u, rows, nk, kc, backward,
                                                 wide_tiles=as_wide), backward)
                room = smem_limit - pj["smem"]
                n_p = triton.cdiv(K, pj["PU"])
                what = ("the projection's gradient a first phase a step" if backward else
                        "the projection a second phase a step")
                reason += (f"; {what}: {n_p} of each batch group's programs, {pj['PU']} of "
                           f"its P units each, {pj['w_bytes'] // 1024} KB of W_hr a program")
            return dict(base, kernel="stationary", programs=programs, tiles=tiles,
                        weights_on_chip=resident, reason=reason, U=u, BB=bb, NK=nk, KC=kc,
                        split=split,
                        **{k: v for k, v in pj.items() if k not in ("smem", "w_bytes")},
                        x_ahead=x_ahead(cell, dtype, u, sub, nk, kc, backward, cuda,
                                        room, as_wide),
                        KS=k_runs(cell, kc, sub, False, u, as_wide), warps=warps,
                        KS_bwd=k_runs(cell, kc, bb, True, u, as_wide),
                        warps_bwd=stationary_warps(cell, kc, bb, True, u, as_wide),
                        w_bytes=smem, **({"w_hr_bytes": pj["w_bytes"]} if pj else {}),
                        gates=g, ll=use_ll, red=use_red)
        if why_not is None:
            why_not = (f"no tiling of at most {sm_count} programs keeps a W_hh slice under "
                       f"{SMEM_W_BUDGET // 1024} KB")
            if cuda:
                why_not += f" within {smem_limit // 1024} KB of shared memory a program"
    if choice == "stationary":
        why_not = f"{KERNEL_ENV}=stationary, but {why_not}"
    bb, bh, bk, warps = stream_blocks(cell, B, H, not ieee, sm_count, cuda, backward, K=K)
    tiles = triton.cdiv(B, bb) * triton.cdiv(H, bh)
    if choice in ("step", "sequence"):
        kernel = choice
        reason = f"{KERNEL_ENV}={choice}"
    elif not cuda or tiles <= 8 * sm_count:
        kernel = "sequence"
        reason = (f"streaming sequence kernel, tiles of {bh} units x {bb} batch rows "
                  f"({why_not})")
    else:
        kernel = "step"
        reason = f"step kernels: {tiles} tiles a step is over 8 per SM ({why_not})"
    programs = min(tiles, sm_count) if kernel == "sequence" else tiles
    stages = STREAM_DEFAULT_STAGES
    if (kernel == "sequence" and cuda and not ieee and choice != "stream32"
            and dtype in (torch.float16, torch.bfloat16, torch.float32)):
        stages = stream_stages(cell, dtype, bb, bh, bk, backward, smem_limit)
        reason += f", {stages}-stage K loop" if stages != STREAM_DEFAULT_STAGES else ""
    return dict(base, kernel=kernel, programs=programs, tiles=tiles, weights_on_chip=False,
                reason=reason, BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, warps=warps, gates=g,
                stages=stages)


def wgmma(device: torch.device) -> bool:
    """Whether a CUDA device builds the wide tiles' dot as a wgmma: sm_90 (H100, H200). Its
    sm_80 build spilled 600-5100 B and issued every MMA twice: elsewhere they stream. (A
    ROCm build reports its gfx version as the capability: never there.)"""
    return torch.version.hip is None and _capability(_index(device))[0] == 9


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def smem_per_block(device: torch.device) -> int:
    """The most shared memory one program may have on a CUDA device (the opt-in limit, what
    Triton checks at launch)."""
    return _smem_per_block(_index(device))


@functools.lru_cache(maxsize=None)
def _smem_per_block(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", None)
    if optin is None:  # (torch builds without it, ROCm: ask Triton's driver, as it does)
        optin = triton.runtime.driver.active.utils.get_device_properties(index)[
            "max_shared_mem"]
    return int(optin)


def device_rules(device: torch.device) -> dict:
    """What :func:`plan` takes from a CUDA device beside its SM count: whether it builds the
    wide tiles (wgmma) and its shared memory a program (smem_per_block)."""
    return dict(wide_tiles=wgmma(device), smem_limit=smem_per_block(device))


def plan_for(cell: str, dtype: torch.dtype, B: int, H: int, K: int, proj: bool, device,
             training: bool, ieee: bool, backward: bool = False, directions: int = 1) -> dict:
    """:func:`plan` for tensors on ``device``: its SM count on CUDA; one program under the
    interpreter (programs run one after another there, so a barrier with two would hang;
    the weight-stationary kernel loops over the tiles there when there are several)."""
    if device.type == "cuda":
        return plan(cell, dtype, B, H, K, proj, training, sm_count(device), True, ieee,
                    backward, directions, **device_rules(device))
    return plan(cell, dtype, B, H, K, proj, training, 1, False, ieee, backward, directions)
