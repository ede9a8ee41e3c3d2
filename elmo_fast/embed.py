"""`elmo-fast embed`: AllenNLP 0.9's `allennlp elmo` command (same arguments, same HDF5 layout), on any corpus size.

    elmo-fast embed sentences.txt embeddings.hdf5 --all --options-file options.json --weight-file weights.hdf5
    torchrun --nproc-per-node 4 -m elmo_fast.cli embed sentences.txt embeddings.hdf5 --top --elmo DIR --stateless

Layout (AllenNLP's): one float32 dataset per input line, named by its 0-based index ("0", "1", ...)
or, with --use-sentence-keys, by the sentence; `[L, T, 2P]` for --all, `[T, 2P]` for --top /
--average; plus `sentence_to_index`, a 1-element variable-length string dataset holding the JSON map
sentence -> index (unless --forget-sentences or --use-sentence-keys):

    json.loads(f["sentence_to_index"][0])

Numbers: by default the biLM is stateful and the batches are AllenNLP's (consecutive lines,
--batch-size each), so the vectors are AllenNLP's bit for bit up to float32 rounding, including
its carried LSTM state (a sentence's vectors depend on the lines before it in the same batch row).
--stateless (implied by --max-tokens-per-batch) starts every sentence from a zero state: vectors
that depend on the sentence alone, batched by length.

Vectors are written batch by batch (memory does not grow with the file) into `OUTPUT.partial`,
renamed to OUTPUT when complete; `OUTPUT.partial.state` records the progress, so --resume
continues an interrupted run. Under torchrun every rank embeds its share of the batches into its
own part, and rank 0 merges the parts into the one output file.

Python: `ElmoEmbedder(...).embed_file(...)`, or `embed_sentences(elmo, sentences, layers)` here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import IO, Iterator

import numpy as np
import torch

LAYER_MODES = ("all", "top", "average")
#: sentences sorted by length together when batches are bucketed (bounded memory, short padding)
BUCKET_POOL = 20_000
CHECKPOINT_SECONDS = 30.0


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


def _write_sentence_index(f, lines: _Lines) -> None:
    import h5py

    index = {}
    for i, line in enumerate(lines):
        index[line] = str(i)  # a repeated sentence maps to its last line, as in AllenNLP
    ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
    ds[0] = json.dumps(index)


def write_embeddings(embedder, input_file, output_file_path, output_format: str = "all", batch_size: int | None = 64,
                     forget_sentences: bool = False, use_sentence_keys: bool = False, *, max_tokens_per_batch: int | None = None,
                     resume: bool = False, progress: bool = True, tokenize: bool = False, dist=None) -> int:
    """The engine of `ElmoEmbedder.embed_file` and `elmo-fast embed` (see the module docstring).

    `dist`: a `elmo_fast.train.distributed.DistInfo` (rank, world) to embed one shard per process;
    None: one process. Returns the number of sentences in the file."""
    import h5py
    from tqdm.auto import tqdm

    from .utils import UsageError, is_int

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
        k = 0
        saved = (done, sentences, lstm._states)
        try:
            with h5py.File(part, "a" if state else "w") as f, embedder.elmo_bilm.word_cache():
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
                    sentences += len(rows)
                    saved = (k + 1, sentences, lstm._states if stateful else None)
                    bar.update(len(rows))
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tokens/s", refresh=False)
                    if time.monotonic() - last_save > CHECKPOINT_SECONDS:
                        f.flush()
                        _save_state(state_path, fingerprint, *saved)
                        last_save = time.monotonic()
                if world == 1 and not forget_sentences and not use_sentence_keys:
                    if "sentence_to_index" in f:
                        del f["sentence_to_index"]
                    _write_sentence_index(f, lines)
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
        with h5py.File(final_tmp, "w") as out:
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


# ------------------------------------------------------------------------------------------- Python API


def _embedder_for(elmo, backend=None, device=None, stateful: bool = False):
    """An ElmoEmbedder over an ELMo directory, an ElmoBiLm, an Elmo or an ElmoEmbedder."""
    from .embedder import ElmoEmbedder
    from .modules.bilm import ElmoBiLm

    if isinstance(elmo, ElmoEmbedder):
        return elmo
    if not isinstance(elmo, ElmoBiLm):
        inner = getattr(elmo, "_elmo_lstm", None)
        if isinstance(inner, ElmoBiLm):  # an Elmo module
            elmo = inner
        else:
            from .classify.train import load_bilm

            elmo = load_bilm(os.fspath(elmo), backend=backend, device=device)
    ee = ElmoEmbedder.__new__(ElmoEmbedder)
    ee.elmo_bilm, ee.stateful, ee.cuda_device = elmo, stateful, -1
    ee.device = next(elmo.parameters()).device
    ee.num_layers, ee.output_dim = elmo.num_layers, elmo.get_output_dim()
    return ee


@torch.no_grad()
def embed_sentences(elmo, sentences: list[list[str]], layers: str = "all", batch_size: int = 64, backend: str | None = None,
                    device=None, progress: bool = False) -> list[np.ndarray]:
    """Order-independent ELMo vectors of tokenized sentences (each from a zero LSTM state), batched by length.

    Args:
        elmo: an ELMo directory (options.json + weights.hdf5), an `ElmoBiLm`, an `Elmo` or an `ElmoEmbedder`.
        sentences: `N` lists of tokens (an empty one gives an empty array).
        layers: 'all' -> `[L, T, 2P]` per sentence; 'top' -> `[T, 2P]` (last LSTM layer);
            'average' -> `[T, 2P]` (mean of the `L` layers).
    Returns `N` float32 arrays in input order.
    """
    from tqdm.auto import tqdm

    if layers not in LAYER_MODES:
        raise ValueError(f"layers must be one of {LAYER_MODES}, got {layers!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ee = _embedder_for(elmo, backend, device)
    bilm = ee.elmo_bilm
    was_training, was_stateful = bilm.training, bilm._elmo_lstm.stateful
    saved_states = bilm._elmo_lstm._states
    bilm.eval()
    bilm._elmo_lstm.stateful = False
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[np.ndarray | None] = [None] * len(sentences)
    try:
        with bilm.word_cache(), tqdm(total=len(sentences), desc="embedding", unit="sent", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                for i, emb in zip(idx, ee._embed_rows([list(sentences[i]) for i in idx])):
                    out[i] = _layer_output(emb, layers)
                bar.update(len(idx))
    finally:
        bilm.train(was_training)
        bilm._elmo_lstm.stateful = was_stateful
        bilm._elmo_lstm._states = saved_states
    return out


def embed_file(input_path, output_path, elmo, layers: str = "all", batch_size: int = 64, tokenize: bool = False,
               backend: str | None = None, device=None, progress: bool = True, **kwargs) -> int:
    """Order-independent `write_embeddings` from an ELMo directory / module (see `embed_sentences`). Returns N."""
    ee = _embedder_for(elmo, backend, device)
    bilm = ee.elmo_bilm
    was_training, was_stateful = bilm.training, bilm._elmo_lstm.stateful
    bilm.eval()
    bilm._elmo_lstm.stateful = False
    try:
        return write_embeddings(ee, input_path, output_path, layers, batch_size, tokenize=tokenize, progress=progress, **kwargs)
    finally:
        bilm.train(was_training)
        bilm._elmo_lstm.stateful = was_stateful


# ------------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="write ELMo vectors of a file of sentences to HDF5 (AllenNLP's `elmo` command)",
        description="ELMo vectors for every line of a text file (one sentence per line, tokens separated by spaces) "
        "into an HDF5 file in AllenNLP's layout: one dataset per line + sentence_to_index. By default the numbers are "
        "AllenNLP's (stateful biLM, consecutive batches of --batch-size); --stateless or --max-tokens-per-batch give "
        "vectors that do not depend on the other lines.")
    p.add_argument("input_file", help="text file, one sentence per line")
    p.add_argument("output_file", help="HDF5 file to write")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--all", dest="output_format", action="store_const", const="all",
                     help="all layers: [L, T, 2P] per sentence (default)")
    fmt.add_argument("--top", dest="output_format", action="store_const", const="top", help="the top layer: [T, 2P]")
    fmt.add_argument("--average", dest="output_format", action="store_const", const="average",
                     help="the mean of the layers: [T, 2P]")
    p.add_argument("--options-file", default=None,
                   help="options.json (path or URL) or a published model name; default: the published 'original'")
    p.add_argument("--weight-file", default=None, help="weights.hdf5 (path or URL); default: the options' published weights")
    p.add_argument("--elmo", default=None, help="directory with options.json + weights.hdf5 (e.g. from `elmo-fast pretrain`)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sentences per batch (default 64; with --max-tokens-per-batch: no limit but the budget)")
    p.add_argument("--cuda-device", type=int, default=None,
                   help="GPU index, -1 for the CPU (default: the GPU of this rank if there is one, else the CPU)")
    p.add_argument("--forget-sentences", action="store_true", help="do not write sentence_to_index")
    p.add_argument("--use-sentence-keys", action="store_true",
                   help="name each dataset by its sentence instead of its line number (sentences must be unique)")
    p.add_argument("--stateless", action="store_true",
                   help="every sentence from a zero LSTM state, batched by length: order-independent vectors "
                   "(not AllenNLP's, whose state carries from batch to batch)")
    p.add_argument("--max-tokens-per-batch", type=int, default=None,
                   help="token budget per batch (sentences x longest, padding included); implies --stateless")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (OUTPUT.partial)")
    p.add_argument("--tokenize", action="store_true", help="tokenize raw lines like the pretraining corpus instead of splitting on spaces")
    p.add_argument("--backend", default=None, help="kernel backend (torch|cpp|triton|cuda; default: fastest)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import signal

    from .embedder import ElmoEmbedder
    from .train import distributed
    from .utils import UsageError

    options, weights = args.options_file, args.weight_file
    if args.elmo is not None:
        if options is not None or weights is not None:
            raise UsageError("pass either --elmo DIR or --options-file/--weight-file, not both")
        d = os.path.expanduser(args.elmo)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"ELMo directory {args.elmo!r} does not exist; it must hold options.json and weights.hdf5 "
                                    "(e.g. the --out of `elmo-fast pretrain`)")
        options, weights = os.path.join(d, "options.json"), os.path.join(d, "weights.hdf5")
        for p in (options, weights):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p} is missing; an ELMo directory holds options.json and weights.hdf5 (from `elmo-fast pretrain`)")
    stateless = args.stateless or args.max_tokens_per_batch is not None
    batch_size = args.batch_size if args.batch_size is not None else (None if args.max_tokens_per_batch else 64)
    # the cheap checks first, so a typo is found before the model loads
    lines = _scan(args.input_file, args.use_sentence_keys)
    _check_output_path(args.output_file)
    cuda = args.cuda_device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda is None:
        cuda = local if torch.cuda.is_available() else -1
    info = distributed.setup("cpu" if cuda < 0 else "cuda")
    previous = signal.getsignal(signal.SIGTERM) if threading_main() else None
    try:
        ee = ElmoEmbedder(options, weights, cuda, stateful=not stateless, backend=args.backend)
        if previous is not None:
            signal.signal(signal.SIGTERM, _interrupt)  # a launcher's stop: keep what is written, as Ctrl-C does
        n = write_embeddings(ee, lines, args.output_file, args.output_format or "all", batch_size,
                             args.forget_sentences, args.use_sentence_keys, max_tokens_per_batch=args.max_tokens_per_batch,
                             resume=args.resume, progress=not args.no_progress, tokenize=args.tokenize,
                             dist=info if info.enabled else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        distributed.teardown(info)
    if info.is_main:
        print(f"wrote {n} sentences to {args.output_file}")
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
