"""The Triton layer kernels against fusedrnn.reference: forward and every gradient.

On a machine without a GPU they run under TRITON_INTERPRET=1 (conftest). Outputs are
poisoned with NaN before the kernels write them; the launch counter proves the kernels ran.
"""
import sys

import pytest
import torch

from fusedrnn import functional, reference
from rnncheck import FP32_SAMPLES, TOL, assert_close, fp32_bound, nudged, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64


def _lstm_args(T, B, I, H, P, bias, dtype, lengths):
    kw = dict(dtype=dtype, device=DEVICE)
    K = P or H
    # pre-activations of about unit variance whatever H: at H=1 a scale of H^-0.5 gave them
    # a standard deviation of ~2.7, and where one saturated (|x| > 8), torch's tanh backward
    # in the reference (1 - y^2) lost 1e-9 to cancellation, past fp64's 1e-10 (B=T=H=1)
    s = (I + K) ** -0.5
    args = dict(x=torch.randn(T, B, I, **kw), h0=torch.randn(B, K, **kw) * 0.5,
                c0=torch.randn(B, H, **kw) * 0.5,
                w_ih=torch.randn(4 * H, I, **kw) * s, w_hh=torch.randn(4 * H, K, **kw) * s,
                b_ih=torch.randn(4 * H, **kw) * s if bias else None,
                b_hh=torch.randn(4 * H, **kw) * s if bias else None,
                w_hr=torch.randn(P, H, **kw) * s if P else None)
    if lengths:
        lens = torch.randint(1, T + 1, (B,), device=DEVICE)
        lens[0] = T
        args["lengths"] = lens
    return args


def _gru_args(T, B, I, H, bias, dtype, lengths):
    args = _lstm_args(T, B, I, H, 0, bias, dtype, lengths)
    for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
        if args[k] is not None:
            args[k] = args[k][: 3 * H].contiguous()
    del args["c0"], args["w_hr"]
    return args


def _rnn_args(T, B, I, H, bias, dtype, lengths):
    args = _gru_args(T, B, I, H, bias, dtype, lengths)
    for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
        if args[k] is not None:
            args[k] = args[k][:H].contiguous()
    return args


def _rnn_layer(nonlinearity):
    def fn(**kw):
        return functional.rnn_layer(**kw, nonlinearity=nonlinearity)
    return fn


def _run(fn, args, backend, reverse, seed=0):
    """Outputs and the gradients of a fixed random projection of them w.r.t. every input."""
    leaves = {k: v.detach().requires_grad_() for k, v in args.items()
              if v is not None and k != "lengths"}
    call = {k: leaves.get(k, v) for k, v in args.items()}
    outs = fn(**call, reverse=reverse, backend=backend)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, device=DEVICE, dtype=F64)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    res = {f"out{k}": o for k, o in enumerate(outs)}
    res.update({f"d{k}": gr for k, gr in zip(leaves, grads)})
    return res


def _fwd_bwd_launches(launches, cell, kernel_mode):
    """(forward, backward) launches of the layer's recurrent kernels. Forced to the
    weight-stationary kernels, those must be what ran."""
    if kernel_mode == "stationary":
        assert launches[f"{cell}_fwd_kernel"] == launches[f"{cell}_bwd_kernel"] == 0
    st = kernel_mode != "step"
    return (launches[f"{cell}_fwd_kernel"] + st * launches["stationary_fwd_kernel"],
            launches[f"{cell}_bwd_kernel"] + st * launches["stationary_bwd_kernel"])


def _as64(args: dict) -> dict:
    return {k: (v.double() if v is not None and v.is_floating_point() else v)
            for k, v in args.items()}


def _fp32_bound(fn, args, reverse, tol, want):
    """rnncheck.fp32_bound of an fp32 layer: the reference in fp32 against ``want`` (float64)
    on these inputs, and both on FP32_SAMPLES nudged copies (lengths as they are)."""
    samples = [(_run(fn, args, "reference", reverse), want)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(FP32_SAMPLES):
        other = {k: nudged(v, gen) for k, v in args.items()}
        samples.append((_run(fn, other, "reference", reverse),
                        _run(fn, _as64(other), "reference", reverse)))
    return fp32_bound(tol, samples)


def _low_bound(fn, args, reverse, tol, want):
    """fp16/bf16: ``tol``, or twice the error of the reference itself run in that dtype on
    these inputs where that is more. (With proj_size the reference's own bf16 gradients
    erred up to 1.0e-2 in 15 draws of a 5-step layer, the kernels' up to 1.05e-2 in 50:
    a projection rounds once more a step.)"""
    own = _run(fn, args, "reference", reverse)
    return lambda k: max(tol, 2 * rel_err(own[k], want[k]))


def _compare(fn, args, reverse, tol):
    """Triton against the float64 reference, within ``tol``. In fp32, where a tiny layer
    (H=1, one step) can make a gradient a difference of nearly equal terms, also within a
    multiple of the error of the reference itself run in fp32, on these inputs and on
    nudged copies (rnncheck.fp32_bound): no kernel can beat fp32. In fp16/bf16, within
    twice the reference's own error in that dtype where that is past ``tol``
    (_low_bound)."""
    want = _run(fn, _as64(args), "reference", reverse)
    got = _run(fn, args, "triton", reverse)
    dtype = args["x"].dtype
    bound = _fp32_bound(fn, args, reverse, tol, want) if dtype == torch.float32 else \
        _low_bound(fn, args, reverse, tol, want) if dtype in LOW else (lambda k: tol)
    for k in want:
        assert_close(got[k], want[k], bound(k), k)
    return got, want


def _sizes(hidden):
    """(H, T, B, dtype): every combination at the hidden sizes given, and H=64 (whole tiles
    of every kernel, 8 of the weight-stationary one's) once, T=7 B=3 in float64: its
    interpreted runs were a third of these tests' time (the suite's 15 minutes)."""
    return [(H, T, B, dt) for H in hidden for T in (1, 7) for B in (1, 3)
            for dt in (F64, torch.float32)] + [(64, 7, 3, F64)]


def test_fp32_bound_stays_at_the_tolerance_where_rounding_is_small():
    """The fp32 bound (rnncheck.fp32_bound) loosens only where the reference's own fp32
    error is large: on a well-conditioned layer (H=20, T=7, B=3) it is TOL for every
    output and gradient, so an error of 1e-4 fails there."""
    args = _lstm_args(7, 3, 5, 20, 0, True, torch.float32, False)
    want = _run(functional.lstm_layer, _as64(args), "reference", False)
    bound = _fp32_bound(functional.lstm_layer, args, False, TOL[torch.float32], want)
    assert all(bound(k) == TOL[torch.float32] for k in want), {k: bound(k) for k in want}
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(want["out0"] * (1 + 1e-4), want["out0"], bound("out0"), "out0")


@pytest.mark.parametrize("H,T,B,dtype", _sizes((1, 20, 33)))
def test_lstm_layer_sizes(H, T, B, dtype, kernel_mode, poison, launches):
    args = _lstm_args(T, B, 5, H, 0, True, dtype, lengths=False)
    _compare(functional.lstm_layer, args, reverse=False, tol=TOL[dtype])
    n = T if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "lstm", kernel_mode) == (n, n)


@pytest.mark.parametrize("H,T,B,dtype", _sizes((1, 20, 33)))
def test_gru_layer_sizes(H, T, B, dtype, kernel_mode, poison, launches):
    args = _gru_args(T, B, 5, H, True, dtype, lengths=False)
    _compare(functional.gru_layer, args, reverse=False, tol=TOL[dtype])
    n = T if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "gru", kernel_mode) == (n, n)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("H,T,B,dtype", _sizes((1, 33)))
def test_rnn_layer_sizes(H, T, B, dtype, nonlinearity, kernel_mode, poison, launches):
    args = _rnn_args(T, B, 5, H, True, dtype, lengths=False)
    _compare(_rnn_layer(nonlinearity), args, reverse=False, tol=TOL[dtype])
    n = T if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "rnn", kernel_mode) == (n, n)


def _options(projections=(0,)):
    """(lengths, reverse, bias, proj, dtype): every combination in float64; in float32 (the
    same code but for its dots' and accumulators' types) with lengths and reverse both on,
    the options' hardest case, for the suite's 15 minutes."""
    return [(ln, rv, b, p, dt) for dt in (F64, torch.float32) for ln in (False, True)
            for rv in (False, True) for b in (True, False) for p in projections
            if dt == F64 or ln and rv]


@pytest.mark.parametrize("lengths,reverse,bias,proj,dtype", _options((0, 7)))
def test_lstm_layer_options(lengths, reverse, bias, proj, dtype, kernel_mode, poison, launches):
    args = _lstm_args(7, 3, 4, 20, proj, bias, dtype, lengths)
    _compare(functional.lstm_layer, args, reverse, tol=TOL[dtype])
    # step mode: one launch per step, two with the projection's own phase
    n = (14 if proj else 7) if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "lstm", kernel_mode) == (n, n)


@pytest.mark.parametrize("lengths,reverse,bias,dtype", [o[:3] + o[4:] for o in _options()])
def test_gru_layer_options(lengths, reverse, bias, dtype, kernel_mode, poison, launches):
    args = _gru_args(7, 3, 4, 20, bias, dtype, lengths)
    _compare(functional.gru_layer, args, reverse, tol=TOL[dtype])
    n = 7 if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "gru", kernel_mode) == (n, n)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_rnn_layer_options(lengths, reverse, bias, nonlinearity, kernel_mode, poison, launches):
    args = _rnn_args(7, 3, 4, 20, bias, F64, lengths)
    _compare(_rnn_layer(nonlinearity), args, reverse, tol=TOL[F64])
    n = 7 if kernel_mode == "step" else 1
    assert _fwd_bwd_launches(launches, "rnn", kernel_mode) == (n, n)


def test_rnn_relu_gradient_is_zero_where_relu_is_off(poison):
    """relu's derivative: zero at and below zero, as torch's (units forced off by a large
    negative bias get no gradient through the nonlinearity)."""
    args = _rnn_args(4, 3, 4, 20, True, F64, lengths=False)
    args["b_ih"][:5] = -1e3
    got, want = _compare(_rnn_layer("relu"), args, False, tol=TOL[F64])
    assert (got["dw_hh"][:5] == 0).all() and (got["db_ih"][:5] == 0).all()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("H,B", [(20, 3), (40, 20)])  # one tile; several tiles per program
def test_sequence_kernel_launches_do_not_grow_with_T(cell, H, B, poison, launches):
    """Default plan under the interpreter: a sequence kernel (the weight-stationary one
    where the layer is one tile, else the streaming one), one launch per layer pass."""
    counts = []
    for T in (2, 6):
        launches.clear()
        if cell == "lstm":
            args = _lstm_args(T, B, 4, H, 5, True, torch.float64, lengths=True)
            _compare(functional.lstm_layer, args, reverse=True, tol=1e-10)
        elif cell == "gru":
            args = _gru_args(T, B, 4, H, True, torch.float64, lengths=True)
            _compare(functional.gru_layer, args, reverse=True, tol=1e-10)
        else:
            args = _rnn_args(T, B, 4, H, True, torch.float64, lengths=True)
            _compare(_rnn_layer("tanh"), args, reverse=True, tol=1e-10)
        counts.append(dict(launches))
    # (the LSTM with proj_size=5)
    assert counts[0] == counts[1] == {"stationary_fwd_kernel": 1, "stationary_bwd_kernel": 1}


@pytest.mark.parametrize("units,depth,mode", [(8, None, "sequence"), (8, None, "step"),
                                              (16, None, "sequence"), (16, 128, "sequence")])
@pytest.mark.parametrize("cell", ["lstm", "lstm-proj", "gru", "rnn"])
def test_streaming_narrow_tiles_match_the_reference(cell, units, depth, mode, poison,
                                                    launches, monkeypatch):
    """The streaming kernels at tiles of 8 and 16 units (plan.stream_blocks: what a GPU
    takes where 32-unit tiles would leave SMs idle, 16-bit H=2048 on 132 SMs; the
    interpreter's one program would take 32): H=40 as 5 or 3 tiles, the last one partial,
    lengths and reverse, forward and every gradient, against the reference; one launch a
    pass, or (step mode, at 8 units: the same tiles a launch a step) a grid of every tile a
    step. The LSTM also with proj_size=7 (its projection's phase keeps its own tiles). And
    16 units with K chunks 128 deep (a narrowed tile's on a GPU): H=160, two chunks, the
    second partial. (16 cases: the GPU script runs them natively, each a compile.)"""
    from fusedrnn.kernels import gru, lstm, plan as planning, rnn

    monkeypatch.setenv(planning.KERNEL_ENV, mode)
    monkeypatch.setattr(planning, "FORCED_STREAM_UNITS", units)
    monkeypatch.setattr(planning, "FORCED_STREAM_K", depth)
    name = cell.split("-")[0]
    mod = {"lstm": lstm, "gru": gru, "rnn": rnn}[name]
    taken = []

    def spy(*args, **kwargs):
        blocks = planning.plan_blocks(*args, **kwargs)
        taken.append(blocks[1:3])
        return blocks

    monkeypatch.setattr(mod, "plan_blocks", spy)
    H, B = (40, 3) if depth is None else (160, 3)
    if name == "lstm":
        args = _lstm_args(4, B, 5, H, 7 if cell == "lstm-proj" else 0, True, F64, True)
        _compare(functional.lstm_layer, args, True, TOL[F64])
    elif name == "gru":
        _compare(functional.gru_layer, _gru_args(4, B, 5, H, True, F64, True), True, TOL[F64])
    else:
        _compare(_rnn_layer("tanh"), _rnn_args(4, B, 5, H, True, F64, True), True, TOL[F64])
    # (the float64 reference's run launches nothing; step mode a launch a step and phase)
    n = 1 if mode == "sequence" else 8 if cell == "lstm-proj" else 4
    assert dict(launches) == {f"{name}_fwd_kernel": n, f"{name}_bwd_kernel": n}
    assert taken and {bh for bh, _ in taken} == {units}
    assert depth is None or {bk for _, bk in taken} == {depth}


def _one_stationary_layer_matches(cell, B, H, launches):
    """A layer of ``cell`` (4 steps, lengths, reverse) against the reference, forward and
    every gradient, in one weight-stationary launch a pass."""
    if cell == "lstm":
        _compare(functional.lstm_layer, _lstm_args(4, B, 5, H, 0, True, F64, True), True,
                 TOL[F64])
    elif cell == "gru":
        _compare(functional.gru_layer, _gru_args(4, B, 5, H, True, F64, True), True, TOL[F64])
    else:
        _compare(_rnn_layer("tanh"), _rnn_args(4, B, 5, H, True, F64, True), True, TOL[F64])
    assert dict(launches) == {"stationary_fwd_kernel": 1, "stationary_bwd_kernel": 1}


# (chunk by chunk: the LSTM and the plain RNN; the GRU's product is the LSTM's, its gates
# padded to four, and the suite keeps within 15 minutes)
_AHEAD = [pytest.param(c, a, id=f"{c}-{'h_ahead' if a else 'h_by_chunk'}")
          for c in ("lstm", "gru", "rnn") for a in (True, False) if a or c != "gru"]


@pytest.mark.parametrize("cell,ahead", _AHEAD)
def test_stationary_runs_of_k_match_the_reference(cell, ahead, poison, launches,
                                                  monkeypatch):
    """3 K chunks (H=192, chunks of 64; the plain RNN H=384, chunks of 128, for its 8 runs
    of 16): the forward's product in 4 runs of K, the backward's in 2 a gate (the plain
    RNN's in 8), each run a warp's batch element, summed after; with lengths and reverse,
    forward and every gradient, against the reference. The forward loads all of h_{t-1}
    before its product and the backward all of dgates_{t+1}, or chunk by chunk where the
    plan finds no shared memory for that (plan.x_ahead)."""
    from fusedrnn.kernels import plan as planning

    if not ahead:
        monkeypatch.setattr(planning, "x_ahead", lambda *args, **kw: False)
    H, B = (384 if cell == "rnn" else 192), 3
    fwd, bwd = (planning.plan(cell, F64, B, H, cuda=False, sm_count=1, backward=b)
                for b in (0, 1))
    assert fwd["kernel"] == bwd["kernel"] == "stationary" and fwd["NK"] == 3
    assert (fwd["KS"], bwd["KS_bwd"]) == (4, 8 if cell == "rnn" else 2)
    assert fwd["x_ahead"] == bwd["x_ahead"] == ahead
    _one_stationary_layer_matches(cell, B, H, launches)


@pytest.mark.parametrize("chunks", ["3x64", "1x512"])
def test_stationary_narrow_16_unit_tiles_match_the_reference(chunks, poison, launches,
                                                             monkeypatch):
    """Narrow 16-unit tiles (plan.NARROW_UNITS: an A100's, no wgmma, at 16-bit H=1024): 64
    gate rows as the batched runs of K, 4 warps forward (not the wide tile's plain dot) and
    the backward's 4 gates x 2 runs. H=192 (3 chunks of 64) in 12 tiles looping on one
    program, lengths and reverse, forward and every gradient, against the reference; and a
    chunk of 512 (H=1536's 3 x 512 on an H100, NARROW_W_BUDGET), at H=40 one chunk mostly
    past H, 3 tiles. (The LSTM alone: the GRU's product is the LSTM's, its gates padded to
    four.)"""
    from fusedrnn.kernels import lstm
    from fusedrnn.kernels import plan as planning

    def no_wgmma(cell, dtype, B, H, K, proj, device, training, ieee, backward=False,
                 directions=1):  # (plan_for under the interpreter, as on a GPU without wgmma)
        return planning.plan(cell, dtype, B, H, K, proj, training, 1, False, ieee, backward,
                             directions, wide_tiles=False)

    monkeypatch.setattr(planning, "FORCED_UNITS", planning.NARROW_UNITS)
    H, B = (192, 3) if chunks == "3x64" else (40, 3)
    nk, kc = (int(v) for v in chunks.split("x"))
    if DEVICE == "cpu":  # (the native run on a GPU: the GPU's own plan, checked the same)
        monkeypatch.setattr(lstm, "plan_for", no_wgmma)
        monkeypatch.setattr(planning, "k_chunks", lambda K: (nk, kc))
    fwd, bwd = (no_wgmma("lstm", F64, B, H, H, False, DEVICE, True, False, backward=b)
                for b in (False, True))
    assert fwd["kernel"] == bwd["kernel"] == "stationary" and fwd["KC"] == kc
    assert fwd["U"] == planning.NARROW_UNITS and fwd["tiles"] == -(-H // 16)
    assert (fwd["KS"], fwd["warps"], bwd["KS_bwd"], bwd["warps_bwd"]) == (4, 4, 2, 8)
    _one_stationary_layer_matches("lstm", B, H, launches)


@pytest.mark.parametrize("cell,ahead", _AHEAD)
def test_stationary_wide_tiles_match_the_reference(cell, ahead, poison, launches, monkeypatch):
    """Wide tiles (plan.WIDE_UNITS: 64 gate rows, what 16-bit B=128 at H=1024 runs): the
    forward's product one plain dot a chunk, its warps over the rows and the batch; the
    backward's as at narrower tiles. H=384 (3 chunks of 128) in 6 tiles looping on one
    program, lengths and reverse, forward and every gradient, against the reference."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_UNITS", planning.WIDE_UNITS)
    if not ahead:
        monkeypatch.setattr(planning, "x_ahead", lambda *args, **kw: False)
    H, B = 384, 3
    fwd = planning.plan(cell, F64, B, H, cuda=False, sm_count=1)
    assert fwd["kernel"] == "stationary" and fwd["NK"] == 3 and fwd["x_ahead"] == ahead
    assert (fwd["KS"], fwd["warps"]) == (1, planning.WIDE_WARPS)
    _one_stationary_layer_matches(cell, B, H, launches)


@pytest.mark.parametrize("cell,split,units", [("lstm", 2, None), ("gru", 2, None),
                                              ("rnn", 2, None), ("gru", 4, None),
                                              ("lstm", 2, "wide")])
def test_stationary_split_tiles_match_the_reference(cell, split, units, poison, launches,
                                                    monkeypatch):
    """Split tiles (plan.sub_rows: fp32 at 64 batch rows a program, and past 64 rows bf16
    B=512 H=1024 and fp32 B=128 H=1024 on a GPU): a program's rows as 2 or 4 sub-tiles of
    16, each a whole product and update a step with the one W_hh slice (wide: 16 units, one
    plain dot a chunk). B=40: two batch groups of 32 rows (the second's last sub-tile wholly
    past B), or one of 64 (the last two partly and wholly past B); H=40, lengths and
    reverse, forward and every gradient, against the reference."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_SPLIT", split)
    if units == "wide":
        monkeypatch.setattr(planning, "FORCED_UNITS", planning.WIDE_UNITS)
    H, B = 40, 40
    fwd = planning.plan(cell, F64, B, H, cuda=False, sm_count=1)
    assert fwd["kernel"] == "stationary" and (fwd["BB"], fwd["split"]) == (16 * split, split)
    assert fwd["tiles"] == -(-B // (16 * split)) * -(-H // fwd["U"])
    assert planning.wide(cell, fwd["U"], False) == (units == "wide")
    _one_stationary_layer_matches(cell, B, H, launches)


@pytest.mark.parametrize("case", ["tiles", "one_tile", "by_chunk", "split"])
def test_stationary_projection_matches_the_reference(case, poison, launches, monkeypatch):
    """The LSTM's projection (proj_size) in the weight-stationary kernels (plan.proj_tiling).
    Forward: the gates' product over the P-wide state, o * tanh(c_t) to the projection's
    input, a barrier, then h_t = W_hr m_t from each program's rows of W_hr (16 projected
    units a program, as a plain RNN's W_hh in runs of K), a second barrier. Backward: the
    gradient of h_t for U of the P units a program (dgates_{t+1} times those columns of
    W_hh), a barrier, then the gate gradients of its own units from dh_t times
    their columns of W_hr, a second barrier. tiles: H=40 P=24 in 5 tiles looping on one
    program, 2 of them projecting forward (P past one program's 16 units), 3 backward (8
    units each); one_tile: H=4 P=3, the resident path (the slices loaded once before the
    time loop); by_chunk: the operands chunk by chunk (plan.x_ahead off), W_hr's 40 columns
    as 3 chunks of 16 forward; split: 2 sub-tiles of 16 rows forward (B=40, the last partly
    past B). Lengths and reverse, forward and every gradient, against the reference; then
    inference, which keeps one step of m_t."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    if case == "by_chunk":
        monkeypatch.setattr(planning, "x_ahead", lambda *args, **kw: False)
    if case == "split":
        monkeypatch.setattr(planning, "FORCED_SPLIT", 2)
    H, P, B = {"one_tile": (4, 3, 3), "split": (40, 24, 40)}.get(case, (40, 24, 3))
    fwd = planning.plan("lstm", F64, B, H, P, True, True, sm_count=1, cuda=False)
    assert fwd["kernel"] == "stationary" and fwd["PU"] == planning.PROJ_MIN_UNITS, fwd
    assert fwd["p_ahead"] == (case != "by_chunk") and fwd["split"] == (2 if case == "split"
                                                                       else 1)
    assert fwd["tiles"] == (1 if case == "one_tile" else 5 * -(-B // fwd["BB"]))
    assert fwd["PNK"] == (1 if case == "one_tile" else 3)
    bwd = planning.plan("lstm", F64, B, H, P, True, True, sm_count=1, cuda=False,
                        backward=True)
    assert bwd["kernel"] == "stationary" and (bwd["NK"], bwd["KC"]) == planning.k_chunks(H)
    assert bwd["PU"] == bwd["U"] and bwd["PNK"] * bwd["PKC"] == (16 if case == "one_tile"
                                                                 else 32), bwd
    args = _lstm_args(5, B, 4, H, P, True, F64, True)
    _compare(functional.lstm_layer, args, True, TOL[F64])
    assert dict(launches) == {"stationary_fwd_kernel": 1, "stationary_bwd_kernel": 1}
    with torch.no_grad():
        got = functional.lstm_layer(**args, reverse=True, backend="triton")
    for k, (g, w) in enumerate(zip(got, reference.lstm_layer(**args, reverse=True))):
        assert_close(g, w, TOL[F64], f"inference {k}")
    assert launches["stationary_fwd_kernel"] == 2


def test_bidirectional_projection(poison, launches, monkeypatch):
    """Both directions of an LSTM with proj_size in one launch a pass (each its own W_hr and
    projection buffers: the launches' r_w_hr, r_hr, r_dhp), two layers, packed sequences
    and initial states, forward and every gradient, against the reference."""
    _bidirectional_one_launch_per_pass("lstm", 40, 3, monkeypatch, proj=24)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "stationary_bwd_kernel": 2}


@pytest.mark.parametrize("cell,ksplit,H,rows,passes", [
    ("gru", 2, 40, 16, 2), ("lstm", 4, 40, 16, 1), ("gru", 6, 24, 16, 1),
    ("lstm", 2, 40, 8, 1), ("lstm", 3, 48, 16, 2)])
def test_splitk_backward_matches_the_reference(cell, ksplit, H, rows, passes, poison,
                                               launches, monkeypatch):
    """The backward split over K (kernels/splitk.py: 16-bit and fp32 B >= 128 at H=1024 on
    a GPU, H=768 in 3 or 6 parts): each tile's product in 2, 3, 4 or 6 K parts, the partial
    products summed through memory, each part's program running the update of a quarter or
    half of the tile's rows (3 parts: halves, the third program none; 6: quarters, two
    none). B=20 (two batch groups of 16, the second partly past B), H=40 (5 unit groups; at
    4 parts of 16 rows, the last part wholly past H), 48 (3 parts of 16) or 24 (a GRU's 3
    gates in 6 parts of 4), lengths and reverse, forward and every gradient, against the
    reference.
    rows=8: each tile's product as two partial products of 8 rows a step
    (plan.splitk_product_rows). passes=2: each program's update rows as two passes of 4
    (plan.splitk_pass_rows: 16-bit B=512 H=768's 128 as 4 of 32), with 3 parts the third
    program's passes wholly past B."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_KSPLIT", ksplit)
    monkeypatch.setattr(planning, "FORCED_PRODUCT_ROWS", rows)
    if passes > 1:
        monkeypatch.setattr(planning, "FORCED_PASS_ROWS", 8 // passes)
    B = 20
    bwd = planning.plan(cell, F64, B, H, cuda=False, sm_count=1, backward=True)
    assert bwd["kernel"] == "stationary" and bwd["ksplit"] == ksplit and bwd["BB"] == 16
    assert bwd["tiles"] == 2 * ksplit * -(-H // bwd["U"]) and bwd["product_rows"] == rows
    assert bwd["update_rows"] == {2: 8, 3: 8, 4: 4, 6: 4}[ksplit]
    assert bwd["update_rows"] // bwd["pass_rows"] == passes
    fwd = planning.plan(cell, F64, B, H, cuda=False, sm_count=1)
    assert "ksplit" not in fwd
    if cell == "lstm":
        _compare(functional.lstm_layer, _lstm_args(4, B, 5, H, 0, True, F64, True), True,
                 TOL[F64])
    else:
        _compare(functional.gru_layer, _gru_args(4, B, 5, H, True, F64, True), True, TOL[F64])
    assert dict(launches) == {"stationary_fwd_kernel": 1, "splitk_bwd_kernel": 1}


def _ll_words_calls(monkeypatch) -> list:
    """The directions of each LL launch (stationary.ll.words: called only where a launch
    exchanges h as LL words), appended as the launches are made."""
    from fusedrnn.kernels import stationary

    made = []
    real = stationary.ll.words
    monkeypatch.setattr(stationary.ll, "words", lambda h0s: made.append(len(h0s)) or real(h0s))
    return made


@pytest.mark.parametrize("cell,dtype,B,H,ahead", [("lstm", torch.bfloat16, 20, 40, True),
                                                   ("gru", torch.float16, 3, 8, True),
                                                   ("rnn", torch.float32, 20, 40, True),
                                                   ("lstm", torch.float32, 3, 8, True),
                                                   ("gru", torch.float32, 3, 40, False)])
def test_ll_forward_is_the_barrier_forward_bit_for_bit(cell, dtype, B, H, ahead, poison,
                                                       launches, monkeypatch):
    """The weight-stationary forward exchanging h as words that carry their step
    (kernels/ll.py, plan.FORCED_LL): the same outputs, bit for bit, as with the barrier
    (it changes only how h_{t-1} travels), and within the dtype's tolerance of the
    reference. 16-bit and fp32 words; B=20 H=40: several tiles (one program looping over
    them here, the grid barrier kept), B=3 H=8: one tile (resident, no barrier at all);
    on a GPU, the real grid. Lengths, reverse, h0. B=3 H=40 (3 chunks of 16) without
    plan.x_ahead: each chunk's words loaded and waited for as the product reaches it."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    if not ahead:
        monkeypatch.setattr(planning, "x_ahead", lambda *args, **kw: False)
    made = _ll_words_calls(monkeypatch)
    if cell == "lstm":
        fn, args = functional.lstm_layer, _lstm_args(5, B, 5, H, 0, True, dtype, True)
    elif cell == "gru":
        fn, args = functional.gru_layer, _gru_args(5, B, 5, H, True, dtype, True)
    else:
        fn, args = _rnn_layer("tanh"), _rnn_args(5, B, 5, H, True, dtype, True)
    with torch.no_grad():
        barrier = fn(**args, reverse=True, backend="triton")
        assert not made
        monkeypatch.setattr(planning, "FORCED_LL", True)
        assert planning.plan(cell, dtype, B, H, cuda=DEVICE == "cuda",
                             sm_count=132 if DEVICE == "cuda" else 1)["ll"]
        words = fn(**args, reverse=True, backend="triton")
    assert made and launches["stationary_fwd_kernel"] == 2
    for k, (a, b) in enumerate(zip(words, barrier)):
        assert torch.equal(a, b), f"output {k}: the LL forward differs from the barrier's"
    ref = {k: (v.double() if v is not None and v.is_floating_point() else v)
           for k, v in args.items()}
    for k, (a, b) in enumerate(zip(words, fn(**ref, reverse=True, backend="reference"))):
        assert_close(a, b, TOL[dtype], f"output {k}")


@pytest.mark.parametrize("cell,ksplit", [("lstm", 1), ("gru", 2)])
def test_red_arrival_is_the_atomic_arrival_bit_for_bit(cell, ksplit, poison, launches,
                                                       monkeypatch):
    """The weight-stationary kernels' barriers arriving with a red.release
    (plan.FORCED_RED; common.group_barrier RED): every output and gradient equal bit for
    bit to the atomic arrival's, forward and backward (and the split-K backward's two
    barriers). On a GPU with the real grid; under the interpreter the plan and launch path
    (there is no inline PTX: the atomic runs)."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    monkeypatch.setattr(planning, "FORCED_KSPLIT", ksplit)
    if cell == "lstm":
        fn, args = functional.lstm_layer, _lstm_args(5, 20, 5, 40, 0, True, torch.bfloat16,
                                                      True)
    else:
        fn, args = functional.gru_layer, _gru_args(5, 20, 5, 40, True, torch.float32, True)
    atomic = _run(fn, args, "triton", reverse=True)
    monkeypatch.setattr(planning, "FORCED_RED", True)
    for backward in (False, True):
        assert planning.plan(cell, args["x"].dtype, 20, 40, cuda=DEVICE == "cuda",
                             sm_count=132 if DEVICE == "cuda" else 1, backward=backward)["red"]
    red = _run(fn, args, "triton", reverse=True)
    for k in atomic:
        assert torch.equal(red[k], atomic[k]), f"{k}: differs with the red.release arrival"
    kernels = {"stationary_fwd_kernel", "splitk_bwd_kernel" if ksplit > 1 else
               "stationary_bwd_kernel"}
    assert set(launches) == kernels


def test_bidirectional_splitk_backward(poison, launches, monkeypatch):
    """A bidirectional GRU (2 layers) whose backward is split over K: each direction its own
    backward launch (never paired), the forward's directions still one launch a layer."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_KSPLIT", 2)
    _bidirectional_one_launch_per_pass("gru", 20, 8, monkeypatch)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "splitk_bwd_kernel": 4}


def test_bidirectional_split_tiles(poison, launches, monkeypatch):
    """The same with both directions of an LSTM in one launch."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_SPLIT", 2)
    _bidirectional_one_launch_per_pass("lstm", 40, 20, monkeypatch)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "stationary_bwd_kernel": 2}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("H,B", [(20, 3), (40, 9)])  # one tile a direction; several
def test_bidirectional_layer_is_one_launch_per_pass(cell, H, B, poison, launches,
                                                    monkeypatch):
    """Both directions of a layer in one launch of the weight-stationary kernels, forward
    and backward, with lengths and initial states, against the reference."""
    _bidirectional_one_launch_per_pass(cell, H, B, monkeypatch)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "stationary_bwd_kernel": 2}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bidirectional_wide_tiles(cell, poison, launches, monkeypatch):
    """The same with wide tiles (plan.WIDE_UNITS; a bidirectional 16-bit B=64 H=1024 layer
    pairs them on an H100/H200): both directions' plain dots in one launch."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_UNITS", planning.WIDE_UNITS)
    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    p = planning.plan(cell, F64, 9, 40, cuda=False, sm_count=1, directions=2)
    assert p["paired"] and p["KS"] == 1 and p["warps"] == planning.WIDE_WARPS
    _bidirectional_one_launch_per_pass(cell, 40, 9, monkeypatch)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "stationary_bwd_kernel": 2}


def _bidirectional_one_launch_per_pass(cell, H, B, monkeypatch, dtype=F64, proj=0):
    from fusedrnn.kernels.plan import KERNEL_ENV

    monkeypatch.setenv(KERNEL_ENV, "stationary")
    mode = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    ref = mode(4, H, num_layers=2, bidirectional=True, dtype=dtype, device=DEVICE,
               **({"proj_size": proj} if proj else {}))
    cls = {"lstm": functional.lstm, "gru": functional.gru, "rnn": functional.rnn}[cell]
    x = torch.randn(5, B, 4, dtype=dtype, device=DEVICE)
    lengths = torch.randint(1, 6, (B,))
    lengths[0] = 5
    lengths = lengths.sort(descending=True).values
    batch_sizes = (torch.arange(5).unsqueeze(1) < lengths).sum(1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths).data
    h0 = torch.randn(4, B, proj or H, dtype=dtype, device=DEVICE)
    hx = (h0, torch.randn(4, B, H, dtype=dtype, device=DEVICE)) if cell == "lstm" else h0
    results = {}
    for backend in ("reference", "triton"):
        leaves = [packed.detach().requires_grad_(), *(t.detach().requires_grad_() for t in
                                                      (hx if cell == "lstm" else (hx,)))]
        w = [p.detach().requires_grad_() for p in ref._flat_weights]
        h = tuple(leaves[1:]) if cell == "lstm" else leaves[1]
        outs = cls(leaves[0], batch_sizes, h, w, True, 2, 0.0, True, True, backend=backend)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype, device=DEVICE)
                    .view(o.shape)).sum() for o in outs)
        results[backend] = [*outs, *torch.autograd.grad(loss, leaves + w)]
    for k, (got, want) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(got, want, TOL[dtype], f"result {k}")


def test_bidirectional_ll_forward(poison, launches, monkeypatch):
    """Both directions of a layer in one launch with the LL exchange (kernels/ll.py): each
    direction its own words (the launch's r_ll), fp32 (64-bit words), two layers, packed
    sequences and initial states, forward and every gradient, against the reference."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setattr(planning, "FORCED_LL", True)
    made = _ll_words_calls(monkeypatch)
    _bidirectional_one_launch_per_pass("lstm", 20, 8, monkeypatch, torch.float32)
    assert dict(launches) == {"stationary_fwd_kernel": 2, "stationary_bwd_kernel": 2}
    assert made == [2, 2]


def test_batch_first_strides_need_no_copy(poison):
    """A batch-first view goes in as strides and the output comes back batch-major."""
    args = _lstm_args(6, 3, 4, 20, 0, True, torch.float32, lengths=True)
    args["x"] = args["x"].transpose(0, 1).contiguous().transpose(0, 1)
    out = functional.lstm_layer(**args, backend="triton")[0]
    assert out.stride(1) > out.stride(0)
    _compare(functional.lstm_layer, args, reverse=True, tol=1e-5)


def test_inference_saves_nothing(poison, launches):
    args = _lstm_args(5, 3, 4, 20, 0, True, torch.float32, lengths=True)
    with torch.no_grad():
        out, h, c = functional.lstm_layer(**args, backend="triton")
    want = reference.lstm_layer(**args)
    assert_close(out, want[0], 1e-5, "out")
    assert_close(h, want[1], 1e-5, "h_n")
    assert_close(c, want[2], 1e-5, "c_n")
    # one forward launch (weight-stationary; streaming for exact fp32 on a GPU), no backward
    assert launches["stationary_fwd_kernel"] + launches["lstm_fwd_kernel"] == 1
    assert launches["stationary_bwd_kernel"] + launches["lstm_bwd_kernel"] == 0
    assert not out.requires_grad


LOW = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_low_precision(cell, dtype, poison):
    """fp16/bf16 inputs: within 1e-2 of float64, and within twice torch's own error there."""
    H, T, B = 32, 7, 3
    mode = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    m = mode(16, H, dtype=F64, device=DEVICE)
    x = torch.randn(T, B, 16, dtype=F64, device=DEVICE)
    want = m(x)[0]
    try:
        torch_err = rel_err(m.to(dtype)(x.to(dtype))[0], want)
    except RuntimeError as e:  # torch has no CPU kernel for this dtype
        pytest.skip(f"torch.nn.{mode.__name__} cannot run in {dtype} here: {e}")
    w = [getattr(m, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    h0 = torch.zeros(B, H, dtype=dtype, device=DEVICE)
    with torch.no_grad():
        if cell == "lstm":
            got = functional.lstm_layer(x.to(dtype), h0, h0, *w, backend="triton")[0]
        elif cell == "gru":
            got = functional.gru_layer(x.to(dtype), h0, *w, backend="triton")[0]
        else:
            got = functional.rnn_layer(x.to(dtype), h0, *w, backend="triton")[0]
    err = rel_err(got, want)
    assert got.dtype == dtype
    assert err <= TOL[dtype], err
    assert err <= 2 * torch_err + 1e-3, (err, torch_err)


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_gradients(dtype, kernel_mode, poison):
    """fp16/bf16 gradients within 1e-2 of float64 on every kernel kind: the gate gradients
    they read are 16-bit (gate_grad_dtype), and the streaming kernels take K in chunks of up
    to 64 on tensor-core dtypes (block_sizes); with proj_size the projection's gradient
    (dhp) is 16-bit too."""
    for proj in (0, 12):
        args = _lstm_args(5, 3, 16, 32, proj, True, dtype, lengths=True)
        _compare(functional.lstm_layer, args, reverse=True, tol=TOL[dtype])
    args = _gru_args(5, 3, 16, 32, True, dtype, lengths=True)
    _compare(functional.gru_layer, args, reverse=False, tol=TOL[dtype])
    # tanh: relu's gradient mask flips wherever a pre-activation near zero changes sign under
    # 16-bit rounding, so its gradients are compared in fp64/fp32 only
    args = _rnn_args(5, 3, 16, 32, True, dtype, lengths=True)
    _compare(_rnn_layer("tanh"), args, reverse=True, tol=TOL[dtype])


@pytest.mark.parametrize("dtype", [*LOW, torch.float32])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gate_gradients_are_kept_in_16_bit_for_16_bit_layers(cell, dtype, monkeypatch):
    """The backward's gate-gradient buffer (T+1, B, G*H), whose rows each step's recurrent
    product broadcasts to every program, is in the layer's dtype for fp16/bf16 (every
    product casts it to that dtype anyway: half the bytes a step) and in fp32 for fp32; so
    is a projection's gradient (dhp)."""
    from fusedrnn.kernels import common, gru, lstm, rnn
    made = []
    real = common.empty

    def recording_empty(*shape, dtype, device):  # the buffers the backward launcher makes
        if sys._getframe(1).f_code.co_name.endswith("backward_steps"):
            made.append((tuple(shape), dtype))
        return real(*shape, dtype=dtype, device=device)

    monkeypatch.setattr({"lstm": lstm, "gru": gru, "rnn": rnn}[cell], "empty", recording_empty)
    T, B, H = 4, 3, 16
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    args = {"lstm": _lstm_args(T, B, 8, H, 0, True, dtype, lengths=False),
            "gru": _gru_args(T, B, 8, H, True, dtype, lengths=False),
            "rnn": _rnn_args(T, B, 8, H, True, dtype, lengths=False)}[cell]
    fn = {"lstm": functional.lstm_layer, "gru": functional.gru_layer,
          "rnn": _rnn_layer("tanh")}[cell]
    _run(fn, args, "triton", reverse=False)
    assert ((T + 1, B, G * H), dtype) in made, made
    if cell == "lstm":  # and the projection's gradient (T, B, P), which the gates' read
        _run(fn, _lstm_args(T, B, 8, H, 6, True, dtype, lengths=False), "triton", False)
        assert ((T, B, 6), dtype) in made, made


def test_launcher_rejects_bad_shapes():
    args = _lstm_args(3, 2, 4, 8, 0, True, torch.float32, lengths=False)
    from fusedrnn.kernels import lstm
    bad = dict(args, h0=torch.zeros(2, 9, device=DEVICE))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 8\)"):
        lstm.lstm_forward(**bad, lengths=None, reverse=False, save=False)
    bad = dict(args, w_hh=args["w_hh"].double())
    with pytest.raises(ValueError, match="w_hh must have x's dtype"):
        lstm.lstm_forward(**bad, lengths=None, reverse=False, save=False)
    with pytest.raises(ValueError, match="lengths must be integers"):
        lstm.lstm_forward(**args, lengths=torch.ones(2, device=DEVICE), reverse=False,
                          save=False)
