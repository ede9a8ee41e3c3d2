"""Triton kernels of the fused character CNN (conv of one filter width + max over positions +
activation), forward and backward, plus their host launchers.

Forward, one program per (block of BLOCK_N tokens, block of BLOCK_F filters) of one width w:
the [w * E, BLOCK_F] weight panel is loaded once; for each position p the [BLOCK_N, w * E] window
matrix is gathered straight from the embedding table (never materialised in memory) and one
`tl.dot` gives the conv at p, folded at once into a running max + argmax. Positions past the start
of each token's trailing padding run repeat the window at that start bit for bit (see
csrc/char_cnn/char_cnn.cpp), so the loop stops at the block's largest run start.

Backward routes d_pre = grad * act'(features) through the saved argmax:
  d_weight: one program per filter block, looping over tokens (each program owns its rows);
  d_embedding: one program per (token, filter block), atomically adding d_pre * w into the rows of
  the characters of the winning window (char ids repeat a lot, so atomics, not a private table).
Inputs may be fp32, bf16 or fp16; products are accumulated in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._backend import on_device_of_first_arg


@triton.jit
def _char_cnn_fwd_kernel(
    ids_ptr,  # int64 [N, W]
    tail_ptr,  # int32 [N]: start of each token's trailing run of one repeated id
    emb_ptr,  # [V, E]
    w_ptr,  # [WIDTH * E, F_i]  (row k = j * E + e)
    b_ptr,  # [F_i]
    out_ptr,  # [N, F] (columns out_col .. out_col + F_i)
    amax_ptr,  # int32 [N, F]
    N,
    F_i,
    F_total,
    out_col,
    W: tl.constexpr,
    E: tl.constexpr,
    WIDTH: tl.constexpr,
    RELU: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_f = tl.program_id(1)
    # int64 rows: offs_n * F_total passes 2^31 from ~1M tokens (F_total = 2048 in ELMo).
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    f_mask = offs_f < F_i
    k_mask = offs_k < WIDTH * E
    tap = offs_k // E  # [BLOCK_K] which character of the window
    dim = offs_k % E  # [BLOCK_K] which embedding dimension
    w = tl.load(w_ptr + offs_k[:, None] * F_i + offs_f[None, :], mask=k_mask[:, None] & f_mask[None, :], other=0.0)
    tails = tl.load(tail_ptr + offs_n, mask=n_mask, other=0)
    last = tl.minimum(tl.max(tails, axis=0), W - WIDTH)
    best = tl.full((BLOCK_N, BLOCK_F), float("-inf"), tl.float32)
    best_at = tl.zeros((BLOCK_N, BLOCK_F), tl.int32)
    xm = n_mask[:, None] & k_mask[None, :]
    for p in range(0, last + 1):
        cid = tl.load(ids_ptr + offs_n[:, None] * W + p + tap[None, :], mask=xm, other=0)  # [BLOCK_N, BLOCK_K]
        x = tl.load(emb_ptr + cid * E + dim[None, :], mask=xm, other=0.0)
        if IEEE:  # fp32 inputs: exact fp32 products, not tf32, to match the reference
            acc = tl.dot(x, w, input_precision="ieee")  # [BLOCK_N, BLOCK_F] fp32
        else:
            acc = tl.dot(x, w)
        better = acc > best  # strict: the first maximum wins, like torch.max
        best = tl.where(better, acc, best)
        best_at = tl.where(better, p, best_at)
    pre = best + tl.load(b_ptr + offs_f, mask=f_mask, other=0.0).to(tl.float32)[None, :]
    if RELU:
        y = tl.maximum(pre, 0.0)
    else:
        y = 2.0 * tl.sigmoid(2.0 * pre) - 1.0  # tanh; libdevice is unavailable under the interpreter
    om = n_mask[:, None] & f_mask[None, :]
    dst = offs_n[:, None] * F_total + out_col + offs_f[None, :]
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=om)
    tl.store(amax_ptr + dst, best_at, mask=om)


@triton.jit
def _char_cnn_bwd_weight_kernel(
    ids_ptr,  # int64 [N, W]
    emb_ptr,  # [V, E]
    dpre_ptr,  # fp32 [N, F]
    amax_ptr,  # int32 [N, F]
    dw_ptr,  # fp32 [F_i, WIDTH * E]
    db_ptr,  # fp32 [F_i]
    N,
    F_i,
    F_total,
    col,
    W: tl.constexpr,
    E: tl.constexpr,
    WIDTH: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_k = tl.arange(0, BLOCK_K)
    f_mask = offs_f < F_i
    k_mask = offs_k < WIDTH * E
    m = f_mask[:, None] & k_mask[None, :]
    tap = offs_k // E
    dim = offs_k % E
    acc = tl.zeros((BLOCK_F, BLOCK_K), tl.float32)
    acc_b = tl.zeros((BLOCK_F,), tl.float32)
    # Row pointers advance by one row per token (64-bit pointer arithmetic): an int32 n * F_total
    # would overflow from ~1M tokens.
    dpre_row = dpre_ptr + col + offs_f
    amax_row = amax_ptr + col + offs_f
    ids_row = ids_ptr
    for n in range(0, N):
        d = tl.load(dpre_row, mask=f_mask, other=0.0)  # [BLOCK_F]
        a = tl.load(amax_row, mask=f_mask, other=0)
        cid = tl.load(ids_row + a[:, None] + tap[None, :], mask=m, other=0)  # [BLOCK_F, BLOCK_K]
        x = tl.load(emb_ptr + cid * E + dim[None, :], mask=m, other=0.0).to(tl.float32)
        acc += d[:, None] * x
        acc_b += d
        dpre_row += F_total
        amax_row += F_total
        ids_row += W
    tl.store(dw_ptr + offs_f[:, None] * (WIDTH * E) + offs_k[None, :], acc, mask=m)
    tl.store(db_ptr + offs_f, acc_b, mask=f_mask)


@triton.jit
def _char_cnn_bwd_embedding_kernel(
    ids_ptr,  # int64 [N, W]
    w_ptr,  # [F_i, WIDTH * E]  (column k = j * E + e)
    dpre_ptr,  # fp32 [N, F]
    amax_ptr,  # int32 [N, F]
    demb_ptr,  # fp32 [V, E]
    F_i,
    F_total,
    col,
    W: tl.constexpr,
    E: tl.constexpr,
    WIDTH: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)  # n * F_total overflows int32 from ~1M tokens
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_k = tl.arange(0, BLOCK_K)
    f_mask = offs_f < F_i
    k_mask = offs_k < WIDTH * E
    m = f_mask[:, None] & k_mask[None, :]
    d = tl.load(dpre_ptr + n * F_total + col + offs_f, mask=f_mask, other=0.0)
    a = tl.load(amax_ptr + n * F_total + col + offs_f, mask=f_mask, other=0)
    w = tl.load(w_ptr + offs_f[:, None] * (WIDTH * E) + offs_k[None, :], mask=m, other=0.0).to(tl.float32)
    cid = tl.load(ids_ptr + n * W + a[:, None] + offs_k[None, :] // E, mask=m, other=0)
    tl.atomic_add(demb_ptr + cid * E + (offs_k % E)[None, :], d[:, None] * w, mask=m & (d != 0.0)[:, None])


def _block_k(width: int, E: int) -> int:
    return max(16, triton.next_power_of_2(width * E))


def tail_starts(char_ids: torch.Tensor) -> torch.Tensor:
    """int32 `[N]`: first position of each row's trailing run of one repeated id (0 = all one id)."""
    W = char_ids.shape[1]
    same = char_ids == char_ids[:, -1:]  # [N, W]
    # Length of the run = number of trailing True values; flip + cumprod counts them.
    run = same.flip(1).to(torch.int32).cumprod(1).sum(1)
    return (W - run).to(torch.int32)


@on_device_of_first_arg
def char_cnn_conv_max_fwd(char_ids, emb, weights, biases, activation, block_n: int = 32, block_f: int = 32):
    """(features `[N, F]` in the weights' dtype, argmax int32 `[N, F]`) for ids `[N, W]`."""
    N, W = char_ids.shape
    E = emb.shape[1]
    F_total = sum(b.shape[0] for b in biases)
    feats = torch.empty(N, F_total, device=emb.device, dtype=emb.dtype)
    argmax = torch.empty(N, F_total, device=emb.device, dtype=torch.int32)
    if N == 0:
        return feats, argmax
    ids = char_ids.contiguous()
    tails = tail_starts(ids)
    emb = emb.contiguous()
    col = 0
    for w, b in zip(weights, biases):
        F_i, _, width = w.shape
        packed = w.permute(2, 1, 0).reshape(width * E, F_i).contiguous()
        grid = (triton.cdiv(N, block_n), triton.cdiv(F_i, block_f))
        _char_cnn_fwd_kernel[grid](
            ids, tails, emb, packed, b.contiguous(), feats, argmax, N, F_i, F_total, col,
            W=W, E=E, WIDTH=width, RELU=activation == "relu", IEEE=emb.dtype == torch.float32,
            BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_K=_block_k(width, E),
        )  # fmt: skip
        col += F_i
    return feats, argmax


@on_device_of_first_arg
def char_cnn_conv_max_bwd(grad, char_ids, emb, weights, feats, argmax, activation, block_f: int = 32):
    """(d_embedding `[V, E]`, [d_weight_i `[F_i, E, w_i]`], [d_bias_i `[F_i]`]) through the argmax."""
    N, W = char_ids.shape
    E = emb.shape[1]
    f32 = feats.float()
    dpre = (grad.float() * (f32 > 0) if activation == "relu" else grad.float() * (1 - f32 * f32)).contiguous()
    F_total = dpre.shape[1]
    ids = char_ids.contiguous()
    argmax = argmax.contiguous()
    emb = emb.contiguous()
    demb = torch.zeros(emb.shape, device=emb.device, dtype=torch.float32)
    gw, gb, col = [], [], 0
    for w in weights:
        F_i, _, width = w.shape
        K = width * E
        dw = torch.empty(F_i, K, device=emb.device, dtype=torch.float32)
        db = torch.empty(F_i, device=emb.device, dtype=torch.float32)
        if N:
            bk = _block_k(width, E)
            _char_cnn_bwd_weight_kernel[(triton.cdiv(F_i, block_f),)](
                ids, emb, dpre, argmax, dw, db, N, F_i, F_total, col,
                W=W, E=E, WIDTH=width, BLOCK_F=block_f, BLOCK_K=bk,
            )  # fmt: skip
            w_fk = w.permute(0, 2, 1).reshape(F_i, K).contiguous()
            _char_cnn_bwd_embedding_kernel[(N, triton.cdiv(F_i, block_f))](
                ids, w_fk, dpre, argmax, demb, F_i, F_total, col,
                W=W, E=E, WIDTH=width, BLOCK_F=block_f, BLOCK_K=bk,
            )  # fmt: skip
        else:
            dw.zero_()
            db.zero_()
        gw.append(dw.view(F_i, width, E).permute(0, 2, 1).to(w.dtype))
        gb.append(db.to(w.dtype))
        col += F_i
    return demb.to(emb.dtype), gw, gb
