"""Recurrent regularizers (issue 14): weight_dropout, DropConnect on W_hh.

Semantics under test (fusedrnn/regularizers.py): in training, one mask per forward pass
per layer and direction, 0 with probability p else 1/(1-p), from one seed drawn from
torch's default generator; off (torch's module exactly) in eval and at p = 0.
"""
import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import regularizers
from rnncheck import assert_close

F64 = torch.float64
MODES = ["LSTM", "GRU", "RNN"]


def _pair(mode, p, backend, **kw):
    ref = getattr(nn, mode)(3, 6, num_layers=2, bidirectional=True, dtype=F64, **kw)
    ours = getattr(fusedrnn, mode)(3, 6, num_layers=2, bidirectional=True, dtype=F64,
                                   weight_dropout=p, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("mode", MODES)
def test_off_by_default_and_in_eval(mode):
    ref, ours = _pair(mode, 0.4, "reference")
    assert repr(getattr(fusedrnn, mode)(3, 6)) == repr(getattr(nn, mode)(3, 6))
    assert "weight_dropout=0.4" in repr(ours)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    ours.eval()
    assert_close(ours(x)[0], ref(x)[0], 1e-12, "eval")
    converted = fusedrnn.convert(getattr(nn, mode)(3, 6))
    assert getattr(converted, "weight_dropout", 0.0) == 0.0 and not converted._fused_only_option()


@pytest.mark.parametrize("p", [-0.1, 1.0, 2])
def test_bad_rate_names_the_keyword(p):
    with pytest.raises(ValueError, match="weight_dropout must be a probability"):
        fusedrnn.LSTM(3, 4, weight_dropout=p)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_training_equals_torch_on_the_masked_weights(mode, backend):
    """The output and gradients are torch's module run on W_hh * mask (the same masks from
    the same seed); the parameter's gradient is the masked weight's times the mask."""
    ref, ours = _pair(mode, 0.3, backend)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    torch.manual_seed(7)
    out = ours(x)[0]
    torch.manual_seed(7)
    seed = regularizers.draw_seed()
    names = ref._flat_weights_names
    masks = {n: regularizers.weight_mask(w, 0.3, seed, k)
             for k, (n, w) in enumerate(zip(names, ref._flat_weights))
             if n.startswith("weight_hh")}
    with torch.no_grad():
        for n, m in masks.items():
            getattr(ref, n).mul_(m)
    want = ref(x)[0]
    assert_close(out, want, 1e-10, "output")
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(out, [x, *ours.parameters()], g)
    want_grads = torch.autograd.grad(want, [x, *ref.parameters()], g)
    for (n, _), a, b in zip(ours.named_parameters(), got_grads[1:], want_grads[1:]):
        assert_close(a, b * masks[n] if n in masks else b, 1e-10, n)
    assert_close(got_grads[0], want_grads[0], 1e-10, "input")


def test_same_seed_same_masks_on_every_backend_and_new_masks_each_pass():
    outs = {}
    for backend in ("reference", "triton"):
        _, m = _pair("GRU", 0.5, backend)
        torch.manual_seed(0)
        m.load_state_dict(_pair("GRU", 0.5, "reference")[1].state_dict())
        x = torch.randn(4, 3, 3, dtype=F64)
        torch.manual_seed(11)
        first, second = m(x)[0], m(x)[0]
        torch.manual_seed(11)
        assert torch.equal(m(x)[0], first)  # repeats bit for bit
        assert not torch.equal(first, second)  # one mask per forward pass
        outs[backend] = first
    assert_close(outs["triton"], outs["reference"], 1e-10, "triton vs reference")


def test_drop_rate_and_scale():
    w = torch.empty(400, 300, dtype=F64)
    for p in (0.1, 0.5):
        m = regularizers.weight_mask(w, p, seed=3, index=1)
        dropped = (m == 0).double().mean().item()
        n = m.numel()
        assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5  # 5 sigma
        assert torch.all((m == 0) | (m == 1 / (1 - p)))
    a = regularizers.weight_mask(w, 0.5, seed=3, index=1)
    assert torch.equal(a, regularizers.weight_mask(w, 0.5, seed=3, index=1))
    assert not torch.equal(a, regularizers.weight_mask(w, 0.5, seed=3, index=5))


def test_native_raises_and_auto_runs_it_off_cuda():
    _, ours = _pair("LSTM", 0.3, "native")
    x = torch.randn(4, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match="weight_dropout is set"):
        ours(x)
    ours.eval()
    ours(x)  # off in eval: torch's own op runs
    _, auto = _pair("LSTM", 0.3, "auto")
    _, ref = _pair("LSTM", 0.3, "reference")
    ref.load_state_dict(auto.state_dict())
    torch.manual_seed(5)
    a = auto(x)[0]
    torch.manual_seed(5)
    assert torch.equal(a, ref(x)[0])
