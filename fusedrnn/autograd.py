"""torch.autograd.Function wrappers around the Triton kernel launchers.

One Function per op; the cells are layers of one step and use the layer Functions. When
no gradient is needed the launchers run directly with ``save=False``: nothing is saved and
no gate buffers are written. Under torch.compile the same launchers run inside the custom
ops of :mod:`fusedrnn.ops` instead, which the compiler sees as single graph nodes.

The kernels' backward is not itself differentiable. A backward asked to build a graph
(``create_graph=True``: gradient penalties, double backward) or given batched gradients
(``is_grads_batched=True``) recomputes the layer with :mod:`fusedrnn.reference` and
differentiates that, so higher derivatives are exact, at the reference's speed. Under
torch.func's transforms the layers never get here: fusedrnn.backend resolves them to the
reference.
"""
from __future__ import annotations

import torch

from fusedrnn import backend as _backend
from fusedrnn import reference
from fusedrnn.kernels import gru as _gru
from fusedrnn.kernels import lstm as _lstm
from fusedrnn.kernels import rnn as _rnn


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _through_reference(*grads) -> bool:
    """Whether backward runs through the reference (_differentiable_backward): asked to build
    a graph (create_graph=True, and every torch.func transform), or given batched gradients
    (vmap, ``is_grads_batched``, ``jacobian(vectorize=True)``), which the kernels cannot
    take."""
    return torch.is_grad_enabled() or _backend.transformed(*grads)


def _differentiable_backward(fn, inputs, grad_outputs):
    """Gradients of ``fn(*inputs)`` w.r.t. the tensor inputs, as a graph (create_graph)."""
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    with torch.enable_grad():
        outs = fn(*inputs)
        grads = iter(torch.autograd.grad(outs, wrt, grad_outputs, create_graph=True,
                                         allow_unused=True))
    return tuple(next(grads) if isinstance(t, torch.Tensor) and t.requires_grad else None
                 for t in inputs)


def _cell_states(cs, lengths, reverse, dtype):
    """Every c_t (T, B, H) in ``dtype`` from the cell history the forward kept (slot t+1
    holds c_t, or slot t in reverse), zero past a sequence's length (like the output)."""
    T = cs.shape[0] - 1
    cells = cs[:T] if reverse else cs[1:]
    if lengths is not None:
        valid = torch.arange(T, device=cs.device).unsqueeze(1) < lengths.unsqueeze(0)
        cells = torch.where(valid.unsqueeze(-1), cells, 0.0)
    return cells.to(dtype, copy=True)  # never a view of the buffers saved for backward


# The Functions take their context in setup_context (not in forward), as torch.func's
# transforms require: what backward needs beyond the inputs, the launchers' saved buffers,
# leaves forward as extra outputs, non-differentiable, which the callers drop.
def _inputs(inputs, n: int, defaults) -> tuple:
    """apply's inputs, the ``n`` it may leave out filled in with forward's defaults."""
    return (*inputs, *defaults[len(defaults) - (n - len(inputs)):])


def _keep(ctx, saved) -> None:
    """The launchers' buffers (outputs of forward) for backward, non-differentiable. Their
    gradients are not materialized: autograd would pass backward a zero tensor the size of
    each (the gates of every step: 512 MB at bf16 B=128 H=1024 T=256, fp32 gates), so
    backward fills in only the zeros its differentiable outputs need (_zeros)."""
    ctx.mark_non_differentiable(*[t for t in saved if t is not None])
    ctx.set_materialize_grads(False)


def _zeros(g, like, *shape):
    """An output's gradient, zeros (shaped like ``like``, or ``shape``) where none came."""
    if g is not None:
        return g
    return like.new_zeros(shape or like.shape)


class LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                cell_states=False, hmask=None, zoneout=None, resets=None):
        """(out, h_n, c_n, every c_t or None, *the buffers backward reads)."""
        out, h_n, c_n, saved = _lstm.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                  lengths, reverse, save=True, hmask=hmask,
                                                  zoneout=zoneout, resets=resets)
        cells = _cell_states(saved[1], lengths, reverse, x.dtype) if cell_states else None
        return out, h_n, c_n, cells, *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, cell_states, hmask,
         zoneout, resets) = _inputs(inputs, 14, (False, None, None, None))
        saved = output[4:]
        _keep(ctx, saved)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, hmask, resets,
                              *saved)
        ctx.reverse, ctx.cell_states, ctx.zoneout = reverse, cell_states, zoneout

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn, d_cells, *_saved):
        (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, hmask, resets,
         *saved) = ctx.saved_tensors
        T, B = x.shape[:2]
        d_out, d_hn, d_cn = _zeros(d_out, h0, T, B, h0.shape[-1]), _zeros(d_hn, h0), \
            _zeros(d_cn, c0)
        d_cells = (_zeros(d_cells, c0, T, B, c0.shape[-1]),) if ctx.cell_states else ()
        if _through_reference(d_out, d_hn, d_cn, *d_cells):
            inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, ctx.reverse,
                      ctx.cell_states, resets, hmask, ctx.zoneout)
            grads = _differentiable_backward(reference.lstm_layer, inputs,
                                             (d_out, d_hn, d_cn, *d_cells))
            return grads[:11] + (None, None, None)
        grads = _lstm.lstm_backward(x, w_ih, w_hh, w_hr, lengths, ctx.reverse, saved, d_out,
                                    d_hn, d_cn, needs=ctx.needs_input_grad[:8],
                                    d_cs=d_cells[0] if d_cells else None, hmask=hmask,
                                    zoneout=ctx.zoneout, resets=resets)
        return (*grads, None, None, None, None, None, None)


class GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, hmask=None, resets=None,
                zoneout=None):
        """(out, h_n, *the buffers backward reads)."""
        out, h_n, saved = _gru.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                           save=True, hmask=hmask, resets=resets,
                                           zoneout=zoneout)
        return out, h_n, *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, hmask, resets, zoneout = _inputs(
            inputs, 11, (None, None, None))
        _keep(ctx, output[2:])
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, hmask, resets,
                              *output[2:])
        ctx.reverse, ctx.zoneout = reverse, zoneout

    @staticmethod
    def backward(ctx, d_out, d_hn, *_saved):
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, hmask, resets, *saved = ctx.saved_tensors
        d_out, d_hn = _zeros(d_out, h0, *x.shape[:2], h0.shape[-1]), _zeros(d_hn, h0)
        if _through_reference(d_out, d_hn):
            inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, resets, hmask,
                      ctx.zoneout)
            return _differentiable_backward(reference.gru_layer, inputs,
                                            (d_out, d_hn))[:8] + (None, None, None)
        grads = _gru.gru_backward(x, w_ih, w_hh, lengths, ctx.reverse, saved, d_out, d_hn,
                                  needs=ctx.needs_input_grad[:6], hmask=hmask, resets=resets,
                                  zoneout=ctx.zoneout)
        return (*grads, None, None, None, None, None)


class RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity,
                hmask=None, resets=None):
        """(out, h_n, *the buffers backward reads)."""
        out, h_n, saved = _rnn.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                           save=True, nonlinearity=nonlinearity, hmask=hmask,
                                           resets=resets)
        return out, h_n, *saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity, hmask, resets = \
            _inputs(inputs, 11, (None, None))
        _keep(ctx, output[2:])
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, hmask, resets,
                              *output[2:])
        ctx.reverse, ctx.nonlinearity = reverse, nonlinearity

    @staticmethod
    def backward(ctx, d_out, d_hn, *_saved):
        x, h0, w_ih, w_hh, b_ih, b_hh, lengths, hmask, resets, *saved = ctx.saved_tensors
        d_out, d_hn = _zeros(d_out, h0, *x.shape[:2], h0.shape[-1]), _zeros(d_hn, h0)
        if _through_reference(d_out, d_hn):
            inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, ctx.reverse, ctx.nonlinearity,
                      resets, hmask)
            return _differentiable_backward(reference.rnn_layer, inputs,
                                            (d_out, d_hn))[:9] + (None, None)
        grads = _rnn.rnn_backward(x, w_ih, w_hh, lengths, ctx.reverse, saved, d_out, d_hn,
                                  needs=ctx.needs_input_grad[:6], hmask=hmask, resets=resets)
        return (*grads, None, None, None, None, None)


def _saveable(resets):
    """resets as backward can keep it: a tensor made under torch.inference_mode (a rollout
    collected without gradients, then trained on) cannot be saved, a copy can."""
    return resets.clone() if resets is not None and resets.is_inference() else resets


def _refuse_compiling(what: str) -> None:
    raise NotImplementedError(f"fusedrnn: {what} on backend='triton' does not run under "
                              f"torch.compile yet; use backend='reference' there")


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
               reverse=False, cell_states=False, hmask=None, zoneout=None, resets=None):
    """One LSTM layer on the Triton kernels. Returns (out, h_n, c_n), and with
    ``cell_states`` every c_t (T, B, H) too. ``hmask`` / ``zoneout``: the recurrent
    regularizers, ``resets`` (T, B) bool the episode restarts (fusedrnn/reference.py has
    their math)."""
    train = _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if torch.compiler.is_compiling():
        if cell_states:
            _refuse_compiling("return_cell_states")
        if hmask is not None or zoneout is not None:
            _refuse_compiling("variational_dropout / zoneout")
        from fusedrnn import ops
        return ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                              train, resets)[:3]
    if train:
        res = LSTMLayer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                              cell_states, hmask, zoneout, _saveable(resets))
        return res[:4] if cell_states else res[:3]
    out, h_n, c_n, saved = _lstm.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                              lengths, reverse, save=cell_states, hmask=hmask,
                                              zoneout=zoneout, resets=resets)
    if cell_states:  # (the whole cell history was kept for them)
        return out, h_n, c_n, _cell_states(saved[1], lengths, reverse, x.dtype)
    return out, h_n, c_n


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              hmask=None, resets=None, zoneout=None):
    """One GRU layer on the Triton kernels. Returns (out, h_n)."""
    train = _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.compiler.is_compiling():
        if hmask is not None or zoneout is not None:
            _refuse_compiling("variational_dropout / zoneout")
        from fusedrnn import ops
        return ops.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, train,
                             resets)[:2]
    if train:
        return GRULayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, hmask,
                              _saveable(resets), zoneout)[:2]
    out, h_n, _ = _gru.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save=False,
                                   hmask=hmask, resets=resets, zoneout=zoneout)
    return out, h_n


def rnn_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
              nonlinearity="tanh", hmask=None, resets=None):
    """One plain RNN layer (tanh or relu) on the Triton kernels. Returns (out, h_n)."""
    train = _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)
    if torch.compiler.is_compiling():
        if hmask is not None:
            _refuse_compiling("variational_dropout")
        from fusedrnn import ops
        return ops.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity,
                             train, resets)[:2]
    if train:
        return RNNLayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity,
                              hmask, _saveable(resets))[:2]
    out, h_n, _ = _rnn.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save=False,
                                   nonlinearity=nonlinearity, hmask=hmask, resets=resets)
    return out, h_n


# ----------------------------------------------------------------------------------------
# both directions of a bidirectional layer: one paired launch per pass where both run
# weight-stationary (kernels/pairing.py), else one launch per direction
# ----------------------------------------------------------------------------------------
def _bi_spec(cell: str):
    """(forward launcher, backward launcher, states per direction, reference layer, the
    weights the backward launcher takes out of a direction's parameters). A direction's
    parameters: LSTM (h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr); GRU/RNN (h0, w_ih, w_hh, b_ih,
    b_hh)."""
    if cell == "lstm":
        return (_lstm.lstm_forward_steps, _lstm.lstm_backward_steps, 2, reference.lstm_layer,
                lambda p: (p[2], p[3], p[6]))
    if cell == "gru":
        return (_gru.gru_forward_steps, _gru.gru_backward_steps, 1, reference.gru_layer,
                lambda p: (p[1], p[2]))
    return (_rnn.rnn_forward_steps, _rnn.rnn_backward_steps, 1, reference.rnn_layer,
            lambda p: (p[1], p[2]))


def _direction(extra: dict, d: int, backward: bool = False) -> dict:
    """Direction d's keywords out of a bidirectional layer's: ``hmasks`` (one variational
    mask per direction) gives its ``hmask``; ``resets``, ``zoneout`` and (forward only)
    ``nonlinearity`` go to both."""
    kw = {k: v for k, v in extra.items() if k != "hmasks"
          and not (backward and k == "nonlinearity")}
    if extra.get("hmasks") is not None:
        kw["hmask"] = extra["hmasks"][d]
    return kw


def _bi_forward(cell, extra, x, lengths, params, save):
    """Both directions' forward: (out (T, B, 2 widths), forward states, reverse states,
    forward's saved buffers, reverse's)."""
    from fusedrnn.kernels import pairing

    fwd = _bi_spec(cell)[0]
    n = len(params) // 2
    res_f, res_r = pairing.run_pair(
        fwd(x, *params[:n], lengths, False, save, **_direction(extra, 0), directions=2),
        fwd(x, *params[n:], lengths, True, save, **_direction(extra, 1), directions=2))
    out = torch.cat([res_f[0], res_r[0]], dim=-1)
    return out, res_f[1:-1], res_r[1:-1], res_f[-1], res_r[-1]


class BiLayer(torch.autograd.Function):
    @staticmethod
    def forward(cell, extra, x, lengths, *params):
        """(out, forward states, reverse states, *both directions' buffers for backward)."""
        out, st_f, st_r, saved_f, saved_r = _bi_forward(cell, extra, x, lengths, params, True)
        return (out, *st_f, *st_r, *saved_f, *saved_r)

    @staticmethod
    def setup_context(ctx, inputs, output):
        cell, extra, x, lengths, *params = inputs
        states = 2 * _bi_spec(cell)[2]
        saved = output[1 + states:]
        _keep(ctx, saved)
        ctx.cell, ctx.extra, ctx.n, ctx.n_saved = cell, extra, len(params) // 2, len(saved) // 2
        ctx.n_states = states
        ctx.save_for_backward(x, lengths, *params, *saved)

    @staticmethod
    def backward(ctx, d_out, *d_rest):
        x, lengths, *rest = ctx.saved_tensors
        n, k = ctx.n, ctx.n_saved
        params, saved_f, saved_r = rest[:2 * n], rest[2 * n:2 * n + k], rest[2 * n + k:]
        _, bwd, n_states, ref, weights = _bi_spec(ctx.cell)
        # (a direction's states are its first parameters: h0 (and c0 for the LSTM))
        like = [params[d * n + i] for d in (0, 1) for i in range(n_states)]
        d_states = [_zeros(g, p) for g, p in zip(d_rest[:ctx.n_states], like)]
        d_out = _zeros(d_out, x, *x.shape[:2], like[0].shape[-1] + like[n_states].shape[-1])
        if _through_reference(d_out, *d_states):
            def both(x, lengths, *p):
                res_f = ref(x, *p[:n], lengths, False, **_direction(ctx.extra, 0))
                res_r = ref(x, *p[n:], lengths, True, **_direction(ctx.extra, 1))
                return (torch.cat([res_f[0], res_r[0]], dim=-1), *res_f[1:], *res_r[1:])
            grads = _differentiable_backward(both, (x, lengths, *params), (d_out, *d_states))
            return (None, None, grads[0], None, *grads[2:])
        from fusedrnn.kernels import pairing

        half = d_out.shape[-1] // 2
        needs = ctx.needs_input_grad
        grads_f, grads_r = pairing.run_pair(
            bwd(x, *weights(params[:n]), lengths, False, tuple(saved_f), d_out[..., :half],
                *d_states[:n_states], needs=(needs[2], *needs[4:4 + n]), directions=2,
                **_direction(ctx.extra, 0, backward=True)),
            bwd(x, *weights(params[n:]), lengths, True, tuple(saved_r), d_out[..., half:],
                *d_states[n_states:], needs=(needs[2], *needs[4 + n:]), directions=2,
                **_direction(ctx.extra, 1, backward=True)))
        dx = [g for g in (grads_f[0], grads_r[0]) if g is not None]
        return (None, None, sum(dx) if dx else None, None, *grads_f[1:], *grads_r[1:])


def bi_layer(cell: str, x, lengths, params_fwd, params_rev, **extra):
    """Both directions of one layer on the Triton kernels ("lstm", "gru" or "rnn", with
    ``nonlinearity`` for "rnn"; optional ``resets``, ``hmasks`` (one mask per direction) and
    LSTM / GRU ``zoneout``, see _direction). Returns (out (T, B, 2 widths), forward direction's
    states, reverse direction's states): LSTM (out, h_f, c_f, h_r, c_r), else (out, h_f,
    h_r)."""
    params = (*params_fwd, *params_rev)
    if _needs_grad(x, *params):
        res = BiLayer.apply(cell, extra, x, lengths, *params)
        return res[:1 + 2 * _bi_spec(cell)[2]]
    out, st_f, st_r, _, _ = _bi_forward(cell, extra, x, lengths, params, False)
    return (out, *st_f, *st_r)
