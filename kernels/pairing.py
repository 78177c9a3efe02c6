"""Both directions of a bidirectional layer in one launch of the weight-stationary kernels.

The layer launchers (kernels/lstm.py, gru.py, rnn.py) are generators: they check, allocate
and plan, then yield the weight-stationary launch they want (a :class:`Launch`) instead of
making it, and when resumed they finish (h_n, the gradient GEMMs: what reads the kernel's
output). A launcher that plans the streaming kernels makes its own launches and yields
nothing. :func:`run` drives one direction; :func:`run_pair` drives a layer's two directions
and, where both yield a weight-stationary launch planned as a pair (each on half the SMs),
makes one launch of both (kernels/stationary.py, PAIRED), otherwise one each.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Launch:
    kind: str                     # "fwd" | "bwd"
    plan: dict
    args: dict                    # the kernel's arguments for this direction
    B: int
    device: torch.device


def _advance(gen):
    """(the launch it yields, None) or (None, its result)."""
    try:
        return next(gen), None
    except StopIteration as stop:
        return None, stop.value


def _finish(gen, launch, result):
    if launch is None:
        return result
    extra, result = _advance(gen)
    if extra is not None:
        raise RuntimeError("fusedrnn: a layer launcher yielded twice")
    return result


def run(gen):
    """One direction's launcher, its launch made as asked."""
    from fusedrnn.kernels import stationary

    launch, result = _advance(gen)
    if launch is not None:
        stationary.launch(launch)
    return _finish(gen, launch, result)


def run_pair(gen_fwd, gen_rev):
    """A layer's forward and reverse launchers: (forward's result, reverse's result)."""
    from fusedrnn.kernels import stationary

    (lf, rf), (lr, rr) = _advance(gen_fwd), _advance(gen_rev)
    if lf is not None and lr is not None and stationary.pairable(lf, lr):
        stationary.launch_pair(lf, lr)
    else:
        for launch in (lf, lr):
            if launch is not None:
                stationary.launch(launch)
    return _finish(gen_fwd, lf, rf), _finish(gen_rev, lr, rr)
