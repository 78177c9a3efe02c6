import os

import torch

# The Triton kernels run on CPU tensors through Triton's interpreter when no GPU is present.
# The variable must be set before triton decorates any kernel, so before fusedrnn.kernels
# is imported by any test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    # (a third of the interpreted kernels' time went to re-patching triton.language at
    # every helper call: tests/interpreter_patch_once.py)
    import interpreter_patch_once  # noqa: E402

    interpreter_patch_once.install()

# FUSEDRNN_BACKEND would change what "auto" means under the tests' feet
os.environ.pop("FUSEDRNN_BACKEND", None)


def pytest_runtest_logreport(report):
    """With FUSEDRNN_TEST_FAILURES=FILE, each failure's traceback is appended to FILE as it
    happens (in the controller under xdist): a GPU call cut by its time limit before
    pytest's summary still brings back why each test failed."""
    path = os.environ.get("FUSEDRNN_TEST_FAILURES")
    if path and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(path, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n")


# ----------------------------------------------------------------------------------------
# fixtures for the kernel tests
# ----------------------------------------------------------------------------------------
import collections  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def exact_fp32_on_gpu():
    """On a GPU torch's default (cudnn.allow_tf32) runs fp32 on TF32 tensor cores, in
    cuDNN and in fusedrnn alike (relative error ~1e-3); the tests hold fp32 to exact 1e-5
    (GUIDE section 4), so they turn TF32 off. tests/test_precision.py sets the flags itself
    and checks the TF32 path."""
    if not torch.cuda.is_available():
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def poison(monkeypatch):
    """Every buffer the launchers allocate starts as NaN, so an unwritten element fails."""
    from fusedrnn.kernels import common, gru, lstm, rnn, splitk

    real = common.empty

    def nan_empty(*shape, dtype, device):
        return real(*shape, dtype=dtype, device=device).fill_(float("nan"))

    for mod in (common, gru, lstm, rnn, splitk):
        monkeypatch.setattr(mod, "empty", nan_empty)


class _CountingKernel:
    def __init__(self, kernel, name, counts):
        self.kernel, self.name, self.counts = kernel, name, counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] += 1
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def launches(monkeypatch):
    """Counter of Triton kernel launches by kernel name during the test."""
    from fusedrnn.kernels import gru, lstm, rnn, splitk, stationary

    counts = collections.Counter()
    for mod in (gru, lstm, rnn, splitk, stationary):
        for name in dir(mod):
            if name.endswith("_kernel") and hasattr(getattr(mod, name), "arg_names"):
                monkeypatch.setattr(mod, name, _CountingKernel(getattr(mod, name), name, counts))
    return counts


@pytest.fixture(params=["step", "sequence", "stationary"])
def kernel_mode(request, monkeypatch):
    """Runs the test once with each kind of recurrent kernel: step, streaming sequence, and
    weight-stationary sequence (forced: under the interpreter it is one program, which
    keeps W resident where the layer is one tile and loops over the tiles otherwise)."""
    from fusedrnn.kernels.plan import KERNEL_ENV

    monkeypatch.setenv(KERNEL_ENV, request.param)
    return request.param
