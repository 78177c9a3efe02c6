"""tests/interpreter_patch_once.py (installed by conftest under TRITON_INTERPRET=1): a
launch's helpers compute as before, helpers from a module the launch did not patch still
get patched, and triton.language is itself again after every launch, also one that
raised."""
import os

import pytest
import torch
import triton
import triton.language as tl
from triton.language import core as tlc

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="checks Triton's interpreter (TRITON_INTERPRET=1)")


@triton.jit
def _twice(x):
    return x + x


@triton.jit
def _core_only(p, n: tl.constexpr):
    # (this module imports triton.language as both tl and tlc: a helper may name either)
    return tlc.load(p + tlc.arange(0, n))


@triton.jit
def _kernel(x_ptr, y_ptr, n: tl.constexpr, FAIL: tl.constexpr):
    x = _core_only(x_ptr, n)
    for i in tl.static_range(3):
        x = _twice(x)
    tl.static_assert(not FAIL, "asked to fail")
    tl.store(y_ptr + tl.arange(0, n), x)


def _language():
    """What a launch patches, as it stands. (Not always the builtins: Triton's own helper
    calls leave a module patched that the launch's kernel does not name, e.g. tl.core
    after a kernel that names only tl calls a helper that names tl.core.)"""
    return [tl.load, tl.arange, tl.static_range, tl.tensor.__add__, tlc.load, tlc.arange,
            tlc.static_range]


def test_helpers_compute_and_the_language_is_restored():
    import interpreter_patch_once

    assert interpreter_patch_once.install()  # (idempotent: conftest installed it)
    before = _language()
    assert tlc.is_builtin(tl.load) and tlc.is_builtin(tl.tensor.__add__)
    x = torch.arange(8, dtype=torch.float32)
    y = torch.full_like(x, float("nan"))
    _kernel[(1,)](x, y, 8, False)
    assert torch.equal(y, 8 * x)
    assert all(a is b for a, b in zip(_language(), before))
    with pytest.raises(Exception, match="asked to fail"):
        _kernel[(1,)](x, y, 8, True)
    assert all(a is b for a, b in zip(_language(), before))
