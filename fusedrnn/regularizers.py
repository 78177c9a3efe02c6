"""Recurrent regularizers of the drop-in modules (issue 14): what is drawn on the host.

``weight_dropout`` is DropConnect on the recurrent weights (the AWD-LSTM weight drop): in
training, each forward pass multiplies every layer's and direction's W_hh by its own
Bernoulli(1 - p) mask over 1 - p, before any backend sees the weights, so every backend
runs it and the gradient reaches the unmasked parameter through the product.

``variational_dropout`` draws one (B, N) mask per sequence and layer (sequence_mask): the
input masks multiply the layers' inputs here, the recurrent-state masks go to the kernels
(and the reference), which apply them where h_{t-1} enters the recurrent product.

``zoneout`` is drawn inside the kernels with Philox, per step and unit; philox_bits is the
same draw in PyTorch, so the reference zones out the same units.

Every mask is a function of one seed drawn from torch's default generator per forward
pass: ``torch.manual_seed`` makes a run repeat bit for bit, and the reference and the
Triton backend drop the same weights and units.
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_rate(name: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p}")
    return float(p)


def draw_seed() -> int:
    """A seed from torch's default (CPU) generator: repeatable under torch.manual_seed."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64).item())


def weight_mask(w: Tensor, p: float, seed: int, index: int) -> Tensor:
    """The DropConnect mask of the ``index``-th flat weight: 0 with probability p, else
    1 / (1 - p), in w's dtype and device; a function of (seed, index, shape) only."""
    g = torch.Generator(device=w.device)
    g.manual_seed(seed + index)
    keep = torch.rand(w.shape, generator=g, device=w.device, dtype=torch.float32) >= p
    return keep.to(w.dtype) / (1.0 - p)


def drop_connect(weights, names, p: float, seed: int) -> list:
    """The flat weight list with every ``weight_hh_*`` masked (see weight_mask)."""
    return [w * weight_mask(w, p, seed, k) if name.startswith("weight_hh") else w
            for k, (w, name) in enumerate(zip(weights, names))]


# ----------------------------------------------------------------------------------------
# variational (locked) dropout: one mask per sequence, the same at every step
# ----------------------------------------------------------------------------------------
def sequence_mask(seed: int, index: int, B: int, N: int, p: float, like: Tensor) -> Tensor:
    """The ``index``-th (B, N) variational mask of a forward pass: 0 with probability p,
    else 1 / (1 - p), in ``like``'s dtype and device; a function of (seed, index, shape)."""
    g = torch.Generator(device=like.device)
    g.manual_seed(seed + index)
    keep = torch.rand((B, N), generator=g, device=like.device, dtype=torch.float32) >= p
    return keep.to(like.dtype) / (1.0 - p)


# ----------------------------------------------------------------------------------------
# zoneout: the kernels draw per step and unit with Philox (fusedrnn.kernels.common
# .zoneout_rate); this is the same draw in PyTorch, bit for bit, for the reference
# ----------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def zoneout_spec(p_h: float, p_c: float, seed: int, training: bool):
    """(seed, thresh_h, thresh_c, mode) as the kernels take it: rates quantized to 2^-24
    (the same effective rate in training and eval), mode 1 training, 2 eval."""
    return (seed, round(p_h * 2 ** 24), round(p_c * 2 ** 24), 1 if training else 2)


def _mul_parts(a: int, x: Tensor):
    """(high, low) 32-bit halves of a * x for a 32-bit constant a and a tensor of 32-bit
    values in int64, without overflowing int64 (a is split into 16-bit halves)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi, p_lo = a_hi * x, a_lo * x  # each < 2^48
    high = (p_hi + (p_lo >> 16)) >> 16
    low = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return high, low


def philox_bits(seed: int, offsets: Tensor) -> Tensor:
    """tl.randint(seed, offsets) for int64 offsets: the first 32-bit word of Philox-4x32-10
    with key (seed low, seed high) and counter (offset low, offset high, 0, 0), as int64."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1 = offsets & _M32, (offsets >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul_parts(0xCD9E8D57, c2)
        hi_a, lo_a = _mul_parts(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0


def zoneout_rate(zoneout, t: int, stream: int, B: int, N: int, device, dtype) -> Tensor:
    """The (B, N) weight z of the previous value at step t (kernels' zoneout_rate): 1/0 per
    unit in training (Philox below the threshold), the rate itself in eval.
    stream = 2 * direction + (0 for h, 1 for c)."""
    seed, th_h, th_c, mode = zoneout
    thresh = th_c if stream % 2 else th_h
    if mode == 2:
        return torch.full((B, N), thresh * 2.0 ** -24, device=device, dtype=dtype)
    rows = (t * 4 + stream) * B + torch.arange(B, device=device).unsqueeze(1)
    offs = rows * N + torch.arange(N, device=device)
    return ((philox_bits(seed, offs) >> 8) < thresh).to(dtype)


# ----------------------------------------------------------------------------------------
# what one forward pass of a stack applies, and where (fusedrnn.functional._stack)
# ----------------------------------------------------------------------------------------
def check_rates(name: str, p, n: int) -> tuple:
    """A rate, or a tuple of n rates, each in [0, 1), as an n-tuple of floats."""
    rates = tuple(p) if isinstance(p, (tuple, list)) else (p,) * n
    if len(rates) != n:
        raise ValueError(f"{name} must be a probability or a tuple of {n} of them, got {p!r}")
    return tuple(check_rate(name, r) for r in rates)


class Recurrent:
    """The variational dropout and zoneout of one forward pass of a stack.

    variational (p_input, p_between, p_state), training only: one (B, N) mask per sequence
    and layer, the same at every step, on the first layer's input (p_input), on each later
    layer's input (p_between, the outputs between layers), and per layer and direction on
    h_{t-1} where the recurrent product reads it (p_state, inside the kernels).
    zoneout (p_h, p_c), LSTM: per step and unit, inside the kernels; the expectation in
    eval. Every mask is a function of ``seed`` (one draw from torch's generator per pass).
    """

    def __init__(self, seed: int, training: bool, variational=(0.0, 0.0, 0.0),
                 zoneout=(0.0, 0.0)):
        self.seed, self.training = seed, training
        self.p_input, self.p_between, self.p_state = variational if training else (0.0,) * 3
        self.zoneout_rates = zoneout

    def input_mask(self, layer: int, B: int, N: int, like: Tensor):
        """The (B, N) mask of the layer's input (the same at every step), or None."""
        p = self.p_input if layer == 0 else self.p_between
        return None if p == 0 else sequence_mask(self.seed, 4 * layer, B, N, p, like)

    def state_mask(self, layer: int, direction: int, B: int, K: int, like: Tensor):
        """The (B, K) mask of h_{t-1} of one layer and direction, or None."""
        if self.p_state == 0:
            return None
        return sequence_mask(self.seed, 4 * layer + 1 + direction, B, K, self.p_state, like)

    def zoneout(self, layer: int):
        """The layer's zoneout as the kernels take it (zoneout_spec), or None."""
        p_h, p_c = self.zoneout_rates
        if p_h == 0 and p_c == 0:
            return None
        key = (self.seed + 0x9E3779B97F4A7C15 * (layer + 1)) % 2 ** 62  # one key per layer
        return zoneout_spec(p_h, p_c, key, self.training)
