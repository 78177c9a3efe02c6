"""Layer and cell ops, and the dispatch that sends each call to a backend.

Building blocks, from the bottom up:
- ``lstm_layer`` / ``gru_layer`` / ``rnn_layer``: one layer, one direction, time-major input,
  optional lengths.
- ``lstm_cell`` / ``gru_cell`` / ``rnn_cell``: one step.
- ``lstm`` / ``gru`` / ``rnn``: the multi-layer, optionally bidirectional stack with
  inter-layer dropout and PackedSequence data, with the same arguments as ``torch._VF.lstm``
  / ``torch._VF.gru`` / ``torch._VF.rnn_tanh`` (``rnn`` adds ``nonlinearity``); the drop-in
  modules call these.

The layer and cell ops take ``backend`` in {"auto", "triton", "reference"}; "auto" picks the
Triton kernels where they can run and the reference otherwise. ``lstm`` / ``gru`` also take
"native", which is torch's own op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, _VF

from fusedrnn import backend as _backend
from fusedrnn import episodes, native_ops
from fusedrnn import reference


def _layer_backend(backend: str, x: Tensor) -> str:
    chosen = _backend.resolve(backend, x.device, x.dtype)
    if chosen == "native":
        if backend == "native":
            raise ValueError("backend='native' is only available for the whole stack "
                             "(fusedrnn.functional.lstm / gru and the modules), not per layer")
        # "auto" off CUDA, or under tracing / ONNX export: the layer ops have no native
        # counterpart
        chosen = "reference"
    return chosen


def _triton_ops():
    # imported lazily: the kernels need triton, which the reference path does not
    from fusedrnn import autograd
    return autograd


# ----------------------------------------------------------------------------------------
# one layer, one direction
# ----------------------------------------------------------------------------------------
def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None = None, b_hh: Tensor | None = None,
               w_hr: Tensor | None = None, lengths: Tensor | None = None,
               reverse: bool = False, backend: str = "auto", cell_states: bool = False,
               resets: Tensor | None = None, hmask: Tensor | None = None, zoneout=None):
    """One LSTM layer over time-major x (T, B, I); h0 (B, P or H), c0 (B, H).

    ``lengths`` (B,) holds each sequence's length: past it a sequence keeps its state and
    outputs zeros. ``resets`` (T, B) bool restarts the state from (h0, c0) where set
    (fusedrnn/episodes.py has the rule). Returns (out (T, B, P or H), h_n, c_n), and with
    ``cell_states`` every cell state c_t (T, B, H) as well (zero past a sequence's length;
    differentiable). ``hmask`` (B, P or H) multiplies h_{t-1} in the recurrent product
    (variational dropout) and ``zoneout`` is (seed, thresh_h, thresh_c, mode)
    (fusedrnn.regularizers.zoneout_spec); fusedrnn/reference.py has their math.
    """
    if resets is not None:
        _check_layer_resets(resets, x)
    _check_hmask(hmask, h0)
    if zoneout is not None and w_hr is not None:
        raise ValueError("fusedrnn: zoneout does not run with proj_size (w_hr)")
    if _layer_backend(backend, x) == "triton":
        return _triton_ops().lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                        reverse, cell_states, hmask, zoneout, resets)
    return reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                                cell_states, resets, hmask, zoneout)


def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None,
              lengths: Tensor | None = None, reverse: bool = False, backend: str = "auto",
              resets: Tensor | None = None, hmask: Tensor | None = None, zoneout=None):
    """One GRU layer over time-major x (T, B, I); h0 (B, H); ``resets``, ``hmask`` and
    ``zoneout`` (of h) as :func:`lstm_layer`'s. Returns (out (T, B, H), h_n)."""
    if resets is not None:
        _check_layer_resets(resets, x)
    _check_hmask(hmask, h0)
    if _layer_backend(backend, x) == "triton":
        return _triton_ops().gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, hmask,
                                       resets, zoneout)
    return reference.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, resets, hmask,
                               zoneout)


def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None,
              lengths: Tensor | None = None, reverse: bool = False,
              nonlinearity: str = "tanh", backend: str = "auto",
              resets: Tensor | None = None, hmask: Tensor | None = None):
    """One plain RNN layer ("tanh" or "relu") over time-major x (T, B, I); h0 (B, H);
    ``resets`` and ``hmask`` as :func:`lstm_layer`'s. Returns (out (T, B, H), h_n)."""
    _check_nonlinearity(nonlinearity)
    if resets is not None:
        _check_layer_resets(resets, x)
    _check_hmask(hmask, h0)
    if _layer_backend(backend, x) == "triton":
        return _triton_ops().rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                       nonlinearity, hmask, resets)
    return reference.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity,
                               resets, hmask)


def _check_hmask(hmask, h0: Tensor) -> None:
    """The variational state mask must be shaped, typed and placed like the state."""
    if hmask is not None and (hmask.shape != h0.shape or hmask.dtype != h0.dtype
                              or hmask.device != h0.device):
        raise ValueError(f"fusedrnn: hmask must be {tuple(h0.shape)} {h0.dtype} on "
                         f"{h0.device} like the state, got {tuple(hmask.shape)} "
                         f"{hmask.dtype} on {hmask.device}")


def _check_layer_resets(resets, x: Tensor) -> None:
    episodes.check_resets(resets, x.shape[0], x.shape[1], x.device)


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


# ----------------------------------------------------------------------------------------
# cells: one step, (B, I) input
# ----------------------------------------------------------------------------------------
def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None, backend: str = "auto"):
    """One LSTM step. Returns (h', c')."""
    if _backend.resolve(backend, x.device, x.dtype) == "native":
        return _VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    if _layer_backend(backend, x) == "triton":
        # a cell is a layer of one step: the same kernels and autograd Function
        _, h_new, c_new = _triton_ops().lstm_layer(x.unsqueeze(0), h, c, w_ih, w_hh, b_ih,
                                                   b_hh, None, None, False)
        return h_new, c_new
    return reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None, backend: str = "auto"):
    """One GRU step. Returns h'."""
    if _backend.resolve(backend, x.device, x.dtype) == "native":
        return _VF.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    if _layer_backend(backend, x) == "triton":
        return _triton_ops().gru_layer(x.unsqueeze(0), h, w_ih, w_hh, b_ih, b_hh, None,
                                       False)[1]
    return reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None,
             nonlinearity: str = "tanh", backend: str = "auto"):
    """One plain RNN step ("tanh" or "relu"). Returns h'."""
    _check_nonlinearity(nonlinearity)
    if _backend.resolve(backend, x.device, x.dtype) == "native":
        op = _VF.rnn_tanh_cell if nonlinearity == "tanh" else _VF.rnn_relu_cell
        return op(x, h, w_ih, w_hh, b_ih, b_hh)
    if _layer_backend(backend, x) == "triton":
        return _triton_ops().rnn_layer(x.unsqueeze(0), h, w_ih, w_hh, b_ih, b_hh, None,
                                       False, nonlinearity)[1]
    return reference.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)


# ----------------------------------------------------------------------------------------
# the stack: layers x directions, dropout between layers, packed or padded input
# ----------------------------------------------------------------------------------------
def _packed_to_padded(data: Tensor, batch_sizes: Tensor):
    """PackedSequence data (N, I) -> time-major padded (T, B, I), lengths (B,), index.

    The packed order is row-major over the (T, B) grid of valid positions, so one index
    built from ``batch_sizes`` (on the CPU, no device sync) moves data both ways.
    """
    T, B = batch_sizes.numel(), int(batch_sizes[0])
    rows = int(batch_sizes.sum())
    if rows != data.shape[0]:  # (torch's own kernels fail inside with an index error)
        raise RuntimeError(f"PackedSequence data has {data.shape[0]} rows but its "
                           f"batch_sizes add up to {rows}: was it packed with lengths past "
                           f"the padded input's length?")
    valid = torch.arange(B) < batch_sizes.unsqueeze(1)  # (T, B)
    index = valid.flatten().nonzero().squeeze(1).to(data.device)
    padded = data.new_zeros(T * B, data.shape[-1]).index_copy(0, index, data)
    return padded.view(T, B, -1), valid.sum(0).to(data.device), index


def _check_state(name: str, state: Tensor, x: Tensor) -> None:
    if state.dtype != x.dtype:
        raise RuntimeError(f"{name} dtype ({state.dtype}) does not match input dtype "
                           f"({x.dtype}); pass {name}.to({x.dtype})")
    if state.device != x.device:
        raise RuntimeError(f"Input and hidden tensors are not at the same device, found input "
                           f"tensor at {x.device} and {name} tensor at {state.device}")


def _check_weights(weights, x: Tensor) -> None:
    for w in weights:
        if w.device != x.device:
            raise RuntimeError(f"Input and parameter tensors are not at the same device, found "
                               f"input tensor at {x.device} and parameter tensor at {w.device}")
        if w.dtype != x.dtype:
            raise ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype "
                             f"({w.dtype})")


def _split_weights(weights, has_biases: bool, n_groups: int):
    """Flat weight list -> per (layer, direction) tuple (w_ih, w_hh, b_ih, b_hh, w_hr)."""
    per = len(weights) // n_groups
    groups = []
    for k in range(n_groups):
        ws = list(weights[k * per:(k + 1) * per])
        w_ih, w_hh = ws[0], ws[1]
        b_ih, b_hh = (ws[2], ws[3]) if has_biases else (None, None)
        w_hr = ws[-1] if per in (3, 5) else None  # proj_size adds weight_hr last
        groups.append((w_ih, w_hh, b_ih, b_hh, w_hr))
    return groups


def _paired_layer(cell, x, lengths, h0, c0, groups, layer, nonlinearity, h_n, c_n, resets,
                  hmasks, zoneout):
    """Both directions of one layer on the Triton kernels; appends the states to h_n, c_n
    and returns the layer's output."""
    params = []
    for k in (2 * layer, 2 * layer + 1):
        w_ih, w_hh, b_ih, b_hh, w_hr = groups[k]
        if cell == "lstm":
            params.append((h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr))
        else:
            params.append((h0[k], w_ih, w_hh, b_ih, b_hh))
    extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    if resets is not None:
        extra["resets"] = resets
    if hmasks[0] is not None:
        extra["hmasks"] = hmasks
    if zoneout is not None and cell != "rnn":
        extra["zoneout"] = zoneout
    out, *states = _triton_ops().bi_layer(cell, x, lengths, *params, **extra)
    if cell == "lstm":
        h_n += [states[0], states[2]]
        c_n += [states[1], states[3]]
    else:
        h_n += states
    return out


def _stack(cell: str, input: Tensor, batch_sizes: Tensor | None, hx, weights,
           has_biases: bool, num_layers: int, dropout: float, train: bool,
           bidirectional: bool, batch_first: bool, backend: str, nonlinearity: str = "tanh",
           cell_states: bool = False, resets: Tensor | None = None, recurrent=None):
    lstm_mode = cell == "lstm"
    h0, c0 = hx if lstm_mode else (hx, None)
    _check_state("hx[0]" if lstm_mode else "hx", h0, input)
    if lstm_mode:
        _check_state("hx[1]", c0, input)
    _check_weights(weights, input)

    if batch_sizes is not None:
        x, lengths, index = _packed_to_padded(input, batch_sizes)
    else:
        if input.shape[1 if batch_first else 0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        x, lengths, index = (input.transpose(0, 1) if batch_first else input), None, None

    B = x.shape[1]
    if resets is not None:
        resets = _stack_resets(resets, input, batch_sizes, batch_first, index, x.shape)

    D = 2 if bidirectional else 1
    groups = _split_weights(weights, has_biases, num_layers * D)
    h_n, c_n = [], []
    # the Triton kernels run both directions of a layer together (one launch per pass where
    # they are weight-stationary); torch.compile sees one custom op per direction instead
    paired = D == 2 and backend == "triton" and not torch.compiler.is_compiling()

    cells = []
    for layer in range(num_layers):
        last = layer == num_layers - 1
        hmasks, zoneout = [None] * D, None
        if recurrent is not None:  # variational dropout of the layer's input, and the rest
            m = recurrent.input_mask(layer, B, x.shape[-1], x)
            x = x if m is None else x * m
            hmasks = [recurrent.state_mask(layer, d, B, h0.shape[-1], x) for d in range(D)]
            zoneout = recurrent.zoneout(layer)
        if paired and not (cell_states and last):  # (the paired launch returns no c_t)
            x = _paired_layer(cell, x, lengths, h0, c0, groups, layer, nonlinearity, h_n, c_n,
                              resets, hmasks, zoneout)
            if dropout > 0 and train and layer < num_layers - 1:
                x = F.dropout(x, p=dropout, training=True)
            continue
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh, w_hr = groups[k]
            hmask = hmasks[d]
            if lstm_mode:
                out, h, c, *cs = lstm_layer(x, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr,
                                            lengths, reverse=d == 1, backend=backend,
                                            cell_states=cell_states and last, resets=resets,
                                            hmask=hmask, zoneout=zoneout)
                c_n.append(c)
                cells += cs
            elif cell == "gru":
                out, h = gru_layer(x, h0[k], w_ih, w_hh, b_ih, b_hh, lengths,
                                   reverse=d == 1, backend=backend, resets=resets, hmask=hmask,
                                   zoneout=zoneout)
            else:
                out, h = rnn_layer(x, h0[k], w_ih, w_hh, b_ih, b_hh, lengths, reverse=d == 1,
                                   nonlinearity=nonlinearity, backend=backend, resets=resets,
                                   hmask=hmask)
            outs.append(out)
            h_n.append(h)
        x = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and train and layer < num_layers - 1:
            x = F.dropout(x, p=dropout, training=True)

    def laid_out(y):  # time-major padded -> the input's layout
        if index is not None:
            return y.reshape(-1, y.shape[-1]).index_select(0, index)
        return y.transpose(0, 1) if batch_first else y

    output = laid_out(x)
    hidden = torch.stack(h_n)
    if not lstm_mode:
        return output, hidden
    if cell_states:
        return output, hidden, torch.stack(c_n), laid_out(torch.cat(cells, dim=-1))
    return output, hidden, torch.stack(c_n)


def _stack_resets(resets, input: Tensor, batch_sizes, batch_first: bool, index, shape):
    """The stack's resets, checked in the input's layout ((T, B), (B, T) batch-first, or
    aligned with packed data), as time-major (T, B)."""
    T, B = shape[0], shape[1]
    if batch_sizes is not None:
        episodes.check_resets(resets, T, B, input.device, packed=input.shape[0])
        grid = torch.zeros(T * B, dtype=torch.bool, device=input.device)
        return grid.index_copy(0, index, resets).view(T, B)
    episodes.check_resets(resets, T, B, input.device, batch_first=batch_first)
    return resets.t() if batch_first else resets


def _stack_backend(backend: str, input: Tensor, dropout: float, train: bool,
                   num_layers: int, resets, recurrent, cell_states: bool = False) -> str:
    """The backend a stack runs on. Under torch.compile "auto" takes torch's op (inside
    fusedrnn.native_ops' custom op) only where it serves the call, else the reference."""
    chosen = _backend.resolve(backend, input.device, input.dtype, stack=True)
    fused_only = resets is not None or recurrent is not None or cell_states
    if (chosen == "native" and _backend.chose_by_auto(backend) and _backend.compiled_native()
            and (fused_only or not native_ops.serves(dropout, train, num_layers,
                                                     input.device))):
        return "reference"
    return chosen


def _compiled_native(input: Tensor, dropout: float, train: bool, num_layers: int) -> bool:
    """Whether torch's op runs inside fusedrnn.native_ops' custom op: under torch.compile
    where it serves (elsewhere, and for backend="native" where it does not, ``_VF``)."""
    return _backend.compiled_native() and native_ops.serves(dropout, train, num_layers,
                                                            input.device)


def _refuse_native(chosen: str, resets, recurrent=None) -> None:
    what = "resets" if resets is not None else None
    if recurrent is not None and recurrent.p_input + recurrent.p_between + recurrent.p_state:
        what = "variational_dropout"
    if recurrent is not None and any(recurrent.zoneout_rates):
        what = "zoneout"
    if chosen == "native" and what:
        raise ValueError(f"fusedrnn: torch's own op (backend='native', and under tracing or "
                         f"export) cannot serve {what}; use backend='auto', 'reference' or "
                         f"'triton'")


def lstm(input: Tensor, batch_sizes: Tensor | None, hx: tuple[Tensor, Tensor], weights,
         has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
         batch_first: bool = False, backend: str = "auto", cell_states: bool = False,
         resets: Tensor | None = None, recurrent=None):
    """Multi-layer LSTM with ``torch._VF.lstm``'s arguments. Returns (output, h_n, c_n), and
    with ``cell_states`` the last layer's cell states c_t in the output's layout
    ((T, B, D*H), batch-first, or packed data), zero past a sequence's length.

    ``input`` is padded (3-D) when ``batch_sizes`` is None, else PackedSequence data (2-D).
    ``weights`` is the module's flat weight list (per layer and direction: w_ih, w_hh,
    [b_ih, b_hh], [w_hr]). ``resets``: bool, shaped like the input without its features
    ((T, B), (B, T) batch-first, or (N,) for packed data); where set the state entering that
    step restarts from hx in every layer (fusedrnn/episodes.py has the exact rule).
    ``recurrent``: the pass's variational dropout and zoneout
    (fusedrnn.regularizers.Recurrent), or None.
    """
    chosen = _stack_backend(backend, input, dropout, train, num_layers, resets, recurrent,
                            cell_states)
    _refuse_native(chosen, resets, recurrent)
    if chosen == "native" and cell_states:
        raise ValueError("fusedrnn: torch's own LSTM op (backend='native', and under tracing "
                         "or export) does not return the cell states (return_cell_states); "
                         "use backend='auto', 'reference' or 'triton'")
    if chosen == "native":
        if _compiled_native(input, dropout, train, num_layers):
            return native_ops.run("lstm", input, batch_sizes, hx, weights, has_biases,
                                  num_layers, dropout, train, bidirectional, batch_first)
        if batch_sizes is None:
            return _VF.lstm(input, hx, weights, has_biases, num_layers, dropout, train,
                            bidirectional, batch_first)
        return _VF.lstm(input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train,
                        bidirectional)
    return _stack("lstm", input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, chosen, cell_states=cell_states,
                  resets=resets, recurrent=recurrent)


def gru(input: Tensor, batch_sizes: Tensor | None, hx: Tensor, weights, has_biases: bool,
        num_layers: int, dropout: float, train: bool, bidirectional: bool,
        batch_first: bool = False, backend: str = "auto", resets: Tensor | None = None,
        recurrent=None):
    """Multi-layer GRU with ``torch._VF.gru``'s arguments (``resets`` and ``recurrent``, its
    variational dropout, as :func:`lstm`'s). Returns (output, h_n)."""
    chosen = _stack_backend(backend, input, dropout, train, num_layers, resets, recurrent)
    _refuse_native(chosen, resets, recurrent)
    if chosen == "native":
        if _compiled_native(input, dropout, train, num_layers):
            return native_ops.run("gru", input, batch_sizes, hx, weights, has_biases,
                                  num_layers, dropout, train, bidirectional, batch_first)
        if batch_sizes is None:
            return _VF.gru(input, hx, weights, has_biases, num_layers, dropout, train,
                           bidirectional, batch_first)
        return _VF.gru(input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train,
                       bidirectional)
    return _stack("gru", input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, chosen, resets=resets,
                  recurrent=recurrent)


def rnn(input: Tensor, batch_sizes: Tensor | None, hx: Tensor, weights, has_biases: bool,
        num_layers: int, dropout: float, train: bool, bidirectional: bool,
        batch_first: bool = False, nonlinearity: str = "tanh", backend: str = "auto",
        resets: Tensor | None = None, recurrent=None):
    """Multi-layer plain RNN with ``torch._VF.rnn_tanh`` / ``rnn_relu``'s arguments (and
    ``nonlinearity``; ``resets`` and ``recurrent`` as :func:`lstm`'s). Returns (output,
    h_n)."""
    _check_nonlinearity(nonlinearity)
    chosen = _stack_backend(backend, input, dropout, train, num_layers, resets, recurrent)
    _refuse_native(chosen, resets, recurrent)
    if chosen == "native":
        if _compiled_native(input, dropout, train, num_layers):
            return native_ops.run(f"rnn_{nonlinearity}", input, batch_sizes, hx, weights,
                                  has_biases, num_layers, dropout, train, bidirectional,
                                  batch_first)
        op = _VF.rnn_tanh if nonlinearity == "tanh" else _VF.rnn_relu
        if batch_sizes is None:
            return op(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
                      batch_first)
        return op(input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train,
                  bidirectional)
    return _stack("rnn", input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                  train, bidirectional, batch_first, chosen, nonlinearity, resets=resets,
                  recurrent=recurrent)
