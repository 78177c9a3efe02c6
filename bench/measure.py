"""One configuration: build each implementation on the same weights and inputs, check it
against the baseline, then time it. A configuration that fails its check is not timed."""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch
from torch import nn

import fusedrnn
from bench.configs import DTYPES, Config
from fusedrnn.kernels.plan import KERNEL_ENV

# ||impl - baseline|| / ||baseline|| allowed, by dtype: two implementations of the same
# low-precision recurrence drift apart over T steps, and cuDNN may use TF32 for fp32
CHECK_TOL = {"fp32": 5e-3, "bf16": 5e-2, "fp16": 5e-2}
L2_BYTES = 64 * 2 ** 20  # inputs rotate through copies until they exceed this (H100: 50 MB)


# fusedrnn implementations: the Triton backend with the kernel rule (fused), or forced to
# the step kernels or the sequence (persistent) kernels; value: FUSEDRNN_KERNEL.
# fused-resets: the kernel rule with resets passed, none set (the same numbers as cuDNN):
# what the in-kernel restart machinery costs
KERNEL_VARIANTS = {"fused": "auto", "fused-step": "step", "fused-seq": "sequence",
                   "fused-stationary": "stationary", "fused-resets": "auto",
                   "fused-splitk": "splitk", "fused-ll": "ll", "fused-red": "red",
                   "fused-narrow": "narrow", "fused-stream32": "stream32",
                   "triton-interp": "auto", "triton-interp-step": "step"}
# variants timed only where their plan is not one an earlier row of the configuration ran
# (fused-splitk: the backward split over K where the plan's own backward is another; where
# it is the plan's, or in inference, it would time fused again; fused-ll: the forward's h
# exchanged as LL words, kernels/ll.py, where the forward is weight-stationary; fused-red:
# the barriers arriving with a red.release, where a pass is weight-stationary;
# fused-narrow: 16-bit LSTM/GRU on the narrow 16-unit tiles, where they are resident and
# the plan's own tiles are others; fused-stationary: where fused is weight-stationary
# already; fused-stream32: the streaming kernels' 32-unit tiles and 64-deep chunks, where a
# pass streams on narrower ones, plan.stream_blocks): status "same", same_as
ONLY_IF_DIFFERENT = ("fused-splitk", "fused-ll", "fused-red", "fused-narrow",
                     "fused-stationary", "fused-stream32")


def plan_of(m, impl, x) -> dict:
    """The plan (fusedrnn.explain) of layer 0, forward direction, as the row records it
    (a streaming pass's tiles too: plan.stream_blocks)."""
    with _kernel_variant(impl):
        p = fusedrnn.explain(m, x)[0]
    keys = ("kernel", "programs", "weights_on_chip", "reason", "U", "BB", "split", "ksplit",
            "warps", "ll", "red", "BLOCK_B", "BLOCK_H", "BLOCK_K", "stages")
    return {**{k: p[k] for k in keys if k in p},
            "backward": {k: p["backward"][k] for k in keys if k in p["backward"]}}


def _launches(plan: dict | None, mode: str):
    """What a recorded plan launches (all but its reasons): the forward, and in training
    the backward too."""
    if plan is None:
        return None
    fwd = {k: v for k, v in plan.items() if k not in ("reason", "backward")}
    if mode != "training":
        return fwd
    return fwd, {k: v for k, v in plan["backward"].items() if k != "reason"}


def make_module(cfg: Config, impl: str, device, state=None):
    """The module behind an implementation name; all share `state` (the same weights)."""
    kw = dict(num_layers=cfg.layers, bidirectional=cfg.bidirectional, device=device,
              dtype=DTYPES[cfg.dtype], **({"proj_size": cfg.proj} if cfg.proj else {}))
    cls = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cfg.cell]
    if impl in ("cudnn", "torch.nn", "native-nocudnn"):
        m = getattr(nn, cls)(cfg.I, cfg.H, **kw)
    else:
        backend = "triton" if impl in KERNEL_VARIANTS else impl
        m = getattr(fusedrnn, cls)(cfg.I, cfg.H, backend=backend, **kw)
    if state is not None:
        m.load_state_dict(state)
    return m


@contextlib.contextmanager
def _kernel_variant(impl):
    """FUSEDRNN_KERNEL set for the implementation's calls, restored afterwards."""
    old = os.environ.get(KERNEL_ENV)
    if impl in KERNEL_VARIANTS:
        os.environ[KERNEL_ENV] = KERNEL_VARIANTS[impl]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(KERNEL_ENV, None)
        else:
            os.environ[KERNEL_ENV] = old


def _call(m, impl, x):
    with _kernel_variant(impl):
        if impl == "native-nocudnn":
            with torch.backends.cudnn.flags(enabled=False):
                return m(x)
        if impl == "fused-resets":
            return m(x, resets=_no_resets(x.shape[0], x.shape[1], x.device))
        return m(x)


_NO_RESETS = {}


def _no_resets(T, B, device):
    """A (T, B) all-false resets tensor, made once per shape (not inside the timing), and
    outside inference mode: training saves it for backward."""
    key = (T, B, str(device))
    if key not in _NO_RESETS:
        with torch.inference_mode(False):
            _NO_RESETS[key] = torch.zeros(T, B, dtype=torch.bool, device=device)
    return _NO_RESETS[key]


def run_once(m, impl, x, mode, g_out=None):
    """Outputs (and in training, the gradients of x and of every parameter)."""
    if mode == "inference":
        with torch.inference_mode():
            return [_call(m, impl, x)[0]]
    x = x.detach().requires_grad_()
    out = _call(m, impl, x)[0]
    with _kernel_variant(impl):
        grads = torch.autograd.grad(out, [x, *m.parameters()], g_out)
    return [out, *grads]


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def timer(device):
    """ms of one call of fn: do_bench's median on a GPU (after warm-up); on the CPU the best
    of several wall-clock repetitions (on a shared 2-core machine the median wanders with
    whatever else runs; the minimum is the least disturbed run)."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")

    def cpu(fn, reps=7):
        fn()
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return min(times)
    return cpu


def measure(cfg: Config, impls, baseline: str, device, time_it=True):
    """Rows, one per implementation: error vs the baseline, and its time unless it failed."""
    dtype = DTYPES[cfg.dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = make_module(cfg, baseline, device)
    state = base.state_dict()
    x = torch.randn(cfg.T, cfg.B, cfg.I, generator=gen).to(device, dtype)
    D = 2 if cfg.bidirectional else 1
    g_out = torch.randn(cfg.T, cfg.B, D * (cfg.proj or cfg.H), generator=gen).to(device, dtype)
    want = run_once(base, baseline, x, cfg.mode, g_out)
    copies = max(1, min(16, math.ceil(L2_BYTES / max(1, x.numel() * x.element_size()))))
    xs = [x] + [x.clone() for _ in range(copies - 1)] if device.type == "cuda" else [x]
    time_ms = timer(device)
    rows = []
    for impl in impls:
        row = dict(config=cfg.label(), **cfg.__dict__, impl=impl, baseline=baseline,
                   cudnn_persistent_likely=cfg.cudnn_persistent_likely()
                   if device.type == "cuda" else None)
        try:
            m = base if impl == baseline else make_module(cfg, impl, device, state)
            if impl in KERNEL_VARIANTS:
                row["plan"] = plan_of(m, impl, x)
                twin = next((r["impl"] for r in rows if _launches(r.get("plan"), cfg.mode)
                             == _launches(row["plan"], cfg.mode)), None)
                if impl in ONLY_IF_DIFFERENT and twin is not None:
                    row.update(status="same", same_as=twin)
                    rows.append(row)
                    continue
            got = run_once(m, impl, x, cfg.mode, g_out)
            row["error"] = max(rel_err(a, b) for a, b in zip(got, want))
            row["status"] = "ok" if row["error"] <= CHECK_TOL[cfg.dtype] else "FAILED"
            if row["status"] == "ok" and time_it:
                k = iter(range(10 ** 12))
                row["ms"] = time_ms(lambda: run_once(m, impl, xs[next(k) % len(xs)],
                                                     cfg.mode, g_out))
        except Exception as e:  # a crash is a failed configuration, reported, not hidden
            row.update(status="FAILED", error=None, exception=f"{type(e).__name__}: {e}"[:300])
        rows.append(row)
    base_ms = next((r.get("ms") for r in rows if r["impl"] == baseline), None)
    for r in rows:
        if "ms" in r:
            r["us_per_step"] = r["ms"] * 1e3 / cfg.T
            r["speedup_vs_baseline"] = base_ms / r["ms"] if base_ms else None
            r["recurrent_tflops"] = cfg.recurrent_flops() / (r["ms"] * 1e-3) / 1e12
            r["recurrent_gbps"] = cfg.recurrent_bytes() / (r["ms"] * 1e-3) / 1e9
    return rows
