"""The character encoder, `[N, 50]` char ids -> `[N, P]` word vectors: validation, dedup, the
word-vector cache, autocast and the bf16-GEMM option, above the two ops it composes.

  * `char_cnn()`    validates, takes the plan (`plan_char_cnn`: backend and every kernel variant),
                    settles autocast (the CPU kernels run outside it; the GPU ones in its dtype),
                    then `_run`: cache, or `_encode`, or the eager reference.
  * `_encode()`     the conv-max op (ops/char_cnn), the highway op per layer (ops/highway), the
                    projection (ops/gemm.linear), scattered back over the duplicates.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ... import _ext
from ..char_cnn.function import CharConvMaxFunction, check_conv
from ..gemm import check_gemm_dtype, linear
from ..highway import highway
from ..weight_copies import bf16_copy
from .plan import EncoderPlan, plan_char_cnn
from .reference import char_cnn_ref


@torch.compiler.disable  # data-dependent checks (ids/lengths in range): host-side, not traced
def _check(char_ids, char_embedding, conv_weights, conv_biases, highway_weights, highway_biases, proj_weight, proj_bias, activation):
    F_total = check_conv(char_ids, char_embedding, conv_weights, conv_biases, activation)
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
    params = [char_embedding, *weights, *biases, *hw_w, *hw_b, proj_weight, proj_bias]
    inference = not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
    device = char_ids.device
    plan = plan_char_cnn(device, char_embedding.dtype, backend, inference=inference, gemm_dtype=gemm_dtype, dedup=dedup,
                         cache=cache is not None)
    if plan.backend == "cpp" and char_embedding.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"the C++ CPU kernel supports float32/float64 weights, got {char_embedding.dtype}; "
            "call module.float() for CPU inference, or pass backend='torch'"
        )
    if gemm_dtype is not None:
        _check_gemm_dtype(gemm_dtype, char_ids, char_embedding, inference)
    if plan.backend == "cpp" and torch.is_autocast_enabled(device.type):
        # The CPU kernels compute in the weights' dtype; autocast would turn the GEMMs between them
        # into bf16 ones whose results the fused gates then reject. Same vectors as without autocast.
        with torch.autocast(device.type, enabled=False):
            return _run(plan, args, params, activation, cache)
    if plan.autocast is None:
        return _run(plan, args, params, activation, cache)
    # GPU backends under autocast: the whole encoder in the autocast dtype (the casts are
    # differentiable, so gradients reach the fp32 parameters)
    amp = plan.autocast
    cast = (char_ids, char_embedding.to(amp), [t.to(amp) for t in weights], [t.to(amp) for t in biases],
            [t.to(amp) for t in hw_w], [t.to(amp) for t in hw_b], proj_weight.to(amp), proj_bias.to(amp))
    with torch.autocast(device.type, enabled=False):
        return _run(plan, cast, params, activation, cache)


def _check_gemm_dtype(gemm_dtype, char_ids, char_embedding, inference: bool) -> None:
    if gemm_dtype == torch.bfloat16 and (char_ids.device.type != "cpu" or char_embedding.dtype != torch.float32):
        raise ValueError(f"gemm_dtype=torch.bfloat16 needs float32 CPU weights (got {char_embedding.dtype} on "
                         f"{char_ids.device}); on a GPU cast the model with .to(torch.bfloat16) instead")
    check_gemm_dtype(gemm_dtype, not inference)


def _run(plan: EncoderPlan, args, params, activation, cache):
    """`char_cnn` once autocast is settled: the word cache (keyed on the caller's fp32 `params`,
    with what else the vectors depend on as its variant), else `_encode` or the eager reference."""
    if plan.gemm_dtype is not None and plan.backend != "cpp":  # the cpp backend takes bf16-packed weights instead
        args = args[:4] + ([bf16_copy(w) for w in args[4]], args[5], bf16_copy(args[6]), args[7])
    if plan.cache:
        variant = ("autocast", plan.autocast) if plan.autocast is not None else (plan.gemm_dtype, _autocast_state(args[0].device))
        return cache.lookup(args[0], params, lambda ids: _encode(plan, ids, *args[1:], activation), variant=variant)
    if plan.backend == "torch" and not plan.dedup and plan.gemm_dtype is None:
        return char_cnn_ref(*args, activation)
    return _encode(plan, *args, activation)


def _encode(plan: EncoderPlan, char_ids, emb, weights, biases, hw_w, hw_b, proj_weight, proj_bias, activation):
    inverse = None
    if plan.dedup and char_ids.shape[0] > 1:
        char_ids, inverse = unique_tokens(char_ids)
    if char_ids.shape[0] == 0:
        h = emb.new_zeros(0, sum(b.shape[0] for b in biases))
    else:
        h, _ = CharConvMaxFunction.apply(plan.backend, activation, char_ids.contiguous(), emb, len(weights), *weights, *biases)
    for w, b in zip(hw_w, hw_b):
        h = highway(plan.highway, h, w, b, plan.packed)
    out = linear(h, proj_weight, proj_bias, plan.packed)
    # index_select, not out[inverse]: on the CPU the backward of advanced indexing accumulates with
    # atomics across threads (run-to-run different sums with 2 threads) and took 4x as long as
    # index_select's index_add_ (1.3 vs 0.3 ms for a 64 x 20 x 128 gather, 2 threads).
    return out if inverse is None else out.index_select(0, inverse)
