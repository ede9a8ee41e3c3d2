"""Public entry point of the character encoder op: validation, deduplication and backend dispatch.

Layers (fast -> slow):
  * `char_cnn()`                 validates, deduplicates tokens, runs the fused conv+max, then the
                                 highway layers (CPU: ATen or packed GEMM + one-pass C++ gate; GPU:
                                 GEMM and gate in one Triton kernel) and the projection, scatters back.
  * `CharConvMaxFunction`        autograd for the fused part (gather -> conv of every width -> max
                                 over positions -> activation); the backend picked in forward is
                                 stored on ctx and reused in backward.
  * backends                     'cpp' (csrc/char_cnn/char_cnn.cpp) and 'cuda' (char_cnn_cuda.cu):
                                 one registered op, torch.ops.elmo_fast.char_cnn_conv_max;
                                 'triton' (triton_impl.py); 'torch' (eager, the fallback).

Memory choice for backward: instead of the per-position conv outputs ([N, F, 50 - w + 1], which the
eager module keeps for autograd) the fused op saves only the activated features and the argmax
position ([N, F] int32); backward routes each filter's gradient through its winning window. No
recomputation is needed.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ... import _ext
from ..._backend import backend_available, choose_backend, gpu_autocast_dtype
from ..weight_copies import bf16_copy, gemm_packed_bf16_t, gemm_packed_t
from .reference import char_cnn_ref, conv_max_backward_ref, conv_max_ref, highway_gate_ref

SUPPORTED = ("torch", "cpp", "triton", "cuda")


@torch.compiler.disable  # data-dependent checks (ids/lengths in range): host-side, not traced
def _check_conv(char_ids, char_embedding, conv_weights, conv_biases, activation) -> int:
    """Validates the fused conv + max part; returns the total filter count F."""
    if char_ids.dim() != 2:
        raise ValueError(f"char_ids must be [N, 50] int64, got shape {tuple(char_ids.shape)}")
    if char_ids.dtype != torch.long:
        raise TypeError(f"char_ids must be int64 (from batch_to_ids), got {char_ids.dtype}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    if len(conv_weights) != len(conv_biases) or not conv_weights:
        raise ValueError("conv_weights and conv_biases must be non-empty lists of the same length")
    if char_embedding.dim() != 2:
        raise ValueError(f"char_embedding must be [262, E], got shape {tuple(char_embedding.shape)}")
    E = char_embedding.shape[1]
    F_total = 0
    for k, (w, b) in enumerate(zip(conv_weights, conv_biases)):
        if w.dim() != 3 or w.shape[1] != E or b.shape != (w.shape[0],):
            raise ValueError(f"conv {k}: weight must be [F_k, {E}, width] with bias [F_k], got {tuple(w.shape)} and {tuple(b.shape)}")
        if w.shape[0] == 0 or w.shape[2] == 0:
            raise ValueError(f"conv {k}: {w.shape[0]} filters of width {w.shape[2]}; every [width, n_filters] pair in "
                             "options.json's char_cnn.filters needs width >= 1 and n_filters >= 1 (drop the pair instead)")
        if w.shape[2] > char_ids.shape[1]:
            raise ValueError(f"conv {k}: width {w.shape[2]} exceeds the {char_ids.shape[1]} characters per token")
        F_total += w.shape[0]
    return F_total


@torch.compiler.disable  # data-dependent checks (ids/lengths in range): host-side, not traced
def _check(char_ids, char_embedding, conv_weights, conv_biases, highway_weights, highway_biases, proj_weight, proj_bias, activation):
    F_total = _check_conv(char_ids, char_embedding, conv_weights, conv_biases, activation)
    for k, (w, b) in enumerate(zip(highway_weights, highway_biases)):
        if tuple(w.shape) != (2 * F_total, F_total) or tuple(b.shape) != (2 * F_total,):
            raise ValueError(f"highway {k}: expected weight [{2 * F_total}, {F_total}] and bias [{2 * F_total}], got {tuple(w.shape)}, {tuple(b.shape)}")
    if proj_weight.dim() != 2 or proj_weight.shape[1] != F_total or proj_bias.shape != (proj_weight.shape[0],):
        raise ValueError(f"projection: expected weight [P, {F_total}] and bias [P], got {tuple(proj_weight.shape)}, {tuple(proj_bias.shape)}")
    params = [char_embedding, *conv_weights, *conv_biases, *highway_weights, *highway_biases, proj_weight, proj_bias]
    if any(p.device != char_ids.device for p in params):
        raise ValueError(f"char_ids is on {char_ids.device} but some weights are elsewhere; move the module and the ids to one device")
    if any(p.dtype != char_embedding.dtype for p in params):
        raise TypeError(f"all char-CNN weights must share one dtype; got {sorted({str(p.dtype) for p in params})}")
    if char_ids.numel():
        lo, hi = int(char_ids.min()), int(char_ids.max())
        if lo < 0 or hi >= char_embedding.shape[0]:
            raise ValueError(f"char ids must lie in [0, {char_embedding.shape[0]}), got min {lo} max {hi}; build them with elmo_fast.batch_to_ids")


# ---------------------------------------------------------------------------------------------
# Backends of the fused conv + max + activation: (features [N, F], argmax int32 [N, F]).


def _conv_max_cpp(char_ids, emb, weights, biases, activation):
    _ext.require_cpp()
    return torch.ops.elmo_fast.char_cnn_conv_max(char_ids, emb, list(weights), list(biases), activation)


def _conv_max_bwd_cpp(grad, char_ids, emb, weights, feats, argmax, activation):
    return torch.ops.elmo_fast.char_cnn_conv_max_backward(grad.contiguous(), char_ids, emb, list(weights), feats, argmax, activation)


def _triton():
    from . import triton_impl

    return triton_impl


def _conv_max_cuda(char_ids, emb, weights, biases, activation):
    if _ext.cuda_ext() is None:
        raise RuntimeError(f"elmo_fast._C_cuda is not built ({_ext.load_error('_C_cuda')}); build with a CUDA torch: {_ext.INSTALL_HINT}")
    return torch.ops.elmo_fast.char_cnn_conv_max(char_ids, emb, list(weights), list(biases), activation)


_FWD = {
    "torch": conv_max_ref,
    "cpp": _conv_max_cpp,
    "cuda": _conv_max_cuda,
    "triton": lambda *a: _triton().char_cnn_conv_max_fwd(*a),
}
_BWD = {
    "torch": conv_max_backward_ref,
    "cpp": _conv_max_bwd_cpp,
    "cuda": _conv_max_bwd_cpp,  # the same registered op; the dispatcher picks the CUDA kernel
    "triton": lambda *a: _triton().char_cnn_conv_max_bwd(*a),
}


class CharConvMaxFunction(torch.autograd.Function):
    """Fused gather -> conv (every width) -> max over positions -> activation, `[N, W]` ids -> `[N, F]`.

    Saves the activated features and the argmax ([N, F] int32), never the per-position outputs.
    """

    @staticmethod
    def forward(ctx, backend: str, activation: str, char_ids, emb, n_filters: int, *params):
        weights, biases = params[:n_filters], params[n_filters:]
        feats, argmax = _FWD[backend](char_ids, emb, weights, biases, activation)
        ctx.backend, ctx.activation, ctx.n_filters = backend, activation, n_filters
        ctx.save_for_backward(char_ids, emb, feats, argmax, *weights)
        ctx.mark_non_differentiable(argmax)
        return feats, argmax

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, grad, _grad_argmax):
        char_ids, emb, feats, argmax, *weights = ctx.saved_tensors
        backend = ctx.backend
        if backend in ("cuda", "triton") and torch.are_deterministic_algorithms_enabled():
            # The GPU kernels scatter the embedding and bias gradients with atomics, whose
            # summation order varies run to run. Under torch.use_deterministic_algorithms (e.g.
            # pretrain(deterministic=True)) take the eager backward through the same argmax
            # instead: same math, deterministic index_add_, slower and with more memory.
            backend = "torch"
        grad_emb, gw, gb = _BWD[backend](grad, char_ids, emb, weights, feats, argmax, ctx.activation)
        return (None, None, None, grad_emb, None, *gw, *gb)


def char_cnn_conv_max(char_ids, emb, weights, biases, activation="relu", backend: str | None = None):
    """Fused conv + max + activation alone (no highway/projection): `[N, W]` ids -> (`[N, F]`, argmax `[N, F]` int32)."""
    _check_conv(char_ids, emb, weights, biases, activation)
    chosen = choose_backend(char_ids.device, SUPPORTED, backend)
    return CharConvMaxFunction.apply(chosen, activation, char_ids, emb, len(weights), *weights, *biases)


# torch.library registrations for the C++ op: shape-only ("fake") kernels for torch.compile /
# opcheck, and autograd, so torch.ops.elmo_fast.char_cnn_conv_max is differentiable on its own.
if _ext.cpp_ext() is not None:

    @torch.library.register_fake("elmo_fast::char_cnn_conv_max")
    def _(char_ids, embedding, weights, biases, activation):
        F_total = sum(b.shape[0] for b in biases)
        N = char_ids.shape[0]
        return embedding.new_empty(N, F_total), embedding.new_empty(N, F_total, dtype=torch.int32)

    @torch.library.register_fake("elmo_fast::char_cnn_conv_max_backward")
    def _(grad, char_ids, embedding, weights, features, argmax, activation):
        return torch.empty_like(embedding), [torch.empty_like(w) for w in weights], [w.new_empty(w.shape[0]) for w in weights]

    @torch.library.register_fake("elmo_fast::unique_rows")
    def _(char_ids):
        n_unique = torch.library.get_ctx().new_dynamic_size()
        return char_ids.new_empty(n_unique, char_ids.shape[1]), char_ids.new_empty(char_ids.shape[0])

    @torch.library.register_fake("elmo_fast::highway_gate")
    def _(z, bias, x):
        return torch.empty_like(x)

    @torch.library.register_fake("elmo_fast::highway_gate_backward")
    def _(dy, z, bias, x):
        return torch.empty_like(z), torch.empty_like(x)

    def _setup_context(ctx, inputs, output):
        char_ids, emb, weights, _biases, activation = inputs
        ctx.activation = activation
        ctx.save_for_backward(char_ids, emb, output[0], output[1], *weights)

    def _backward(ctx, grad, _grad_argmax):
        char_ids, emb, feats, argmax, *weights = ctx.saved_tensors
        grad_emb, gw, gb = torch.ops.elmo_fast.char_cnn_conv_max_backward(grad.contiguous(), char_ids, emb, weights, feats, argmax, ctx.activation)
        return None, grad_emb, gw, gb, None

    torch.library.register_autograd("elmo_fast::char_cnn_conv_max", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Deduplication and the inference cache.


def unique_tokens(char_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of `char_ids` `[N, W]` -> (`[U, W]`, inverse `[N]` with `char_ids == uniq[inverse]`).

    On the CPU with the C++ extension: a hash map of rows (first-occurrence order); torch.unique(dim=0)
    costs a few ATen ops per row (4.5 ms for 704 tokens) and stays the path on other devices."""
    if char_ids.shape[0] <= 1:
        return char_ids, torch.arange(char_ids.shape[0], device=char_ids.device)
    if char_ids.device.type == "cpu" and _ext.cpp_ext() is not None:
        return torch.ops.elmo_fast.unique_rows(char_ids)
    uniq, inverse = torch.unique(char_ids, dim=0, return_inverse=True)
    return uniq, inverse


class HighwayFunction(torch.autograd.Function):
    """One highway layer on the CPU: the GEMM in ATen (bias folded into the fused gate), then
    csrc/char_cnn/highway.cpp's one-pass gate forward and backward. Saves x and the GEMM output
    `[N, 2F]` (what eager autograd keeps too), not the gate's four temporaries."""

    @staticmethod
    def forward(ctx, x, w, b):
        z = torch.mm(x, w.t()) if w.dtype == x.dtype else torch.mm(x.to(w.dtype), w.t()).to(x.dtype)  # bf16: inference
        ctx.save_for_backward(x, w, b, z)
        return torch.ops.elmo_fast.highway_gate(z, b, x)

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, dy):
        x, w, b, z = ctx.saved_tensors
        dz, dx = torch.ops.elmo_fast.highway_gate_backward(dy.contiguous(), z, b, x)
        return dx.addmm_(dz, w), dz.t().mm(x), dz.sum(0)


class TritonHighwayFunction(torch.autograd.Function):
    """One highway layer on a GPU (or the interpreter): the GEMM and the gate in one Triton kernel
    (triton_impl.highway_fwd), which saves the pre-activations z `[N, 2F]` for backward only when
    a gradient is needed; backward is torch pointwise ops and cuBLAS GEMMs."""

    @staticmethod
    def forward(ctx, x, w, b):
        save = any(ctx.needs_input_grad)
        y, z = _triton().highway_fwd(x, w, b, save_z=save)
        if save:
            ctx.save_for_backward(x, w, z)
        return y

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, dy):
        x, w, z = ctx.saved_tensors
        return _triton().highway_bwd(dy.contiguous(), x, w, z)


GPU_HIGHWAY_ENV = "ELMO_FAST_GPU_HIGHWAY"


def _triton_highway(backend: str, h: torch.Tensor) -> bool:
    """The fused Triton highway runs for the GPU backends (and 'triton' under the interpreter)
    unless ELMO_FAST_GPU_HIGHWAY=torch asks for eager's cuBLAS GEMM + pointwise ops."""
    choice = os.environ.get(GPU_HIGHWAY_ENV, "triton")
    if choice not in ("triton", "torch"):
        raise ValueError(f"{GPU_HIGHWAY_ENV} must be 'triton' or 'torch', got {choice!r}")
    if choice == "torch" or backend not in ("triton", "cuda"):
        return False
    if h.device.type == "cuda" and torch.cuda.get_device_capability(h.device)[0] < 8:
        return False  # TF32 tensor cores (3xTF32 needs them) start with Ampere
    return backend == "triton" or backend_available("triton", h.device)


def _highway(backend: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
             packed: torch.dtype | None = None) -> torch.Tensor:
    if packed is not None:
        return torch.ops.elmo_fast.highway_gate(_linear(h, w, None, packed), b, h)
    if backend == "cpp":
        return HighwayFunction.apply(h, w, b)
    if w.dtype == h.dtype and _triton_highway(backend, h):
        return TritonHighwayFunction.apply(h, w, b)
    return highway_gate_ref(_linear(h, w, b), h)


def _autocast_state(device: torch.device) -> torch.dtype | None:
    """Part of the cache's key: eager GEMMs under autocast give vectors of another precision."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def char_cnn(
    char_ids: torch.Tensor,
    char_embedding: torch.Tensor,
    conv_weights: Sequence[torch.Tensor],
    conv_biases: Sequence[torch.Tensor],
    highway_weights: Sequence[torch.Tensor],
    highway_biases: Sequence[torch.Tensor],
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    activation: str = "relu",
    backend: str | None = None,
    *,
    dedup: bool | None = None,
    cache=None,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Character ids `[N, 50]` to word vectors `[N, P]`; see `char_cnn_ref` for the argument shapes.

    backend: 'cpp' | 'triton' | 'torch' | None (the fastest available; env ELMO_FAST_BACKEND).
    dedup: run the encoder once per distinct token and index the result back (gradients of
        repeated tokens are summed by autograd's index backward). Default: on for the fast
        backends, off for 'torch', which computes every token as AllenNLP's module does (it is the
        reference the benchmarks measure against, so it must not borrow the fast path's savings).
    cache: an optional `WordVectorCache` (inference only: used when no gradient is needed).
    gemm_dtype: None (fp32) or torch.bfloat16: CPU inference with bf16 operands for the highway and
        projection GEMMs and fp32 sums; the conv, gates and bias additions stay fp32. Those GEMMs
        are most of the encoder's time after the fused conv. On the cpp backend they run on
        bf16-packed weights (vdpbf16ps micro-kernels, ~2x the fp32 ones on avx512_bf16 CPUs; fp32
        results); elsewhere as eager GEMMs on bf16 copies (results rounded to bf16 once). No gradients.

    Example:
        >>> out = char_cnn(ids, emb, convs_w, convs_b, hw_w, hw_b, proj_w, proj_b)  # [N, P]
    """
    weights, biases = list(conv_weights), list(conv_biases)
    hw_w, hw_b = list(highway_weights), list(highway_biases)
    args = (char_ids, char_embedding, weights, biases, hw_w, hw_b, proj_weight, proj_bias)
    _check(*args, activation)
    chosen = choose_backend(char_ids.device, SUPPORTED, backend)
    if chosen == "cpp" and char_embedding.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"the C++ CPU kernel supports float32/float64 weights, got {char_embedding.dtype}; "
            "call module.float() for CPU inference, or pass backend='torch'"
        )
    params = [char_embedding, *weights, *biases, *hw_w, *hw_b, proj_weight, proj_bias]
    device = char_ids.device
    if chosen == "cpp" and torch.is_autocast_enabled(device.type):
        # The CPU kernels compute in the weights' dtype; autocast would turn the GEMMs between them
        # into bf16 ones whose results the fused gates then reject. Same vectors as without autocast.
        with torch.autocast(device.type, enabled=False):
            return char_cnn(char_ids, char_embedding, weights, biases, hw_w, hw_b, proj_weight, proj_bias, activation, chosen,
                            dedup=dedup, cache=cache, gemm_dtype=gemm_dtype)
    amp = gpu_autocast_dtype(device, chosen, char_embedding.dtype)
    if amp is not None:  # GPU backends under autocast: the whole encoder in the autocast dtype

        def run_cast(ids, use_dedup):
            def cast(ts):
                return [t.to(amp) for t in ts]

            with torch.autocast(device.type, enabled=False):
                return char_cnn(ids, char_embedding.to(amp), cast(weights), cast(biases), cast(hw_w), cast(hw_b),
                                proj_weight.to(amp), proj_bias.to(amp), activation, chosen, dedup=use_dedup,
                                gemm_dtype=gemm_dtype)

        if cache is not None and not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            # keyed on the fp32 weights, with the autocast dtype as the variant
            return cache.lookup(char_ids, params, lambda ids: run_cast(ids, False), variant=("autocast", amp))
        return run_cast(char_ids, dedup)
    if gemm_dtype is not None:
        if gemm_dtype != torch.bfloat16:
            raise ValueError(f"gemm_dtype must be None or torch.bfloat16, got {gemm_dtype}")
        if char_ids.device.type != "cpu" or char_embedding.dtype != torch.float32:
            raise ValueError(f"gemm_dtype=torch.bfloat16 needs float32 CPU weights (got {char_embedding.dtype} on "
                             f"{char_ids.device}); on a GPU cast the model with .to(torch.bfloat16) instead")
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            raise RuntimeError("gemm_dtype=torch.bfloat16 is inference-only: run under torch.no_grad(), or use gemm_dtype=None to train")
        if chosen != "cpp":  # eager GEMMs on bf16 copies; the cpp backend takes bf16-packed weights (_encode)
            args = args[:4] + ([bf16_copy(w) for w in hw_w], hw_b, bf16_copy(proj_weight), proj_bias)
    inference = not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
    if cache is not None and inference:
        return cache.lookup(char_ids, params, lambda ids: _encode(chosen, ids, *args[1:], activation, dedup=False,
                                                                  inference=True, gemm_dtype=gemm_dtype),
                            variant=(gemm_dtype, _autocast_state(device)))
    if dedup is None:
        dedup = chosen != "torch"
    if chosen == "torch" and not dedup and gemm_dtype is None:
        return char_cnn_ref(*args, activation)
    return _encode(chosen, *args, activation, dedup=dedup, inference=inference, gemm_dtype=gemm_dtype)


def _encode(backend, char_ids, emb, weights, biases, hw_w, hw_b, proj_weight, proj_bias, activation, dedup, inference=False,
            gemm_dtype=None):
    inverse = None
    if dedup and char_ids.shape[0] > 1:
        char_ids, inverse = unique_tokens(char_ids)
    if char_ids.shape[0] == 0:
        h = emb.new_zeros(0, sum(b.shape[0] for b in biases))
    else:
        h, _ = CharConvMaxFunction.apply(backend, activation, char_ids.contiguous(), emb, len(weights), *weights, *biases)
    # CPU fp32 inference runs the highway and projection GEMMs against cached packed weights: the
    # weights stay the same across calls there, and at the highway's shape the packed GEMM ran at
    # 70-77 GFLOP/s on 1 thread against 51-64 for MKL's sgemm, which re-packs the 32 MB 'small'
    # weight inside every call.
    # gemm_dtype=torch.bfloat16 takes bf16-packed copies of the same weights (vdpbf16ps micro-kernels).
    packed = inference and backend == "cpp" and h.dtype == torch.float32 and proj_weight.dtype == torch.float32
    packed = (gemm_dtype or torch.float32) if packed else None
    for w, b in zip(hw_w, hw_b):
        h = _highway(backend, h, w, b, packed)
    out = _linear(h, proj_weight, proj_bias, packed)
    # index_select, not out[inverse]: on the CPU the backward of advanced indexing accumulates with
    # atomics across threads (run-to-run different sums with 2 threads) and took 4x as long as
    # index_select's index_add_ (1.3 vs 0.3 ms for a 64 x 20 x 128 gather, 2 threads).
    return out if inverse is None else out.index_select(0, inverse)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.dtype | None = None) -> torch.Tensor:
    """F.linear; with `packed` (fp32 or bf16), against the cached packed copy of the fp32 `w` in that
    dtype (csrc/common/gemm_ops.cpp; bf16: operands rounded to bf16, fp32 sums and result); for a
    bf16 weight (the gemm_dtype option off the cpp backend) bf16 operands with an fp32 result."""
    if packed is not None:
        pack = gemm_packed_bf16_t if packed == torch.bfloat16 else gemm_packed_t
        return torch.ops.elmo_fast.packed_linear(x, pack(w), b, w.shape[0])
    if w.dtype == x.dtype:
        return F.linear(x, w, b)
    # CPU GEMMs have no bf16-in/fp32-out form (aten::mm.dtype is CUDA-only): the fp32-accumulated
    # result is rounded to bf16 once, and the bias is added in fp32.
    return torch.mm(x.to(w.dtype), w.t()).float().add_(b)

