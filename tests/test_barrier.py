"""The sequence kernels' grid barrier is bounded (issue 15): a program that never arrives
turns into a Python exception, not a hang. Under the interpreter (a grid of one program)
a barrier is made to wait for a second member that does not exist, with a tiny budget."""
import time

import pytest
import torch
import triton
import triton.language as tl

import fusedrnn
from fusedrnn import functional
from fusedrnn.kernels import barrier_errors, ll, stationary
from fusedrnn.kernels.common import group_barrier

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _wait_for_a_ghost(sem_ptr, err_ptr, out_ptr, SPIN_LIMIT: tl.constexpr,
                      ASM_ACQUIRE: tl.constexpr):
    # a group of two members; only this program exists
    group_barrier(sem_ptr, 2, tl.program_id(0) == 0, err_ptr, 7, ASM_ACQUIRE, SPIN_LIMIT)
    # once the error word is set no barrier waits: this one returns at once
    group_barrier(sem_ptr, 2, tl.program_id(0) == 0, err_ptr, 8, ASM_ACQUIRE, SPIN_LIMIT)
    tl.store(out_ptr, 1)


def test_stuck_barrier_sets_the_error_word_and_returns():
    sem = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    err = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    out = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    t0 = time.time()
    _wait_for_a_ghost[(1,)](sem, err, out, SPIN_LIMIT=300, ASM_ACQUIRE=DEVICE == "cuda")
    assert out.item() == 1, "the program did not leave the kernel"
    assert err.tolist() == [1, 7, 0, 2]  # flag, step, program, members
    assert time.time() - t0 < 60
    with pytest.raises(barrier_errors.BarrierTimeout,
                       match=r"timed out at step 7 .*FUSEDRNN_KERNEL=step.*backend='native'"):
        barrier_errors.watch(err, "test")
        barrier_errors.check()  # on CUDA the word is read back behind an event


def test_barrier_that_completes_leaves_no_error():
    sem = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    err = torch.zeros(4, dtype=torch.int32, device=DEVICE)

    @triton.jit
    def _alone(sem_ptr, err_ptr, ASM_ACQUIRE: tl.constexpr):
        group_barrier(sem_ptr, 1, tl.program_id(0) == 0, err_ptr, 0, ASM_ACQUIRE, 300)
        group_barrier(sem_ptr, 1, tl.program_id(0) == 0, err_ptr, 1, ASM_ACQUIRE, 300)

    _alone[(1,)](sem, err, ASM_ACQUIRE=DEVICE == "cuda")
    assert err.tolist() == [0, 0, 0, 0]
    barrier_errors.watch(err, "test")
    barrier_errors.check()  # no exception


@triton.jit
def _words_that_never_come(w_ptr, err_ptr, out_ptr, SPIN_LIMIT: tl.constexpr):
    # words of tag 0 (a zeroed buffer) where the step wants tag 5, 4 of them masked
    p = w_ptr + tl.arange(0, 16)
    m = tl.arange(0, 16) < 12
    w = tl.load(p, mask=m, other=ll.on_time(5, 16))
    w = ll.settle(w, p, m, 5, err_ptr, 4, 3, 16, SPIN_LIMIT)
    tl.store(out_ptr + tl.arange(0, 16), w)


def test_ll_wait_is_bounded_like_the_barrier():
    """The LL exchange's wait (kernels/ll.py) gives up like the barrier: the error word
    records [1, step, program, members] and the program leaves with what it has."""
    w = torch.zeros(16, dtype=torch.int32, device=DEVICE)
    err = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    out = torch.full((16,), -1, dtype=torch.int32, device=DEVICE)
    _words_that_never_come[(1,)](w, err, out, SPIN_LIMIT=300)
    assert out.tolist() == [0] * 12 + [5 << 16] * 4, "the program did not leave the kernel"
    assert err.tolist() == [1, 4, 0, 3]
    with pytest.raises(barrier_errors.BarrierTimeout, match="timed out at step 4"):
        barrier_errors.watch(err, "test")
        barrier_errors.check()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_launcher_raises_when_the_kernel_reports_a_timeout(cell, monkeypatch):
    """The launcher reads the kernel's error word and raises with the step and the way out.
    The word is set before the launch, as a timed-out barrier would leave it."""
    real = stationary.barrier_words

    def failed_words(n_groups, device):
        sem, err = real(n_groups, device)
        err.copy_(torch.tensor([1, 3, 0, 5], dtype=torch.int32))
        return sem, err

    monkeypatch.setattr(stationary, "barrier_words", failed_words)
    monkeypatch.setenv("FUSEDRNN_KERNEL", "stationary")
    G = 4 if cell == "lstm" else 3
    x, h = torch.randn(4, 2, 3, device=DEVICE), torch.zeros(2, 8, device=DEVICE)
    w = [torch.randn(G * 8, 3, device=DEVICE), torch.randn(G * 8, 8, device=DEVICE)]
    with pytest.raises(barrier_errors.BarrierTimeout, match="stationary forward sequence kernel's"
                       r" grid barrier timed out at step 3 \(program 0 waited for 5"):
        if cell == "lstm":
            functional.lstm_layer(x, h, h, *w, backend="triton")
        else:
            functional.gru_layer(x, h, *w, backend="triton")
        fusedrnn.check_errors()  # on CUDA the word is read back behind an event
