"""Benchmark output: the printed table, the JSON, the plot, and the README's results.

    python -m bench.report [RESULTS.json]   regenerate README's results table and plot from
                                            the newest committed bench/results/*.json
    python -m bench.report --auto-table     ... and the table backend="auto" reads
                                            (kernels/auto_table.json)
"""
from __future__ import annotations

import datetime
import json
import pathlib
import platform
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def machine() -> dict:
    """The machine line: GPU, driver, CUDA, torch, triton, commit, date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "host_cpu": platform.processor() or platform.machine()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm_count=p.multi_processor_count,
                    gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info.update(gpu=None, driver=None)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["commit"] = None
    return info


def table(rows) -> str:
    head = (f"{'configuration':58} {'impl':18} {'status':7} {'error':>8} {'ms':>9} "
            f"{'us/step':>8} {'vs base':>8} {'TFLOP/s':>8} {'GB/s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(key, fmt):
            v = r.get(key)
            width = int(fmt.split(".")[0])
            return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)
        x_mark = "x" if r.get("speedup_vs_baseline") else " "
        status = r["status"] + ("*" if r.get("cudnn_persistent_likely") and
                                r["impl"] == "cudnn" else "")
        lines.append(f"{r['config']:58} {r['impl']:18} {status:7} {f('error', '8.1e')} "
                     f"{f('ms', '9.3f')} {f('us_per_step', '8.1f')} "
                     f"{f('speedup_vs_baseline', '7.2f')}{x_mark} "
                     f"{f('recurrent_tflops', '8.2f')} "
                     f"{f('recurrent_gbps', '8.1f')}")
    return "\n".join(lines)


def write_json(path: pathlib.Path, info: dict, rows, argv) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "argv": argv, "rows": rows}, indent=1))


def plot(rows, path: pathlib.Path, impl: str, title: str) -> bool:
    """Speedup of `impl` vs the baseline over hidden size, a line per batch size, a panel
    per (cell, dtype, mode). Returns False when there is nothing to plot, or when matplotlib
    (an optional dependency: the bench extra) is missing, which it then says."""
    try:
        import matplotlib
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib, or "
              "pip install -e '.[bench]')")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["impl"] == impl and r.get("speedup_vs_baseline")
           and r["layers"] == 1 and not r["bidirectional"] and not r.get("proj")]
    panels = sorted({(r["cell"], r["dtype"], r["mode"]) for r in pts})
    if not panels:
        return False
    cols = min(4, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, (cell, dt, mode) in zip(axes.flat, panels):
        sel = [r for r in pts if (r["cell"], r["dtype"], r["mode"]) == (cell, dt, mode)]
        for b in sorted({r["B"] for r in sel}):
            line = sorted((r["H"], r["speedup_vs_baseline"]) for r in sel if r["B"] == b)
            ax.plot([h for h, _ in line], [s for _, s in line], marker="o", label=f"B={b}")
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{cell} {dt} {mode}", fontsize=9)
        ax.set_xlabel("hidden size")
        ax.set_ylabel(f"speedup of {impl} vs baseline")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def results() -> list[pathlib.Path]:
    """Committed results, oldest first (the names start with the run's date and time; a
    clone's file times say nothing)."""
    return sorted(RESULTS.glob("*.json"), key=lambda p: p.name)


def newest_result() -> pathlib.Path | None:
    files = results()
    return files[-1] if files else None


def readme_section(path: pathlib.Path) -> str:
    data = json.loads(path.read_text())
    info, rows = data["machine"], data["rows"]
    fused = [r for r in rows if r["impl"] == "fused"]
    out = [f"Measured on {info.get('gpu')} (driver {info.get('driver')}, CUDA {info.get('cuda')}, "
           f"torch {info.get('torch')}, triton {info.get('triton')}, commit {info.get('commit')}, "
           f"{info.get('date')}); source: `bench/results/{path.name}`. Speedup = cuDNN time / "
           "fusedrnn time (> 1: fusedrnn is faster).", "",
           "| configuration | status | fusedrnn ms | cuDNN ms | speedup |",
           "| --- | --- | ---: | ---: | ---: |"]
    for r in fused:
        base = next((b for b in rows if b["config"] == r["config"] and b["impl"] == "cudnn"), {})
        ms = f"{r['ms']:.3f}" if "ms" in r else "-"
        bms = f"{base['ms']:.3f}" if "ms" in base else "-"
        sp = f"{r['speedup_vs_baseline']:.2f}x" if r.get("speedup_vs_baseline") else "-"
        out.append(f"| {r['config']} | {r['status']} | {ms} | {bms} | {sp} |")
    png = path.with_suffix(".png")
    if png.exists():
        out += ["", f"![speedup vs cuDNN](bench/results/{png.name})"]
    return "\n".join(out)


def update_readme(path: pathlib.Path | None = None) -> pathlib.Path | None:
    """Rewrite README's results section (between the markers) from a committed result."""
    path = path or newest_result()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"README.md lacks the {README_START} / {README_END} markers")
    if path is None:
        body = "No GPU results are committed yet, so this README makes no speed claim."
    else:
        rows = json.loads(path.read_text())["rows"]
        plot(rows, path.with_suffix(".png"), "fused", f"fusedrnn vs cuDNN ({path.stem})")
        body = readme_section(path)
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}")
    return path


def write_auto_table(path: pathlib.Path | None = None,
                     out: pathlib.Path = ROOT / "kernels" / "auto_table.json") -> int:
    """Write the table ``backend="auto"`` reads (kernels/auto_table.py) from a committed
    result, by default the newest together with the older ones from the same GPU (a newer
    row of a configuration replaces an older one; auto_table.table_rows keeps a row only
    where its recorded launch is the one today's plan makes). Returns the number of rows."""
    from fusedrnn.kernels.auto_table import table_rows

    path = path or newest_result()
    if path is None:
        raise SystemExit("no committed results in bench/results: auto follows the estimates")
    data = json.loads(path.read_text())
    gpu = data["machine"].get("gpu")
    sources = [path]
    if path.parent == RESULTS:
        sources = [p for p in results() if p.name <= path.name
                   and json.loads(p.read_text())["machine"].get("gpu") == gpu]
    rows = [r for p in sources for r in json.loads(p.read_text())["rows"]]
    table = table_rows(rows, data["machine"].get("sm_count") or 132)
    out.write_text(json.dumps({"source": [f"bench/results/{p.name}" for p in sources],
                               "gpu": gpu, "rows": table}, indent=1))
    return len(table)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--auto-table"]
    source = pathlib.Path(args[0]) if args else None
    if "--auto-table" in sys.argv[1:]:
        print(f"kernels/auto_table.json: {write_auto_table(source)} rows")
    chosen = update_readme(source)
    print(f"README.md results updated from {chosen}" if chosen else
          "no committed results: README.md says so")
