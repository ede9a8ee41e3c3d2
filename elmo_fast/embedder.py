"""`elmo_fast.ElmoEmbedder`: AllenNLP 0.9's `allennlp.commands.elmo.ElmoEmbedder` on the fused kernels.

Same constructor, methods, return types and numbers as AllenNLP 0.9, including its carried LSTM
state: the biLM is stateful, so a sentence's vectors depend on the sentences embedded before it in
the same batch row (AllenNLP's behaviour, kept so that stored vectors can be reproduced). Pass
`stateful=False` for vectors that depend on the sentence alone, whatever its batch.

    >>> from elmo_fast import ElmoEmbedder
    >>> ee = ElmoEmbedder("options.json", "weights.hdf5")       # no arguments: the published 'original' model
    >>> ee.embed_sentence(["Hello", "world", "."]).shape         # (3, 3, 1024): layers, tokens, 2P
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import IO, Iterable, Iterator

import numpy as np
import torch

from .chars import batch_to_ids
from .modules.bilm import ElmoBiLm
from .modules.char_encoder import remove_sentence_boundaries

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
#: AllenNLP's default model (`ElmoEmbedder()` with no arguments).
DEFAULT_MODEL = "original"


class ElmoEmbedder:
    """Args (as AllenNLP 0.9's):
        options_file: options.json (path or URL), or the name of a published model ('small',
            'medium', 'original', 'original-5.5B'); None: AllenNLP's default, the published 'original'.
        weight_file: weights.hdf5 (or an elmo_fast .safetensors checkpoint); None with a published
            name (or no options_file): that model's published weights.
        cuda_device: GPU index, -1 for the CPU.
    Extra (keyword-only):
        stateful: True (AllenNLP): the LSTM state of every batch row carries to the next call, until
            `reset_states()`. False: every sentence starts from a zero state, so its vectors do not
            depend on the other sentences or their order.
        backend: kernel backend (None: the fastest available).
    """

    def __init__(self, options_file=None, weight_file=None, cuda_device: int = -1, *, stateful: bool = True,
                 backend: str | None = None) -> None:
        from .utils import UsageError, is_int, resolve_device

        if not is_int(cuda_device):
            raise UsageError(f"cuda_device must be an integer (a GPU index, or -1 for the CPU), got {cuda_device!r}")
        device = resolve_device("cpu" if cuda_device < 0 else f"cuda:{cuda_device}")
        options_file, weight_file = resolve_model_files(options_file, weight_file)
        self.elmo_bilm = ElmoBiLm(options_file, weight_file, requires_grad=False, stateful=stateful, backend=backend)
        self.elmo_bilm.eval()
        self.elmo_bilm.to(device)
        self.cuda_device = cuda_device
        self.stateful = stateful
        self.device = device
        self.num_layers = self.elmo_bilm.num_layers
        self.output_dim = self.elmo_bilm.get_output_dim()

    def reset_states(self) -> None:
        """Forget the carried LSTM state (the next batch starts from zeros)."""
        self.elmo_bilm.reset_states()

    def empty_embedding(self) -> np.ndarray:
        """What an empty sentence returns: float32 `(L, 0, 2P)` (AllenNLP 0.9 hard-coded float64 `(3, 0, 1024)`)."""
        return np.zeros((self.num_layers, 0, self.output_dim), dtype=np.float32)

    @torch.no_grad()
    def batch_to_embeddings(self, batch: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations `[B, L, T, 2P]` (float32, on the model's device) and mask `[B, T]` (int64, as AllenNLP 0.9)."""
        character_ids = batch_to_ids(batch).to(self.device)
        bilm_output = self.elmo_bilm(character_ids)
        mask_with_bos_eos = bilm_output["mask"]
        without = [remove_sentence_boundaries(layer, mask_with_bos_eos) for layer in bilm_output["activations"]]
        activations = torch.stack([t for t, _ in without], dim=1)
        return activations, without[0][1].long()

    def embed_sentence(self, sentence: list[str]) -> np.ndarray:
        """`(L, T, 2P)` float32 vectors of one tokenized sentence."""
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch: list[list[str]]) -> list[np.ndarray]:
        """One `(L, T_i, 2P)` float32 array per sentence. An empty sentence still runs through the biLM
        (as `<S> </S>`, so its batch row's state moves on, as in AllenNLP) and returns
        `empty_embedding()`; a batch of only `[[]]` runs nothing."""
        return self._embed_rows([list(s) for s in batch])

    def _embed_rows(self, batch: list[list[str]], force: bool = False) -> list[np.ndarray]:
        """`embed_batch`; `force` runs a lone empty sentence too (it is a row of a larger batch
        split across processes, whose state must move on as in the whole batch)."""
        if not batch:
            return []
        if batch == [[]] and not force:
            return [self.empty_embedding()]
        embeddings, mask = self.batch_to_embeddings(batch)
        embeddings = embeddings.float().cpu().numpy()
        out = []
        for i, length in enumerate(mask.sum(1).tolist()):
            # a copy per sentence: a view would keep the whole padded batch alive
            out.append(np.ascontiguousarray(embeddings[i, :, :length]) if length else self.empty_embedding())
        return out

    def embed_sentences(self, sentences: Iterable[list[str]], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
        """Lazily embed `sentences` in consecutive batches of `batch_size` (AllenNLP's order, so its state carry)."""
        from .utils import UsageError, is_int

        if not is_int(batch_size) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        it = iter(sentences)
        with self.elmo_bilm.word_cache():
            while True:
                batch = list(itertools.islice(it, batch_size))
                if not batch:
                    return
                yield from self.embed_batch(batch)

    def embed_file(self, input_file: str | os.PathLike | IO, output_file_path: str, output_format: str = "all",
                   batch_size: int = DEFAULT_BATCH_SIZE, forget_sentences: bool = False, use_sentence_keys: bool = False,
                   *, max_tokens_per_batch: int | None = None, resume: bool = False, progress: bool = True,
                   tokenize: bool = False) -> int:
        """Embed every line of `input_file` (a path or an open text file, one whitespace-tokenized
        sentence per line) into the HDF5 file `output_file_path`, in AllenNLP's layout: one float32
        dataset per line, named by its 0-based index (by the sentence with `use_sentence_keys`),
        `[L, T, 2P]` for 'all', `[T, 2P]` for 'top' / 'average'; plus `sentence_to_index` (unless
        `forget_sentences` or `use_sentence_keys`). Returns the number of sentences.

        Vectors go to disk batch by batch; the file appears under its name only when complete
        (`resume=True` continues an interrupted run). Stateful, the batches are AllenNLP's
        (consecutive lines, `batch_size` each) for its exact numbers; with `stateful=False` they are
        bucketed by length (`max_tokens_per_batch` caps rows x longest sentence)."""
        from .embed_hdf5 import write_embeddings

        return write_embeddings(self, input_file, output_file_path, output_format, batch_size, forget_sentences,
                                use_sentence_keys, max_tokens_per_batch=max_tokens_per_batch, resume=resume,
                                progress=progress, tokenize=tokenize)


def _is_published(name) -> bool:
    from . import pretrained

    return pretrained.is_published(name)


def _published_files(name: str) -> tuple[str, str]:
    """Local (options, weights) of a published model, downloaded once into the cache by `elmo_fast.pretrained`."""
    from . import pretrained

    return tuple(os.fspath(p) for p in pretrained.resolve_model(name))


def _looks_like_name(x) -> bool:
    return isinstance(x, str) and not os.path.exists(os.path.expanduser(x)) and "/" not in x and not x.endswith((".json", ".hdf5"))


def resolve_model_files(options_file, weight_file) -> tuple:
    """(options, weights) for ElmoBiLm from the embedder's arguments: None/None is AllenNLP's default
    model; a published name stands for its published files (a preset name with a weight file keeps
    meaning the preset's options)."""
    from .options import PRESETS

    if options_file is None and weight_file is None:
        return _published_files(DEFAULT_MODEL)
    if weight_file is None:
        if _is_published(options_file) or (_looks_like_name(options_file) and options_file not in PRESETS):
            return _published_files(options_file)  # an unknown name: its error lists the published ones
        from .pretrained import names

        raise ValueError(f"options_file {options_file!r} was given without weight_file; pass the weights.hdf5 that goes "
                         f"with it (an embedder with random weights is of no use), or a published model name ({', '.join(names())})")
    if options_file is None:
        if _is_published(weight_file):
            return _published_files(weight_file)
        raise ValueError(f"weight_file {weight_file!r} was given without options_file; pass the options.json that goes with it")
    if _is_published(options_file) and options_file not in PRESETS:
        options_file = _published_files(options_file)[0]
    if _is_published(weight_file):
        weight_file = _published_files(weight_file)[1]
    return options_file, weight_file
