"""Eager highway layer (AllenNLP's `Highway` with one layer): the oracle of the fused kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rounded(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None else t.to(dtype).to(t.dtype)


def highway_ref(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, gemm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One highway layer, `[N, F]` -> `[N, F]`: [n | g] = h @ w^T + b (w `[2F, F]`), t = sigmoid(g),
    t * h + (1 - t) * relu(n); gemm_dtype as char_cnn_ref takes it."""
    return highway_gate_ref(F.linear(rounded(h, gemm_dtype), rounded(w, gemm_dtype), b), h)


def highway_gate_ref(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The highway's gate on its GEMM output z = [n | g] `[N, 2F]` and input h `[N, F]`."""
    n, g = z.chunk(2, dim=-1)
    g = torch.sigmoid(g)
    return g * h + (1 - g) * torch.relu(n)
