"""The classifier over ELMo layers: its own scalar mix, a task encoder, a linear head."""

from __future__ import annotations

import torch
from torch import nn

from ..modules.scalar_mix import ScalarMix

ENCODERS = ("bilstm", "pool")


def masked_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max and mean over the unmasked positions: `[B, T, H]`, `[B, T]` -> `[B, 2H]`."""
    m = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    mx = x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)
    return torch.cat([mx, mean], -1)


class ElmoClassifierHead(nn.Module):
    """Scalar mix of the `num_layers` ELMo layers -> encoder -> max+mean pooling -> linear.

    Args:
        num_layers, input_dim: of the biLM (`L`, `2P`).
        num_classes: `K`.
        encoder: 'bilstm' (a BiLSTM of `hidden` units per direction over the mixed vectors) or
            'pool' (a per-token ReLU projection to `hidden`; much faster on a CPU).
        dropout: on the mixed ELMo vectors and on the pooled features.

    forward(layers `[L, B, T, 2P]`, mask `[B, T]`) -> logits `[B, K]`.
    """

    def __init__(self, num_layers: int, input_dim: int, num_classes: int, encoder: str = "bilstm", hidden: int = 128,
                 dropout: float = 0.3, do_layer_norm: bool = False):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose one of {ENCODERS}")
        self.config = dict(num_layers=num_layers, input_dim=input_dim, num_classes=num_classes, encoder=encoder,
                           hidden=hidden, dropout=dropout, do_layer_norm=do_layer_norm)
        # Per-layer feature standardisation (set from the training tokens by `set_standardization`):
        # biLM features share a large common direction that drowns the between-document differences.
        self.register_buffer("feature_mean", torch.zeros(num_layers, 1, 1, input_dim))
        self.register_buffer("feature_std", torch.ones(num_layers, 1, 1, input_dim))
        self.scalar_mix = ScalarMix(num_layers, do_layer_norm=do_layer_norm)
        # The char-CNN layer and the LSTM layers differ in scale by an order of magnitude, and so
        # do biLMs of different training length; a per-token LayerNorm makes one lr fit all.
        self.norm = nn.LayerNorm(input_dim)
        self.dropout = nn.Dropout(dropout)
        self.encoder_type = encoder
        if encoder == "bilstm":
            self.encoder = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=True)
            enc_dim = 2 * hidden
        else:
            self.encoder = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU())
            enc_dim = hidden
        # Pooled ELMo vectors are concatenated too: a direct path that trains in the first epoch.
        self.output = nn.Linear(2 * enc_dim + 2 * input_dim, num_classes)

    @torch.no_grad()
    def set_standardization(self, layers: torch.Tensor) -> None:
        """layers: `[L, N_tokens, 2P]` training tokens (no padding) -> per-layer mean/std buffers."""
        x = layers.float()
        self.set_feature_stats(x.mean(1), x.std(1))

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-layer mean and std `[L, 2P]` of the training tokens (`LayerCache.layer_stats`)."""
        self.feature_mean.copy_(mean[:, None, None, :])
        self.feature_std.copy_(std.clamp_min(1e-3)[:, None, None, :])

    def forward(self, layers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        layers = (layers - self.feature_mean) / self.feature_std * mask[None, :, :, None].to(layers.dtype)
        x = self.scalar_mix(list(layers.unbind(0)), mask)  # [B, T, 2P]
        x = self.dropout(self.norm(x))
        if self.encoder_type == "bilstm":
            lengths = mask.sum(1).clamp_min(1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            h, _ = self.encoder(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        else:
            h = self.encoder(x)
        feats = torch.cat([masked_pool(h, mask), masked_pool(x, mask)], -1)
        return self.output(self.dropout(feats))
