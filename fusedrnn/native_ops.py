"""torch's own multi-layer RNN ops (cuDNN, oneDNN) as one opaque custom op, for torch.compile.

Under torch.compile ``"auto"`` cannot hand a stack to torch's op as it does eagerly: Dynamo
refuses nn.LSTM / GRU / RNN without ``allow_rnn``, and with it a fullgraph compile of
``_VF.lstm`` fails in AOT autograd (PyTorch issues 91439, 141184). fusedrnn's reference
compiles, but it is a Python loop over the time steps, which Dynamo unrolls: a graph T steps
long, a compile time linear in T (a CPU here: 21 s at T=16, 63 s at T=64, 275 s at T=256 for
one LSTM layer) and a recompile for every new sequence length. Inside this custom op torch's
op runs as it does eagerly, at its speed, one node per stack whatever T, and T stays
symbolic (``dynamic=True``).

The backward recomputes the forward under autograd and differentiates it (the op keeps only
its inputs): one more forward's work in training, no activations held. Inter-layer dropout in
training: on the CPU the op returns the generator's state from before its forward, and the
recomputation draws the same masks from it; cuDNN draws from a dropout state of its own,
which cannot be replayed, so on CUDA the op does not take it (:func:`serves`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, _VF

_OPS = {"lstm": _VF.lstm, "gru": _VF.gru, "rnn_tanh": _VF.rnn_tanh, "rnn_relu": _VF.rnn_relu}
# (a custom op's implementation runs below autograd; its backward needs autograd back on,
# which only this private guard gives: where a torch lacks it, the reference runs instead)
AVAILABLE = hasattr(torch._C, "_ForceDispatchKeyGuard")


# bytes of the CPU generator's state (torch.get_rng_state), an output of the op
_CPU_RNG_BYTES = torch.get_rng_state().numel()


def _draws(dropout: float, train: bool, num_layers: int) -> bool:
    return dropout > 0 and train and num_layers > 1


def serves(dropout: float, train: bool, num_layers: int, device: torch.device) -> bool:
    """Whether this op can run the stack: inter-layer dropout only on the CPU."""
    return AVAILABLE and (device.type == "cpu" or not _draws(dropout, train, num_layers))


def _call(mode: str, input: Tensor, batch_sizes: Optional[Tensor], hx: list[Tensor],
          weights: list[Tensor], has_biases: bool, num_layers: int, dropout: float,
          train: bool, bidirectional: bool, batch_first: bool) -> tuple[Tensor, ...]:
    op = _OPS[mode]
    h = (hx[0], hx[1]) if mode == "lstm" else hx[0]
    if batch_sizes is None:
        return tuple(op(input, h, weights, has_biases, num_layers, dropout, train,
                        bidirectional, batch_first))
    return tuple(op(input, batch_sizes, h, weights, has_biases, num_layers, dropout, train,
                    bidirectional))


@torch.library.custom_op("fusedrnn::native_rnn", mutates_args=())
def native_rnn(input: Tensor, batch_sizes: Optional[Tensor], hx: list[Tensor],
               weights: list[Tensor], mode: str, has_biases: bool, num_layers: int,
               dropout: float, train: bool, bidirectional: bool, batch_first: bool
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(output, h_n, c_n, rng) of ``_VF.<mode>``; c_n empty but for the LSTM, rng the CPU
    generator's state before the forward where it draws dropout masks, else empty."""
    draws = _draws(dropout, train, num_layers)
    rng = torch.get_rng_state() if draws else torch.empty(0, dtype=torch.uint8)
    res = _call(mode, input, batch_sizes, hx, weights, has_biases, num_layers,
                dropout if draws else 0.0, train, bidirectional, batch_first)
    # (batch-first output comes back as a transposed view: contiguous, as the fake says)
    return (res[0].contiguous(), res[1], res[2] if mode == "lstm" else input.new_empty(0),
            rng)


@native_rnn.register_fake
def _(input, batch_sizes, hx, weights, mode, has_biases, num_layers, dropout, train,
      bidirectional, batch_first):
    D = 2 if bidirectional else 1
    out = input.new_empty(*input.shape[:-1], D * hx[0].shape[-1])
    c_n = hx[1].new_empty(hx[1].shape) if mode == "lstm" else input.new_empty(0)
    rng = torch.empty(_CPU_RNG_BYTES if _draws(dropout, train, num_layers) else 0,
                      dtype=torch.uint8)
    return out, hx[0].new_empty(hx[0].shape), c_n, rng


def _autograd_on():
    """Autograd dispatch back on inside a custom op's implementation (which runs with it
    excluded), the other excluded keys kept."""
    DK = torch._C.DispatchKey
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DK.AutogradFunctionality, DK.AutogradOther, DK.AutogradNestedTensor):
        exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _fresh(g: Tensor, inputs) -> Tensor:
    """g, cloned where it shares memory with an input (a custom op may not alias them)."""
    ptr = g.untyped_storage().data_ptr()
    shared = any(t is not None and t.numel() and t.untyped_storage().data_ptr() == ptr
                 for t in inputs)
    return g.clone() if shared else g


@torch.library.custom_op("fusedrnn::native_rnn_backward", mutates_args=())
def native_rnn_backward(input: Tensor, batch_sizes: Optional[Tensor], hx: list[Tensor],
                        weights: list[Tensor], rng: Tensor, d_out: Tensor, d_hn: Tensor,
                        d_cn: Tensor, mode: str, has_biases: bool, num_layers: int,
                        dropout: float, bidirectional: bool, batch_first: bool
                        ) -> list[Tensor]:
    """The gradients of input, each of hx and each of weights: the forward recomputed under
    autograd (train=True: cuDNN keeps what its backward needs; the forward's dropout masks
    drawn again from ``rng``) and differentiated."""
    with _autograd_on(), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        if rng.numel():
            torch.set_rng_state(rng)
        leaves = [t.detach().requires_grad_() for t in (input, *hx, *weights)]
        n = len(hx)
        res = _call(mode, leaves[0], batch_sizes, leaves[1:1 + n], leaves[1 + n:], has_biases,
                    num_layers, dropout if rng.numel() else 0.0, True, bidirectional,
                    batch_first)
        grads = torch.autograd.grad(res, leaves, (d_out, d_hn, d_cn)[:len(res)],
                                    allow_unused=True)
    # (contiguous, as the fake says: a gradient's strides follow the autograd formula's)
    inputs = (input, batch_sizes, *hx, *weights, rng, d_out, d_hn, d_cn)
    return [t.new_zeros(t.shape) if g is None else _fresh(g.contiguous(), inputs)
            for t, g in zip(leaves, grads)]


@native_rnn_backward.register_fake
def _(input, batch_sizes, hx, weights, rng, d_out, d_hn, d_cn, mode, has_biases, num_layers,
      dropout, bidirectional, batch_first):
    return [t.new_empty(t.shape) for t in (input, *hx, *weights)]


def _setup(ctx, inputs, output):
    input, batch_sizes, hx, weights, mode, has_biases, num_layers, dropout, _, bidirectional, \
        batch_first = inputs
    ctx.save_for_backward(input, batch_sizes, output[3], *hx, *weights)
    ctx.n_hx = len(hx)
    ctx.args = (mode, has_biases, num_layers, dropout, bidirectional, batch_first)


def _backward(ctx, d_out, d_hn, d_cn, _d_rng):
    input, batch_sizes, rng, *rest = ctx.saved_tensors
    hx, weights = rest[:ctx.n_hx], rest[ctx.n_hx:]
    if d_out is None:
        D = 2 if ctx.args[4] else 1
        d_out = input.new_zeros(*input.shape[:-1], D * hx[0].shape[-1])
    d_hn = torch.zeros_like(hx[0]) if d_hn is None else d_hn
    d_cn = (torch.zeros_like(hx[1]) if ctx.n_hx == 2 else input.new_empty(0)) \
        if d_cn is None else d_cn
    grads = native_rnn_backward(input, batch_sizes, list(hx), list(weights), rng,
                                d_out.contiguous(), d_hn.contiguous(), d_cn.contiguous(),
                                *ctx.args)
    n = ctx.n_hx
    return (grads[0], None, grads[1:1 + n], grads[1 + n:], None, None, None, None, None, None,
            None)


torch.library.register_autograd("fusedrnn::native_rnn", _backward, setup_context=_setup)


def run(mode: str, input: Tensor, batch_sizes: Optional[Tensor], hx, weights,
        has_biases: bool, num_layers: int, dropout: float, train: bool, bidirectional: bool,
        batch_first: bool):
    """``_VF.<mode>``'s results ((output, h_n, c_n) for the LSTM, else (output, h_n)), through
    the custom op; ``mode``: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
    # (contiguous operands: a view's strides may differ between the traced graph and the
    # run, where Inductor asserts them for a custom op's arguments)
    states = [h.contiguous() for h in (hx if mode == "lstm" else [hx])]
    out, h_n, c_n, _ = native_rnn(input.contiguous(), batch_sizes, states, list(weights), mode,
                                  has_biases, num_layers, dropout, train, bidirectional,
                                  batch_first)
    return (out, h_n, c_n) if mode == "lstm" else (out, h_n)
