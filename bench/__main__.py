"""python -m bench: fusedrnn against cuDNN, correctness first, then time.

On a GPU: the grid of GUIDE section 5 (or --quick; with --targets, the section's target
configurations first), implementations cudnn (torch.nn, the baseline), fused (the Triton
kernels as the package picks them), and fused-seq and fused-stationary (forced to the
streaming or the weight-stationary sequence kernels, so the rule between them can be
checked), fused-splitk (the backward split over K wherever it has a tiling; timed only
in training where the plan's own backward is another) and fused-ll (the weight-stationary
forward exchanging h as LL words instead of meeting at a barrier, kernels/ll.py; timed only
where the forward is weight-stationary) and fused-red (the weight-stationary kernels'
barriers arriving with a red.release; likewise) and fused-narrow (16-bit LSTM/GRU on the
narrow 16-unit tiles, where resident and not the plan's own) and fused-stream32 (the
streaming kernels on 32-unit tiles and 64-deep K chunks, where the plan streams on narrower
ones); --impls names others (fused-step;
fused-resets, resets passed but none set, which times the in-kernel restarts; reference,
native-nocudnn). Without a GPU: the Triton kernels under the interpreter at a tiny size as
a correctness smoke test, and CPU timings of auto/native/reference against torch.nn.
Writes a table, JSON and a PNG plot under --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    # the interpreter must be on before triton decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench import configs, measure, report  # noqa: E402


def _progress(k: int, n: int, label: str, t0: float) -> None:
    width = 30
    done = int(width * k / max(n, 1))
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {k}/{n} {time.time() - t0:5.0f}s "
                     f"{label[:60]:60}")
    sys.stderr.flush()
    if k == n:
        sys.stderr.write("\n")


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short subset of the grid")
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"],
                    choices=["lstm", "gru", "rnn"])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(configs.DTYPES))
    ap.add_argument("--modes", nargs="+", default=["inference", "training"],
                    choices=["inference", "training"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128, 512])
    ap.add_argument("--hiddens", nargs="+", type=int, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no new configuration after this many seconds (GPU)")
    ap.add_argument("--targets", action="store_true",
                    help="GUIDE section 5's target configurations first, then the grid")
    ap.add_argument("--impls", nargs="+", help="implementations to run (GPU; default: all)")
    ap.add_argument("--check-only", action="store_true",
                    help="check each configuration, time nothing: compiles the kernels into "
                         "Triton's cache, so several of these in parallel warm a timed run")
    ap.add_argument("--shard", default="0/1", help="K/N: run every N-th configuration from K")
    ap.add_argument("--rows", help="append each row to this JSON-lines file as it is measured "
                                   "(a run cut by a time limit keeps what it measured)")
    ap.add_argument("--out", default="bench/out", help="folder for the JSON and PNG")
    return ap.parse_args(argv)


GPU_IMPLS = ["cudnn", "fused", "fused-seq", "fused-stationary", "fused-splitk", "fused-ll",
             "fused-red", "fused-narrow", "fused-stream32"]


def gpu_configs(args):
    """The configurations of a GPU run, in order: the targets (with --targets), then the
    grid without repeats; then this shard's share."""
    grid = configs.gpu_grid(args.cells, args.dtypes, args.modes, args.batches, args.hiddens,
                            args.T, args.quick)
    if args.targets:
        grid = list(dict.fromkeys(configs.targets() + grid))
    k, n = (int(v) for v in args.shard.split("/"))
    return grid[k::n]


def smoke_interpreter():
    """The Triton kernels at a tiny size under the interpreter, against torch.nn."""
    rows = []
    for cell in ("lstm", "gru", "rnn"):
        for mode in ("inference", "training"):
            cfg = configs.Config(cell, "fp32", mode, 3, 16, 4, 8, layers=2, bidirectional=True)
            rows += [r for r in measure.measure(cfg, ["torch.nn", "triton-interp",
                                                      "triton-interp-step"], "torch.nn",
                                                torch.device("cpu"), time_it=False)
                     if r["impl"] != "torch.nn"]
    return rows


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.time()
    rows = []
    if args.rows:
        pathlib.Path(args.rows).parent.mkdir(parents=True, exist_ok=True)
    if HAS_GPU:
        device = torch.device("cuda")
        grid = gpu_configs(args)
        baseline = "cudnn"
    else:
        device = torch.device("cpu")
        print("No GPU here: the Triton kernels run under the interpreter as a correctness "
              "smoke test, and the timings below are CPU timings of torch.nn vs fusedrnn's "
              "auto/native/reference backends. GPU timings need a GPU: see the committed "
              "results in bench/results/ (the README's results section).")
        rows += smoke_interpreter()
        grid = configs.cpu_grid(args.cells, args.modes)
        baseline = "torch.nn"
    for k, cfg in enumerate(grid):
        if HAS_GPU and time.time() - t0 > args.budget_s:
            print(f"\ntime budget ({args.budget_s:.0f}s) spent: {len(grid) - k} of {len(grid)} "
                  "configurations not measured")
            break
        _progress(k, len(grid), cfg.label(), t0)
        impls = (args.impls or GPU_IMPLS) if HAS_GPU else ["torch.nn", "auto", "native",
                                                           "reference"]
        for r in measure.measure(cfg, impls, baseline, device, time_it=not args.check_only):
            rows.append(r)
            if args.rows:
                with open(args.rows, "a") as f:
                    f.write(json.dumps(r) + "\n")
            if args.check_only:
                print(f"{r['config']:55} {r['impl']:17} {r['status']} {r.get('error')} "
                      f"{r.get('exception', '')}", flush=True)
        if HAS_GPU:
            torch.cuda.empty_cache()
    _progress(len(grid), len(grid), "done", t0)
    if args.check_only:
        failed = sum(r["status"] == "FAILED" for r in rows)
        print(f"checked {len(rows)} rows, {failed} failed, {time.time() - t0:.0f}s")
        return 1 if failed else 0

    print(report.table(rows))
    info = report.machine()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = (info.get("gpu") or "cpu").replace(" ", "_")
    out = pathlib.Path(args.out)
    json_path = out / f"{stamp}-{tag}.json"
    report.write_json(json_path, info, rows, sys.argv[1:] if argv is None else argv)
    impl = "fused" if HAS_GPU else "auto"
    png = json_path.with_suffix(".png")
    wrote = [str(json_path)]
    if report.plot(rows, png, impl, f"{impl} vs {baseline} on {info.get('gpu') or 'CPU'}"):
        wrote.append(str(png))
    failed = [r for r in rows if r["status"] == "FAILED"]
    print(f"\nwrote {' and '.join(wrote)}; {len(rows)} rows, {len(failed)} failed, "
          f"{time.time() - t0:.0f}s")
    if not HAS_GPU:
        print("GPU timings need a GPU; committed GPU results live in bench/results/.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
