"""The classifier head and the frozen-ELMo layer cache against the modules they stand for."""

import pytest
import torch

from elmo_fast import ElmoBiLm, batch_to_ids
from elmo_fast.classify.features import LayerCache, compute_layers
from elmo_fast.classify.model import ElmoClassifierHead, masked_pool
from elmo_fast.classify.text import document_sentences
from elmo_fast.testing import assert_close, small_options
from tests.classify.helpers import DOCS


@pytest.fixture(scope="module")
def bilm():
    torch.manual_seed(0)
    return ElmoBiLm(small_options(dim=20, proj=7), None, stateful=False, backend="torch")


def test_layer_cache_equals_bilm_per_sentence(bilm):
    cache = compute_layers(bilm, DOCS, tokens_per_batch=8, dtype=torch.float32, progress=False)
    assert len(cache) == 4 and cache.num_layers == 3 and cache.dim == 14
    assert cache.lengths().tolist() == [9, 1, 1, 13]
    with torch.no_grad():
        for d, doc in enumerate(DOCS):
            got = cache.layers[:, cache.offsets[d] : cache.offsets[d + 1]]
            if not doc:
                assert (got == 0).all()
                continue
            # each sentence alone, boundaries removed, concatenated in order
            ref = torch.cat([torch.stack(bilm(batch_to_ids([s]))["activations"])[:, 0, 1:-1] for s in doc], 1)
            assert_close(f"doc {d}", ref, got, atol=1e-5, rtol=1e-4)


def test_layer_cache_batch_and_roundtrip(bilm, tmp_path):
    cache = compute_layers(bilm, DOCS, progress=False)
    assert cache.layers.dtype == torch.float16
    layers, mask = cache.batch([3, 1])
    assert layers.shape == (3, 2, 13, 14) and mask.sum(1).tolist() == [13, 1]
    assert (layers[:, 1, 1:] == 0).all()
    assert torch.equal(layers[:, 0], cache.layers[:, cache.offsets[3] : cache.offsets[4]].float())
    cache.save(tmp_path / "c.safetensors")
    back = LayerCache.load(tmp_path / "c.safetensors")
    assert torch.equal(back.layers, cache.layers) and torch.equal(back.offsets, cache.offsets)


def test_document_sentences_truncates_and_keeps_title_first():
    sents = document_sentences("Big news today", "First sentence here. Second one follows.", max_tokens=6)
    assert sents[0] == ["Big", "news", "today"] and sum(map(len, sents)) == 6
    assert document_sentences("", "") == []


@pytest.mark.parametrize("encoder", ["bilstm", "pool"])
def test_head_ignores_padding_and_trains_every_parameter(encoder):
    torch.manual_seed(0)
    head = ElmoClassifierHead(3, 10, 5, encoder=encoder, hidden=6, dropout=0.0)
    layers = torch.randn(3, 2, 7, 10)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4], dtype=torch.bool)
    out = head(layers, mask)
    assert out.shape == (2, 5)
    garbage = layers.clone()
    garbage[:, 1, 3:] = 1e3 * torch.randn(3, 4, 10)
    assert_close("padding", out, head(garbage, mask))
    alone = head(layers[:, 1:, :3], mask[1:, :3])
    assert_close("shorter batch", out[1:], alone)
    out.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_masked_pool():
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_pool(x, mask).tolist() == [[3.0, 4.0, 2.0, 1.0]]


def test_unknown_encoder():
    with pytest.raises(ValueError, match="unknown encoder 'cnn'"):
        ElmoClassifierHead(3, 10, 4, encoder="cnn")
