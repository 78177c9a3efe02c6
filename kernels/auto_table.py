"""Where ``backend="auto"`` sends a CUDA LSTM/GRU: the fused kernels, or torch's (cuDNN).

``auto`` must never make a converted model slower than cuDNN. The answer comes from
``auto_table.json`` beside this file when it exists: rows measured on a GPU, written by
``python -m bench.report --auto-table`` from the newest committed result (a row says, for
one (cell, dtype, mode, B, H), whether the fused kernels were at least as fast as cuDNN;
a call takes the row of its cell, dtype and mode nearest in log2(B), log2(H)). Until a
GPU result exists there is no table and the answer follows the plan's estimates
(bench/results/README.md): triton where the forward, and in training the backward too,
runs weight-stationary and cuDNN is not on its persistent kernel; cuDNN elsewhere (the
streaming kernels are estimated about even forward and slower backward).
"""
from __future__ import annotations

import functools
import json
import math
import pathlib

import torch

from fusedrnn.kernels.plan import SMEM_BLOCK_LIMIT, kernel_choice, plan

TABLE = pathlib.Path(__file__).resolve().parent / "auto_table.json"
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@functools.lru_cache(maxsize=None)
def _load(path: str):
    p = pathlib.Path(path)
    return json.loads(p.read_text())["rows"] if p.exists() else None


def cudnn_persistent_likely(cell: str, dtype: torch.dtype, B: int, H: int, I: int,
                            layers: int, bidirectional: bool) -> bool:
    """Whether PyTorch's heuristics likely put cuDNN on its persistent algorithm (GUIDE
    section 5): fp16 single-layer unidirectional LSTM with H and I multiples of 128,
    H <= 1024, B <= 128 and a multiple of 8; or H <= 192."""
    if H <= 192:
        return True
    return (cell == "lstm" and dtype == torch.float16 and layers == 1 and not bidirectional
            and H % 128 == 0 and I % 128 == 0 and H <= 1024 and B <= 128 and B % 8 == 0)


def prefers_triton(cell: str, dtype: torch.dtype, B: int, H: int, I: int, proj: int,
                   layers: int, bidirectional: bool, training: bool, sm_count: int,
                   table: pathlib.Path = TABLE, wide_tiles: bool = True,
                   smem_limit: int = SMEM_BLOCK_LIMIT) -> tuple[bool, str]:
    """(use the fused kernels, why) for one module call on CUDA under ``auto``. Asked on
    every forward call: cached per shape (the answer took ~100 us of table scan and plans),
    and per FUSEDRNN_KERNEL, which the plans read. wide_tiles, smem_limit: the device's,
    as plan.plan_for takes them (a call that would stream on this GPU is not the measured
    neighbour's)."""
    return _prefers_triton(cell, dtype, B, H, I, proj, layers, bidirectional, training,
                           sm_count, str(table), kernel_choice(), wide_tiles, smem_limit)


@functools.lru_cache(maxsize=4096)
def _prefers_triton(cell, dtype, B, H, I, proj, layers, bidirectional, training, sm_count,
                    table: str, _kernel_choice: str, wide_tiles: bool = True,
                    smem_limit: int = SMEM_BLOCK_LIMIT) -> tuple[bool, str]:
    table = pathlib.Path(table)
    mode = "training" if training else "inference"
    rows = _load(str(table))
    if rows is not None:
        mine = [r for r in rows if (r["cell"], r["dtype"], r["mode"])
                == (cell, DTYPE_NAMES.get(dtype), mode)]
        if mine:
            near = min(mine, key=lambda r: abs(math.log2(r["B"] / max(B, 1)))
                       + abs(math.log2(r["H"] / H)))
            why = f"measured: {cell} {near['dtype']} {mode} B={near['B']} H={near['H']} in " \
                  f"{table.name}"
            streams = _streams(cell, dtype, B, H, proj, training, sm_count, wide_tiles,
                               smem_limit)
            if near["triton_faster"] and streams:
                # a row is a neighbour, not this call: the streaming kernels were slower
                # than cuDNN in every committed configuration (0.2-0.95x on the H200)
                return False, f"{why}, but {streams}, slower than cuDNN wherever measured"
            return near["triton_faster"], why
    if cudnn_persistent_likely(cell, dtype, B, H, I, layers, bidirectional):
        return False, "estimate: cuDNN runs its persistent kernel here"
    streams = _streams(cell, dtype, B, H, proj, training, sm_count, wide_tiles, smem_limit)
    if streams:
        return False, f"estimate: {streams}"
    return True, "estimate: weight-stationary where cuDNN runs a GEMM and a pointwise per step"


def _streams(cell, dtype, B, H, proj, training, sm_count, wide_tiles=True,
             smem_limit=SMEM_BLOCK_LIMIT) -> str | None:
    """Why this call would run a streaming kernel (forward, or backward in training), or
    None where every pass is weight-stationary."""
    device = dict(wide_tiles=wide_tiles, smem_limit=smem_limit)
    fwd = plan(cell, dtype, B, H, proj or H, bool(proj), training, sm_count, **device)
    if fwd["kernel"] != "stationary":
        return f"the forward would stream ({fwd['reason']})"
    if training:
        bwd = plan(cell, dtype, B, H, proj or H, bool(proj), training, sm_count, backward=True,
                   **device)
        if bwd["kernel"] != "stationary":
            return f"the backward would stream ({bwd['reason']})"
    return None


_NAMES = {v: k for k, v in DTYPE_NAMES.items()}
_LAUNCH = ("kernel", "U", "BB", "programs", "ksplit")


def _launch(p: dict) -> tuple:
    # (rows recorded before the LL exchange and the red.release arrival have no "ll" or
    # "red": they ran the barrier, arriving with an atomic)
    return (*(p.get(k) for k in _LAUNCH), bool(p.get("ll")), bool(p.get("red")))


def _launches(plan_row: dict, training: bool) -> tuple:
    """What a plan launches (kernel and tiling, and whether the forward exchanges h as LL
    words), forward and in training backward: a bench row's recorded plan and the current
    plan compare by this."""
    fwd = _launch(plan_row)
    bwd = _launch(plan_row.get("backward", {})) if training else ()
    return fwd + bwd


def current_launches(cell: str, dtype: str, B: int, H: int, training: bool,
                     sm_count: int) -> tuple:
    """What ``backend="triton"`` launches today for a single-layer configuration."""
    dt = _NAMES[dtype]
    fwd = plan(cell, dt, B, H, H, False, training, sm_count)
    fwd["backward"] = plan(cell, dt, B, H, H, False, training, sm_count, backward=True)
    return _launches(fwd, training)


def table_rows(result_rows, sm_count: int = 132) -> list[dict]:
    """The table's rows from a benchmark result's rows: for each single-layer configuration,
    whether fusedrnn took at most cuDNN's time. fusedrnn's time is that of the row (fused,
    or forced to fused-stationary, fused-seq, fused-splitk, fused-ll or fused-red) whose
    recorded launch is the one today's plan makes; a configuration where none is (the plan
    changed since) gets no row. A row that recorded no plan counts as today's launch only
    for ``fused``."""
    by = {}
    for r in result_rows:
        by.setdefault(r["config"], {})[r["impl"]] = r
    out = []
    for impls in by.values():
        cfg = next(iter(impls.values()))
        base = impls.get("cudnn", {}).get("ms")
        if (not base or cfg.get("layers", 1) != 1 or cfg.get("bidirectional")
                or cfg.get("proj")):  # (the table has no projection: its rows are without)
            continue
        training = cfg["mode"] == "training"
        want = None
        ms = None
        for name in ("fused", "fused-stationary", "fused-seq", "fused-splitk", "fused-ll",
                     "fused-red"):
            r = impls.get(name)
            if not r or not r.get("ms"):
                continue
            if "plan" not in r:
                if name == "fused":
                    ms = r["ms"]
                    break
                continue
            if want is None:
                want = current_launches(cfg["cell"], cfg["dtype"], cfg["B"], cfg["H"],
                                        training, sm_count)
            if _launches(r["plan"], training) == want:
                ms = r["ms"]
                break
        if ms is not None:
            out.append(dict(cell=cfg["cell"], dtype=cfg["dtype"], mode=cfg["mode"], B=cfg["B"],
                            H=cfg["H"], triton_faster=ms <= base))
    return out
