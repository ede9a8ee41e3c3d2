"""Public entry point of the LSTM-with-projection sequence op: validation and backend dispatch."""

from __future__ import annotations

import torch

from ..._backend import choose_backend
from .reference import lstm_proj_ref

SUPPORTED = ("torch",)


def _check(x, lengths, w_in, w_rec, bias, w_proj, h0, c0):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, I], got shape {tuple(x.shape)}")
    B, T, I = x.shape
    if w_in.dim() != 2 or w_in.shape[1] != I or w_in.shape[0] % 4:
        raise ValueError(f"w_in must be [4C, {I}], got {tuple(w_in.shape)}")
    C4 = w_in.shape[0]
    P = w_proj.shape[0]
    if tuple(w_proj.shape) != (P, C4 // 4):
        raise ValueError(f"w_proj must be [P, {C4 // 4}], got {tuple(w_proj.shape)}")
    if tuple(w_rec.shape) != (C4, P):
        raise ValueError(f"w_rec must be [{C4}, {P}], got {tuple(w_rec.shape)}")
    if tuple(bias.shape) != (C4,):
        raise ValueError(f"bias must be [{C4}], got {tuple(bias.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must be [{B}], got {tuple(lengths.shape)}")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, {T}], got min {int(lengths.min())} max {int(lengths.max())}")
    if h0 is not None and tuple(h0.shape) != (B, P):
        raise ValueError(f"h0 must be [{B}, {P}], got {tuple(h0.shape)}")
    if c0 is not None and tuple(c0.shape) != (B, C4 // 4):
        raise ValueError(f"c0 must be [{B}, {C4 // 4}], got {tuple(c0.shape)}")


def lstm_proj(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM with projection over a padded, variable-length batch; shapes as in `lstm_proj_ref`.

    Returns (out `[B, T, P]`, h_n `[B, P]`, c_n `[B, C]`).
    """
    _check(x, lengths, w_in, w_rec, bias, w_proj, h0, c0)
    chosen = choose_backend(x.device, SUPPORTED, backend)
    if chosen == "torch":
        return lstm_proj_ref(x, lengths, w_in, w_rec, bias, w_proj, cell_clip, proj_clip, reverse, h0, c0)
    raise AssertionError(chosen)
