"""lstm_proj (C++ CPU backend) against the eager reference: outputs and every gradient on packed,
unsorted, variable-length batches (lengths 0, 1 and full), both directions, clipping firing,
initial-state gradients; fp64 gradcheck; opcheck of the registered ops; input validation."""

from __future__ import annotations

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref
from elmo_fast.testing import assert_close

from .lstm_proj_helpers import NAMES, check_against_ref, check_nan_state, make_inputs, run

pytestmark = pytest.mark.skipif(_ext.cpp_ext() is None, reason=f"C++ extension not built: {_ext.load_error('_C')}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("clips", [(None, None), (0.7, 0.4), (3.0, 0)])
def test_matches_reference_fp32(reverse, clips):
    x, lengths, ws, h0, c0 = make_inputs(scale=2.0)
    ref_outs = check_against_ref("cpp", x, lengths, ws, h0, c0, *clips, reverse)
    cell_clip, proj_clip = clips
    if proj_clip:  # the clip must actually fire for the test to cover its gradient
        assert (ref_outs[0].abs() == proj_clip).any()
    if cell_clip == 0.7:
        assert (ref_outs[2].abs() == cell_clip).any()


@pytest.mark.parametrize("reverse", [False, True])
def test_odd_shapes_and_edge_lengths(reverse):
    # B = 1 with full length, and a batch where every row has length 1.
    x, lengths, ws, h0, c0 = make_inputs(B=1, T=13, I=3, C=7, P=5, lengths=torch.tensor([13]), seed=1)
    check_against_ref("cpp", x, lengths, ws, h0, c0, 1.0, 0.5, reverse)
    x, lengths, ws, h0, c0 = make_inputs(B=5, T=4, I=2, C=17, P=3, lengths=torch.ones(5, dtype=torch.long), seed=2)
    check_against_ref("cpp", x, lengths, ws, h0, c0, 1.0, 0.5, reverse)


def test_all_lengths_zero_passes_state_through():
    x, _, ws, h0, c0 = make_inputs(B=3, T=4)
    lengths = torch.zeros(3, dtype=torch.long)
    out, h, c = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp")
    assert (out == 0).all() and torch.equal(h, h0) and torch.equal(c, c0)


def test_padding_values_are_ignored():
    """NaN past each row's end must not leak into outputs or any gradient."""
    x, lengths, ws, h0, c0 = make_inputs()
    x_nan = x.clone()
    x_nan[torch.arange(x.shape[1])[None, :] >= lengths[:, None]] = float("nan")
    grads = [torch.randn(7, 9, 6), torch.randn(7, 6), torch.randn(7, 11)]
    outs, d = run("cpp", x_nan, lengths, ws, h0, c0, 0.7, 0.4, False, grads)
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, 0.7, 0.4, False, grads)
    for name, r, o in zip(("out", "h_n", "c_n") + NAMES, list(ref_outs) + list(ref_d), list(outs) + list(d)):
        assert_close(name, r, o)


def test_no_grad_path_matches_grad_path():
    x, lengths, ws, h0, c0 = make_inputs()
    with torch.no_grad():
        a = lstm_proj(x, lengths, *ws, 0.7, 0.4, True, h0, c0, backend="cpp")
    b = lstm_proj(x, lengths, *[w.requires_grad_() for w in ws], 0.7, 0.4, True, h0, c0, backend="cpp")
    assert b[0].grad_fn is not None
    for name, r, o in zip(("out", "h_n", "c_n"), a, b):
        assert_close(name, r, o)  # not bitwise: MKL's rounding may depend on buffer alignment


def test_no_initial_state_and_default_backend():
    x, lengths, ws, _, _ = make_inputs()
    ref = lstm_proj_ref(x, lengths, *ws, 3.0, 3.0, True)
    out = lstm_proj(x, lengths, *ws, 3.0, 3.0, True, backend="cpp")
    for name, r, o in zip(("out", "h_n", "c_n"), ref, out):
        assert_close(name, r, o)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("clips", [(0.0, 0.0), (0.6, 0.35)])
def test_gradcheck_fp64(reverse, clips):
    x, lengths, ws, h0, c0 = make_inputs(B=3, T=4, I=3, C=4, P=3, dtype=torch.float64, scale=2.0,
                                         lengths=torch.tensor([2, 4, 1]), seed=3)
    leaves = [t.requires_grad_() for t in [x, *ws, h0, c0]]

    def f(x, w_in, w_rec, bias, w_proj, h0, c0):
        return lstm_proj(x, lengths, w_in, w_rec, bias, w_proj, clips[0], clips[1], reverse, h0, c0, backend="cpp")

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_packed_gemm_tails_and_k_blocks(reverse, gemm_isa):
    """Shapes that exercise every edge of the packed per-step GEMM: 13 rows (6-row tiles + 1 for
    AVX2, 8 + 5 for AVX-512), 4C = 1204 and P = 19 columns (partial 16-column panels, and 75.25
    panels: a lone partial one after the AVX-512 kernel's triples), K = C = 301 > 256 (k-blocks),
    forward and backward (whose GEMMs pack the other way round)."""
    x, lengths, ws, h0, c0 = make_inputs(B=13, T=7, I=9, C=301, P=19, lengths=torch.tensor([7, 1, 3, 7, 0, 5, 6, 2, 7, 4, 1, 7, 6]))
    check_against_ref("cpp", x, lengths, ws, h0, c0, 0.9, 0.5, reverse, atol=2e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_inference_input_map_in_chunks(reverse):
    """Without gradients the input map is computed in chunks of steps (16 MB of [B, 4C] each): with
    B = 64 and 4C = 4096, 16 steps a chunk, so T = 37 takes three chunks in either direction, and
    the bf16-GEMM path chunks the same way."""
    lengths = torch.randint(1, 38, (64,), generator=torch.Generator().manual_seed(5))
    lengths[:2] = torch.tensor([37, 16])
    x, lengths, ws, h0, c0 = make_inputs(B=64, T=37, I=8, C=1024, P=16, lengths=lengths)
    ref = lstm_proj_ref(x, lengths, *ws, 0.8, 0.5, reverse, h0, c0)
    with torch.no_grad():
        out = lstm_proj(x, lengths, *ws, 0.8, 0.5, reverse, h0, c0, backend="cpp")
        low = lstm_proj(x, lengths, *ws, 0.8, 0.5, reverse, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)
    for name, r, o, lo in zip(("out", "h_n", "c_n"), ref, out, low):
        assert_close(name, r, o)
        assert_close(f"{name} (bf16 GEMMs)", r, lo, atol=5e-2, rtol=5e-2)


def test_opcheck_packed_forward_and_pack():
    x, lengths, ws, h0, c0 = make_inputs(B=3, T=5, I=3, C=5, P=2)
    w_in, w_rec, bias, w_proj = ws
    pack = torch.ops.elmo_fast.gemm_pack
    torch.library.opcheck(pack.default, (w_rec.t(),))
    packed = (pack(w_in.t()), pack(w_rec.t()), pack(w_proj.t()))
    torch.library.opcheck(torch.ops.elmo_fast.lstm_proj_fwd_packed.default, (x, lengths, *ws, h0, c0, *packed, 0.7, 0.4, True, True))
    a = torch.ops.elmo_fast.lstm_proj_fwd_packed(x, lengths, *ws, h0, c0, *packed, 0.7, 0.4, False, False)
    b = torch.ops.elmo_fast.lstm_proj_fwd(x, lengths, *ws, h0, c0, 0.7, 0.4, False, False)
    for u, v in zip(a[:3], b[:3]):
        assert torch.equal(u, v)
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.elmo_fast.lstm_proj_fwd_packed(x, lengths, *ws, h0, c0, packed[0], packed[2], packed[1], 0.7, 0.4, False, False)
    with pytest.raises(RuntimeError, match="float32"):
        pack(w_rec.double())


def test_packed_weights_follow_in_place_updates():
    """lstm_proj caches the packed weights per weight version: an optimizer-style in-place update is seen."""
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=6, I=5, C=8, P=3)
    with torch.no_grad():
        first = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
        ws[1].mul_(-0.5)
        ws[3].add_(0.25)
        second = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
    ref = lstm_proj_ref(x, lengths, *ws, 3.0, 3.0, False, h0, c0)[0]
    assert not torch.equal(first, second)
    assert_close("after the update", ref, second)


def test_packed_weights_follow_a_swapped_storage():
    """`param.data = other` keeps the version count but changes the storage: the copy is rebuilt."""
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=6, I=5, C=8, P=3)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    with torch.no_grad():
        first = lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
        params[1].data = params[1].data * -0.5
        second = lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
        ref = lstm_proj_ref(x, lengths, *params, 3.0, 3.0, False, h0, c0)[0]
    assert not torch.equal(first, second)
    assert_close("after the swap", ref, second)


def test_packed_weights_follow_two_storage_swaps():
    """Swapping a weight's storage twice: with the first copy's storage freed, the allocator often
    put the second replacement at its address, the key (version, shape, address) matched and the
    packed copy of the original weights was used (wrong output in 14 of 20 trials before the cache
    kept the storage alive)."""
    x, lengths, ws, h0, c0 = make_inputs(B=2, T=3, I=8, C=16, P=4)
    for trial in range(20):
        params = [torch.nn.Parameter(w.clone()) for w in ws]
        with torch.no_grad():
            lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")
            for _ in range(2):
                for p in params:
                    p.data = torch.randn_like(p)
            out = lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
            ref = lstm_proj_ref(x, lengths, *params, 3.0, 3.0, False, h0, c0)[0]
        assert_close(f"trial {trial}", ref, out)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_packed_weights_follow_a_fused_optimizer_step(optimizer):
    """torch's fused optimizers update parameters without moving `_version`; elmo_fast's step hook
    bumps it, so the packed copies are rebuilt (without it the second call reused stale weights)."""
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=6, I=5, C=8, P=3)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.1, fused=True),
            "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.5, fused=True)}[optimizer]
    opt = make(params)
    out = lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
    out.pow(2).sum().backward()
    opt.step()
    with torch.no_grad():
        second = lstm_proj(x, lengths, *params, 3.0, 3.0, False, h0, c0, backend="cpp")[0]
        ref = lstm_proj_ref(x, lengths, *params, 3.0, 3.0, False, h0, c0)[0]
    assert not torch.equal(out.detach(), second)
    assert_close("after the fused step", ref, second)


def test_bad_inputs_give_clear_errors():
    x, lengths, ws, h0, c0 = make_inputs(B=3, T=5, I=3, C=5, P=2)
    w_in, w_rec, bias, w_proj = ws
    with pytest.raises(ValueError, match="lengths must lie in"):
        lstm_proj(x, torch.tensor([6, 1, 1]), *ws, backend="cpp")
    with pytest.raises(TypeError, match="integer tensor"):
        lstm_proj(x, torch.tensor([1.0, 1.0, 1.0]), *ws, backend="cpp")
    with pytest.raises(ValueError, match=r"w_rec must be \[20, 2\]"):
        lstm_proj(x, lengths, w_in, w_rec[:, :1], bias, w_proj, backend="cpp")
    with pytest.raises(TypeError, match=r"cast with \.to"):
        lstm_proj(x, lengths, w_in.double(), w_rec, bias, w_proj, backend="cpp")
    with pytest.raises(ValueError, match="clip values must be >= 0"):
        lstm_proj(x, lengths, *ws, -1.0, backend="cpp")
    with pytest.raises(ValueError, match=r"h0 must be \[3, 2\]"):
        lstm_proj(x, lengths, *ws, h0=h0[:2], backend="cpp")
    # The registered op guards itself too (direct torch.ops calls skip the Python checks).
    with pytest.raises(RuntimeError, match="w_proj must be"):
        torch.ops.elmo_fast.lstm_proj_fwd(x, lengths, w_in, w_rec, bias, w_proj.t(), h0, c0, 0.0, 0.0, False, False)
    with pytest.raises(RuntimeError, match="forward cache is missing"):
        e = torch.empty(0)
        torch.ops.elmo_fast.lstm_proj_bwd(torch.zeros(3, 5, 2), torch.zeros(3, 2), torch.zeros(3, 5), x, lengths, w_in,
                                          w_rec, w_proj, h0, c0, e, e, e, e, e, 0.0, 0.0, False)


@pytest.mark.parametrize("reverse", [False, True])
def test_bf16_gemm_inference_accuracy(reverse):
    """bf16 GEMM operands with fp32 state: error vs the fp32 reference at most 2x that of the eager
    reference run entirely in bf16 (flash-attention's low-precision rule)."""
    x, lengths, ws, h0, c0 = make_inputs(B=6, T=9, I=33, C=40, P=17, scale=1.5, lengths=torch.tensor([9, 1, 4, 0, 9, 3]))
    ref = lstm_proj_ref(x, lengths, *ws, 3.0, 3.0, reverse, h0, c0)
    low = lstm_proj_ref(x.bfloat16(), lengths, *[w.bfloat16() for w in ws], 3.0, 3.0, reverse, h0.bfloat16(), c0.bfloat16())
    with torch.no_grad():
        out = lstm_proj(x, lengths, *ws, 3.0, 3.0, reverse, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)
    for name, r, lo, o in zip(("out", "h_n", "c_n"), ref, low, out):
        assert o.dtype == torch.float32
        err, err_low = (o - r).abs().max().item(), (lo.float() - r).abs().max().item()
        assert err <= 2 * err_low + 1e-6, f"{name}: bf16-GEMM error {err:.3g} > 2x eager-bf16 error {err_low:.3g}"
        assert_close(name, r, o, atol=3e-2, rtol=3e-2)
    assert (out[0][torch.arange(9)[None, :] >= lengths[:, None]] == 0).all()


def test_bf16_gemm_rejects_training_and_other_backends():
    x, lengths, ws, h0, c0 = make_inputs(B=3, T=5, I=3, C=5, P=2)
    with pytest.raises(RuntimeError, match="inference-only"):
        lstm_proj(x, lengths, *[w.requires_grad_() for w in ws], backend="cpp", gemm_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cpp backend"):
        lstm_proj(x, lengths, *ws, backend="torch", gemm_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="gemm_dtype must be"):
        lstm_proj(x, lengths, *ws, backend="cpp", gemm_dtype=torch.float16)


@pytest.mark.parametrize("stateful", [True, False])
def test_elmo_lstm_through_cpp_matches_torch(stateful):
    """The whole biLSTM (2 layers x 2 directions, residuals) on the cpp op equals it on the reference,
    over two calls (the second starts from the carried state when stateful), with gradients."""
    from elmo_fast.modules.lstm import ElmoLstm

    torch.manual_seed(0)
    models = {}
    for be in ("torch", "cpp"):
        torch.manual_seed(0)
        m = ElmoLstm(6, 6, 13, 2, True, memory_cell_clip_value=3.0, state_projection_clip_value=3.0, stateful=stateful, backend=be)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 1.0 / p.shape[-1] ** 0.5)
        models[be] = m
    for call, (B, T) in enumerate([(4, 7), (5, 6)]):
        lengths = torch.tensor([T, 2, 5, 1, T][:B])
        mask = torch.arange(T)[None, :] < lengths[:, None]
        x = torch.randn(B, T, 6) * mask[..., None]
        grad = torch.randn(2, B, T, 12)
        outs, grads = {}, {}
        for be, m in models.items():
            xi = x.clone().requires_grad_()
            outs[be] = m(xi, mask)
            outs[be].backward(grad)
            grads[be] = [xi.grad] + [p.grad.clone() for p in m.parameters()]
            m.zero_grad(set_to_none=True)
        assert_close(f"call {call} output", outs["torch"], outs["cpp"])
        for k, (r, o) in enumerate(zip(grads["torch"], grads["cpp"])):
            assert_close(f"call {call} grad {k}", r, o, atol=1e-4)
    if stateful:
        for r, o in zip(models["torch"]._states, models["cpp"]._states):
            assert_close("carried state", r, o)
    with torch.no_grad():  # the bf16-GEMM inference path runs the same module
        models["cpp"].set_gemm_dtype(torch.bfloat16)
        models["cpp"].reset_states()
        models["torch"].reset_states()
        assert_close("bf16 output", models["torch"](x, mask), models["cpp"](x, mask), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("threads", [1, 2])
def test_training_after_an_inference_mode_call(threads):
    """A stateful biLSTM that ran once under torch.inference_mode() (a validation step, as PyTorch
    Lightning runs them) carries inference tensors as its state; the next training step must still
    save them for backward (it raised "Inference tensors cannot be saved for backward"). 2 threads
    take the both-directions-at-once path."""
    from elmo_fast.modules.lstm import ElmoLstm

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {}
        for be in ("torch", "cpp"):
            torch.manual_seed(0)
            models[be] = ElmoLstm(6, 6, 13, 2, True, memory_cell_clip_value=3.0, state_projection_clip_value=3.0, backend=be)
        x, mask = torch.randn(3, 5, 6), torch.ones(3, 5, dtype=torch.bool)
        grads = {}
        for be, m in models.items():
            with torch.inference_mode():
                m(x, mask)
            assert m._states[0].is_inference()
            m(x, mask).sum().backward()
            grads[be] = [p.grad for p in m.parameters()]
        for k, (r, o) in enumerate(zip(grads["torch"], grads["cpp"])):
            assert_close(f"grad {k}", r, o, atol=1e-4)
        h0 = models["cpp"]._states[0][0, :, :6].clone()
        with torch.inference_mode():
            h0 = h0.clone()
        x_in, lengths, ws, _, c0 = make_inputs(B=3, T=5, I=5, C=11, P=6)
        ws = [w.requires_grad_() for w in ws]
        out, h, c = lstm_proj(x_in, lengths, *ws, h0=h0, c0=c0, backend="cpp")  # the op itself, given such a state
        out.sum().backward()
        assert ws[0].grad is not None
    finally:
        torch.set_num_threads(old)


def test_bf16_gemm_takes_cached_bf16_weights():
    """The op accepts bf16 GEMM weights (what lstm_proj passes from its cache): same result as
    converting inside, opcheck-clean, and the cache follows an in-place weight update."""
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=6, I=5, C=8, P=3, lengths=torch.tensor([6, 2, 0, 5]))
    w_in, w_rec, bias, w_proj = ws
    op = torch.ops.elmo_fast.lstm_proj_fwd_bf16
    a = op(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, 3.0, 3.0, False)
    b = op(x, lengths, w_in.bfloat16(), w_rec.bfloat16(), bias, w_proj.bfloat16(), h0, c0, 3.0, 3.0, False)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    torch.library.opcheck(op.default, (x, lengths, w_in.bfloat16(), w_rec.bfloat16(), bias, w_proj.bfloat16(), h0, c0, 3.0, 3.0, True))
    with pytest.raises(RuntimeError, match="x's dtype"):
        op(x, lengths, w_in, w_rec, bias.bfloat16(), w_proj, h0, c0, 3.0, 3.0, False)
    with torch.no_grad():
        first = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)[0]
        w_proj.mul_(-1.0)
        second = lstm_proj(x, lengths, *ws, 3.0, 3.0, False, h0, c0, backend="cpp", gemm_dtype=torch.bfloat16)[0]
        fresh = op(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, 3.0, 3.0, False)[0]
    assert not torch.equal(first, second) and torch.equal(second, fresh)


def test_pooled_buffers_match_reference_and_carry_no_stale_data():
    """Shapes whose cache and gradient buffers ([T, B, 4C] >= 4 MB) come from the CPU buffer pool
    (csrc/common/cpu_pool.h): two forward+backward passes in a row with different lengths (the
    second reuses the first's blocks, which hold its values), each against the reference; then
    the pool holds those blocks and cpu_pool_clear hands them back."""
    torch.ops.elmo_fast.cpu_pool_clear()
    for seed, lengths in ((0, [18, 18, 5, 12, 1, 9, 18, 3, 14, 7, 2, 16, 18, 11, 6, 10]),
                          (1, [2, 18, 1, 4, 18, 3, 0, 6, 18, 1, 8, 2, 5, 1, 3, 9])):
        x, _, ws, h0, c0 = make_inputs(B=16, T=18, I=6, C=1030, P=7, lengths=torch.tensor(lengths), seed=seed)
        x[torch.arange(18)[None, :] >= torch.tensor(lengths)[:, None]] = float("nan")  # padding is ignored
        check_against_ref("cpp", x, torch.tensor(lengths), ws, h0, c0, 3.0, 2.0, seed == 1, atol=1e-4)
    assert torch.ops.elmo_fast.cpu_pool_cached_bytes() >= 18 * 16 * 4 * 1030 * 4
    torch.ops.elmo_fast.cpu_pool_clear()
    assert torch.ops.elmo_fast.cpu_pool_cached_bytes() == 0


def test_cpu_pool_hands_back_sizes_no_longer_asked_for():
    """A free block that no request takes within 256 pooled requests goes back to the OS, so a run
    whose buffer sizes drift (inference over length-bucketed batches) holds the sizes in use, not
    every size it has seen. packed_linear packs x into a pooled buffer of M x K floats."""
    ops = torch.ops.elmo_fast
    w = ops.gemm_pack(torch.randn(1024, 16))

    def run(m, times):
        x = torch.randn(m, 1024)
        for _ in range(times):
            ops.packed_linear(x, w, None, 16)

    ops.cpu_pool_clear()
    run(3000, 300)
    steady = ops.cpu_pool_cached_bytes()
    assert steady >= 3000 * 1024 * 4  # the block in use stays cached
    ops.cpu_pool_clear()
    run(1100, 1)  # a block too small for the 3000-row requests, never taken again
    assert ops.cpu_pool_cached_bytes() >= 1100 * 1024 * 4
    run(3000, 300)
    assert ops.cpu_pool_cached_bytes() == steady
    ops.cpu_pool_clear()


def test_cpu_pool_can_be_disabled(tmp_path):
    """ELMO_FAST_CPU_POOL_MB=0 turns the pool off (plain allocations, nothing cached), same results;
    a malformed value is a clear error."""
    import subprocess
    import sys

    code = ("import torch, elmo_fast\n"
            "from elmo_fast.ops.lstm_proj import lstm_proj\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x = torch.randn(16, 18, 6, generator=g, requires_grad=True)\n"
            "ws = [torch.randn(4 * 1030, 6, generator=g) * 0.3, torch.randn(4 * 1030, 7, generator=g) * 0.3,\n"
            "      torch.zeros(4 * 1030), torch.randn(7, 1030, generator=g) * 0.05]\n"
            "out = lstm_proj(x, torch.full((16,), 18), *ws, 3.0, 2.0, False, backend='cpp')[0]\n"
            "out.sum().backward()\n"
            "print(torch.ops.elmo_fast.cpu_pool_cached_bytes(), float(x.grad.double().sum()))\n")
    env = {**__import__("os").environ}
    runs = {}
    for mb in ("0", "1024"):
        env["ELMO_FAST_CPU_POOL_MB"] = mb
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        runs[mb] = p.stdout.split()
    assert runs["0"][0] == "0" and int(runs["1024"][0]) > 0
    assert runs["0"][1] == runs["1024"][1]
    env["ELMO_FAST_CPU_POOL_MB"] = "lots"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "ELMO_FAST_CPU_POOL_MB must be a whole number" in p.stderr


# ---------------------------------------------------------------------------------------------
# Both directions of a layer at once (lstm_proj_pair: one thread per direction).


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_matches_each_direction(dtype):
    """Own lengths per direction (unsorted, 0, 1 and full), clipping firing, initial states: the
    outputs and every gradient of both directions equal the reference run one direction at a time."""
    from elmo_fast.ops.lstm_proj.function import lstm_proj_pair
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj

    xf, len_f, wf, h0f, c0f = make_inputs(B=7, T=9, I=5, C=11, P=6, dtype=dtype, scale=3.0, seed=1)
    xb, _, wb, h0b, c0b = make_inputs(B=7, T=9, I=5, C=11, P=6, dtype=dtype, scale=3.0, seed=2)
    len_b = torch.tensor([2, 9, 0, 1, 5, 9, 7])
    assert plan_lstm_proj(xf.device, xf.dtype, wf[1].shape, wf[3].shape, directions=2).pair
    leaves = [t.clone().requires_grad_() for t in (xf, *wf, h0f, c0f, xb, *wb, h0b, c0b)]
    ref = (*lstm_proj_ref(leaves[0], len_f, *leaves[1:5], 0.9, 0.5, False, leaves[5], leaves[6]),
           *lstm_proj_ref(leaves[7], len_b, *leaves[8:12], 0.9, 0.5, True, leaves[12], leaves[13]))
    fwd, bwd = lstm_proj_pair(leaves[0], leaves[7], (len_f, len_b), leaves[1:5], leaves[8:12], 0.9, 0.5,
                              (leaves[5], leaves[6]), (leaves[12], leaves[13]))
    out = (*fwd, *bwd)
    assert (ref[0].detach().abs() >= 0.5 - 1e-6).any(), "the projection clip should fire"
    for name, r, o in zip(("out", "h_n", "c_n", "out (reverse)", "h_n (reverse)", "c_n (reverse)"), ref, out):
        assert_close(name, r, o)
    grads = [torch.randn_like(r) for r in ref]
    names = [f"{n} ({d})" for d in ("forward", "reverse") for n in NAMES]
    for name, r, o in zip(names, torch.autograd.grad(ref, leaves, grads), torch.autograd.grad(out, leaves, grads)):
        assert_close(name, r, o, 1e-4 if dtype == torch.float32 else None)


@pytest.mark.usefixtures("two_threads")
def test_pair_gradcheck_fp64():
    from elmo_fast.ops.lstm_proj.function import LstmProjPairFunction
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj

    xf, len_f, wf, h0f, c0f = make_inputs(B=3, T=4, I=2, C=3, P=2, dtype=torch.float64, lengths=torch.tensor([4, 1, 2]))
    xb, _, wb, h0b, c0b = make_inputs(B=3, T=4, I=2, C=3, P=2, dtype=torch.float64, seed=3)
    len_b = torch.tensor([3, 4, 0])
    ins = [t.clone().requires_grad_() for t in (xf, *wf, h0f, c0f, xb, *wb, h0b, c0b)]
    plan = plan_lstm_proj(xf.device, xf.dtype, wf[1].shape, wf[3].shape, "cpp", directions=2)
    assert plan.packed is None  # fp64: the unpacked kernels

    def fn(*t):
        return LstmProjPairFunction.apply(plan, 0.8, 0.6, t[0], len_f, *t[1:7], t[7], len_b, *t[8:14])

    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-5)


def test_pair_is_used_only_where_it_pays():
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj

    def pair_supported(x, backend, gemm_dtype, w_rec):
        w_proj_shape = (w_rec.shape[1], w_rec.shape[0] // 4)
        return plan_lstm_proj(x.device, x.dtype, w_rec.shape, w_proj_shape, backend, gemm_dtype, directions=2).pair

    x = torch.randn(2, 3, 4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert pair_supported(x, None, None, torch.empty(4096, 128))  # 'small'
        assert not pair_supported(x, None, None, torch.empty(16384, 512))  # 'original': its per-step GEMMs split well
        assert not pair_supported(x, "torch", None, torch.empty(4096, 128))
        assert pair_supported(x, None, torch.bfloat16, torch.empty(4096, 128))  # bf16 GEMMs: the same loop
        assert not pair_supported(x.double(), None, torch.bfloat16, torch.empty(4096, 128))
        torch.set_num_threads(1)
        assert not pair_supported(x, None, None, torch.empty(4096, 128))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
def test_double_backward_raises_instead_of_wrong_numbers(threads):
    """As for the char CNN: a second-order gradient through the fused backward raises (it used to
    come back silently wrong, 3,264 vs eager's 127,668); 2 threads take the paired path."""
    from elmo_fast.modules.lstm import ElmoLstm

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m = ElmoLstm(5, 5, 8, 1, True, backend="cpp")
        x = torch.randn(2, 4, 5, requires_grad=True)
        out = m(x, torch.ones(2, 4, dtype=torch.bool))
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            g.pow(2).sum().backward()
    finally:
        torch.set_num_threads(old)


def test_nan_state_propagates_like_eager():
    check_nan_state("cpp")
