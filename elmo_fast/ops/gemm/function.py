"""The CPU GEMMs against packed weight copies (csrc/common/packed_gemm.h, gemm_ops.cpp): the packed
copies themselves (cached per weight, see weight_copies.py) and `linear`, which the char encoder's
highway and projection call and which falls back to F.linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..weight_copies import derived_copy


def gemm_packed_t(w: torch.Tensor) -> torch.Tensor:
    """`w` `[N, K]` (a Linear weight) packed for `packed_linear(x, ., bias, N)` = `F.linear(x, w, bias)`
    and the C++ LSTM's GEMMs (csrc/common/packed_gemm.h)."""
    return derived_copy(w, "gemm_packed_t", lambda t: torch.ops.elmo_fast.gemm_pack(t.t()))


def gemm_packed_bf16_t(w: torch.Tensor) -> torch.Tensor:
    """`w` `[N, K]` rounded to bf16 and packed in k-pairs for the bf16 micro-kernels
    (csrc/common/packed_gemm.h: vdpbf16ps on avx512_bf16 CPUs); taken wherever gemm_packed_t is."""
    return derived_copy(w, "gemm_packed_bf16_t", lambda t: torch.ops.elmo_fast.gemm_pack_bf16(t.t()))


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.dtype | None = None) -> torch.Tensor:
    """F.linear; with `packed` (fp32 or bf16), against the cached packed copy of the fp32 `w` in that
    dtype (bf16: operands rounded to bf16, fp32 sums and result); for a bf16 weight (the gemm_dtype
    option off the cpp backend) bf16 operands with an fp32 result."""
    if packed is not None:
        pack = gemm_packed_bf16_t if packed == torch.bfloat16 else gemm_packed_t
        return torch.ops.elmo_fast.packed_linear(x, pack(w), b, w.shape[0])
    if w.dtype == x.dtype:
        return F.linear(x, w, b)
    # CPU GEMMs have no bf16-in/fp32-out form (aten::mm.dtype is CUDA-only): the fp32-accumulated
    # result is rounded to bf16 once, and the bias is added in fp32.
    return torch.mm(x.to(w.dtype), w.t()).float().add_(b)


def check_gemm_dtype(gemm_dtype, grad: bool) -> None:
    """The CPU bf16-GEMM option (`gemm_dtype=torch.bfloat16`) is an inference option of one dtype."""
    if gemm_dtype != torch.bfloat16:
        raise ValueError(f"gemm_dtype must be None or torch.bfloat16, got {gemm_dtype}")
    if grad:
        raise RuntimeError("gemm_dtype=torch.bfloat16 is inference-only: run under torch.no_grad(), or use gemm_dtype=None to train")
