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

from fusedrnn.kernels.plan import plan

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
                   table: pathlib.Path = TABLE) -> tuple[bool, str]:
    """(use the fused kernels, why) for one module call on CUDA under ``auto``."""
    mode = "training" if training else "inference"
    rows = _load(str(table))
    if rows is not None:
        mine = [r for r in rows if (r["cell"], r["dtype"], r["mode"])
                == (cell, DTYPE_NAMES.get(dtype), mode)]
        if mine:
            near = min(mine, key=lambda r: abs(math.log2(r["B"] / max(B, 1)))
                       + abs(math.log2(r["H"] / H)))
            return near["triton_faster"], (f"measured: {cell} {near['dtype']} {mode} "
                                           f"B={near['B']} H={near['H']} in {table.name}")
    if cudnn_persistent_likely(cell, dtype, B, H, I, layers, bidirectional):
        return False, "estimate: cuDNN runs its persistent kernel here"
    fwd = plan(cell, dtype, B, H, proj or H, bool(proj), training, sm_count)
    if fwd["kernel"] != "stationary":
        return False, f"estimate: the forward would stream ({fwd['reason']})"
    if training:
        bwd = plan(cell, dtype, B, H, proj or H, bool(proj), training, sm_count, backward=True)
        if bwd["kernel"] != "stationary":
            return False, f"estimate: the backward would stream ({bwd['reason']})"
    return True, "estimate: weight-stationary where cuDNN runs a GEMM and a pointwise per step"


def table_rows(result_rows) -> list[dict]:
    """The table's rows from a benchmark result's rows: for each single-layer
    configuration timed for both, whether ``fused`` took at most cuDNN's time."""
    ms = {(r["config"], r["impl"]): r.get("ms") for r in result_rows}
    out = []
    for r in result_rows:
        if r["impl"] != "fused" or r.get("layers", 1) != 1 or r.get("bidirectional"):
            continue
        base = ms.get((r["config"], "cudnn"))
        if r.get("ms") and base:
            out.append(dict(cell=r["cell"], dtype=r["dtype"], mode=r["mode"], B=r["B"],
                            H=r["H"], triton_faster=r["ms"] <= base))
    return out
