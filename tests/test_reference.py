"""fusedrnn.reference against torch.nn in float64, layer by layer and step by step."""
import pytest
import torch
from torch import nn

from fusedrnn import reference
from rnncheck import assert_close

F64 = torch.float64


@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_layer_matches_torch(proj_size, reverse):
    m = nn.LSTM(5, 7, proj_size=proj_size, bidirectional=reverse, dtype=F64)
    x = torch.randn(6, 3, 5, dtype=F64)
    P = proj_size or 7
    D = 2 if reverse else 1
    h0, c0 = torch.randn(D, 3, P, dtype=F64), torch.randn(D, 3, 7, dtype=F64)
    out, (h, c) = m(x, (h0, c0))
    sfx = "_reverse" if reverse else ""
    d = 1 if reverse else 0
    w = [getattr(m, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    w_hr = getattr(m, f"weight_hr_l0{sfx}") if proj_size else None
    o, hn, cn = reference.lstm_layer(x, h0[d], c0[d], *w, w_hr, reverse=reverse)
    assert_close(o, out[..., d * P:(d + 1) * P], 1e-12, "out")
    assert_close(hn, h[d], 1e-12, "h_n")
    assert_close(cn, c[d], 1e-12, "c_n")


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_layer_matches_torch(reverse):
    m = nn.GRU(4, 6, bidirectional=reverse, dtype=F64)
    x = torch.randn(5, 2, 4, dtype=F64)
    h0 = torch.randn(2 if reverse else 1, 2, 6, dtype=F64)
    out, h = m(x, h0)
    sfx, d = ("_reverse", 1) if reverse else ("", 0)
    w = [getattr(m, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    o, hn = reference.gru_layer(x, h0[d], *w, reverse=reverse)
    assert_close(o, out[..., d * 6:(d + 1) * 6], 1e-12, "out")
    assert_close(hn, h[d], 1e-12, "h_n")


def test_lengths_keep_state_and_zero_outputs():
    """Past its length a sequence outputs zeros and h_n is the state at its last step."""
    x = torch.randn(5, 2, 3, dtype=F64)
    w_ih, w_hh = torch.randn(16, 3, dtype=F64), torch.randn(16, 4, dtype=F64)
    h0, c0 = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    lengths = torch.tensor([5, 2])
    out, h, c = reference.lstm_layer(x, h0, c0, w_ih, w_hh, lengths=lengths)
    short, hs, cs = reference.lstm_layer(x[:2, 1:], h0[1:], c0[1:], w_ih, w_hh)
    assert torch.equal(out[2:, 1], torch.zeros_like(out[2:, 1]))
    assert_close(out[:2, 1:], short, 1e-14, "out")
    assert_close(h[1:], hs, 1e-14, "h_n")
    # reverse: the short sequence starts at its own last element
    out, h, c = reference.lstm_layer(x, h0, c0, w_ih, w_hh, lengths=lengths, reverse=True)
    short, hs, cs = reference.lstm_layer(x[:2, 1:], h0[1:], c0[1:], w_ih, w_hh, reverse=True)
    assert_close(out[:2, 1:], short, 1e-14, "reverse out")
    assert_close(h[1:], hs, 1e-14, "reverse h_n")


def test_cells_match_torch():
    lc, gc = nn.LSTMCell(3, 5, dtype=F64), nn.GRUCell(3, 5, dtype=F64)
    x, h, c = (torch.randn(4, k, dtype=F64) for k in (3, 5, 5))
    want_h, want_c = lc(x, (h, c))
    got_h, got_c = reference.lstm_cell(x, h, c, lc.weight_ih, lc.weight_hh, lc.bias_ih, lc.bias_hh)
    assert_close(got_h, want_h, 1e-14, "lstm h")
    assert_close(got_c, want_c, 1e-14, "lstm c")
    got = reference.gru_cell(x, h, gc.weight_ih, gc.weight_hh, gc.bias_ih, gc.bias_hh)
    assert_close(got, gc(x, h), 1e-14, "gru h")
