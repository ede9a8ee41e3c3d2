"""Triton kernels of the fused character CNN against the eager reference (outputs and every
gradient). On a machine without a CUDA GPU they run under TRITON_INTERPRET=1 on tiny shapes."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from elmo_fast.ops.char_cnn import char_cnn, char_cnn_ref  # noqa: E402
from elmo_fast.ops.char_cnn.function import CharConvMaxFunction, char_cnn_conv_max  # noqa: E402
from elmo_fast.ops.char_cnn.triton_impl import tail_starts  # noqa: E402
from elmo_fast.testing import TOLERANCES, assert_close, random_char_ids  # noqa: E402
from tests.ops.test_char_cnn import flat, make_params, mixed_ids  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FILTERS = ((1, 4), (2, 5), (7, 17))  # 17 filters: two 16-wide filter blocks, the second ragged
pytestmark = [
    pytest.mark.skipif(DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="no CUDA GPU and TRITON_INTERPRET is not 1"),
    pytest.mark.usefixtures("exact_fp32"),
]


def _to(params, device, dtype=None):
    emb, ws, bs, hw, hb, pw, pb = params

    def mv(t):
        return t.detach().to(device=device, dtype=dtype or t.dtype).requires_grad_()

    return mv(emb), [mv(w) for w in ws], [mv(b) for b in bs], [mv(w) for w in hw], [mv(b) for b in hb], mv(pw), mv(pb)


@pytest.mark.parametrize("activation,n_highway", [("relu", 1), ("tanh", 2)])
def test_triton_matches_reference_fp32(activation, n_highway):
    ids = mixed_ids(n_random=5).to(DEVICE)
    params = _to(make_params(filters=FILTERS, n_highway=n_highway), DEVICE)
    ref = char_cnn_ref(ids, *params, activation)
    out = char_cnn(ids, *params, activation, backend="triton")
    assert_close("output", ref, out)
    grad = torch.randn_like(ref)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(ref, flat(params), grad), torch.autograd.grad(out, flat(params), grad))):
        assert_close(f"grad {i}", a, b)


LOW_DTYPES = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    DEVICE == "cpu", reason="the Triton interpreter miscomputes bf16 dots (TOOLCHAIN.md): bf16 runs on a GPU only"))]


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_triton_low_precision_within_twice_eager_error(dtype, activation):
    """flash-attention's rule: the kernel's error vs the fp32 reference is at most 2x eager's in the
    same dtype, for the features and every gradient (embedding, conv weights, biases)."""
    ids = mixed_ids(n_random=5).to(DEVICE)
    p32 = _to(make_params(filters=FILTERS), DEVICE)
    plo = _to(p32, DEVICE, dtype)
    ins32, inslo = [p32[0], *p32[1], *p32[2]], [plo[0], *plo[1], *plo[2]]
    ref, _ = char_cnn_conv_max(ids, p32[0], p32[1], p32[2], activation, backend="torch")
    out, _ = char_cnn_conv_max(ids, plo[0], plo[1], plo[2], activation, backend="triton")
    eager, _ = char_cnn_conv_max(ids, plo[0], plo[1], plo[2], activation, backend="torch")
    grad = torch.randn_like(ref)
    results = zip(["features"] + [f"grad {k}" for k in range(len(ins32))],
                  [ref, *torch.autograd.grad(ref, ins32, grad)],
                  [out, *torch.autograd.grad(out, inslo, grad.to(dtype))],
                  [eager, *torch.autograd.grad(eager, inslo, grad.to(dtype))])
    for name, r, o, e in results:
        assert o.dtype == dtype
        eager_err = (e.float() - r).abs().max().item()
        err = (o.float() - r).abs().max().item()
        assert err <= 2 * eager_err + TOLERANCES[dtype][0] * max(1.0, r.abs().max().item()), f"{name}: {err} vs eager {eager_err}"


def test_triton_argmax_and_zero_tokens():
    ids = mixed_ids(n_random=3).to(DEVICE)
    emb, ws, bs, *_ = _to(make_params(filters=FILTERS, dtype=torch.float64), DEVICE, torch.float32)
    f_t, a_t = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="triton")
    f_r, _ = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="torch")
    assert a_t.dtype == torch.int32
    assert_close("features", f_r, f_t)
    empty = char_cnn_conv_max(ids[:0], emb, ws, bs, "relu", backend="triton")[0]
    assert empty.shape == (0, f_t.shape[1])


def test_tail_starts():
    ids = mixed_ids(n_random=4)
    expect = []
    for row in ids.tolist():
        L = len(row) - 1
        while L > 0 and row[L - 1] == row[-1]:
            L -= 1
        expect.append(L)
    assert tail_starts(ids).tolist() == expect


def test_triton_gradcheck_fp64():
    """fp64 end to end (the forward's tl.dot, the scatter's fp64 atomics, the table GEMMs); fast
    mode keeps the interpreter to a few dozen calls."""
    ids = torch.cat([random_char_ids(3, seed=5, max_len=6), torch.zeros(1, 50, dtype=torch.long)])
    ids = torch.cat([ids, ids[:1]]).to(DEVICE)
    emb, ws, bs, *_ = _to(make_params(filters=((1, 2), (3, 3)), E=3, P=2, dtype=torch.float64), DEVICE)

    def conv_only(emb, w0, w1, b0, b1):
        return CharConvMaxFunction.apply("triton", "tanh", ids, emb, 2, w0, w1, b0, b1)[0]

    assert torch.autograd.gradcheck(conv_only, (emb, *ws, *bs), eps=1e-6, atol=1e-5, fast_mode=True)


def test_width_with_zero_filters_is_a_clear_error():
    """0 filters (an options.json typo) would be a 0-sized grid, a launch error on a GPU; torch's
    conv1d rejects it too. The op says what to fix before any backend runs."""
    ids = mixed_ids(n_random=3).to(DEVICE)
    emb, ws, bs, *_ = _to(make_params(filters=((1, 4), (2, 0), (3, 5))), DEVICE)
    with pytest.raises(ValueError, match=r"conv 1: 0 filters of width 2"):
        char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 exists on a GPU only (the interpreter computes exact fp32)")
def test_triton_fp32_conv_follows_cudnn_tf32_flag():
    """With torch.backends.cudnn.allow_tf32 (PyTorch's default) the fp32 conv uses TF32 like the
    eager module's cuDNN conv: its error against exact fp32 is then at most 2x eager's under TF32."""
    ids = mixed_ids(n_random=5).to(DEVICE)
    emb, ws, bs, *_ = _to(make_params(filters=FILTERS), DEVICE)
    with torch.no_grad():
        exact = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="torch")[0]  # exact_fp32 fixture: flags off
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = True
        try:
            eager = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="torch")[0]
            out = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend="triton")[0]
        finally:
            torch.backends.cudnn.allow_tf32 = saved
    eager_err = (eager - exact).abs().max().item()
    # cuDNN may pick a non-TF32 algorithm for so small a conv (eager error 0): then hold the kernel
    # to TF32's own scale, 10 mantissa bits over a sum of at most 7 x 6 products.
    bound = 2 * eager_err if eager_err > 0 else 42 * 2**-11 * exact.abs().max().item()
    assert (out - exact).abs().max().item() <= bound + 1e-6
