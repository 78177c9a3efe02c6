"""python -m bench.phases --out DIR: where a weight-stationary step's time goes, on a GPU.

The kernels' clocks (kernels/stepclock.py) split every step of every program into

    load     from the last step's barrier to its operands in registers (h_{t-1} or
             dgates_{t+1}: the L2 round trip and the bytes, plus the prefetches' issue)
    product  the MMAs, the staging of the operands through shared memory, the sum over runs
    update   the pointwise update and its stores (its inputs were prefetched under the product)
    barrier  from the program's arrival to its exit (with LL: none, the wait is in load)

and, with the GPU's clock, the barrier into ``wait_last`` (for the group's last program
to arrive: imbalance) and ``after_last`` (from the last arrival to this program's exit:
the barrier's own latency). Each configuration is a layer's forward and backward at the
targets where the model and the H200 disagreed (2026-11-27: 1.3-1.5 us a step above the
model), the default plan first, then the red.release and LL variants; one row per pass,
appended to DIR/micro.jsonl as measured. ``step_us`` is the instrumented step (the clocks
cost a few shared-memory rounds a step): the bench's ``fused`` rows time the plain one.

Without a GPU (``--dry``, the test) a tiny layer runs under the interpreter, whose
"clocks" are counters: it proves the script, not the numbers.
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

from bench import measure  # noqa: E402
from bench.configs import Config  # noqa: E402
from fusedrnn.kernels import stepclock  # noqa: E402

PHASES = ("load", "product", "update", "barrier")


def _stats(x: torch.Tensor) -> list[float]:
    """[median, 90th percentile] of x."""
    x = x.double().flatten()
    return [round(float(x.median()), 4), round(float(torch.quantile(x, 0.9)), 4)]


def summarize(rec: dict) -> dict:
    """One recorded launch (stepclock.recording) -> microseconds a step by phase, over
    every program and every step but the first (its "load" has no barrier before it)."""
    ck = rec["clocks"].cpu()
    if (ck[..., :6] < 0).any():
        return dict(error="a clock slot was never written")
    if ck.shape[1] < 3:
        return dict(error="fewer than 3 steps")
    prev_exit = ck[:, :-1, 3]
    c = ck[:, 1:]
    cycles = dict(load=c[..., 0] - prev_exit, product=c[..., 1] - c[..., 0],
                  update=c[..., 2] - c[..., 1], barrier=c[..., 3] - c[..., 2])
    # the SM clock's rate, cycles a ns, each program over its run (clock64 against the
    # GPU's ns clock, both read at each step's exit)
    ghz = ((ck[:, -1, 3] - ck[:, 0, 3]).double()
           / (ck[:, -1, 5] - ck[:, 0, 5]).double().clamp(min=1))
    f = float(ghz.median())
    us = {k: _stats(v.double() / f / 1e3) for k, v in cycles.items()}
    step = c[..., 3] - prev_exit
    # the barrier split by the GPU's clock: each batch group's last arrival
    tiles = rec["n_u"] * rec["groups"]
    k = torch.arange(ck.shape[0])
    group = (k // tiles) * rec["groups"] + (k % tiles) // rec["n_u"]
    arrive, leave = c[..., 4], c[..., 5]
    last_g = torch.stack([arrive[group == g].amax(0) for g in range(int(group.max()) + 1)])
    first_g = torch.stack([arrive[group == g].amin(0) for g in range(int(group.max()) + 1)])
    last = last_g[group]
    ticks = torch.unique(ck[..., 5].flatten())
    return dict(
        ghz=round(f, 4), programs=ck.shape[0], steps=ck.shape[1],
        step_us=_stats(step.double() / f / 1e3), phases_us=us,
        barrier_ns=dict(wait_last=_stats(last - arrive), after_last=_stats(leave - last),
                        arrival_spread=_stats(last_g - first_g)),
        # the GPU clock's tick (its smallest step seen): the split is no finer than it
        globaltimer_tick_ns=int((ticks[1:] - ticks[:-1]).min()) if len(ticks) > 1 else None)


def configs(dry: bool):
    """(config, variants): the targets where the model and the GPU disagreed, fp16 LSTM
    B=16 H=768 (cuDNN's persistent case) first, every variant; then the B=8 H=1024 rows."""
    if dry:
        return [(Config("lstm", "fp32", "training", 3, 8, 4, 8), ("fused", "fused-ll")),
                (Config("gru", "fp32", "inference", 3, 8, 4, 8), ("fused",))]
    variants = ("fused", "fused-red", "fused-ll")
    # (last, B=128's wide forward, whose builds take the longest: its backward is split
    # over K, which records nothing; a timeout there keeps the rows before it. bf16 B=8
    # H=1024 also on the narrow 16-unit tiles, 64 programs: what an A100 plans there)
    return [(Config("lstm", "fp16", "training", 16, 768, 256, 768), variants),
            (Config("lstm", "bf16", "training", 8, 1024, 256, 1024),
             variants + ("fused-narrow",)),
            (Config("gru", "bf16", "training", 8, 1024, 256, 1024), ("fused",)),
            (Config("lstm", "fp32", "training", 8, 1024, 256, 1024), ("fused",)),
            (Config("lstm", "bf16", "inference", 128, 1024, 256, 1024), ("fused",))]


def measure_phases(cfg: Config, impl: str, device) -> list[dict]:
    """One forward (and in training, backward) of the layer recorded, after one to compile;
    a row per recorded pass."""
    m = measure.make_module(cfg, impl, device)
    training = cfg.mode == "training"
    x = torch.randn(cfg.T, cfg.B, cfg.I, device=device, dtype=m.weight_hh_l0.dtype,
                    requires_grad=training)
    plan = measure.plan_of(m, impl, x)

    def run():
        with stepclock.recording() as recs, torch.set_grad_enabled(training):
            out, _ = measure._call(m, impl, x)
            if training:
                out.float().square().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return recs

    run()
    rows = []
    for rec in run():
        rows.append(dict(kind="phases", config=cfg.label(), impl=impl, **{"pass": rec["kind"]},
                         plan=({k: v for k, v in plan.items() if k != "backward"}
                               if rec["kind"] == "fwd" else plan["backward"]),
                         **summarize(rec)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--dry", action="store_true", help="no GPU: a tiny layer, interpreted")
    args = ap.parse_args(argv)
    dry = args.dry or not HAS_GPU
    device = torch.device("cpu" if dry else "cuda")
    path = pathlib.Path(args.out) / "micro.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0, failed = time.time(), 0
    for cfg, variants in configs(dry):
        for impl in variants:
            try:
                rows = measure_phases(cfg, impl, device)
            except Exception as e:  # noqa: BLE001 (a row; the next variant still runs)
                rows = [dict(kind="phases", config=cfg.label(), impl=impl,
                             error=f"{type(e).__name__}: {e}")]
            for row in rows:
                failed += "error" in row
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(_line(row), flush=True)
    print(f"phases: {time.time() - t0:.0f}s, {failed} failed, rows in {path}")
    return 1 if failed else 0


def _line(row: dict) -> str:
    if "error" in row:
        return f"{row['config']} {row['impl']}: {row['error']}"
    ph = " ".join(f"{k} {row['phases_us'][k][0]:.3f}" for k in PHASES)
    b = row["barrier_ns"]
    return (f"{row['config']} {row['impl']} {row['pass']}: step {row['step_us'][0]:.3f} us = "
            f"{ph} (barrier: wait for the last {b['wait_last'][0]:.0f} ns, after it "
            f"{b['after_last'][0]:.0f} ns; {row['ghz']:.2f} GHz)")


if __name__ == "__main__":
    sys.exit(main())
