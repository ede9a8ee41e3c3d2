"""The bf16 packed micro-kernels (csrc/common/packed_gemm.h) and what runs on them: `packed_linear`,
the LSTM's time loop (`lstm_proj(..., gemm_dtype=torch.bfloat16)`, one direction and the pair) and
the char encoder's highway and projection, each against the fp32 reference with bf16 tolerances and
against the eager reference with the same bf16-rounded operands, on odd shapes and packed
variable-length batches. Every kernel variant runs by forcing it (`gemm_isa`, as the environment
switch ELMO_FAST_CPU_ISA does): avx512bf16 (vdpbf16ps), avx512 and avx2 (the same bf16 operands
through fp32 FMAs); a variant the CPU lacks is skipped, saying why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref
from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref
from elmo_fast.testing import assert_close, random_char_ids

pytestmark = pytest.mark.skipif(_ext.cpp_ext() is None, reason=f"C++ extension not built: {_ext.load_error('_C')}")

ISAS = ["avx2", "avx512", "avx512bf16"]
BF16_EPS = 2.0**-8  # bf16's unit roundoff is 2^-9; a product of two rounded operands is within ~2^-8


@pytest.fixture(params=ISAS)
def bf16_isa(request):
    """Runs a test once per kernel variant of the packed GEMM; skips, saying so, the ones this CPU lacks."""
    ops = torch.ops.elmo_fast
    saved = ops.gemm_isa()
    try:
        ops.gemm_isa(request.param)
    except RuntimeError as e:
        pytest.skip(f"packed GEMM variant {request.param} unavailable on this CPU: {e}")
    yield request.param
    ops.gemm_isa(saved)


def _rounded(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float64)


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


# (M, K, N): K = 1 and odd K (a half-filled last pair), N off the 16-column panels and the 3-panel
# groups, M off the 6- and 8-row tiles; K = 1030 crosses k-blocks, (600, 1030, 400) takes several row blocks.
SHAPES = [(1, 1, 1), (3, 7, 5), (9, 2, 16), (13, 301, 50), (37, 1027, 333), (70, 256, 49), (600, 1030, 400)]


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_packed_linear_bf16(bf16_isa, M, K, N):
    g = torch.Generator().manual_seed(M * 7 + K)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    y = torch.ops.elmo_fast.packed_linear(x, torch.ops.elmo_fast.gemm_pack_bf16(w.t()), b, N)
    assert y.dtype == torch.float32 and y.shape == (M, N)
    mag = x.abs().double() @ w.abs().double().t()  # sum |x| |w|: what the rounding errors scale with
    # Against the same rounded operands in fp64: only the fp32 summation differs.
    exact = _rounded(x) @ _rounded(w).t() + b.double()
    bound = 4 * K * 2.0**-24 * mag + 1e-6
    assert ((y.double() - exact).abs() <= bound).all(), f"{bf16_isa}: max err {(y.double() - exact).abs().max():.3g}"
    # Against fp32: the operands' bf16 rounding.
    ref = x.double() @ w.double().t() + b.double()
    assert ((y.double() - ref).abs() <= 2 * BF16_EPS * mag + 1e-6).all()


def test_bf16_variants_agree():
    """The three variants compute the same rounded products; only the order of the fp32 sums differs."""
    ops = torch.ops.elmo_fast
    x, w = torch.randn(29, 515), torch.randn(77, 515)
    packed, saved = ops.gemm_pack_bf16(w.t()), ops.gemm_isa()
    outs = {}
    try:
        for isa in ISAS:
            try:
                ops.gemm_isa(isa)
            except RuntimeError:
                continue
            outs[isa] = ops.packed_linear(x, packed, None, 77)
    finally:
        ops.gemm_isa(saved)
    if len(outs) < 2:
        pytest.skip(f"only the {list(outs)} variant runs on this CPU: nothing to compare it with")
    first = next(iter(outs.values()))
    for isa, y in outs.items():
        assert_close(f"{isa} vs {next(iter(outs))}", first, y, atol=1e-4, rtol=1e-5)


def test_packed_linear_bf16_nan_and_inf(bf16_isa):
    """A NaN or inf in a row of x reaches that row of y only (the rounding keeps them; the zero
    padding of odd K and partial panels never multiplies them)."""
    x, w = torch.randn(10, 33), torch.randn(21, 33)
    x[3, 5] = float("nan")
    x[7, 32] = float("inf")
    y = torch.ops.elmo_fast.packed_linear(x, torch.ops.elmo_fast.gemm_pack_bf16(w.t()), None, 21)
    assert y[3].isnan().all()
    assert not y[7].isfinite().any()
    others = [r for r in range(10) if r not in (3, 7)]
    assert y[others].isfinite().all()


def test_pack_bf16_layout_and_errors():
    ops = torch.ops.elmo_fast
    K, N = 5, 19
    b = torch.randn(K, N)
    p = ops.gemm_pack_bf16(b)
    assert p.dtype == torch.bfloat16 and p.shape == (2, 3, 32)
    rb = b.bfloat16()
    for k in range(6):
        for n in range(32):
            want = rb[k, n] if k < K and n < N else torch.tensor(0, dtype=torch.bfloat16)
            assert p[n // 16, k // 2, 2 * (n % 16) + k % 2] == want, (k, n)
    assert torch.equal(ops.gemm_pack_bf16(b.bfloat16()), p), "bf16 weights pack as their fp32 values"
    assert torch.equal(ops.gemm_pack_bf16(b.t().contiguous().t()), p), "strides are read as given"
    with pytest.raises(RuntimeError, match="expects a float32 or bfloat16 CPU matrix"):
        ops.gemm_pack_bf16(b.double())
    with pytest.raises(RuntimeError, match="bf16 packed weight .* does not match K = 7"):
        ops.packed_linear(torch.randn(2, 7), p, None, N)
    # K = 6 fits the pack of K = 5 (pairs of k): the weight with a zero row appended.
    x6 = torch.randn(2, 6)
    assert torch.equal(ops.packed_linear(x6, p, None, N), ops.packed_linear(x6[:, :5].contiguous(), p, None, N))


def test_gemm_isa_switch():
    ops = torch.ops.elmo_fast
    with pytest.raises(RuntimeError, match="expected 'avx2' or 'avx512' or 'avx512bf16'"):
        ops.gemm_isa("amx")
    best = ops.gemm_isa()
    if best != "avx512bf16":
        with pytest.raises(RuntimeError, match="has no avx512_bf16"):
            ops.gemm_isa("avx512bf16")
    code = "import torch, elmo_fast; print(torch.ops.elmo_fast.gemm_isa())"
    for wanted in ISAS:
        env = dict(os.environ, ELMO_FAST_CPU_ISA=wanted)
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
        # The variable caps the level; it never selects one the CPU lacks.
        assert got == min(wanted, best, key=ISAS.index), (wanted, got)


def _lstm_inputs(B, T, I, C, P, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):  # fp32 values in fp64: the references round them to bf16 as the kernels do
        return (torch.randn(*shape, generator=g) * s).double()

    x = rnd(B, T, I)
    ws = [rnd(4 * C, I, s=1.5 / I**0.5), rnd(4 * C, P, s=1.5 / P**0.5), rnd(4 * C, s=0.5), rnd(P, C, s=3.0 / C**0.5)]
    return x, torch.tensor(lengths), ws, rnd(B, P, s=0.5), rnd(B, C)


LSTM_CASES = {
    # B, T, I, C, P, lengths (unsorted, with 0, 1 and full rows): the clips (3.0) fire now and then
    "odd": (6, 9, 33, 40, 17, [9, 1, 4, 0, 9, 3]),
    "wide": (11, 7, 130, 67, 49, [7, 7, 2, 5, 1, 6, 7, 3, 0, 4, 7]),
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_proj_bf16_gemms(bf16_isa, case, reverse):
    x, lengths, ws, h0, c0 = _lstm_inputs(*LSTM_CASES[case])
    f32 = [t.float() for t in (x, *ws, h0, c0)]
    with torch.no_grad():
        out = lstm_proj(f32[0], lengths, *f32[1:5], 3.0, 3.0, reverse, f32[5], f32[6], backend="cpp",
                        gemm_dtype=torch.bfloat16)
    ref = lstm_proj_ref(x, lengths, *ws, 3.0, 3.0, reverse, h0, c0)  # fp64, exact operands
    same_ops = lstm_proj_ref(x, lengths, *ws, 3.0, 3.0, reverse, h0, c0, gemm_dtype=torch.bfloat16)  # fp64, rounded
    for name, r, s, o in zip(("out", "h_n", "c_n"), ref, same_ops, out):
        assert o.dtype == torch.float32
        # bf16 tolerances against the exact model (a recurrence of 9 steps with clips firing)...
        assert_close(f"{name} vs fp64", r.float(), o, atol=5e-2, rtol=5e-2)
        assert _rms(o, r) <= 2.5e-2 * r.pow(2).mean().sqrt().item()
        # ...and far closer to the eager model with the same rounded operands: what is left is the
        # fp32 sums (~1e-7), and now and then an activation that rounds to the neighbouring bf16 and
        # whose difference the recurrence carries on (the rms, not the max, of the error).
        err_ref, err_same = _rms(o, r), _rms(o, s)
        assert err_same <= 0.25 * err_ref, f"{name}: rms {err_same:.3g} vs rounded eager, {err_ref:.3g} vs exact"
    mask = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    assert (out[0][mask] == 0).all()


def test_lstm_proj_bf16_pair_matches_single_direction(bf16_isa):
    """Both directions at once (one thread each) give what each direction gives alone: the same
    kernels over the same packed rows, so the same bits."""
    from elmo_fast.ops.lstm_proj.function import lstm_proj_pair

    x, lengths, ws, h0, c0 = (t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                              for t in _lstm_inputs(*LSTM_CASES["odd"]))
    ws = [w.float() for w in ws]
    wb = [w.flip(0).contiguous() for w in ws]  # another set of weights for the reverse direction
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            f, b = lstm_proj_pair(x, x.flip(2), lengths, ws, wb, 3.0, 3.0, (h0, c0), None, gemm_dtype=torch.bfloat16)
            f1 = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)
            b1 = lstm_proj(x.flip(2), lengths, *wb, 3.0, 3.0, True, backend="cpp", gemm_dtype=torch.bfloat16)
    finally:
        torch.set_num_threads(old)
    for name, p, s in zip(("out", "h_n", "c_n") * 2, (*f, *b), (*f1, *b1)):
        assert torch.equal(p, s), name
    with pytest.raises(RuntimeError, match="inference-only"):
        lstm_proj_pair(x, x, lengths, [w.requires_grad_() for w in ws], wb, gemm_dtype=torch.bfloat16)


def test_lstm_proj_bf16_op_and_weight_updates():
    """The uncached op (weights packed per call, fp32 or bf16 weights) gives the cached path's bits,
    and an in-place weight update reaches the cached bf16 packs."""
    x, lengths, ws, h0, c0 = _lstm_inputs(*LSTM_CASES["odd"])
    x, h0, c0 = x.float(), h0.float(), c0.float()
    ws = [w.float() for w in ws]
    with torch.no_grad():
        cached = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)
        op = torch.ops.elmo_fast.lstm_proj_fwd_bf16
        for weights in (ws, [w.bfloat16() if i != 2 else w for i, w in enumerate(ws)]):
            direct = op(x, lengths, *weights, h0, c0, 3.0, 3.0, False)
            for name, a, b in zip(("out", "h_n", "c_n"), cached, direct):
                assert torch.equal(a, b), name
        ws[1].mul_(0.5)
        after = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)
        fresh = op(x, lengths, *ws, h0, c0, 3.0, 3.0, False)
    assert not torch.equal(after[0], cached[0]), "the cached packs missed the weight update"
    assert torch.equal(after[0], fresh[0])


def _char_params(F_sizes=((1, 4), (2, 5), (3, 7), (7, 17)), E=6, P=19, n_highway=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).double()

    F = sum(n for _, n in F_sizes)
    return (rnd(262, E), [rnd(n, E, w, s=(w * E) ** -0.5) for w, n in F_sizes], [rnd(n, s=0.1) for _, n in F_sizes],
            [rnd(2 * F, F, s=F**-0.5) for _ in range(n_highway)], [rnd(2 * F, s=0.1) for _ in range(n_highway)],
            rnd(P, F, s=F**-0.5), rnd(P, s=0.1))


def test_char_cnn_bf16_gemms(bf16_isa):
    """Highway and projection GEMMs on bf16-packed weights (the conv stays fp32), odd token count
    and a 33-filter width (partial panels), through dedup and without."""
    ids = torch.cat([random_char_ids(23, seed=1), random_char_ids(3, seed=1), torch.zeros(2, 50, dtype=torch.long)])
    params = _char_params()
    emb, ws, bs, hw, hb, pw, pb = params
    f32 = (emb.float(), [w.float() for w in ws], [b.float() for b in bs], [w.float() for w in hw],
           [b.float() for b in hb], pw.float(), pb.float())
    ref = char_cnn_ref(ids, *params)
    same_ops = char_cnn_ref(ids, *params, gemm_dtype=torch.bfloat16)
    with torch.no_grad():
        for dedup in (True, False):
            out = char_cnn(ids, *f32, "relu", backend="cpp", dedup=dedup, gemm_dtype=torch.bfloat16)
            assert out.dtype == torch.float32
            assert_close("char_cnn vs fp64", ref.float(), out, atol=3e-2, rtol=3e-2)
            err_ref, err_same = _rms(out, ref), _rms(out, same_ops)
            assert err_same <= 0.25 * err_ref, f"rms {err_same:.3g} vs rounded eager, {err_ref:.3g} vs exact"
