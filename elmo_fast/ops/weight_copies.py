"""Derived copies of weights, kept across calls: GEMM-packed copies (fp32, and bf16 for the CPU
bf16-GEMM inference option `gemm_dtype=torch.bfloat16`) for the C++ LSTM's GEMMs and the char
encoder's highway and projection, and plain bf16 copies for that option's eager (ATen) GEMMs.

Rebuilding them on every call would cost a large part of what they save (the 'original' LSTM
converts ~19M weights per direction and layer; packing its 32 MB recurrent weight takes ~20 ms).
A copy is kept per (weight tensor, kind) and rebuilt when the weight changes: its `_version` moves
(an in-place update: an optimizer step, `load_state_dict`) or its storage is replaced
(`param.data = other`, which keeps the version count; the entry keeps the old storage alive, so a
new one cannot reuse its address). Keys are weak and by identity, so a dropped
model frees its copies.

PyTorch's fused optimizers (`Adam(..., fused=True)` and the like) write parameters without moving
`_version` (measured on the CPU with torch 2.13): every copy derived from a weight -- these, and the
word-vector cache's key -- would silently go on serving the weights from before the step. A global
optimizer step hook bumps the version of a fused optimizer's parameters after each step, as an
in-place update does. In-place writes through `param.data` (`p.data.mul_(2)`) stay invisible.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

_COPIES: dict[str, WeakIdKeyDictionary] = {}


def _bump_versions_after_fused_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    params = [p for g in optimizer.param_groups if g.get("fused") for p in g["params"]]
    if params:
        torch.autograd.graph.increment_version(params)


_FUSED_STEP_HOOK = register_optimizer_step_post_hook(_bump_versions_after_fused_step)


def weight_key(w: torch.Tensor) -> tuple:
    """What identifies a weight's values for a derived copy, here and in the word-vector cache
    (ops/encoder/cache.py): the version moves on in-place updates; the data pointer changes when
    `param.data = other` swaps the storage, which keeps the version count. A holder of the key must
    also hold `w.untyped_storage()`: were it freed, a replacement storage could be allocated at the
    same address with the same version count and match."""
    return (w.data_ptr(), w._version, tuple(w.shape), w.dtype, w.device)


# Not traced by torch.compile: a lookup keyed on object identity and `_version` is host-side
# bookkeeping; traced, every call site recompiled until dynamo's recompile limit.
@torch.compiler.disable
def derived_copy(w: torch.Tensor, kind: str, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`make(w.detach())`, cached per weight and `kind` until `w` changes."""
    copies = _COPIES.setdefault(kind, WeakIdKeyDictionary())
    hit = copies.get(w)
    key = weight_key(w)
    if hit is not None and hit[0] == key:
        return hit[1]
    copy = make(w.detach())
    copies[w] = (key, copy, w.untyped_storage())
    return copy


def bf16_copy(w: torch.Tensor) -> torch.Tensor:
    return derived_copy(w, "bf16", lambda t: t.to(torch.bfloat16))
