"""Public entry point of the character encoder op: validation and backend dispatch."""

from __future__ import annotations

from typing import Sequence

import torch

from ..._backend import choose_backend
from .reference import char_cnn_ref

SUPPORTED = ("torch",)


def _check(char_ids, char_embedding, conv_weights, conv_biases, highway_weights, highway_biases, proj_weight, proj_bias, activation):
    if char_ids.dim() != 2:
        raise ValueError(f"char_ids must be [N, 50] int64, got shape {tuple(char_ids.shape)}")
    if char_ids.dtype != torch.long:
        raise TypeError(f"char_ids must be int64 (from batch_to_ids), got {char_ids.dtype}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    if len(conv_weights) != len(conv_biases) or not conv_weights:
        raise ValueError("conv_weights and conv_biases must be non-empty lists of the same length")
    E = char_embedding.shape[1]
    F_total = 0
    for k, (w, b) in enumerate(zip(conv_weights, conv_biases)):
        if w.dim() != 3 or w.shape[1] != E or b.shape != (w.shape[0],):
            raise ValueError(f"conv {k}: weight must be [F_k, {E}, width] with bias [F_k], got {tuple(w.shape)} and {tuple(b.shape)}")
        if w.shape[2] > char_ids.shape[1]:
            raise ValueError(f"conv {k}: width {w.shape[2]} exceeds the {char_ids.shape[1]} characters per token")
        F_total += w.shape[0]
    for k, (w, b) in enumerate(zip(highway_weights, highway_biases)):
        if tuple(w.shape) != (2 * F_total, F_total) or tuple(b.shape) != (2 * F_total,):
            raise ValueError(f"highway {k}: expected weight [{2 * F_total}, {F_total}] and bias [{2 * F_total}], got {tuple(w.shape)}, {tuple(b.shape)}")
    if proj_weight.dim() != 2 or proj_weight.shape[1] != F_total or proj_bias.shape != (proj_weight.shape[0],):
        raise ValueError(f"projection: expected weight [P, {F_total}] and bias [P], got {tuple(proj_weight.shape)}, {tuple(proj_bias.shape)}")


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
) -> torch.Tensor:
    """Character ids `[N, 50]` to word vectors `[N, P]`; see `char_cnn_ref` for the argument shapes."""
    args = (char_ids, char_embedding, list(conv_weights), list(conv_biases), list(highway_weights), list(highway_biases), proj_weight, proj_bias)
    _check(*args, activation)
    chosen = choose_backend(char_ids.device, SUPPORTED, backend)
    if chosen == "torch":
        return char_cnn_ref(*args, activation)
    raise AssertionError(chosen)
