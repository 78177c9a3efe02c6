"""The benchmark's own logic: a wrong result is reported as failed and never timed; the
table, JSON, plot and README section come out of the rows."""
import json
import sys

import pytest
import torch

import fusedrnn
from bench import configs, measure, report
from fusedrnn.kernels import auto_table, plan


def test_wrong_result_is_failed_and_not_timed(monkeypatch):
    cfg = configs.Config("gru", "fp32", "training", 2, 8, 3, 4)
    real = fusedrnn.functional.gru

    def off_by_a_bit(*args, **kwargs):
        out, h = real(*args, **kwargs)
        return out * 1.01, h

    monkeypatch.setattr(fusedrnn.functional, "gru", off_by_a_bit)
    rows = measure.measure(cfg, ["torch.nn", "reference", "native"], "torch.nn",
                           torch.device("cpu"))
    by = {r["impl"]: r for r in rows}
    assert by["reference"]["status"] == "FAILED" and "ms" not in by["reference"]
    assert by["native"]["status"] == "ok" and by["native"]["ms"] > 0
    assert by["torch.nn"]["speedup_vs_baseline"] == 1.0
    assert "FAILED" in report.table(rows)


def test_crash_is_failed(monkeypatch):
    cfg = configs.Config("lstm", "fp32", "inference", 2, 8, 3, 4)
    monkeypatch.setattr(fusedrnn.functional, "lstm", lambda *a, **k: 1 / 0)
    (row,) = [r for r in measure.measure(cfg, ["torch.nn", "reference"], "torch.nn",
                                         torch.device("cpu")) if r["impl"] == "reference"]
    assert row["status"] == "FAILED" and "ZeroDivisionError" in row["exception"]


def test_outputs_and_readme_section(tmp_path, monkeypatch):
    rows = []
    for h in (128, 256):
        cfg = configs.Config("lstm", "bf16", "inference", 8, h, 16, h)
        for impl, ms in (("cudnn", 2.0), ("fused", 1.0)):
            rows.append(dict(config=cfg.label(), **cfg.__dict__, impl=impl, baseline="cudnn",
                             status="ok", error=1e-3, ms=ms, speedup_vs_baseline=2.0 / ms))
    path = tmp_path / "run.json"
    report.write_json(path, {"gpu": "Test GPU", "driver": "1"}, rows, [])
    assert report.plot(json.loads(path.read_text())["rows"], tmp_path / "run.png", "fused", "t")
    assert (tmp_path / "run.png").stat().st_size > 0
    section = report.readme_section(path)
    assert "Test GPU" in section and "2.00x" in section and section.count("| lstm bf16") == 2
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.README_START}\nold\n{report.README_END}\nbottom\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    report.update_readme(path)
    text = readme.read_text()
    assert "old" not in text and "Test GPU" in text and text.endswith("bottom\n")


def test_grid_matches_the_guide():
    grid = configs.gpu_grid(["lstm", "gru"], ["fp32", "bf16"], ["inference", "training"],
                            [1, 8, 32, 128, 512], [128, 256, 512, 1024, 2048])
    one_layer = [c for c in grid if c.layers == 1 and c.dtype != "fp16" and not c.bidirectional]
    assert len(one_layer) == 2 * 2 * 2 * 5 * 5
    assert any(c.layers == 2 and c.bidirectional and c.B == 32 and c.H == 512 for c in grid)
    paired = [c for c in grid if c.bidirectional and c.H == 1024]
    assert {(c.cell, c.dtype, c.B, c.layers) for c in paired} == {("lstm", "bf16", 16, 1),
                                                                ("gru", "bf16", 16, 1)}
    assert all(c.T == 256 and c.I == c.H for c in grid)
    assert configs.Config("lstm", "fp16", "inference", 16, 768, 256, 768).cudnn_persistent_likely()
    gru = configs.Config("gru", "bf16", "inference", 16, 768, 256, 768)
    assert not gru.cudnn_persistent_likely()


def test_bench_finishes_without_matplotlib(tmp_path, monkeypatch, capsys):
    """matplotlib is the bench extra, not a dependency: without it the run still writes its
    JSON, says once that the plot was skipped and how to get it, and exits 0."""
    from bench import __main__ as bench_main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(configs, "cpu_grid", lambda cells, modes: [
        configs.Config("gru", "fp32", "inference", 2, 8, 3, 8)])
    assert bench_main.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("plot skipped: matplotlib is not installed") == 1
    assert len(list(tmp_path.glob("*.json"))) == 1 and not list(tmp_path.glob("*.png"))


def test_gpu_micro_script_runs_each_kernel(tmp_path):
    """bench.micro (the first GPU call's barrier, broadcast and target measurements) in its
    dry mode: every kernel once under the interpreter, the targets checked, rows written."""
    from bench import micro

    assert micro.main(["--dry", "--out", str(tmp_path)]) == 0
    # the GPU's h read is a tl.arange: a power of two, or the kernel does not compile
    assert micro.GPU_K & (micro.GPU_K - 1) == 0 and micro.GPU_BB & (micro.GPU_BB - 1) == 0
    rows = [json.loads(line) for line in (tmp_path / "micro.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("barrier") == 2 and kinds.count("h broadcast + barrier") == 1
    assert {r["arrive"] for r in rows if r["kind"] == "barrier"} == {"atomic", "red.release"}
    targets = [r for r in rows if r["kind"] == "target"]
    assert {r["impl"] for r in targets} >= {"fused-stationary", "fused-seq"}
    # (fused-stationary is timed only where no earlier row ran its plan: under the
    # interpreter the baseline, triton-interp, is weight-stationary already)
    assert all(r["status"] in ("ok", "same") for r in targets)
    assert any(r["status"] == "ok" for r in targets if r["impl"] == "fused-seq")
    # (a streaming row records its tiles, plan.stream_blocks: the next GPU run's rows say
    # which units and K chunks they timed)
    assert all({"BLOCK_H", "BLOCK_K"} <= set(r["plan"]) for r in targets
               if r["impl"] == "fused-seq" and r["status"] == "ok")
    assert {r["plan"]["kernel"] for r in targets if r["impl"] == "fused-stationary"} \
        == {"stationary"}


def test_phases_script_records_both_passes(tmp_path):
    """bench.phases (where a weight-stationary step's time goes, on a GPU) in its dry mode:
    a tiny layer's forward and backward recorded under the interpreter, a row a pass and
    variant (the LL one planned as such), every phase summarized; in inference, the
    forward alone."""
    from bench import phases

    assert phases.main(["--dry", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "micro.jsonl").read_text().splitlines()]
    assert [(r["impl"], r["pass"]) for r in rows] == [
        ("fused", "fwd"), ("fused", "bwd"), ("fused-ll", "fwd"), ("fused-ll", "bwd"),
        ("fused", "fwd")]                                    # (the last: inference)
    assert [r["plan"]["ll"] for r in rows] == [False, False, True, False, False]
    for r in rows:
        assert r["kind"] == "phases" and set(r["phases_us"]) == set(phases.PHASES)


def test_phases_summary_of_known_clocks():
    """phases.summarize on clocks made to a known schedule: 4 programs in 2 batch groups
    of 2, SM clocks at 2 GHz with a different origin on each SM. Each step: 40 ns to the
    operands, 300 to the product, 100 + 10 p to the update's end (the arrival), and every
    member leaves 60 ns after its group's last arrival."""
    from bench import phases

    T, P, n_u = 6, 4, 2
    ck = torch.zeros(P, T, 8, dtype=torch.int64)
    start = [1000] * P
    for s in range(T):
        ns = torch.zeros(P, 4, dtype=torch.int64)
        for p in range(P):
            ns[p, 0] = start[p] + 40
            ns[p, 1] = ns[p, 0] + 300
            ns[p, 2] = ns[p, 1] + 100 + 10 * p
        for p in range(P):
            g = p // n_u
            ns[p, 3] = ns[g * n_u:(g + 1) * n_u, 2].max() + 60
        for p in range(P):
            ck[p, s, :4] = 2 * ns[p] + 12345 * p   # cycles, each SM its own origin
            ck[p, s, 4], ck[p, s, 5] = ns[p, 2], ns[p, 3]
            start[p] = int(ns[p, 3])
    row = phases.summarize(dict(clocks=ck, n_u=n_u, groups=2, dirs=1))
    assert row["ghz"] == 2.0
    us = {k: v[0] for k, v in row["phases_us"].items()}
    # (medians of 4 programs: the lower middle value)
    assert us == dict(load=0.04, product=0.3, update=0.11, barrier=0.06)
    b = row["barrier_ns"]
    assert b["after_last"] == [60.0, 60.0] and b["wait_last"][1] == 10.0
    assert b["arrival_spread"] == [10.0, 10.0]
    assert phases.summarize(dict(clocks=-torch.ones(P, T, 8, dtype=torch.int64), n_u=n_u,
                                 groups=2, dirs=1)) == dict(
        error="a clock slot was never written")


def test_ll_variant_is_timed_only_where_the_forward_is_weight_stationary():
    """fused-ll (FUSEDRNN_KERNEL=ll) times the forward's LL exchange beside fused, checked
    like every row, where the forward is weight-stationary (an fp32 layer; the interpreter
    forces it); where it has no LL words (fp64), its plan is fused's and it is not run."""
    rows = {}
    for dtype in ("fp32", "fp64"):
        cfg = configs.Config("lstm", dtype, "training", 3, 20, 3, 4)
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(configs.DTYPES, "fp64", torch.float64)
            mp.setitem(measure.CHECK_TOL, "fp64", 1e-9)
            got = measure.measure(cfg, ["torch.nn", "fused", "fused-ll"], "torch.nn",
                                  torch.device("cpu"), time_it=False)
        rows[dtype] = {r["impl"]: r for r in got}
    ll = rows["fp32"]["fused-ll"]
    assert ll["status"] == "ok" and ll["plan"]["ll"] and not rows["fp32"]["fused"]["plan"]["ll"]
    assert rows["fp64"]["fused-ll"]["status"] == "same"


def test_projection_config_is_checked_with_its_plan():
    """A target with proj_size (configs.targets: bf16 B=16 H=1024 P=512) runs as the LSTM
    with that projection on both sides, checked against torch.nn, its output P wide, the
    weight-stationary plan recorded for both passes; the rows say P in their label and are
    left out of backend="auto"'s table (it has no projection)."""
    assert any(c.proj for c in configs.targets())
    cfg = configs.Config("lstm", "fp32", "training", 3, 20, 3, 4, proj=7)
    assert "P=7" in cfg.label() and cfg.recurrent_flops() > 0
    rows = measure.measure(cfg, ["torch.nn", "fused"], "torch.nn", torch.device("cpu"),
                           time_it=False)
    fused = {r["impl"]: r for r in rows}["fused"]
    assert fused["status"] == "ok" and fused["proj"] == 7, fused
    assert fused["plan"]["kernel"] == fused["plan"]["backward"]["kernel"] == "stationary"
    # (as timed against cuDNN: one table row without the projection, none with it)
    timed = [{**{k: v for k, v in r.items() if k != "plan"}, "ms": 1.0,
              "impl": "cudnn" if r["impl"] == "torch.nn" else r["impl"]} for r in rows]
    assert len(auto_table.table_rows([dict(r, proj=0) for r in timed])) == 1
    assert auto_table.table_rows(timed) == []


def test_narrow_variant_is_timed_only_where_its_plan_differs():
    """fused-narrow (FUSEDRNN_KERNEL=narrow) times a 16-bit layer on the narrow 16-unit tiles
    beside the plan's own (under the interpreter's one program, H=4: a tile of 16 units, 12
    of them past H, where the plan takes 4), checked like every row; fp32 has no narrow
    tiles: not run."""
    rows = {}
    for dtype in ("bf16", "fp32"):
        cfg = configs.Config("lstm", dtype, "training", 3, 4, 3, 4)
        got = measure.measure(cfg, ["torch.nn", "fused", "fused-narrow"], "torch.nn",
                              torch.device("cpu"), time_it=False)
        rows[dtype] = {r["impl"]: r for r in got}
    narrow = rows["bf16"]["fused-narrow"]
    assert narrow["status"] == "ok", narrow
    assert narrow["plan"]["U"] == narrow["plan"]["backward"]["U"] == plan.NARROW_UNITS
    assert rows["bf16"]["fused"]["plan"]["U"] < plan.NARROW_UNITS
    assert rows["fp32"]["fused-narrow"]["status"] == "same"


def test_splitk_variant_is_timed_only_where_its_plan_differs(monkeypatch):
    """fused-splitk (FUSEDRNN_KERNEL=splitk) times the backward split over K beside the
    plan's own backward (under the interpreter: 2 K parts); in inference, where its plan is
    fused's, it is not run again."""
    monkeypatch.setitem(configs.DTYPES, "fp64", torch.float64)
    monkeypatch.setitem(measure.CHECK_TOL, "fp64", 1e-9)
    by = {}
    for mode in ("training", "inference"):
        cfg = configs.Config("gru", "fp64", mode, 3, 20, 3, 4)
        rows = measure.measure(cfg, ["torch.nn", "fused", "fused-splitk"], "torch.nn",
                               torch.device("cpu"), time_it=False)
        by[mode] = {r["impl"]: r for r in rows}
    train = by["training"]
    assert train["fused-splitk"]["status"] == "ok", train["fused-splitk"]
    assert train["fused-splitk"]["plan"]["backward"]["ksplit"] == 2
    assert "ksplit" not in train["fused"]["plan"]["backward"]
    infer = by["inference"]["fused-splitk"]
    assert infer["status"] == "same" and infer["same_as"] == "fused" and "error" not in infer
    assert "same" in report.table(list(by["inference"].values()))


def test_stream32_variant_runs_only_where_its_tiles_differ():
    """fused-stream32 (FUSEDRNN_KERNEL=stream32: the streaming kernels' 32-unit tiles and
    64-deep chunks of before plan.stream_blocks) is a GPU variant: under the interpreter
    (one program, block_sizes' tiles whatever the choice) its plan is fused's, so it is not
    run again (test_plan checks the tiles it takes on a GPU's plan)."""
    from bench import __main__ as bench_main

    assert "fused-stream32" in bench_main.GPU_IMPLS
    cfg = configs.Config("gru", "fp32", "training", 3, 20, 3, 4)
    rows = measure.measure(cfg, ["torch.nn", "fused", "fused-stream32"], "torch.nn",
                           torch.device("cpu"), time_it=False)
    by = {r["impl"]: r for r in rows}
    assert by["fused"]["status"] == "ok" and by["fused-stream32"]["status"] == "same"
    assert by["fused-stream32"]["same_as"] == "fused"
