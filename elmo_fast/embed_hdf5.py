"""The `allennlp elmo` HDF5 file: read the input lines, batch them (AllenNLP's order or by length,
sharded by rank), write the vectors batch by batch into `OUTPUT.partial`, checkpoint for --resume,
merge the ranks' parts and rename to OUTPUT when complete.

The file layout and the options' meaning are in `elmo_fast.embed` (the CLI); `ElmoEmbedder.embed_file`
and `elmo-fast embed` both write through `write_embeddings` here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

LAYER_MODES = ("all", "top", "average")
#: sentences sorted by length together when batches are bucketed (bounded memory, short padding)
BUCKET_POOL = 20_000
CHECKPOINT_SECONDS = 30.0
# how often freed heap memory goes back to the OS (utils.release_freed_memory): keeps peak RSS flat
TRIM_SECONDS = 2.0
#: datasets written before the output is closed and reopened: an open HDF5 file keeps some metadata
#: of every dataset created in memory until it is closed
REOPEN_DATASETS = 50_000
#: HDF5 1.8's file format: its groups (a B-tree and a fractal heap of link names) grow in pieces;
#: the oldest format's one local heap of names is loaded and regrown whole, so with a million
#: datasets in one group RSS rose in ~40 MB steps (read by every h5py and HDF5 >= 1.8)
LIBVER = ("v108", "v108")

#: a signal number, set by `request_stop` (a signal handler): the write loop raises KeyboardInterrupt
#: at the next batch. Raising inside the handler itself can land in a finalizer (h5py's weakref
#: callbacks), where Python prints the exception and ignores it: the run then went on to the end.
_stop_signal: int | None = None


def request_stop(signum: int | None) -> None:
    """Ask a running `write_embeddings` to stop after its current batch, keeping what is written
    (as Ctrl-C does); None withdraws the request."""
    global _stop_signal
    _stop_signal = signum


# ---------------------------------------------------------------------------------------------- input


@dataclass
class _Lines:
    """The sentences of an input file: validated once up front, then streamed (a path is read again)."""

    n: int
    digest: str
    path: str | None = None
    lines: list[str] | None = None

    def __iter__(self) -> Iterator[str]:
        if self.lines is not None:
            yield from self.lines
            return
        with open(self.path, encoding="utf-8-sig") as f:
            yield from (line.strip() for line in itertools.islice(f, self.n))


def _scan(input_file, use_sentence_keys: bool) -> _Lines:
    """Count and check the lines (before any output exists): blank lines, text encoding, sentence keys."""
    if hasattr(input_file, "read"):  # an open file, as AllenNLP's embed_file takes
        try:
            lines = [line.strip() for line in input_file]
        finally:
            input_file.close()
        if lines and lines[0].startswith("\ufeff"):
            lines[0] = lines[0][1:].strip()
        source = getattr(input_file, "name", "input file")
        path = None
    else:
        path = os.path.expanduser(os.fspath(input_file))
        source = path
        if os.path.isdir(path):
            raise IsADirectoryError(f"input file {path!r} is a folder; pass a file")
        if not os.path.exists(path):
            raise FileNotFoundError(f"input file {path!r} does not exist (expected one sentence per line)")
        lines = None
    digest = hashlib.sha256()
    n = last = 0
    blank: list[int] = []
    seen: set[str] = set()
    try:
        for n, line in enumerate(lines if lines is not None else _Lines(sys.maxsize, "", path), start=1):
            digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
            if not line:
                blank.append(n)
                continue
            last = n
            if use_sentence_keys:
                if line in seen:
                    raise ValueError(f"{source}: line {n} repeats an earlier sentence, and with --use-sentence-keys each "
                                     "sentence is a key, which must be unique; drop --use-sentence-keys to key by line number")
                if "/" in line or line == ".":
                    raise ValueError(f"{source}: line {n} ({line[:40]!r}) cannot be an HDF5 key ('/' separates groups, '.' is "
                                     "the group itself); drop --use-sentence-keys to key by line number")
                seen.add(line)
    except UnicodeDecodeError:
        raise ValueError(f"{source}: line {_bad_utf8_line(path)} is not UTF-8 text; save the input file as UTF-8") from None
    blank = [b for b in blank if b < last]  # blank lines at the end are ignored
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (", ..." if len(blank) > 10 else "")
        raise ValueError(f"{source}: line {shown} {'is' if len(blank) == 1 else 'are'} empty; every line must hold one "
                         "sentence (remove the blank lines)")
    if lines is not None:
        del lines[last:]
    return _Lines(last, digest.hexdigest(), path, lines)


def _bad_utf8_line(path) -> int:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 0


def read_sentences(path: str, tokenize: bool = False) -> tuple[list[str], list[list[str]]]:
    """Lines of `path` (stripped; blank lines an error) and their tokens (whitespace split, or
    `elmo_fast.tokenizer` if `tokenize`). Holds the whole file: `write_embeddings` streams instead."""
    lines = list(_scan(path, False))
    tok = _tokenizer(tokenize)
    return lines, [tok(line) for line in lines]


def _tokenizer(tokenize: bool):
    if tokenize:
        from .classify.text import tokenize as tok

        return tok
    return str.split


# -------------------------------------------------------------------------------------------- batches


def _stateful_batches(lines: _Lines, tok, batch_size: int, rank: int, world: int):
    """AllenNLP's batches (consecutive lines); under `world` ranks each takes its rows of every batch
    (rows rank, rank + world, ...), so every row's carried state is the one it has in one process."""
    it = enumerate(lines)
    while True:
        batch = list(itertools.islice(it, batch_size))
        if not batch:
            return
        rows = batch[rank::world]
        yield [(i, line, tok(line)) for i, line in rows], len(batch) > 1  # (rows, force: run a lone empty row)


def _bucketed_batches(lines: _Lines, tok, batch_size: int | None, max_tokens: int | None, rank: int, world: int):
    """Pools of `BUCKET_POOL` lines sorted by length and cut into batches of at most `batch_size`
    rows and `max_tokens` rows x longest sentence; rank r takes batches r, r + world, ..."""
    it = enumerate(lines)
    g = 0
    while True:
        pool = [(i, line, tok(line)) for i, line in itertools.islice(it, BUCKET_POOL)]
        if not pool:
            return
        pool.sort(key=lambda r: (len(r[2]), r[0]))
        batch: list = []
        for row in pool:
            longest = max(len(row[2]), 1)
            full = batch and ((batch_size is not None and len(batch) >= batch_size)
                              or (max_tokens is not None and (len(batch) + 1) * longest > max_tokens))
            if full:
                if g % world == rank:
                    yield batch, False
                g += 1
                batch = []
            batch.append(row)
        if batch:
            if g % world == rank:
                yield batch, False
            g += 1


# --------------------------------------------------------------------------------------------- output


def _check_output_path(path) -> str:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path!r} is a folder; pass the HDF5 file to write, e.g. {os.path.join(path, 'embeddings.hdf5')!r}")
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"the folder of the output file {path!r} does not exist; create it first (mkdir -p {d})")
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write the output file {path!r}: its folder {d} is not writable")
    return path


def _layer_output(emb: np.ndarray, output_format: str) -> np.ndarray:
    if output_format == "all":
        return emb
    if output_format == "top":
        return emb[-1]
    return np.average(emb, axis=0)  # AllenNLP's computation, for its exact numbers


def _fingerprint(embedder, lines: _Lines, settings: dict) -> str:
    bilm = embedder.elmo_bilm
    with torch.no_grad():
        weights = [(k, tuple(v.shape), float(v.double().sum())) for k, v in sorted(bilm.state_dict().items())]
    blob = json.dumps({"input": lines.digest, "n": lines.n, "options": bilm.options, "weights": weights, **settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_state(state_path: str, fingerprint: str, done: int, sentences: int, lstm_states, complete: bool = False) -> None:
    from .utils import atomic_path

    states = None if lstm_states is None else tuple(s.detach().cpu() for s in lstm_states)
    with atomic_path(state_path) as tmp:
        torch.save({"fingerprint": fingerprint, "done": done, "sentences": sentences, "states": states,
                    "complete": complete}, tmp)


def _load_state(state_path: str, part: str, fingerprint: str) -> dict | None:
    if not os.path.exists(state_path) or not os.path.exists(part):
        return None
    try:
        state = torch.load(state_path, weights_only=False)
    except Exception as e:  # noqa: BLE001  (a torn or foreign file, whatever the error)
        raise ValueError(f"{state_path} could not be read ({type(e).__name__}); delete it and {part} and run again "
                         "without --resume") from None
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{part} was started with another input, model or settings; run again with the same ones to "
                         "resume it, or without --resume to start over")
    return state


def _remove(*paths: str) -> None:
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def _finish(tmp: str, output: str) -> None:
    """fsync `tmp` and rename it over `output` (then sync the folder: the rename survives a crash)."""
    from .utils import _fsync_dir, _umask

    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, output)
    _fsync_dir(os.path.dirname(output))


def _sentence_index_json(lines: _Lines) -> bytes:
    """`json.dumps({line: str(i) for i, line in enumerate(lines)})` byte for byte (a repeated sentence
    keeps its first place and gets its last line number, as in AllenNLP), without that dict: it cost
    ~480 bytes per sentence beside the JSON (1M sentences: +724 MB at the end of a run). Three passes
    over the lines: their hashes (8 bytes each) find the candidates for repeats, the last line number
    of those, then the JSON text."""
    import io

    from json.encoder import encode_basestring_ascii as quote

    hashes = np.fromiter((hash(line) for line in lines), dtype=np.int64, count=lines.n)
    hashes.sort()
    repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    del hashes
    last = {}
    if repeated:
        for i, line in enumerate(lines):
            if hash(line) in repeated:
                last[line] = i
    out = io.BytesIO()
    out.write(b"{")
    sep, written = "", set()
    for i, line in enumerate(lines):
        if line in last:
            if line in written:
                continue
            written.add(line)
            i = last[line]
        out.write(f'{sep}{quote(line)}: "{i}"'.encode("ascii"))
        sep = ", "
    out.write(b"}")
    return out.getvalue()


def _write_sentence_index(f, lines: _Lines) -> None:
    """AllenNLP's `sentence_to_index`: one variable-length string, the JSON of {sentence: line number}.
    The one part of the output held in memory whole (HDF5 writes a string at once, and copies it
    twice on the way): about 3x its size, ~430 MB for 1M sentences of 25 tokens."""
    import h5py

    data = _sentence_index_json(lines)
    ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.string_dtype())
    ds[0] = data


def write_embeddings(embedder, input_file, output_file_path, output_format: str = "all", batch_size: int | None = 64,
                     forget_sentences: bool = False, use_sentence_keys: bool = False, *, max_tokens_per_batch: int | None = None,
                     resume: bool = False, progress: bool = True, tokenize: bool = False, dist=None) -> int:
    """The engine of `ElmoEmbedder.embed_file` and `elmo-fast embed` (see the module docstring).

    `dist`: a `elmo_fast.train.distributed.DistInfo` (rank, world) to embed one shard per process;
    None: one process. Returns the number of sentences in the file."""
    import h5py
    from tqdm.auto import tqdm

    from .utils import UsageError, is_int, release_freed_memory

    if output_format not in LAYER_MODES:
        raise UsageError(f"output_format must be one of {LAYER_MODES}, got {output_format!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if max_tokens_per_batch is not None and (not is_int(max_tokens_per_batch) or max_tokens_per_batch < 1):
        raise UsageError(f"max tokens per batch must be a positive integer, got {max_tokens_per_batch!r}")
    stateful = embedder.stateful
    if stateful and max_tokens_per_batch is not None:
        raise UsageError("a token budget per batch reorders the sentences, which changes a stateful biLM's numbers; "
                         "use a stateless embedder (ElmoEmbedder(..., stateful=False), or --stateless)")
    if stateful and batch_size is None:
        batch_size = 64
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    lines = input_file if isinstance(input_file, _Lines) else _scan(input_file, use_sentence_keys)
    output = _check_output_path(output_file_path)
    tok = _tokenizer(tokenize)

    final_tmp = output + ".partial"
    part = final_tmp if world == 1 else f"{output}.partial.rank{rank}-of-{world}"
    state_path = part + ".state"
    settings = dict(format=output_format, batch_size=batch_size, max_tokens=max_tokens_per_batch, stateful=stateful,
                    keys=use_sentence_keys, tokenize=tokenize, rank=rank, world=world)
    fingerprint = _fingerprint(embedder, lines, settings)
    state = _load_state(state_path, part, fingerprint) if resume else None
    if state is None:
        _remove(part, state_path)
    lstm = embedder.elmo_bilm._elmo_lstm
    if state is not None and state["states"] is not None:
        lstm._states = tuple(s.to(embedder.device) for s in state["states"])
    done = state["done"] if state else 0
    sentences = state["sentences"] if state else 0
    complete = bool(state and state.get("complete"))

    if stateful:
        batches = _stateful_batches(lines, tok, batch_size, rank, world)
        total = sum(len(range(rank, min(batch_size, lines.n - s), world)) for s in range(0, lines.n, batch_size))
    else:
        batches = _bucketed_batches(lines, tok, batch_size, max_tokens_per_batch, rank, world)
        total = lines.n if world == 1 else None
    if not complete:
        bar = tqdm(total=total, initial=sentences, desc="embedding", unit="sent", dynamic_ncols=True,
                   disable=not progress or rank != 0)
        start, tokens, last_save = time.perf_counter(), 0, time.monotonic()
        last_trim = last_save
        k = 0
        saved = (done, sentences, lstm._states)
        since_open = 0
        try:
            f = h5py.File(part, "a" if state else "w", libver=LIBVER)
            try:
                with embedder.elmo_bilm.word_cache():  # freed before the sentence index is built
                    for k, (rows, force) in enumerate(batches):
                        if k < done:
                            continue
                        if rows:
                            arrays = embedder._embed_rows([r[2] for r in rows], force)
                            for (i, line, toks), emb in zip(rows, arrays):
                                key = line if use_sentence_keys else str(i)
                                if key in f:  # written after the last saved state: rewritten
                                    del f[key]
                                f.create_dataset(key, data=_layer_output(emb, output_format), dtype="float32")
                                tokens += len(toks)
                            since_open += len(rows)
                        sentences += len(rows)
                        saved = (k + 1, sentences, lstm._states if stateful else None)
                        if _stop_signal is not None:
                            raise KeyboardInterrupt(f"signal {_stop_signal}")
                        bar.update(len(rows))
                        bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s", refresh=False)
                        if time.monotonic() - last_trim > TRIM_SECONDS:
                            release_freed_memory()
                            last_trim = time.monotonic()
                        if since_open >= REOPEN_DATASETS:
                            f.close()  # everything written so far is on disk: the state may point past it
                            f = h5py.File(part, "a", libver=LIBVER)
                            since_open = 0
                            _save_state(state_path, fingerprint, *saved)
                            last_save = time.monotonic()
                        elif time.monotonic() - last_save > CHECKPOINT_SECONDS:
                            f.flush()
                            _save_state(state_path, fingerprint, *saved)
                            last_save = time.monotonic()
                if world == 1 and not forget_sentences and not use_sentence_keys:
                    if "sentence_to_index" in f:
                        del f["sentence_to_index"]
                    release_freed_memory()  # the cache's slab, before the index's peak
                    _write_sentence_index(f, lines)
            finally:
                f.close()
        except BaseException:
            if saved[0] > 0 and os.path.exists(part):
                try:
                    _save_state(state_path, fingerprint, *saved)
                except Exception:  # noqa: BLE001  (the original error matters more)
                    pass
                print(f"\nelmo-fast embed: stopped after {saved[1]} sentences; {part} holds them, and the same "
                      "command with --resume continues", file=sys.stderr)
            raise
        finally:
            bar.close()
        if world > 1:
            _save_state(state_path, fingerprint, *saved, complete=True)
    if world == 1:
        _finish(part, output)
        _remove(state_path)
        return lines.n
    from .train import distributed

    distributed.barrier(dist)
    if rank == 0:
        parts = [f"{output}.partial.rank{r}-of-{world}" for r in range(world)]
        with h5py.File(final_tmp, "w", libver=LIBVER) as out:
            for p in parts:
                with h5py.File(p, "r") as src:
                    for key in src:
                        src.copy(src[key], out, name=key)
            if not forget_sentences and not use_sentence_keys:
                _write_sentence_index(out, lines)
        _finish(final_tmp, output)
        _remove(*parts, *(p + ".state" for p in parts))
    distributed.barrier(dist)
    return lines.n
