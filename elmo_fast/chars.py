"""Character ids for ELMo, identical to AllenNLP's `batch_to_ids` / `ELMoCharacterMapper`.

Every token becomes 50 ids: begin-of-word, its UTF-8 bytes (at most 48), end-of-word, padding;
then +1 so that 0 can mean "no token". The conversion is vectorised with NumPy over the whole
batch: the text is encoded once, and token boundaries in bytes are derived from per-code-point
UTF-8 widths, so no per-token bytes objects are made.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import numpy as np
import torch

MAX_CHARS_PER_TOKEN = 50
# Raw (pre +1) ids, as in bilm-tf; the +1 shift is applied to whole rows below.
BOS_CHAR = 256  # sentence start
EOS_CHAR = 257  # sentence end
BOW_CHAR = 258  # begin of word
EOW_CHAR = 259  # end of word
PAD_CHAR = 260
BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"


def _special_row(char: int) -> np.ndarray:
    row = np.full(MAX_CHARS_PER_TOKEN, PAD_CHAR, dtype=np.int64)
    row[0], row[1], row[2] = BOW_CHAR, char, EOW_CHAR
    return row + 1


#: Final ids of the sentence-start / sentence-end tokens ([259, 257, 260, 261, ...] etc.).
BOS_IDS = _special_row(BOS_CHAR)
EOS_IDS = _special_row(EOS_CHAR)


def _utf8_width(codepoints: np.ndarray) -> np.ndarray:
    # Lone surrogates cannot be encoded and are dropped ("ignore"), hence width 0.
    width = np.where(codepoints < 0x80, 1, np.where(codepoints < 0x800, 2, np.where(codepoints < 0x10000, 3, 4)))
    surrogate = (codepoints >= 0xD800) & (codepoints < 0xE000)
    return np.where(surrogate, 0, width).astype(np.int64)


def tokens_to_char_ids(tokens: Sequence[str]) -> np.ndarray:
    """Char ids of a flat list of tokens: int64 `[N, 50]`, ids already shifted by +1."""
    n = len(tokens)
    out = np.full((n, MAX_CHARS_PER_TOKEN), PAD_CHAR + 1, dtype=np.int64)
    if n == 0:
        return out
    out[:, 0] = BOW_CHAR + 1
    text = "".join(tokens)
    char_len = np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    char_end = np.cumsum(char_len)
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
    byte_cum = np.concatenate([[0], np.cumsum(_utf8_width(codepoints))])
    tok_byte_start = byte_cum[char_end - char_len]
    tok_byte_len = byte_cum[char_end] - tok_byte_start
    data = np.frombuffer(text.encode("utf-8", "ignore"), dtype=np.uint8).astype(np.int64)
    kept = np.minimum(tok_byte_len, MAX_CHARS_PER_TOKEN - 2)
    # Scatter the kept bytes: token of every byte, and the byte's position inside its token.
    tok_of_byte = np.repeat(np.arange(n), tok_byte_len)
    pos = np.arange(data.size) - np.repeat(tok_byte_start, tok_byte_len)
    keep = pos < MAX_CHARS_PER_TOKEN - 2
    out[tok_of_byte[keep], pos[keep] + 1] = data[keep] + 1
    out[np.arange(n), kept + 1] = EOW_CHAR + 1
    # Literal boundary tokens map to the boundary rows, as in AllenNLP.
    for i, tok in enumerate(tokens):
        if tok == BOS_TOKEN:
            out[i] = BOS_IDS
        elif tok == EOS_TOKEN:
            out[i] = EOS_IDS
    return out


def _as_sentences(batch) -> list[list[str]]:
    """The batch as lists of tokens. Like AllenNLP, any iterable of iterables works (numpy arrays,
    generators); a bare str where a sentence belongs is refused, since iterating it would silently
    make every character a token."""
    if isinstance(batch, (str, bytes)) or not isinstance(batch, Iterable):
        raise TypeError(f"batch_to_ids expects a list of tokenized sentences (list[list[str]]), got {type(batch).__name__}")
    sentences = []
    for i, sentence in enumerate(batch):
        if isinstance(sentence, (str, bytes)):
            raise TypeError(
                f"sentence {i} is a {type(sentence).__name__}, not a list of tokens: tokenize it first, "
                f"e.g. batch_to_ids([{sentence[:20]!r}.split()])"
            )
        if not isinstance(sentence, Iterable):
            raise TypeError(f"sentence {i} is a {type(sentence).__name__}, expected a list of str tokens")
        sentences.append(sentence if isinstance(sentence, list) else list(sentence))
    if not sentences:
        raise ValueError("batch_to_ids got an empty batch: pass at least one sentence (an empty sentence [] is fine)")
    return sentences


def batch_to_ids(batch: Iterable[Iterable[str]]) -> torch.Tensor:
    """Convert tokenized sentences to ELMo character ids.

    Args:
        batch: `B` sentences, each a list of string tokens (an empty list is a valid empty sentence);
            any iterable of iterables of str works (tuples, numpy arrays, generators).

    Returns:
        int64 tensor `[B, T_max, 50]`; rows past a sentence's end are all zero.

    Example:
        >>> ids = batch_to_ids([["Hello", "world", "."], ["Hi"]])
        >>> ids.shape
        torch.Size([2, 3, 50])
    """
    batch = _as_sentences(batch)
    lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    flat = list(itertools.chain.from_iterable(batch))
    bad = [t for t in flat if not isinstance(t, str)][:1]  # a list: the bad token may itself be None
    if bad:
        raise TypeError(f"tokens must be str, got {type(bad[0]).__name__} ({bad[0]!r})")
    ids = tokens_to_char_ids(flat)
    t_max = int(lengths.max())
    out = np.zeros((len(batch), t_max, MAX_CHARS_PER_TOKEN), dtype=np.int64)
    rows = np.repeat(np.arange(len(batch)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = ids
    return torch.from_numpy(out)
