"""Where a weight-stationary step's time goes, read inside the kernel (``CLOCK``; for
bench.phases, never on by default).

The per-step model (bench/results/README.md) splits a step into the h load, the product,
the update and the barrier, and the H200 ran ~1.3-1.5 us a step above it (2026-11-27) in
a part no timing of whole launches can name. With CLOCK, every program writes, each step,
the SM's cycle counter (%clock64) at four points, and the GPU's clock (%globaltimer, ns) at
two:

    slot 0  its operands are in registers (the forward's h_{t-1}, every chunk where the
            plan loads them ahead, else the first; the backward's dgates_{t+1})
    slot 1  the product is summed (the sum over the runs done)
    slot 2  the update is issued, stores included (after a block barrier: every warp)
    slot 3  the barrier passed (the end of the step; the next step starts here)
    slot 4  %globaltimer at slot 2 (the program's arrival at the barrier)
    slot 5  %globaltimer at slot 3

Slots 0 and 1 depend on the values (a block-wide sum of them feeds the clock read), so
the read waits for the slowest warp's data, as the next phase does; the sums and the
stores are the instrument's own cost (a shared-memory round each, a few 0.01 us), which
bench.phases reports by comparing the steps' sum with the untimed kernel's step.
Under the interpreter (no PTX) a slot holds 8 s + slot instead of a clock: the layout
is testable on a CPU, the timing only on a GPU. A forward with LL (no barrier) has its
wait for h inside slot 0 and slot 3 right after slot 2; a SPLIT forward's slots are its
last sub-tile's. The split-K backward records nothing.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

SLOTS = 8  # 6 used; a program's step is one 64-byte line


@triton.jit
def _read(dep, which: tl.constexpr):
    """%clock64 (which 0) or %globaltimer (1), read once ``dep`` (an int32 scalar) is
    known."""
    if which == 0:
        v = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [dep],
                                      dtype=tl.int64, is_pure=False, pack=1)
    else:
        v = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [dep],
                                      dtype=tl.int64, is_pure=False, pack=1)
    return v


@triton.jit
def _fake(s, slot: tl.constexpr):
    """What the interpreter records instead of a clock: 8 s + slot."""
    return tl.full((), 0, tl.int64) + s * 8 + slot


@triton.jit
def stamp(ck_ptr, slot: tl.constexpr, s, x, ON: tl.constexpr, ASM: tl.constexpr):
    """ON: the cycle counter once every thread of the program holds x (a tensor), at slot
    ``slot`` of step s's line at ck_ptr (8 s + slot without ASM)."""
    if ON:
        dep = tl.sum(x.to(tl.float32)).to(tl.int32, bitcast=True)
        if ASM:
            v = _read(dep, 0)
        else:
            v = _fake(s, slot) + dep * 0
        tl.store(ck_ptr + slot, v)


@triton.jit
def mark(ck_ptr, slot: tl.constexpr, s, ON: tl.constexpr, ASM: tl.constexpr):
    """ON: the cycle counter at slot ``slot`` and the GPU's clock at slot + 2, after a block
    barrier (every warp has issued what came before)."""
    if ON:
        tl.debug_barrier()
        if ASM:
            zero = tl.full((), 0, tl.int32)
            tl.store(ck_ptr + slot, _read(zero, 0))
            tl.store(ck_ptr + slot + 2, _read(zero, 1))
        else:
            tl.store(ck_ptr + slot, _fake(s, slot))
            tl.store(ck_ptr + slot + 2, _fake(s, slot + 2))


@triton.jit
def line(ck_ptr, k, s, T):
    """Step s's line of tile k (a program's, where each owns one)."""
    k = tl.full((), 0, tl.int64) + k  # (an int in the interpreter's loops)
    return ck_ptr + (k * T + s) * 8


# ----------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------
_RECORDS: list | None = None


@contextlib.contextmanager
def recording():
    """Inside, the weight-stationary forward and backward launches record their steps:
    yields the list they append to, one dict a launch: ``kind`` ("fwd"/"bwd"), ``clocks``
    (tiles, T, SLOTS) int64, and the tiling (``n_u`` tiles of units a batch group,
    ``groups`` batch groups a direction, ``dirs``)."""
    global _RECORDS
    before, _RECORDS = _RECORDS, []
    try:
        yield _RECORDS
    finally:
        _RECORDS = before


def args(kind: str, T: int, n_u: int, groups: int, dirs: int, placeholder,
         device) -> dict:
    """The kernel's clock arguments: a fresh line per tile and step while recording, else
    off (``placeholder`` stands in for the unused pointer)."""
    if _RECORDS is None:
        return dict(ck_ptr=placeholder, CLOCK=False)
    tiles = n_u * groups * dirs
    clocks = torch.full((tiles, T, SLOTS), -1, dtype=torch.int64, device=device)
    _RECORDS.append(dict(kind=kind, clocks=clocks, n_u=n_u, groups=groups, dirs=dirs))
    return dict(ck_ptr=clocks, CLOCK=True)
