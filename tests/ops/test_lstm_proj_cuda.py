"""CUDA backend of lstm_proj: nvcc compile-check of its sources (runs without a GPU), and the
equivalence test against the reference, which runs whenever a CUDA GPU and the built extension exist."""

from __future__ import annotations

import os

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.testing import assert_close
from tests.ops.nvcc_check import ROOT, compile_check, requires_nvcc

SOURCES = [os.path.join(ROOT, "csrc", "lstm_proj", "lstm_proj_kernels.cu")]


@requires_nvcc
@pytest.mark.parametrize("src", SOURCES, ids=os.path.basename)
def test_cuda_sources_compile(src, tmp_path):
    compile_check(src, tmp_path)


def _require_cuda_ext():
    if _ext.cuda_ext() is None:
        pytest.fail(f"a GPU is present but elmo_fast._C_cuda is not built ({_ext.load_error('_C_cuda')}); {_ext.INSTALL_HINT}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("clips", [(None, None), (0.7, 0.4)])
def test_cuda_matches_reference(reverse, clips, exact_fp32):
    _require_cuda_ext()
    from tests.ops.lstm_proj_helpers import NAMES, make_inputs, run

    x, lengths, ws, h0, c0 = make_inputs(B=7, T=9, I=5, C=300, P=6, scale=2.0)  # C > one 256-thread block
    x, ws, h0, c0 = x.cuda(), [w.cuda() for w in ws], h0.cuda(), c0.cuda()
    grads = [torch.randn(7, 9, 6, device="cuda"), torch.randn(7, 6, device="cuda"), torch.randn(7, 300, device="cuda")]
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, *clips, reverse, grads)
    outs, d = run("cuda", x, lengths, ws, h0, c0, *clips, reverse, grads)
    for name, r, o in zip(("out", "h_n", "c_n") + NAMES, list(ref_outs) + list(ref_d), list(outs) + list(d)):
        assert_close(name, r, o, atol=2e-4, rtol=1e-3)  # __expf (sigmoid, tanh) vs torch's kernels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cuda_other_dtypes(dtype, exact_fp32):
    """fp64: the kernels' math runs in fp64 (close to the fp64 reference); fp16/bf16 (fp32 math
    inside): output error vs the fp64 reference at most 2x that of eager run in the same dtype."""
    _require_cuda_ext()
    from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref
    from tests.ops.lstm_proj_helpers import check_low_precision, make_inputs

    x, lengths, ws, h0, c0 = make_inputs(B=7, T=9, I=5, C=300, P=6, dtype=torch.float64, scale=2.0)
    x, ws, h0, c0 = x.cuda(), [w.cuda() for w in ws], h0.cuda(), c0.cuda()
    if dtype != torch.float64:
        check_low_precision("cuda", dtype, x, lengths, ws, h0, c0)
        return
    ref = lstm_proj_ref(x, lengths, *ws, 0.7, 0.4, False, h0, c0)
    with torch.no_grad():
        out = lstm_proj(x, lengths, *ws, 0.7, 0.4, False, h0, c0, backend="cuda")
    for name, r, o in zip(("out", "h_n", "c_n"), ref, out):
        assert o.dtype == dtype
        assert_close(name, r, o, atol=1e-10, rtol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_half_precision_state(dtype, reverse, exact_fp32):
    """fp32 cell state and cached gate activations for bf16/fp16 models: see check_half_state."""
    _require_cuda_ext()
    from tests.ops.lstm_proj_helpers import check_half_state

    check_half_state("cuda", dtype, "cuda", reverse)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_nan_state_propagates_like_eager():
    _require_cuda_ext()
    from tests.ops.lstm_proj_helpers import check_nan_state

    check_nan_state("cuda", "cuda")
