"""The backend rules: auto, the environment override, and triton's clear refusals."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedrnn
from fusedrnn import backend


def test_auto_on_cpu_is_native_and_costs_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.LSTM, "forward",
                        lambda self, *a: calls.append(1) or ("native", None))
    m = fusedrnn.LSTM(3, 4)
    assert m(torch.randn(2, 1, 3))[0] == "native" and calls == [1]


def test_resolve_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.resolve("auto", cpu, torch.float32) == "native"
    assert backend.resolve("reference", cpu, torch.float32) == "reference"
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    assert backend.resolve("auto", cpu, torch.float32) == "reference"
    assert backend.resolve("native", cpu, torch.float32) == "native"  # only overrides auto
    monkeypatch.setenv(backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=backend.ENV_VAR):
        backend.resolve("auto", cpu, torch.float32)


def test_transforms_run_the_reference_or_torchs_op(monkeypatch):
    """Under torch.func's transforms, forward-mode AD and a FakeTensorMode the kernels cannot
    run (no batched, dual or fake tensors): triton resolves to the reference; auto to
    torch's op where it serves the transform (on the CPU all but vmap; on CUDA a single
    grad), else the reference; native stays torch's op; a triton that cannot run still
    raises."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    seen = []

    def record(x):
        seen.append(tuple(backend.resolve(b, torch.device(d), torch.float32)
                          for d, b in (("cpu", "auto"), ("cpu", "triton"), ("cpu", "native"),
                                       ("cuda", "auto"))))
        return x

    def grad(f):
        return lambda x: torch.func.grad(lambda y: f(y).sum())(x)

    with torch.autograd.forward_ad.dual_level():
        record(torch.zeros(1))
    with FakeTensorMode():
        record(torch.zeros(1))
    for transform in (torch.func.vmap, grad, lambda f: grad(grad(f)),
                      lambda f: lambda x: torch.func.jvp(f, (x,), (x,))[1]):
        transform(record)(torch.zeros(2, 1))
    ref, native = "reference", "native"
    assert seen == [(native, ref, native, ref),  # dual level
                    (native, ref, native, ref),  # fake tensors
                    (ref, ref, native, ref),  # vmap
                    (native, ref, native, native),  # grad
                    (native, ref, native, ref),  # grad of grad
                    (native, ref, native, ref)]  # jvp
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here"):
        torch.func.vmap(lambda x: backend.resolve("triton", torch.device("cpu"),
                                                  torch.float32) and x)(torch.zeros(2, 1))


def test_fake_tensors_get_the_shapes_of_a_triton_module(monkeypatch):
    """Shape and memory estimates under a FakeTensorMode run through a drop-in on backend=
    "triton" (the reference's ops, no kernel), as through torch.nn's modules."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with FakeTensorMode():
        m = fusedrnn.LSTM(3, 4, proj_size=2, num_layers=2, bidirectional=True,
                          batch_first=True, backend="triton")
        out, (h, c) = m(torch.randn(5, 7, 3))
    assert (out.shape, h.shape, c.shape) == ((5, 7, 4), (4, 5, 2), (4, 5, 4))


def test_env_override_reaches_modules(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    m = fusedrnn.GRU(3, 4)
    monkeypatch.setattr(torch.nn.GRU, "forward", lambda *a: pytest.fail("native ran"))
    out, h = m(torch.randn(2, 1, 3))
    assert out.shape == (2, 1, 4)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    m = fusedrnn.LSTM(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here.*CUDA"):
        m(torch.randn(2, 1, 3))


def test_triton_unsupported_dtype_is_a_clear_error():
    with pytest.raises(RuntimeError, match="dtype"):
        backend.resolve("triton", torch.device("cpu"), torch.float8_e4m3fn)


def test_functional_layer_rejects_native():
    x = torch.randn(2, 1, 3)
    with pytest.raises(ValueError, match="native"):
        fusedrnn.functional.gru_layer(x, torch.zeros(1, 4), torch.randn(12, 3),
                                      torch.randn(12, 4), backend="native")
