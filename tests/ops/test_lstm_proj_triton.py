"""Triton backend of lstm_proj against the eager reference (outputs and every gradient).

On a CPU the kernels run under TRITON_INTERPRET=1, which must be set before triton is imported;
when this pytest process was started without it, `test_interpreter_subprocess` re-runs this file
in a child process that sets it (and the in-process tests skip, naming that test)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.testing import assert_close

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
RUNNABLE = _ext.has_triton() and (INTERPRET or torch.cuda.is_available())
here = pytest.mark.skipif(not RUNNABLE, reason="Triton kernels need TRITON_INTERPRET=1 or a GPU; covered on CPU by test_interpreter_subprocess")
pytestmark = pytest.mark.usefixtures("exact_fp32")


@pytest.mark.skipif(RUNNABLE or not _ext.has_triton(), reason="in-process Triton tests run here already" if RUNNABLE else "triton not installed")
def test_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.abspath(__file__)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2].replace("1 skipped", ""), proc.stdout[-2000:]


# fp32 on a GPU: the kernels' dots are ieee (not TF32) and torch's GEMMs do not use TF32 by default,
# so only the fast exp of sigmoid/tanh differs from the reference (as in test_lstm_proj_cuda).
GPU_TOL = {"atol": 2e-4, "rtol": 1e-3}


def _device():
    return "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


@pytest.fixture(params=["time_loop", "step_kernels"])
def fwd_path(request, monkeypatch):
    """Both forward paths: the in-kernel time loop (small C x P) and the per-step kernels; the
    counter proves which one ran."""
    from elmo_fast.ops.lstm_proj import plan as lstm_plan
    from elmo_fast.ops.lstm_proj import triton_impl

    calls = []
    loop = triton_impl._fwd_time_loop
    monkeypatch.setattr(triton_impl, "_fwd_time_loop", lambda *a: calls.append(1) or loop(*a))
    monkeypatch.setattr(lstm_plan, "TIME_LOOP_MAX_WEIGHTS", 1 << 30 if request.param == "time_loop" else 0)
    yield request.param
    assert bool(calls) == (request.param == "time_loop"), "the expected forward path did not run"


@here
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("clips", [(None, None), (0.7, 0.4)])
def test_triton_matches_reference(reverse, clips, fwd_path):
    from tests.ops.lstm_proj_helpers import make_inputs, run

    dev = _device()
    x, lengths, ws, h0, c0 = make_inputs(B=5, T=6, I=3, C=19, P=4, scale=2.0, lengths=torch.tensor([6, 1, 0, 4, 6]))
    x, ws, h0, c0 = x.to(dev), [w.to(dev) for w in ws], h0.to(dev), c0.to(dev)
    grads = [torch.randn(5, 6, 4, device=dev), torch.randn(5, 4, device=dev), torch.randn(5, 19, device=dev)]
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, *clips, reverse, grads)
    outs, d = run("triton", x, lengths, ws, h0, c0, *clips, reverse, grads)
    tol = {} if dev == "cpu" else GPU_TOL
    for name, r, o in zip(("out", "h_n", "c_n", "dx", "dw_in", "dw_rec", "dbias", "dw_proj", "dh0", "dc0"),
                          list(ref_outs) + list(ref_d), list(outs) + list(d)):
        assert_close(name, r, o, **tol)
    if clips[1]:
        assert (ref_outs[0].abs() == clips[1]).any()


@here
def test_triton_fp64_is_computed_in_fp64(fwd_path):
    """fp64 in, fp64 math (gradcheck and reference runs rely on it): the kernels used to load every
    value as fp32, so outputs were off by ~4e-7 and a length-0 row's state came back rounded. fp64
    takes the per-step kernels (computing in fp64) even where the fp32 time loop would run."""
    from elmo_fast.ops.lstm_proj import triton_impl
    from tests.ops.lstm_proj_helpers import make_inputs, run

    dev = _device()
    x, lengths, ws, h0, c0 = make_inputs(B=5, T=6, I=3, C=19, P=4, scale=2.0, dtype=torch.float64,
                                         lengths=torch.tensor([6, 1, 0, 4, 6]))
    x, ws, h0, c0 = x.to(dev), [w.to(dev) for w in ws], h0.to(dev), c0.to(dev)
    grads = [torch.randn(5, 6, 4, device=dev, dtype=torch.float64), torch.randn(5, 4, device=dev, dtype=torch.float64),
             torch.randn(5, 19, device=dev, dtype=torch.float64)]
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, 0.7, 0.4, False, grads)
    if fwd_path == "time_loop":  # fp64 never takes it: make the fixture's check about fp32 only
        triton_impl._fwd_time_loop(*_time_loop_args(triton_impl, x.float(), lengths, [w.float() for w in ws], h0.float(), c0.float()))
    outs, d = run("triton", x, lengths, ws, h0, c0, 0.7, 0.4, False, grads)  # 0.7: not an fp32 value
    for name, r, o in zip(("out", "h_n", "c_n", "dx", "dw_in", "dw_rec", "dbias", "dw_proj", "dh0", "dc0"),
                          list(ref_outs) + list(ref_d), list(outs) + list(d)):
        assert o.dtype == torch.float64, name
        assert_close(name, r, o)
    assert torch.equal(outs[1][2], h0[2]) and torch.equal(outs[2][2], c0[2])  # length 0: passed through


def _time_loop_args(triton_impl, x, lengths, ws, h0, c0):
    """Arguments of one direct `_fwd_time_loop` call (as lstm_proj_fwd prepares them)."""
    w_in, w_rec, bias, w_proj = ws
    B, T, I = x.shape
    perm, inv, sorted_len, _ = triton_impl._plan(lengths, T, x.device)
    xs = x.index_select(0, perm).transpose(0, 1).contiguous()
    gates = (xs.view(T * B, I) @ w_in.t()).view(T, B, -1)
    return x, xs, gates, perm, inv, sorted_len, w_rec, bias, w_proj, h0, c0, 0.7, 0.4, False, False


@here
def test_triton_nan_state_propagates_like_eager(fwd_path):
    from tests.ops.lstm_proj_helpers import check_nan_state

    check_nan_state("triton", _device())


@here
def test_triton_no_grad_path(fwd_path):
    from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref
    from tests.ops.lstm_proj_helpers import make_inputs

    dev = _device()
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=5, I=3, C=8, P=3, lengths=torch.tensor([2, 5, 1, 3]))
    x, ws = x.to(dev), [w.to(dev) for w in ws]
    ref = lstm_proj_ref(x, lengths, *ws, 0.5, 0.3, True)
    with torch.no_grad():
        out = lstm_proj(x, lengths, *ws, 0.5, 0.3, True, backend="triton")
    for name, r, o in zip(("out", "h_n", "c_n"), ref, out):
        assert_close(name, r, o, **({} if dev == "cpu" else GPU_TOL))


@here
def test_time_loop_several_programs_and_padded_sizes(fwd_path):
    """B > 16 rows (two programs of the time-loop kernel), C and P not powers of two, unsorted lengths."""
    from tests.ops.lstm_proj_helpers import make_inputs, run

    dev = _device()
    lengths = torch.tensor([3, 7, 1, 7, 0, 5, 2, 6, 4, 7, 1, 3, 5, 6, 2, 7, 4, 3, 1, 6, 5])
    x, lengths, ws, h0, c0 = make_inputs(B=21, T=7, I=5, C=40, P=20, scale=1.5, lengths=lengths)
    x, ws, h0, c0 = x.to(dev), [w.to(dev) for w in ws], h0.to(dev), c0.to(dev)
    grads = [torch.randn(21, 7, 20, device=dev), torch.randn(21, 20, device=dev), torch.randn(21, 40, device=dev)]
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, 1.0, 0.8, True, grads)
    outs, d = run("triton", x, lengths, ws, h0, c0, 1.0, 0.8, True, grads)
    tol = {} if dev == "cpu" else GPU_TOL
    for name, r, o in zip(("out", "h_n", "c_n", "dx", "dw_in", "dw_rec", "dbias", "dw_proj", "dh0", "dc0"),
                          list(ref_outs) + list(ref_d), list(outs) + list(d)):
        assert_close(name, r, o, **tol)


@here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_2x_of_eager(dtype, fwd_path):
    """bf16/fp16 weights and activations (fp32 math inside): output error vs the fp32 reference at
    most 2x that of the eager reference run in the same dtype."""
    from tests.ops.lstm_proj_helpers import check_low_precision, make_inputs

    dev = _device()
    x, lengths, ws, h0, c0 = make_inputs(B=5, T=6, I=3, C=19, P=4, lengths=torch.tensor([6, 1, 0, 4, 6]))
    check_low_precision("triton", dtype, x.to(dev), lengths, [w.to(dev) for w in ws], h0.to(dev), c0.to(dev))


@here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_half_precision_state(dtype, reverse, fwd_path):
    """fp32 cell state and cached gate activations for bf16/fp16 models (issue #4): see
    check_half_state; both forward paths, both directions."""
    from elmo_fast.ops.lstm_proj.reference import state_dtype
    from tests.ops.lstm_proj_helpers import check_half_state

    check_half_state("triton", dtype, _device(), reverse)
    assert state_dtype(dtype) == torch.float32


@here
def test_follows_autocast(monkeypatch, fwd_path):
    """Under autocast a GPU backend runs in the autocast dtype, as eager's F.linear does (fp16 here:
    the interpreter miscomputes bf16 dots), not in fp32 on the fp32 parameters: the kernels see
    fp16, the outputs are fp16 within 2x the error of eager under the same autocast, and every
    gradient reaches the fp32 leaves. fp64 inputs stay fp64 (autocast leaves them alone too)."""
    from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref, triton_impl
    from tests.ops.lstm_proj_helpers import make_inputs

    dev = _device()
    x, lengths, ws, h0, c0 = make_inputs(B=5, T=6, I=3, C=19, P=4, lengths=torch.tensor([6, 1, 0, 4, 6]))
    leaves = [t.to(dev).requires_grad_() for t in (x, *ws, h0, c0)]
    seen = []
    fwd = triton_impl.lstm_proj_fwd
    monkeypatch.setattr(triton_impl, "lstm_proj_fwd", lambda *a: seen.append(a[0].dtype) or fwd(*a))
    exact = lstm_proj_ref(leaves[0], lengths, *leaves[1:5], 0.7, 0.4, False, *leaves[5:])
    with torch.autocast(dev, dtype=torch.float16):
        out = lstm_proj(leaves[0], lengths, *leaves[1:5], 0.7, 0.4, False, *leaves[5:], backend="triton")
        eager = lstm_proj_ref(leaves[0], lengths, *leaves[1:5], 0.7, 0.4, False, *leaves[5:])
    assert seen == [torch.float16]
    for name, r, o, e in zip(("out", "h_n", "c_n"), exact, out, eager):
        assert o.dtype == torch.float16, name
        err, err_eager = (o.float() - r).abs().max().item(), (e.float() - r).abs().max().item()
        assert err <= 2 * err_eager + 1e-3, f"{name}: {err:.3g} vs eager {err_eager:.3g}"
    sum(o.float().sum() for o in out).backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)
    with torch.autocast(dev, dtype=torch.float16):
        out64 = lstm_proj(*(t.detach().double() for t in leaves[:1]), lengths, *(t.detach().double() for t in leaves[1:5]),
                          0.7, 0.4, False, backend="triton")
    assert out64[0].dtype == torch.float64 and seen[-1] == torch.float64


@here
def test_elmo_under_autocast_runs_the_kernels_in_the_autocast_dtype(monkeypatch):
    """The whole Elmo on the Triton backend under autocast (fp16 here, as GPU pretraining runs bf16):
    the char encoder hands the LSTM an fp16 x next to fp32 weights; the LSTM kernels then run in
    fp16 (this used to be a dtype-mismatch error), the output is close to the fp32 reference, and
    every gradient reaches the fp32 parameters."""
    import json

    from elmo_fast import Elmo, batch_to_ids
    from elmo_fast.ops.lstm_proj import function as lstm_function
    from elmo_fast.testing import random_tf_weights, small_options, write_hdf5

    dev = _device()
    opts = small_options()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_hdf5(os.path.join(d, "weights.hdf5"), random_tf_weights(opts, scale=3.0, seed=2))
        with open(os.path.join(d, "options.json"), "w") as f:
            json.dump(opts, f)
        files = (os.path.join(d, "options.json"), os.path.join(d, "weights.hdf5"))
        ref = Elmo(*files, 1, dropout=0.0, stateful=False, requires_grad=True, backend="torch").to(dev)
        fast = Elmo(*files, 1, dropout=0.0, stateful=False, requires_grad=True, backend="triton").to(dev)
    seen = []
    impl = lstm_function._fwd_impl
    monkeypatch.setattr(lstm_function, "_fwd_impl", lambda b: (lambda *a: seen.append(a[0].dtype) or impl(b)(*a)))
    ids = batch_to_ids([["The", "cat", "sat", "on", "the", "mat", "."], ["a"], ["naïve", "café", "the"], []]).to(dev)
    a = ref(ids)["elmo_representations"][0]
    with torch.autocast(dev, dtype=torch.float16):
        b = fast(ids)["elmo_representations"][0]
    assert seen and set(seen) == {torch.float16}, seen
    rel_rms = ((a.detach() - b.detach().float()).pow(2).mean() / a.detach().pow(2).mean()).sqrt().item()
    assert rel_rms < 2e-2, rel_rms
    b.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in fast.parameters() if p.requires_grad)
