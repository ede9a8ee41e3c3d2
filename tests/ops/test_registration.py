"""Every op registered under torch.ops.elmo_fast passes torch.library.opcheck (schema, fake kernel,
autograd registration, torch.compile tracing) on a small odd-shaped input, and refuses tensors that
require grad (its gradient belongs to the op's autograd Function); an op added without a sample here
fails the test, so no registration goes unchecked."""

from __future__ import annotations

import pytest
import torch

from tests.ops.char_cnn_helpers import make_params, mixed_ids, requires_cpp
from tests.ops.lstm_proj_helpers import make_inputs

# Ops without tensors (buffer-pool and ISA queries): opcheck has nothing to compare for them.
NO_TENSORS = {"cpu_pool_cached_bytes", "cpu_pool_clear", "gemm_isa"}


def _lstm():
    x, lengths, ws, h0, c0 = make_inputs(B=3, T=5, I=3, C=5, P=2)
    return x, lengths, ws, h0, c0


def _lstm_fwd():
    x, lengths, ws, h0, c0 = _lstm()
    return [(x, lengths, *ws, h0, c0, 0.7, 0.4, True, save) for save in (True, False)]


def _lstm_bwd():
    x, lengths, ws, h0, c0 = _lstm()
    out, hn, cn, *cache = torch.ops.elmo_fast.lstm_proj_fwd(x, lengths, *ws, h0, c0, 0.7, 0.4, False, True)
    return [(torch.randn_like(out), torch.randn_like(hn), torch.randn_like(cn), x, lengths, ws[0], ws[1], ws[3], h0, c0,
             *cache, 0.7, 0.4, False)]


def _lstm_fwd_packed():
    x, lengths, ws, h0, c0 = _lstm()
    pack = torch.ops.elmo_fast.gemm_pack
    packed = (pack(ws[0].t()), pack(ws[1].t()), pack(ws[3].t()))
    return [(x, lengths, *ws, h0, c0, *packed, 0.7, 0.4, True, True)]


def _lstm_fwd_bf16():
    x, lengths, ws, h0, c0 = _lstm()
    bf = [w.bfloat16() if i != 2 else w for i, w in enumerate(ws)]
    return [(x, lengths, *ws, h0, c0, 0.7, 0.4, True), (x, lengths, *bf, h0, c0, 3.0, 3.0, True)]


def _pair_dirs():
    from elmo_fast.ops.lstm_proj.function import _pair_args
    from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj

    xf, len_f, wf, h0f, c0f = make_inputs(B=4, T=5, I=3, C=4, P=2)
    xb, _, wb, h0b, c0b = make_inputs(B=4, T=5, I=3, C=4, P=2, seed=4)
    plan = plan_lstm_proj(xf.device, xf.dtype, wf[1].shape, wf[3].shape, "cpp", directions=2)
    return _pair_args(plan, xf, len_f, *wf, h0f, c0f), _pair_args(plan, xb, len_f, *wb, h0b, c0b)


def _lstm_fwd_pair():
    fwd, bwd = _pair_dirs()
    return [(fwd, bwd, 0.8, 0.6, True), (fwd, bwd, 0.8, 0.6, False)]


def _lstm_bwd_pair():
    fwd, bwd = _pair_dirs()
    f, b = torch.ops.elmo_fast.lstm_proj_fwd_pair(fwd, bwd, 0.8, 0.6, True)
    args = [[torch.randn_like(r[0]), torch.randn_like(r[1]), torch.randn_like(r[2]), d[0], d[1], d[2], d[3], d[5], d[6],
             d[7], *r[3:]] for d, r in ((fwd, f), (bwd, b))]
    return [(args[0], args[1], 0.8, 0.6)]


def _conv_max():
    ids = mixed_ids(n_random=3)
    emb, ws, bs, *_ = make_params(dtype=torch.float32)
    emb, ws, bs = emb.detach(), [w.detach() for w in ws], [b.detach() for b in bs]
    return [(ids, emb, ws, bs, "relu"), (ids, emb, ws, bs, "tanh")]


def _conv_max_backward():
    ids = mixed_ids(n_random=3)
    emb, ws, bs, *_ = make_params(dtype=torch.float32)
    with torch.no_grad():
        feats, argmax = torch.ops.elmo_fast.char_cnn_conv_max(ids, emb, ws, bs, "tanh")
    return [(torch.randn_like(feats), ids, emb.detach(), [w.detach() for w in ws], feats, argmax, "tanh")]


def _highway(backward: bool):
    g = torch.Generator().manual_seed(11)
    N, F_ = 13, 37
    x, w, b = torch.randn(N, F_, generator=g), torch.randn(2 * F_, F_, generator=g) / F_**0.5, torch.randn(2 * F_, generator=g)
    z = x @ w.t()
    return [(torch.randn(N, F_, generator=g), z, b, x)] if backward else [(z, b, x)]


def _packed_linear():
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(13, 37, generator=g), torch.randn(21, 37, generator=g), torch.randn(21, generator=g)
    packed = torch.ops.elmo_fast.gemm_pack(w.t())
    return [(x, packed, b, 21), (x, packed, None, 21)]


SAMPLES = {
    "char_cnn_conv_max": _conv_max,
    "char_cnn_conv_max_backward": _conv_max_backward,
    "unique_rows": lambda: [(mixed_ids(n_random=40, seed=4),)],
    "highway_gate": lambda: _highway(False),
    "highway_gate_backward": lambda: _highway(True),
    "gemm_pack": lambda: [(torch.randn(5, 37).t(),)],
    "gemm_pack_bf16": lambda: [(torch.randn(5, 37).t(),)],
    "packed_linear": _packed_linear,
    "lstm_proj_fwd": _lstm_fwd,
    "lstm_proj_bwd": _lstm_bwd,
    "lstm_proj_fwd_packed": _lstm_fwd_packed,
    "lstm_proj_fwd_bf16": _lstm_fwd_bf16,
    "lstm_proj_fwd_pair": _lstm_fwd_pair,
    "lstm_proj_bwd_pair": _lstm_bwd_pair,
}


def _registered() -> set[str]:
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("elmo_fast::")}


@requires_cpp
def test_every_registered_op_has_a_sample():
    missing = _registered() - set(SAMPLES) - NO_TENSORS
    assert not missing, f"ops registered without an opcheck sample in {__file__}: {sorted(missing)}"
    assert set(SAMPLES) <= _registered(), sorted(set(SAMPLES) - _registered())


@requires_cpp
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name):
    op = getattr(torch.ops.elmo_fast, name).default
    for args in SAMPLES[name]():
        torch.library.opcheck(op, args)


def _with_grad(args):
    """`args` with every floating-point tensor (also inside lists) a fresh leaf that requires grad."""
    def leaf(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.detach().clone().requires_grad_()
        if isinstance(t, (list, tuple)):
            return type(t)(leaf(e) for e in t)
        return t

    return [leaf(a) for a in args]


def _has_float(args) -> bool:
    return any(_has_float(a) if isinstance(a, (list, tuple)) else isinstance(a, torch.Tensor) and a.is_floating_point()
               for a in args)


@requires_cpp
@pytest.mark.parametrize("name", sorted(n for n in SAMPLES if n != "unique_rows"))  # unique_rows: integer ids only
def test_raw_op_refuses_tensors_that_require_grad(name):
    """PyTorch's fallback would run the op, warn at backward and leave every gradient None; the raw
    ops raise at the call instead, naming the differentiable entry point, and run under no_grad."""
    op = getattr(torch.ops.elmo_fast, name).default
    args = SAMPLES[name]()[0]
    assert _has_float(args)
    grad_args = _with_grad(args)
    with pytest.raises(RuntimeError, match=r"raw kernel without autograd.*for gradients call elmo_fast\.ops\.|"
                                           r"raw kernel without autograd.*torch\.nn\.functional\.linear"):
        op(*grad_args)
    with torch.no_grad():
        op(*grad_args)
