"""Triton kernels of the fused character CNN against the eager reference (outputs and every
gradient). On a machine without a CUDA GPU they run under TRITON_INTERPRET=1 on tiny shapes."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from elmo_fast.ops.char_cnn import CharConvMaxFunction, char_cnn_conv_max  # noqa: E402
from elmo_fast.ops.char_cnn import backends as conv_max_backends  # noqa: E402
from elmo_fast.ops.char_cnn.triton_impl import tail_starts  # noqa: E402
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref  # noqa: E402
from elmo_fast.ops.highway import (
    TritonHighwayFunction,  # noqa: E402
    highway_ref,  # noqa: E402
)
from elmo_fast.ops.highway import function as highway_function  # noqa: E402
from elmo_fast.ops.highway.triton_impl import highway_fwd  # noqa: E402
from elmo_fast.testing import TOLERANCES, assert_close, random_char_ids  # noqa: E402
from tests.ops.char_cnn_helpers import check_nan_propagates, flat, make_params, mixed_ids  # noqa: E402

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


def test_triton_nan_propagates_like_eager():
    check_nan_propagates("triton", DEVICE)


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

    # nondet_tol: on a GPU the scatter's fp64 atomics add in varying order (the duplicate token and
    # the shared padding characters hit the same cells), so two backwards may differ in the last bit
    assert torch.autograd.gradcheck(conv_only, (emb, *ws, *bs), eps=1e-6, atol=1e-5, fast_mode=True, nondet_tol=1e-12)


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


def _highway_inputs(M, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, D, generator=g, dtype=torch.float64)
    w = torch.randn(2 * D, D, generator=g, dtype=torch.float64) / D**0.5
    b = torch.randn(2 * D, generator=g, dtype=torch.float64)
    return [t.to(DEVICE, dtype).requires_grad_() for t in (x, w, b)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M,D", [(1, 5), (7, 40), (65, 97), (130, 33)])
def test_triton_highway_matches_reference(M, D, dtype):
    """The fused GEMM + gate kernel: one row; one ragged tile; a second row block and a ragged
    64-column block; k-blocks of 32 with a ragged last one (D 33, 40, 97); output and every gradient."""
    x, w, b = _highway_inputs(M, D, dtype)
    ref = highway_ref(x, w, b)
    out = TritonHighwayFunction.apply(x, w, b)
    assert out.dtype == dtype
    assert_close("y", ref, out)
    grad = torch.randn_like(ref)
    for name, r, o in zip(("dx", "dW", "db"), torch.autograd.grad(ref, (x, w, b), grad), torch.autograd.grad(out, (x, w, b), grad)):
        assert_close(name, r, o)


def test_triton_highway_gradcheck_fp64():
    x, w, b = _highway_inputs(3, 4, torch.float64, seed=1)
    assert torch.autograd.gradcheck(TritonHighwayFunction.apply, (x, w, b), eps=1e-6, atol=1e-6)


def test_triton_highway_saves_pre_activations_only_for_backward():
    x, w, b = _highway_inputs(9, 6, torch.float32)
    with torch.no_grad():
        y, z = highway_fwd(x, w, b, save_z=False)
        y2, z2 = highway_fwd(x, w, b, save_z=True)
    assert z is None
    assert torch.equal(y, y2)
    assert_close("z", torch.nn.functional.linear(x, w, b), z2)


def test_triton_highway_fp16_within_twice_eager_error():
    x, w, b = _highway_inputs(33, 40, torch.float32)
    lo = [t.detach().half().requires_grad_() for t in (x, w, b)]
    ref, eager, out = highway_ref(x, w, b), highway_ref(*lo), TritonHighwayFunction.apply(*lo)
    grad = torch.randn_like(ref)
    results = zip(("y", "dx", "dW", "db"),
                  [ref, *torch.autograd.grad(ref, (x, w, b), grad)],
                  [out, *torch.autograd.grad(out, lo, grad.half())],
                  [eager, *torch.autograd.grad(eager, lo, grad.half())])
    for name, r, o, e in results:
        assert o.dtype == torch.float16
        eager_err = (e.float() - r).abs().max().item()
        err = (o.float() - r).abs().max().item()
        assert err <= 2 * eager_err + TOLERANCES[torch.float16][0] * max(1.0, r.abs().max().item()), f"{name}: {err} vs eager {eager_err}"


def test_triton_encoder_follows_autocast(monkeypatch):
    """Under autocast the fused conv, the fused highway and the projection run in the autocast dtype,
    as eager's conv1d and F.linear do (fp16 here: the interpreter miscomputes bf16 dots), not in fp32
    or 3xTF32 on the fp32 parameters; the error is within 2x eager's under the same autocast, and
    every gradient reaches the fp32 parameters. The word-vector cache keeps autocast vectors apart."""
    from elmo_fast.ops.encoder import WordVectorCache

    ids = mixed_ids(n_random=5).to(DEVICE)
    params = _to(make_params(filters=FILTERS, n_highway=2), DEVICE)
    seen = []
    for fn in (CharConvMaxFunction, TritonHighwayFunction):
        apply = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _apply=apply: seen.append({t.dtype for t in a if torch.is_tensor(t) and t.is_floating_point()}) or _apply(*a))
    exact = char_cnn_ref(ids, *params, "relu")
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = char_cnn(ids, *params, "relu", backend="triton")
        eager = char_cnn_ref(ids, *params, "relu")
    assert out.dtype == torch.float16 and len(seen) == 3 and all(d == {torch.float16} for d in seen), seen
    err, eager_err = (out.float() - exact).abs().max().item(), (eager.float() - exact).abs().max().item()
    assert err <= 2 * eager_err + 5e-3, f"{err} vs eager {eager_err}"
    out.float().sum().backward()
    leaves = flat(params)
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and t.grad.abs().sum() > 0 for t in leaves)
    cache = WordVectorCache()
    with torch.no_grad():
        with torch.autocast(DEVICE, dtype=torch.float16):
            assert char_cnn(ids, *params, "relu", backend="triton", cache=cache).dtype == torch.float16
        assert char_cnn(ids, *params, "relu", backend="triton", cache=cache).dtype == torch.float32


def test_deterministic_mode_takes_the_eager_backward(monkeypatch):
    """Under torch.use_deterministic_algorithms the conv backward leaves the atomics-based Triton
    kernel for the eager backward through the same saved argmax: same gradients, and the Triton
    backward is never called."""
    ids = mixed_ids(n_random=5).to(DEVICE)
    params = _to(make_params(filters=FILTERS), DEVICE)
    ref = torch.autograd.grad(char_cnn(ids, *params, "relu", backend="triton").square().sum(), flat(params))

    def never(*args):
        raise AssertionError("the atomics-based Triton backward ran in deterministic mode")

    monkeypatch.setitem(conv_max_backends._BACKWARD, "triton", never)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = torch.autograd.grad(char_cnn(ids, *params, "relu", backend="triton").square().sum(), flat(params))
    finally:
        torch.use_deterministic_algorithms(old)
    for i, (r, d) in enumerate(zip(ref, det)):
        assert_close(f"grad {i}", r, d)


def test_gpu_highway_switch(monkeypatch):
    """ELMO_FAST_GPU_HIGHWAY=torch keeps the eager GEMM + pointwise highway (the fused kernel is
    then never called); an unknown value is an error that names the choices."""
    ids = mixed_ids(n_random=3).to(DEVICE)
    params = _to(make_params(filters=FILTERS), DEVICE)
    with torch.no_grad():
        fused = char_cnn(ids, *params, "relu", backend="triton")
        monkeypatch.setenv("ELMO_FAST_GPU_HIGHWAY", "torch")

        def never(*args):
            raise AssertionError("the fused highway ran although ELMO_FAST_GPU_HIGHWAY=torch")

        monkeypatch.setattr(highway_function.TritonHighwayFunction, "apply", never)
        assert_close("eager highway", fused, char_cnn(ids, *params, "relu", backend="triton"))
        monkeypatch.setenv("ELMO_FAST_GPU_HIGHWAY", "cublas")
        with pytest.raises(ValueError, match="ELMO_FAST_GPU_HIGHWAY must be 'triton' or 'torch'"):
            char_cnn(ids, *params, "relu", backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 exists on a GPU only (the interpreter computes exact fp32)")
@pytest.mark.parametrize("allow_tf32", [False, True])
def test_triton_highway_precision_follows_matmul_tf32_flag(allow_tf32):
    """Flag off (PyTorch's default; eager runs IEEE SGEMM): the kernel's 3xTF32 dots must be about
    as accurate as fp32 -- within 4x eager fp32's error against fp64 at the 'original' width.
    Flag on: TF32 like eager's F.linear, within 2x eager's TF32 error."""
    x, w, b = _highway_inputs(256, 2048, torch.float64, seed=2)
    exact = highway_ref(x, w, b).detach()
    x32, w32, b32 = (t.detach().float() for t in (x, w, b))
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        with torch.no_grad():
            eager, out = highway_ref(x32, w32, b32), TritonHighwayFunction.apply(x32, w32, b32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    eager_err = (eager.double() - exact).abs().max().item()
    err = (out.double() - exact).abs().max().item()
    assert err <= (2 if allow_tf32 else 4) * eager_err + 1e-7, f"{err} vs eager {eager_err}"

