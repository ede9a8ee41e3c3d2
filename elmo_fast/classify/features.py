"""Frozen-ELMo features, computed once per document and cached (fp16), in memory up to a budget and
on disk beyond it.

On a CPU the biLM forward dominates everything else by orders of magnitude, so with a frozen ELMo
each document goes through it exactly once; the classifier then trains for many epochs on the
cache. Sentences of all documents are sorted by length and batched by token count (little
padding), run with `stateful=False` (a document's vectors never depend on its batch neighbours),
and each sentence's layers are written straight to its document's place in the cache.

The cache of a corpus can outgrow the memory (full AG News with 'original' is about 30 GB): past
`memory_budget` bytes it is a temporary file (token-major, so a document is one contiguous read),
read per batch; the numbers are the same either way.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
import torch

from ..chars import batch_to_ids
from .text import document_sentences

#: Default memory budget of the layer caches of one `classify` run, in bytes.
DEFAULT_MEMORY_BUDGET = 4 << 30


class _DiskStore:
    """`[T, L, D]` rows in a temporary file under `directory`, written and read with pwrite/pread.

    Nothing is memory-mapped, so the process holds only the batch it reads (the file's pages are
    the kernel's cache, not the process's memory). The file is unlinked as soon as it is open: it
    disappears with the process, even a killed one."""

    def __init__(self, rows: int, row_shape: tuple[int, int], dtype: torch.dtype, directory: str | None):
        import shutil

        directory = os.path.abspath(os.fspath(directory)) if directory else tempfile.gettempdir()
        self.np_dtype = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
        self.dtype, self.row_shape, self.rows = dtype, tuple(row_shape), rows
        self.row_bytes = int(np.prod(row_shape)) * self.np_dtype.itemsize
        self.nbytes = rows * self.row_bytes
        try:
            os.makedirs(directory, exist_ok=True)
            free = shutil.disk_usage(directory).free
        except OSError as e:
            raise OSError(f"cannot use {directory} for the layer cache ({e.strerror}); pass a writable --cache-dir") from None
        if free < self.nbytes:
            raise OSError(f"the layer cache needs {self.nbytes / 2**30:.1f} GiB but {directory} has {free / 2**30:.1f} GiB free; "
                          "pass a --cache-dir with more space, a larger --cache-memory, or a smaller --max-tokens")
        self.fd, path = tempfile.mkstemp(prefix="elmo_fast-layers-", suffix=".bin", dir=directory)
        self.directory = directory
        try:
            os.unlink(path)
        except OSError:  # a system that cannot remove an open file removes it at close()
            self._path = path
        else:
            self._path = None
        os.ftruncate(self.fd, self.nbytes)  # reads as zeros where nothing is written (empty documents)

    def write(self, row: int, values: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(values, dtype=self.np_dtype)).cast("B")
        off = row * self.row_bytes
        while len(view):
            n = os.pwrite(self.fd, view, off)
            view, off = view[n:], off + n

    def read(self, row: int, n: int) -> np.ndarray:
        """Rows `row .. row+n-1`: `[n, *row_shape]`."""
        out = np.empty((n, *self.row_shape), dtype=self.np_dtype)
        view, off = memoryview(out).cast("B"), row * self.row_bytes
        while len(view):  # a read may return less than asked
            got = os.preadv(self.fd, [view], off)
            if got == 0:
                raise OSError(f"the layer cache file in {self.directory} is shorter than expected")
            view, off = view[got:], off + got
        return out

    def mapped(self) -> np.ndarray:
        """The whole store as a (copy-on-write) memory map `[T, *row_shape]`."""
        import mmap

        if self.nbytes == 0:
            return np.zeros((0, *self.row_shape), dtype=self.np_dtype)
        mm = mmap.mmap(self.fd, self.nbytes, access=mmap.ACCESS_COPY)
        return np.frombuffer(mm, dtype=self.np_dtype).reshape(self.rows, *self.row_shape)

    def close(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None
            if self._path:
                os.unlink(self._path)

    def __del__(self):
        self.close()


class LayerCache:
    """Every biLM layer of `N` documents, packed: document i is tokens `offsets[i]:offsets[i+1]`.

    In memory, `layers` is `[L, total_tokens, 2P]` (fp16 by default). Built by `compute_layers` past
    its memory budget, the layers live in a temporary file instead (`on_disk`), and `batch` reads
    the documents it is asked for; `layers` is then a memory map of the file (for inspection: the
    training path never touches it).

    offsets: `[N+1]` int64.
    """

    def __init__(self, layers: torch.Tensor | None, offsets: torch.Tensor, tokens_per_s: float = 0.0, *,
                 store: _DiskStore | None = None, num_layers: int | None = None, dim: int | None = None):
        if (layers is None) == (store is None):
            raise ValueError("a LayerCache holds either layers (in memory) or a store (on disk)")
        self._layers, self._store = layers, store
        self.offsets = offsets
        self.tokens_per_s = tokens_per_s
        self._shape = (layers.shape[0], layers.shape[2]) if layers is not None else (num_layers, dim)

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def on_disk(self) -> bool:
        return self._store is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the layers (in memory, or in the file when `on_disk`)."""
        return self._store.nbytes if self._store is not None else self._layers.numel() * self._layers.element_size()

    @property
    def location(self) -> str | None:
        """The folder of an on-disk cache's file (None in memory)."""
        return self._store.directory if self._store is not None else None

    @property
    def num_layers(self) -> int:
        return self._shape[0]

    @property
    def dim(self) -> int:
        return self._shape[1]

    @property
    def layers(self) -> torch.Tensor:
        if self._store is None:
            return self._layers
        return torch.from_numpy(self._store.mapped()).permute(1, 0, 2)

    def close(self) -> None:
        """Drop the file of an on-disk cache now (it also goes when the cache is garbage-collected)."""
        if self._store is not None:
            self._store.close()

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def tokens(self, start: int, n: int) -> torch.Tensor:
        """Layers of tokens `start .. start+n-1`: `[L, n, 2P]` in the cache's dtype."""
        if self._store is None:
            return self._layers[:, start : start + n]
        return torch.from_numpy(self._store.read(start, n)).permute(1, 0, 2)

    def batch(self, index, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded layers `[L, B, T, 2P]` and mask `[B, T]` of documents `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        starts, lens = self.offsets[index], self.lengths()[index]
        t = max(int(lens.max()), 1)
        pos = torch.arange(t)
        mask = pos[None, :] < lens[:, None]  # [B, T]
        if self._store is None:
            src = (starts[:, None] + pos[None, :]).clamp_max(self._layers.shape[1] - 1)
            out = self._layers[:, src].to(dtype) * mask[None, :, :, None].to(dtype)
        else:
            out = torch.zeros(self.num_layers, len(index), t, self.dim, dtype=dtype)
            for b, (s, n) in enumerate(zip(starts.tolist(), lens.tolist())):
                out[:, b, :n] = torch.from_numpy(self._store.read(s, n)).permute(1, 0, 2).to(dtype)
        return out.to(device), mask.to(device)

    def layer_stats(self, max_tokens: int = 200_000, chunk: int = 16_384) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer mean and (unbiased) std `[L, 2P]` over every k-th token, k chosen so that at most
        about 2 x `max_tokens` tokens are read; accumulated in float64 a chunk at a time."""
        total = int(self.offsets[-1])
        step = max(1, total // max_tokens)
        s = torch.zeros(self.num_layers, self.dim, dtype=torch.float64)
        ss = torch.zeros_like(s)
        n = 0
        rows = np.arange(0, total, step)
        for i in range(0, len(rows), chunk):
            r = rows[i : i + chunk]
            if self._store is None:
                x = self._layers[:, torch.from_numpy(r)].double()
            elif step == 1:
                x = self.tokens(int(r[0]), len(r)).double()
            else:
                x = torch.stack([torch.from_numpy(self._store.read(int(k), 1)[0]) for k in r], 1).double()
            s += x.sum(1)
            ss += (x * x).sum(1)
            n += len(r)
        mean = s / max(n, 1)
        var = (ss - n * mean * mean) / max(n - 1, 1)
        return mean.float(), var.clamp_min(0).sqrt().float()

    def save(self, path) -> None:
        """A safetensors file of the layers and offsets (an on-disk cache is read into memory for it)."""
        from safetensors.torch import save_file

        save_file({"layers": self.layers.contiguous(), "offsets": self.offsets.contiguous()}, str(path))

    @classmethod
    def load(cls, path) -> "LayerCache":
        from safetensors.torch import load_file

        d = load_file(str(path))
        return cls(d["layers"], d["offsets"])


@torch.no_grad()
def compute_layers(bilm, documents: list[list[list[str]]], tokens_per_batch: int = 4096, dtype=torch.float16,
                   progress: bool = True, desc: str = "ELMo features", *, memory_budget: int | None = None,
                   cache_dir: str | None = None) -> LayerCache:
    """Run a frozen `ElmoBiLm` over tokenized documents (each a list of sentences).

    Returns a LayerCache with `L = num_layers` (char-CNN layer + each LSTM layer), boundaries
    `<S>`/`</S>` removed. An empty document gets one all-zero position so it can still be batched.
    The cache is in memory when its layers fit in `memory_budget` bytes (None: no limit), else in a
    temporary file under `cache_dir` (default: the system's temporary folder).
    """
    from tqdm.auto import tqdm

    L, D = bilm.num_layers, bilm.get_output_dim()
    sents, owner, where = [], [], []
    doc_len = np.zeros(len(documents), dtype=np.int64)
    for d, doc in enumerate(documents):
        for s in doc:
            sents.append(s)
            owner.append(d)
            where.append(doc_len[d])  # the sentence's first token within its document
            doc_len[d] += len(s)
    doc_len = np.maximum(doc_len, 1)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(doc_len)]).astype(np.int64))
    total = int(offsets[-1])
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if memory_budget is None or L * total * D * itemsize <= memory_budget:
        layers, store = torch.zeros(L, total, D, dtype=dtype), None
    else:
        layers, store = None, _DiskStore(total, (L, D), dtype, cache_dir)
    start_of = [int(offsets[owner[k]]) + int(where[k]) for k in range(len(sents))]
    del where

    was_training = bilm.training
    bilm.eval()
    device = next(bilm.parameters()).device
    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))
    n_tok = sum(len(s) for s in sents)
    start = time.perf_counter()
    try:
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
                lens = [len(sents[k]) for k in idx]
                # boundaries: <S> first, </S> right after each sentence
                acts = torch.stack(out["activations"], 0)[:, :, 1 : 1 + max(lens)].to("cpu", dtype)  # [L, B, T, D]
                if store is not None:
                    acts = acts.permute(1, 2, 0, 3).contiguous().numpy()  # [B, T, L, D]: token-major, as the file
                for b, k in enumerate(idx):
                    p, n = start_of[k], lens[b]
                    if store is None:
                        layers[:, p : p + n] = acts[:, b, :n]
                    else:
                        store.write(p, acts[b, :n])
                bar.update(sum(lens))
                i = j
    except BaseException:
        if store is not None:
            store.close()
        raise
    finally:
        bilm.train(was_training)
    elapsed = time.perf_counter() - start
    return LayerCache(layers, offsets, tokens_per_s=n_tok / max(elapsed, 1e-9), store=store, num_layers=L, dim=D)


def tokenize_documents(titles: list[str], texts: list[str], max_tokens: int | None = None,
                       progress: bool = True) -> list[list[list[str]]]:
    """Documents as lists of sentences of tokens. Every token string is interned: a corpus repeats its
    words, and one shared string per word keeps hundreds of thousands of documents in little memory."""
    from tqdm.auto import tqdm

    intern = sys.intern
    return [[[intern(w) for w in s] for s in document_sentences(t, d, max_tokens)]
            for t, d in tqdm(zip(titles, texts), total=len(titles), desc="tokenizing", disable=not progress, leave=False)]
