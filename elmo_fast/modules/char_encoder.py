"""Character encoder module with AllenNLP's parameter names (`_char_embedding_weights`,
`char_conv_{i}`, `_highways._layers.{k}`, `_projection`), so its state_dict loads unchanged."""

from __future__ import annotations

import torch
from torch import nn

from .._backend import warn_if_bf16_emulated
from ..chars import BOS_IDS, EOS_IDS
from ..ops.encoder import WordVectorCache, char_cnn
from ..ops.highway.reference import highway_ref
from ..options import OptionsLike, load_options


class Highway(nn.Module):
    """`y = sigmoid(g) * x + (1 - sigmoid(g)) * relu(n)` with `[n, g] = Linear(F, 2F)(x)`."""

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.input_dim = input_dim
        self._layers = nn.ModuleList([nn.Linear(input_dim, input_dim * 2) for _ in range(num_layers)])
        for layer in self._layers:
            # Start as a carry-biased highway (gate ~ sigmoid(1)), as AllenNLP does.
            nn.init.zeros_(layer.bias)
            layer.bias.data[input_dim:].fill_(1.0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The eager layers on `[..., F]` (the fused encoder reads `_layers` directly)."""
        for layer in self._layers:
            inputs = highway_ref(inputs, layer.weight, layer.bias)
        return inputs


class ElmoCharacterEncoder(nn.Module):
    """AllenNLP's `_ElmoCharacterEncoder`: char ids -> the biLM's token vectors, one fused op.

    Args (as AllenNLP's):
        options_file: options.json path, a preset name or a dict.
        weight_file: weights.hdf5 or an elmo_fast checkpoint (only the encoder part is read); None =
            random init (for pretraining).
        requires_grad: whether the weights are trainable.
    Extra (keyword-only):
        backend: kernel backend (None: the fastest available).
    """

    def __init__(self, options_file: OptionsLike, weight_file=None, requires_grad: bool = False, *,
                 backend: str | None = None):
        super().__init__()
        options = load_options(options_file)
        cnn = options["char_cnn"]
        self._options = options
        self.backend = backend
        self.activation = cnn["activation"]
        self.output_dim = options["lstm"]["projection_dim"]
        E = cnn["embedding"]["dim"]
        F_total = sum(f[1] for f in cnn["filters"])
        weights = torch.empty(262, E).uniform_(-1, 1)
        weights[0] = 0.0
        self._char_embedding_weights = nn.Parameter(weights)
        for i, (width, num) in enumerate(cnn["filters"]):
            self.add_module(f"char_conv_{i}", nn.Conv1d(E, num, kernel_size=width, bias=True))
        self.n_filters_total = F_total
        self.num_filters = len(cnn["filters"])
        self._highways = Highway(F_total, cnn["n_highway"])
        self._projection = nn.Linear(F_total, self.output_dim, bias=True)
        self.register_buffer("_beginning_of_sentence_characters", torch.from_numpy(BOS_IDS.copy()), persistent=False)
        self.register_buffer("_end_of_sentence_characters", torch.from_numpy(EOS_IDS.copy()), persistent=False)
        self.word_cache: WordVectorCache | None = None
        self.gemm_dtype: torch.dtype | None = None  # torch.bfloat16: faster CPU inference (see char_cnn)
        if weight_file is not None:
            from ..weights import load_char_encoder_weights

            load_char_encoder_weights(self, weight_file)
        for p in self.parameters():
            p.requires_grad_(requires_grad)

    def get_output_dim(self) -> int:
        return self.output_dim

    def enable_word_cache(self, max_entries: int = 100_000) -> None:
        """Reuse word vectors across batches when no gradient is needed (dropped when weights change)."""
        self.word_cache = WordVectorCache(max_entries) if max_entries > 0 else None

    def set_gemm_dtype(self, dtype: torch.dtype | None) -> None:
        """torch.bfloat16: bf16 highway/projection GEMM operands (CPU inference only); None: fp32."""
        if dtype is not None:
            warn_if_bf16_emulated()
        if dtype != self.gemm_dtype and self.word_cache is not None:
            self.word_cache.clear()  # its vectors were computed at the other precision
        self.gemm_dtype = dtype

    @property
    def convolutions(self) -> list[nn.Conv1d]:
        return [getattr(self, f"char_conv_{i}") for i in range(self.num_filters)]

    _convolutions = convolutions  # AllenNLP's attribute name

    def encode_ids(self, char_ids: torch.Tensor) -> torch.Tensor:
        """`[N, 50]` char ids (no boundary handling) -> `[N, P]`."""
        convs = self.convolutions
        return char_cnn(
            char_ids,
            self._char_embedding_weights,
            [c.weight for c in convs],
            [c.bias for c in convs],
            [layer.weight for layer in self._highways._layers],
            [layer.bias for layer in self._highways._layers],
            self._projection.weight,
            self._projection.bias,
            self.activation,
            backend=self.backend,
            cache=self.word_cache,
            gemm_dtype=self.gemm_dtype,
        )

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """`inputs` `[B, T, 50]` char ids -> {'mask': `[B, T+2]` bool, 'token_embedding': `[B, T+2, P]`}."""
        if inputs.dtype != torch.long:
            if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
                raise TypeError(f"character ids must be an integer tensor (int64 from batch_to_ids), got {inputs.dtype}")
            inputs = inputs.long()  # int32 ids work in AllenNLP (F.embedding takes them)
        ids, mask = add_sentence_boundary_token_ids(
            inputs, (inputs > 0).any(dim=-1), self._beginning_of_sentence_characters, self._end_of_sentence_characters
        )
        B, T2, W = ids.shape
        emb = self.encode_ids(ids.reshape(B * T2, W))
        return {"mask": mask, "token_embedding": emb.view(B, T2, -1)}


def add_sentence_boundary_token_ids(tensor: torch.Tensor, mask: torch.Tensor, bos: torch.Tensor, eos: torch.Tensor):
    """Insert `bos` at position 0 and `eos` right after each row's last real position.

    `tensor` `[B, T, D]`, `mask` `[B, T]` -> (`[B, T+2, D]`, new mask `[B, T+2]`). Works for char ids
    and for cached word vectors alike; vectorised (no per-row Python loop).
    """
    B, T = mask.shape
    lengths = mask.sum(dim=1)
    out = tensor.new_zeros((B, T + 2) + tuple(tensor.shape[2:]))
    out[:, 1:-1] = tensor
    rows = torch.arange(B, device=tensor.device)
    out[:, 0] = bos.to(out)
    out[rows, lengths + 1] = eos.to(out)
    positions = torch.arange(T + 2, device=tensor.device)
    new_mask = positions[None, :] < (lengths + 2)[:, None]
    return out, new_mask


def remove_sentence_boundaries(tensor: torch.Tensor, mask: torch.Tensor):
    """Inverse of `add_sentence_boundary_token_ids`: `[B, T+2, D]` -> (`[B, T, D]`, mask `[B, T]`)."""
    B, T2 = mask.shape
    lengths = mask.sum(dim=1) - 2  # real tokens per row
    T = T2 - 2
    positions = torch.arange(T, device=tensor.device)
    new_mask = positions[None, :] < lengths[:, None]
    out = tensor[:, 1:-1] * new_mask.unsqueeze(-1).to(tensor.dtype)
    return out, new_mask
