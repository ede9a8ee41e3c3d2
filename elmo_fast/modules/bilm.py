"""The bidirectional LM: character encoder + stacked biLSTM, returning every layer."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from ..chars import batch_to_ids
from ..options import OptionsLike, clip_value, load_options
from .char_encoder import ElmoCharacterEncoder, add_sentence_boundary_token_ids
from .lstm import ElmoLstm

logger = logging.getLogger(__name__)


class ElmoBiLm(nn.Module):
    """AllenNLP's `_ElmoBiLm`: `_token_embedder` + `_elmo_lstm`, the same state_dict keys.

    Args:
        options_file: path to options.json, a preset name ('tiny', 'small', 'original') or a dict.
        weight_file: weights.hdf5 (published layout) or a .safetensors checkpoint; None = random init.
        requires_grad: whether the loaded weights are trainable.
        vocab_to_cache: words whose vectors are computed once; forward then accepts word ids.
        stateful: carry (h, c) across calls as AllenNLP does (True) or start from zeros every call.
        backend: kernel backend for both ops (None: the fastest available, see `elmo_fast._backend`).
    """

    def __init__(self, options_file: OptionsLike, weight_file=None, requires_grad: bool = False,
                 vocab_to_cache: list[str] | None = None, stateful: bool = True, backend: str | None = None):
        super().__init__()
        if options_file is None:
            raise ValueError("ElmoBiLm needs options_file (an options.json path, a preset name or a dict)")
        self.options = load_options(options_file)
        lstm = self.options["lstm"]
        self._token_embedder = ElmoCharacterEncoder(self.options, requires_grad=requires_grad, backend=backend)
        self._requires_grad = requires_grad
        self._elmo_lstm = ElmoLstm(
            input_size=lstm["projection_dim"], hidden_size=lstm["projection_dim"], cell_size=lstm["dim"],
            num_layers=lstm["n_layers"], requires_grad=requires_grad, memory_cell_clip_value=clip_value(lstm.get("cell_clip")),
            state_projection_clip_value=clip_value(lstm.get("proj_clip")), stateful=stateful, backend=backend,
        )
        self.num_layers = lstm["n_layers"] + 1
        self.output_dim = 2 * lstm["projection_dim"]
        if weight_file is not None:
            from ..weights import load_weights

            load_weights(self, weight_file)
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        self._word_embedding: nn.Embedding | None = None
        # Buffers (outside the state_dict, as in AllenNLP) so that .to()/.cuda()/.half() move them
        # with the cached vocabulary.
        self.register_buffer("_bos_embedding", None, persistent=False)
        self.register_buffer("_eos_embedding", None, persistent=False)
        if vocab_to_cache:
            self.create_cached_cnn_embeddings(vocab_to_cache)

    def set_backend(self, backend: str | None) -> None:
        self._token_embedder.backend = backend
        self._elmo_lstm.set_backend(backend)

    def set_gemm_dtype(self, dtype: torch.dtype | None) -> None:
        """CPU inference precision of the GEMMs: torch.bfloat16 runs the highway, projection and LSTM
        GEMMs with bf16 operands and fp32 accumulation, keeping the conv, gates, cell state and outputs
        in fp32 (~2x faster on CPUs with avx512_bf16/AMX; error in benchmarks/results/zen4/elmo_cpu.md).
        Inference only: a forward that needs gradients raises. None: fp32 throughout."""
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f"gemm dtype must be None or torch.bfloat16, got {dtype}")
        self._token_embedder.set_gemm_dtype(dtype)
        self._elmo_lstm.set_gemm_dtype(dtype)

    def reset_states(self) -> None:
        self._elmo_lstm.reset_states()

    def enable_word_cache(self, max_entries: int = 100_000) -> None:
        """Keep the character encoder's vectors of up to `max_entries` distinct tokens across calls
        (least recently used dropped first) and reuse them: an automatic `vocab_to_cache`. Used only
        when no gradient is needed; emptied when any encoder weight changes. 0 disables it."""
        self._token_embedder.enable_word_cache(max_entries)

    @contextlib.contextmanager
    def word_cache(self, max_entries: int = 100_000):
        """`enable_word_cache` for a block of inference calls (a no-op if a cache is already on)."""
        enc = self._token_embedder
        if enc.word_cache is not None:
            yield enc.word_cache
            return
        enc.enable_word_cache(max_entries)
        try:
            yield enc.word_cache
        finally:
            enc.word_cache = None

    def get_output_dim(self) -> int:
        return self.output_dim

    @torch.no_grad()
    def create_cached_cnn_embeddings(self, tokens: list[str], batch_size: int = 4096) -> None:
        """Run the character encoder once over `["<S>", "</S>"] + tokens` and keep the vectors.

        As in AllenNLP, word id k then means `tokens[k]`, id 0 is padding (its row is zeroed, so
        `tokens[0]` is normally the padding token of the caller's vocabulary), and the word vectors
        are a trainable embedding when the biLM is (`requires_grad=True`)."""
        words = ["<S>", "</S>"] + list(tokens)
        ids = batch_to_ids([words])[0].to(self._token_embedder._char_embedding_weights.device)
        vecs = torch.cat([self._token_embedder.encode_ids(ids[i : i + batch_size]) for i in range(0, len(words), batch_size)])
        self._bos_embedding, self._eos_embedding = vecs[0].clone(), vecs[1].clone()
        weight = vecs[2:].clone()
        weight[0] = 0.0
        self._word_embedding = nn.Embedding.from_pretrained(weight, freeze=not self._requires_grad, padding_idx=0)

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict:
        """inputs `[B, T, 50]` char ids (or word ids `[B, T]` with a cached vocabulary) ->
        {'activations': num_layers x `[B, T+2, 2P]`, 'mask': `[B, T+2]` bool}."""
        if self._word_embedding is not None and word_inputs is not None:
            n = self._word_embedding.num_embeddings
            if word_inputs.numel() and (int(word_inputs.max()) >= n or int(word_inputs.min()) < 0):
                # AllenNLP backs off to the character CNN when a word is not in the cache.
                logger.warning("word ids outside the cached vocabulary of %d words: running the character "
                               "encoder for this batch instead", n)
                word_inputs = None
        if self._word_embedding is not None and word_inputs is not None:
            mask_no_bounds = word_inputs > 0
            type_repr, mask = add_sentence_boundary_token_ids(
                self._word_embedding(word_inputs), mask_no_bounds, self._bos_embedding, self._eos_embedding
            )
        else:
            token = self._token_embedder(inputs)
            mask, type_repr = token["mask"], token["token_embedding"]
        lstm_outputs = self._elmo_lstm(type_repr, mask)
        activations = [torch.cat([type_repr, type_repr], dim=-1) * mask.unsqueeze(-1).to(type_repr.dtype)]
        activations.extend(lstm_outputs.unbind(0))
        return {"activations": activations, "mask": mask}
