"""All cell states (issue 14): LSTM(return_cell_states=True) returns every c_t of the last
layer, differentiable, on the reference and the Triton kernels (every kernel kind).

Semantics: forward returns (output, (h_n, c_n), cell_states); cell_states is laid out like
the output ((T, B, D*H), batch-first, packed, unbatched) and, like the output, is zero past
a sequence's length. The truth is a loop of torch's own nn.LSTMCell.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import functional
from rnncheck import assert_close

F64 = torch.float64


def _cell_loop(lstm, x, lengths):
    """(output, cell states) of a 1-layer, possibly bidirectional nn.LSTM on (T, B, I),
    stepping torch's LSTMCell by hand: a finished sequence keeps its state, outputs 0."""
    T, B, _ = x.shape
    outs, cells = [], []
    for d, sfx in enumerate(["", "_reverse"][:2 if lstm.bidirectional else 1]):
        cell = nn.LSTMCell(lstm.input_size, lstm.hidden_size, dtype=F64)
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(cell, n, getattr(lstm, f"{n}_l0{sfx}"))
        h = c = x.new_zeros(B, lstm.hidden_size)
        out, cs = [None] * T, [None] * T
        for t in (range(T - 1, -1, -1) if d else range(T)):
            h_new, c_new = cell(x[t], (h, c))
            valid = (lengths > t).unsqueeze(1)
            h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
            out[t], cs[t] = h_new * valid, c_new * valid
        outs.append(torch.stack(out))
        cells.append(torch.stack(cs))
    return torch.cat(outs, -1), torch.cat(cells, -1)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_cell_states_match_a_loop_of_torch_cells(backend, bidirectional, packed):
    torch.manual_seed(0)
    m = fusedrnn.LSTM(3, 5, bidirectional=bidirectional, return_cell_states=True,
                      backend=backend, dtype=F64)
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    lengths = torch.tensor([6, 4, 1]) if packed else torch.full((B,), T)
    want_out, want_cells = _cell_loop(m, x, lengths)
    if packed:
        out, (h, c), cells = m(pack_padded_sequence(x, lengths))
        out, cells = pad_packed_sequence(out)[0], pad_packed_sequence(cells)[0]
    else:
        out, (h, c), cells = m(x)
    assert cells.shape == (T, B, (2 if bidirectional else 1) * 5)
    assert_close(out, want_out, 1e-10, "output")
    assert_close(cells, want_cells, 1e-10, "cell states")
    # the last step's cell state (forward direction) is c_n
    assert_close(cells[lengths - 1, torch.arange(B), :5], c[0], 1e-12, "c_n")
    w = torch.randn_like(cells)
    got = torch.autograd.grad((cells * w).sum(), [x, *m.parameters()])
    ref = torch.autograd.grad((want_cells * w).sum(), [x, *m.parameters()])
    for k, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, 1e-10, f"gradient {k}")


@pytest.mark.parametrize("lengths,reverse,proj", [(False, False, 0), (False, True, 0),
                                                  (True, False, 0), (True, True, 0),
                                                  (True, True, 7)])
def test_layer_cell_states_every_kernel(reverse, lengths, proj, kernel_mode, poison):
    """The layer op on the kernels (step, streaming sequence, weight-stationary) against
    the reference: the cell states and the gradients their loss sends everywhere (and with
    proj_size, through the projection's phases)."""
    T, B, I, H = 5, 3, 4, 20
    K = proj or H
    kw = dict(dtype=F64)
    args = [torch.randn(T, B, I, **kw), torch.randn(B, K, **kw), torch.randn(B, H, **kw),
            torch.randn(4 * H, I, **kw) * 0.3, torch.randn(4 * H, K, **kw) * 0.3,
            torch.randn(4 * H, **kw), torch.randn(4 * H, **kw)]
    if proj:
        args.append(torch.randn(proj, H, **kw) * 0.3)
    lens = torch.tensor([5, 2, 4]) if lengths else None
    results = {}
    for backend in ("reference", "triton"):
        leaves = [a.clone().requires_grad_() for a in args]
        out, h, c, cells = functional.lstm_layer(*leaves, lengths=lens, reverse=reverse,
                                                 backend=backend, cell_states=True)
        g = torch.linspace(-1, 1, cells.numel(), dtype=F64).view(cells.shape)
        loss = (cells * g).sum() + out.square().sum() + c.sum()
        results[backend] = [out, cells, *torch.autograd.grad(loss, leaves)]
    for k, (a, b) in enumerate(zip(results["triton"], results["reference"])):
        assert_close(a, b, 1e-10, f"result {k}")


def test_layouts_inference_and_defaults():
    torch.manual_seed(1)
    m = fusedrnn.LSTM(3, 4, num_layers=2, batch_first=True, return_cell_states=True,
                      backend="triton", dtype=F64)
    x = torch.randn(2, 5, 3, dtype=F64)
    with torch.no_grad():
        out, (h, c), cells = m(x)
        assert cells.shape == (2, 5, 4) and not cells.requires_grad
        out1, _, cells1 = m(x[0])  # unbatched
    assert cells1.shape == (5, 4)
    assert_close(cells1, cells[0], 1e-12, "unbatched")
    assert repr(fusedrnn.LSTM(3, 4)) == repr(nn.LSTM(3, 4))
    assert "return_cell_states=True" in repr(m)
    assert len(fusedrnn.LSTM(3, 4)(x.float())) == 2  # off by default: torch's outputs


def test_native_raises_gru_refuses_auto_runs_reference_off_cuda():
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="return_cell_states is set"):
        fusedrnn.LSTM(3, 4, return_cell_states=True, backend="native")(x)
    with pytest.raises(ValueError, match="only an LSTM has cell states"):
        fusedrnn.GRU(3, 4, return_cell_states=True)
    auto = fusedrnn.LSTM(3, 4, return_cell_states=True)
    ref = fusedrnn.LSTM(3, 4, return_cell_states=True, backend="reference")
    ref.load_state_dict(auto.state_dict())
    assert torch.equal(auto(x)[2], ref(x)[2])
