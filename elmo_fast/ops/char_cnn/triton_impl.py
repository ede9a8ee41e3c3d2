"""Triton kernels of the fused character CNN (conv of one filter width + max over positions +
activation), forward and backward, plus their host launchers.

Forward, one program per (block of BLOCK_N tokens, block of BLOCK_F filters) of one width w:
the [w * E, BLOCK_F] weight panel is loaded once; for each position p the [BLOCK_N, w * E] window
matrix is gathered straight from the embedding table (never materialised in memory) and one
`tl.dot` gives the conv at p, folded at once into a running max + argmax. Positions past the start
of each token's trailing padding run repeat the window at that start bit for bit (see
csrc/char_cnn/char_cnn.cpp), so the loop stops at the block's largest run start.

Backward (the character-table formulation of csrc/char_cnn/char_cnn.cpp): one kernel over (block
of tokens, block of filters) forms d_pre = grad * act'(features), adds its column sums into d_bias
and scatters d_pre into the gradient S[f, j, c] of a [F_i, w, V] character table through the saved
argmax; d_weight and d_embedding are then two small GEMMs of S (torch, cuBLAS on a GPU). Every
program owns a 2-D tile, so the grid is as wide as the forward's, and the atomics (N * F * w of them,
skipped where d_pre is 0) spread over F * w * V cells instead of the V * E of d_embedding.
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
    FP64: tl.constexpr,
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
    if FP64:  # fp64 dots give fp64; the running max must keep that type on a GPU
        best = tl.full((BLOCK_N, BLOCK_F), float("-inf"), tl.float64)
    else:
        best = tl.full((BLOCK_N, BLOCK_F), float("-inf"), tl.float32)
    best_at = tl.zeros((BLOCK_N, BLOCK_F), tl.int32)
    xm = n_mask[:, None] & k_mask[None, :]
    for p in range(0, last + 1):
        cid = tl.load(ids_ptr + offs_n[:, None] * W + p + tap[None, :], mask=xm, other=0)  # [BLOCK_N, BLOCK_K]
        x = tl.load(emb_ptr + cid * E + dim[None, :], mask=xm, other=0.0)
        if IEEE:  # fp32 inputs without TF32 (see _ieee): exact fp32 products, like the reference
            acc = tl.dot(x, w, input_precision="ieee")  # [BLOCK_N, BLOCK_F] fp32
        else:
            acc = tl.dot(x, w)
        # strict: the first maximum wins, like torch.max; so does the first NaN (torch.max
        # propagates it; a plain `acc > best` never takes a NaN and would hide a diverged weight)
        better = (acc > best) | ((acc != acc) & (best == best))  # noqa: PLR0124  (x != x: NaN)
        best = tl.where(better, acc, best)
        best_at = tl.where(better, p, best_at)
    pre = best + tl.load(b_ptr + offs_f, mask=f_mask, other=0.0).to(best.dtype)[None, :]
    if RELU:
        y = tl.where(pre < 0.0, 0.0, pre)  # NaN stays NaN, as torch.relu
    else:
        y = 2.0 * tl.sigmoid(2.0 * pre) - 1.0  # tanh; libdevice is unavailable under the interpreter
    om = n_mask[:, None] & f_mask[None, :]
    dst = offs_n[:, None] * F_total + out_col + offs_f[None, :]
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=om)
    tl.store(amax_ptr + dst, best_at, mask=om)


@triton.jit
def _char_cnn_bwd_scatter_kernel(
    ids_ptr,  # int64 [N, W]
    grad_ptr,  # [N, F] upstream gradient of the features
    feat_ptr,  # [N, F] activated features (for act')
    amax_ptr,  # int32 [N, F]
    s_ptr,  # fp32/fp64 [F_i, WIDTH, V] gradient of this width's character table (zeroed)
    db_ptr,  # fp32/fp64 [F_i] bias gradient (zeroed)
    N,
    F_i,
    F_total,
    col,
    V,
    W: tl.constexpr,
    WIDTH: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_f = tl.program_id(1)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # n * F_total passes 2^31 from ~1M tokens
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    n_mask = offs_n < N
    f_mask = offs_f < F_i
    m = n_mask[:, None] & f_mask[None, :]
    src = offs_n[:, None] * F_total + col + offs_f[None, :]
    acc_ty = s_ptr.dtype.element_ty
    g = tl.load(grad_ptr + src, mask=m, other=0.0).to(acc_ty)
    y = tl.load(feat_ptr + src, mask=m, other=0.0).to(acc_ty)
    if RELU:
        d = tl.where(y > 0, g, 0.0)
    else:
        d = g * (1.0 - y * y)
    a = tl.load(amax_ptr + src, mask=m, other=0)
    tl.atomic_add(db_ptr + offs_f, tl.sum(d, axis=0), mask=f_mask)
    # relu-inactive filters (about half) and padding rows add nothing: no atomic for them.
    live = m & (d != 0.0)
    row = offs_f[None, :].to(tl.int64) * WIDTH
    for j in tl.static_range(WIDTH):
        cid = tl.load(ids_ptr + offs_n[:, None] * W + a + j, mask=live, other=0)
        tl.atomic_add(s_ptr + (row + j) * V + cid, d, mask=live)


def _ieee(emb: torch.Tensor) -> bool:
    """Whether the fp32 conv's tl.dot is exact fp32 or TF32. It follows the flag that governs the
    eager module's own convolution, `torch.backends.cudnn.allow_tf32` (True by default: on a GPU the
    eager encoder's F.conv1d runs on TF32 tensor cores), so fast and eager do the same arithmetic
    under the same settings; with the flag off both are exact fp32 (IEEE dots run on the FMA units,
    not the tensor cores). Under the interpreter (CPU) always exact."""
    return emb.dtype == torch.float32 and (emb.device.type != "cuda" or not torch.backends.cudnn.allow_tf32)


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
            W=W, E=E, WIDTH=width, RELU=activation == "relu", IEEE=_ieee(emb),
            FP64=emb.dtype == torch.float64, BLOCK_N=block_n, BLOCK_F=block_f, BLOCK_K=_block_k(width, E),
        )  # fmt: skip
        col += F_i
    return feats, argmax


@on_device_of_first_arg
def char_cnn_conv_max_bwd(grad, char_ids, emb, weights, feats, argmax, activation, block_n: int = 32, block_f: int = 32):
    """(d_embedding `[V, E]`, [d_weight_i `[F_i, E, w_i]`], [d_bias_i `[F_i]`]) through the argmax.

    The character-table formulation (as csrc/char_cnn/char_cnn.cpp): a scatter kernel adds each
    d_pre[n, f] into S_i[f, j, ids[n, argmax + j]] for every tap j -- N * F * w atomics spread over
    F * w * V cells -- and two small GEMMs finish the job:
      d_weight_i[f, :, j] = S_i[f, j] @ emb,    d_embedding += sum_{f, j} S_i[f, j]^T w_i[f, :, j].
    A direct scatter into d_embedding would be E times more atomics, all on V * E hot cells.
    """
    N, W = char_ids.shape
    V, E = emb.shape
    acc = torch.float64 if emb.dtype == torch.float64 else torch.float32
    ids = char_ids.contiguous()
    grad, feats, argmax = grad.contiguous(), feats.contiguous(), argmax.contiguous()
    F_total = feats.shape[1]
    emb_acc = emb.to(acc)
    demb = torch.zeros(V, E, device=emb.device, dtype=acc)
    gw, gb, col = [], [], 0
    for w in weights:
        F_i, _, width = w.shape
        table = torch.zeros(F_i, width, V, device=emb.device, dtype=acc)
        db = torch.zeros(F_i, device=emb.device, dtype=acc)
        if N:
            grid = (triton.cdiv(N, block_n), triton.cdiv(F_i, block_f))
            _char_cnn_bwd_scatter_kernel[grid](
                ids, grad, feats, argmax, table, db, N, F_i, F_total, col, V,
                W=W, WIDTH=width, RELU=activation == "relu", BLOCK_N=block_n, BLOCK_F=block_f,
            )  # fmt: skip
        flat = table.view(F_i * width, V)
        dw = (flat @ emb_acc).view(F_i, width, E)  # [F_i, w, E]
        demb.addmm_(flat.t(), w.to(acc).permute(0, 2, 1).reshape(F_i * width, E))
        gw.append(dw.permute(0, 2, 1).to(w.dtype))
        gb.append(db.to(w.dtype))
        col += F_i
    return demb.to(emb.dtype), gw, gb
