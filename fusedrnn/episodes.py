"""Resets inside a sequence (reinforcement-learning rollouts whose episodes end mid-batch).

``resets`` (T, B) bool, time-major like the layers' input: where ``resets[t, b]`` is set, the
state entering step t of sequence b is the initial state (hx, or zeros) instead of the
carried one, in every layer. No gradient flows across a reset. The reverse direction of a
bidirectional layer runs each episode backwards from the episode's own last step, starting
from the initial state: it restarts entering step t where ``resets[t + 1]`` is set. A reset
at t = 0, or at or past a sequence's length, changes nothing.

The Triton backend serves resets by re-batching: each episode (a run of one sequence's
steps from a reset, or from 0, to the next reset or the sequence's end) becomes its own
sequence of a batch of E episodes, with its own length and its sequence's initial state.
The layers then run unchanged on (T', E), T' the longest episode, and the outputs and
final states are gathered back. Work grows with E x T': one gather and one scatter beside
the kernels when resets are rare; a batch mixing one long episode with many short ones
pays for padding. The reference backend restarts the state inside its time loop
(fusedrnn/reference.py), which the tests hold this against.
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


class Episodes:
    """The episodes of a (T, B) batch under ``resets``, and the moves between the two
    layouts (see the module doc). ``lengths`` (B,) or None (every sequence is T long)."""

    def __init__(self, resets: Tensor, lengths: Tensor | None):
        T, B = resets.shape
        dev = resets.device
        steps = torch.arange(T, device=dev)
        valid = (steps[:, None] < lengths[None, :]) if lengths is not None else \
            torch.ones(T, B, dtype=torch.bool, device=dev)
        starts = resets & valid
        starts[0] = True  # every sequence has at least one step
        by_seq = starts.t()  # (B, T): episodes numbered sequence by sequence, in time order
        count = by_seq.sum(1)
        first = torch.cumsum(count, 0) - count  # each sequence's first episode
        episode = torch.cumsum(by_seq.long(), 1) - 1 + first[:, None]  # (B, T)
        where = by_seq.nonzero()  # (E, 2): (sequence, start step), in episode order
        self.E, self.T, self.B = where.shape[0], T, B
        self.sequence = where[:, 0]  # (E,) the sequence each episode belongs to
        tau = steps[None, :] - where[episode, 1]  # (B, T) step within the episode
        ok = valid.t()
        self.lengths = torch.bincount(episode[ok], minlength=self.E)
        self.T_episode = int(self.lengths.max())
        self.src = (steps[None, :] * B + torch.arange(B, device=dev)[:, None])[ok]
        self.dst = (tau * self.E + episode)[ok]
        self.first, self.last = first, first + count - 1

    def to_episodes(self, x: Tensor) -> Tensor:
        """(T, B, F) -> (T', E, F), zero past each episode's end."""
        flat = x.reshape(self.T * self.B, -1)
        out = flat.new_zeros(self.T_episode * self.E, flat.shape[1])
        return out.index_copy(0, self.dst, flat.index_select(0, self.src)).view(
            self.T_episode, self.E, -1)

    def from_episodes(self, y: Tensor) -> Tensor:
        """(T', E, F) -> (T, B, F), zero past each sequence's length."""
        flat = y.reshape(self.T_episode * self.E, -1)
        out = flat.new_zeros(self.T * self.B, flat.shape[1])
        return out.index_copy(0, self.src, flat.index_select(0, self.dst)).view(
            self.T, self.B, -1)

    def initial(self, state: Tensor) -> Tensor:
        """A per-sequence state (..., B, F) -> per episode (..., E, F)."""
        return state.index_select(-2, self.sequence)

    def final(self, state: Tensor, reverse: bool = False) -> Tensor:
        """A per-episode final state (..., E, F) -> per sequence (..., B, F): the last
        episode's, or for the reverse direction the first's (it ends at step 0)."""
        return state.index_select(-2, self.first if reverse else self.last)
