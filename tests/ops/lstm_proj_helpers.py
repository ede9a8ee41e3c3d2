"""Inputs and checks shared by the LSTM-with-projection tests of every backend (C++, Triton, CUDA)."""

from __future__ import annotations

import torch

from elmo_fast.ops.lstm_proj import lstm_proj, lstm_proj_ref
from elmo_fast.testing import assert_close

NAMES = ("dx", "dw_in", "dw_rec", "dbias", "dw_proj", "dh0", "dc0")


def make_inputs(B=7, T=9, I=5, C=11, P=6, dtype=torch.float32, scale=1.0, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    x = rnd(B, T, I)
    if lengths is None:
        lengths = torch.tensor([T, 1, 4, 0, T, 3, 6][:B] + [T] * max(0, B - 7))
    w_in = rnd(4 * C, I, s=scale / I**0.5)
    w_rec = rnd(4 * C, P, s=scale / P**0.5)
    bias = rnd(4 * C, s=0.5)
    w_proj = rnd(P, C, s=2.0 * scale / C**0.5)
    h0 = rnd(B, P, s=0.5)
    c0 = rnd(B, C)
    return x, lengths, [w_in, w_rec, bias, w_proj], h0, c0


def run(backend, x, lengths, ws, h0, c0, cell_clip, proj_clip, reverse, grads):
    leaves = [t.detach().clone().requires_grad_() for t in [x, *ws, h0, c0]]
    fn = lstm_proj_ref if backend == "ref" else lstm_proj
    kw = {} if backend == "ref" else {"backend": backend}
    outs = fn(leaves[0], lengths, *leaves[1:5], cell_clip, proj_clip, reverse, leaves[5], leaves[6], **kw)
    d = torch.autograd.grad(outs, leaves, grads)
    return outs, d


def check_against_ref(backend, x, lengths, ws, h0, c0, cell_clip, proj_clip, reverse, atol=None, rtol=None):
    ref_outs = lstm_proj_ref(x, lengths, *ws, cell_clip, proj_clip, reverse, h0, c0)
    grads = [torch.randn_like(o) for o in ref_outs]
    ref_outs, ref_d = run("ref", x, lengths, ws, h0, c0, cell_clip, proj_clip, reverse, grads)
    outs, d = run(backend, x, lengths, ws, h0, c0, cell_clip, proj_clip, reverse, grads)
    for name, r, o in zip(("out", "h_n", "c_n"), ref_outs, outs):
        assert_close(name, r, o, atol, rtol)
    # Weight gradients sum T*B products through the recurrence: fp32 rounding order differs from
    # the reference's, so their absolute tolerance is 5x the forward's.
    g_atol = atol if atol is not None else 1e-4
    for name, r, o in zip(NAMES, ref_d, d):
        assert_close(name, r, o, g_atol, rtol)
    # Packed semantics: exactly zero past each row's length.
    mask = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    assert (outs[0][mask] == 0).all()
    return ref_outs


def check_low_precision(backend, dtype, x, lengths, ws, h0, c0):
    """`backend` run in `dtype` (bf16/fp16; fp32 math inside): output error against the reference in
    the inputs' own (higher) precision at most 2x that of the eager reference run in `dtype`.
    Returns (reference, backend output) for further checks."""
    ref = lstm_proj_ref(x, lengths, *ws, 0.7, 0.4, False, h0, c0)
    low_in = (x.to(dtype), [w.to(dtype) for w in ws], h0.to(dtype), c0.to(dtype))
    low = lstm_proj_ref(low_in[0], lengths, *low_in[1], 0.7, 0.4, False, *low_in[2:])
    with torch.no_grad():
        out = lstm_proj(low_in[0], lengths, *low_in[1], 0.7, 0.4, False, *low_in[2:], backend=backend)
    for name, r, lo, o in zip(("out", "h_n", "c_n"), ref, low, out):
        assert o.dtype == dtype
        err, err_low = (o.to(r.dtype) - r).abs().max().item(), (lo.to(r.dtype) - r).abs().max().item()
        assert err <= 2 * err_low + 1e-3, f"{name}: {err:.3g} vs eager {dtype} {err_low:.3g}"
    return ref, out


def check_half_state(backend, dtype, device, reverse=False):
    """bf16/fp16 inputs over 48 steps with the forget and input gates near 1, so the cell is a long
    running sum that reaches |c| ~ 40 (no clip): each output and gradient of `backend` against fp64
    run on the same rounded inputs must have at most 1.5x the error of the eager reference run in
    `dtype`, and the final cell at most 0.3x (measured with the Triton kernels: 0.05-1.05x, the final
    cell 0.05-0.14x). Rounding the cell state and the cached gate activations to `dtype` at every
    step fails it: bf16 outputs then had 3-5.6x and gradients 2.5-11x eager's error."""
    B, T, C = 4, 48, 24
    x, lengths, ws, h0, c0 = make_inputs(B=B, T=T, I=3, C=C, P=4, dtype=torch.float64, lengths=torch.tensor([48, 30, 48, 17]),
                                         seed=3)
    ws[2][: 2 * C] += 6.0  # input and forget gate biases: i, f ~ 0.9975
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(B, T, 4, generator=gen, dtype=torch.float64), torch.randn(B, 4, generator=gen, dtype=torch.float64),
             torch.randn(B, C, generator=gen, dtype=torch.float64)]
    low = [t.to(dtype) for t in (x, *ws, h0, c0, *grads)]
    x, ws, h0, c0, grads = low[0], low[1:5], low[5], low[6], low[7:]
    x, ws, h0, c0 = x.to(device), [w.to(device) for w in ws], h0.to(device), c0.to(device)
    grads = [g.to(device) for g in grads]
    exact = run("ref", x.double(), lengths, [w.double() for w in ws], h0.double(), c0.double(), 0, 0, reverse,
                [g.double() for g in grads])
    eager = run("ref", x, lengths, ws, h0, c0, 0, 0, reverse, grads)
    fast = run(backend, x, lengths, ws, h0, c0, 0, 0, reverse, grads)
    assert exact[0][2].abs().max() > 30, "the cell did not grow: the test would not exercise its precision"
    for name, r, e, o in zip(("out", "h_n", "c_n", *NAMES), [*exact[0], *exact[1]], [*eager[0], *eager[1]], [*fast[0], *fast[1]]):
        assert o.dtype == dtype, name
        err, err_eager = (o.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        bound = (0.3 if name == "c_n" else 1.5) * err_eager
        assert err <= bound, f"{name}: {backend} {dtype} error {err:.3g}, eager {dtype} {err_eager:.3g}"

def check_nan_state(backend: str, device: str = "cpu") -> None:
    """A NaN carried in c0 (say from a diverged earlier call of a stateful model) must come out
    where the eager reference puts it, with and without a cell clip: CUDA's fmin/fmax return the
    non-NaN operand, so the clip turned a NaN cell into -clip (or -inf with no clip) and hid it.
    Shared with the Triton and CUDA tests."""
    x, lengths, ws, h0, c0 = make_inputs(B=4, T=5, I=3, C=7, P=4, lengths=torch.tensor([5, 3, 0, 5]))
    c0[1, 2] = float("nan")
    c0[2, 0] = float("nan")  # a length-0 row: passed through
    for clip in (None, 3.0):
        ref = lstm_proj_ref(x, lengths, *ws, clip, clip, False, h0, c0)
        out = lstm_proj(*(t.to(device) for t in (x, lengths, *ws)), clip, clip, False, h0.to(device), c0.to(device),
                        backend=backend)
        for name, r, o in zip(("out", "h_n", "c_n"), ref, out):
            assert torch.isnan(r).any(), name
            assert torch.equal(torch.isnan(o.cpu()), torch.isnan(r)), f"clip {clip}: NaN in {name} differs from eager's"
