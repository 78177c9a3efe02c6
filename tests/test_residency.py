"""Co-residency (kernels/residency.py): how many programs of a compiled kernel fit on a GPU
at once, and the refusal of a sequence-kernel grid that would not (issue 15)."""
import pytest
import torch

from fusedrnn.kernels import residency

H100 = residency.H100


def test_max_coresident_counts_registers_shared_memory_and_threads():
    # 255 registers -> 8192 per warp -> 8 warps an SM -> 4 two-warp programs; 56 KB of
    # shared memory (+1 KB reserved) -> 4 programs; threads allow 32
    assert residency.max_coresident(255, 2, 56 * 1024, H100) == 4 * 132
    # no shared memory, few registers: the 2048 threads an SM bind (8 four-warp programs)
    assert residency.max_coresident(32, 4, 0, H100) == 16 * 132
    # shared memory binds: 150 KB leaves room for one
    assert residency.max_coresident(64, 1, 150 * 1024, H100) == 132


def test_check_refuses_a_grid_that_cannot_be_resident():
    residency.check(132, 255, 8, 0, H100, "test")  # one an SM fits
    with pytest.raises(RuntimeError, match=r"needs 264 programs resident at once, but only "
                       r"132 fit .*FUSEDRNN_KERNEL=step"):
        residency.check(264, 255, 8, 0, H100, "test")


class _Compiled:
    n_regs, metadata = 255, type("M", (), {"shared": 200 * 1024})

    def _init_handles(self):
        pass


class _Kernel:
    def __init__(self):
        self.warmed = []

    def warmup(self, grid, **kwargs):
        self.warmed.append(grid)
        return _Compiled()


def test_guard_compiles_and_refuses_only_without_cooperative_launch(monkeypatch):
    monkeypatch.setattr(residency, "limits", lambda device: H100)
    cuda = torch.device("cuda")
    k = _Kernel()
    residency.guard(k, 200, dict(num_warps=2), cuda, cooperative=True, what="t")
    residency.guard(k, 200, dict(num_warps=2), torch.device("cpu"), cooperative=False, what="t")
    assert k.warmed == []  # the driver (or the interpreter's single program) needs no check
    residency.guard(k, 132, dict(num_warps=2), cuda, cooperative=False, what="t")
    with pytest.raises(RuntimeError, match="needs 133 programs"):
        residency.guard(k, 133, dict(num_warps=2), cuda, cooperative=False, what="t")
    assert k.warmed == [(132,), (133,)]
