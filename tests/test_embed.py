"""`elmo-fast embed`: the HDF5 it writes equals the `Elmo` module's output for the same sentences."""

import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import Elmo, batch_to_ids
from elmo_fast.cli import main as cli_main
from elmo_fast.embed import embed_file, embed_sentences
from elmo_fast.options import save_options
from elmo_fast.testing import assert_close, random_tf_weights, small_options, write_hdf5

SENTENCES = ["The cat sat on the mat .", "Hello", "A much longer sentence , with commas and 12,000 numbers in it .",
             "Short one .", "Hello", "Über naïve café £5"]


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("elmo")
    opts = small_options(dim=20, proj=7)
    save_options(opts, d / "options.json")
    write_hdf5(d / "weights.hdf5", random_tf_weights(opts, seed=3))
    return str(d)


@pytest.fixture(scope="module")
def sentences_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("in") / "sentences.txt"
    p.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return str(p)


def _elmo_reference(elmo_dir, mix):
    """The `Elmo` module with fixed mix weights, fresh state per call, no dropout."""
    return Elmo(f"{elmo_dir}/options.json", f"{elmo_dir}/weights.hdf5", 1, dropout=0.0, scalar_mix_parameters=mix,
                stateful=False, backend="torch")


@pytest.mark.parametrize("layers", ["all", "top", "average"])
def test_embed_file_matches_elmo_module(elmo_dir, sentences_file, tmp_path, layers):
    out = tmp_path / "emb.hdf5"
    n = embed_file(sentences_file, str(out), elmo_dir, layers=layers, batch_size=2, backend="torch", progress=False)
    assert n == len(SENTENCES)
    tokens = [s.split() for s in SENTENCES]
    L = 3
    if layers == "all":
        mixes = [[0.0 if k == j else -1e4 for k in range(L)] for j in range(L)]  # softmax -> one-hot on layer j
    elif layers == "top":
        mixes = [[-1e4] * (L - 1) + [0.0]]
    else:
        mixes = [[0.0] * L]  # softmax of equal weights: the mean
    with torch.no_grad():
        refs = []
        for mix in mixes:
            res = _elmo_reference(elmo_dir, mix)(batch_to_ids(tokens))
            refs.append(res["elmo_representations"][0])
        mask = res["mask"]
    with h5py.File(out, "r") as f:
        index = json.loads(f["sentence_to_index"][()])
        assert set(index) == set(SENTENCES) and index["The cat sat on the mat ."] == "0"
        assert len([k for k in f.keys() if k != "sentence_to_index"]) == len(SENTENCES)
        for i, toks in enumerate(tokens):
            got = torch.from_numpy(f[str(i)][...])
            n_tok = int(mask[i].sum())
            assert n_tok == len(toks)
            if layers == "all":
                ref = torch.stack([r[i, :n_tok] for r in refs])
                assert got.shape == (L, len(toks), 14)
            else:
                ref = refs[0][i, :n_tok]
                assert got.shape == (len(toks), 14)
            assert_close(f"sentence {i} ({layers})", ref, got, atol=1e-5, rtol=1e-4)


def test_embedding_does_not_depend_on_batching(elmo_dir):
    tokens = [s.split() for s in SENTENCES]
    a = embed_sentences(elmo_dir, tokens, "all", batch_size=1, backend="torch")
    b = embed_sentences(elmo_dir, tokens, "all", batch_size=64, backend="torch")
    for i, (x, y) in enumerate(zip(a, b)):
        assert_close(f"sentence {i}", torch.from_numpy(x), torch.from_numpy(y), atol=1e-5, rtol=1e-4)


def test_embed_cli(elmo_dir, sentences_file, tmp_path, capsys):
    out = tmp_path / "cli.hdf5"
    rc = cli_main(["embed", "--input", sentences_file, "--output", str(out), "--layers", "average", "--elmo", elmo_dir,
                   "--no-progress", "--backend", "torch"])
    assert rc == 0 and f"wrote {len(SENTENCES)} sentences" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        assert f["2"].shape == (len(SENTENCES[2].split()), 14)
        assert np.isfinite(f["2"][...]).all()


def test_embed_errors(elmo_dir, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("one sentence\n\nanother\n")
    with pytest.raises(ValueError, match="line 2 is empty"):
        embed_file(str(bad), str(tmp_path / "o.hdf5"), elmo_dir, progress=False)
    assert not (tmp_path / "o.hdf5").exists()
    rc = cli_main(["embed", "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o.hdf5"), "--elmo", elmo_dir])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("one sentence\n")
    rc = cli_main(["embed", "--input", str(good), "--output", str(tmp_path / "o.hdf5"), "--elmo", str(tmp_path / "noelmo")])
    assert rc == 2 and "options.json and weights.hdf5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layers must be one of"):
        embed_sentences(elmo_dir, [["a"]], layers="bottom")
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        embed_sentences(elmo_dir, [["a"], []])


def test_embed_input_and_output_problems_are_named_before_the_work(elmo_dir, tmp_path, capsys, monkeypatch):
    import elmo_fast.embed as embed_mod

    ran = []
    monkeypatch.setattr(embed_mod, "embed_sentences", lambda *a, **k: ran.append(1) or [])
    good = tmp_path / "good.txt"
    good.write_text("one sentence\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("fine line\ncaf\xe9 au lait\n".encode("latin-1"))
    cases = [
        (["--input", str(latin), "--output", str(tmp_path / "o.hdf5")], "latin1.txt: line 2 is not UTF-8 text"),
        (["--input", str(tmp_path), "--output", str(tmp_path / "o.hdf5")], "is a folder; pass a file"),
        (["--input", str(good), "--output", str(tmp_path)], "is a folder; pass the HDF5 file"),  # was: after all the work
        (["--input", str(good), "--output", str(tmp_path / "o.hdf5"), "--device", "gpu0"], "unknown device 'gpu0'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--input", str(good), "--output", str(tmp_path / "o.hdf5"), "--device", "cuda"], "no CUDA GPU"))
    for args, message in cases:
        rc = cli_main(["embed", *args, "--elmo", elmo_dir, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, (args, err)
    assert ran == []
    monkeypatch.undo()
    if not torch.cuda.is_available():  # a backend this machine lacks: one line, not a 14-frame traceback
        rc = cli_main(["embed", "--input", str(good), "--output", str(tmp_path / "o.hdf5"), "--elmo", elmo_dir,
                       "--no-progress", "--backend", "cuda"])
        err = capsys.readouterr().err
        assert rc == 2 and "backend 'cuda'" in err and "Traceback" not in err, err


def test_byte_order_mark_is_not_part_of_the_first_token(tmp_path):
    from elmo_fast.embed import read_sentences

    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffHello world\n".encode("utf-8"))
    assert read_sentences(str(p))[1] == [["Hello", "world"]]
