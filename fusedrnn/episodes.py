"""Resets inside a sequence (reinforcement-learning rollouts whose episodes end mid-batch).

``resets`` (T, B) bool, time-major like the layers' input: where ``resets[t, b]`` is set, the
state entering step t of sequence b is the initial state (hx, or zeros) instead of the
carried one, in every layer. No gradient flows across a reset. The reverse direction of a
bidirectional layer runs each episode backwards from the episode's own last step, starting
from the initial state: it restarts entering step t where ``resets[t + 1]`` is set. A reset
at t = 0, or at or past a sequence's length, changes nothing.

The Triton kernels restart inside their time loop, next to the lengths logic: per
direction, a (T + 1, B) int8 flag "the state entering step t is the initial one"
(fusedrnn.kernels.common.restart_rows) makes every read of h_{t-1} (and c_{t-1}) for that
step read the initial state, kept in its own slot of the history, instead; in backward the
gradient of that state goes to the initial state's gradient instead of flowing on
(common.divert). One launch per pass as without resets, in step, streaming and
weight-stationary mode, forward and backward. The reference restarts the state in its
time loop (fusedrnn/reference.py), which the tests hold the kernels against.
"""
from __future__ import annotations

import torch
from torch import Tensor


def check_resets(resets, T: int, B: int, device, batch_first: bool = False,
                 unbatched: bool = False, packed: int | None = None) -> None:
    """A clear error for resets that do not match the input (named like torch's errors)."""
    if not isinstance(resets, Tensor):
        raise TypeError(f"resets must be a bool tensor, got {type(resets).__name__}")
    if resets.dtype != torch.bool:
        raise TypeError(f"resets must be a bool tensor, got dtype {resets.dtype}")
    if packed is not None:
        want, layout = (packed,), "(the packed data's length,)"
    elif unbatched:
        want, layout = (T,), "(T,) for unbatched input"
    else:
        want = (B, T) if batch_first else (T, B)
        layout = "(B, T) with batch_first" if batch_first else "(T, B)"
    if tuple(resets.shape) != want:
        raise ValueError(f"resets must have shape {layout} = {want}, got "
                         f"{tuple(resets.shape)}")
    if resets.device != torch.device(device):
        raise RuntimeError(f"resets is on {resets.device}, the input on {device}")
