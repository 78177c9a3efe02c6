"""Where PyTorch users need fusedrnn to work: torch.compile, the custom ops, autocast, double
backward, torch.func, backward in eval mode, determinism, DistributedDataParallel, CUDA
graphs."""
import copy
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fusedrnn
from fusedrnn import functional, ops
from rnncheck import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _grads(m, x, hx=None):
    x = x.detach().requires_grad_()
    out, hid = m(x) if hx is None else m(x, hx)
    loss = out.square().sum() + sum(h.sum() for h in (hid if isinstance(hid, tuple) else (hid,)))
    return [out, *torch.autograd.grad(loss, [x, *m.parameters()])]


# ----------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference", "auto"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_compile_fullgraph_matches_eager(mode, backend):
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    m = getattr(fusedrnn, mode)(4, 6, batch_first=True, bidirectional=backend == "triton",
                                backend=backend, device=DEVICE)
    x = torch.randn(2, 3, 4, device=DEVICE)
    compiled = torch.compile(m, fullgraph=True)
    for got, want in zip(_grads(compiled, x), _grads(m, x)):
        assert_close(got, want, 1e-5, mode)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compile_fullgraph_with_resets(mode):
    """Resets run inside the kernels, so a compiled model holds one custom op per layer
    pass with them too (no data-dependent re-batching to break the graph)."""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    m = getattr(fusedrnn, mode)(4, 6, backend="triton", device=DEVICE)
    x = torch.randn(5, 3, 4, device=DEVICE)
    resets = torch.zeros(5, 3, dtype=torch.bool, device=DEVICE)
    resets[2, 1] = True


    class WithResets(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = m

        def forward(self, x):
            return self.rnn(x, resets=resets)

    eager = WithResets()
    compiled = torch.compile(eager, fullgraph=True)
    for got, want in zip(_grads(compiled, x), _grads(eager, x)):
        assert_close(got, want, 1e-5, mode)


def test_default_backend_compiles_fullgraph_on_cpu():
    """A stock nn.LSTM fails fullgraph compilation on the CPU even with allow_rnn (PyTorch
    issues 91439, 141184; an AOT autograd assertion on torch 2.13); the drop-in on its
    default backend compiles, since "auto" picks the reference under torch.compile."""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    m = fusedrnn.LSTM(4, 5)
    x = torch.randn(3, 2, 4)
    assert_close(torch.compile(m, fullgraph=True)(x)[0], m(x)[0], 1e-5, "out")


class _Stacks(nn.Module):
    """An LSTM (2 layers, both directions, proj_size, batch-first), a GRU on a transposed view
    of its output, a relu RNN with inter-layer dropout (in eval: none drawn)."""

    def __init__(self, backend, dropout=0.0):
        super().__init__()
        self.lstm = fusedrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2,
                                  batch_first=True, backend=backend, dropout=dropout)
        self.gru = fusedrnn.GRU(4, 4, backend=backend)
        self.rnn = fusedrnn.RNN(4, 3, num_layers=2, nonlinearity="relu", dropout=0.3,
                                backend=backend).eval()

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        z, hz = self.gru(y.transpose(0, 1))
        w, hw = self.rnn(z)
        return w.square().sum() + h.sum() + c.sum() + hz.sum() + hw.sum()


def _compile_recording(model, graphs, **kw):
    """torch.compile through AOT autograd (forward and backward graphs, as Inductor), each
    Dynamo graph appended to ``graphs``."""
    from torch._dynamo.backends.debugging import aot_eager

    def record(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)
    return torch.compile(model, backend=record, fullgraph=True, **kw)


def _loss_grads(fn, x, net):
    """[loss, its gradients w.r.t. x and every parameter of net] for loss = fn(x)."""
    x = x.detach().requires_grad_()
    loss = fn(x)
    return [loss, *torch.autograd.grad(loss, [x, *net.parameters()])]


def _native_nodes(gm):
    return sum(n.op == "call_function" and "native_rnn" in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_compile_under_cpu_autocast_computes_as_eager(mode):
    """Under CPU autocast a compiled stack runs the reference, as before the op: eager's
    dtypes and numbers within bf16's rounding (whether oneDNN runs the bf16 LSTM is probed by
    running it, which cannot happen while Dynamo traces: that probe failed the compile)."""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = getattr(fusedrnn, mode)(3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3)
    compiled = torch.compile(m, fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = compiled(x)[0], m(x)[0]
    assert got.dtype == want.dtype
    assert_close(got.float(), want.float(), 2e-2, mode)


@pytest.mark.parametrize("backend, device", [("auto", "cpu"), ("native", "cpu")] + (
    [("native", "cuda")] if torch.cuda.is_available() else []))
def test_compile_runs_torchs_op_as_one_node_for_every_length(backend, device):
    """Where "auto" picks torch's op (the CPU here), a compiled LSTM/GRU/RNN runs it inside
    one custom op (fusedrnn/native_ops.py), backend="native" too: one graph for every
    sequence length under dynamic=True, three nodes, eager's numbers and gradients. (The
    reference's time loop, which auto compiled before, unrolls: a graph and a recompile per
    length, the compile time linear in it.)"""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _Stacks(backend).to(device)
    graphs = []
    compiled = _compile_recording(net, graphs, dynamic=True)
    for B, T in ((2, 5), (3, 7), (2, 9)):
        x = torch.randn(B, T, 3, device=device)
        got = _loss_grads(compiled, x, net)
        want = _loss_grads(net, x, net)
        for g, w in zip(got, want):  # (cuDNN: TF32 products, the same op both ways)
            assert_close(g, w, 1e-6 if device == "cpu" else 1e-4, f"B={B} T={T}")
    graphs = [g for g in graphs if len(g.graph.nodes)]  # (Dynamo may hand over empty ones)
    assert len(graphs) == 1, f"{len(graphs)} graphs for three lengths"
    assert _native_nodes(graphs[0]) == 3, graphs[0].graph


def test_compile_as_torch_2_11_traces_it(monkeypatch):
    """What the dynamo of torch 2.11 (the GPU machines') does differently, emulated: it folds
    torch.compiler.is_exporting() to True under every torch.compile (the flag torch.export
    sets stays False), where "auto" then ran the reference instead of torch's op; and it
    refuses to trace importlib.util.find_spec, which the backend's choice called on every
    forward (every triton-backend compile failed there)."""
    import importlib.util
    find_spec = importlib.util.find_spec

    def refuse_traced(*args, **kwargs):  # (torch's own calls, untraced, go through)
        if torch.compiler.is_compiling():
            raise AssertionError("importlib.util.find_spec traced while choosing a backend")
        return find_spec(*args, **kwargs)
    # True exactly where Dynamo traces it (torch.compile's own check, outside, sees False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: torch.compiler.is_compiling())
    monkeypatch.setattr(importlib.util, "find_spec", refuse_traced)
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _Stacks("auto")
    graphs = []
    x = torch.randn(2, 5, 3)
    assert_close(_compile_recording(net, graphs)(x), net(x), 1e-6, "auto")
    graphs = [g for g in graphs if len(g.graph.nodes)]
    assert [_native_nodes(g) for g in graphs] == [3], graphs
    torch._dynamo.reset()
    m = fusedrnn.GRU(4, 6, batch_first=True, backend="triton", device=DEVICE)
    x = torch.randn(2, 3, 4, device=DEVICE)
    for got, want in zip(_grads(torch.compile(m, fullgraph=True), x), _grads(m, x)):
        assert_close(got, want, 1e-5, "triton")


def test_compile_with_inter_layer_dropout_in_training_replays_the_masks():
    """Inter-layer dropout in training (CPU): the op returns the generator's state from before
    its forward and its backward's recomputation draws the same masks from it, so compiled
    numbers and gradients are eager's under the same seed."""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _Stacks("auto", dropout=0.5)
    graphs = []
    compiled = _compile_recording(net, graphs)
    x = torch.randn(2, 3, 3)
    results = []
    for fn in (compiled, net):
        torch.manual_seed(1)
        results.append(_loss_grads(fn, x, net))
    for got, want in zip(*results):
        assert_close(got, want, 1e-6, "dropout")
    assert sum(map(_native_nodes, graphs)) == 3, graphs


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("option", [dict(weight_dropout=0.3), dict(variational_dropout=0.2),
                                    dict(zoneout=0.1), dict(return_cell_states=True)])
def test_compile_runs_python_drawn_regularizers_outside_the_graph(option, backend):
    """weight_dropout, variational_dropout, zoneout (seeds drawn in Python: Dynamo cannot
    trace them; zoneout's compile ran past 5 minutes) and return_cell_states on triton (not
    in the kernels' custom ops) leave the graph: torch.compile runs the model with eager's
    numbers under the same seed, and fullgraph=True names the graph break."""
    fusedrnn.allow_compile()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = fusedrnn.LSTM(3, 4, backend=backend, device=DEVICE, **option)
            self.head = nn.Linear(4, 1, device=DEVICE)

        def forward(self, x):
            return self.head(self.rnn(torch.tanh(x))[0]).square().sum()

    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 2, 3, device=DEVICE)
    results = []
    for fn in (net, torch.compile(net)):
        torch._dynamo.reset()
        torch.manual_seed(1)
        results.append(_loss_grads(fn, x, net))
    for got, want in zip(*results):
        assert_close(got, want, 1e-6, str(option))
    if backend == "auto" and "return_cell_states" in option:
        return  # (the reference, compiled in the graph)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="_forward_outside_the_graph"):
        torch.compile(net, fullgraph=True)(x)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_opcheck_native_rnn_op(mode):
    """fusedrnn::native_rnn: schema, fake shapes and strides, autograd registration, padded
    (batch-first, two layers, both directions) and packed input."""
    from fusedrnn import native_ops

    torch.manual_seed(0)
    kw = dict(dtype=torch.float64, requires_grad=True)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(mode, nn.RNN)
    extra = {"nonlinearity": mode[4:]} if mode.startswith("rnn") else {}
    if mode == "lstm":
        extra["proj_size"] = 2
    m = cls(3, 4, num_layers=2, bidirectional=True, **extra).double()
    K = 2 if mode == "lstm" else 4
    weights = [w.detach().requires_grad_() for w in m._flat_weights]
    hx = [torch.randn(4, 3, K, **kw)] + ([torch.randn(4, 3, 4, **kw)] if mode == "lstm" else [])
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]))
    for x, batch_sizes, batch_first in ((torch.randn(3, 5, 3, **kw), None, True),
                                        (packed.data.double().requires_grad_(),
                                         packed.batch_sizes, False)):
        torch.library.opcheck(native_ops.native_rnn, (x, batch_sizes, hx, weights, mode, True,
                                                      2, 0.0, True, True, batch_first))


def _op_args(cell, dtype=torch.float64, lengths=True, proj=False, requires_grad=True,
             sizes=(3, 2, 4, 5)):
    kw = dict(dtype=dtype, device=DEVICE, requires_grad=requires_grad)
    T, B, I, H = sizes
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    K = H - 2 if proj else H
    x = torch.randn(T, B, I, **kw)
    w = dict(w_ih=torch.randn(G * H, I, **kw), w_hh=torch.randn(G * H, K, **kw),
             b_ih=torch.randn(G * H, **kw), b_hh=torch.randn(G * H, **kw))
    lens = torch.tensor([T] + [T - 1] * (B - 1), device=DEVICE) if lengths else None
    if cell == "lstm":
        w_hr = torch.randn(K, H, **kw) if proj else None
        return (x, torch.randn(B, K, **kw), torch.randn(B, H, **kw), *w.values(), w_hr, lens)
    return (x, torch.randn(B, H, **kw), *w.values(), lens)


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_lstm_op(reverse, proj):
    torch.library.opcheck(ops.lstm_layer, (*_op_args("lstm", proj=proj), reverse, True))
    # save=False is the inference variant: nothing kept, so no backward to check
    torch.library.opcheck(ops.lstm_layer, (*_op_args("lstm", proj=proj, requires_grad=False),
                                           reverse, False))


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_gru_op(reverse):
    torch.library.opcheck(ops.gru_layer, (*_op_args("gru"), reverse, True))
    torch.library.opcheck(ops.gru_layer, (*_op_args("gru", lengths=False, requires_grad=False),
                                          reverse, False))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_rnn_op(reverse, nonlinearity):
    torch.library.opcheck(ops.rnn_layer, (*_op_args("rnn"), reverse, nonlinearity, True))
    torch.library.opcheck(ops.rnn_layer, (*_op_args("rnn", lengths=False, requires_grad=False),
                                          reverse, nonlinearity, False))


# ----------------------------------------------------------------------------------------
# derivatives: gradcheck through the kernels, gradgradcheck through the reference fallback
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_and_gradgradcheck(cell):
    fn = {"lstm": functional.lstm_layer, "gru": functional.gru_layer,
          "rnn": functional.rnn_layer}[cell]
    args = _op_args(cell, proj=cell == "lstm", sizes=(2, 2, 2, 3))  # small: numerical Jacobians

    def layer(*a):
        return fn(*a, reverse=True, backend="triton")

    # fast mode: the Jacobians projected on random vectors, a few evaluations where the
    # full ones took one per input element (51 s of the suite's interpreter time). Batched
    # gradients (the kernels' backward given them runs the reference) and forward-mode AD
    # (the layer runs the reference), as torch's own op passes on the CPU.
    assert torch.autograd.gradcheck(layer, args, fast_mode=True, check_batched_grad=True,
                                    check_forward_ad=True, check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(layer, args, fast_mode=True, check_batched_grad=True)


def test_gradient_penalty_through_module():
    """create_graph=True through a drop-in: the double backward of a gradient penalty."""
    m = fusedrnn.LSTM(3, 4, backend="triton", dtype=torch.float64, device=DEVICE)
    # cuDNN's RNN backward is not differentiable: compare with fusedrnn's reference
    ref = fusedrnn.LSTM(3, 4, backend="reference", dtype=torch.float64, device=DEVICE)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE)
    results = []
    for mod in (m, ref):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(mod(xi)[0].sum(), xi, create_graph=True)
        penalty = g.square().sum()
        results.append(torch.autograd.grad(penalty, list(mod.parameters())))
    for a, b in zip(*results):
        assert_close(a, b, 1e-10, "second derivative")


@pytest.mark.parametrize("cls,kw", [(fusedrnn.LSTM, dict(proj_size=2, bidirectional=True)),
                                    (fusedrnn.GRU, dict(num_layers=2, bidirectional=True)),
                                    (fusedrnn.RNN, dict(nonlinearity="relu"))])
def test_torch_func_grad_through_module(cls, kw):
    """torch.func's transforms (grad, and grad of grad: meta-learning, per-parameter
    curvature) through a drop-in on backend="triton", as through torch.nn's modules (under
    a transform the layers run the reference: backend.transformed). Against autograd.grad
    on the reference backend, fp64."""
    m = cls(3, 4, backend="triton", dtype=torch.float64, device=DEVICE, **kw)
    ref = cls(3, 4, backend="reference", dtype=torch.float64, device=DEVICE, **kw)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=DEVICE)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p):
        return torch.func.functional_call(m, p, (x,))[0].square().sum()

    got = torch.func.grad(loss)(params)
    want = torch.autograd.grad(ref(x)[0].square().sum(), list(ref.parameters()))
    for (k, g), w in zip(got.items(), want):
        assert_close(g, w, 1e-10, k)
    name = next(iter(params))
    twice = torch.func.grad(lambda p: torch.func.grad(loss)(p)[name].sum())(params)
    p_ref = {k: v.detach().requires_grad_() for k, v in params.items()}
    (g,) = torch.autograd.grad(torch.func.functional_call(ref, p_ref, (x,))[0].square().sum(),
                               p_ref[name], create_graph=True)
    want = torch.autograd.grad(g.sum(), list(p_ref.values()), allow_unused=True)
    for (k, a), b in zip(twice.items(), want):
        assert_close(a, torch.zeros_like(a) if b is None else b, 1e-10, f"{k}, second")


def _first_output(m):
    """The module's output tensor as a function of its input (a cell's h)."""
    def f(x):
        y = m(x)
        return y if isinstance(y, torch.Tensor) else y[0]
    return f


@pytest.mark.parametrize("backend", ["triton", "auto"])
@pytest.mark.parametrize("cls,kw", [(fusedrnn.LSTM, dict(proj_size=2, bidirectional=True)),
                                    (fusedrnn.GRU, dict(num_layers=2)),
                                    (fusedrnn.RNN, dict(nonlinearity="relu")),
                                    (fusedrnn.LSTMCell, {}), (fusedrnn.GRUCell, {})])
def test_vmap_jvp_forward_ad_and_batched_gradients(cls, kw, backend):
    """vmap (batched inputs, per-sample gradients), jvp / jacfwd and forward-mode AD through a
    drop-in: under them the layers run the reference (backend.transformed), where the kernels
    cannot take batched or dual tensors, torch's RNN ops have no batching rule and cuDNN no
    forward derivative; and a backward given batched gradients (``is_grads_batched``:
    ``jacobian(vectorize=True)``) runs through the reference. Each against the drop-in
    outside the transform (the kernels where ``backend`` runs them): a loop over the mapped
    dimension, central differences (fp64)."""
    torch.manual_seed(0)
    m = cls(3, 4, backend=backend, dtype=torch.float64, device=DEVICE, **kw)
    f = _first_output(m)
    cell = cls in (fusedrnn.LSTMCell, fusedrnn.GRUCell)
    shape = (2, 3) if cell else (5, 2, 3)
    x, v = (torch.randn(shape, dtype=torch.float64, device=DEVICE) for _ in range(2))
    xs = torch.randn(3, *shape, dtype=torch.float64, device=DEVICE)

    assert_close(torch.func.vmap(f)(xs), torch.stack([f(xi) for xi in xs]), 1e-12, "vmap")

    params = {k: p.detach() for k, p in m.named_parameters()}

    def loss(p, xi):
        return _first_output(lambda a: torch.func.functional_call(m, p, (a,)))(xi).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i, xi in enumerate(xs):
        want = torch.autograd.grad(f(xi).square().sum(), list(m.parameters()))
        for (k, g), w in zip(per_sample.items(), want):
            assert_close(g[i], w, 1e-10, f"per-sample gradient of {k}")

    eps = 1e-6
    diff = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    _, tangent = torch.func.jvp(f, (x,), (v,))
    assert_close(tangent, diff, 1e-6, "jvp")
    with torch.autograd.forward_ad.dual_level():
        dual = f(torch.autograd.forward_ad.make_dual(x, v))
        assert_close(torch.autograd.forward_ad.unpack_dual(dual).tangent, tangent, 1e-12,
                     "forward-mode AD")
    jac = torch.func.jacfwd(f)(x)
    assert_close((jac * v).flatten(-x.dim()).sum(-1), tangent, 1e-12, "jacfwd")

    if backend == "auto" and DEVICE == "cuda":
        return  # (auto is cuDNN's op outside the transforms: batched gradients are torch's)
    xg = x.clone().requires_grad_()
    out = f(xg)
    cotangents = torch.randn(3, *out.shape, dtype=torch.float64, device=DEVICE)
    (batched,) = torch.autograd.grad(out, xg, cotangents, retain_graph=True,
                                     is_grads_batched=True)
    for i, cot in enumerate(cotangents):
        (want,) = torch.autograd.grad(out, xg, cot, retain_graph=True)
        assert_close(batched[i], want, 1e-10, "is_grads_batched")


@needs_gpu
def test_torch_func_grad_in_eval_mode_on_cuda_under_auto():
    """Under torch.func.grad "auto" runs cuDNN's op (it serves one grad, faster than the
    reference the kernels' backward would run), except in eval mode, where cuDNN refuses
    the backward: there the reference."""
    m = fusedrnn.GRU(3, 4, dtype=torch.float64, device="cuda").eval()
    ref = fusedrnn.GRU(3, 4, backend="reference", dtype=torch.float64, device="cuda")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, device="cuda")
    params = {k: v.detach() for k, v in m.named_parameters()}
    got = torch.func.grad(lambda p: torch.func.functional_call(m, p, (x,))[0].sum())(params)
    want = torch.autograd.grad(ref(x)[0].sum(), list(ref.parameters()))
    for (k, g), w in zip(got.items(), want):
        assert_close(g, w, 1e-10, k)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_backward_in_eval_mode(backend):
    """cuDNN refuses RNN backward in eval mode (PyTorch issues 37965, 15788); ours runs."""
    m = fusedrnn.GRU(3, 4, num_layers=2, backend=backend, device=DEVICE)
    x = torch.randn(5, 2, 3, device=DEVICE)
    train = _grads(m, x)
    m.eval()
    for got, want in zip(_grads(m, x), train):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kernel_mode_name", ["step", "sequence"])
def test_bitwise_deterministic(kernel_mode_name, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_KERNEL", kernel_mode_name)
    m = fusedrnn.LSTM(5, 20, num_layers=2, bidirectional=True, proj_size=7, backend="triton",
                      device=DEVICE)
    x = torch.randn(6, 40, 5, device=DEVICE)
    first, second = _grads(m, x), _grads(m, x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# autocast
# ----------------------------------------------------------------------------------------
def _torch_under_autocast(ref, x, dtype):
    """What torch's own module computes for x under autocast in ``dtype``.

    Where torch's CPU LSTM cannot run under autocast on this host (oneDNN has no
    low-precision LSTM primitive on x86 CPUs without AVX-512), the answer is what torch's
    autocast-cast op would compute: the module and input in ``dtype``, autocast off."""
    if (x.device.type == "cpu" and isinstance(ref, nn.LSTM)
            and not fusedrnn.backend.native_cpu_autocast_lstm_runs(dtype)):
        warnings.warn(f"torch's LSTM cannot run under CPU autocast ({dtype}) on this CPU: "
                      f"comparing with torch's LSTM cast to {dtype} instead")
        return copy.deepcopy(ref).to(dtype)(x.to(dtype))
    with torch.autocast(x.device.type, dtype=dtype):
        return ref(x)


@pytest.mark.parametrize("backend", ["reference", "triton", "auto"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_dtypes_match_torch(mode, backend):
    ref = getattr(nn, mode)(4, 8, device=DEVICE)
    ours = getattr(fusedrnn, mode)(4, 8, backend=backend, device=DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, device=DEVICE) if mode in ("LSTM", "GRU", "RNN") else \
        torch.randn(3, 4, device=DEVICE)
    want = _torch_under_autocast(ref, x, torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        got = ours(x)
    flat = lambda o: [o] if torch.is_tensor(o) else [t for p in o for t in flat(p)]  # noqa
    for a, b in zip(flat(got), flat(want)):
        assert a.dtype == b.dtype
        assert_close(a.float(), b.float(), 3e-2, mode)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["GRU", "GRUCell", "LSTMCell", "RNN"])
def test_autocast_takes_torchs_dtype_mixes(mode, backend):
    """Under autocast torch's modules take input and state in any mix of float32 and the
    autocast dtype (on the CPU the GRU, GRUCell and LSTMCell are uncast and keep the
    state in hx's dtype; the others are cast): so do ours, with torch's output dtypes and
    numbers. (A torchaudio WaveRNN under CPU autocast raised on ours: bf16 input, fp32 hx.)"""
    ref = getattr(nn, mode)(4, 8, device=DEVICE)
    ours = getattr(fusedrnn, mode)(4, 8, backend=backend, device=DEVICE)
    ours.load_state_dict(ref.state_dict())
    cell = mode.endswith("Cell")
    x = torch.randn(3, 4, device=DEVICE) if cell else torch.randn(5, 3, 4, device=DEVICE)
    h = torch.randn(3, 8, device=DEVICE) if cell else torch.randn(1, 3, 8, device=DEVICE)
    flat = lambda o: [o] if torch.is_tensor(o) else [t for p in o for t in flat(p)]  # noqa
    for dx, dh in [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                   (torch.bfloat16, torch.bfloat16)]:
        hx = (h.to(dh), h.to(dh)) if mode == "LSTMCell" else h.to(dh)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            want, got = ref(x.to(dx), hx), ours(x.to(dx), hx)
        for a, b in zip(flat(got), flat(want)):
            assert a.dtype == b.dtype, (dx, dh)
            assert_close(a.float(), b.float(), 3e-2, mode)


def test_cuda_autocast_runs_full_modules_in_float16(monkeypatch):
    """torch's CUDA autocast wrapper of the cuDNN RNN casts to float16 whatever the autocast
    dtype (aten/src/ATen/cudnn/AutocastRNN.cpp): under bf16 autocast nn.LSTM/GRU/RNN give
    float16, the cells bf16. The drop-ins follow (a mismatch found on an H200); checked here
    without a GPU through the rule itself, and against torch by the test above on one."""
    from fusedrnn import modules

    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device="cuda": device == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: torch.bfloat16)
    for mode in ("LSTM", "GRU", "RNN"):
        assert modules._autocast_dtype(getattr(fusedrnn, mode)(4, 8), "cuda") == torch.float16
    for mode in ("LSTMCell", "GRUCell", "RNNCell"):
        assert modules._autocast_dtype(getattr(fusedrnn, mode)(4, 8), "cuda") == torch.bfloat16


@pytest.mark.parametrize("mode", ["LSTM", "RNN", "RNNCell"])
def test_autocast_leaves_float64_modules_in_float64(mode):
    """torch's autocast casts only eligible tensors (floating, not float64)."""
    ref = getattr(nn, mode)(3, 4, dtype=torch.float64)
    ours = getattr(fusedrnn, mode)(3, 4, dtype=torch.float64, backend="reference")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64) if mode != "RNNCell" else \
        torch.randn(2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = ref(x), ours(x)
    want, got = (want[0], got[0]) if mode != "RNNCell" else (want, got)
    assert got.dtype == want.dtype == torch.float64
    assert_close(got, want, 1e-10, mode)


def test_auto_avoids_native_lstm_where_cpu_autocast_cannot_run(monkeypatch):
    """On a CPU whose oneDNN has no bf16 LSTM, "auto" runs the reference under CPU autocast
    (torch's module raises there); elsewhere it stays native."""
    x = torch.randn(5, 3, 4)
    monkeypatch.setattr(fusedrnn.backend, "native_cpu_autocast_lstm_runs", lambda dt: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fusedrnn.backend.resolve("auto", x.device, x.dtype, autocast_lstm=True) \
            == "reference"
        assert fusedrnn.backend.resolve("auto", x.device, x.dtype) == "native"  # GRU: fp32
        assert fusedrnn.backend.resolve("native", x.device, x.dtype, autocast_lstm=True) \
            == "native"  # asked for explicitly: torch's behaviour, torch's error
    assert fusedrnn.backend.resolve("auto", x.device, x.dtype, autocast_lstm=True) == "native"
    monkeypatch.setattr(fusedrnn.backend, "native_cpu_autocast_lstm_runs", lambda dt: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fusedrnn.backend.resolve("auto", x.device, x.dtype, autocast_lstm=True) \
            == "native"


_AVX2_SCRIPT = """
import torch, fusedrnn
from fusedrnn.backend import native_cpu_autocast_lstm_runs
ours = fusedrnn.LSTM(4, 8)
ref = torch.nn.LSTM(4, 8).to(torch.bfloat16)
ref.load_state_dict(ours.state_dict())  # what torch's autocast-cast op computes with
x = torch.randn(5, 3, 4)
with torch.autocast("cpu", dtype=torch.bfloat16):
    out, (h, c) = ours(x)
err = ((out.float() - ref(x.bfloat16())[0].float()).norm() / out.float().norm()).item()
assert out.dtype == torch.bfloat16 and err < 3e-2, (out.dtype, err)
print("native_runs", native_cpu_autocast_lstm_runs(torch.bfloat16), "err", err)
"""


def test_default_lstm_under_cpu_autocast_on_an_avx2_only_cpu():
    """The AVX2-only host of issue 10, emulated: ONEDNN_MAX_CPU_ISA=AVX2 caps oneDNN at
    AVX2 (it must be set before torch starts, hence a subprocess). A default drop-in LSTM
    still runs under CPU bf16 autocast there, with torch's numbers."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    print(run.stdout)


# ----------------------------------------------------------------------------------------
# DistributedDataParallel and FSDP2 (fully_shard): two CPU processes with gloo vs one
# process on the whole batch
# ----------------------------------------------------------------------------------------
def _dist_worker(rank, world, init_file, state, x, out_dir, wrap):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 4, num_layers=2, backend="reference")
    m.load_state_dict(state)
    if wrap == "ddp":
        run = nn.parallel.DistributedDataParallel(m)
    else:  # FSDP2: the parameters become DTensors sharded over the ranks
        from torch.distributed.fsdp import fully_shard
        run = fully_shard(m)
    shard = x.chunk(world, dim=1)[rank]
    run(shard)[0].square().mean().backward()
    # (full_tensor is a collective: every rank gathers FSDP's sharded gradients)
    grads = [p.grad.full_tensor() if wrap == "fsdp2" else p.grad for p in m.parameters()]
    if rank == 0:
        torch.save(grads, os.path.join(out_dir, "grads.pt"))
    dist.barrier()  # nobody leaves while a peer still has work in flight
    # Tearing gloo down (destroy_process_group, or the interpreter's exit) while the peer
    # closes its sockets aborted a worker once in a loaded full run ("terminate called
    # without an active exception", SIGABRT). So the workers meet on files after their last
    # collective, then leave without the C++ teardown; their results are already on disk.
    open(os.path.join(out_dir, f"done{rank}"), "w").close()
    deadline = time.time() + 60
    while time.time() < deadline and not all(
            os.path.exists(os.path.join(out_dir, f"done{r}")) for r in range(world)):
        time.sleep(0.01)
    os._exit(0)


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
def test_distributed_gradients_equal_single_process(tmp_path, wrap):
    """DistributedDataParallel, and FSDP2's fully_shard (whose forward sets the gathered
    parameters on the module: the drop-in reads its weights afresh each call, as torch's)."""
    m = fusedrnn.LSTM(3, 4, num_layers=2, backend="reference")
    x = torch.randn(5, 4, 3)
    m(x)[0].square().mean().backward()
    mp.spawn(_dist_worker,
             args=(2, str(tmp_path / "rdzv"), m.state_dict(), x, str(tmp_path), wrap),
             nprocs=2, join=True)
    for got, want in zip(torch.load(tmp_path / "grads.pt"), [p.grad for p in m.parameters()]):
        assert_close(got, want, 1e-6, f"{wrap} grad")


# ----------------------------------------------------------------------------------------
# CUDA graphs (GPU only)
# ----------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_cuda_graph_training_step_matches_eager(mode):
    m = getattr(fusedrnn, mode)(16, 32, backend="triton", device="cuda")
    static_x = torch.randn(8, 4, 16, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: compile the kernels outside the capture
        for _ in range(2):
            m.zero_grad(set_to_none=True)
            m(static_x)[0].sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    m.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        static_out = m(static_x)[0]
        static_out.sum().backward()
    x = torch.randn_like(static_x)
    static_x.copy_(x)
    g.replay()
    graph_grads = [p.grad.clone() for p in m.parameters()]
    eager_out = m(x)[0]
    eager_grads = torch.autograd.grad(eager_out.sum(), list(m.parameters()))
    assert_close(static_out, eager_out, 1e-6, "out")
    for a, b in zip(graph_grads, eager_grads):
        assert_close(a, b, 1e-5, "grad")


@needs_gpu
def test_compiled_native_op_under_cuda_graphs_matches_eager():
    """torch.compile(mode="reduce-overhead") (Inductor, CUDA graphs) of stacks on
    backend="native": fusedrnn::native_rnn runs cuDNN inside the op, and its backward op
    recomputes the forward under autograd inside the capture (native_ops). Loss and every
    gradient equal eager's on fresh inputs, call after call (the first calls record)."""
    fusedrnn.allow_compile()
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _Stacks("native").cuda()
    compiled = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    for call in range(4):
        x = torch.randn(2, 5, 3, device="cuda")
        got = [t.clone() for t in _loss_grads(compiled, x, net)]
        want = _loss_grads(net, x, net)
        for g, w in zip(got, want):  # (cuDNN: TF32 products, the same op both ways)
            assert_close(g, w, 1e-4, f"call {call}")
