"""The bidirectional LM trained by `pretrain`: an `ElmoBiLm` (character encoder + biLSTM, elmo_fast's
own ops) plus one softmax shared by both directions, trained with a sampled softmax (log-uniform
negatives, with the sampling correction) and evaluated with the full softmax."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.bilm import ElmoBiLm
from ..modules.lstm import run_layer
from .data import Batch


class LogUniformSampler:
    """Zipfian negatives for ids sorted by descending frequency: P(k) = log((k+2)/(k+1)) / log(V+1).

    `sample(n, step)` draws n ids with replacement from a generator seeded by (seed, step), so the
    negatives of a step are the same on every rank and after a resume; duplicates are merged and
    each kept id carries log of its inclusion probability 1 - (1 - P(k))^n (the correction that
    makes the sampled softmax consistent).
    """

    def __init__(self, vocab_size: int, seed: int = 0):
        self.V, self.seed = vocab_size, seed
        self._log_v1 = math.log(vocab_size + 1)

    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.double()
        return (torch.log1p(1.0 / (ids + 1.0)) / self._log_v1).log()

    def log_inclusion(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        """log P(id appears among n draws), computed in float64 (p can be ~1e-6)."""
        p = self.log_prob(ids).exp()
        return torch.log(-torch.expm1(n * torch.log1p(-p))).float()

    def sample(self, n: int, step: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (unique ids `[S]` int64, their log inclusion probabilities `[S]`)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        ids = (torch.exp(u * self._log_v1).floor().long() - 1).clamp_(0, self.V - 1)
        ids = torch.unique(ids)
        return ids.to(device), self.log_inclusion(ids, n).to(device)


class BidirectionalLM(nn.Module):
    """`bilm` (ElmoBiLm-compatible, exportable) + `softmax` `[V, P]` shared by both directions.

    Windows are run with carried state: `forward(batch, state)` returns the losses and the new state
    (h, c) per layer and direction; the caller detaches it between steps (truncated BPTT).
    """

    def __init__(self, options, vocab_size: int, dropout: float = 0.1, n_negative: int = 8192, seed: int = 0,
                 backend: str | None = None):
        super().__init__()
        self.sampler = LogUniformSampler(vocab_size, seed)
        self.n_negative = n_negative
        self.bilm = ElmoBiLm(options, requires_grad=True, stateful=False, backend=backend)
        P = self.bilm.options["lstm"]["projection_dim"]
        self.softmax_weight = nn.Parameter(torch.randn(vocab_size, P) / math.sqrt(P))
        self.softmax_bias = nn.Parameter(torch.zeros(vocab_size))
        self.dropout = dropout
        self.vocab_size = vocab_size

    def set_backend(self, backend: str | None) -> None:
        self.bilm.set_backend(backend)

    def encode(self, batch: Batch, state=None):
        """-> (forward top layer `[B, T, P]`, backward top layer `[B, T, P]`, new state)."""
        emb = self.bilm._token_embedder.encode_ids(batch.char_ids)  # [U, P]: each unique token once
        lstm = self.bilm._elmo_lstm
        f_state, b_state = (None, None) if state is None else state
        # index_select: a deterministic and faster backward than emb[index] (ops/encoder/function.py)
        fx, bx = (emb.index_select(0, i.reshape(-1)).view(*i.shape, -1) for i in (batch.fwd_index, batch.bwd_index))
        f_len, b_len = batch.fwd_mask.sum(1), batch.bwd_mask.sum(1)
        # Layer by layer, both stacks: each layer's two directions may run at once (run_layer).
        f_in, b_in, f_new, b_new = fx, bx, [], []
        for k, (fl, bl) in enumerate(zip(lstm.forward_layers, lstm.backward_layers)):
            (f_out, f_hc), (b_out, b_hc) = run_layer(
                fl, bl, F.dropout(f_in, self.dropout, self.training), F.dropout(b_in, self.dropout, self.training),
                (f_len, b_len), None if f_state is None else f_state[k], None if b_state is None else b_state[k])
            if k:
                f_out, b_out = f_out + f_in, b_out + b_in
            f_new.append(f_hc)
            b_new.append(b_hc)
            f_in, b_in = f_out, b_out
        return f_in, b_in, (f_new, b_new)

    def forward(self, batch: Batch, state=None, step: int | None = None):
        """Sampled-softmax losses for training step `step` (its negatives depend only on the seed and
        `step`), or full-softmax losses when `step` is None.

        Returns ((forward loss sum, backward loss sum, forward count, backward count), new state);
        sums are over scored targets, so the caller divides (and all-reduces) as it needs.
        """
        f_out, b_out, new_state = self.encode(batch, state)
        negatives = None
        if step is not None and self.n_negative < self.vocab_size:
            negatives = self.sampler.sample(self.n_negative, step, f_out.device)
        hs, ts = [], []
        for out, targets in ((f_out, batch.fwd_targets), (b_out, batch.bwd_targets)):
            keep = targets >= 0
            hs.append(F.dropout(out[keep], self.dropout, self.training))  # [N, P]
            ts.append(targets[keep])
        if negatives is None:
            losses = [full_softmax_loss(h, t, self.softmax_weight, self.softmax_bias) for h, t in zip(hs, ts)]
        else:
            # Both directions in one call: the softmax weight is gathered (and its gradient
            # scattered into a zeroed [V, P] tensor) once per step instead of four times, which
            # was 8 % of a 'tiny' CPU training step.
            h, t = torch.cat(hs), torch.cat(ts)
            true_logq = self.sampler.log_inclusion(t.cpu(), self.n_negative).to(h.device)
            rows = sampled_softmax_loss(h, t, self.softmax_weight, self.softmax_bias, *negatives, true_logq, reduction="none")
            losses = [rows[: hs[0].shape[0]].sum(), rows[hs[0].shape[0] :].sum()]
        counts = [(batch.fwd_targets >= 0).sum(), (batch.bwd_targets >= 0).sum()]
        return (losses[0], losses[1], counts[0], counts[1]), new_state


def full_softmax_loss(h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      chunk: int = 2048) -> torch.Tensor:
    """Sum of -log softmax(h W^T + b)[target] over `h` `[N, P]`, in chunks of rows to bound memory."""
    total = h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))
    for i in range(0, h.shape[0], chunk):
        logits = F.linear(h[i : i + chunk], weight, bias).to(total.dtype)  # fp32 at least (bf16 autocast)
        total = total + F.cross_entropy(logits, targets[i : i + chunk], reduction="sum")
    return total


def sampled_softmax_loss(h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         neg_ids: torch.Tensor, neg_logq: torch.Tensor, true_logq: torch.Tensor,
                         reduction: str = "sum") -> torch.Tensor:
    """Sampled softmax loss (Jean et al. 2015, as TF's `sampled_softmax_loss`): logits of the true
    class and of the shared negatives, each minus the log of its sampling probability; a negative
    equal to the row's target ("accidental hit") is removed.

    h `[N, P]`, targets `[N]`, neg_ids `[S]`, neg_logq `[S]`, true_logq `[N]` (log inclusion probabilities).
    Returns the sum over rows (reduction="sum") or the `[N]` per-row losses (reduction="none").
    """
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    N = targets.shape[0]
    rows = torch.cat([targets, neg_ids])  # one gather: one [V, P] gradient scatter in backward
    w, b = weight.index_select(0, rows), bias.index_select(0, rows)
    true_logits = (h * w[:N]).sum(-1) + b[:N] - true_logq.to(h.dtype)  # [N]
    neg_logits = F.linear(h, w[N:], b[N:]) - neg_logq.to(h.dtype)  # [N, S]
    neg_logits = neg_logits.masked_fill(targets[:, None] == neg_ids[None, :], float("-inf"))
    logits = torch.cat([true_logits[:, None], neg_logits], 1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least (bf16 autocast)
    per_row = torch.logsumexp(logits, 1) - logits[:, 0]
    return per_row.sum() if reduction == "sum" else per_row
