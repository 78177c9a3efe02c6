"""Shared test helpers: run a module and an oracle on the same inputs, compare everything."""
from __future__ import annotations

import copy
import math
import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn

# ||out - ref|| / ||ref|| bounds, by dtype (GUIDE section 4)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2,
       "tf32": 1e-3}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    if not torch.isfinite(a).all():
        return math.inf  # NaN never passes
    denom = b.norm().item()
    diff = (a - b).norm().item()
    return diff if denom == 0 else diff / denom


def assert_close(a, b, tol, what=""):
    err = rel_err(a, b)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


# fp32 results are held to the larger of TOL and this many times the worst error of the
# reference run in fp32 on the same problem and on FP32_SAMPLES others a rounding away
# (fp32_bound). One sample was not enough: where a tiny layer (H=1, B=1) makes an output a
# near-cancellation, the reference's own fp32 error is itself a draw, and a lucky one (2e-9
# where the kernels' was 1e-6; 2 of 300 draws of an LSTM at H=1 failed 4x it, out of the
# kernels' different order of the same sums). Against the worst of 4 draws, every kernel
# output of 4000 LSTM (weight-stationary), 1920 GRU and 1920 RNN (streaming) draws (H=1 and
# 20, T=1 and 7) erred at most 11x, and at most 2x wherever it erred over 1e-5; 8 leaves a
# margin. A kernel's bug (a wrong index, a dropped term) errs by far more than rounding.
FP32_SAMPLES = 3
FP32_FACTOR = 8


def nudged(t, gen: torch.Generator):
    """``t`` (floating) with each element one ulp up or down at random: the same problem,
    another pattern of rounding errors. Other values pass through."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    sign = torch.randint(0, 2, t.shape, generator=gen).to(t) * 2 - 1
    return torch.nextafter(t, t + sign * math.inf)


def fp32_bound(tol, samples):
    """The bound of an fp32 result by key (see FP32_FACTOR): ``samples`` are (reference in
    fp32, reference in float64) pairs of output dicts, on the problem and on its nudged
    copies."""
    def bound(k):
        errs = [rel_err(w32[k], w64[k]) for w32, w64 in samples if w64[k] is not None]
        return max([tol] + [FP32_FACTOR * e for e in errs])
    return bound


def assert_all_close(got: dict, want: dict, tol):
    """Every entry within ``tol``: a number, or a function of the entry's key."""
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for k in want:
        if want[k] is None:
            assert got[k] is None, f"{k}: expected no gradient"
        else:
            assert got[k] is not None, f"{k}: missing gradient"
            assert_close(got[k], want[k], tol(k) if callable(tol) else tol, k)


def twin(mode: str, kwargs: dict, backend: str, dtype=torch.float64, device="cpu"):
    """(torch module, fusedrnn module with the same weights). A mode with a suffix
    ("RNN_RELU", "RNNCell_relu") names the plain RNN's nonlinearity."""
    mode, _, act = mode.partition("_")
    if act:
        kwargs = dict(kwargs, nonlinearity=act.lower())
    ref = getattr(nn, mode)(**kwargs, dtype=dtype, device=device)
    ours = getattr(fusedrnn, mode)(**kwargs, backend=backend, dtype=dtype, device=device)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_rnn_inputs(cfg: dict, dtype=torch.float64, device="cpu", gen=None):
    """Random x, hx and lengths for an LSTM/GRU config (see rnn_config)."""
    D = 2 if cfg["bidirectional"] else 1
    L, B, T, I, H = cfg["num_layers"], cfg["B"], cfg["T"], cfg["input_size"], cfg["hidden_size"]
    P = cfg.get("proj_size", 0) or H
    kw = dict(dtype=dtype, device=device)
    x = torch.randn(B, T, I, **kw) if cfg["batch_first"] else torch.randn(T, B, I, **kw)
    if cfg["unbatched"]:
        x = torch.randn(T, I, **kw)
    hx = None
    if cfg["hx"]:
        shape = (L * D, P) if cfg["unbatched"] else (L * D, B, P)
        cshape = (L * D, H) if cfg["unbatched"] else (L * D, B, H)
        hx = (torch.randn(shape, **kw), torch.randn(cshape, **kw)) if cfg["mode"] == "LSTM" \
            else torch.randn(shape, **kw)
    lengths = None
    if cfg["packed"]:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[torch.randint(0, B, (1,))] = T  # pad_packed_sequence restores T this way
        if cfg["packed"] == "sorted":
            lengths = lengths.sort(descending=True).values
    return x, hx, lengths


def run_rnn(m, cfg: dict, x, hx, lengths):
    """Forward through m; returns the list of output tensors (padded when packed)."""
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=cfg["batch_first"],
                                   enforce_sorted=cfg["packed"] == "sorted")
    out, hid = m(inp) if hx is None else m(inp, hx)
    if lengths is not None:
        out = pad_packed_sequence(out, batch_first=cfg["batch_first"])[0]
    return [out] + (list(hid) if isinstance(hid, tuple) else [hid])


def outputs_and_grads(m, cfg, x, hx, lengths, seed=0):
    """Outputs, and the gradients of a random projection of them w.r.t. every input."""
    x = x.detach().requires_grad_()
    hx_l = [] if hx is None else (list(hx) if isinstance(hx, tuple) else [hx])
    hx_l = [h.detach().requires_grad_() for h in hx_l]
    hx_arg = None if hx is None else (tuple(hx_l) if isinstance(hx, tuple) else hx_l[0])
    outs = run_rnn(m, cfg, x, hx_arg, lengths)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum()
               for o in outs)
    names = (["input"] + [f"hx[{k}]" for k in range(len(hx_l))]
             + [n for n, _ in m.named_parameters()])
    tensors = [x] + hx_l + [p for _, p in m.named_parameters()]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    result = {f"out[{k}]": o for k, o in enumerate(outs)}
    result.update({f"grad {n}": gr for n, gr in zip(names, grads)})
    return result


def rnn_config(**over):
    cfg = dict(mode="LSTM", nonlinearity="tanh", input_size=5, hidden_size=7, num_layers=1,
               bias=True, batch_first=False, bidirectional=False, proj_size=0, dropout=0.0,
               T=4, B=3, unbatched=False, packed=None, hx=True)
    cfg.update(over)
    if cfg["mode"] == "RNN_RELU":  # the plain RNN with nonlinearity="relu"
        cfg["mode"], cfg["nonlinearity"] = "RNN", "relu"
    if cfg["mode"] != "LSTM":
        cfg["proj_size"] = 0
    if cfg["unbatched"]:
        cfg["packed"] = None
    return cfg


def random_configs(n: int, seed: int, max_hidden=12, max_layers=3, max_T=6, max_B=4):
    """n seeded random module configurations covering every option (a broad sweep beside
    the fixed grids; seeded so a failure names a reproducible config)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        H = rng.randint(1, max_hidden)
        out.append(rnn_config(
            mode=rng.choice(["LSTM", "GRU", "RNN", "RNN_RELU"]), input_size=rng.randint(1, 9),
            hidden_size=H,
            num_layers=rng.randint(1, max_layers), bias=rng.random() < 0.7,
            batch_first=rng.random() < 0.5, bidirectional=rng.random() < 0.5,
            proj_size=rng.randint(1, H - 1) if H > 1 and rng.random() < 0.4 else 0,
            T=rng.randint(1, max_T), B=rng.randint(1, max_B), unbatched=rng.random() < 0.2,
            packed=rng.choice([None, None, "sorted", "unsorted"]), hx=rng.random() < 0.6,
            dropout=rng.choice([0.0, 0.0, 1.0])))
    return out


def module_kwargs(cfg: dict) -> dict:
    keys = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
            "bidirectional"] + (["proj_size"] if cfg["mode"] == "LSTM" else [])
    if cfg["mode"] == "RNN":
        keys.append("nonlinearity")
    return {k: cfg[k] for k in keys}


def check_module_against_torch(cfg: dict, backend: str, dtype=torch.float64, tol=None,
                               device="cpu"):
    """Module on `backend` vs torch.nn in `dtype`: every output and gradient."""
    ref, ours = twin(cfg["mode"], module_kwargs(cfg), backend, dtype, device)
    x, hx, lengths = make_rnn_inputs(cfg, dtype, device)
    want = outputs_and_grads(ref, cfg, x, hx, lengths)
    got = outputs_and_grads(ours, cfg, x, hx, lengths)
    tol = TOL[dtype] if tol is None else tol
    if dtype != torch.float32:
        assert_all_close(got, want, tol)
        return
    # fp32: against torch in float64, within tol or a multiple of torch's own fp32 error on
    # this problem and on nudged copies (fp32_bound: a small layer can make a gradient a
    # near-cancellation that no fp32 code gets to 1e-5; a 2-layer bidirectional RNN failed
    # so against cuDNN on an H200)
    as64 = lambda t: None if t is None else (  # noqa: E731
        tuple(as64(u) for u in t) if isinstance(t, tuple) else t.double())
    want64 = outputs_and_grads(copy.deepcopy(ref).double(), cfg, as64(x), as64(hx), lengths)
    samples = [(want, want64)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(FP32_SAMPLES):
        ref_n = copy.deepcopy(ref)
        with torch.no_grad():
            for p in ref_n.parameters():
                p.copy_(nudged(p, gen))
        x_n = nudged(x, gen)
        hx_n = None if hx is None else (tuple(nudged(h, gen) for h in hx)
                                        if isinstance(hx, tuple) else nudged(hx, gen))
        samples.append((outputs_and_grads(ref_n, cfg, x_n, hx_n, lengths),
                        outputs_and_grads(ref_n.double(), cfg, as64(x_n), as64(hx_n),
                                          lengths)))
    assert_all_close(got, want64, fp32_bound(tol, samples))
