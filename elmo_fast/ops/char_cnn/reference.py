"""Eager conv + max-over-positions + activation: the oracle of the fused conv-max kernels.

This mirrors AllenNLP's `_ElmoCharacterEncoder.forward` step for step (one conv1d per filter width,
the [N, F_i, 50 - w + 1] activations materialised).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


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
