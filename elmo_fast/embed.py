"""`elmo-fast embed`: ELMo vectors for a file of sentences, written to HDF5 (like AllenNLP's `elmo` command).

Output layout (as AllenNLP's): one dataset per input line, named by its 0-based line index
("0", "1", ...): `[L, T, 2P]` float32 for `--layers all`, `[T, 2P]` for `top` / `average`; plus
`sentence_to_index`, a JSON string mapping each sentence (the line, stripped) to its index.

    elmo-fast embed --input sentences.txt --output embeddings.hdf5 --layers average --elmo runs/pretrain

Python:
    >>> from elmo_fast.embed import embed_sentences
    >>> vecs = embed_sentences("runs/pretrain", [["Hello", "world", "."]], layers="top")
    >>> vecs[0].shape   # (3, 2P)
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

LAYER_MODES = ("all", "top", "average")


def _as_bilm(elmo, backend=None, device=None):
    from .modules.bilm import ElmoBiLm

    if isinstance(elmo, ElmoBiLm):
        return elmo
    if hasattr(elmo, "_elmo_lstm") and isinstance(elmo._elmo_lstm, ElmoBiLm):  # an Elmo module
        return elmo._elmo_lstm
    from .classify.train import load_bilm

    return load_bilm(os.fspath(elmo), backend=backend, device=device)


@torch.no_grad()
def embed_sentences(elmo, sentences: list[list[str]], layers: str = "all", batch_size: int = 64, backend: str | None = None,
                    device=None, progress: bool = False) -> list[np.ndarray]:
    """ELMo vectors of tokenized sentences, batched by length.

    Args:
        elmo: an ELMo directory (options.json + weights.hdf5), an `ElmoBiLm` or an `Elmo`.
        sentences: `N` lists of tokens (none empty).
        layers: 'all' -> `[L, T, 2P]` per sentence; 'top' -> `[T, 2P]` (last LSTM layer);
            'average' -> `[T, 2P]` (mean of the `L` layers).

    Every sentence is run from a zero LSTM state, so its vectors do not depend on the batching.
    Returns `N` float32 arrays in input order.
    """
    from tqdm.auto import tqdm

    from .chars import batch_to_ids

    if layers not in LAYER_MODES:
        raise ValueError(f"layers must be one of {LAYER_MODES}, got {layers!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, s in enumerate(sentences):
        if len(s) == 0:
            raise ValueError(f"sentence {i} is empty; ELMo needs at least one token per sentence")
    bilm = _as_bilm(elmo, backend, device)
    was_training, was_stateful = bilm.training, getattr(bilm._elmo_lstm, "stateful", None)
    bilm.eval()
    if was_stateful:
        bilm._elmo_lstm.stateful = False
    dev = next(bilm.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[np.ndarray | None] = [None] * len(sentences)
    try:
        # A corpus repeats its words batch after batch: their character-encoder vectors are reused.
        with bilm.word_cache(), tqdm(total=len(sentences), desc="embedding", unit="sent", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids = batch_to_ids([sentences[i] for i in idx]).to(dev)
                acts = torch.stack(bilm(ids)["activations"], 0)[:, :, 1:-1].float()  # [L, B, T, 2P], boundaries off
                if layers == "top":
                    acts = acts[-1]
                elif layers == "average":
                    acts = acts.mean(0)
                else:
                    acts = acts.transpose(0, 1)
                for b, i in enumerate(idx):
                    n = len(sentences[i])
                    out[i] = (acts[b, ..., :n, :]).cpu().numpy()
                bar.update(len(idx))
    finally:
        bilm.train(was_training)
        if was_stateful:
            bilm._elmo_lstm.stateful = True
    return out


def read_sentences(path: str, tokenize: bool = False) -> tuple[list[str], list[list[str]]]:
    """Lines of `path` (stripped) and their tokens (whitespace split, or `elmo_fast.tokenizer` if `tokenize`)."""
    from .utils import read_utf8_lines

    if not os.path.exists(path):
        raise FileNotFoundError(f"input file {path!r} does not exist (expected one sentence per line)")
    lines = [line.strip() for line in read_utf8_lines(path, "input file")]
    while lines and not lines[-1]:
        lines.pop()
    for n, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path}: line {n} is empty; every line must hold one sentence (remove blank lines)")
    if not lines:
        raise ValueError(f"{path} holds no sentences")
    if tokenize:
        from .classify.text import tokenize as tok

        tokens = [tok(line) for line in lines]
    else:
        tokens = [line.split() for line in lines]
    return lines, tokens


def embed_file(input_path: str, output_path: str, elmo, layers: str = "all", batch_size: int = 64, tokenize: bool = False,
               backend: str | None = None, device=None, progress: bool = True) -> int:
    """Embed every line of `input_path` into `output_path` (HDF5, layout in the module docstring). Returns N."""
    import h5py

    from .utils import atomic_path

    lines, tokens = read_sentences(input_path, tokenize)
    _check_output_path(output_path)  # before the work, not after it
    vecs = embed_sentences(elmo, tokens, layers, batch_size, backend, device, progress)
    with atomic_path(output_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for i, v in enumerate(vecs):
                f.create_dataset(str(i), data=v)
            f.create_dataset("sentence_to_index", data=json.dumps({s: str(i) for i, s in enumerate(lines)}))
    return len(lines)


def _check_output_path(path) -> None:
    from .utils import check_output_dir

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path!r} is a folder; pass the HDF5 file to write, e.g. {os.path.join(path, 'embeddings.hdf5')!r}")
    check_output_dir(os.path.dirname(os.path.abspath(path)))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("embed", help="write ELMo vectors of a file of sentences to HDF5",
                              description="ELMo vectors for every line of a text file (one sentence per line, "
                              "tokens separated by spaces) into an HDF5 file: one dataset per line + sentence_to_index.")
    p.add_argument("--input", required=True, help="text file, one sentence per line")
    p.add_argument("--output", required=True, help="HDF5 file to write")
    p.add_argument("--elmo", required=True, help="directory with options.json + weights.hdf5 (e.g. from `elmo-fast pretrain`)")
    p.add_argument("--layers", choices=LAYER_MODES, default="all", help="all: [L,T,D] per sentence; top / average: [T,D]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tokenize", action="store_true", help="tokenize raw lines like the pretraining corpus instead of splitting on spaces")
    p.add_argument("--backend", default=None, help="kernel backend (torch|cpp|triton|cuda; default: fastest)")
    p.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .utils import resolve_device

    device = resolve_device(args.device)
    n = embed_file(args.input, args.output, args.elmo, args.layers, args.batch_size, args.tokenize, args.backend, device,
                   progress=not args.no_progress)
    print(f"wrote {n} sentences to {args.output}")
    return 0
