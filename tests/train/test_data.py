"""Vocabulary and the streamed, stateful LM windows."""

import pytest
import torch

from elmo_fast.chars import tokens_to_char_ids
from elmo_fast.train.data import BOS, EOS, LMBatcher, Vocabulary


def _stream(lines):
    out = []
    for ln in lines:
        if ln.split():
            out += [BOS, *ln.split(), EOS]
    return out


def _row_tokens(batch, vocab_words, uniq_words, which):
    idx = getattr(batch, f"{which}_index")
    mask = getattr(batch, f"{which}_mask")
    return [[uniq_words[i] for i, m in zip(r.tolist(), mr.tolist()) if m] for r, mr in zip(idx, mask)]


def _uniq_words(batch):
    # recover each unique token's text from its char ids (bytes between begin- and end-of-word)
    words = []
    for row in batch.char_ids.tolist():
        if row[:3] == [259, 257, 260]:
            words.append(BOS)
        elif row[:3] == [259, 258, 260]:
            words.append(EOS)
        else:
            end = row.index(260)
            words.append(bytes(b - 1 for b in row[1:end]).decode())
    return words


def test_vocabulary(tmp_path, tiny_text):
    v = Vocabulary.build(tiny_text, min_count=1)
    assert v.words[:3] == ["<S>", "</S>", "<UNK>"]
    counts = {}
    for ln in open(tiny_text):
        for w in ln.split():
            counts[w] = counts.get(w, 0) + 1
    assert sorted(v.words[3:]) == sorted(counts)
    assert [counts[w] for w in v.words[3:]] == sorted(counts.values(), reverse=True)  # by frequency
    v5 = Vocabulary.build(tiny_text, max_size=5)
    assert v5.words == v.words[:5]
    rare = min(counts.values())
    assert all(counts[w] > rare for w in Vocabulary.build(tiny_text, min_count=rare + 1).words[3:])
    assert v.ids(["the", "never-seen"]) == [v.index["the"], v.unk]
    v.save(tmp_path / "vocab.txt")
    assert Vocabulary.load(tmp_path / "vocab.txt").words == v.words


def test_bad_inputs(tmp_path, tiny_text):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Vocabulary.build(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="contain no tokens"):
        Vocabulary.build(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="vocabulary has no words.*min_count"):
        Vocabulary.build(tiny_text, min_count=10**6)
    with pytest.raises(ValueError, match="too small"):
        Vocabulary.build(tiny_text, max_size=3)
    with pytest.raises(ValueError, match="too little text for 1000 batch rows"):
        LMBatcher(tiny_text, Vocabulary.build(tiny_text), 1000)


@pytest.mark.parametrize("B, T", [(3, 7), (1, 20)])
def test_windows_are_the_contiguous_stream(tiny_text, B, T):
    """Concatenating a row's forward windows gives its region's `<S> .. </S>` stream in order; the
    backward windows walk the same region from its end; targets are the next / previous token."""
    vocab = Vocabulary.build(tiny_text, max_size=30)
    lines = open(tiny_text).read().split("\n")
    full = _stream(lines)
    b = LMBatcher(tiny_text, vocab, B, T)
    fwd_rows, bwd_rows = [[] for _ in range(B)], [[] for _ in range(B)]
    for _ in range(6):
        batch = b.next_batch()
        words = _uniq_words(batch)
        assert torch.equal(batch.char_ids, torch.from_numpy(tokens_to_char_ids(words)))
        for r, (f, bw) in enumerate(zip(_row_tokens(batch, vocab.words, words, "fwd"), _row_tokens(batch, vocab.words, words, "bwd"))):
            assert len(f) == T and len(bw) == T
            ft = batch.fwd_targets[r].tolist()
            # target j is the token after input j (<S> after </S> is not scored)
            for j in range(T - 1):
                want = -1 if f[j + 1] == BOS else vocab.index.get(f[j + 1], vocab.unk)
                assert ft[j] == want
            bt = batch.bwd_targets[r].tolist()
            for j in range(1, T):
                want = -1 if bw[j - 1] == EOS else vocab.index.get(bw[j - 1], vocab.unk)
                assert bt[j] == want
            fwd_rows[r] += f
            bwd_rows[r] = bw + bwd_rows[r]
    # each row's forward stream is a contiguous piece of the corpus stream, rows in corpus order
    joined = " ".join(full)
    starts = []
    for r in range(B):
        assert " ".join(fwd_rows[r]) in joined
        assert " ".join(bwd_rows[r]) in joined
        starts.append(joined.index(" ".join(fwd_rows[r])))
    assert starts == sorted(starts) and starts[0] == 0
    assert bwd_rows[-1][-1] == EOS and " ".join(full).endswith(" ".join(bwd_rows[-1]))


def test_ranks_split_the_global_rows(tiny_text):
    vocab = Vocabulary.build(tiny_text)
    one = LMBatcher(tiny_text, vocab, 4, 5)
    two = [LMBatcher(tiny_text, vocab, 2, 5, rank=k, world=2) for k in range(2)]
    for _ in range(8):
        whole = one.next_batch()
        parts = [t.next_batch() for t in two]
        for name in ("fwd_targets", "bwd_targets", "fwd_mask"):
            assert torch.equal(getattr(whole, name), torch.cat([getattr(p, name) for p in parts]))
        for which in ("fwd", "bwd"):
            w = _row_tokens(whole, vocab.words, _uniq_words(whole), which)
            p = sum((_row_tokens(q, vocab.words, _uniq_words(q), which) for q in parts), [])
            assert w == p


def test_state_resumes_exactly(tiny_text):
    vocab = Vocabulary.build(tiny_text)
    a = LMBatcher(tiny_text, vocab, 3, 6)
    for _ in range(80):  # past the end of every region: wraps into the next epoch
        a.next_batch()
    assert a.epochs >= 1
    saved = a.state()
    expected = [a.next_batch() for _ in range(5)]
    b = LMBatcher(tiny_text, vocab, 3, 6)
    b.load_state(saved)
    for e in expected:
        g = b.next_batch()
        for f in e.__dataclass_fields__:
            assert torch.equal(getattr(e, f), getattr(g, f)), f
    c = LMBatcher(tiny_text, vocab, 2, 6)
    with pytest.raises(ValueError, match="data position"):
        c.load_state(saved)


def test_evaluation_pass_scores_every_token_once(tmp_path, tiny_text):
    # two files: the stream runs across the file boundary
    lines = open(tiny_text).read().split("\n")
    (tmp_path / "a.txt").write_text("\n".join(lines[:50]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[50:]))  # no final newline
    paths = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    vocab = Vocabulary.build(paths)
    b = LMBatcher(paths, vocab, 5, 9, train=False)
    n_f = n_b = 0
    fwd_targets, bwd_targets = [], []
    while (batch := b.next_batch()) is not None:
        n_f += int((batch.fwd_targets >= 0).sum())
        n_b += int((batch.bwd_targets >= 0).sum())
        fwd_targets += batch.fwd_targets[batch.fwd_targets >= 0].tolist()
        bwd_targets += batch.bwd_targets[batch.bwd_targets >= 0].tolist()
    expected = sum(len(ln.split()) + 1 for ln in lines if ln.split())  # words + the end marker
    assert n_f == n_b == expected
    assert sorted(fwd_targets) == sorted(vocab.ids(w for ln in lines if ln.split() for w in ln.split() + [EOS]))
    assert sorted(bwd_targets) == sorted(vocab.ids(w for ln in lines if ln.split() for w in ln.split() + [BOS]))
