"""ScalarMix: `gamma * sum_k softmax(w)_k * layer_k`, AllenNLP's names (`scalar_parameters.{k}`, `gamma`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _tiny(dtype: torch.dtype) -> float:
    # AllenNLP's tiny_value_of_dtype: the epsilon under the square root of the batch variance.
    return 1e-4 if dtype == torch.float16 else 1e-13


class ScalarMix(nn.Module):
    def __init__(self, mixture_size: int, do_layer_norm: bool = False,
                 initial_scalar_parameters: Sequence[float] | None = None, trainable: bool = True):
        super().__init__()
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        elif len(initial_scalar_parameters) != mixture_size:
            raise ValueError(
                f"scalar_mix_parameters has {len(initial_scalar_parameters)} values but the model has {mixture_size} layers"
            )
        self.scalar_parameters = nn.ParameterList(
            [nn.Parameter(torch.tensor([float(v)]), requires_grad=trainable) for v in initial_scalar_parameters]
        )
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    def forward(self, tensors: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """tensors: `mixture_size` x `[B, T, D]`; mask `[B, T]` (needed for layer norm) -> `[B, T, D]`."""
        if len(tensors) != self.mixture_size:
            raise ValueError(f"ScalarMix expected {self.mixture_size} tensors, got {len(tensors)}")
        weights = torch.softmax(torch.cat(list(self.scalar_parameters)), dim=0).split(1)
        if not self.do_layer_norm:
            return self.gamma * sum(w * t for w, t in zip(weights, tensors))
        if mask is None:
            raise ValueError("ScalarMix with do_layer_norm=True needs the mask")
        bmask = mask.unsqueeze(-1).to(tensors[0].dtype)
        n = mask.sum() * tensors[0].shape[-1]
        return self.gamma * sum(w * _batch_norm(t, bmask, n) for w, t in zip(weights, tensors))


def _batch_norm(tensor: torch.Tensor, bmask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    # ONE mean and ONE population variance over every unmasked element of the batch.
    masked = tensor * bmask
    mean = masked.sum() / n
    var = (((masked - mean) * bmask) ** 2).sum() / n
    return (tensor - mean) / torch.sqrt(var + _tiny(var.dtype))
