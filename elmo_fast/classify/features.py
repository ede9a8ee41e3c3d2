"""Frozen-ELMo features, computed once per document and cached (fp16).

On a CPU the biLM forward dominates everything else by orders of magnitude, so with a frozen ELMo
each document goes through it exactly once; the classifier then trains for many epochs on the
cache. Sentences of all documents are sorted by length and batched by token count (little
padding), run with `stateful=False` (a document's vectors never depend on its batch neighbours),
and their layers are packed back per document.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..chars import batch_to_ids
from .text import document_sentences


@dataclass
class LayerCache:
    """Every biLM layer of `N` documents, packed: document i is `layers[:, offsets[i]:offsets[i+1]]`.

    layers: `[L, total_tokens, 2P]` (fp16 by default); offsets: `[N+1]` int64.
    """

    layers: torch.Tensor
    offsets: torch.Tensor
    tokens_per_s: float = 0.0

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_layers(self) -> int:
        return self.layers.shape[0]

    @property
    def dim(self) -> int:
        return self.layers.shape[2]

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, index, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded layers `[L, B, T, 2P]` and mask `[B, T]` of documents `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        starts, lens = self.offsets[index], self.lengths()[index]
        t = max(int(lens.max()), 1)
        pos = torch.arange(t)
        mask = pos[None, :] < lens[:, None]  # [B, T]
        src = (starts[:, None] + pos[None, :]).clamp_max(self.layers.shape[1] - 1)
        out = self.layers[:, src].to(dtype) * mask[None, :, :, None].to(dtype)
        return out.to(device), mask.to(device)

    def save(self, path) -> None:
        from safetensors.torch import save_file

        save_file({"layers": self.layers.contiguous(), "offsets": self.offsets.contiguous()}, str(path))

    @classmethod
    def load(cls, path) -> "LayerCache":
        from safetensors.torch import load_file

        d = load_file(str(path))
        return cls(d["layers"], d["offsets"])


@torch.no_grad()
def compute_layers(bilm, documents: list[list[list[str]]], tokens_per_batch: int = 4096, dtype=torch.float16,
                   progress: bool = True, desc: str = "ELMo features") -> LayerCache:
    """Run a frozen `ElmoBiLm` over tokenized documents (each a list of sentences).

    Returns a LayerCache with `L = num_layers` (char-CNN layer + each LSTM layer), boundaries
    `<S>`/`</S>` removed. An empty document gets one all-zero position so it can still be batched.
    """
    from tqdm.auto import tqdm

    was_training = bilm.training
    bilm.eval()
    device = next(bilm.parameters()).device
    sents, owner = [], []
    for d, doc in enumerate(documents):
        for s in doc:
            sents.append(s)
            owner.append(d)
    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))
    per_sent: list[torch.Tensor | None] = [None] * len(sents)
    n_tok = sum(len(s) for s in sents)
    L, D = bilm.num_layers, bilm.get_output_dim()
    start = time.perf_counter()
    # Documents repeat their words: the character encoder runs once per distinct token of the corpus.
    with bilm.word_cache(), tqdm(total=n_tok, desc=desc, unit="tok", disable=not progress, leave=False) as bar:
        i = 0
        while i < len(order):
            # Sorted by length, so the last sentence of a batch is its longest: grow until the padded batch is full.
            j = i + 1
            while j < len(order) and (j + 1 - i) * len(sents[order[j]]) <= tokens_per_batch:
                j += 1
            idx = order[i:j]
            ids = batch_to_ids([sents[k] for k in idx]).to(device)
            out = bilm(ids)
            acts = torch.stack(out["activations"], 0)  # [L, B, T+2, D]
            lens = [len(sents[k]) for k in idx]
            acts = acts[:, :, 1 : 1 + max(lens)]  # boundaries: <S> first, </S> right after each sentence
            for b, k in enumerate(idx):
                per_sent[k] = acts[:, b, : lens[b]].to("cpu", dtype)
            bar.update(sum(lens))
            i = j
    elapsed = time.perf_counter() - start
    per_doc: list[list[torch.Tensor]] = [[] for _ in documents]
    for k, d in enumerate(owner):
        per_doc[d].append(per_sent[k])
    empty = torch.zeros(L, 1, D, dtype=dtype)
    chunks = [torch.cat(p, 1) if p else empty for p in per_doc]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum([c.shape[1] for c in chunks])]), dtype=torch.long)
    bilm.train(was_training)
    return LayerCache(torch.cat(chunks, 1), offsets, tokens_per_s=n_tok / max(elapsed, 1e-9))


def tokenize_documents(titles: list[str], texts: list[str], max_tokens: int | None = None,
                       progress: bool = True) -> list[list[list[str]]]:
    from tqdm.auto import tqdm

    return [document_sentences(t, d, max_tokens)
            for t, d in tqdm(list(zip(titles, texts)), desc="tokenizing", disable=not progress, leave=False)]
