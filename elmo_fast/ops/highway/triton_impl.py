"""Triton kernel of one highway layer, y = t * x + (1 - t) * relu(n) with [n | g] = x @ W^T + b,
t = sigmoid(g), W [2D, D]: the GEMM and the gate in one kernel (forward), and its host launchers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._backend import on_device_of_first_arg


@triton.jit
def _highway_fwd_kernel(
    x_ptr,  # [M, D]
    w_ptr,  # [2D, D]: rows 0..D-1 give n (the nonlinear part), rows D..2D-1 the gate g (AllenNLP's order)
    b_ptr,  # [2D]
    y_ptr,  # [M, D]
    z_ptr,  # [M, 2D]: n and g with their bias, written when SAVE_Z (backward's input)
    M,
    D,
    PRECISION: tl.constexpr,
    FP64: tl.constexpr,
    SAVE_Z: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < D
    if FP64:
        acc_n = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float64)
    else:
        acc_n = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    # One x tile feeds both halves of W: the column block j of n and the same block of g, so the
    # gate is applied in registers and only y (and z for backward) is written.
    for k0 in range(0, D, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < D
        a = tl.load(x_ptr + offs_m[:, None] * D + k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        wm = k_mask[:, None] & n_mask[None, :]
        wn = tl.load(w_ptr + offs_n[None, :].to(tl.int64) * D + k[:, None], mask=wm, other=0.0)  # [BLOCK_K, BLOCK_N]
        wg = tl.load(w_ptr + (offs_n[None, :] + D).to(tl.int64) * D + k[:, None], mask=wm, other=0.0)
        # out_dtype named: Triton 3.6 (the GPU machines' image) asserts acc's dtype equals it and
        # defaults it to fp32 even for fp64 operands; 3.8 infers it.
        acc_n = tl.dot(a, wn, acc_n, input_precision=PRECISION, out_dtype=acc_n.dtype)
        acc_g = tl.dot(a, wg, acc_g, input_precision=PRECISION, out_dtype=acc_g.dtype)
    n = acc_n + tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(acc_n.dtype)[None, :]
    g = acc_g + tl.load(b_ptr + D + offs_n, mask=n_mask, other=0.0).to(acc_g.dtype)[None, :]
    om = m_mask[:, None] & n_mask[None, :]
    carry = tl.load(x_ptr + offs_m[:, None] * D + offs_n[None, :], mask=om, other=0.0).to(n.dtype)
    t = 1.0 / (1.0 + tl.exp(-g))
    y = t * carry + (1.0 - t) * tl.maximum(n, 0.0)
    tl.store(y_ptr + offs_m[:, None] * D + offs_n[None, :], y.to(y_ptr.dtype.element_ty), mask=om)
    if SAVE_Z:
        zrow = offs_m[:, None] * (2 * D) + offs_n[None, :]
        tl.store(z_ptr + zrow, n.to(z_ptr.dtype.element_ty), mask=om)
        tl.store(z_ptr + zrow + D, g.to(z_ptr.dtype.element_ty), mask=om)


def highway_precision(x: torch.Tensor) -> str:
    """The `tl.dot` input precision of the fp32 highway GEMM.

    With `torch.backends.cuda.matmul.allow_tf32` on, "tf32": what the eager F.linear does under that
    flag. Off (PyTorch's default, under which eager runs IEEE fp32 SGEMM on the FMA units),
    "tf32x3": each operand split into two TF32 parts, three tensor-core products, fp32
    accumulation -- about fp32's accuracy (the dropped low x low term is ~2^-22 relative), with the
    tensor cores' throughput instead of the FMA units'. Exact "ieee" on the CPU (interpreter) and
    for fp64; other dtypes ignore the setting."""
    if x.device.type != "cuda" or x.dtype == torch.float64:
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


@on_device_of_first_arg
def highway_fwd(x, w, b, save_z: bool):
    """(y `[M, D]`, z `[M, 2D]` or None) for x `[M, D]`, W `[2D, D]`, b `[2D]`; z = x @ W^T + b."""
    M, D = x.shape
    x, w, b = x.contiguous(), w.contiguous(), b.contiguous()
    y = torch.empty_like(x)
    z = torch.empty(M, 2 * D, device=x.device, dtype=x.dtype) if save_z else y  # y: an unused stand-in
    precision, fp64 = highway_precision(x), x.dtype == torch.float64
    # Two 64 x 64 fp32 accumulators; 3xTF32 also keeps the operands' high and low halves: with 4
    # warps and k-blocks of 32 that spilled 216 B per thread (triton_check), with 8 warps still 24 B
    # on sm_80, so it takes 8 warps and k-blocks of 16 (no spills on sm_80 or sm_90). fp64
    # (gradcheck) takes 32 x 32 tiles for the same reason.
    split = precision == "tf32x3" and x.dtype == torch.float32
    block = 32 if fp64 else 64
    if M:
        grid = (triton.cdiv(M, block), triton.cdiv(D, block))
        _highway_fwd_kernel[grid](
            x, w, b, y, z, M, D, PRECISION=precision, FP64=fp64, SAVE_Z=save_z,
            BLOCK_M=block, BLOCK_N=block, BLOCK_K=16 if split else 32, num_warps=8 if split else 4,
        )  # fmt: skip
    return y, (z if save_z else None)


def highway_bwd(dy, x, w, z):
    """(dx, dW, db) of one highway layer from the saved pre-activations z `[M, 2D]`: the gate's
    pointwise derivative in torch, then cuBLAS GEMMs (the backward GEMMs are eager's too)."""
    D = x.shape[1]
    n, g = z[:, :D], z[:, D:]
    t = torch.sigmoid(g)
    dn = dy * (1 - t) * (n > 0)
    dg = dy * (x - torch.relu(n)) * t * (1 - t)
    dz = torch.cat([dn, dg], 1)
    return torch.addmm(dy * t, dz, w), dz.t().mm(x), dz.sum(0)
