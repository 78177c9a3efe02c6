"""python -m bench: fusedrnn against cuDNN, correctness first, then time.

On a GPU: the grid of GUIDE section 5 (or --quick), implementations fused (the Triton
kernels as the package picks them), fused-step and fused-seq (forced to the step or the
sequence kernels, so the rule between them can be checked), cudnn (torch.nn, the
baseline), and reference and native-nocudnn at the smaller sizes. Without a GPU: the
Triton kernels under the interpreter at a tiny size as a correctness smoke test, and CPU
timings of auto/native/reference against torch.nn.
Writes a table, JSON and a PNG plot under --out.
"""
from __future__ import annotations

import argparse
import datetime
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
                    help="stop timing new configurations after this many seconds (GPU)")
    ap.add_argument("--out", default="bench/out", help="folder for the JSON and PNG")
    return ap.parse_args(argv)


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
    if HAS_GPU:
        device = torch.device("cuda")
        grid = configs.gpu_grid(args.cells, args.dtypes, args.modes, args.batches, args.hiddens,
                                args.T, args.quick)
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
        _progress(k, len(grid), cfg.label(), t0)
        if HAS_GPU:
            small = cfg.H <= 512 and cfg.B <= 32
            impls = ["cudnn", "fused", "fused-step", "fused-seq", "fused-stationary"]
            impls += ["reference", "native-nocudnn"] if small else []
        else:
            impls = ["torch.nn", "auto", "native", "reference"]
        over = HAS_GPU and time.time() - t0 > args.budget_s
        for r in measure.measure(cfg, impls, baseline, device, time_it=not over):
            if over and r["status"] == "ok":
                r["status"] = "skipped"  # checked, but the time budget was spent
            rows.append(r)
        if HAS_GPU:
            torch.cuda.empty_cache()
    _progress(len(grid), len(grid), "done", t0)

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
