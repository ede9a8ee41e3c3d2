"""The fused conv + max-over-positions + activation op: checks, autograd, entry point.

`CharConvMaxFunction` (gather -> conv of every width -> max over positions -> activation) runs
the backend picked in forward (backends.py) and stores it on ctx for backward.

Memory choice for backward: instead of the per-position conv outputs ([N, F, 50 - w + 1], which the
eager module keeps for autograd) the fused op saves only the activated features and the argmax
position ([N, F] int32); backward routes each filter's gradient through its winning window. No
recomputation is needed.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..._backend import BACKENDS, choose_backend
from .backends import FORWARD, conv_max_backward


@torch.compiler.disable  # data-dependent checks (ids/lengths in range): host-side, not traced
def check_conv(char_ids, char_embedding, conv_weights, conv_biases, activation) -> int:
    """Validates the fused conv + max part; returns the total filter count F."""
    if char_ids.dim() != 2:
        raise ValueError(f"char_ids must be [N, 50] int64, got shape {tuple(char_ids.shape)}")
    if char_ids.dtype != torch.long:
        raise TypeError(f"char_ids must be int64 (from batch_to_ids), got {char_ids.dtype}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    if len(conv_weights) != len(conv_biases) or not conv_weights:
        raise ValueError("conv_weights and conv_biases must be non-empty lists of the same length")
    if char_embedding.dim() != 2:
        raise ValueError(f"char_embedding must be [262, E], got shape {tuple(char_embedding.shape)}")
    E = char_embedding.shape[1]
    F_total = 0
    for k, (w, b) in enumerate(zip(conv_weights, conv_biases)):
        if w.dim() != 3 or w.shape[1] != E or b.shape != (w.shape[0],):
            raise ValueError(f"conv {k}: weight must be [F_k, {E}, width] with bias [F_k], got {tuple(w.shape)} and {tuple(b.shape)}")
        if w.shape[0] == 0 or w.shape[2] == 0:
            raise ValueError(f"conv {k}: {w.shape[0]} filters of width {w.shape[2]}; every [width, n_filters] pair in "
                             "options.json's char_cnn.filters needs width >= 1 and n_filters >= 1 (drop the pair instead)")
        if w.shape[2] > char_ids.shape[1]:
            raise ValueError(f"conv {k}: width {w.shape[2]} exceeds the {char_ids.shape[1]} characters per token")
        F_total += w.shape[0]
    return F_total


class CharConvMaxFunction(torch.autograd.Function):
    """Fused gather -> conv (every width) -> max over positions -> activation, `[N, W]` ids -> `[N, F]`.

    Saves the activated features and the argmax ([N, F] int32), never the per-position outputs.
    """

    @staticmethod
    def forward(ctx, backend: str, activation: str, char_ids, emb, n_filters: int, *params):
        weights, biases = params[:n_filters], params[n_filters:]
        feats, argmax = FORWARD[backend](char_ids, emb, weights, biases, activation)
        ctx.backend, ctx.activation, ctx.n_filters = backend, activation, n_filters
        ctx.save_for_backward(char_ids, emb, feats, argmax, *weights)
        ctx.mark_non_differentiable(argmax)
        return feats, argmax

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, grad, _grad_argmax):
        char_ids, emb, feats, argmax, *weights = ctx.saved_tensors
        grad_emb, gw, gb = conv_max_backward(ctx.backend, grad, char_ids, emb, weights, feats, argmax, ctx.activation)
        return (None, None, None, grad_emb, None, *gw, *gb)


def char_cnn_conv_max(char_ids, emb, weights, biases, activation="relu", backend: str | None = None):
    """Fused conv + max + activation alone (no highway/projection): `[N, W]` ids -> (`[N, F]`, argmax `[N, F]` int32)."""
    check_conv(char_ids, emb, weights, biases, activation)
    chosen = choose_backend(char_ids.device, BACKENDS, backend)
    return CharConvMaxFunction.apply(chosen, activation, char_ids, emb, len(weights), *weights, *biases)
