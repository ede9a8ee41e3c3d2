"""Bounded cache of word vectors across batches: an automatic `vocab_to_cache`.

Inference sees the same words batch after batch ('the', ',', '.'); the char CNN + highway +
projection of a token depends only on its 50 character ids and the weights, so its output can be
reused. Keys are the id rows, eviction is least-recently-used, and the whole cache is dropped as
soon as any weight changes (in-place updates bump a tensor's `_version`; replacing a parameter
changes its `data_ptr`, and the cache keeps the storages it was filled from alive, so a replacement
cannot land at the same address). Only used when no gradient is needed (see `char_cnn(cache=...)`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch

from ..weight_copies import weight_key
from .function import unique_tokens


class WordVectorCache:
    """LRU map from a token's char-id row `[W]` to its word vector `[P]`.

    The vectors live in one slab tensor `[capacity, P]` (grown by doubling up to `max_entries`) and
    the map holds slot numbers: a tensor per word cost ~2.5 KB for a 512-byte vector, and an LRU
    that frees and allocates one small block per new word fragments the heap until the process's
    RSS grows with the corpus long after the cache is full.

    Example:
        >>> cache = WordVectorCache(max_entries=50_000)
        >>> vecs = char_cnn(ids, *weights, cache=cache)   # later batches reuse known words
    """

    def __init__(self, max_entries: int = 100_000):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self._slab: torch.Tensor | None = None
        self._signature: tuple | None = None
        self._storages: list = []
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        # Saving or copying a module (torch.save, copy.deepcopy) takes the cache empty: its vectors
        # are keyed on the original weights' storages, which the copy does not share (and
        # torch.save refuses the untyped storage references next to the typed weights).
        state = dict(self.__dict__)
        state.update(_slots=OrderedDict(), _slab=None, _signature=None, _storages=[])
        return state

    def __len__(self) -> int:
        return len(self._slots)

    def clear(self) -> None:
        self._slots.clear()
        self._slab = None
        self._signature = None
        self._storages: list = []

    @staticmethod
    def _keys(uniq: torch.Tensor) -> list[bytes]:
        rows = uniq.cpu().numpy()
        if rows.size and 0 <= rows.min() and rows.max() < 65536:  # char ids are < 262: 2 bytes a column
            rows = rows.astype(np.uint16)
        return [r.tobytes() for r in rows]

    def _take_slots(self, n: int, like: torch.Tensor) -> list[int]:
        """`n` slots for new entries (n <= max_entries): free capacity first, then the least recently used."""
        have = 0 if self._slab is None else self._slab.shape[0]
        used = len(self._slots)
        if used + n > have and have < self.max_entries:
            cap = min(self.max_entries, max(used + n, 2 * have, 1024))
            slab = like.new_empty((cap, like.shape[1]))
            if self._slab is not None:
                slab[:have] = self._slab
            self._slab, have = slab, cap
        fresh = list(range(used, min(have, used + n)))
        while len(fresh) < n:
            fresh.append(self._slots.popitem(last=False)[1])
        return fresh

    def lookup(self, char_ids: torch.Tensor, params: Sequence[torch.Tensor], compute: Callable[[torch.Tensor], torch.Tensor],
               variant=None) -> torch.Tensor:
        """Vectors `[N, P]` for `char_ids` `[N, W]`; `compute(ids [M, W]) -> [M, P]` fills the misses.
        `variant` names anything else the vectors depend on (e.g. the GEMM precision): a change drops them."""
        signature = (tuple(weight_key(p) for p in params), variant)
        if signature != self._signature:
            self.clear()
            self._signature = signature
            # Held so that no replacement weight can be allocated at a signature's address (weight_key).
            self._storages = [p.untyped_storage() for p in params]
        if char_ids.shape[0] == 0:
            return compute(char_ids)
        uniq, inverse = unique_tokens(char_ids)
        keys = self._keys(uniq)
        hit_pos, hit_slot, missing = [], [], []
        for i, k in enumerate(keys):
            slot = self._slots.get(k)
            if slot is None:
                missing.append(i)
            else:
                self._slots.move_to_end(k)
                hit_pos.append(i)
                hit_slot.append(slot)
        self.hits += len(hit_pos)
        self.misses += len(missing)
        if not missing:
            return self._slab.index_select(0, torch.tensor(hit_slot, device=self._slab.device)[inverse])
        with torch.no_grad():
            new = compute(uniq[torch.tensor(missing, device=uniq.device)])
        out = new.new_empty((len(keys), new.shape[1]))
        dev = out.device
        out[torch.tensor(missing, device=dev)] = new
        if hit_pos:  # read before the new entries below can take these slots
            out[torch.tensor(hit_pos, device=dev)] = self._slab[torch.tensor(hit_slot, device=dev)]
        if self._slab is not None and (self._slab.dtype != new.dtype or self._slab.shape[1] != new.shape[1]):
            self._slots.clear()
            self._slab = None
        keep = missing[-self.max_entries:]  # a batch with more new words than fit keeps its last ones
        slots = self._take_slots(len(keep), new)
        self._slab[torch.tensor(slots, device=dev)] = new[len(missing) - len(keep):]
        for i, slot in zip(keep, slots):
            self._slots[keys[i]] = slot
        return out.index_select(0, inverse)
