"""Tokenization of classifier inputs exactly like the pretraining corpus (`elmo_fast.tokenizer`)."""

from __future__ import annotations

import re
import warnings

try:
    from ..tokenizer import split_sentences as _split_sentences, tokenize as _tokenize
except ImportError:  # the tokenizer ships with the pretraining workflow; keep classify importable without it
    _tokenize = _split_sentences = None

# Fallback only: words with internal - ' &, numbers, single punctuation (close to the corpus rules).
_FALLBACK = re.compile(r"\d[\d.,:]*\w*|\w+(?:[-'&]\w+)*|\.{2,}|-{2,}|\S")
_warned = False


def _fallback_warn():
    global _warned
    if not _warned:
        warnings.warn("elmo_fast.tokenizer is not available; using a simple regex tokenizer that only approximates "
                      "the pretraining corpus", stacklevel=3)
        _warned = True


def tokenize(text: str) -> list[str]:
    if _tokenize is not None:
        return _tokenize(text)
    _fallback_warn()
    return _FALLBACK.findall(text)


def split_sentences(text: str) -> list[list[str]]:
    if _split_sentences is not None:
        return [s for s in _split_sentences(text) if s]
    _fallback_warn()
    toks = _FALLBACK.findall(text)
    out, cur = [], []
    for i, t in enumerate(toks):
        cur.append(t)
        if t in (".", "!", "?") and i + 1 < len(toks) and toks[i + 1][:1].isupper():
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def document_sentences(title: str, text: str, max_tokens: int | None = None) -> list[list[str]]:
    """A document as ELMo input: the title as one sentence, then the description's sentences,
    cut after `max_tokens` tokens in all (long articles: the lead carries the topic)."""
    sents = ([tokenize(title)] if title else []) + (split_sentences(text) if text else [])
    sents = [s for s in sents if s]
    if max_tokens is not None:
        out, left = [], max_tokens
        for s in sents:
            if left <= 0:
                break
            out.append(s[:left])
            left -= len(out[-1])
        sents = out
    return sents
