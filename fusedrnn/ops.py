"""The Triton layers as torch.library custom ops, for torch.compile.

Eager calls go through the autograd Functions of :mod:`fusedrnn.autograd` (no dispatcher
overhead per call). Under torch.compile the same launchers run inside these opaque custom
ops, so a graph holds one node per layer pass instead of tracing Python loops and kernel
launches: ``torch.compile(model, fullgraph=True)`` works with the triton backend on CUDA and
under the interpreter on CPU. Each op has a fake (shape) implementation and an autograd
registration that calls the backward op.

Custom ops return tensors only: absent optional results come back as empty tensors.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusedrnn.kernels import gru as _gru
from fusedrnn.kernels import lstm as _lstm
from fusedrnn.kernels import rnn as _rnn
from fusedrnn.kernels.common import compute_dtype


def _none_if_empty(t: Tensor) -> Optional[Tensor]:
    return t if t.numel() else None


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def _or_zeros(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


# ----------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("fusedrnn::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
               lengths: Optional[Tensor], reverse: bool, save: bool,
               resets: Optional[Tensor] = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, h_n, c_n, hs, cs, gates, hraw); the last four are empty unless ``save``."""
    out, h_n, c_n, saved = _lstm.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                              reverse, save, resets=resets)
    hs, cs, gates, hraw = saved if save else (None,) * 4
    return (out.contiguous(), h_n, c_n, *(_or_empty(t, x) for t in (hs, cs, gates, hraw)))


@lstm_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, resets=None):
    T, B, _ = x.shape
    H, K = w_hh.shape[0] // 4, w_hh.shape[1]
    acc = compute_dtype(x.dtype)
    saved = [x.new_empty(0) for _ in range(4)]
    if save:
        saved = [x.new_empty(T + 1, B, K), x.new_empty(T + 1, B, H, dtype=acc),
                 x.new_empty(T, B, 4 * H, dtype=acc),
                 x.new_empty(T, B, H) if w_hr is not None else x.new_empty(0)]
    return (x.new_empty(T, B, K), x.new_empty(B, K), x.new_empty(B, H), *saved)


@torch.library.custom_op("fusedrnn::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                        lengths: Optional[Tensor], hs: Tensor, cs: Tensor, gates: Tensor,
                        hraw: Tensor, d_out: Tensor, d_hn: Tensor, d_cn: Tensor, reverse: bool,
                        resets: Optional[Tensor] = None
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr); db is the gradient of both biases."""
    dx, dh0, dc0, dw_ih, dw_hh, db, _, dw_hr = _lstm.lstm_backward(
        x, w_ih, w_hh, w_hr, lengths, reverse, (hs, cs, gates, _none_if_empty(hraw)),
        d_out, d_hn, d_cn, resets=resets)
    return dx, dh0, dc0, dw_ih, dw_hh, db, _or_empty(dw_hr, x)


@lstm_layer_backward.register_fake
def _(x, w_ih, w_hh, w_hr, lengths, hs, cs, gates, hraw, d_out, d_hn, d_cn, reverse,
      resets=None):
    B = x.shape[1]
    return (x.new_empty(x.shape), x.new_empty(B, w_hh.shape[1]), x.new_empty(B, cs.shape[-1]),
            torch.empty_like(w_ih), torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0]),
            torch.empty_like(w_hr) if w_hr is not None else x.new_empty(0))


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, save, resets = inputs
    ctx.save_for_backward(x, w_ih, w_hh, w_hr, lengths, resets, *output[3:])
    ctx.reverse, ctx.has_bias = reverse, b_ih is not None


def _check_saved(hs: Tensor) -> None:
    if hs.numel() == 0 and hs.dim() == 1:
        raise RuntimeError("fusedrnn: this layer ran with save=False (inference), so it kept "
                           "nothing for backward; call it with save=True to differentiate")


def _lstm_backward(ctx, d_out, d_hn, d_cn, *_unused):
    x, w_ih, w_hh, w_hr, lengths, resets, hs, cs, gates, hraw = ctx.saved_tensors
    _check_saved(hs)
    d_out = _or_zeros(d_out, x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1]))
    d_hn = _or_zeros(d_hn, hs[0])
    d_cn = _or_zeros(d_cn, cs[0].to(x.dtype))
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = lstm_layer_backward(
        x, w_ih, w_hh, w_hr, lengths, hs, cs, gates, hraw, d_out, d_hn, d_cn, ctx.reverse,
        resets)
    db_ih, db_hh = (db, db) if ctx.has_bias else (None, None)
    return (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, _none_if_empty(dw_hr), None, None, None,
            None)


torch.library.register_autograd("fusedrnn::lstm_layer", _lstm_backward,
                                setup_context=_lstm_setup)


# ----------------------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("fusedrnn::gru_layer", mutates_args=())
def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, save: bool,
              resets: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, h_n, hs, gates); the last two are empty unless ``save``."""
    out, h_n, saved = _gru.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save,
                                       resets=resets)
    hs, gates = saved if save else (x.new_empty(0), x.new_empty(0))
    return out.contiguous(), h_n, hs, gates


@gru_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, resets=None):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    saved = (x.new_empty(0), x.new_empty(0))
    if save:
        saved = (x.new_empty(T + 1, B, H), x.new_empty(T, B, 4 * H, dtype=compute_dtype(x.dtype)))
    return (x.new_empty(T, B, H), x.new_empty(B, H), *saved)


@torch.library.custom_op("fusedrnn::gru_layer_backward", mutates_args=())
def gru_layer_backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
                       hs: Tensor, gates: Tensor, d_out: Tensor, d_hn: Tensor, reverse: bool,
                       resets: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    return _gru.gru_backward(x, w_ih, w_hh, lengths, reverse, (hs, gates), d_out, d_hn,
                             resets=resets)


@gru_layer_backward.register_fake
def _(x, w_ih, w_hh, lengths, hs, gates, d_out, d_hn, reverse, resets=None):
    return (x.new_empty(x.shape), x.new_empty(d_hn.shape), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0]), w_hh.new_empty(w_hh.shape[0]))


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, resets = inputs
    ctx.save_for_backward(x, w_ih, w_hh, lengths, resets, *output[2:])
    ctx.reverse, ctx.has_bias = reverse, b_ih is not None


def _gru_backward(ctx, d_out, d_hn, *_unused):
    x, w_ih, w_hh, lengths, resets, hs, gates = ctx.saved_tensors
    _check_saved(hs)
    d_out = _or_zeros(d_out, x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1]))
    d_hn = _or_zeros(d_hn, hs[0])
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = gru_layer_backward(
        x, w_ih, w_hh, lengths, hs, gates, d_out, d_hn, ctx.reverse, resets)
    if not ctx.has_bias:
        db_ih = db_hh = None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None


torch.library.register_autograd("fusedrnn::gru_layer", _gru_backward, setup_context=_gru_setup)


# ----------------------------------------------------------------------------------------
# plain RNN (tanh or relu)
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("fusedrnn::rnn_layer", mutates_args=())
def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
              nonlinearity: str, save: bool, resets: Optional[Tensor] = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, h_n, hs, dact); the last two are empty unless ``save``."""
    out, h_n, saved = _rnn.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save,
                                       nonlinearity, resets=resets)
    hs, dact = saved if save else (x.new_empty(0), x.new_empty(0))
    return out.contiguous(), h_n, hs, dact


@rnn_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity, save, resets=None):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    saved = (x.new_empty(0), x.new_empty(0))
    if save:
        saved = (x.new_empty(T + 1, B, H), x.new_empty(T, B, H, dtype=compute_dtype(x.dtype)))
    return (x.new_empty(T, B, H), x.new_empty(B, H), *saved)


@torch.library.custom_op("fusedrnn::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
                       hs: Tensor, dact: Tensor, d_out: Tensor, d_hn: Tensor, reverse: bool,
                       resets: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dw_ih, dw_hh, db); db is the gradient of both biases."""
    dx, dh0, dw_ih, dw_hh, db, _ = _rnn.rnn_backward(x, w_ih, w_hh, lengths, reverse,
                                                     (hs, dact), d_out, d_hn, resets=resets)
    return dx, dh0, dw_ih, dw_hh, db


@rnn_layer_backward.register_fake
def _(x, w_ih, w_hh, lengths, hs, dact, d_out, d_hn, reverse, resets=None):
    return (x.new_empty(x.shape), x.new_empty(d_hn.shape), torch.empty_like(w_ih),
            torch.empty_like(w_hh), w_hh.new_empty(w_hh.shape[0]))


def _rnn_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity, save, resets = inputs
    ctx.save_for_backward(x, w_ih, w_hh, lengths, resets, *output[2:])
    ctx.reverse, ctx.has_bias = reverse, b_ih is not None


def _rnn_backward(ctx, d_out, d_hn, *_unused):
    x, w_ih, w_hh, lengths, resets, hs, dact = ctx.saved_tensors
    _check_saved(hs)
    d_out = _or_zeros(d_out, x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1]))
    d_hn = _or_zeros(d_hn, hs[0])
    dx, dh0, dw_ih, dw_hh, db = rnn_layer_backward(x, w_ih, w_hh, lengths, hs, dact, d_out,
                                                   d_hn, ctx.reverse, resets)
    db_ih, db_hh = (db, db) if ctx.has_bias else (None, None)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None, None, None


torch.library.register_autograd("fusedrnn::rnn_layer", _rnn_backward, setup_context=_rnn_setup)
