"""The error word of the sequence kernels' bounded barrier, read back without stalling.

Each sequence-kernel launch gets an int32[4] error word, zeroed (kernels.common.group_barrier
writes [1, step, program, members] when a barrier times out). Reading it right after the
launch would be a host synchronization per layer pass, which costs time and breaks CUDA-graph
capture. So:
- CPU tensors (the interpreter): the launch has finished when it returns; checked at once.
- CUDA: the word is copied to pinned host memory behind an event on the launch's stream;
  every later launch checks the finished ones without waiting, and ``check()`` (exported as
  ``fusedrnn.check_errors``) waits for all of them. A timed-out barrier therefore raises at
  the next fusedrnn call on the host, or at ``fusedrnn.check_errors()``.
- Under CUDA-graph capture nothing is read back (a replay cannot report to the host).
"""
from __future__ import annotations

import torch

_PENDING: list = []  # (pinned host copy, event, description)


class BarrierTimeout(RuntimeError):
    """A sequence kernel's grid barrier gave up waiting for a program that never arrived."""


def _raise_if_set(word, what: str) -> None:
    flag, step, program, members = (int(v) for v in word)
    if flag:
        raise BarrierTimeout(
            f"fusedrnn: the {what} sequence kernel's grid barrier timed out at step {step} "
            f"(program {program} waited for {members} programs that never all arrived): the "
            f"grid was not co-resident or a program failed. The kernel stopped early and its "
            f"outputs are invalid. Fall back with FUSEDRNN_KERNEL=step (one launch per step, "
            f"no barrier) or backend='native'.")


def watch(err: torch.Tensor, what: str) -> None:
    """Register a launch's error word (see the module docstring)."""
    if err.device.type != "cuda":
        _raise_if_set(err.tolist(), what)
        return
    if torch.cuda.is_current_stream_capturing():
        return
    poll()
    host = torch.empty(err.shape, dtype=err.dtype, pin_memory=True)
    host.copy_(err, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    _PENDING.append((host, event, what))


def poll(wait: bool = False) -> None:
    """Raise for any finished launch whose barrier timed out; ``wait``: finish them all."""
    pending, _PENDING[:] = list(_PENDING), []
    for k, (host, event, what) in enumerate(pending):
        if wait:
            event.synchronize()
        if not event.query():
            _PENDING.append((host, event, what))
            continue
        try:
            _raise_if_set(host.tolist(), what)
        except BarrierTimeout:
            _PENDING.extend(p for p in pending[k + 1:])
            raise


def check() -> None:
    """Wait for every sequence kernel launched so far and raise if any barrier timed out."""
    poll(wait=True)
