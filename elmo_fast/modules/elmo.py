"""`elmo_fast.Elmo`: AllenNLP's `Elmo` with the same arguments, output dict and parameter names."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..chars import batch_to_ids  # noqa: F401  (re-exported: allennlp.modules.elmo has it)
from .bilm import ElmoBiLm
from .char_encoder import ElmoCharacterEncoder, remove_sentence_boundaries
from .scalar_mix import ScalarMix

logger = logging.getLogger(__name__)


class Elmo(nn.Module):
    """Contextual word representations: a pretrained biLM plus `num_output_representations`
    trainable scalar mixes of its layers.

    Args (as AllenNLP's `Elmo`):
        options_file: options.json path or URL (also a preset name or a dict).
        weight_file: weights.hdf5 in the published layout, or an elmo_fast .safetensors checkpoint.
            A published model's trained files come from `Elmo.from_pretrained(name, ...)` (or a
            published name as both files); a preset name with weight_file=None has random weights.
        num_output_representations: how many differently-mixed representations to return.
        requires_grad: fine-tune the biLM weights (the mixes are trainable either way).
        do_layer_norm: normalise each layer with one batch-wide mean/variance before mixing.
        dropout: applied to each returned representation.
        vocab_to_cache: precompute word vectors for these words; forward then takes `word_inputs`.
        keep_sentence_boundaries: keep the `<S>`/`</S>` positions in the output.
        scalar_mix_parameters: fixed (untrainable) mix weights for every representation.
        module: an existing `ElmoBiLm` to use instead of loading one.
    Extra (keyword-only):
        stateful: carry the LSTM state across calls like AllenNLP (default) or start fresh each call.
        backend: 'torch' | 'cpp' | 'triton' | 'cuda' | None (fastest available).

    Returns from `forward`: {'elmo_representations': N x `[B, T, 2P]`, 'mask': `[B, T]` bool}.

    Example:
        >>> from elmo_fast import Elmo, batch_to_ids
        >>> elmo = Elmo("options.json", "weights.hdf5", 1, dropout=0)
        >>> out = elmo(batch_to_ids([["First", "sentence", "."], ["Another", "."]]))
        >>> out["elmo_representations"][0].shape   # [2, 3, 2P]
    """

    def __init__(self, options_file, weight_file, num_output_representations: int, requires_grad: bool = False,
                 do_layer_norm: bool = False, dropout: float = 0.5, vocab_to_cache: list[str] | None = None,
                 keep_sentence_boundaries: bool = False, scalar_mix_parameters: list[float] | None = None,
                 module: ElmoBiLm | None = None, *, stateful: bool = True, backend: str | None = None):
        super().__init__()
        if num_output_representations < 1:
            raise ValueError(f"num_output_representations must be >= 1, got {num_output_representations}")
        if module is not None:
            if options_file is not None or weight_file is not None:
                raise ValueError("Don't provide options_file or weight_file with module")
            self._elmo_lstm = module
            if backend is not None:
                module.set_backend(backend)
        else:
            if weight_file is None:
                # AllenNLP requires the weights; here None is allowed (training from scratch) but
                # must not pass unnoticed when a path was forgotten.
                from ..options import PRESETS
                from ..pretrained import MODELS

                if isinstance(options_file, str) and options_file in PRESETS:
                    trained = (f"Elmo.from_pretrained({options_file!r}, ...)" if options_file in MODELS else
                               f"Elmo.from_pretrained(name, ...) with one of {', '.join(MODELS)}")
                    logger.warning("Elmo(%r, None): the preset %r is options only, so the biLM has RANDOM weights; "
                                   "for a published trained model use %s", options_file, options_file, trained)
                else:
                    logger.warning("Elmo without a weight_file: the biLM has random weights (pass weights.hdf5 "
                                   "or a checkpoint to load a trained one)")
            self._elmo_lstm = ElmoBiLm(options_file, weight_file, requires_grad=requires_grad,
                                       vocab_to_cache=vocab_to_cache, stateful=stateful, backend=backend)
        self._has_cached_vocab = vocab_to_cache is not None
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._scalar_mixes: list[ScalarMix] = []
        for k in range(num_output_representations):
            mix = ScalarMix(self._elmo_lstm.num_layers, do_layer_norm=do_layer_norm,
                            initial_scalar_parameters=scalar_mix_parameters, trainable=scalar_mix_parameters is None)
            self.add_module(f"scalar_mix_{k}", mix)
            self._scalar_mixes.append(mix)

    @classmethod
    def from_pretrained(cls, name: str, num_output_representations: int, **kwargs) -> "Elmo":
        """The published model `name` ('small', 'medium', 'original', 'original-5.5B'; see
        `elmo_fast.pretrained.MODELS`), its files downloaded once into the cache; `kwargs` are the
        constructor's (`requires_grad`, `dropout`, `stateful`, `backend`, ...).

        >>> elmo = Elmo.from_pretrained("original", 2, dropout=0.0)
        """
        from ..pretrained import resolve_model

        if "options_file" in kwargs or "weight_file" in kwargs or "module" in kwargs:
            raise TypeError("from_pretrained takes the model by name; pass options_file/weight_file/module to Elmo(...) instead")
        options, weights = resolve_model(name)
        return cls(options, weights, num_output_representations, **kwargs)

    def get_output_dim(self) -> int:
        return self._elmo_lstm.get_output_dim()

    def set_gemm_dtype(self, dtype: torch.dtype | None) -> None:
        """torch.bfloat16: faster CPU inference with bf16 GEMM operands (see `ElmoBiLm.set_gemm_dtype`)."""
        self._elmo_lstm.set_gemm_dtype(dtype)

    def reset_states(self) -> None:
        self._elmo_lstm.reset_states()

    def enable_word_cache(self, max_entries: int = 100_000) -> None:
        """Reuse the character encoder's word vectors across batches (inference; see `ElmoBiLm.enable_word_cache`)."""
        self._elmo_lstm.enable_word_cache(max_entries)

    def forward(self, inputs: torch.Tensor, word_inputs: torch.Tensor | None = None) -> dict:
        """inputs: char ids `[B, T, 50]` (or `[..., T, 50]`); word_inputs: `[B, T]` ids into the cached vocabulary."""
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"Elmo takes a tensor of character ids, got {type(inputs).__name__}: convert tokenized "
                            "sentences with batch_to_ids(sentences) first")
        if inputs.dim() < 3 or inputs.shape[-1] != 50:
            raise ValueError(f"inputs must be character ids [batch, tokens, 50] from batch_to_ids, got shape {tuple(inputs.shape)}")
        if inputs.shape[:-2].numel() == 0:
            raise ValueError("Elmo got an empty batch (0 sentences); pass at least one sentence")
        original_shape = inputs.shape
        reshaped = inputs.reshape(-1, *original_shape[-2:]) if inputs.dim() > 3 else inputs
        reshaped_words = None
        if word_inputs is not None:
            if not self._has_cached_vocab:
                # as AllenNLP: a warning, and the character ids are used
                logger.warning("word_inputs were passed to Elmo, but it has no cached vocabulary "
                               "(vocab_to_cache); using the character ids")
                word_inputs = None
        if word_inputs is not None:
            reshaped_words = word_inputs.reshape(-1, word_inputs.shape[-1]) if word_inputs.dim() > 2 else word_inputs
        bilm = self._elmo_lstm(reshaped, reshaped_words)
        layers, mask_bounds = bilm["activations"], bilm["mask"]
        representations = []
        mask = mask_bounds
        for mix in self._scalar_mixes:
            rep = mix(layers, mask_bounds)
            if not self._keep_sentence_boundaries:
                rep, mask = remove_sentence_boundaries(rep, mask_bounds)
            representations.append(self._dropout(rep))
        if word_inputs is not None and word_inputs.dim() > 2:
            lead = tuple(word_inputs.shape)
        elif inputs.dim() > 3:
            lead = tuple(original_shape[:-1])
        else:
            lead = None
        if lead is not None:
            lead = lead[:-1] + (mask.shape[-1],)
            mask = mask.view(lead)
            representations = [r.view(lead + (-1,)) for r in representations]
        return {"elmo_representations": representations, "mask": mask}


# AllenNLP's import paths: `from allennlp.modules.elmo import Elmo, batch_to_ids, _ElmoBiLm, ...`
# keep working when only the package name changes.
_ElmoBiLm = ElmoBiLm
_ElmoCharacterEncoder = ElmoCharacterEncoder
