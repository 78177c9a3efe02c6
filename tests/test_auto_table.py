"""Where backend="auto" sends a CUDA LSTM/GRU (kernels/auto_table.py): measured rows when a
table exists, the plan's estimates until then; and the module's use of it."""
import json

import pytest
import torch

import fusedrnn
from bench import report
from fusedrnn.kernels import auto_table, common
from fusedrnn.kernels import plan as planning

BF16, FP16 = torch.bfloat16, torch.float16


def _ask(cell, dtype, B, H, training, table=auto_table.TABLE, **kw):
    args = dict(I=H, proj=0, layers=1, bidirectional=False, sm_count=132)
    args.update(kw)
    return auto_table.prefers_triton(cell, dtype, B, H, args["I"], args["proj"],
                                     args["layers"], args["bidirectional"], training,
                                     args["sm_count"], table=table)


def test_estimates_until_a_gpu_result_exists(tmp_path):
    missing = tmp_path / "none.json"
    ok, why = _ask("lstm", FP16, 16, 768, False, missing)  # cuDNN's persistent case
    assert not ok and "persistent" in why
    ok, why = _ask("lstm", BF16, 8, 1024, False, missing)
    assert ok and why.startswith("estimate: weight-stationary")
    ok, why = _ask("lstm", BF16, 8, 1024, True, missing)   # its backward is stationary too
    assert ok and why.startswith("estimate: weight-stationary")
    ok, why = _ask("lstm", BF16, 1024, 1024, False, missing)
    assert not ok and "forward would stream" in why
    ok, why = _ask("lstm", BF16, 512, 1024, True, missing)  # 4 sub-tiles of 64 rows forward,
    assert ok and why.startswith("estimate: weight-stationary")  # the backward split over K
    ok, why = _ask("lstm", torch.float32, 128, 768, True, missing)  # 6 K parts of 128
    assert ok and why.startswith("estimate: weight-stationary")
    ok, why = _ask("lstm", BF16, 512, 768, True, missing)  # 4 sub-tiles forward; split-K
    assert ok and why.startswith("estimate: weight-stationary")  # with its update in passes
    ok, why = _ask("rnn", BF16, 512, 768, True, missing)  # the plain RNN's backward is never
    assert not ok and "backward would stream" in why     # split over K


def test_measured_rows_win_and_the_nearest_is_used(tmp_path):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"rows": [
        dict(cell="lstm", dtype="fp16", mode="inference", B=16, H=768, triton_faster=True),
        dict(cell="lstm", dtype="fp16", mode="inference", B=512, H=2048, triton_faster=False)]}))
    ok, why = _ask("lstm", FP16, 32, 512, False, table)
    assert ok and "measured" in why and "B=16 H=768" in why
    assert not _ask("lstm", FP16, 256, 2048, False, table)[0]
    # no row of this cell/dtype/mode: the estimates
    assert _ask("gru", BF16, 8, 1024, False, table)[1].startswith("estimate")


def test_table_written_from_a_benchmark_result(tmp_path):
    rows = []
    for B, fused_ms in ((8, 1.0), (128, 3.0)):
        cfg = dict(cell="gru", dtype="bf16", mode="training", B=B, H=512, layers=1,
                   bidirectional=False, config=f"c{B}")
        rows += [dict(cfg, impl="cudnn", ms=2.0), dict(cfg, impl="fused", ms=fused_ms)]
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"machine": {"gpu": "Test GPU"}, "rows": rows}))
    out = tmp_path / "auto_table.json"
    assert report.write_auto_table(result, out) == 2
    data = json.loads(out.read_text())
    assert data["gpu"] == "Test GPU"
    assert [r["triton_faster"] for r in data["rows"]] == [True, False]


def test_module_asks_the_table_with_its_call(monkeypatch):
    """What the drop-in passes (CPU tensors stand in for CUDA ones: only the question is
    checked), and the cases cuDNN cannot serve, which go to triton whatever the table."""
    asked = []

    def fake(*args, **kw):
        asked.append(args)
        asked_kw.append(kw)
        return False, "test"

    asked_kw = []
    monkeypatch.setattr(auto_table, "prefers_triton", fake)
    monkeypatch.setattr(common, "sm_count", lambda device: 132)
    # the device's own limits (an A100's here), as the plan takes them for its launches
    monkeypatch.setattr(planning, "wgmma", lambda device: False)
    monkeypatch.setattr(planning, "smem_per_block", lambda device: 163 * 1024)
    m = fusedrnn.GRU(12, 16, num_layers=2, batch_first=True)
    x = torch.randn(5, 7, 12)
    assert m._triton_by_table(x) is False
    assert asked[-1] == ("gru", torch.float32, 5, 16, 12, 0, 2, False, True, 132)
    assert asked_kw[-1] == dict(wide_tiles=False, smem_limit=163 * 1024)
    with torch.no_grad():
        m._triton_by_table(x)
    assert asked[-1][-2] is False  # inference
    m.eval()
    assert m._triton_by_table(x) is True  # backward in eval mode: cuDNN refuses it
    with torch.no_grad():
        assert m._triton_by_table(x) is False


@pytest.mark.parametrize("env,want", [("", True), ("auto", True), ("triton", False)])
def test_only_auto_itself_consults_the_table(env, want, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_BACKEND", env)
    assert fusedrnn.backend.chose_by_auto("auto") is want
    assert fusedrnn.backend.chose_by_auto("triton") is False


def test_committed_table_follows_the_h200_results():
    """kernels/auto_table.json, written from bench/results/20261127-*-NVIDIA_H200.json:
    triton where it ran weight-stationary and beat cuDNN, cuDNN where fusedrnn streamed and
    for cuDNN's persistent fp16 LSTM."""
    data = json.loads(auto_table.TABLE.read_text())
    assert data["gpu"] == "NVIDIA H200" and len(data["rows"]) > 100
    ok, why = _ask("lstm", BF16, 8, 1024, True)
    assert ok and why.startswith("measured: lstm bf16 training B=8 H=1024")
    assert _ask("gru", torch.float32, 32, 512, False)[0]
    assert not _ask("lstm", BF16, 512, 1024, True)[0]
    assert not _ask("lstm", FP16, 16, 768, False)[0]
    # a neighbour's row says triton, but this call would stream (H=1536 B=32: its
    # backward; B=128 both passes); with proj_size both passes are weight-stationary
    ok, why = _ask("lstm", BF16, 32, 1536, True, proj=512)
    assert not ok and "would stream" in why
    assert not _ask("lstm", BF16, 128, 1536, False)[0]
    assert _ask("lstm", BF16, 8, 1024, True, proj=512)[0]


def test_table_keeps_only_rows_measured_with_todays_launch():
    """A result row whose recorded plan is not what the plan makes today says nothing about
    today's kernels: the table skips it, or takes a forced row that matches."""
    cfg = dict(cell="lstm", dtype="bf16", mode="inference", B=8, H=1024, layers=1,
               bidirectional=False, config="c")
    today = auto_table.current_launches("lstm", "bf16", 8, 1024, False, 132)
    stale = dict(kernel="sequence", U=None, BB=None, programs=64, backward={})
    match = dict(zip(auto_table._LAUNCH, today), backward={})
    rows = [dict(cfg, impl="cudnn", ms=2.0), dict(cfg, impl="fused", ms=3.0, plan=stale)]
    assert auto_table.table_rows(rows) == []
    rows.append(dict(cfg, impl="fused-stationary", ms=1.0, plan=match))
    assert [r["triton_faster"] for r in auto_table.table_rows(rows)] == [True]
