"""Recurrent regularizers of the drop-in modules (issue 14), applied on the host.

``weight_dropout`` is DropConnect on the recurrent weights (the AWD-LSTM weight drop): in
training, each forward pass multiplies every layer's and direction's W_hh by its own
Bernoulli(1 - p) mask over 1 - p, before any backend sees the weights, so every backend
runs it and the gradient reaches the unmasked parameter through the product. The masks
are a function of one seed drawn from torch's default generator per forward pass:
``torch.manual_seed`` makes a run repeat bit for bit, and the reference and the Triton
backend drop the same weights.
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
