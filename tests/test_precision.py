"""fp32 follows torch (issue 11): torch.backends.cudnn.allow_tf32 (True by default, what
cuDNN's fp32 RNN does) gives TF32 MMAs in the recurrence and TF32 GEMMs around it on CUDA;
False gives exact fp32. The interpreter always computes exactly."""
import pytest
import torch

from fusedrnn import functional, reference
from fusedrnn.kernels import common
from rnncheck import TOL, rel_err

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def cudnn_tf32():
    old = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("allow", [True, False])
def test_dot_flags_follow_cudnn_allow_tf32(allow, cudnn_tf32):
    torch.backends.cudnn.allow_tf32 = allow
    assert common.dot_flags(torch.float32, CUDA) == (not allow, False)
    assert common.dot_flags(torch.float32, CPU) == (True, False)       # interpreter: exact
    assert common.dot_flags(torch.bfloat16, CUDA) == (False, False)    # tensor cores
    assert common.dot_flags(torch.bfloat16, CPU) == (False, True)      # interpreter upcast
    assert common.dot_flags(torch.float64, CUDA) == (True, False)
    assert common.dot_flags(torch.float32, CUDA, allow_tf32=False) == (True, False)


@pytest.mark.parametrize("allow", [True, False])
def test_gemms_follow_cudnn_allow_tf32_and_restore_the_matmul_flag(allow, cudnn_tf32):
    torch.backends.cudnn.allow_tf32 = allow
    before = torch.backends.cuda.matmul.allow_tf32
    with common.cudnn_tf32_gemms(CUDA):
        assert torch.backends.cuda.matmul.allow_tf32 is allow
    assert torch.backends.cuda.matmul.allow_tf32 is before
    with common.cudnn_tf32_gemms(CPU):
        assert torch.backends.cuda.matmul.allow_tf32 is before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (TF32 MMAs)")
@pytest.mark.parametrize("allow,tol", [(True, TOL["tf32"]), (False, TOL[torch.float32])])
def test_fp32_layer_precision_on_gpu(allow, tol, cudnn_tf32):
    torch.backends.cudnn.allow_tf32 = allow
    T, B, I, H = 16, 8, 64, 64
    kw = dict(device="cuda", dtype=torch.float64)
    x, h0, c0 = torch.randn(T, B, I, **kw), torch.randn(B, H, **kw), torch.randn(B, H, **kw)
    w = [torch.randn(4 * H, I, **kw) * H ** -0.5, torch.randn(4 * H, H, **kw) * H ** -0.5]
    want = reference.lstm_layer(x, h0, c0, *w)[0]
    got = functional.lstm_layer(x.float(), h0.float(), c0.float(), *(t.float() for t in w),
                                backend="triton")[0]
    assert rel_err(got, want) <= tol
