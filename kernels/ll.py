"""The state exchange that carries its own barrier (NCCL's LL protocol), for the
weight-stationary forward (kernels/stationary.py, ``LL``).

With the counter barrier (common.group_barrier) a step waits out, after its update: a
block barrier, the release (its stores acknowledged by L2), the atomic's round trip, at
least one poll's, then the load of h_{t-1}: three or four L2 round trips a step, ~1.06 us
measured on the H200 for the barrier alone (132 programs). Here each program stores its
units of h_t as *words* that hold the value and the step's tag together (a 16-bit state
in the low half of a 32-bit word, the tag in the high half; fp32 in the low half of a
64-bit word), and the readers load the words of h_{t-1} and re-load them while any tag
is not yet the step's. One store writes value and tag at once (an aligned word is written
whole), so a reader that sees the tag sees the value: no fence, no counter, one round trip
a step when the data is there; the price is twice the bytes of h in the broadcast.

Slots: state index i (h0 is 0, h_t after step s is s + 1) lives in slot i % 2 with tag
i % 32767 + 1 (never the zeroed buffer's 0; the slot's previous contents, index i - 2,
carry another tag). A program writes index s + 1 into a slot only after it has read
index s from every member of its batch group, and each member wrote index s only after it
had read index s - 1, the slot's previous contents: no reader can still need them. This
holds where each program owns one tile (RESIDENT); a program looping over several tiles
keeps the grid barrier (and the words: the interpreter runs that path).

Bounded like the barrier: a reader gives up after SPIN_LIMIT re-loads and records
[1, step, program, members] in the error word, which the launcher raises
(kernels/barrier_errors.py), and stops waiting once any program has.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tag_of(i):
    """The tag of state index i (h0 is 0)."""
    return i % 32767 + 1


@triton.jit
def encode(v, tag, BITS: tl.constexpr):
    """Words of the state values v (the history's dtype, BITS wide) with ``tag``."""
    if BITS == 16:
        w = (v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (tag << 16)
    else:
        w = ((v.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)
             | ((tl.zeros(v.shape, tl.int64) + tag) << 32))
    return w


@triton.jit
def decode(w, DT: tl.constexpr, BITS: tl.constexpr):
    """The values of words w, as DT."""
    if BITS == 16:
        v = (w & 0xFFFF).to(tl.int16).to(DT, bitcast=True)
    else:
        v = (w & 0xFFFFFFFF).to(tl.int32).to(DT, bitcast=True)
    return v


@triton.jit
def on_time(tag, BITS: tl.constexpr):
    """A word that carries ``tag`` (value 0): what masked loads fill in, so that every word
    of a tile can be checked alike."""
    if BITS == 16:
        w = (tl.zeros((1,), tl.int32) + tag) << 16
    else:
        w = (tl.zeros((1,), tl.int64) + tag) << 32
    return w


@triton.jit
def _gap(w, tag, BITS: tl.constexpr):
    """Below _on_time_below(BITS) where word w carries ``tag``, at least that where it
    does not: one xor a word (16-bit: the value's bits stay below the tag's; a
    first version's compare of each word's tag and a select of its flag cost ~14
    instructions a word, most of the step's, in the sm_90 builds)."""
    if BITS == 16:
        g = w ^ (tag << 16)
    else:
        g = (w >> 32).to(tl.int32) ^ tag
    return g


@triton.jit
def _on_time_below(BITS: tl.constexpr):
    if BITS == 16:
        v = 0x10000
    else:
        v = 1
    return v


@triton.jit
def _most_late(w0, w1, w2, w3, tag, N: tl.constexpr, BITS: tl.constexpr):
    g = _gap(w0, tag, BITS)
    if N > 1:
        g = tl.maximum(g, _gap(w1, tag, BITS))
    if N > 2:
        g = tl.maximum(g, _gap(w2, tag, BITS))
    if N > 3:
        g = tl.maximum(g, _gap(w3, tag, BITS))
    return tl.max(g) >= _on_time_below(BITS)


@triton.jit
def settle_n(w0, w1, w2, w3, p0, p1, p2, p3, m0, m1, m2, m3, N: tl.constexpr, tag, err_ptr,
             step, members, BITS: tl.constexpr, SPIN_LIMIT: tl.constexpr):
    """N tiles of words wi (loaded from pi where mi, ``on_time`` elsewhere; tiles of one
    shape) once every word carries ``tag``: all N re-loaded (volatile: from L2, past L1)
    until they do, at most SPIN_LIMIT times. One reduction a check, over the largest gap
    of all N: a check of each tile on its own added a block-wide reduction (3 barriers)
    and the error path for each. (Re-loading only the late words took a flag a word,
    which the sm_90 builds computed ahead of the loop and packed into registers bit by
    bit, ~4 instructions a word in every step.)"""
    n = 0
    stop = 0
    while _most_late(w0, w1, w2, w3, tag, N, BITS) & (n < SPIN_LIMIT) & (stop == 0):
        w0 = tl.load(p0, mask=m0, other=on_time(tag, BITS), volatile=True)
        if N > 1:
            w1 = tl.load(p1, mask=m1, other=on_time(tag, BITS), volatile=True)
        if N > 2:
            w2 = tl.load(p2, mask=m2, other=on_time(tag, BITS), volatile=True)
        if N > 3:
            w3 = tl.load(p3, mask=m3, other=on_time(tag, BITS), volatile=True)
        n += 1
        if n % 256 == 0:  # a failure elsewhere ends this wait too
            stop = tl.load(err_ptr, volatile=True)
    if (n >= SPIN_LIMIT) & (stop == 0):
        if tl.atomic_cas(err_ptr, 0, 1, sem="relaxed", scope="gpu") == 0:
            tl.store(err_ptr + 1, step)
            tl.store(err_ptr + 2, tl.program_id(0))
            tl.store(err_ptr + 3, members)
    return w0, w1, w2, w3


@triton.jit
def settle(w, p, m, tag, err_ptr, step, members, BITS: tl.constexpr,
           SPIN_LIMIT: tl.constexpr):
    """settle_n of one tile."""
    w, _, _, _ = settle_n(w, w, w, w, p, p, p, p, m, m, m, m, 1, tag, err_ptr, step, members,
                          BITS, SPIN_LIMIT)
    return w


# ----------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------
def bits(dtype: torch.dtype) -> int:
    """The LL value width for a state dtype: 16 (fp16, bf16) or 32 (fp32); 0 where there
    is no word to hold it with a tag (fp64)."""
    return {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32}.get(dtype, 0)


def words(h0s: list[torch.Tensor]) -> torch.Tensor:
    """(directions, 2 slots, B, K) words, slot 0 holding each direction's h0 with the tag of
    index 0, slot 1 zero (no tag)."""
    h0 = torch.stack(h0s)
    if bits(h0.dtype) == 16:
        w = (h0.view(torch.int16).to(torch.int32) & 0xFFFF) | (1 << 16)
    else:
        w = (h0.view(torch.int32).to(torch.int64) & 0xFFFFFFFF) | (1 << 32)
    out = torch.zeros((h0.shape[0], 2, *h0.shape[1:]), dtype=w.dtype, device=h0.device)
    out[:, 0] = w
    return out
