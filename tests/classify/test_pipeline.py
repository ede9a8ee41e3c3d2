"""`elmo-fast classify` end to end on a slice of the AG News sample, with a tiny random-weight ELMo.

A random biLM still encodes word identity through its character CNN, so a classifier on it must
beat chance by a wide margin. Measured (this host): on World vs Sports, 432 training rows, 200 test
rows, the classifier reaches 0.765 with these weights and 0.755-0.80 over weight seeds 0-2 (chance
0.5; TF-IDF + SVM 0.9+). A random biLM on the 4-class slice only
reaches ~0.42, too close to chance (0.25) for a test with margin, hence 2 classes here.
"""

import csv
import json

import numpy as np
import pytest
import torch

from elmo_fast.classify.data import load_csv, stratified_split
from elmo_fast.cli import main as cli_main
from elmo_fast.options import save_options
from elmo_fast.testing import random_tf_weights, small_options, write_hdf5
from tests.conftest import shared_data

ACCURACY_FLOOR = 0.65


def _write_rows(path, data):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for y, t, d in zip(data.labels, data.titles, data.texts):
            w.writerow([int(y) + 1, t, d])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sample = shared_data("ag_news", "sample.csv")
    data = load_csv(sample)
    data = data.subset(np.nonzero(data.labels < 2)[0])  # World (1), Sports (2)
    data.class_names = data.class_names[:2]
    rest, test = stratified_split(data, 200, seed=1)
    _, train = stratified_split(rest, 480, seed=1)
    root = tmp_path_factory.mktemp("ag")
    _write_rows(root / "train.csv", train)
    _write_rows(root / "test.csv", test)
    (root / "classes.txt").write_text("\n".join(data.class_names) + "\n")
    opts = small_options(dim=32, proj=32, n_highway=1, filters=((1, 16), (2, 16), (3, 32), (4, 32)))
    save_options(opts, root / "options.json")
    write_hdf5(root / "weights.hdf5", random_tf_weights(opts, scale=0.5, seed=0))
    out = root / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation on a shared CI host
    try:
        rc = cli_main(["classify", "--train", str(root / "train.csv"), "--test", str(root / "test.csv"), "--elmo", str(root),
                   "--out", str(out), "--encoder", "pool", "--epochs", "25", "--lr", "5e-3", "--dropout", "0.1", "--patience", "6", "--max-tokens", "48",
                       "--no-progress", "--backend", "torch"])
    finally:
        torch.set_num_threads(threads)
    return rc, out, test


def test_classify_beats_chance(run, capsys):
    rc, out, test = run
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    print(f"AG slice accuracy {m['accuracy']:.3f}, TF-IDF {m['tfidf_svm']['accuracy']:.3f}")
    assert m["accuracy"] >= ACCURACY_FLOOR, m["accuracy"]
    assert 0 <= m["macro_f1"] <= 1 and m["n_test"] == 200
    assert m["training"]["best_epoch"] >= 1


def test_report_files(run):
    rc, out, test = run
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["per_class"]) == {"World", "Sports"}
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == 200 and cm.sum(1).tolist() == np.bincount(test.labels).tolist()
    assert abs(np.trace(cm) / 200 - m["accuracy"]) < 1e-9
    with open(out / "confusion_matrix.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader(open(out / "predictions.csv")))
    assert len(rows) == 201 and rows[0] == ["row", "true", "predicted", "confidence"]
    assert np.mean([r[1] == r[2] for r in rows[1:]]) == pytest.approx(m["accuracy"])
    assert "accuracy" in (out / "report.txt").read_text()
    assert (out / "classifier.pt").exists()


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "t.csv").write_text('"1","a","b"\n"x","c","d"\n')
    rc = cli_main(["classify", "--train", str(tmp_path / "t.csv"), "--test", str(tmp_path / "t.csv"), "--elmo", str(tmp_path),
                   "--out", str(tmp_path / "o")])
    assert rc == 1 and "row 2" in capsys.readouterr().err  # bad data: a runtime error
    (tmp_path / "t.csv").write_text('"1","a","b"\n"2","c","d"\n')
    rc = cli_main(["classify", "--train", str(tmp_path / "t.csv"), "--test", str(tmp_path / "t.csv"), "--elmo",
                   str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "options.json and weights.hdf5" in err
