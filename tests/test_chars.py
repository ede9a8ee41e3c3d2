import random

import numpy as np
import pytest
import torch

from elmo_fast import batch_to_ids
from tests.numpy_elmo import char_ids_py


def _expected(batch):
    T = max((len(s) for s in batch), default=0)
    out = np.zeros((len(batch), T, 50), dtype=np.int64)
    for b, sent in enumerate(batch):
        for t, tok in enumerate(sent):
            out[b, t] = char_ids_py(tok)
    return out


def test_known_ids():
    ids = batch_to_ids([["a", "<S>", "</S>", ""]])[0]
    assert ids[0, :4].tolist() == [259, ord("a") + 1, 260, 261]
    assert ids[1, :4].tolist() == [259, 257, 260, 261]
    assert ids[2, :4].tolist() == [259, 258, 260, 261]
    assert ids[3, :3].tolist() == [259, 260, 261]
    assert (ids[:, 4:] == 261).all()


def test_edge_tokens_match_plain_mapping():
    batch = [
        ["x" * 60, "a" + "é" * 30, "日本語", "😀🎉", "a\u0301", "\udc80lone", "<S>", "</S>", "<s>", ""],
        [],
        ["The", "end", "."],
    ]
    got = batch_to_ids(batch)
    assert got.dtype == torch.int64 and got.shape == (3, 10, 50)
    assert np.array_equal(got.numpy(), _expected(batch))
    # a 2-byte character split at byte 48 keeps only its first byte
    assert got[0, 1, 48].item() == "é".encode()[0] + 1 and got[0, 1, 49].item() == 260


def test_random_unicode_batch_matches_plain_mapping():
    rng = random.Random(0)
    alphabet = "abcXYZ019.,;'\"-" + "éüßñ" + "αβγ" + "中文" + "😀🚀"
    batch = [[("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))) for _ in range(rng.randint(0, 30))]
             for _ in range(50)]
    assert np.array_equal(batch_to_ids(batch).numpy(), _expected(batch))


def test_all_empty_batch():
    ids = batch_to_ids([[], []])
    assert ids.shape == (2, 0, 50)


def test_any_iterable_of_tokens_is_accepted():
    batch = [["The", "cat", "."], ["Hi"]]
    expected = batch_to_ids(batch)
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.array(s) for s in batch]
    for same in (tuple(tuple(s) for s in batch), [np.array(s) for s in batch], (iter(s) for s in batch), ragged):
        assert torch.equal(batch_to_ids(same), expected)


@pytest.mark.parametrize("bad,err", [([], ValueError), ("a sentence", TypeError), (["a sentence"], TypeError),
                                     ([["ok", 3]], TypeError), (None, TypeError), ((s for s in []), ValueError),
                                     ([b"bytes"], TypeError), ([7], TypeError), ([["a", None]], TypeError)])
def test_bad_input_gives_clear_error(bad, err):
    with pytest.raises(err):
        batch_to_ids(bad)


def test_large_input_is_vectorised():
    # 100k tokens: a behavioural check that the vectorised path handles scale (no timing asserted)
    words = ["the", "cat", "sat", ",", "naïve", "x" * 55]
    batch = [[words[(i + j) % 6] for j in range(50)] for i in range(2000)]
    ids = batch_to_ids(batch)
    assert ids.shape == (2000, 50, 50)
    assert np.array_equal(ids[:3].numpy(), _expected(batch[:3]))
