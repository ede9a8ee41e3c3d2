"""Eager character encoder: embedding, convolutions + max-over-time, highway, projection.

This mirrors AllenNLP's `_ElmoCharacterEncoder.forward` step for step (one conv1d per filter width,
the [N, F_i, 50 - w + 1] activations materialised); it is the oracle for every fused kernel and the
baseline the benchmarks measure against.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def char_cnn_ref(
    char_ids: torch.Tensor,
    char_embedding: torch.Tensor,
    conv_weights: Sequence[torch.Tensor],
    conv_biases: Sequence[torch.Tensor],
    highway_weights: Sequence[torch.Tensor],
    highway_biases: Sequence[torch.Tensor],
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    activation: str = "relu",
    *,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Character ids to projected word vectors.

    Args:
        char_ids: int64 `[N, W]` (W = 50 characters per token), values in [0, 262).
        char_embedding: `[262, E]`; row 0 is the all-zero "no character" row.
        conv_weights: per filter i, `[F_i, E, w_i]` (PyTorch Conv1d layout); conv_biases `[F_i]`.
        highway_weights: per layer `[2F, F]` (rows: transform half n, then gate half g); biases `[2F]`.
        proj_weight: `[P, F]`; proj_bias `[P]`.
        activation: 'relu' or 'tanh', applied after max-pooling.
        gemm_dtype: None, or torch.bfloat16 for the numerics of `char_cnn(..., gemm_dtype=torch.bfloat16)`
            on the cpp backend: the highway and projection GEMMs' operands rounded to it, their sums
            and everything else in the weights' dtype.

    Returns:
        `[N, P]` in the dtype of the weights.
    """
    h = conv_max_ref(char_ids, char_embedding, conv_weights, conv_biases, activation, return_argmax=False)  # [N, F]
    for w, b in zip(highway_weights, highway_biases):
        h = highway_ref(h, w, b, gemm_dtype=gemm_dtype)
    return F.linear(_rounded(h, gemm_dtype), _rounded(proj_weight, gemm_dtype), proj_bias)


def conv_max_ref(char_ids: torch.Tensor, emb: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 activation: str = "relu", *, return_argmax: bool = True):
    """The fused conv + max-over-positions + activation op, eagerly: `[N, W]` ids -> features `[N, F]`
    (every width's filters, concatenated), and with `return_argmax` the position of each maximum
    (int32 `[N, F]`), which the backward goes through. torch.max propagates NaN, as AllenNLP's does."""
    act = torch.relu if activation == "relu" else torch.tanh
    x = F.embedding(char_ids, emb).transpose(1, 2)  # [N, E, W]
    feats, idx = [], []
    for w, b in zip(weights, biases):
        y, a = torch.max(F.conv1d(x, w, b), dim=-1)  # [N, F_i, W - w_i + 1] -> [N, F_i]
        feats.append(act(y))
        idx.append(a)
    feats = torch.cat(feats, dim=-1)
    return (feats, torch.cat(idx, -1).to(torch.int32)) if return_argmax else feats


def conv_max_backward_ref(grad: torch.Tensor, char_ids: torch.Tensor, emb: torch.Tensor, weights: Sequence[torch.Tensor],
                          feats: torch.Tensor, argmax: torch.Tensor, activation: str = "relu"):
    """Gradients of `conv_max_ref` through its argmax: (grad_emb `[262, E]`, per-width weight grads,
    per-width bias grads). Only the window at each maximum receives gradient."""
    dpre = grad * (feats > 0) if activation == "relu" else grad * (1 - feats * feats)
    N = char_ids.shape[0]
    E = emb.shape[1]
    grad_emb = torch.zeros_like(emb)
    gw, gb, off = [], [], 0
    x = F.embedding(char_ids, emb)  # [N, W, E]
    for w in weights:
        Fi, _, width = w.shape
        d = dpre[:, off : off + Fi]  # [N, F_i]
        pos = argmax[:, off : off + Fi].long()[..., None] + torch.arange(width, device=w.device)  # [N, F_i, w]
        win = x[torch.arange(N, device=w.device)[:, None, None], pos]  # [N, F_i, w, E]
        gw.append(torch.einsum("nf,nfje->fej", d, win))
        gb.append(d.sum(0))
        contrib = d[..., None, None] * w.permute(0, 2, 1)[None]  # [N, F_i, w, E]
        ids = char_ids.gather(1, pos.reshape(N, -1)).reshape(-1)
        grad_emb.index_add_(0, ids, contrib.reshape(-1, E))  # deterministic, unlike advanced-index +=
        off += Fi
    return grad_emb, gw, gb


def _rounded(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None else t.to(dtype).to(t.dtype)


def highway_ref(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, gemm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One highway layer, `[N, F]` -> `[N, F]`: [n | g] = h @ w^T + b (w `[2F, F]`), t = sigmoid(g),
    t * h + (1 - t) * relu(n); gemm_dtype as char_cnn_ref takes it."""
    return highway_gate_ref(F.linear(_rounded(h, gemm_dtype), _rounded(w, gemm_dtype), b), h)


def highway_gate_ref(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The highway's gate on its GEMM output z = [n | g] `[N, 2F]` and input h `[N, F]`."""
    n, g = z.chunk(2, dim=-1)
    g = torch.sigmoid(g)
    return g * h + (1 - g) * torch.relu(n)
