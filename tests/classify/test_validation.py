"""`elmo-fast classify` and `classify()` refuse unusable input up front, with one line: before any
ELMo features are computed (here the biLM loader and the feature cache fail the test if reached)."""

import csv

import numpy as np
import pytest
import torch

import elmo_fast.classify.train as train_mod
from elmo_fast.classify.data import load_csv
from elmo_fast.classify.features import LayerCache
from elmo_fast.classify.train import classify, train_head
from elmo_fast.cli import main as cli_main

WORDS = [["goal", "match", "team"], ["vote", "party", "law"], ["stock", "market", "bank"], ["chip", "robot", "code"]]


def _csv(path, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i, y in enumerate(labels):
            words = WORDS[(int(y) - 1) % 4]
            w.writerow([y, f"{words[i % 3]} news {i}", " ".join(words)])
    return str(path)


@pytest.fixture
def no_features(monkeypatch):
    """Reaching the biLM or the feature cache means a check came too late."""
    def reached(*args, **kwargs):
        raise AssertionError("ELMo loaded / features computed before the input was checked")

    monkeypatch.setattr(train_mod, "load_bilm", reached)
    monkeypatch.setattr(train_mod, "compute_layers", reached)
    monkeypatch.setattr(train_mod, "tokenize_documents", reached)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "data").mkdir()
    return {"train": _csv(tmp_path / "data" / "train.csv", [1, 2, 3, 4] * 6),
            "test": _csv(tmp_path / "data" / "test.csv", [1, 2, 3, 4] * 2), "out": str(tmp_path / "out"), "root": tmp_path}


def _cli(files, *extra, train=None, test=None, out=None):
    return cli_main(["classify", "--train", train or files["train"], "--test", test or files["test"], "--elmo",
                     str(files["root"] / "elmo"), "--out", out or files["out"], "--no-progress", *extra])


def _one_line_error(capsys, rc, *words, status=2):
    """`status` 2: a bad option (a usage error); 1: data or an output location that cannot be used."""
    err = capsys.readouterr().err
    assert rc == status, err
    assert err.startswith("elmo-fast classify: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("flag, value, words", [
    ("--max-tokens", "0", "--max-tokens must be an integer >= 1, got 0"),
    ("--epochs", "0", "--epochs must be an integer >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1, got 0"),
    ("--hidden", "0", "--hidden must be"),
    ("--patience", "0", "--patience must be"),
    ("--seed", "-1", "--seed must be an integer >= 0"),
    ("--finetune-epochs", "-1", "--finetune-epochs must be an integer >= 0"),
    ("--lr", "0", "--lr must be a number > 0"),
    ("--lr", "nan", "--lr must be a number > 0"),
    ("--finetune-lr", "-1e-4", "--finetune-lr must be a number > 0"),
    ("--dropout", "1", "--dropout must be in [0, 1)"),
    ("--valid-fraction", "1", "--valid-fraction must be a fraction between 0 and 1"),
    ("--device", "gpu0", "unknown device 'gpu0'"),
])
def test_cli_rejects_bad_options_up_front(files, capsys, no_features, flag, value, words):
    _one_line_error(capsys, _cli(files, f"{flag}={value}"), words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_rejects_cuda_without_cuda(files, capsys, no_features):
    _one_line_error(capsys, _cli(files, "--device", "cuda"), "no CUDA GPU is available")


def test_cli_checks_the_output_location_up_front(files, capsys, no_features):
    """--out naming a file used to fail with FileExistsError after all the training."""
    afile = files["root"] / "afile"
    afile.write_text("")
    _one_line_error(capsys, _cli(files, out=str(afile)), "exists and is not a directory", status=1)
    _one_line_error(capsys, _cli(files, out=str(afile / "sub")), "cannot be created", "is a file", status=1)


def test_cli_label_typo_is_an_error(files, capsys, no_features):
    labels = [1, 2, 3, 4] * 6
    labels[5] = 10
    train = _csv(files["root"] / "data" / "train.csv", labels)
    _one_line_error(capsys, _cli(files, train=train), "row 6: class index 10", "exactly 1..K", "classes.txt", status=1)


def test_cli_single_training_class(files, capsys, no_features):
    """One training class used to train and report (with --classes) or fail late in the baseline."""
    train = _csv(files["root"] / "data" / "train.csv", [1] * 12)
    classes = files["root"] / "classes4.txt"
    classes.write_text("World\nSports\nBusiness\nSci/Tech\n")
    _one_line_error(capsys, _cli(files, "--classes", str(classes), train=train), "single class (World)", "at least 2 classes", status=1)
    # Without classes.txt the test file's class 2 was blamed ("outside 1..1"); the training data is at fault.
    _one_line_error(capsys, _cli(files, train=train), "single class (1)", status=1)


def test_cli_test_class_missing_from_training(files, capsys, no_features):
    train = _csv(files["root"] / "data" / "train.csv", [1, 2, 3] * 6)
    err = _one_line_error(capsys, _cli(files, train=train), "test.csv: row 4: class index 4 is outside 1..3",
                          "has class indices 1..3 and no classes.txt", status=1)
    assert "names 3 classes" not in err


def _tiny_data(tmp_path, labels):
    return load_csv(_csv(tmp_path / "d.csv", labels))


def test_classify_checks_before_features(tmp_path, no_features):
    train, test = _tiny_data(tmp_path, [1, 2] * 6), _tiny_data(tmp_path, [1, 2])
    with pytest.raises(ValueError, match="max_epochs must be an integer >= 1, got 0"):
        classify(train, test, None, max_epochs=0)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1"):
        classify(train, test, None, max_tokens=0)
    with pytest.raises(ValueError, match="encoder must be one of bilstm, pool"):
        classify(train, test, None, encoder="cnn")
    with pytest.raises(ValueError, match="single class"):
        classify(train.subset(np.nonzero(train.labels == 0)[0]), test, None)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        classify(train, test, None, str(tmp_path / "afile"))
    bad = test.subset([0, 1])
    bad.labels[1] = 7
    with pytest.raises(ValueError, match="test data .* label 7, outside the 2 training classes"):
        classify(train, bad, None)


def test_check_options_accepts_the_defaults():
    from elmo_fast.classify.train import check_options

    check_options(valid_fraction=0.1, max_tokens=None, encoder="pool", hidden=1, max_epochs=1, patience=1, batch_size=1,
                  lr=1e-3, dropout=0.0, seed=0, finetune_epochs=0, finetune_lr=1e-4)
    check_options(valid_fraction=20)  # a row count, as stratified_split takes it
    with pytest.raises(TypeError, match="unexpected option 'epochs'"):
        check_options(epochs=3)


def test_train_head_rejects_zero_epochs_and_batch_size():
    """train_head(max_epochs=0) used to end in 'Expected state_dict to be dict-like, got NoneType'."""
    cache = LayerCache(torch.randn(2, 4, 3), torch.tensor([0, 2, 4]))
    y = np.array([0, 1])
    for kw, name in (({"max_epochs": 0}, "max_epochs"), ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1"):
            train_head(cache, y, cache, y, 2, progress=False, log=lambda *_: None, **kw)
