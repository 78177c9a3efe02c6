"""Bad input raises what torch.nn raises (same exception type) with a message naming it."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

BACKENDS = ["reference", "native", "triton"]


def _both(mode, *args, backend, **kwargs):
    ref = getattr(nn, mode)(*args, **kwargs)
    ours = getattr(fusedrnn, mode)(*args, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _same_error(ref, ours, *call, match=None):
    with pytest.raises(Exception) as want:
        ref(*call)
    with pytest.raises(want.type, match=match):
        ours(*call)


X = torch.randn(5, 2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(1, 2, 3, 4),), "Expected input to be 2D or 3D"),
    ((torch.randn(5, 2, 4),), "input_size"),
    ((X.double(),), "dtype|got type"),  # (torch 2.10: "input must have the type ...")
    ((X.long(),), "dtype|got type"),
    ((X, (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))), r"hidden\[0\] size"),
    ((X, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 5))), r"hidden\[1\] size"),
    ((X, (torch.zeros(2, 4), torch.zeros(2, 4))), "should also be 3-D"),
    ((torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))), "should also be 2-D"),
    ((torch.randn(0, 2, 3),), "sequence length"),
])
def test_lstm_errors(backend, call, match):
    ref, ours = _both("LSTM", 3, 4, 2, backend=backend)
    _same_error(ref, ours, *call, match=match)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(5, 2, 4),), "input_size"),
    ((X, torch.zeros(1, 3, 4)), "hidden size"),
    ((X, torch.zeros(2, 4)), "should also be 3-D"),
    ((torch.randn(5, 3), torch.zeros(1, 1, 4)), "should also be 2-D"),
])
def test_gru_errors(backend, call, match):
    ref, ours = _both("GRU", 3, 4, backend=backend)
    _same_error(ref, ours, *call, match=match)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(1, 2, 3, 4),), "Expected input to be 2D or 3D, got 4D tensor instead"),
    ((torch.randn(5, 2, 4),), "input_size"),
    ((X.double(),), "dtype|got type"),
    ((X, torch.zeros(2, 3, 4)), "hidden size"),
    ((X, torch.zeros(2, 4)), "should also be 3-D"),
    ((torch.randn(5, 3), torch.zeros(2, 1, 4)), "should also be 2-D"),
    ((torch.randn(0, 2, 3),), "sequence length"),
])
def test_rnn_errors(backend, nonlinearity, call, match):
    ref, ours = _both("RNN", 3, 4, 2, nonlinearity=nonlinearity, backend=backend)
    _same_error(ref, ours, *call, match=match)


def test_rnn_nonlinearity_errors():
    for mod in (nn, fusedrnn):
        with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
            mod.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fusedrnn.functional.rnn_layer(X, torch.zeros(2, 4), torch.zeros(4, 3),
                                      torch.zeros(4, 4), nonlinearity="gelu")
    cell = fusedrnn.RNNCell(3, 4, backend="reference")
    cell.nonlinearity = "gelu"  # torch's cell checks it at call time
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        cell(torch.randn(2, 3))


def test_hidden_dtype_and_packed_hidden_shape_are_named():
    ours = fusedrnn.LSTM(3, 4, backend="reference")
    with pytest.raises(RuntimeError, match=r"hx\[0\] dtype"):
        ours(X, (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"hx\[1\] dtype"):
        ours(X, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, dtype=torch.float64)))
    packed = pack_padded_sequence(X, [5, 3])
    with pytest.raises(RuntimeError,
                       match=r"Expected hidden\[0\] size \(1, 2, 4\), got \[1, 3, 4\]"):
        ours(packed, (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(RuntimeError, match="input_size"):
        ours(pack_padded_sequence(torch.randn(5, 2, 7), [5, 3]))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_packed_lengths_past_the_input_are_named(backend):
    """pack_padded_sequence takes lengths past the padded input's length without a word;
    torch's RNNs then fail inside (an index past the data); ours say what is wrong."""
    packed = pack_padded_sequence(torch.randn(3, 2, 3), torch.tensor([3, 4]),
                                  enforce_sorted=False)
    for mode in ("LSTM", "GRU"):
        ref, ours = _both(mode, 3, 4, backend=backend)
        _same_error(ref, ours, packed, match="6 rows but its batch_sizes add up to 7")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("kwargs,exc", [
    (dict(input_size=0, hidden_size=4), ValueError),
    (dict(input_size=3, hidden_size=-1), ValueError),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError),
    (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError),
    (dict(input_size=3, hidden_size=4, bias=1), TypeError),
])
def test_constructor_errors(mode, kwargs, exc):
    """As torch's own: torch 2.13 raises on each of these, 2.10 accepts input_size=0 and
    bias=1 (fusedrnn then builds too)."""
    try:
        getattr(nn, mode)(**kwargs)
    except exc:
        with pytest.raises(exc):
            getattr(fusedrnn, mode)(**kwargs)
    else:
        assert kwargs in (dict(input_size=0, hidden_size=4),
                          dict(input_size=3, hidden_size=4, bias=1)), "torch accepted it"
        getattr(fusedrnn, mode)(**kwargs)


@pytest.mark.parametrize("proj_size", [4, 5, -1])
def test_proj_size_errors(proj_size):
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LSTM(3, 4, proj_size=proj_size)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedrnn.LSTM(3, 4, backend="cudnn")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(2, 5),), "input_size"),
    ((torch.randn(2, 3), (torch.randn(3, 4), torch.randn(2, 4))), "batch size"),
    ((torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 4))), "hidden0 has inconsistent"),
    ((torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))), "hidden1 has inconsistent"),
    ((torch.randn(2, 3, 3),), "Expected input to be 1D or 2D"),
    ((torch.randn(2, 3).double(),), "dtype"),
    ((torch.randn(2, 3), torch.randn(2, 4)), "tuple of"),
    ((torch.randn(2, 3), torch.randn(1, 2, 4)), "tuple of"),
    ((torch.randn(2, 3), (torch.randn(2, 4),) * 3), "two hidden states"),
])
def test_lstm_cell_errors(backend, call, match):
    ref, ours = _both("LSTMCell", 3, 4, backend=backend)
    _same_error(ref, ours, *call, match=match)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(2, 3), torch.randn(3, 4)), "batch size"),
    ((torch.randn(2, 3), torch.randn(1, 2, 4)), "Expected hidden to be 1D or 2D"),
    ((torch.randn(2, 3), torch.randn(2, 5)), "hidden0 has inconsistent"),
])
def test_gru_cell_errors(backend, call, match):
    ref, ours = _both("GRUCell", 3, 4, backend=backend)
    _same_error(ref, ours, *call, match=match)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,match", [
    ((torch.randn(2, 5),), "input_size"),
    ((torch.randn(2, 3), torch.randn(3, 4)), "batch size"),
    ((torch.randn(2, 3), torch.randn(1, 2, 4)), "Expected hidden to be 1D or 2D"),
    ((torch.randn(2, 3), torch.randn(2, 5)), "hidden0 has inconsistent"),
    ((torch.randn(2, 3, 3),), "Expected input to be 1D or 2D"),
    ((torch.randn(2, 3).double(),), "dtype"),
])
def test_rnn_cell_errors(backend, call, match):
    ref, ours = _both("RNNCell", 3, 4, backend=backend)
    _same_error(ref, ours, *call, match=match)
