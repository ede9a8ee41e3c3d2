"""Classification at corpus scale: the layer cache spills to disk past its memory budget with the
same numbers, and `elmo-fast predict` labels new text with a trained classifier."""

import csv
import json
import os

import numpy as np
import pytest
import torch

from elmo_fast import ElmoBiLm
from elmo_fast.classify.data import LabeledTexts
from elmo_fast.classify.features import compute_layers
from elmo_fast.classify.train import classify
from elmo_fast.cli import main as cli_main
from elmo_fast.options import save_options
from elmo_fast.testing import random_tf_weights, small_options, write_hdf5

DOCS = [
    [["Stocks", "fell", "."], ["Oil", "rose", "sharply", "on", "Monday", "."]],
    [["One"]],
    [],  # empty document: one zero position
    [["A", "title"], ["The", "body", "has", "a", "sentence", "of", "nine", "tokens", "."], ["And", "another"]],
    [["x"] * 17, ["y", "z"]],
]

# Two topics with their own words, plus shared filler: a random-weight ELMo separates them well.
_TOPIC = [["goal", "match", "team", "coach", "league", "score", "season", "cup"],
          ["market", "shares", "bank", "profit", "stocks", "trade", "price", "oil"]]
_FILLER = ["the", "a", "on", "in", "said", "new", "year", "after", "of", "with"]


def synthetic(n: int, seed: int = 0) -> LabeledTexts:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    titles, texts = [], []
    for y in labels:
        words = lambda k: [str(rng.choice(_TOPIC[y] if rng.random() < 0.4 else _FILLER)) for _ in range(k)]  # noqa: E731
        titles.append(" ".join(words(int(rng.integers(3, 7)))).capitalize())
        texts.append(" ".join(words(int(rng.integers(5, 14)))).capitalize() + ". " + " ".join(words(4)).capitalize() + ".")
    return LabeledTexts(titles, texts, labels, ["Sports", "Business"])


@pytest.fixture(scope="module")
def bilm():
    torch.manual_seed(0)
    return ElmoBiLm(small_options(dim=20, proj=7), None, stateful=False, backend="torch")


def test_disk_cache_equals_memory(bilm, tmp_path):
    mem = compute_layers(bilm, DOCS, tokens_per_batch=16, progress=False)
    disk = compute_layers(bilm, DOCS, tokens_per_batch=16, progress=False, memory_budget=100, cache_dir=str(tmp_path / "c"))
    assert not mem.on_disk and disk.on_disk and disk.location == str(tmp_path / "c")
    assert os.listdir(tmp_path / "c") == []  # the file is unlinked while open: nothing to leave behind
    assert disk.nbytes == mem.nbytes and torch.equal(disk.offsets, mem.offsets)
    assert (disk.num_layers, disk.dim) == (mem.num_layers, mem.dim)
    assert torch.equal(disk.layers, mem.layers)
    for idx in ([0], [2], [4, 1, 3], [3, 2, 0, 1, 4]):
        (a, ma), (b, mb) = mem.batch(idx), disk.batch(idx)
        assert torch.equal(a, b) and torch.equal(ma, mb)
    assert torch.equal(disk.tokens(3, 7), mem.tokens(3, 7))
    for k in (200_000, 4):  # every token, and every 10th (43 tokens)
        for x, y in zip(mem.layer_stats(k), disk.layer_stats(k)):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    # the statistics are those of the strided tokens
    m, s = mem.layer_stats(4)
    ref = mem.layers[:, ::10].double()
    torch.testing.assert_close(m, ref.mean(1).float())
    torch.testing.assert_close(s, ref.std(1).float())
    disk.close()


def test_budget_decides_per_split(bilm, tmp_path):
    cache = compute_layers(bilm, DOCS, progress=False, memory_budget=10**9, cache_dir=str(tmp_path))
    assert not cache.on_disk
    with pytest.raises(OSError, match="pass a writable --cache-dir"):
        (tmp_path / "file").write_text("")
        compute_layers(bilm, DOCS, progress=False, memory_budget=0, cache_dir=str(tmp_path / "file" / "sub"))


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("elmo")
    opts = small_options(dim=32, proj=16, n_highway=1, filters=((1, 16), (2, 16), (3, 32)))
    save_options(opts, root / "options.json")
    write_hdf5(root / "weights.hdf5", random_tf_weights(opts, scale=0.5, seed=0))
    return root


def _classify(elmo_dir, out, train, test, **kw):
    bilm = ElmoBiLm(str(elmo_dir / "options.json"), str(elmo_dir / "weights.hdf5"), stateful=False, backend="torch")
    return classify(train, test, bilm, str(out), encoder="pool", hidden=16, max_epochs=4, patience=4, lr=5e-3,
                    baseline=False, progress=False, log=lambda *a: None, elmo=str(elmo_dir), **kw)


def test_classify_with_a_tiny_budget_equals_in_memory(elmo_dir, tmp_path):
    train, test = synthetic(160, seed=1), synthetic(60, seed=2)
    a = _classify(elmo_dir, tmp_path / "mem", train, test, memory_budget=None)
    b = _classify(elmo_dir, tmp_path / "disk", train, test, memory_budget=1, cache_dir=str(tmp_path / "spill"))
    assert a["accuracy"] == b["accuracy"] and a["training"]["history"] == b["training"]["history"]
    assert (tmp_path / "mem" / "predictions.csv").read_text() == (tmp_path / "disk" / "predictions.csv").read_text()
    sa, sb = (torch.load(tmp_path / d / "classifier.pt", weights_only=True) for d in ("mem", "disk"))
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert os.listdir(tmp_path / "spill") == []


def _write_csv(path, data, labels=True):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for y, t, d in zip(data.labels, data.titles, data.texts):
            w.writerow(([int(y) + 1] if labels else []) + [t, d])


@pytest.fixture(scope="module")
def trained(elmo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    train, test = synthetic(200, seed=3), synthetic(80, seed=4)
    _write_csv(root / "train.csv", train)
    _write_csv(root / "test.csv", test)
    rc = cli_main(["classify", "--train", str(root / "train.csv"), "--test", str(root / "test.csv"), "--elmo", str(elmo_dir),
                   "--out", str(root / "out"), "--encoder", "pool", "--hidden", "16", "--epochs", "6", "--lr", "5e-3",
                   "--no-baseline", "--no-progress", "--backend", "torch", "--cache-memory", "0", "--cache-dir", str(root / "spill")])
    assert rc == 0
    return root, test


def test_predict_reproduces_the_test_predictions(trained, tmp_path, capsys):
    root, test = trained
    out = tmp_path / "labels.csv"
    rc = cli_main(["predict", "--model", str(root / "out"), "--input", str(root / "test.csv"), "--output", str(out),
                   "--no-progress", "--backend", "torch"])
    assert rc == 0
    m = json.loads((root / "out" / "metrics.json").read_text())
    assert f"accuracy {m['accuracy']:.4f}" in capsys.readouterr().out
    rows = list(csv.reader(open(out, encoding="utf-8")))
    assert rows[0] == ["row", "predicted", "confidence", "true", "p_1", "p_2"]
    ref = list(csv.reader(open(root / "out" / "predictions.csv", encoding="utf-8")))[1:]
    assert len(rows) - 1 == len(ref) == len(test)
    for got, want in zip(rows[1:], ref):
        assert got[0] == want[0] and got[1] == want[2] and got[3] == want[1]
        assert abs(float(got[2]) - float(want[3])) <= 2e-4
        assert abs(float(got[4]) + float(got[5]) - 1) < 1e-4
    assert [p for p in os.listdir(tmp_path) if p != "labels.csv"] == []  # no temporary file left

    # the same documents as unlabelled CSV (title, description) and as text, one per line, in chunks
    from elmo_fast.classify.predict import predict_file

    _write_csv(tmp_path / "nolabel.csv", test, labels=False)
    r = predict_file(root / "out", tmp_path / "nolabel.csv", tmp_path / "b.csv", backend="torch", progress=False, chunk_docs=7)
    assert r["n"] == len(test) and "accuracy" not in r
    b = list(csv.reader(open(tmp_path / "b.csv", encoding="utf-8")))
    assert b[0] == ["row", "predicted", "confidence", "p_1", "p_2"]
    assert [x[1] for x in b[1:]] == [x[1] for x in rows[1:]]
    (tmp_path / "docs.txt").write_text("".join(f"{t}. {d}\n" for t, d in zip(test.titles, test.texts)), encoding="utf-8")
    r = predict_file(root / "out", tmp_path / "docs.txt", tmp_path / "c.csv", backend="torch", progress=False)
    assert r["n"] == len(test) and r["input_kind"] == "txt"


def test_predict_bad_input(trained, tmp_path, capsys):
    root, _ = trained

    def err(*argv):
        rc = cli_main(["predict", *argv, "--no-progress"])
        e = capsys.readouterr().err.strip()
        assert rc != 0 and len(e.splitlines()) == 1, e
        return e

    model, out = ["--model", str(root / "out")], ["--output", str(tmp_path / "o.csv")]
    assert "classifier.pt does not exist; --model is the --out folder" in err("--model", str(tmp_path), "--input", str(root / "test.csv"), *out)
    (tmp_path / "blank.txt").write_text("one doc\n\nanother\n")
    assert "line 2 is blank" in err(*model, "--input", str(tmp_path / "blank.txt"), *out)
    assert "does not exist; create it first (mkdir -p" in err(*model, "--input", str(root / "test.csv"), "--output",
                                                              str(tmp_path / "nodir" / "o.csv"))
    assert "input file" in err(*model, "--input", str(tmp_path / "missing.csv"), *out)
    e = err(*model, "--input", str(root / "test.csv"), *out, "--elmo", "orignal")
    assert "published model" in e and "original-5.5B" in e
    assert not (tmp_path / "o.csv").exists()
