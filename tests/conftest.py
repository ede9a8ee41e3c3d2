import os

os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import pytest
import torch

# Triton kernels run on the CPU only under the interpreter, which must be switched on before the
# first @triton.jit (importing elmo_fast's Triton modules). It is harmless for everything else: on
# a CPU the default backend choice never picks Triton. Not with a GPU: there the interpreter would
# run the kernels on host copies, and the Triton tests would never compile a kernel for the GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from elmo_fast.testing import assert_close  # noqa: F401  (re-exported for tests)

# ELMO_FAST_SHARED_DATA points elsewhere (e.g. from a git worktree, where ../shared is not beside the checkout).
SHARED_DATA = os.environ.get("ELMO_FAST_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def exact_fp32():
    """fp32 references in true fp32 on a GPU: cuDNN convolutions default to TF32 (~1e-3 relative
    error), far outside the fp32 tolerances the fast kernels, which compute in fp32, are held to.
    (Saved and restored by hand: monkeypatch cannot restore torch.backends.cuda.matmul's flags.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def shared_data(*parts: str) -> str:
    """Path under ../shared/data; tests that need it skip (visibly, with the reason) when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (development data lives in ../shared/data; set ELMO_FAST_SHARED_DATA)")
    return path


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor a kernel must overwrite completely: unwritten elements stay NaN and fail the comparison."""
    return torch.full_like(t, float("nan"))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(params=["avx2", "avx512"])
def gemm_isa(request):
    """Runs a test once per micro-kernel of the packed CPU GEMM (csrc/common/packed_gemm.h); the
    AVX-512 one skips, saying so, on CPUs without AVX-512F."""
    from elmo_fast import _ext

    if _ext.cpp_ext() is None:
        pytest.skip(f"C++ extension not built: {_ext.load_error('_C')}")
    saved = torch.ops.elmo_fast.gemm_isa()
    try:
        torch.ops.elmo_fast.gemm_isa(request.param)
    except RuntimeError as e:
        pytest.skip(f"packed GEMM {request.param} kernel unavailable: {e}")
    yield request.param
    torch.ops.elmo_fast.gemm_isa(saved)
