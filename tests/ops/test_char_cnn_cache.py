"""Word-vector cache across batches: results equal the uncached encoder, bounded LRU, dropped when
any weight changes, bypassed when gradients are needed."""

from __future__ import annotations

import pytest
import torch

from elmo_fast.ops.encoder import WordVectorCache, char_cnn, char_cnn_ref
from elmo_fast.testing import assert_close, random_char_ids
from tests.ops.char_cnn_helpers import CPU_BACKENDS, flat, make_params


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cache_reuses_words_and_matches_reference(backend):
    params = make_params(n_highway=2)
    cache = WordVectorCache(max_entries=1000)
    a = random_char_ids(9, seed=1)
    b = torch.cat([a[2:7], random_char_ids(4, seed=2), torch.zeros(1, 50, dtype=torch.long)])
    with torch.no_grad():
        out_a = char_cnn(a, *params, "relu", backend=backend, cache=cache)
        assert (cache.hits, cache.misses, len(cache)) == (0, 9, 9)
        out_b = char_cnn(b, *params, "relu", backend=backend, cache=cache)
        assert (cache.hits, cache.misses) == (5, 14)
        assert_close("batch a", char_cnn_ref(a, *params, "relu"), out_a)
        assert_close("batch b", char_cnn_ref(b, *params, "relu"), out_b)
        assert char_cnn(b[:0], *params, "relu", backend=backend, cache=cache).shape == (0, 5)


def test_cache_is_bounded_lru():
    params = make_params()
    cache = WordVectorCache(max_entries=4)
    ids = random_char_ids(6, seed=3)
    with torch.no_grad():
        char_cnn(ids[:4], *params, cache=cache)
        char_cnn(ids[:1], *params, cache=cache)  # refresh row 0
        char_cnn(ids[4:6], *params, cache=cache)  # evicts the two least recently used (rows 1, 2)
        assert len(cache) == 4
        hits = cache.hits
        char_cnn(ids[[0, 3, 4, 5]], *params, cache=cache)
        assert cache.hits == hits + 4
        char_cnn(ids[[1]], *params, cache=cache)
        assert cache.hits == hits + 4


def test_cache_batch_larger_than_the_cache():
    """A batch with more new words than `max_entries`, and one mixing hits with evictions: the values
    are the reference's (hits are read before new words reuse their slots) and the bound holds."""
    params = make_params()
    cache = WordVectorCache(max_entries=3)
    ids = random_char_ids(8, seed=7)
    with torch.no_grad():
        for batch in (ids[:7], ids[[5, 6, 0, 1, 2]], ids[[6, 7, 3, 2]], ids):
            out = char_cnn(batch, *params, cache=cache)
            assert_close("over-full cache", char_cnn_ref(batch, *params).detach(), out)
            assert len(cache) == 3
    assert cache.hits > 0


def test_cache_invalidated_when_weights_change():
    params = make_params()
    cache = WordVectorCache()
    ids = random_char_ids(5, seed=4)
    with torch.no_grad():
        before = char_cnn(ids, *params, cache=cache)
        params[3][0].add_(0.5)  # an optimizer-style in-place update of a highway weight
        after = char_cnn(ids, *params, cache=cache)
    assert cache.hits == 0
    assert_close("after update", char_cnn_ref(ids, *params).detach(), after)
    assert not torch.allclose(before, after)


def test_cache_invalidated_by_two_storage_swaps():
    """The projection weight's storage replaced twice (`p.data = ...` keeps the version count): the
    second replacement used to land at the first storage's freed address and match the cache's
    signature (stale vectors in 4 of 20 trials); the cache now keeps those storages alive."""
    from elmo_fast.modules.char_encoder import ElmoCharacterEncoder
    from elmo_fast.testing import small_options

    ids = random_char_ids(6, seed=0)
    for trial in range(20):
        torch.manual_seed(trial)
        enc = ElmoCharacterEncoder(small_options(), backend="torch")
        enc.enable_word_cache()
        p = enc._projection.weight
        with torch.no_grad():
            enc.encode_ids(ids)
            p.data = torch.randn_like(p)
            p.data = torch.randn_like(p)
            cached = enc.encode_ids(ids)
            enc.word_cache = None
            assert torch.equal(cached, enc.encode_ids(ids)), f"trial {trial}: stale word vectors"


def test_cache_invalidated_by_a_fused_optimizer_step():
    """Fused optimizers write parameters without moving `_version`; elmo_fast's step hook moves it."""
    emb, ws, bs, hw, hb, pw, pb = make_params()
    param = lambda t: torch.nn.Parameter(t.detach().clone())  # noqa: E731
    args = (param(emb), [param(w) for w in ws], [param(b) for b in bs], [param(w) for w in hw], [param(b) for b in hb],
            param(pw), param(pb))
    opt = torch.optim.Adam(flat(args), lr=0.1, fused=True)
    cache = WordVectorCache()
    ids = random_char_ids(5, seed=4)
    with torch.no_grad():
        before = char_cnn(ids, *args, cache=cache)
    char_cnn(ids, *args).sum().backward()
    opt.step()
    with torch.no_grad():
        after = char_cnn(ids, *args, cache=cache)
    assert cache.hits == 0
    assert_close("after the fused step", char_cnn_ref(ids, *args).detach(), after)
    assert not torch.allclose(before, after)


def test_cache_bypassed_when_gradients_are_needed():
    params = make_params()
    cache = WordVectorCache()
    ids = random_char_ids(4, seed=5)
    out = char_cnn(ids, *params, cache=cache)
    assert len(cache) == 0 and out.requires_grad
    out.sum().backward()
    assert all(p.grad is not None for p in flat(params))


def test_module_word_cache():
    from elmo_fast.modules.char_encoder import ElmoCharacterEncoder
    from elmo_fast.testing import small_options

    enc = ElmoCharacterEncoder(small_options()).eval()
    x = random_char_ids(6, seed=6).view(2, 3, 50)
    with torch.no_grad():
        ref = enc(x)["token_embedding"]
        enc.enable_word_cache(100)
        enc(x)
        out = enc(x)["token_embedding"]
    assert enc.word_cache.hits > 0
    assert_close("cached module", ref, out)


def test_elmo_word_cache_matches_uncached_and_is_scoped(tmp_path):
    """`Elmo.enable_word_cache` (what `embed` and the classification features use through
    `ElmoBiLm.word_cache()`): same representations across batches that share words, hits counted,
    the scope leaves no cache behind, and fine-tuning bypasses it."""
    from elmo_fast import Elmo, batch_to_ids
    from elmo_fast.options import save_options
    from elmo_fast.testing import random_tf_weights, small_options, write_hdf5

    opts = small_options()
    save_options(opts, tmp_path / "options.json")
    write_hdf5(tmp_path / "weights.hdf5", random_tf_weights(opts, scale=0.5, seed=3))
    args = (str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5"), 1)
    batches = [batch_to_ids(b) for b in ([["the", "cat", "sat", "."], ["a", "dog", "."]], [["the", "dog", "ran", "."]])]
    plain = Elmo(*args, dropout=0.0, stateful=False)
    cached = Elmo(*args, dropout=0.0, stateful=False)
    cached.enable_word_cache(1000)
    enc = cached._elmo_lstm._token_embedder
    with torch.no_grad():
        for ids in batches:
            assert_close("cached Elmo", plain(ids)["elmo_representations"][0], cached(ids)["elmo_representations"][0])
    assert enc.word_cache.hits >= 4  # <S>, </S>, 'the', 'dog', '.' come back in the second batch
    bilm = plain._elmo_lstm
    with torch.no_grad(), bilm.word_cache(10) as cache:
        bilm(batches[0])
        assert len(cache) > 0
    assert bilm._token_embedder.word_cache is None
    tuned = Elmo(*args, requires_grad=True, dropout=0.0, stateful=False)
    tuned.enable_word_cache(1000)
    tuned(batches[0])["elmo_representations"][0].sum().backward()
    assert len(tuned._elmo_lstm._token_embedder.word_cache) == 0
    assert tuned._elmo_lstm._token_embedder._char_embedding_weights.grad is not None


def test_module_with_a_word_cache_saves_and_copies(tmp_path):
    """torch.save(elmo) failed once the cache held references to the weights' storages ("Cannot
    save multiple tensors or storages that view the same data as different types"); a saved or
    deep-copied module starts with an empty cache and computes the same vectors."""
    import copy

    from elmo_fast import Elmo, batch_to_ids
    from elmo_fast.testing import small_options

    elmo = Elmo(small_options(), None, 1, dropout=0.0, stateful=False)
    elmo.enable_word_cache(100)
    ids = batch_to_ids([["a", "b", "a"], ["c"]])
    with torch.no_grad():
        expected = elmo(ids)["elmo_representations"][0]
    torch.save(elmo, tmp_path / "elmo.pt")
    loaded = torch.load(tmp_path / "elmo.pt", weights_only=False)
    cache = loaded._elmo_lstm._token_embedder.word_cache
    assert cache is not None and len(cache) == 0
    for other in (loaded, copy.deepcopy(elmo)):
        with torch.no_grad():
            assert torch.equal(other(ids)["elmo_representations"][0], expected)
