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

import torch

from ..weight_copies import weight_key
from .function import unique_tokens


class WordVectorCache:
    """LRU map from a token's char-id row `[W]` to its word vector `[P]`.

    Example:
        >>> cache = WordVectorCache(max_entries=50_000)
        >>> vecs = char_cnn(ids, *weights, cache=cache)   # later batches reuse known words
    """

    def __init__(self, max_entries: int = 100_000):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._signature: tuple | None = None
        self._storages: list = []
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        # Saving or copying a module (torch.save, copy.deepcopy) takes the cache empty: its vectors
        # are keyed on the original weights' storages, which the copy does not share (and
        # torch.save refuses the untyped storage references next to the typed weights).
        state = dict(self.__dict__)
        state.update(_store=OrderedDict(), _signature=None, _storages=[])
        return state

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self._signature = None
        self._storages: list = []

    def lookup(self, char_ids: torch.Tensor, params: Sequence[torch.Tensor], compute: Callable[[torch.Tensor], torch.Tensor],
               variant=None) -> torch.Tensor:
        """Vectors `[N, P]` for `char_ids` `[N, W]`; `compute(ids [M, W]) -> [M, P]` fills the misses.
        `variant` names anything else the vectors depend on (e.g. the GEMM precision): a change drops them."""
        signature = (tuple(weight_key(p) for p in params), variant)
        if signature != self._signature:
            self._store.clear()
            self._signature = signature
            # Held so that no replacement weight can be allocated at a signature's address (weight_key).
            self._storages = [p.untyped_storage() for p in params]
        if char_ids.shape[0] == 0:
            return compute(char_ids)
        uniq, inverse = unique_tokens(char_ids)
        rows = uniq.cpu().numpy()
        keys = [r.tobytes() for r in rows]
        found: list[torch.Tensor | None] = []
        for k in keys:
            v = self._store.get(k)
            if v is not None:
                self._store.move_to_end(k)
            found.append(v)
        missing = [i for i, v in enumerate(found) if v is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                new = compute(uniq[torch.tensor(missing, device=uniq.device)])
            for j, i in enumerate(missing):
                found[i] = new[j].clone()
                self._store[keys[i]] = found[i]
            while len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        return torch.stack(found).index_select(0, inverse)
