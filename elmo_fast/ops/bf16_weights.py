"""bf16 copies of fp32 weights for the CPU bf16-GEMM inference options (`gemm_dtype=torch.bfloat16`).

Converting on every call would cost a large part of what bf16 saves (the 'original' LSTM converts
~19M weights per direction and layer; the 'small' highway weight is 2048 x 4096). A copy is kept per
weight tensor and rebuilt when the weight changes in place (its `_version` moves: an optimizer step,
`load_state_dict`). Keys are weak and by identity, so a dropped model frees its copies.
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

_COPIES = WeakIdKeyDictionary()


def bf16_copy(w: torch.Tensor) -> torch.Tensor:
    hit = _COPIES.get(w)
    if hit is not None and hit[0] == w._version and hit[1].shape == w.shape:
        return hit[1]
    copy = w.detach().to(torch.bfloat16)
    _COPIES[w] = (w._version, copy)
    return copy
