"""Eager character encoder: embedding, convolutions + max-over-time, highway, projection.

AllenNLP's `_ElmoCharacterEncoder.forward` step for step, composed of the two ops' references;
the oracle of `char_cnn` and the baseline the benchmarks measure against.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..char_cnn.reference import conv_max_ref
from ..highway.reference import highway_ref, rounded


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
    return F.linear(rounded(h, gemm_dtype), rounded(proj_weight, gemm_dtype), proj_bias)
