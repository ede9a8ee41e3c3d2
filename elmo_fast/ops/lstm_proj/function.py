"""Public entry point of the LSTM-with-projection sequence op: validation, backend dispatch and the
autograd Function that runs backward through time on the backend its forward ran on.

Backends: "cpp" (CPU: packed GEMMs + fused vectorised pointwise step, whole time loop in C++;
`lstm_proj_pair` runs a layer's two directions at once, one thread each), "cuda" (cuBLAS GEMMs through ATen + CUDA pointwise step kernels), "triton" (torch GEMMs +
Triton pointwise step kernels, Python time loop), "torch" (the eager reference).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ... import _ext
from ..gemm import check_gemm_dtype, gemm_packed_bf16_t, gemm_packed_t
from .plan import LstmPlan, plan_lstm_proj
from .reference import lstm_proj_ref


@torch.compiler.disable  # data-dependent checks (ids/lengths in range): host-side, not traced
def _check(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, same_dtype: bool = True):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, I], got shape {tuple(x.shape)}")
    B, T, I = x.shape
    if w_in.dim() != 2 or w_in.shape[1] != I or w_in.shape[0] % 4:
        raise ValueError(f"w_in must be [4C, {I}], got {tuple(w_in.shape)}")
    C4 = w_in.shape[0]
    P = w_proj.shape[0]
    if tuple(w_proj.shape) != (P, C4 // 4):
        raise ValueError(f"w_proj must be [P, {C4 // 4}], got {tuple(w_proj.shape)}")
    if tuple(w_rec.shape) != (C4, P):
        raise ValueError(f"w_rec must be [{C4}, {P}], got {tuple(w_rec.shape)}")
    if tuple(bias.shape) != (C4,):
        raise ValueError(f"bias must be [{C4}], got {tuple(bias.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be [{B}], got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor (e.g. mask.sum(1).long()), got {lengths.dtype}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, {T}], got min {int(lengths.min())} max {int(lengths.max())}")
    if h0 is not None and tuple(h0.shape) != (B, P):
        raise ValueError(f"h0 must be [{B}, {P}], got {tuple(h0.shape)}")
    if c0 is not None and tuple(c0.shape) != (B, C4 // 4):
        raise ValueError(f"c0 must be [{B}, {C4 // 4}], got {tuple(c0.shape)}")
    for name, t in (("w_in", w_in), ("w_rec", w_rec), ("bias", bias), ("w_proj", w_proj), ("h0", h0), ("c0", c0)):
        if t is None:
            continue
        if same_dtype and t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; cast with .to({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move it with .to({str(x.device)!r})")


def _initial_state(x, w_proj, h0, c0):
    """(h0, c0) with zeros `[B, P]` / `[B, C]` for the ones not given."""
    B, (P, C) = x.shape[0], w_proj.shape
    return (x.new_zeros(B, P) if h0 is None else _saveable(h0)), (x.new_zeros(B, C) if c0 is None else _saveable(c0))


def _saveable(t: torch.Tensor) -> torch.Tensor:
    # A stateful model's carried state from a call under torch.inference_mode() (a validation
    # step) is an inference tensor, which autograd refuses to save for the next training step;
    # outside inference mode a clone of it is a normal tensor.
    return t.clone() if t.is_inference() and not torch.is_inference_mode_enabled() else t


def _clips(cell_clip, proj_clip) -> tuple[float, float]:
    """The kernels' clip values: floats, 0 = no clip (None counts as 0)."""
    cell_clip, proj_clip = float(cell_clip or 0.0), float(proj_clip or 0.0)
    if cell_clip < 0 or proj_clip < 0:
        raise ValueError(f"clip values must be >= 0 (0/None = no clip), got cell_clip={cell_clip}, proj_clip={proj_clip}")
    return cell_clip, proj_clip


def _fwd_impl(plan: LstmPlan):
    """The forward op `plan` names, as `f(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip,
    proj_clip, reverse, save_cache) -> (out, h_n, c_n, *cache)`."""
    if plan.backend == "cpp":
        _ext.require_cpp()
        if plan.packed is None:
            return torch.ops.elmo_fast.lstm_proj_fwd

        def packed(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, *flags):
            # the three weights go in packed once per weight version (weight_copies), not per call
            return torch.ops.elmo_fast.lstm_proj_fwd_packed(x, lengths, w_in, w_rec, bias, w_proj, h0, c0,
                                                            *_packed(w_in, w_rec, w_proj, dtype=plan.packed), *flags)

        return packed
    if plan.backend == "cuda":
        if _ext.cuda_ext() is None:
            raise RuntimeError(f"elmo_fast's CUDA extension is not built ({_ext.load_error('_C_cuda')}). Build it with: {_ext.INSTALL_HINT}")
        return torch.ops.elmo_fast.lstm_proj_fwd
    from . import triton_impl

    time_loop = plan.kernel == "triton time loop"
    return lambda *args: triton_impl.lstm_proj_fwd(*args, time_loop)


def _bwd_impl(backend: str):
    if backend in ("cpp", "cuda"):
        return torch.ops.elmo_fast.lstm_proj_bwd
    from . import triton_impl

    return triton_impl.lstm_proj_bwd


class LstmProjFunction(torch.autograd.Function):
    """Autograd wrapper around a backend's forward (with cache) and backward-through-time ops."""

    @staticmethod
    def forward(ctx, x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse, plan):
        out, h_n, c_n, *cache = _fwd_impl(plan)(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, reverse, True)
        ctx.save_for_backward(x, lengths, w_in, w_rec, w_proj, h0, c0, *cache)
        ctx.args = (cell_clip, proj_clip, reverse)
        ctx.backend = plan.backend  # backward always runs on the backend forward ran on
        return out, h_n, c_n

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, grad_out, grad_hn, grad_cn):
        x, lengths, w_in, w_rec, w_proj, h0, c0, *cache = ctx.saved_tensors
        dx, dw_in, dw_rec, dbias, dw_proj, dh0, dc0 = _bwd_impl(ctx.backend)(
            grad_out.contiguous(), grad_hn.contiguous(), grad_cn.contiguous(), x, lengths, w_in, w_rec, w_proj, h0, c0, *cache, *ctx.args
        )
        return dx, None, dw_in, dw_rec, dbias, dw_proj, dh0, dc0, None, None, None, None


def lstm_proj(
    x: torch.Tensor,
    lengths: torch.Tensor,
    w_in: torch.Tensor,
    w_rec: torch.Tensor,
    bias: torch.Tensor,
    w_proj: torch.Tensor,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    reverse: bool = False,
    h0: torch.Tensor | None = None,
    c0: torch.Tensor | None = None,
    backend: str | None = None,
    gemm_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one LSTM-with-projection layer over a padded, variable-length batch.

    Args:
        x: `[B, T, I]` inputs (values past a row's length are ignored).
        lengths: integer `[B]`, any order, each in [0, T] (0 = the row is not run; its state passes through).
        w_in `[4C, I]`, w_rec `[4C, P]`, bias `[4C]` (gate blocks i, f, g, o), w_proj `[P, C]`.
        cell_clip, proj_clip: None or 0 = no clip; the clip's gradient is 0 where it is active.
        reverse: each row runs from its own last position back to 0.
        h0 `[B, P]`, c0 `[B, C]`: initial state (zeros when None); differentiable.
        backend: "cpp" | "cuda" | "triton" | "torch"; default from `ELMO_FAST_BACKEND` or the fastest available.
        gemm_dtype: None (fp32 throughout) or torch.bfloat16: inference on the cpp backend with bf16 GEMM
            operands and fp32 sums, gates, cell state and outputs: the fp32 time loop on bf16-packed
            weights (vdpbf16ps micro-kernels on avx512_bf16 CPUs, ~2x the fp32 GEMMs; speed and error in
            benchmarks/results/zen4_bf16/). No gradients.

    Returns:
        out `[B, T, P]` (exactly 0 past each row's length), h_n `[B, P]`, c_n `[B, C]`.

    Example:
        >>> B, T, I, C, P = 3, 5, 8, 16, 4
        >>> x = torch.randn(B, T, I)
        >>> w = [torch.randn(4 * C, I), torch.randn(4 * C, P), torch.zeros(4 * C), torch.randn(P, C)]
        >>> out, h, c = lstm_proj(x, torch.tensor([5, 1, 3]), *w, cell_clip=3.0, proj_clip=3.0)
        >>> out.shape, h.shape, c.shape
        (torch.Size([3, 5, 4]), torch.Size([3, 4]), torch.Size([3, 16]))
    """
    autocast = torch.is_autocast_enabled(x.device.type)
    plan = plan_lstm_proj(x.device, w_in.dtype, w_rec.shape, w_proj.shape, backend, gemm_dtype)
    # Under autocast the layers before hand over mixed precisions (an autocast-dtype x from the
    # char encoder's projection, fp32 weights). Eager takes them as they come; the kernels need one
    # dtype: the autocast dtype on the GPU backends (as eager's F.linear would run), the weights'
    # dtype on the CPU one (no half-precision kernels there).
    _check(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, same_dtype=not autocast)
    if not autocast or plan.backend == "torch":
        return _run(plan, x, lengths, w_in, w_rec, bias, w_proj, cell_clip, proj_clip, reverse, h0, c0)
    target = plan.autocast or w_in.dtype
    x, w_in, w_rec, bias, w_proj, h0, c0 = (None if t is None else t.to(target) for t in (x, w_in, w_rec, bias, w_proj, h0, c0))
    with torch.autocast(x.device.type, enabled=False):
        return _run(plan, x, lengths, w_in, w_rec, bias, w_proj, cell_clip, proj_clip, reverse, h0, c0)


def _run(plan: LstmPlan, x, lengths, w_in, w_rec, bias, w_proj, cell_clip, proj_clip, reverse, h0, c0):
    """`lstm_proj` once its inputs are checked and share one dtype: the eager reference, the
    autograd Function, or the forward kernel alone (inference)."""
    gemm_dtype = plan.gemm_dtype
    if gemm_dtype is not None and (plan.backend != "cpp" or x.dtype != torch.float32):
        raise ValueError(f"gemm_dtype={gemm_dtype} needs float32 CPU tensors and the cpp backend (got {x.dtype} on "
                         f"backend {plan.backend!r}); on a GPU cast the model with .to(torch.bfloat16) instead")
    if plan.backend == "torch":
        return lstm_proj_ref(x, lengths, w_in, w_rec, bias, w_proj, cell_clip, proj_clip, reverse, h0, c0)
    h0, c0 = _initial_state(x, w_proj, h0, c0)
    cell_clip, proj_clip = _clips(cell_clip, proj_clip)
    lengths = lengths.to(torch.long)
    tensors = (x, w_in, w_rec, bias, w_proj, h0, c0)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if gemm_dtype is not None:
        check_gemm_dtype(gemm_dtype, grad)
    elif grad:
        return LstmProjFunction.apply(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, bool(reverse), plan)
    out, h_n, c_n, *_ = _fwd_impl(plan)(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, cell_clip, proj_clip, bool(reverse), False)
    return out, h_n, c_n


# ---------------------------------------------------------------------------------------------
# Both directions of a layer at once (CPU, 2 threads): one direction per thread.


def _packed(*weights, dtype=torch.float32):
    """The weights' cached packed copies for the C++ GEMMs (`LstmPlan.packed`): bf16 ones for the
    bf16-GEMM option (vdpbf16ps where the CPU has avx512_bf16, the same bf16 numbers through fp32
    FMAs elsewhere), else fp32."""
    pack = gemm_packed_bf16_t if dtype == torch.bfloat16 else gemm_packed_t
    return [pack(w) for w in weights]


def _pair_args(plan: LstmPlan, x, lengths, w_in, w_rec, bias, w_proj, h0, c0):
    """One direction's argument list of the pair ops, with the packed weights `plan` names."""
    packed = _packed(w_in, w_rec, w_proj, dtype=plan.packed) if plan.packed is not None else [None] * 3
    return [x, lengths, w_in, w_rec, bias, w_proj, h0, c0, *packed]


class LstmProjPairFunction(torch.autograd.Function):
    """Autograd for `lstm_proj_pair`: the forward and the reverse direction of one layer, each run
    on its own thread in forward and in backward (torch.ops.elmo_fast.lstm_proj_{fwd,bwd}_pair)."""

    @staticmethod
    def forward(ctx, plan, cell_clip, proj_clip, *tensors):
        dirs = tensors[:8], tensors[8:]  # each: x, lengths, w_in, w_rec, bias, w_proj, h0, c0
        results = torch.ops.elmo_fast.lstm_proj_fwd_pair(_pair_args(plan, *dirs[0]), _pair_args(plan, *dirs[1]), cell_clip,
                                                         proj_clip, True)
        ctx.clips = (cell_clip, proj_clip)
        saved = []
        for (x, lengths, w_in, w_rec, _bias, w_proj, h0, c0), r in zip(dirs, results):
            saved += [x, lengths, w_in, w_rec, w_proj, h0, c0, *r[3:]]
        ctx.save_for_backward(*saved)
        return (*results[0][:3], *results[1][:3])

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        args = [[*(g.contiguous() for g in grads[3 * d : 3 * d + 3]), *saved[12 * d : 12 * d + 12]] for d in range(2)]
        f, b = torch.ops.elmo_fast.lstm_proj_bwd_pair(args[0], args[1], *ctx.clips)
        # per direction: (dx, dlengths, dw_in, dw_rec, dbias, dw_proj, dh0, dc0)
        return (None, None, None, *(g for r in (f, b) for g in (r[0], None, *r[1:])))


def lstm_proj_pair(x_fwd, x_bwd, lengths, weights_fwd, weights_bwd, cell_clip=None, proj_clip=None,
                   state_fwd=None, state_bwd=None, gemm_dtype=None, *, plan: LstmPlan | None = None):
    """The forward and the reverse direction of one layer on the cpp backend, concurrently.

    x_fwd, x_bwd `[B, T, I]`; lengths `[B]` for both, or a pair (forward's, reverse's);
    weights_* = (w_in, w_rec, bias, w_proj) as `lstm_proj` takes them; state_* = (h0, c0) or None.
    Returns (out, h_n, c_n) of the forward direction, then of the reverse one: what
    `lstm_proj(..., reverse=False)` and `lstm_proj(..., reverse=True)` return; gemm_dtype as
    `lstm_proj` takes it. plan: the layer's `plan_lstm_proj(..., directions=2)` (planned here when
    None); its `pair` says whether the pair pays on this machine, which callers check first.
    """
    if plan is None:
        plan = plan_lstm_proj(x_fwd.device, x_fwd.dtype, weights_fwd[1].shape, weights_fwd[3].shape, "cpp", gemm_dtype,
                              directions=2)
    if plan.backend != "cpp":
        raise ValueError(f"lstm_proj_pair runs on the cpp backend only; this plan is {plan.describe()}: call lstm_proj per direction")
    if plan.gemm_dtype is not None and x_fwd.dtype != torch.float32:
        raise ValueError(f"gemm_dtype={plan.gemm_dtype} needs float32 CPU tensors, got {x_fwd.dtype}")
    lengths_pair = lengths if isinstance(lengths, (tuple, list)) else (lengths, lengths)
    dirs = []
    for x, lens, ws, state in ((x_fwd, lengths_pair[0], weights_fwd, state_fwd), (x_bwd, lengths_pair[1], weights_bwd, state_bwd)):
        h0, c0 = state if state is not None else (None, None)
        _check(x, lens, *ws, h0, c0)
        dirs.append((x, lens.to(torch.long), *ws, *_initial_state(x, ws[3], h0, c0)))
    cell_clip, proj_clip = _clips(cell_clip, proj_clip)
    tensors = [t for d in dirs for t in d]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if plan.gemm_dtype is not None:
        check_gemm_dtype(plan.gemm_dtype, grad)
    elif grad:
        out = LstmProjPairFunction.apply(plan, cell_clip, proj_clip, *tensors)
        return out[:3], out[3:]
    f, b = torch.ops.elmo_fast.lstm_proj_fwd_pair(_pair_args(plan, *dirs[0]), _pair_args(plan, *dirs[1]), cell_clip, proj_clip,
                                                  False)
    return tuple(f[:3]), tuple(b[:3])
