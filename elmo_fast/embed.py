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

import os

import numpy as np
import torch

from .embed_hdf5 import LAYER_MODES, _check_output_path, _layer_output, _scan, read_sentences, request_stop, write_embeddings

__all__ = ["LAYER_MODES", "embed_file", "embed_sentences", "read_sentences", "write_embeddings"]


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
            request_stop(None)
        distributed.teardown(info)
    if info.is_main:
        print(f"wrote {n} sentences to {args.output_file}")
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _interrupt(signum, frame):
    request_stop(signum)  # honoured at the next batch boundary (see embed_hdf5.request_stop)
