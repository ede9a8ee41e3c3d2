"""Fused character CNN (C++ CPU backend, dedup, dispatch) against the eager reference `char_cnn_ref`:
outputs and every gradient, fp64 gradcheck, opcheck of the registered op, bad-input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from elmo_fast.ops.char_cnn import CharConvMaxFunction, char_cnn_conv_max
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref, unique_tokens
from elmo_fast.ops.highway import highway_ref
from elmo_fast.testing import assert_close, random_char_ids

from .char_cnn_helpers import CPU_BACKENDS, check_nan_propagates, flat, make_params, mixed_ids, requires_cpp


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("n_highway", [1, 2])
@pytest.mark.parametrize("dedup", [True, False])
def test_matches_reference_fp32(backend, activation, n_highway, dedup):
    ids = mixed_ids()
    params = make_params(n_highway=n_highway)
    ref = char_cnn_ref(ids, *params, activation)
    out = char_cnn(ids, *params, activation, backend=backend, dedup=dedup)
    assert_close("output", ref, out)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, flat(params), grad)
    g_out = torch.autograd.grad(out, flat(params), grad)
    names = ["char_embedding"] + [f"conv_w{i}" for i in range(4)] + [f"conv_b{i}" for i in range(4)]
    names += [f"highway_w{k}" for k in range(n_highway)] + [f"highway_b{k}" for k in range(n_highway)] + ["proj_w", "proj_b"]
    for name, a, b in zip(names, g_ref, g_out):
        assert_close(f"grad {name}", a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_reference_fp64_published_filter_widths(backend):
    filters = ((1, 3), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 33))
    ids = mixed_ids(n_random=6, seed=3)
    params = make_params(filters=filters, E=16, P=7, n_highway=2, dtype=torch.float64)
    ref = char_cnn_ref(ids, *params, "relu")
    out = char_cnn(ids, *params, "relu", backend=backend)
    assert_close("output", ref, out)
    grad = torch.randn_like(ref)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(ref, flat(params), grad), torch.autograd.grad(out, flat(params), grad))):
        assert_close(f"grad {i}", a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_conv_max_argmax_points_at_the_maximum(backend, activation):
    """features == act(conv at argmax); argmax lies in range and attains the per-position max."""
    ids = mixed_ids()
    emb, ws, bs, *_ = make_params(dtype=torch.float64)
    feats, argmax = char_cnn_conv_max(ids, emb, ws, bs, activation, backend=backend)
    assert argmax.dtype == torch.int32 and argmax.shape == feats.shape
    x = F.embedding(ids, emb).transpose(1, 2)
    off = 0
    for w, b in zip(ws, bs):
        y = F.conv1d(x, w, b)  # [N, F_i, positions]
        a = argmax[:, off : off + w.shape[0]].long()
        assert int(a.min()) >= 0 and int(a.max()) < y.shape[-1]
        at = y.gather(-1, a[..., None])[..., 0]
        assert_close("value at argmax == max", y.max(-1).values, at)
        act = torch.relu(at) if activation == "relu" else torch.tanh(at)
        assert_close("features", act, feats[:, off : off + w.shape[0]])
        off += w.shape[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_fp64(backend):
    ids = torch.cat([random_char_ids(3, seed=5, max_len=6), torch.zeros(1, 50, dtype=torch.long)])
    ids = torch.cat([ids, ids[:1]])
    params = make_params(filters=((1, 2), (3, 3)), E=3, P=2, n_highway=1, dtype=torch.float64)

    def fn(*ps):
        emb, w0, w1, b0, b1, hw, hb, pw, pb = ps
        return char_cnn(ids, emb, [w0, w1], [b0, b1], [hw], [hb], pw, pb, "tanh", backend=backend)

    # The eager 'torch' path costs ~15 ms a call in fp64; fast mode keeps it to a few hundred calls.
    fast = backend == "torch"
    assert torch.autograd.gradcheck(fn, tuple(flat(params)), eps=1e-6, atol=1e-5, fast_mode=fast)

    def conv_only(emb, w0, w1, b0, b1):
        return CharConvMaxFunction.apply(backend, "relu", ids, emb, 2, w0, w1, b0, b1)[0]

    emb, ws, bs = params[0], params[1], params[2]
    assert torch.autograd.gradcheck(conv_only, (emb, *ws, *bs), eps=1e-6, atol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_tokens(backend):
    params = make_params()
    ids = torch.zeros(0, 50, dtype=torch.long)
    out = char_cnn(ids, *params, "relu", backend=backend)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in flat(params))


def test_unique_tokens_inverse_rebuilds_input():
    ids = mixed_ids()
    uniq, inverse = unique_tokens(ids)
    assert uniq.shape[0] < ids.shape[0]
    assert torch.equal(uniq[inverse], ids)


@requires_cpp
def test_unique_rows_op():
    """The C++ row dedup: distinct rows in first-occurrence order, exact inverse, same set as torch.unique;
    rows that differ only in their last character stay apart."""
    ids = torch.cat([mixed_ids(n_random=40, seed=4), random_char_ids(5, seed=4, min_len=48, max_len=48)])
    near = ids[:3].clone()
    near[:, -1] = 7
    ids = torch.cat([ids, near, ids[:3]])
    uniq, inverse = torch.ops.elmo_fast.unique_rows(ids)
    assert torch.equal(uniq[inverse], ids)
    assert torch.equal(torch.unique(uniq, dim=0), torch.unique(ids, dim=0))
    first = [int((inverse == k).nonzero()[0]) for k in range(uniq.shape[0])]
    assert first == sorted(first)
    torch.library.opcheck(torch.ops.elmo_fast.unique_rows.default, (ids,))


@requires_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_highway_function_matches_eager(dtype):
    """The fused highway layer (ATen GEMM + one-pass C++ gate) against the eager formula: output and
    the gradients of x, W, b on an odd shape; fp64 gradcheck; opcheck of both gate ops."""
    from elmo_fast.ops.highway import HighwayFunction

    g = torch.Generator().manual_seed(11)
    N, F_ = 13, 37
    x = torch.randn(N, F_, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(2 * F_, F_, generator=g, dtype=dtype) / F_**0.5).requires_grad_()
    b = torch.randn(2 * F_, generator=g, dtype=dtype).requires_grad_()
    ref = highway_ref(x, w, b)
    out = HighwayFunction.apply(x, w, b)
    assert_close("highway", ref, out)
    dy = torch.randn_like(ref)
    for name, a, c in zip(("dx", "dw", "db"), torch.autograd.grad(ref, (x, w, b), dy), torch.autograd.grad(out, (x, w, b), dy)):
        assert_close(f"highway {name}", a, c)
    if dtype == torch.float64:
        small = [t.detach()[:3, :4].clone().requires_grad_() for t in (x,)] + [w.detach()[:8, :4].clone().requires_grad_(),
                                                                               b.detach()[:8].clone().requires_grad_()]
        assert torch.autograd.gradcheck(HighwayFunction.apply, tuple(small), eps=1e-6, atol=1e-6)
    z = (x @ w.t()).detach()
    torch.library.opcheck(torch.ops.elmo_fast.highway_gate.default, (z, b.detach(), x.detach()))
    torch.library.opcheck(torch.ops.elmo_fast.highway_gate_backward.default, (dy, z, b.detach(), x.detach()))
    with pytest.raises(RuntimeError, match=r"z must be \[N, 2F\]"):
        torch.ops.elmo_fast.highway_gate(z[:, :-1], b.detach(), x.detach())


@requires_cpp
def test_bad_inputs_give_clear_errors():
    ids = mixed_ids(n_random=2)
    params = make_params()
    with pytest.raises(ValueError, match="char ids must lie in"):
        char_cnn(ids.clone().fill_(262), *params, backend="cpp")
    with pytest.raises(TypeError, match="int64"):
        char_cnn(ids.int(), *params, backend="cpp")
    with pytest.raises(TypeError, match="one dtype"):
        emb, *rest = params
        char_cnn(ids, emb.double(), *rest, backend="cpp")
    with pytest.raises(TypeError, match="float32/float64"):
        char_cnn(ids, *[[t.bfloat16() for t in p] if isinstance(p, list) else p.bfloat16() for p in params], backend="cpp")
    with torch.no_grad():  # the raw op refuses leaves that require grad (test_registration) before its own checks
        with pytest.raises(RuntimeError, match="char ids must lie in"):  # the C++ op checks on its own too
            torch.ops.elmo_fast.char_cnn_conv_max(ids.clone().fill_(-1), params[0], params[1], params[2], "relu")
        with pytest.raises(RuntimeError, match="activation must be"):
            torch.ops.elmo_fast.char_cnn_conv_max(ids, params[0], params[1], params[2], "gelu")
    with pytest.raises((ValueError, RuntimeError), match="is not implemented|cannot run on cpu"):
        char_cnn(ids, *params, backend="cuda")


@requires_cpp
def test_module_uses_fused_op():
    from elmo_fast.modules.char_encoder import ElmoCharacterEncoder
    from elmo_fast.testing import small_options

    opts = small_options(n_highway=2, filters=((1, 4), (2, 5), (3, 7)))
    fast, eager = ElmoCharacterEncoder(opts, backend="cpp"), ElmoCharacterEncoder(opts, backend="torch")
    eager.load_state_dict(fast.state_dict())
    x = random_char_ids(10, seed=9).view(2, 5, 50)
    x[1, 3:] = 0
    a, b = fast(x), eager(x)
    assert torch.equal(a["mask"], b["mask"])
    assert_close("token_embedding", b["token_embedding"], a["token_embedding"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n_highway", [1, 2])
def test_bf16_gemm_inference_accuracy(backend, n_highway):
    """bf16 highway/projection GEMM operands: error vs the fp32 reference at most 2x that of the
    eager reference run entirely in bf16, fp32 output, and the same vectors through the word cache."""
    from elmo_fast.ops.encoder import WordVectorCache

    ids = mixed_ids()
    params = make_params(filters=((1, 8), (2, 16), (3, 32), (5, 64)), E=8, P=24, n_highway=n_highway, seed=3)
    with torch.no_grad():
        ref = char_cnn_ref(ids, *params, "relu")
        low = char_cnn_ref(ids, *[[t.bfloat16() for t in p] if isinstance(p, list) else p.bfloat16() for p in params], "relu")
        out = char_cnn(ids, *params, "relu", backend=backend, gemm_dtype=torch.bfloat16)
        cache = WordVectorCache()
        fp32_cached = char_cnn(ids, *params, "relu", backend=backend, cache=cache)
        bf16_cached = char_cnn(ids, *params, "relu", backend=backend, cache=cache, gemm_dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    err, err_low = (out - ref).abs().max().item(), (low.float() - ref).abs().max().item()
    assert 0 < err <= 2 * err_low, f"bf16-GEMM error {err:.3g} vs eager-bf16 error {err_low:.3g}"
    assert_close("bf16-GEMM output", ref, out, atol=3e-2, rtol=3e-2)
    assert_close("fp32 through the cache", ref, fp32_cached)
    assert torch.equal(bf16_cached, out), "the cache must not serve fp32 vectors for a bf16 request"


def test_bf16_gemm_rejects_training_and_other_dtypes():
    ids = mixed_ids()
    params = make_params()
    with pytest.raises(RuntimeError, match="inference-only"):
        char_cnn(ids, *params, "relu", gemm_dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(ValueError, match="gemm_dtype must be"):
        char_cnn(ids, *params, "relu", gemm_dtype=torch.float16)
    with torch.no_grad(), pytest.raises(ValueError, match="float32 CPU"):
        char_cnn(ids, *make_params(dtype=torch.float64), "relu", gemm_dtype=torch.bfloat16)


def test_bf16_gemm_weight_update_is_seen():
    """The cached bf16 weight copies follow in-place updates (an optimizer step, load_state_dict)."""
    ids = mixed_ids()
    params = make_params(P=6)
    with torch.no_grad():
        before = char_cnn(ids, *params, "relu", gemm_dtype=torch.bfloat16)
        params[5].mul_(-1.0)  # projection weight
        after = char_cnn(ids, *params, "relu", gemm_dtype=torch.bfloat16)
        ref = char_cnn_ref(ids, *params, "relu")
    assert not torch.allclose(before, after)
    assert_close("after the update", ref, after, atol=3e-2, rtol=3e-2)


@requires_cpp
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("n_highway", [1, 2])
def test_inference_packed_gemm_path(activation, n_highway):
    """Under no_grad the cpp backend runs the highway and projection GEMMs on cached packed weights
    (2F = 66 and P = 5: partial 16-column panels); the result matches the reference, and an in-place
    weight update (an optimizer step) is seen by the next call."""
    ids = mixed_ids()
    params = make_params(n_highway=n_highway, seed=5)
    with torch.no_grad():
        assert_close("packed inference", char_cnn_ref(ids, *params, activation), char_cnn(ids, *params, activation, backend="cpp"))
        params[3][0].mul_(-0.5)  # first highway weight
        params[5].add_(0.1)  # projection weight
        assert_close("after an update", char_cnn_ref(ids, *params, activation), char_cnn(ids, *params, activation, backend="cpp"))


@requires_cpp
@pytest.mark.parametrize("M,K,N", [(1, 37, 21), (7, 37, 21), (13, 37, 21), (13, 301, 37), (20, 130, 64), (17, 130, 85)])
def test_packed_linear_op(M, K, N, gemm_isa):
    """Partial row tiles of both kernels (6 rows AVX2, 8 AVX-512: M 7, 13, 17, 20) and every panel
    group the AVX-512 kernel takes (3 panels of 16 columns): a full and a partial panel (N 21), a
    triple ending in a partial panel (N 37), a triple and a lone panel (N 64), two triples, the last
    partial (N 85); one k-block and several of each kernel's size (K 130, 301)."""
    g = torch.Generator().manual_seed(M)
    x = torch.randn(M, K + 3, generator=g)[:, :K]  # non-contiguous rows
    w, b = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    packed = torch.ops.elmo_fast.gemm_pack(w.t())
    assert_close("with bias", F.linear(x, w, b), torch.ops.elmo_fast.packed_linear(x, packed, b, N))
    assert_close("without bias", F.linear(x, w), torch.ops.elmo_fast.packed_linear(x, packed, None, N))
    torch.library.opcheck(torch.ops.elmo_fast.packed_linear.default, (x.contiguous(), packed, b, N))
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.elmo_fast.packed_linear(x[:, :-1], packed, b, N)
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.elmo_fast.packed_linear(x, packed, None, 5)
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.elmo_fast.packed_linear(x, packed, b[:-1], N)


@requires_cpp
def test_double_backward_raises_instead_of_wrong_numbers():
    """The fused backward is not itself differentiable: a create_graph=True gradient (a gradient
    penalty) must raise at the second backward; it used to return silently wrong second
    derivatives (d/d emb 169 against eager's 991). The eager backend ("torch") supports it."""
    params = make_params(n_highway=2)
    ids = random_char_ids(9, seed=4)
    for backend in ("torch", "cpp"):
        out = char_cnn(ids, *params, "relu", backend=backend)
        (g,) = torch.autograd.grad(out.pow(2).sum(), params[0], create_graph=True)  # through the fused backward
        penalty = g.pow(2).sum()
        if backend == "torch":
            penalty.backward()
        else:
            with pytest.raises(RuntimeError, match="once_differentiable"):
                penalty.backward()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_propagates_like_eager(backend):
    check_nan_propagates(backend)
