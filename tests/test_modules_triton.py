"""Drop-in modules on backend="triton" against torch.nn: every option, forward and backward.

float64 under the interpreter (relative error <= 1e-10) and float32 with ieee dots (1e-5).
The launch counter proves the Triton kernels ran rather than a fallback.
"""
import pytest
import torch

from rnncheck import check_module_against_torch, random_configs, rnn_config, twin

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ["LSTM", "GRU", "RNN", "RNN_RELU"]


def _check(cfg, launches, dtype=torch.float64):
    check_module_against_torch(cfg, "triton", dtype=dtype, device=DEVICE)
    if cfg["B"] > 0:
        fwd = f"{cfg['mode'].lower()}_fwd_kernel"
        ran = launches[fwd] + launches["stationary_fwd_kernel"]
        assert ran > 0, "the Triton kernels did not run"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", [
    (1, False, False, True), (2, True, False, True), (2, False, True, False),
    (3, True, True, True), (1, True, True, False)])
def test_options(mode, dtype, num_layers, bidirectional, batch_first, bias, poison, launches):
    _check(rnn_config(mode=mode, num_layers=num_layers, bidirectional=bidirectional,
                      batch_first=batch_first, bias=bias), launches, dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [None, "unsorted"])
def test_lstm_proj(bidirectional, packed, kernel_mode, poison, launches):
    _check(rnn_config(num_layers=2, proj_size=3, bidirectional=bidirectional, packed=packed,
                      T=6, B=4), launches)



@pytest.mark.parametrize("mode", MODES)
# (a PackedSequence is time-major whatever batch_first says: one of each, not the four
# combinations, for the suite's 15 minutes)
@pytest.mark.parametrize("packed,batch_first", [("sorted", False), ("unsorted", True)])
def test_packed(mode, packed, batch_first, kernel_mode, poison, launches):
    _check(rnn_config(mode=mode, packed=packed, num_layers=2, bidirectional=True, T=6, B=4,
                      batch_first=batch_first), launches)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hx,unbatched", [(True, True), (False, True), (False, False)])
def test_hx_and_unbatched(mode, hx, unbatched, poison, launches):
    _check(rnn_config(mode=mode, hx=hx, unbatched=unbatched, bidirectional=True), launches)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers(mode, poison, launches):
    _check(rnn_config(mode=mode, num_layers=2, dropout=1.0), launches)


def test_empty_batch(poison, launches):
    _check(rnn_config(B=0, hx=False), launches)


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell", "RNNCell", "RNNCell_relu"])
@pytest.mark.parametrize("batched", [True, False])
def test_cells(mode, batched, poison, launches):
    ref, ours = twin(mode, dict(input_size=6, hidden_size=20), "triton", device=DEVICE)
    lead = (3,) if batched else ()
    kw = dict(dtype=torch.float64, device=DEVICE)
    x = torch.randn(*lead, 6, **kw, requires_grad=True)
    h = torch.randn(*lead, 20, **kw, requires_grad=True)
    hx = (h, torch.randn(*lead, 20, **kw, requires_grad=True)) if mode == "LSTMCell" else h
    outs = [ours(x, hx), ref(x, hx)]
    outs = [list(o) if isinstance(o, tuple) else [o] for o in outs]
    w = [torch.randn_like(o) for o in outs[1]]
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,))]
    grads = []
    for m, o in zip((ours, ref), outs):
        loss = sum((a * b).sum() for a, b in zip(o, w))
        grads.append(torch.autograd.grad(loss, leaves + list(m.parameters())))
    for a, b in zip(outs[0] + list(grads[0]), outs[1] + list(grads[1])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert launches["stationary_fwd_kernel"] == 1  # one tile here: the default plan


@pytest.mark.parametrize("cfg", random_configs(16, seed=7, max_hidden=9, max_layers=2,
                                                max_T=4, max_B=3),
                         ids=lambda c: str(sorted(c.items())))
def test_random_configs(cfg, poison, launches):
    _check(cfg, launches)
