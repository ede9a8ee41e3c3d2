"""Fine-tuning the biLM with the classifier head: the on-the-fly document layers equal the frozen
cache, gradients reach every biLM weight, the best epoch (frozen start included) is kept, and the
CLI reports both the frozen and the fine-tuned result."""

import json

import numpy as np
import pytest
import torch

from elmo_fast import ElmoBiLm
from elmo_fast.classify.features import compute_layers
from elmo_fast.classify.finetune import document_layers, finetune, predict_documents
from elmo_fast.classify.model import ElmoClassifierHead
from elmo_fast.testing import assert_close, small_options
from tests.classify.helpers import DOCS


@pytest.fixture(params=["torch", "cpp"])
def bilm(request):
    from elmo_fast._backend import available_backends

    if request.param not in available_backends("cpu"):
        pytest.skip(f"backend {request.param} not built")
    torch.manual_seed(0)
    return ElmoBiLm(small_options(dim=20, proj=7), None, stateful=False, backend=request.param)


def test_document_layers_equal_the_frozen_cache(bilm):
    cache = compute_layers(bilm, DOCS, tokens_per_batch=8, dtype=torch.float32, progress=False)
    idx = [3, 0, 2, 1]  # any order, incl. the empty document
    ref_layers, ref_mask = cache.batch(idx)
    with torch.no_grad():
        layers, mask = document_layers(bilm, [DOCS[i] for i in idx])
    assert torch.equal(mask, ref_mask)
    assert_close("document layers", ref_layers, layers, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_bilm_weight(bilm):
    for p in bilm.parameters():
        p.requires_grad_(True)
    layers, mask = document_layers(bilm, DOCS)
    (layers * torch.randn_like(layers)).sum().backward()
    for name, p in bilm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def _docs(n, seed):
    """Two separable 'topics' of random-length documents."""
    rng = np.random.default_rng(seed)
    words = [["goal", "match", "team", "win", "league"], ["vote", "party", "minister", "law", "election"]]
    docs, y = [], []
    for i in range(n):
        c = i % 2
        docs.append([[str(w) for w in rng.choice(words[c] + ["the", "a", "."], size=rng.integers(3, 9))]
                     for _ in range(rng.integers(1, 3))])
        y.append(c)
    return docs, np.array(y)


def test_finetune_keeps_the_best_epoch_and_freezes_after(bilm):
    train_docs, y_train = _docs(40, 0)
    valid_docs, y_valid = _docs(16, 1)
    torch.manual_seed(0)
    head = ElmoClassifierHead(bilm.num_layers, bilm.get_output_dim(), 2, encoder="pool", hidden=8, dropout=0.0)
    p0 = predict_documents(bilm, head, valid_docs)
    start_loss = float(-np.log(p0[np.arange(16), y_valid]).mean())
    before = {k: v.clone() for k, v in bilm.state_dict().items()}
    info = finetune(bilm, head, train_docs, y_train, valid_docs, y_valid, epochs=3, lr_bilm=3e-3, lr_head=3e-3,
                    batch_size=8, patience=3, progress=False, log=lambda *_: None)
    assert info["history"][0]["valid_loss"] == pytest.approx(start_loss, rel=1e-5)
    assert info["valid_loss"] == min(h["valid_loss"] for h in info["history"]) <= start_loss
    p1 = predict_documents(bilm, head, valid_docs)
    assert float(-np.log(p1[np.arange(16), y_valid]).mean()) == pytest.approx(info["valid_loss"], rel=1e-5)
    changed = any(not torch.equal(before[k], v) for k, v in bilm.state_dict().items())
    assert changed == (info["best_epoch"] > 0)
    assert info["best_epoch"] > 0, "three epochs on separable topics should improve on a random head"
    assert not any(p.requires_grad for p in bilm.parameters())


def test_cli_finetune(tmp_path):
    from elmo_fast.classify.data import load_csv, stratified_split
    from elmo_fast.cli import main as cli_main
    from elmo_fast.options import save_options
    from elmo_fast.testing import random_tf_weights, write_hdf5
    from tests.classify.test_pipeline import _write_rows
    from tests.conftest import shared_data

    data = load_csv(shared_data("ag_news", "sample.csv"))
    data = data.subset(np.nonzero(data.labels < 2)[0])
    data.class_names = data.class_names[:2]
    rest, test = stratified_split(data, 40, seed=2)
    _, train = stratified_split(rest, 120, seed=2)
    _write_rows(tmp_path / "train.csv", train)
    _write_rows(tmp_path / "test.csv", test)
    opts = small_options(dim=16, proj=8, n_highway=1, filters=((1, 8), (2, 8), (3, 16)))
    save_options(opts, tmp_path / "options.json")
    write_hdf5(tmp_path / "weights.hdf5", random_tf_weights(opts, scale=0.5, seed=0))
    out = tmp_path / "out"
    rc = cli_main(["classify", "--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--elmo", str(tmp_path),
                   "--out", str(out), "--encoder", "pool", "--epochs", "3", "--max-tokens", "24", "--finetune-epochs", "1",
                   "--no-progress", "--no-baseline", "--bow"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["elmo_frozen"]) == {"accuracy", "macro_f1"} and m["training"]["finetune"]["epochs"] == 1
    assert m["n_test"] == 40 and 0 <= m["elmo_only"]["accuracy"] <= 1
    report = (out / "report.txt").read_text()  # the parts of the combination, not only its score
    assert f"ELMo alone: accuracy {m['elmo_only']['accuracy']:.4f}" in report
    assert f"bag-of-words alone: accuracy {m['bow_only']['accuracy']:.4f}" in report
    state = torch.load(out / "classifier.pt", weights_only=False)
    assert "bilm_state_dict" in state and "_token_embedder._char_embedding_weights" in state["bilm_state_dict"]
