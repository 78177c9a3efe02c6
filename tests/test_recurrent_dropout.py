"""Variational (locked) dropout and zoneout (issue 14).

Semantics under test (fusedrnn/regularizers.py, fusedrnn/reference.py):
- variational_dropout (p_input, p_between, p_state), training only: one (B, N) mask per
  sequence and layer, the same at every step, 0 with probability p else 1/(1-p), on the
  first layer's input, each later layer's input, and per layer and direction on h_{t-1}
  where the recurrent product reads it (inside the kernels); a GRU's z * h_{t-1} and the
  carried state stay unmasked.
- zoneout (p_h, p_c), LSTM: per step and unit c_t = z_c c_{t-1} + (1 - z_c) c~_t and
  h_t = z_h h_{t-1} + (1 - z_h) o * tanh(c~_t); z is a Philox draw (the kernels'
  tl.randint, regenerated in backward) in training and the rate itself in eval.
- Every mask comes from one seed drawn from torch's generator per forward pass.
The kernels are checked against the reference; the reference against by-hand loops.
"""
import pytest
import torch
import triton
import triton.language as tl
from torch import nn

import fusedrnn
from fusedrnn import functional, reference, regularizers
from fusedrnn.kernels.common import zoneout_rate as kernel_zoneout_rate
from rnncheck import assert_close

F64 = torch.float64
MODES = ["LSTM", "GRU", "RNN"]
# the layer tests run on CUDA tensors where a GPU is present (bench/gpu_check.sh runs them
# there), else on CPU tensors under the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(cell, T=5, B=3, I=4, H=20, dtype=F64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    r = lambda *s: torch.randn(*s, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
    states = [r(B, H)] + ([r(B, H)] if cell == "lstm" else [])
    return [r(T, B, I), *states, r(G * H, I) * 0.3, r(G * H, H) * 0.3, r(G * H), r(G * H)]


def _layer(cell, backend, args, **kw):
    op = {"lstm": functional.lstm_layer, "gru": functional.gru_layer,
          "rnn": functional.rnn_layer}[cell]
    return op(*args, backend=backend, **kw)


def _outputs_and_grads(cell, backend, args, **kw):
    args = [a.detach().requires_grad_() for a in args]
    res = _layer(cell, backend, args, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=F64).to(r)).sum() for r in res)
    return list(res) + list(torch.autograd.grad(loss, args))


# ----------------------------------------------------------------------------------------
# the draw: the kernels' Philox and the reference's are the same bits
# ----------------------------------------------------------------------------------------
@triton.jit
def _rate_kernel(out_ptr, seed, thresh, t, B, N, STREAM: tl.constexpr, BB: tl.constexpr,
                 BN: tl.constexpr, MODE: tl.constexpr):
    o_b = tl.arange(0, BB).to(tl.int64)
    o_n = tl.arange(0, BN)
    z = kernel_zoneout_rate(seed, thresh, STREAM, tl.full((), 0, tl.int32) + t, o_b, o_n, B, N,
                            MODE)
    tl.store(out_ptr + o_b[:, None] * BN + o_n[None, :], z)


@pytest.mark.parametrize("seed", [0, 12345, 2 ** 61 + 987654321])
@pytest.mark.parametrize("stream", [0, 1, 3])
@pytest.mark.parametrize("mode", [1, 2])
def test_kernel_draw_equals_reference_draw(seed, stream, mode):
    B, N, t = 8, 32, 7
    spec = regularizers.zoneout_spec(0.3, 0.6, seed, mode == 1)
    got = torch.full((B, N), float("nan"))
    _rate_kernel[(1,)](got, seed, spec[1 + stream % 2], t, B, N, stream, B, N, mode)
    want = regularizers.zoneout_rate(spec, t, stream, B, N, "cpu", torch.float32)
    assert torch.equal(got, want)
    if mode == 1:
        assert set(got.unique().tolist()) <= {0.0, 1.0}


def test_zoneout_draw_rate_and_independence():
    spec = regularizers.zoneout_spec(0.3, 0.7, 99, True)
    B, N = 64, 256
    z_h = torch.stack([regularizers.zoneout_rate(spec, t, 0, B, N, "cpu", F64)
                       for t in range(4)])
    z_c = regularizers.zoneout_rate(spec, 0, 1, B, N, "cpu", F64)
    z_rev = regularizers.zoneout_rate(spec, 0, 2, B, N, "cpu", F64)
    # 16384 draws a step: the rate within 5 standard deviations
    assert abs(z_h.mean().item() - 0.3) < 5 * (0.3 * 0.7 / z_h.numel()) ** 0.5
    assert abs(z_c.mean().item() - 0.7) < 5 * (0.3 * 0.7 / z_c.numel()) ** 0.5
    assert not torch.equal(z_h[0], z_h[1]) and not torch.equal(z_h[0], z_rev)
    assert regularizers.zoneout_rate(regularizers.zoneout_spec(0.3, 0.7, 99, False), 0, 0, 2,
                                     3, "cpu", F64).eq(round(0.3 * 2 ** 24) / 2 ** 24).all()


def test_sequence_mask_rate_and_scale():
    m = regularizers.sequence_mask(5, 1, 200, 300, 0.25, torch.empty(0, dtype=F64))
    assert set(m.unique().tolist()) == {0.0, 1 / 0.75}
    assert abs((m == 0).double().mean().item() - 0.25) < 5 * (0.25 * 0.75 / m.numel()) ** 0.5


# ----------------------------------------------------------------------------------------
# the reference against loops written by hand with torch's cells
# ----------------------------------------------------------------------------------------
def test_reference_lstm_matches_hand_loop_with_mask_and_zoneout():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("lstm", H=6)
    B, H = h0.shape
    hmask = regularizers.sequence_mask(3, 1, B, H, 0.4, x)
    spec = regularizers.zoneout_spec(0.3, 0.5, 11, True)
    cell = nn.LSTMCell(4, H, dtype=F64)
    with torch.no_grad():
        for p, v in zip(cell.parameters(), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(v)
    for reverse in (False, True):
        h, c, outs = h0, c0, {}
        for t in (range(4, -1, -1) if reverse else range(5)):
            hn, cn = cell(x[t], (h * hmask, c))
            z_h, z_c = (regularizers.zoneout_rate(spec, t, 2 * reverse + k, B, H, "cpu", F64)
                        for k in (0, 1))
            h, c = torch.where(z_h == 1, h, hn), torch.where(z_c == 1, c, cn)
            outs[t] = h
        out, h_n, c_n = reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                             reverse=reverse, hmask=hmask, zoneout=spec)
        assert_close(out, torch.stack([outs[t] for t in range(5)]), 1e-12, "out")
        assert_close(h_n, h, 1e-12, "h_n")
        assert_close(c_n, c, 1e-12, "c_n")


def test_reference_gru_masks_only_the_recurrent_product_and_zones_out_h():
    x, h0, w_ih, w_hh, b_ih, b_hh = _inputs("gru", H=6)
    hmask = regularizers.sequence_mask(3, 1, *h0.shape, 0.4, x)
    spec = regularizers.zoneout_spec(0.3, 0.0, 8, True)
    h = h0
    for t in range(x.shape[0]):
        gx, gh = x[t] @ w_ih.t() + b_ih, (h * hmask) @ w_hh.t() + b_hh
        r = torch.sigmoid(gx[:, :6] + gh[:, :6])
        z = torch.sigmoid(gx[:, 6:12] + gh[:, 6:12])
        n = torch.tanh(gx[:, 12:] + r * gh[:, 12:])
        zoned = regularizers.zoneout_rate(spec, t, 0, 3, 6, "cpu", F64) == 1
        h = torch.where(zoned, h, (1 - z) * n + z * h)  # the unmasked state
    got = reference.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, hmask=hmask, zoneout=spec)[1]
    assert_close(got, h, 1e-12)


# ----------------------------------------------------------------------------------------
# the kernels against the reference: every kernel kind, forward and backward
# ----------------------------------------------------------------------------------------
def _every_option(cell, args, reverse, training) -> dict:
    """The layer options all at once for _inputs' 6 steps of 3 rows: lengths, episode
    resets inside the sequences, the variational mask, zoneout, the LSTM's cell states."""
    B, H = args[1].shape
    resets = torch.zeros(6, B, dtype=torch.bool, device=DEVICE)
    resets[2, 0] = resets[4, 0] = resets[1, 2] = resets[3, 1] = True  # ([3, 1]: past length)
    kw = dict(reverse=reverse, lengths=torch.tensor([6, 2, 5], device=DEVICE), resets=resets,
              hmask=regularizers.sequence_mask(9, 1, B, H, 0.5, args[0]))
    if cell != "rnn":
        kw["zoneout"] = regularizers.zoneout_spec(0.3, 0.4, 2 ** 40 + 17, training)
    if cell == "lstm":
        kw["cell_states"] = True
    return kw


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_layer_kernels_match_reference(cell, reverse, training, kernel_mode, poison):
    """Everything at once, with lengths and episode resets inside the sequences: forward
    and backward (training), or the forward alone without saving (inference buffers)."""
    args = _inputs(cell, T=6, device=DEVICE)
    kw = _every_option(cell, args, reverse, training)
    if training:
        got = _outputs_and_grads(cell, "triton", args, **kw)
        want = _outputs_and_grads(cell, "reference", args, **kw)
    else:
        got, want = (_layer(cell, be, args, **kw) for be in ("triton", "reference"))
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 1e-10, f"{cell} result/gradient {k}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_splitk_backward_with_every_option(cell, reverse, poison, launches, monkeypatch):
    """The same on the backward split over K (kernels/splitk.py, 2 K parts): its update is
    the weight-stationary kernel's, on a part of each tile's rows."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    monkeypatch.setattr(planning, "FORCED_KSPLIT", 2)
    test_layer_kernels_match_reference(cell, reverse, True, "stationary", poison)
    assert launches["splitk_bwd_kernel"] == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("H", [20, 8])  # several tiles (the interpreter loops); one
def test_ll_forward_with_every_option(cell, H, poison, monkeypatch):
    """The weight-stationary forward exchanging h as tagged words (kernels/ll.py), fp32
    (the 64-bit words), with everything at once against the float64 reference, forward and
    backward: lengths, resets (the restart rows read h0, not the words), the variational
    mask (applied to the decoded words), zoneout, cell states."""
    from fusedrnn.kernels import plan as planning

    monkeypatch.setenv(planning.KERNEL_ENV, "stationary")
    monkeypatch.setattr(planning, "FORCED_LL", True)
    args = _inputs(cell, T=6, H=H, device=DEVICE)
    kw = _every_option(cell, args, True, True)
    got = _outputs_and_grads(cell, "triton", [a.float() for a in args],
                             **dict(kw, hmask=kw["hmask"].float()))
    want = _outputs_and_grads(cell, "reference", args, **kw)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 1e-5, f"{cell} result/gradient {k}")


def test_lstm_kernels_fp32_with_cell_states(kernel_mode, poison):
    args = _inputs("lstm", dtype=torch.float32)
    kw = dict(hmask=regularizers.sequence_mask(9, 1, 3, 20, 0.5, args[0]), cell_states=True,
              zoneout=regularizers.zoneout_spec(0.5, 0.2, 5, True))
    got = _outputs_and_grads("lstm", "triton", args, **kw)
    want = _outputs_and_grads("lstm", "reference", [a.double() for a in args],
                              **dict(kw, hmask=kw["hmask"].double()))
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 1e-5, f"result/gradient {k}")


def test_zoneout_keeps_the_previous_state_at_its_rate():
    """In the kernels' own output, h_t equals h_{t-1} exactly where the unit zoned out."""
    T, B, H = 16, 8, 32
    args = _inputs("lstm", T=T, B=B, H=H)
    spec = regularizers.zoneout_spec(0.4, 0.0, 123, True)
    out = _layer("lstm", "triton", args, zoneout=spec)[0]
    kept = (out[1:] == out[:-1]).double().mean().item()
    n = (T - 1) * B * H
    assert abs(kept - 0.4) < 5 * (0.4 * 0.6 / n) ** 0.5, kept


# ----------------------------------------------------------------------------------------
# the modules
# ----------------------------------------------------------------------------------------
def _module(mode, backend, **kw):
    torch.manual_seed(3)
    return getattr(fusedrnn, mode)(4, 6, num_layers=2, bidirectional=True, dtype=F64,
                                   backend=backend, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_module_triton_equals_reference_with_the_same_seed(mode, packed):
    kw = dict(variational_dropout=(0.2, 0.3, 0.4))
    if mode != "RNN":
        kw["zoneout"] = (0.3, 0.2) if mode == "LSTM" else 0.3
    results = {}
    for backend in ("reference", "triton"):
        m = _module(mode, backend, **kw)
        x = torch.randn(5, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
        x.requires_grad_()
        inp = x
        if packed:
            inp = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 4]),
                                                    enforce_sorted=False)
        torch.manual_seed(7)
        out, h = m(inp)
        out = out.data if packed else out
        h = torch.cat(h) if mode == "LSTM" else h
        results[backend] = [out, h, *torch.autograd.grad(out.sum() + h.sum(),
                                                         [x, *m.parameters()])]
    for k, (a, b) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(a, b, 1e-10, f"result/gradient {k}")


def test_input_mask_is_torch_on_the_masked_input():
    """variational_dropout=(p, 0, 0): torch's module on x times one (B, I) mask."""
    ref = nn.LSTM(4, 6, dtype=F64)
    ours = fusedrnn.LSTM(4, 6, dtype=F64, variational_dropout=(0.5, 0.0, 0.0),
                         backend="reference")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, dtype=F64)
    torch.manual_seed(1)
    got = ours(x)[0]
    torch.manual_seed(1)
    mask = regularizers.sequence_mask(regularizers.draw_seed(), 0, 3, 4, 0.5, x)
    assert_close(got, ref(x * mask)[0], 1e-12)
    assert (mask == 0).any() and (mask != 0).any()


def test_masks_repeat_under_manual_seed_and_change_each_pass():
    m = _module("GRU", "triton", variational_dropout=0.5)
    x = torch.randn(5, 3, 4, dtype=F64)
    torch.manual_seed(0)
    a, b = m(x)[0], m(x)[0]
    torch.manual_seed(0)
    assert torch.equal(m(x)[0], a)
    assert not torch.equal(a, b)
    m.eval()  # variational dropout is off in eval: torch's module exactly
    ref = nn.GRU(4, 6, num_layers=2, bidirectional=True, dtype=F64)
    ref.load_state_dict(m.state_dict())
    assert_close(m(x)[0], ref(x)[0], 1e-12)


def test_zoneout_in_eval_is_its_expectation_and_deterministic():
    m = _module("LSTM", "triton", zoneout=0.25).eval()
    x = torch.randn(5, 3, 4, dtype=F64)
    state = torch.get_rng_state()
    a = m(x)[0]
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    assert torch.equal(m(x)[0], a)
    m.backend = "reference"
    assert_close(m(x)[0], a, 1e-12)
    plain = _module("LSTM", "reference").eval()
    assert not torch.allclose(plain(x)[0], a)  # the expectation changed the output


def test_off_by_default_and_convert_leaves_them_off():
    for mode in MODES:
        assert repr(getattr(fusedrnn, mode)(3, 6)) == repr(getattr(nn, mode)(3, 6))
        c = fusedrnn.convert(getattr(nn, mode)(3, 6))
        assert not any(getattr(c, "variational_dropout", ()))
        assert not any(getattr(c, "zoneout", ()))
        assert c._fused_only_option() is None
    m = fusedrnn.LSTM(3, 6, variational_dropout=0.1, zoneout=(0.1, 0.2))
    assert "variational_dropout=0.1" in repr(m) and "zoneout=(0.1, 0.2)" in repr(m)
    assert list(m.state_dict()) == list(nn.LSTM(3, 6).state_dict())


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="variational_dropout must be a probability"):
        fusedrnn.LSTM(3, 4, variational_dropout=1.0)
    with pytest.raises(ValueError, match="variational_dropout must be a probability or a "
                                         "tuple of 3"):
        fusedrnn.GRU(3, 4, variational_dropout=(0.1, 0.2))
    with pytest.raises(ValueError, match="zoneout: fusedrnn runs it on the LSTM and the GRU"):
        fusedrnn.RNN(3, 4, zoneout=0.1)
    with pytest.raises(ValueError, match="zoneout: a GRU has no cell state"):
        fusedrnn.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="zoneout: not with proj_size"):
        fusedrnn.LSTM(3, 4, proj_size=2, zoneout=0.1)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="variational_dropout is set, and torch's own op"):
        fusedrnn.LSTM(3, 4, backend="native", variational_dropout=0.2)(x)
    with pytest.raises(ValueError, match="zoneout is set, and torch's own op"):
        fusedrnn.LSTM(3, 4, backend="native", zoneout=0.2).eval()(x)
    fusedrnn.LSTM(3, 4, backend="native", variational_dropout=0.2).eval()(x)  # off in eval
    args = _inputs("lstm", H=4)
    for backend in ("reference", "triton"):
        with pytest.raises(ValueError, match=r"hmask must be \(3, 4\) torch.float64"):
            _layer("lstm", backend, args, hmask=torch.ones(4, 3, dtype=F64))
        with pytest.raises(ValueError, match="zoneout does not run with proj_size"):
            functional.lstm_layer(args[0], args[1][:, :2], *args[2:4], args[4][:, :2],
                                  w_hr=torch.randn(2, 4, dtype=F64), backend=backend,
                                  zoneout=regularizers.zoneout_spec(0.1, 0.1, 1, True))


@pytest.mark.parametrize("mode", MODES)
def test_modules_with_resets_variational_dropout_and_zoneout(mode):
    x = torch.randn(6, 3, 4, dtype=F64)
    resets = torch.zeros(6, 3, dtype=torch.bool)
    resets[3, 0] = resets[2, 2] = True
    kw = dict(variational_dropout=(0.2, 0.3, 0.5), zoneout=0.0 if mode == "RNN" else 0.2)
    outs = {}
    for backend in ("reference", "triton"):
        m = _module(mode, backend, **kw)
        torch.manual_seed(4)
        out, h = m(x, resets=resets)
        outs[backend] = [out, *(h if mode == "LSTM" else [h])]
    for a, b in zip(outs["triton"], outs["reference"]):
        assert_close(a, b, 1e-10)


def test_gradcheck_through_the_kernels():
    """Finite differences against the kernels' backward, every option of the issue on."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs("lstm", T=4, B=2, I=2, H=3)
    resets = torch.tensor([[False, False], [False, True], [True, False], [False, False]])
    hmask = regularizers.sequence_mask(1, 1, 2, 3, 0.5, x)
    spec = regularizers.zoneout_spec(0.4, 0.4, 77, True)

    def layer(x, h0, c0, w_hh):
        return functional.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend="triton",
                                     resets=resets, hmask=hmask, zoneout=spec,
                                     lengths=torch.tensor([4, 3]))

    inputs = [t.detach().requires_grad_() for t in (x, h0, c0, w_hh)]
    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_bidirectional_pairs_with_every_option(mode, monkeypatch):
    """Weight-stationary: both directions in one launch per pass (each its own mask and
    zoneout stream, the shared resets), equal to the reference."""
    from fusedrnn.kernels import stationary
    from fusedrnn.kernels.plan import KERNEL_ENV

    monkeypatch.setenv(KERNEL_ENV, "stationary")
    pairs = []
    real = stationary.launch_pair
    monkeypatch.setattr(stationary, "launch_pair", lambda f, r: (pairs.append(1), real(f, r)))
    kw = dict(variational_dropout=(0.2, 0.3, 0.4), zoneout=0.0 if mode == "RNN" else 0.3)
    x = torch.randn(7, 3, 4, dtype=F64)
    resets = torch.rand(7, 3, generator=torch.Generator().manual_seed(1)) < 0.3
    results = {}
    for backend in ("reference", "triton"):
        m = _module(mode, backend, **kw)
        xb = x.clone().requires_grad_()
        torch.manual_seed(5)
        out = m(xb, resets=resets)[0]
        results[backend] = [out, *torch.autograd.grad(out.sum(), [xb, *m.parameters()])]
    for k, (a, b) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(a, b, 1e-10, f"result/gradient {k}")
    assert len(pairs) == 4  # 2 layers x (forward, backward)


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_proj_with_mask_and_resets(reverse, kernel_mode, poison):
    """proj_size: the mask is on the projected state the product reads (B, P)."""
    gen = torch.Generator().manual_seed(4)
    T, B, I, H, P = 6, 3, 4, 8, 5
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    args = [r(T, B, I), r(B, P), r(B, H), r(4 * H, I) * 0.3, r(4 * H, P) * 0.3, r(4 * H),
            r(4 * H), r(P, H) * 0.3]
    kw = dict(lengths=torch.tensor([6, 4, 5]), reverse=reverse,
              resets=torch.rand(T, B, generator=gen) < 0.4,
              hmask=regularizers.sequence_mask(2, 1, B, P, 0.3, args[0]))
    got = _outputs_and_grads("lstm", "triton", args, **kw)
    want = _outputs_and_grads("lstm", "reference", args, **kw)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 1e-10, f"result/gradient {k}")
