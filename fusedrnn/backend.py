"""Which implementation runs a call: the backend rules of GUIDE section 1.

- ``"triton"``: the fused kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
- ``"reference"``: fusedrnn's pure-PyTorch math (:mod:`fusedrnn.reference`).
- ``"native"``: torch's own op (cuDNN on GPU, oneDNN on CPU).
- ``"auto"``: triton where it is supported, otherwise native, so converting a model never
  breaks it or makes it slower. Under torch.compile, where it would pick native, a whole
  stack runs torch's op inside one custom op (:mod:`fusedrnn.native_ops`; torch's RNN ops
  do not compile themselves), a layer or cell op and torch.export the reference.
  ``FUSEDRNN_BACKEND`` overrides ``"auto"`` (only ``"auto"``).

Under ``torch.jit.trace`` and ONNX export (both exporters) every backend runs torch's own
op (:func:`exporting`): the recorded graph then holds aten::lstm / gru / rnn_tanh /
rnn_relu (and the cell ops), which the exporters translate to ONNX LSTM / GRU / RNN and
which stay valid for any sequence length, where a trace of the reference's Python loop
would be unrolled for one length and a trace of the kernels cannot be recorded at all.

Under torch.func's transforms (grad, vjp, jvp, vmap, jacrev, jacfwd, hessian), forward-mode
AD and a FakeTensorMode (:func:`transformed`) the kernels cannot run (they take plain
tensors only, no batched, dual or fake tensors): ``"triton"`` runs the reference, plain
tensor code that every transform goes through, and ``"auto"`` torch's own op where it
serves the transform, else the reference (:func:`native_cannot_serve`: vmap, whose RNN
ops have no batching rule, and on CUDA forward-mode AD, a grad of a grad, fake tensors).

Asking for ``"triton"`` where it cannot run raises; it never falls back silently.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "reference", "native")
ENV_VAR = "FUSEDRNN_BACKEND"
# dtypes the kernels are built and tested for; "auto" only picks triton for these on CUDA
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AUTO_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Looked up once, at import: torch.compile traces the backend's choice, and the dynamo of
# torch 2.11 (the GPU machines') refuses to trace importlib.util.find_spec
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def check_backend_name(backend: str, what: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {backend!r}")
    return backend


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the Triton kernels cannot run on tensors of this device and dtype, or None."""
    if not TRITON_INSTALLED:
        return "the triton package is not installed"
    if device.type == "cpu" and not interpreting():
        return ("the tensors are on the CPU; the Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1 to run them on CPU through Triton's interpreter)")
    if device.type not in ("cuda", "cpu"):
        return f"the tensors are on a {device.type} device; the Triton kernels need CUDA tensors"
    if dtype.is_floating_point and dtype not in TRITON_DTYPES:
        # (non-float input is left to the modules' own checks, which raise as torch's do)
        return f"dtype {dtype} is not supported (expected one of {TRITON_DTYPES})"
    return None


@functools.lru_cache(maxsize=None)
def native_cpu_autocast_lstm_runs(dtype: torch.dtype) -> bool:
    """Whether torch's own LSTM runs under CPU autocast in ``dtype`` on this host.

    Under CPU autocast torch's LSTM goes to a oneDNN primitive that needs CPU support for
    the low-precision dtype: on x86 CPUs without AVX-512 (AVX2 only) creating it fails with
    "could not create a primitive descriptor for the LSTM forward propagation primitive".
    One tiny forward, once per process and dtype, tells."""
    m = torch.nn.LSTM(1, 1)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            m(torch.zeros(1, 1, 1))
    except RuntimeError:
        return False
    return True


def cpu_autocast_fallback(device: torch.device) -> bool:
    """True where ``"auto"`` must not pick the native LSTM: under CPU autocast on a CPU
    whose oneDNN has no primitive for the autocast dtype. The reference runs instead, so a
    converted model works on every CPU (torch's own module raises there)."""
    return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and not native_cpu_autocast_lstm_runs(torch.get_autocast_dtype("cpu")))


def compiled_native() -> bool:
    """Whether a stack under torch.compile can run torch's op inside fusedrnn.native_ops'
    custom op: compiling, not exporting, and the op available."""
    if not torch.compiler.is_compiling():
        return False
    from fusedrnn import native_ops
    return not _exporting_program() and native_ops.AVAILABLE


def _exporting_program() -> bool:
    """Whether torch.export is tracing. The flag itself where torch has it: the dynamo of
    torch 2.11 (the GPU machines') folds torch.compiler.is_exporting() to True under every
    torch.compile, where the flag torch.export sets stays False."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if flag is not None:
        return bool(flag)
    return getattr(torch.compiler, "is_exporting", lambda: False)()


def exporting() -> bool:
    """True while torch.jit.trace records or an ONNX exporter runs (see module doc)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def transformed(*tensors) -> bool:
    """True where the layers see tensors the kernels cannot take, and run the reference (see
    the module doc): under a torch.func transform, inside a forward-mode AD level
    (``torch.autograd.forward_ad.dual_level``), under a FakeTensorMode (shape and memory
    estimates), or where one of ``tensors`` is batched by autograd's own vmap (the
    gradients a backward gets under ``is_grads_batched=True`` and
    ``torch.autograd.functional.jacobian(vectorize=True)``). Never under torch.compile and
    torch.export, which trace the custom ops instead."""
    if torch.compiler.is_compiling():
        return False
    legacy = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return bool(torch._C._are_functorch_transforms_active()) or _dual_level() or _faking() \
        or (legacy is not None and any(t is not None and legacy(t) for t in tensors))


def _dual_level() -> bool:
    """Inside ``torch.autograd.forward_ad.dual_level``."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def _faking() -> bool:
    """Under a FakeTensorMode."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def _transform_levels() -> list[str]:
    """The torch.func transforms around this call, outermost first ("Grad", "Jvp", "Vmap",
    "Functionalize"); ["Vmap"] where the interpreter stack cannot be read (the most
    restrictive)."""
    if not torch._C._are_functorch_transforms_active():
        return []
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
        return [i.key().name for i in retrieve_all_functorch_interpreters()]
    except (ImportError, AttributeError):
        return ["Vmap"]


def native_cannot_serve(device: torch.device) -> bool:
    """Where :func:`transformed` holds, whether torch's own op cannot serve the call either:
    under vmap (its RNN ops have no batching rule), and on CUDA under forward-mode AD (cuDNN's
    op and the fused cell ops have no forward derivative), a grad of a grad (cuDNN's
    backward is not differentiable) or a FakeTensorMode. Then "auto" runs the reference,
    elsewhere torch's op (under torch.func.grad on CUDA, cuDNN: faster than the reference,
    which is what the kernels' backward would run there)."""
    levels = _transform_levels()
    if "Vmap" in levels:
        return True
    if device.type != "cuda":
        return False
    return "Jvp" in levels or levels.count("Grad") >= 2 or _dual_level() or _faking()


def chose_by_auto(backend: str) -> bool:
    """Whether "auto" made the choice: the module's "auto", not overridden by
    FUSEDRNN_BACKEND."""
    return backend == "auto" and os.environ.get(ENV_VAR, "") in ("", "auto")


def resolve(backend: str, device: torch.device, dtype: torch.dtype,
            autocast_lstm: bool = False, stack: bool = False) -> str:
    """The backend that will run: one of "triton", "reference", "native".

    autocast_lstm: the call is torch's full LSTM, the one RNN op CPU autocast casts, so
    "auto" avoids native where oneDNN cannot run it (:func:`cpu_autocast_fallback`).
    stack: the call is a whole multi-layer stack (the LSTM / GRU / RNN modules and
    fusedrnn.functional's lstm / gru / rnn), which under torch.compile runs torch's op inside
    a custom op (:mod:`fusedrnn.native_ops`) where "auto" would otherwise pick native."""
    check_backend_name(backend)
    if exporting():
        return "native"
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "")
        if env:
            backend = check_backend_name(env, what=f"the environment variable {ENV_VAR}")
    if backend == "auto":
        if transformed():  # (the kernels take no batched, dual or fake tensors)
            if native_cannot_serve(device):
                return "reference"
        elif (device.type == "cuda" and dtype in AUTO_TRITON_DTYPES
                and triton_unavailable_reason(device, dtype) is None):
            return "triton"
        # torch's own RNN ops do not compile (graph break, or an AOT autograd failure with
        # fullgraph=True): a stack runs them inside a custom op (one graph node whatever the
        # sequence length), a layer or cell the reference, plain tensor code; torch.export
        # records the reference's aten ops (an exported program that needs no fusedrnn).
        # Under CPU autocast the reference too, as before the op: whether oneDNN runs the
        # LSTM there is probed by running it, which cannot happen while Dynamo traces, and
        # the GRU's matmuls are autocast inside torch's op, which the op's compiled run did
        # not repeat (its numbers came out in float32)
        if torch.compiler.is_compiling():
            cpu_cast = device.type == "cpu" and torch.is_autocast_enabled("cpu")
            return "native" if stack and not cpu_cast and compiled_native() else "reference"
        if autocast_lstm and cpu_autocast_fallback(device):
            return "reference"
        return "native"
    if backend == "triton":
        reason = triton_unavailable_reason(device, dtype)
        if reason is not None:
            raise RuntimeError(f"fusedrnn: backend='triton' cannot run here: {reason}")
        if transformed():
            return "reference"
    return backend
