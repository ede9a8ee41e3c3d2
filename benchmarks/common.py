"""Shared benchmark inputs: real text batches from ../shared/data/lm_corpus, random unique words,
and random-weight models for the published option sets. Fast and eager run in one process, side by
side, so ratios are taken under the same machine load."""

from __future__ import annotations

import os
import random

import pytest
import torch

from elmo_fast.chars import batch_to_ids
from elmo_fast.options import PRESETS

SHARED_DATA = os.environ.get("ELMO_FAST_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
LM_CORPUS = os.path.join(SHARED_DATA, "lm_corpus", "valid.txt")
SHAPES = [(32, 20), (64, 40)]  # (sentences, words per sentence)


def real_text_batch(batch: int, words: int, seed: int = 0) -> list[list[str]]:
    """`batch` windows of `words` consecutive tokens of real text (lm_corpus valid split)."""
    if not os.path.exists(LM_CORPUS):
        pytest.skip(f"real text not found at {LM_CORPUS}")
    with open(LM_CORPUS, encoding="utf-8") as f:
        tokens = f.read().split()
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(tokens) - words) for _ in range(batch)]
    return [tokens[s : s + words] for s in starts]


def unique_words_batch(batch: int, words: int, seed: int = 0) -> list[list[str]]:
    """Random words, all distinct, so deduplication cannot help: measures the kernel alone."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    seen: set[str] = set()
    while len(seen) < batch * words:
        seen.add("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12))))
    flat = sorted(seen)
    rng.shuffle(flat)
    return [flat[i * words : (i + 1) * words] for i in range(batch)]


def char_ids(batch: list[list[str]]) -> torch.Tensor:
    return batch_to_ids(batch)


def options(name: str) -> dict:
    return PRESETS[name]


def tokens_per_second(benchmark, n_tokens: int) -> None:
    """Record tokens/s next to pytest-benchmark's timings (in the JSON's extra_info)."""
    benchmark.extra_info["tokens"] = n_tokens
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None and stats.mean:
        benchmark.extra_info["tokens_per_s"] = n_tokens / stats.mean
