"""Eager LSTM with projection over a variable-length batch.

The per-time-step structure of AllenNLP's `LstmCellWithProjection` is kept on purpose (rows sorted
by length, the active batch shrinking as sequences end, the input projection recomputed every
step, full-batch state cloned every step): this is the baseline the fused kernels are measured
against, and the oracle they are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lstm_proj_ref(
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
    *,
    gemm_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one LSTM-with-projection layer.

    Args:
        x: `[B, T, I]` inputs (values past a row's length are ignored).
        lengths: int64 `[B]` (any order, each in [0, T]), on any device.
        w_in: `[4C, I]`, w_rec: `[4C, P]`, bias: `[4C]`, gate blocks in PyTorch order i, f, g, o.
        w_proj: `[P, C]`.
        cell_clip, proj_clip: clip values; None or 0 means no clip.
        reverse: run from each row's own last position back to 0.
        h0: `[B, P]`, c0: `[B, C]` initial state (zeros when None).
        gemm_dtype: None, or torch.bfloat16 for the numerics of `lstm_proj(..., gemm_dtype=torch.bfloat16)`:
            every GEMM operand (x, h, o * tanh(c) and the three weights) rounded to it, everything
            else, the products' sums included, in x's dtype.

    Returns:
        out `[B, T, P]` (exactly 0 past each row's length), h_n `[B, P]`, c_n `[B, C]` (the state after
        each row's own last step; the initial state for rows of length 0).
    """
    if gemm_dtype is not None:
        dtype = x.dtype

        def rounded(t: torch.Tensor) -> torch.Tensor:
            return t.to(gemm_dtype).to(dtype)

        w_in, w_rec, w_proj = rounded(w_in), rounded(w_rec), rounded(w_proj)
    else:

        def rounded(t: torch.Tensor) -> torch.Tensor:
            return t

    B, T, _ = x.shape
    C = w_rec.shape[0] // 4
    P = w_proj.shape[0]
    lengths_list = [int(v) for v in lengths.tolist()]
    order = sorted(range(B), key=lambda i: -lengths_list[i])
    sorted_len = [lengths_list[i] for i in order]
    perm = torch.tensor(order, device=x.device, dtype=torch.long)
    x = x.index_select(0, perm)
    state_h = x.new_zeros(B, P) if h0 is None else h0.index_select(0, perm)
    state_c = x.new_zeros(B, C) if c0 is None else c0.index_select(0, perm)
    out = x.new_zeros(B, T, P)
    for step in range(T):
        index = T - 1 - step if reverse else step
        active = sum(1 for n in sorted_len if n > index)  # rows are sorted, so a prefix is active
        if active == 0:
            continue
        prev_c = state_c[:active].clone()
        prev_h = state_h[:active].clone()
        z = F.linear(rounded(x[:active, index]), w_in) + F.linear(rounded(prev_h), w_rec, bias)
        i = torch.sigmoid(z[:, 0 * C : 1 * C])
        f = torch.sigmoid(z[:, 1 * C : 2 * C])
        g = torch.tanh(z[:, 2 * C : 3 * C])
        o = torch.sigmoid(z[:, 3 * C : 4 * C])
        c = i * g + f * prev_c
        if cell_clip:
            c = torch.clamp(c, -cell_clip, cell_clip)
        h = F.linear(rounded(o * torch.tanh(c)), w_proj)
        if proj_clip:
            h = torch.clamp(h, -proj_clip, proj_clip)
        state_c = state_c.clone()
        state_h = state_h.clone()
        state_c[:active] = c
        state_h[:active] = h
        out[:active, index] = h
    restore = torch.empty_like(perm)
    restore[perm] = torch.arange(B, device=x.device)
    return out.index_select(0, restore), state_h.index_select(0, restore), state_c.index_select(0, restore)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the GPU kernels' cell state, its carried gradient and the cached gate activations
    and cell: fp32 for bf16/fp16 inputs (why, and the error it saves: triton_impl's docstring), the
    inputs' own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
