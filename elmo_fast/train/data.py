"""Pretraining data: vocabulary, and streamed, stateful LM windows over text with one tokenized
sentence per line.

Layout of a batch (as in bilm-tf): the corpus (one or several files, seen as one byte range) is cut
into `R` contiguous regions, one per global batch row, snapped to line starts. Row `r` reads its
region as a continuous stream `<S> w1 .. wn </S> <S> ...` cut into windows of `unroll` inputs; the
forward LSTM state of a row carries from one window to the next. The backward LM needs contiguous
text read right to left, so each row has a second reader that walks the same region from its END
towards its start: its windows come in text order, and the backward LSTM (which runs from the
window's last position to its first) carries its state into the window that precedes it in the
text. Nothing is held in memory beyond a few KiB per row, so corpora larger than memory work.

Rows are global: with `world` ranks, rank `k` owns rows `[k*B, (k+1)*B)`, so a 2-process run sees
exactly the batches of a 1-process run with twice the batch size.
"""

from __future__ import annotations

import codecs
import collections
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..chars import tokens_to_char_ids

BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
SPECIALS = (BOS, EOS, UNK)
_CHUNK = 1 << 16


def as_paths(paths) -> list[str]:
    """A path or list of paths -> checked list of str (clear errors for missing or empty files)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError("no training files given: pass a path (or list of paths) to text with one tokenized sentence per line")
    for p in out:
        if not os.path.exists(p):
            raise FileNotFoundError(f"data file {p!r} does not exist (expected text with one tokenized sentence per line)")
        if os.path.isdir(p):
            raise ValueError(f"{p!r} is a directory; pass the text file(s) inside it")
    if sum(os.path.getsize(p) for p in out) == 0 or not any(_has_tokens(p) for p in out):
        raise ValueError(f"data file(s) {out} contain no tokens (expected one tokenized sentence per line)")
    return out


def check_utf8(path: str) -> None:
    """Raise a ValueError naming the file and line when `path` is not UTF-8 text (streamed)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, newlines = 0, 0  # bytes read so far, and the newlines among them
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            pending = decoder.getstate()[0]  # an unfinished character from the previous chunk (never a newline)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                bad = offset - len(pending) + e.start
                line = newlines + chunk[: max(bad - offset, 0)].count(b"\n") + 1
                byte = (pending + chunk)[e.start]
                raise ValueError(
                    f"{path}, line {line:,}: not UTF-8 text (byte 0x{byte:02x} at offset {bad:,}); training and validation "
                    "files must be UTF-8 text with one tokenized sentence per line (convert them, e.g. "
                    "`iconv -f latin1 -t utf-8`)"
                ) from None
            if not chunk:
                return
            offset += len(chunk)
            newlines += chunk.count(b"\n")


def _has_tokens(path: str) -> bool:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return False
            if chunk.strip():
                return True


class Vocabulary:
    """Word <-> id, with `<S>` = 0, `</S>` = 1, `<UNK>` = 2 and the other words by descending count
    (the order the log-uniform sampler assumes). Saved as bilm-tf's `vocab.txt` (one word a line)."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:3] != list(SPECIALS):
            words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        if len(self.index) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.bos, self.eos, self.unk = 0, 1, 2

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        get, unk = self.index.get, self.unk
        return [get(t, unk) for t in tokens]

    @classmethod
    def build(cls, paths, min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        """Count the words of the training files (streamed) and keep those seen `min_count` times,
        at most `max_size` entries including the three special tokens."""
        counts: collections.Counter = collections.Counter()
        for p in as_paths(paths):
            try:
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        counts.update(line.split())
            except UnicodeDecodeError:
                check_utf8(p)  # the same error, with the file and line named
                raise
        for s in SPECIALS:
            counts.pop(s, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size < 4:
                raise ValueError(f"max vocabulary size {max_size} is too small: it must hold <S>, </S>, <UNK> and at least one word")
            words = words[: max_size - 3]
        if not words:
            raise ValueError(
                f"the vocabulary has no words: no token of {list(as_paths(paths))} occurs at least min_count={min_count} times; "
                "lower min_count or use more text"
            )
        return cls(list(SPECIALS) + words)

    def save(self, path) -> None:
        from ..utils import atomic_write_text

        atomic_write_text(path, "\n".join(self.words) + "\n")

    @classmethod
    def load(cls, path) -> "Vocabulary":
        with open(path, encoding="utf-8") as f:
            words = [w for w in f.read().split("\n") if w]
        if len(words) <= 3:
            raise ValueError(f"vocabulary file {path} has no words besides <S>, </S>, <UNK>")
        return cls(words)


class _Corpus:
    """Several files seen as one byte range, read by global offset."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.sizes = [os.path.getsize(p) for p in paths]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.total = self.starts[-1]
        self._handles: dict[int, object] = {}

    def _file(self, pos: int) -> int:
        # the file holding byte `pos` (the last file for pos == total)
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        return min(i, len(self.paths) - 1)

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) within ONE file (callers never cross a file boundary)."""
        i = self._file(start)
        f = self._handles.get(i)
        if f is None:
            f = self._handles[i] = open(self.paths[i], "rb")
        f.seek(start - self.starts[i])
        return f.read(end - start)

    def file_bounds(self, pos: int, backward: bool = False) -> tuple[int, int]:
        i = self._file(pos - 1 if backward and pos > 0 else pos)
        return self.starts[i], self.starts[i + 1]

    def line_start_at_or_after(self, pos: int) -> int:
        """The first line start >= pos (file starts count as line starts)."""
        if pos <= 0:
            return 0
        if pos >= self.total:
            return self.total
        lo, hi = self.file_bounds(pos)
        if pos == lo:
            return pos
        p = pos - 1  # a line starts at pos iff the byte before it is a newline
        while p < hi:
            chunk = self.read(p, min(p + _CHUNK, hi))
            k = chunk.find(b"\n")
            if k >= 0:
                return p + k + 1
            p += len(chunk)
        return hi

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


class _LineReader:
    """Whole lines of [lo, hi) (line-aligned), forward from lo or backward from hi; `pos` is the
    boundary between consumed and unread bytes."""

    def __init__(self, corpus: _Corpus, lo: int, hi: int, backward: bool, pos: int | None = None):
        self.corpus, self.lo, self.hi, self.backward = corpus, lo, hi, backward
        self.pos = (hi if backward else lo) if pos is None else pos

    def exhausted(self) -> bool:
        return self.pos <= self.lo if self.backward else self.pos >= self.hi

    def rewind(self) -> None:
        self.pos = self.hi if self.backward else self.lo

    def read_lines(self) -> list[bytes]:
        """The next block of whole lines (in reading order); empty only when exhausted."""
        c = self.corpus
        while not self.exhausted():
            if not self.backward:
                f_lo, f_hi = c.file_bounds(self.pos)
                end = min(self.pos + _CHUNK, self.hi, f_hi)
                data = c.read(self.pos, end)
                if end < min(self.hi, f_hi):
                    k = data.rfind(b"\n")
                    while k < 0:  # a line longer than the chunk
                        more = c.read(end, min(end + _CHUNK, self.hi, f_hi))
                        data += more
                        end += len(more)
                        k = data.rfind(b"\n") if end < min(self.hi, f_hi) else len(data) - 1
                    data = data[: k + 1]
                self.pos += len(data)
                lines = data.split(b"\n")
            else:
                f_lo, f_hi = c.file_bounds(self.pos, backward=True)
                start = max(self.pos - _CHUNK, self.lo, f_lo)
                data = c.read(start, self.pos)
                if start > max(self.lo, f_lo):
                    # skip the partial first line; it is read with the next block
                    k = data.find(b"\n")
                    while k < 0:
                        new_start = max(start - _CHUNK, self.lo, f_lo)
                        data = c.read(new_start, start) + data
                        start = new_start
                        k = data.find(b"\n") if start > max(self.lo, f_lo) else -1
                        if k < 0 and start == max(self.lo, f_lo):
                            break
                    if k >= 0 and start > max(self.lo, f_lo):
                        data = data[k + 1 :]
                self.pos -= len(data)
                lines = data.split(b"\n")[::-1]
            lines = [ln for ln in lines if ln.strip()]
            if lines:
                return lines
        return []


class _TokenStream:
    """`<S> w1 .. wn </S>` per line, forward or reversed; the reader plus a pending-token buffer."""

    def __init__(self, reader: _LineReader, wrap: bool):
        self.reader, self.wrap = reader, wrap
        self.buffer: list[str] = []
        self.epochs = 0

    def take(self, n: int) -> list[str]:
        """Up to n tokens (fewer only at the end of a non-wrapping stream)."""
        while len(self.buffer) < n:
            lines = self.reader.read_lines()
            if not lines:
                if not self.wrap or self.reader.lo >= self.reader.hi:
                    break
                self.epochs += 1
                self.reader.rewind()
                continue
            for ln in lines:
                toks = ln.decode("utf-8", "replace").split()
                sent = [BOS, *toks, EOS]
                self.buffer.extend(reversed(sent) if self.reader.backward else sent)
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def unread(self, toks: list[str]) -> None:
        self.buffer[:0] = toks

    def state(self) -> dict:
        return {"pos": self.reader.pos, "buffer": list(self.buffer), "epochs": self.epochs}

    def load_state(self, s: dict) -> None:
        self.reader.pos, self.buffer, self.epochs = int(s["pos"]), list(s["buffer"]), int(s["epochs"])


@dataclass
class Batch:
    """One step's windows for the local rows; tokens are `[B, T]` in text order for both directions.

    char_ids `[U, 50]` are the unique tokens of both windows; fwd_index / bwd_index `[B, T]` point
    into them. fwd_targets: the next word id, bwd_targets: the previous word id (-1 = no target).
    """

    char_ids: torch.Tensor
    fwd_index: torch.Tensor
    bwd_index: torch.Tensor
    fwd_targets: torch.Tensor
    bwd_targets: torch.Tensor
    # fwd_mask / bwd_mask `[B, T]`: real input positions (a prefix of each row)
    fwd_mask: torch.Tensor
    bwd_mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    @property
    def n_targets(self) -> int:
        return int((self.fwd_targets >= 0).sum() + (self.bwd_targets >= 0).sum())


class LMBatcher:
    """Stateful window batches for rows `[rank*B, (rank+1)*B)` of `world*B` global rows.

    Args:
        paths: text file(s), one tokenized sentence per line.
        vocab: target vocabulary (inputs always use the real characters of each token).
        batch_size: rows on this rank; unroll: inputs per window (20 in bilm-tf).
        train: True wraps around forever (epochs); False reads every region once (evaluation).
    """

    def __init__(self, paths, vocab: Vocabulary, batch_size: int, unroll: int = 20, rank: int = 0, world: int = 1,
                 train: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {unroll}")
        self.paths = as_paths(paths)
        self.vocab, self.B, self.T, self.rank, self.world, self.train = vocab, batch_size, unroll, rank, world, train
        self.corpus = _Corpus(self.paths)
        R = batch_size * world
        bounds = [self.corpus.line_start_at_or_after(self.corpus.total * r // R) for r in range(R + 1)]
        bounds[-1] = self.corpus.total
        if train:
            empty = sum(1 for r in range(R) if bounds[r] >= bounds[r + 1])
            if empty:
                raise ValueError(
                    f"{self.paths}: too little text for {R} batch rows ({empty} rows would get no sentence); "
                    "use a smaller --batch-size or more text"
                )
        rows = range(rank * batch_size, (rank + 1) * batch_size)
        self.fwd = [_TokenStream(_LineReader(self.corpus, bounds[r], bounds[r + 1], False), train) for r in rows]
        self.bwd = [_TokenStream(_LineReader(self.corpus, bounds[r], bounds[r + 1], True), train) for r in rows]
        self._char_cache: dict[str, int] = {}

    def state(self) -> dict:
        return {"rows": self.B * self.world, "unroll": self.T, "paths": self.paths, "sizes": self.corpus.sizes,
                "fwd": [s.state() for s in self.fwd], "bwd": [s.state() for s in self.bwd]}

    def load_state(self, state: dict) -> None:
        # Not the paths: the same files may be spelled differently (another working directory);
        # pretrain compares the files themselves (checkpoint.data_identity).
        mine = {"rows": self.B * self.world, "unroll": self.T, "sizes": self.corpus.sizes}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(
                f"checkpoint data position is for {theirs}, but this run has {mine} (rows: global batch size, "
                "sizes: bytes of each training file); resume with the same training files and batch size"
            )
        for s, st in zip(self.fwd + self.bwd, state["fwd"] + state["bwd"]):
            s.load_state(st)

    @property
    def epochs(self) -> float:
        return min(s.epochs for s in self.fwd) if self.fwd else 0

    def next_batch(self) -> Batch | None:
        """The next windows, or None when a non-wrapping (evaluation) pass is over."""
        B, T = self.B, self.T
        fwd_tok, bwd_tok = [], []
        for s in self.fwd:
            w = s.take(T + 1)
            if len(w) > 1:
                s.unread(w[-1:])  # the last target is the next window's first input
            fwd_tok.append(w)
        for s in self.bwd:
            w = s.take(T + 1)
            if len(w) > 1:
                s.unread(w[-1:])
            bwd_tok.append(w)
        if all(len(w) <= 1 for w in fwd_tok + bwd_tok):
            return None
        uniq: dict[str, int] = {}
        fi = np.zeros((B, T), dtype=np.int64)
        bi = np.zeros((B, T), dtype=np.int64)
        ft = np.full((B, T), -1, dtype=np.int64)
        bt = np.full((B, T), -1, dtype=np.int64)
        fm = np.zeros((B, T), dtype=bool)
        bm = np.zeros((B, T), dtype=bool)
        idx = self.vocab.index
        unk = self.vocab.unk
        for r, w in enumerate(fwd_tok):
            n = len(w) - 1
            if n <= 0:
                continue
            fi[r, :n] = [uniq.setdefault(t, len(uniq)) for t in w[:n]]
            # After </S> comes <S> for certain: that "prediction" is not scored.
            ft[r, :n] = [-1 if t == BOS else idx.get(t, unk) for t in w[1:]]
            fm[r, :n] = True
        for r, w in enumerate(bwd_tok):
            # w is in reading (reversed) order: w[0] is the latest text token
            n = len(w) - 1
            if n <= 0:
                continue
            # text order; a short (final) window is left-aligned like the forward one, so the
            # backward LSTM starts at its own last position, the latest token of the window
            inputs, targets = w[:n][::-1], w[1:][::-1]
            bi[r, :n] = [uniq.setdefault(t, len(uniq)) for t in inputs]
            bt[r, :n] = [-1 if t == EOS else idx.get(t, unk) for t in targets]
            bm[r, :n] = True
        chars = torch.from_numpy(tokens_to_char_ids(list(uniq)))
        t = torch.from_numpy
        return Batch(chars, t(fi), t(bi), t(ft), t(bt), t(fm), t(bm))

    def close(self) -> None:
        self.corpus.close()
