"""CUDA backend of the fused character CNN: the sources are compile-checked with nvcc on every CI
run (no GPU needed); the kernels run against the reference whenever a CUDA GPU is present."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref
from elmo_fast.testing import assert_close
from tests.ops.char_cnn_helpers import check_nan_propagates, flat, make_params, mixed_ids
from tests.ops.nvcc_check import ROOT, compile_check, requires_nvcc

SOURCE = os.path.join(ROOT, "csrc", "char_cnn", "char_cnn_cuda.cu")


@requires_nvcc
def test_cuda_sources_compile(tmp_path):
    compile_check(SOURCE, tmp_path)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_ext():
    """On a GPU a missing _C_cuda fails the test (as test_lstm_proj_cuda does): a skip would leave
    the kernels untested on the one kind of machine that can run them."""
    if _ext.cuda_ext() is None:
        pytest.fail(f"a GPU is present but elmo_fast._C_cuda is not built ({_ext.load_error('_C_cuda')}); {_ext.INSTALL_HINT}")


def requires_cuda_ext(test):
    return requires_cuda(pytest.mark.usefixtures("cuda_ext", "exact_fp32")(test))


@requires_cuda_ext
@pytest.mark.parametrize("activation,n_highway", [("relu", 1), ("tanh", 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_reference(activation, n_highway, dtype):
    ids = mixed_ids().cuda()
    params = make_params(n_highway=n_highway, dtype=dtype)
    params = tuple(
        [t.detach().cuda().requires_grad_() for t in p] if isinstance(p, list) else p.detach().cuda().requires_grad_() for p in params
    )
    ref = char_cnn_ref(ids, *params, activation)
    out = char_cnn(ids, *params, activation, backend="cuda")
    assert_close("output", ref, out)
    grad = torch.randn_like(ref)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(ref, flat(params), grad), torch.autograd.grad(out, flat(params), grad))):
        assert_close(f"grad {i}", a, b)


@requires_cuda_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_within_twice_eager_error(dtype):
    from elmo_fast.ops.char_cnn import char_cnn_conv_max

    ids = mixed_ids().cuda()
    emb, ws, bs, *_ = make_params()
    p32 = [emb.detach().cuda(), [w.detach().cuda() for w in ws], [b.detach().cuda() for b in bs]]
    plo = [p32[0].to(dtype), [w.to(dtype) for w in p32[1]], [b.to(dtype) for b in p32[2]]]
    ref = char_cnn_conv_max(ids, *p32, "relu", backend="torch")[0]
    eager = char_cnn_conv_max(ids, *plo, "relu", backend="torch")[0].float()
    out = char_cnn_conv_max(ids, *plo, "relu", backend="cuda")[0].float()
    assert (out - ref).abs().max() <= 2 * (eager - ref).abs().max() + 1e-3


@requires_cuda_ext
def test_cuda_opcheck():
    ids = mixed_ids(n_random=3).cuda()
    emb, ws, bs, *_ = make_params()
    args = (ids, emb.detach().cuda(), [w.detach().cuda() for w in ws], [b.detach().cuda() for b in bs], "relu")
    torch.library.opcheck(torch.ops.elmo_fast.char_cnn_conv_max.default, args)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@requires_cuda_ext
def test_cuda_nan_propagates_like_eager():
    check_nan_propagates("cuda", "cuda")
