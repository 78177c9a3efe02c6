"""python -m bench.micro --out DIR: the first GPU call's measurements for issue 11, in order
of cost, each row appended to DIR/micro.jsonl as soon as it is measured (a call cut by its
time limit keeps what it had):

1. the grid barrier: microseconds per barrier with one program per SM, the programs in one
   group (one counter) or split into 2 and 4 groups (a counter each, as the batch groups of
   the weight-stationary kernels), or into groups of 4 (the split-K backward's tiles);
2. the h broadcast: per step, every program reads all of h_{t-1} for its batch rows (K x BB
   in the layer's dtype) and meets the others at the barrier; minus (1), the broadcast;
   and the same exchange with the barrier carried by the data (_ll_broadcast: each word of
   h holds its step's tag, readers poll h itself), checked by its sums;
3. the target configurations: weight-stationary vs streaming sequence kernels vs cuDNN
   (checked, then timed, by bench.measure): fp16 LSTM B=16 H=768 T=1024 (cuDNN's persistent
   best case) and bf16/fp32 LSTM B in {8, 128} H=1024 T=256, inference and training.

Without a GPU (``--dry``, the test) every kernel runs once under the interpreter, one
program, to prove the script; nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench import configs, measure  # noqa: E402
from fusedrnn.kernels import ll  # noqa: E402
from fusedrnn.kernels.common import (barrier_flags, barrier_words, group_barrier,  # noqa: E402
                                     launch_sequence)


@triton.jit
def _barriers(sem_ptr, err_ptr, out_ptr, h_ptr, s_h, n_steps, GROUPS: tl.constexpr,
              K: tl.constexpr, BB: tl.constexpr, LOAD: tl.constexpr,
              ASM_ACQUIRE: tl.constexpr, SPIN_LIMIT: tl.constexpr, RED: tl.constexpr = False):
    """n_steps steps of: (LOAD) read h (K, BB) of this program's batch group, from one of
    two slots by the step's parity, as the kernels read h_{t-1}; then a barrier among this
    program's group (programs split into GROUPS contiguous groups), arriving with an
    atomic, or with RED a red.release (common.group_barrier).

    (Until 2026-11-28 the load was volatile, into a (K, BB) fp32 accumulator: its sm_90
    build spilled 2.8 KB a thread and its rows measured that, 9.9 us a step for 32 KB, not
    the broadcast. Now each step's tile is summed over K into BB floats, and the loads are
    L2 reads, ``.cg``, like the kernels' after the barrier's acquire.)"""
    pid = tl.program_id(0)
    per = tl.num_programs(0) // GROUPS
    group = pid // per
    acc = tl.zeros((BB,), dtype=tl.float32)
    for s in range(0, n_steps):
        if LOAD:
            o_k = tl.arange(0, K)
            o_b = group * BB + tl.arange(0, BB)
            # (the slot by parity: a different address each step, never hoisted)
            x = tl.load(h_ptr + (s % 2) * GROUPS * BB * s_h + o_b[None, :] * s_h
                        + o_k[:, None], cache_modifier=".cg")
            acc += tl.sum(x.to(tl.float32), axis=0)
        group_barrier(sem_ptr + group, per, pid % per == 0, err_ptr, s, ASM_ACQUIRE,
                      SPIN_LIMIT, RED)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


@triton.jit
def _ll_broadcast(ll_ptr, err_ptr, out_ptr, n_steps, GROUPS: tl.constexpr, K: tl.constexpr,
                  BB: tl.constexpr, U: tl.constexpr, SPIN_LIMIT: tl.constexpr):
    """n_steps steps of a barrier that carries the data (NCCL's LL protocol), for a GPU to
    time against "h broadcast + barrier", with the weight-stationary forward's own code
    for it (kernels/ll.py, its LL option): each program writes its U columns of h (its
    group's BB rows) as 32-bit words, a bf16 value in the low half and the step's tag in
    the high half (one store writes both: a reader that sees the tag sees the value), then
    reads its group's whole (K, BB) and re-reads it while any word's tag is not yet the
    step's. No counter, no fence: one L2 round trip a step where the barrier and the load
    after it take three or four; but twice the bytes.

    Two slots by the step's parity: a program writes slot s % 2 again at step s + 2 only
    after reading every member's step s + 1, which each member wrote after reading its
    step s. The value a member writes is member % 8 + 1, so every program's sum is known
    (bench.micro checks it). Bounded like common.group_barrier (ll.settle)."""
    pid = tl.program_id(0)
    per = tl.num_programs(0) // GROUPS
    group, member = pid // per, pid % per
    o_b = group * BB + tl.arange(0, BB)
    o_u = member * U + tl.arange(0, U)
    o_k = tl.arange(0, K)
    mine = tl.zeros((U, BB), dtype=tl.float32) + (member % 8 + 1).to(tl.float32)
    acc = tl.zeros((BB,), dtype=tl.float32)
    m = (o_k < K)[:, None] & (o_b >= 0)[None, :]
    for s in range(0, n_steps):
        # state index s + 1 (index 0, h0, is never sent here), in slot s % 2
        tag = ll.tag_of(s + 1)
        slot = ll_ptr + (s % 2) * (GROUPS * BB * K)
        tl.store(slot + o_b[None, :] * K + o_u[:, None],
                 ll.encode(mine.to(tl.bfloat16), tag, 16), mask=(o_u < K)[:, None])
        p = slot + o_b[None, :] * K + o_k[:, None]
        w = ll.settle(tl.load(p, cache_modifier=".cg"), p, m, tag, err_ptr, s, per, 16,
                      SPIN_LIMIT)
        acc += tl.sum(ll.decode(w, tl.bfloat16, 16).to(tl.float32), axis=0)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


def ll_expected(K: int, BB: int, U: int, steps: int) -> float:
    """What every program of _ll_broadcast sums: column k carries (k // U) % 8 + 1."""
    return float(BB * steps * sum((k // U) % 8 + 1 for k in range(K)))


def ll_rows(device, programs, steps, K=None, BB=None) -> list[dict]:
    """The data-carrying barrier (_ll_broadcast) per step, the programs in 1, 2 and 4
    groups, beside the "h broadcast + barrier" rows (twice their bytes: the words carry
    tags). A failure (a timeout, a wrong sum) is recorded in the row."""
    K, BB = K or GPU_K, BB or GPU_BB
    rows = []
    for groups in (1, 2, 4):
        if programs % groups:
            continue
        per = programs // groups
        U = triton.next_power_of_2(triton.cdiv(K, per))
        words = torch.zeros(2 * groups * BB * K, dtype=torch.int32, device=device)
        _, err = barrier_words(0, device)
        out = torch.empty(programs, device=device)

        def run():
            words.zero_()
            launch_sequence(_ll_broadcast, programs, dict(
                ll_ptr=words, err_ptr=err, out_ptr=out, n_steps=steps, GROUPS=groups, K=K,
                BB=BB, U=U, SPIN_LIMIT=barrier_flags(device)["SPIN_LIMIT"], num_warps=4),
                err, device, "LL micro")

        try:
            us, error = _time_us(run, device), None
            want = ll_expected(K, BB, U, steps)
            worst = (out - want).abs().max().item() / want
            if worst > 1e-4:
                error = f"wrong sum: relative error {worst:.2e}"
        except Exception as e:  # noqa: BLE001 (recorded in the row)
            us, error = float("nan"), f"{type(e).__name__}: {e}"
        rows.append(dict(kind="ll broadcast", arrive="data", error=error, programs=programs,
                         groups=groups, steps=steps, bytes_per_program_step=K * BB * 4,
                         us_per_step=us / steps))
    return rows


def _time_us(fn, device) -> float:
    if device.type != "cuda":
        fn()
        return float("nan")
    import triton.testing
    return triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median") * 1e3


# h read per program and step on a GPU: K x BB of bf16. K is a tl.arange length, so a power
# of two (768, H of the fp16 target, failed to compile on the first GPU call)
GPU_K, GPU_BB = 1024, 16


def barrier_rows(device, programs, steps, K=GPU_K, BB=GPU_BB, dtype=torch.bfloat16):
    rows = []
    # (the red.release arrival, barrier alone: what it saves is the atomic's round trip;
    # last, and a failure, BarrierTimeout included, is a row, not the end of the script)
    for load, red in ((False, False), (True, False), (False, True)):
        # (and groups of 4 programs, the split-K backward's tile barrier: S = 4 at bf16
        # B=128 H=1024, whose estimate assumed ~0.6 us for it)
        tiles = (programs // 4,) if programs >= 8 and not load else ()
        for groups in (1, 2, 4) + tiles:
            if programs % groups:
                continue
            sem, err = barrier_words(groups, device)
            out = torch.empty(programs, device=device)
            h = torch.randn(2 * groups * BB, K, device=device).to(dtype)  # two slots

            def run():
                sem.zero_()
                launch_sequence(_barriers, programs, dict(
                    sem_ptr=sem, err_ptr=err, out_ptr=out, h_ptr=h, s_h=h.stride(0),
                    n_steps=steps, GROUPS=groups, K=K, BB=BB, LOAD=load,
                    **barrier_flags(device), RED=red, num_warps=4), err, device,
                    "barrier micro")

            try:
                us, error = _time_us(run, device), None
            except Exception as e:  # noqa: BLE001 (recorded in the row)
                if not red:
                    raise
                us, error = float("nan"), f"{type(e).__name__}: {e}"
            rows.append(dict(kind="h broadcast + barrier" if load else "barrier",
                             arrive="red.release" if red else "atomic", error=error,
                             programs=programs, groups=groups,
                             members=programs // groups, steps=steps,
                             bytes_per_program_step=K * BB * h.element_size() if load else 0,
                             us_per_step=us / steps))
    return rows


def target_configs(dry: bool):
    if dry:
        return [configs.Config("lstm", "fp32", mode, 3, 8, 4, 8)
                for mode in ("inference", "training")]
    # GUIDE's targets (bench.configs.targets) for the LSTM at H=768 (fp16) and H=1024, B<=128
    return [c for c in configs.targets()
            if c.cell == "lstm" and (c.H == 1024 or c.dtype == "fp16") and c.B <= 128]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--dry", action="store_true", help="no GPU: run each kernel once")
    ap.add_argument("--barriers-only", action="store_true",
                    help="(1) and (2) only: python -m bench --targets measures the targets")
    args = ap.parse_args(argv)
    dry = args.dry or not HAS_GPU
    device = torch.device("cuda" if HAS_GPU and not args.dry else "cpu")
    path = pathlib.Path(args.out) / "micro.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def emit(row):
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)

    t0 = time.time()
    failed = 0
    programs = 1 if dry else torch.cuda.get_device_properties(device).multi_processor_count
    programs -= programs % 4 if programs >= 4 else 0
    for row in barrier_rows(device, programs, 2 if dry else 2000,
                            K=16 if dry else GPU_K, BB=8 if dry else GPU_BB):
        emit(row)
    for row in ll_rows(device, programs, 2 if dry else 2000, K=16 if dry else GPU_K,
                       BB=8 if dry else GPU_BB):
        emit(row)
        failed += row["error"] is not None and dry  # (on a GPU: a finding, not a failure)
    impls = ["fused-stationary", "fused-seq"] if dry else \
        ["cudnn", "fused", "fused-stationary", "fused-seq"]
    baseline = "triton-interp" if dry else "cudnn"
    if dry:
        impls = ["triton-interp"] + impls
    for cfg in [] if args.barriers_only else target_configs(dry):
        for r in measure.measure(cfg, impls, baseline, device, time_it=not dry):
            failed += r["status"] == "FAILED"
            emit(dict(kind="target", **r))
    print(f"micro: {time.time() - t0:.0f}s, {failed} failed, rows in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
