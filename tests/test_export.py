"""Converted models under TorchScript, torch.jit.trace, ONNX (both exporters) and
torch.export, on every backend: each path works and gives the eager module's numbers.

The model mixes all six drop-ins with other layers. Routes (fusedrnn/backend.py,
fusedrnn/modules.py): scripting compiles the torch.nn module each drop-in subclasses
(``__prepare_scriptable__``, same Parameter objects); tracing and ONNX export record torch's
own ops; torch.export keeps the backend (the Triton layers as custom ops).
"""
import copy
import io
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from rnncheck import assert_close

BACKENDS = ["auto", "reference", "triton"]
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


class Mixed(nn.Module):
    """Every recurrent module once, between ordinary layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(12, 6, batch_first=True)
        self.rnn = nn.RNN(6, 5, nonlinearity="relu", batch_first=True)
        self.lstm_cell = nn.LSTMCell(5, 5)
        self.gru_cell = nn.GRUCell(5, 5)
        self.rnn_cell = nn.RNNCell(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y, _ = self.lstm(torch.tanh(self.embed(x)))
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        h, c = self.lstm_cell(y[:, -1])
        h = self.gru_cell(h + c)
        h = self.rnn_cell(h)
        return self.head(h) + y.mean(1)[:, :3]


def _model(backend):
    torch.manual_seed(0)
    m = fusedrnn.convert(Mixed(), backend=backend).eval()
    assert all(type(s).__module__ == "fusedrnn.modules" for s in m.modules()
               if isinstance(s, RECURRENT))
    return m


def _x(T):
    return torch.randn(2, T, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_script(backend):
    m = _model(backend)
    x = _x(5)
    with torch.no_grad():
        want = m(x)
    scripted = torch.jit.script(copy.deepcopy(m))
    with torch.no_grad():
        assert_close(scripted(x), want, 1e-6, "scripted")
    # a cell on its own scripts too, batched and unbatched (torch's LSTM/GRU/RNN overload
    # forward for packed input, so scripted alone they have no callable forward, in torch
    # as here: they script inside a model, as above)
    for cls in (fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell):
        cell = cls(3, 4, backend=backend)
        s_cell = torch.jit.script(cell)
        for xs in (torch.randn(2, 3), torch.randn(3)):
            got, want = s_cell(xs), cell(xs)
            got, want = (got[0], want[0]) if isinstance(got, tuple) else (got, want)
            assert_close(got, want, 1e-6, f"scripted {cls.__name__}")


def test_script_shares_parameters_and_swaps_children_in_place():
    """torch.jit.script puts what __prepare_scriptable__ returns into the model it is given
    (torch's behaviour): the eager model then holds torch.nn modules with the same
    Parameter objects, and fusedrnn.convert swaps them back."""
    m = _model("reference")
    params = {n: p for n, p in m.named_parameters()}
    torch.jit.script(m)
    assert type(m.lstm) is nn.LSTM and type(m.rnn_cell) is nn.RNNCell
    assert all(params[n] is p for n, p in m.named_parameters())
    assert not hasattr(m.lstm, "backend")
    fusedrnn.convert(m)
    assert type(m.lstm) is fusedrnn.LSTM and type(m.rnn_cell) is fusedrnn.RNNCell


def test_scripted_model_loads_without_fusedrnn(tmp_path):
    m = _model("reference")
    x = _x(4)
    with torch.no_grad():
        want = m(x)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys; sys.modules['fusedrnn'] = None\n"  # any import of fusedrnn fails
        "import torch\n"
        f"m = torch.jit.load({str(path)!r}); x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   env={**os.environ, "TRITON_INTERPRET": "0"})
    assert_close(torch.load(tmp_path / "y.pt"), want, 1e-6, "loaded")


@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_records_torch_ops_valid_for_any_length(backend):
    m = _model(backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(copy.deepcopy(m), (_x(5),))
    # no loop unrolled and no size frozen by fusedrnn's code (torch.nn's own flat-weights
    # code warns under tracing, with or without fusedrnn)
    ours = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)
            and "fusedrnn" in w.filename]
    assert not ours, [str(w.message) for w in ours]
    graph = str(traced.inlined_graph)
    for op in ("aten::lstm", "aten::gru", "aten::rnn_relu"):  # (the cell ops decompose)
        assert op in graph, op
    x = _x(7)  # traced at T=5
    with torch.no_grad():
        assert_close(traced(x), m(x), 1e-6, "traced")


def _need(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed (the Makefile "
                                              f"installs it: pip install -e '.[export]')")


def _onnx_run(path, x):
    ort = _need("onnxruntime")
    sess = ort.InferenceSession(str(path))
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _onnx_ops(path):
    onnx = _need("onnx")
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_torchscript_exporter(backend, tmp_path):
    _need("onnx")
    m = _model(backend)
    path = tmp_path / "m.onnx"
    torch.onnx.export(copy.deepcopy(m), (_x(5),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "B", 1: "T"}})
    assert {"LSTM", "GRU", "RNN"} <= _onnx_ops(path)
    x = torch.randn(3, 7, 4)  # exported at B=2, T=5
    with torch.no_grad():
        assert_close(_onnx_run(path, x), m(x), 1e-5, "onnxruntime")


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_dynamo_exporter(backend, tmp_path):
    _need("onnxscript")
    m = _model(backend)
    x = _x(5)
    path = tmp_path / "m.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with io.StringIO() as sink:  # the exporter prints its progress
        from contextlib import redirect_stdout
        with redirect_stdout(sink):
            torch.onnx.export(copy.deepcopy(m), (x,), dynamo=True).save(str(path))
    # torch's own ops, translated: ONNX LSTM and GRU nodes (the exporter decomposes the
    # plain RNN and the cells into MatMul and pointwise nodes)
    assert {"LSTM", "GRU"} <= _onnx_ops(path)
    with torch.no_grad():
        assert_close(_onnx_run(path, x), m(x), 1e-5, "onnxruntime")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_export(backend):
    """torch.export keeps the backend: the Triton layers are custom ops in its graph."""
    m = _model(backend)
    x = _x(5)
    ep = torch.export.export(copy.deepcopy(m), (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    if backend == "triton":
        assert {"fusedrnn.lstm_layer.default", "fusedrnn.gru_layer.default",
                "fusedrnn.rnn_layer.default"} <= targets, targets
    else:  # (the reference's aten ops, not torch.compile's fusedrnn::native_rnn: an
        # exported program that runs without fusedrnn)
        assert not any(t.startswith("fusedrnn.") for t in targets), targets
    with torch.no_grad():
        assert_close(ep.module()(x), m(x), 1e-6, "exported")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fx_symbolic_trace_keeps_the_drop_ins_as_leaves(backend):
    """torch.fx records torch.nn's recurrent modules as single call_module nodes (leaves);
    the drop-ins too, so FX-based tools (quantization, feature extraction) see the same
    graph, and the traced module runs the drop-ins."""
    m = _model(backend)
    traced = torch.fx.symbolic_trace(m)
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell"} <= called
    assert type(traced.lstm) is fusedrnn.LSTM
    x = _x(6)
    with torch.no_grad():
        assert_close(traced(x), m(x), 1e-12, "fx")
