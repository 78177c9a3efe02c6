"""Pure-PyTorch reference math: the oracle every kernel is tested against.

Readable on purpose and differentiable by autograd. PyTorch's conventions exactly:
LSTM gates are stacked i, f, g, o; GRU gates r, z, n with the reset gate applied to the
recurrent term *after* its bias: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); the plain
RNN is h' = tanh (or relu) of W_ih x + b_ih + W_hh h + b_hh.

Layers are time-major: x is (T, B, I). A layer runs one direction; with per-sequence
``lengths`` a sequence whose length is over keeps its state and outputs zeros, and the
reverse direction starts at each sequence's own last valid element. With ``resets`` (T, B)
bool, the state entering step t restarts from the initial state where ``resets[t]`` is set;
the reverse direction restarts where the forward one would start a new episode: entering
step t when ``resets[t + 1]`` is set (and t + 1 is within the sequence), so each episode runs
backwards from its own last step (fusedrnn/episodes.py).

Regularizers (issue 14; fusedrnn/regularizers.py draws them): ``hmask`` (B, K), the
variational recurrent-state mask, multiplies h_{t-1} where the recurrent product reads it
(only there: a GRU's z * h_{t-1} and the carried state stay unmasked); LSTM ``zoneout``
blends c_t = z_c c_{t-1} + (1 - z_c) c~_t and h_t = z_h h_{t-1} + (1 - z_h) h~_t, with
h~_t = o * tanh(c~_t), per step and unit (fusedrnn.regularizers.zoneout_rate); a GRU's
blends h_t the same way, h~_t the GRU's own new state.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusedrnn import regularizers


# ----------------------------------------------------------------------------------------
# pointwise steps: gates from precomputed projections, then the state update
# ----------------------------------------------------------------------------------------
def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """gates = x W_ih^T + b_ih + h W_hh^T + b_hh, shape (B, 4H). Returns (o*tanh(c'), c')."""
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new


def gru_pointwise(gx: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """gx = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, each (B, 3H). Returns h'."""
    xr, xz, xn = gx.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def rnn_pointwise(pre: Tensor, nonlinearity: str = "tanh") -> Tensor:
    """pre = x W_ih^T + b_ih + h W_hh^T + b_hh, shape (B, H). Returns h'."""
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


# ----------------------------------------------------------------------------------------
# cells: one step
# ----------------------------------------------------------------------------------------
def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step on (B, I) input. Returns (h', c'); h' is projected when w_hr is given."""
    return lstm_cell_from_proj(_linear(x, w_ih, b_ih), h, c, w_hh, b_hh, w_hr)


def lstm_cell_from_proj(gx, h, c, w_hh, b_hh=None, w_hr=None):
    """One LSTM step given the input projection gx = x W_ih^T + b_ih, shape (B, 4H)."""
    h_new, c_new = lstm_pointwise(gx + _linear(h, w_hh, b_hh), c)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step on (B, I) input. Returns h'."""
    return gru_pointwise(_linear(x, w_ih, b_ih), _linear(h, w_hh, b_hh), h)


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One plain RNN step on (B, I) input ("tanh" or "relu"). Returns h'."""
    return rnn_pointwise(_linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh), nonlinearity)


# ----------------------------------------------------------------------------------------
# layers: the time loop, one direction
# ----------------------------------------------------------------------------------------
def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def _valid(lengths: Tensor | None, t: int) -> Tensor | None:
    """(B, 1) bool mask of the sequences still running at time t, or None without lengths."""
    return None if lengths is None else (lengths > t).unsqueeze(-1)


def _restart(resets: Tensor | None, lengths: Tensor | None, t: int, reverse: bool):
    """(B, 1) bool mask of the sequences whose state entering step t is the initial state
    again (see the module doc), or None."""
    if resets is None:
        return None
    k = t + 1 if reverse else t  # the step that starts the episode
    if k >= resets.shape[0]:
        return None
    m = resets[k]
    return (m if lengths is None else m & (lengths > k)).unsqueeze(-1)


def _masked(h: Tensor, hmask: Tensor | None) -> Tensor:
    """h_{t-1} as the recurrent product reads it."""
    return h if hmask is None else h * hmask


def _in_time_order(steps: list, reverse: bool, x: Tensor, like: Tensor) -> Tensor:
    """(T, B, .) from the per-step tensors in the order the loop made them. Appended, not
    written at [t] into a list made first: the dynamo of torch 2.11 (the GPU machines')
    cannot trace that assignment where T is dynamic (torch.compile(dynamic=True))."""
    if not steps:
        return x.new_zeros(0, x.shape[1], like.shape[-1])
    return torch.stack(steps[::-1] if reverse else steps)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
               reverse=False, cell_states=False, resets=None, hmask=None, zoneout=None):
    """x (T, B, I), h0 (B, P or H), c0 (B, H). Returns out (T, B, P or H), h_n, c_n, and
    with ``cell_states`` every c_t (T, B, H), zero past a sequence's length like out."""
    xproj = _linear(x, w_ih, b_ih)  # all steps at once: no recurrence in the input term
    h, c = h0, c0
    B, H = c0.shape
    outs, cells = [], []  # in the loop's order (see _in_time_order)
    for t in _time_order(x.shape[0], reverse):
        r = _restart(resets, lengths, t, reverse)
        if r is not None:
            h, c = torch.where(r, h0, h), torch.where(r, c0, c)
        gates = xproj[t] + _linear(_masked(h, hmask), w_hh, b_hh)
        h_new, c_new = lstm_pointwise(gates, c)
        if zoneout is not None:
            rate = lambda which: regularizers.zoneout_rate(  # noqa: E731
                zoneout, t, 2 * int(reverse) + which, B, H, x.device, c.dtype)
            z_h, z_c = rate(0), rate(1)
            h_new, c_new = z_h * h + (1 - z_h) * h_new, z_c * c + (1 - z_c) * c_new
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        m = _valid(lengths, t)
        if m is None:
            h, c = h_new, c_new
            outs.append(h_new)
            cells.append(c_new)
        else:
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
            cells.append(torch.where(m, c_new, torch.zeros_like(c_new)))
    out = _in_time_order(outs, reverse, x, h0)
    if cell_states:
        return out, h, c, _in_time_order(cells, reverse, x, c0)
    return out, h, c


def _one_state_layer(x, h0, lengths, reverse, step, resets=None):
    """The time loop of a cell whose state is h alone: step(t, h) -> h'."""
    h = h0
    outs = []  # in the loop's order (see _in_time_order)
    for t in _time_order(x.shape[0], reverse):
        r = _restart(resets, lengths, t, reverse)
        if r is not None:
            h = torch.where(r, h0, h)
        h_new = step(t, h)
        m = _valid(lengths, t)
        if m is None:
            h = h_new
            outs.append(h_new)
        else:
            h = torch.where(m, h_new, h)
            outs.append(torch.where(m, h_new, torch.zeros_like(h_new)))
    return _in_time_order(outs, reverse, x, h0), h


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              resets=None, hmask=None, zoneout=None):
    """x (T, B, I), h0 (B, H). Returns out (T, B, H), h_n. ``zoneout`` blends h as the
    LSTM's does (its c threshold unused)."""
    xproj = _linear(x, w_ih, b_ih)

    def step(t, h):
        h_new = gru_pointwise(xproj[t], _linear(_masked(h, hmask), w_hh, b_hh), h)
        if zoneout is None:
            return h_new
        z_h = regularizers.zoneout_rate(zoneout, t, 2 * int(reverse), *h.shape, x.device,
                                        h.dtype)
        return z_h * h + (1 - z_h) * h_new

    return _one_state_layer(x, h0, lengths, reverse, step, resets)


def rnn_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              nonlinearity="tanh", resets=None, hmask=None):
    """x (T, B, I), h0 (B, H); "tanh" or "relu". Returns out (T, B, H), h_n."""
    xproj = _linear(x, w_ih, b_ih)
    return _one_state_layer(
        x, h0, lengths, reverse,
        lambda t, h: rnn_pointwise(xproj[t] + _linear(_masked(h, hmask), w_hh, b_hh),
                                   nonlinearity), resets)
