"""torch.autograd.Function wrappers around the Triton kernel launchers.

One Function per op; the cells are layers of one step and use the layer Functions. When
no gradient is needed the launchers run directly with ``save=False``: nothing is saved and
no gate buffers are written.
"""
from __future__ import annotations

import torch

from fusedrnn.kernels import gru as _gru
from fusedrnn.kernels import lstm as _lstm


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse):
        out, h_n, c_n, saved = _lstm.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                  lengths, reverse, save=True)
        hs, cs, gates, hraw = saved
        ctx.save_for_backward(x, w_ih, w_hh, w_hr, lengths, hs, cs, gates, hraw)
        ctx.reverse = reverse
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        x, w_ih, w_hh, w_hr, lengths, hs, cs, gates, hraw = ctx.saved_tensors
        grads = _lstm.lstm_backward(x, w_ih, w_hh, w_hr, lengths, ctx.reverse,
                                    (hs, cs, gates, hraw), d_out, d_hn, d_cn,
                                    needs=ctx.needs_input_grad[:8])
        return (*grads, None, None)


class GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
        out, h_n, saved = _gru.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                           save=True)
        ctx.save_for_backward(x, w_ih, w_hh, lengths, *saved)
        ctx.reverse = reverse
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_hn):
        x, w_ih, w_hh, lengths, hs, gates = ctx.saved_tensors
        grads = _gru.gru_backward(x, w_ih, w_hh, lengths, ctx.reverse, (hs, gates), d_out,
                                  d_hn, needs=ctx.needs_input_grad[:6])
        return (*grads, None, None)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None,
               reverse=False):
    """One LSTM layer on the Triton kernels. Returns (out, h_n, c_n)."""
    if _needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        return LSTMLayer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse)
    out, h_n, c_n, _ = _lstm.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                          reverse, save=False)
    return out, h_n, c_n


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """One GRU layer on the Triton kernels. Returns (out, h_n)."""
    if _needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh):
        return GRULayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    out, h_n, _ = _gru.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save=False)
    return out, h_n
