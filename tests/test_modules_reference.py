"""Drop-in modules on backend="reference" against torch.nn in float64: outputs and gradients."""
import pytest
import torch

import fusedrnn
from rnncheck import (assert_all_close, check_module_against_torch, make_rnn_inputs,
                      module_kwargs, outputs_and_grads, random_configs, rnn_config, twin)

MODES = ["LSTM", "GRU", "RNN", "RNN_RELU"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hidden", [1, 20, 33])
@pytest.mark.parametrize("T,B", [(1, 1), (5, 3), (2, 1)])
def test_sizes(mode, hidden, T, B):
    check_module_against_torch(rnn_config(mode=mode, hidden_size=hidden, T=T, B=B), "reference")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_options(mode, num_layers, bidirectional, batch_first, bias):
    check_module_against_torch(rnn_config(mode=mode, num_layers=num_layers, bias=bias,
                                          bidirectional=bidirectional,
                                          batch_first=batch_first), "reference")


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [1, 3])
def test_lstm_proj(num_layers, bidirectional, proj_size):
    check_module_against_torch(rnn_config(num_layers=num_layers, bidirectional=bidirectional,
                                          proj_size=proj_size), "reference")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", ["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed(mode, packed, bidirectional, batch_first):
    check_module_against_torch(rnn_config(mode=mode, packed=packed, num_layers=2, T=6, B=4,
                                          bidirectional=bidirectional,
                                          batch_first=batch_first,
                                          proj_size=2 if mode == "LSTM" else 0), "reference")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hx", [True, False])
@pytest.mark.parametrize("unbatched", [True, False])
def test_hx_and_unbatched(mode, hx, unbatched):
    check_module_against_torch(rnn_config(mode=mode, hx=hx, unbatched=unbatched, num_layers=2,
                                          bidirectional=True), "reference")


def test_empty_batch():
    check_module_against_torch(rnn_config(B=0, hx=False), "reference")


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers(mode):
    """Dropout p=1 zeroes every layer's input but the first's: deterministic, so comparable."""
    check_module_against_torch(rnn_config(mode=mode, num_layers=3, dropout=1.0,
                                          bidirectional=True), "reference")


@pytest.mark.parametrize("mode", MODES)
def test_dropout_distribution(mode, monkeypatch):
    """p=0.5 in training: dropout runs between layers only, with torch's own F.dropout."""
    cfg = rnn_config(mode=mode, num_layers=3, dropout=0.5, hidden_size=64, T=3, B=8)
    ref, ours = twin(mode, module_kwargs(cfg), "reference")
    x, hx, _ = make_rnn_inputs(cfg)
    calls = []
    real_dropout = torch.nn.functional.dropout

    def spy(t, p, training):
        out = real_dropout(t, p, training)
        kept = t != 0  # (relu outputs zeros of its own)
        calls.append((p, training, (out[kept] == 0).double().mean().item()))
        return out

    monkeypatch.setattr(fusedrnn.functional.F, "dropout", spy)
    a, b = ours(x, hx)[0], ours(x, hx)[0]
    assert not torch.equal(a, b)
    assert len(calls) == 2 * (cfg["num_layers"] - 1)
    for p, training, zero_fraction in calls:
        assert p == 0.5 and training
        assert 0.4 < zero_fraction < 0.6
    calls.clear()
    ref.eval(), ours.eval()
    assert_all_close(outputs_and_grads(ours, cfg, x, hx, None),
                     outputs_and_grads(ref, cfg, x, hx, None), 1e-10)
    assert not calls


@pytest.mark.parametrize("cfg", random_configs(80, seed=2026), ids=lambda c: str(sorted(c.items())))
def test_random_configs(cfg):
    check_module_against_torch(cfg, "reference")


# ----------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------
def _cell_outputs_and_grads(m, x, hx, seed=0):
    x = x.detach().requires_grad_()
    hs = [] if hx is None else [h.detach().requires_grad_() for h in
                                (hx if isinstance(hx, tuple) else (hx,))]
    arg = None if hx is None else (tuple(hs) if isinstance(hx, tuple) else hs[0])
    out = m(x) if arg is None else m(x, arg)
    outs = list(out) if isinstance(out, tuple) else [out]
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    tensors = [x] + hs + list(m.parameters())
    names = ["x"] + [f"h{k}" for k in range(len(hs))] + [n for n, _ in m.named_parameters()]
    res = {f"out{k}": o for k, o in enumerate(outs)}
    res.update(zip(names, torch.autograd.grad(loss, tensors, allow_unused=True)))
    return res


@pytest.mark.parametrize("mode", ["LSTMCell", "GRUCell", "RNNCell", "RNNCell_relu"])
@pytest.mark.parametrize("hidden", [1, 20, 33])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3, None])  # None: unbatched
@pytest.mark.parametrize("with_hx", [True, False])
def test_cells(mode, hidden, bias, batch, with_hx):
    ref, ours = twin(mode, dict(input_size=6, hidden_size=hidden, bias=bias), "reference")
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, 6, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = torch.randn(*lead, hidden, dtype=torch.float64)
        if mode == "LSTMCell":
            hx = (hx, torch.randn(*lead, hidden, dtype=torch.float64))
    assert_all_close(_cell_outputs_and_grads(ours, x, hx), _cell_outputs_and_grads(ref, x, hx),
                     1e-10)
