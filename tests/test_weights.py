import json

import h5py
import numpy as np
import pytest
import torch

from elmo_fast import Elmo, ElmoBiLm, batch_to_ids, save_checkpoint, save_hdf5
from elmo_fast.options import OptionsError, load_options
from elmo_fast.testing import random_tf_weights, small_options, write_hdf5
from elmo_fast.weights import WeightFileError


@pytest.fixture()
def files(tmp_path):
    opts = small_options()
    weights = random_tf_weights(opts, scale=3.0, seed=3)
    write_hdf5(tmp_path / "weights.hdf5", weights)
    (tmp_path / "options.json").write_text(json.dumps(opts))
    return tmp_path, opts, weights


def test_hdf5_round_trip_is_bit_exact(files):
    d, opts, weights = files
    bilm = ElmoBiLm(str(d / "options.json"), str(d / "weights.hdf5"))
    save_hdf5(bilm, d / "again.hdf5")
    with h5py.File(d / "again.hdf5", "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(weights)
        for name, value in weights.items():
            got = f[name][...]
            assert got.dtype == np.float32 and got.shape == value.shape, name
            assert np.array_equal(got.view(np.uint32), value.view(np.uint32)), f"{name} not bit-exact"


def test_trained_bias_is_written_back_without_the_forget_offset(files):
    d, opts, weights = files
    bilm = ElmoBiLm(opts, str(d / "weights.hdf5"))
    cell = bilm._elmo_lstm.forward_layers[0]
    C = cell.cell_size
    with torch.no_grad():
        cell.state_linearity.bias[C : 2 * C] = 1.25  # torch forget block = TF block 2 + 1.0
    save_hdf5(bilm, d / "trained.hdf5")
    with h5py.File(d / "trained.hdf5", "r") as f:
        b = f["RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/B"][...]
    assert np.allclose(b[2 * C : 3 * C], 0.25)
    reloaded = ElmoBiLm(opts, str(d / "trained.hdf5"))
    assert torch.equal(reloaded._elmo_lstm.forward_layers[0].state_linearity.bias, cell.state_linearity.bias)


def test_safetensors_checkpoint_round_trip(files):
    d, opts, _ = files
    a = Elmo(opts, str(d / "weights.hdf5"), 1, dropout=0.0, stateful=False)
    save_checkpoint(a._elmo_lstm, d / "model.safetensors")
    b = Elmo(opts, str(d / "model.safetensors"), 1, dropout=0.0, stateful=False)
    ids = batch_to_ids([["a", "b"], ["c"]])
    assert torch.equal(a(ids)["elmo_representations"][0], b(ids)["elmo_representations"][0])


def test_missing_dataset_is_named(files):
    d, opts, weights = files
    del weights["CNN_high_1/W_carry"]
    write_hdf5(d / "broken.hdf5", weights)
    with pytest.raises(WeightFileError, match="CNN_high_1/W_carry"):
        ElmoBiLm(opts, str(d / "broken.hdf5"))


def test_shape_mismatch_names_dataset_and_option(files):
    d, opts, _ = files
    other = dict(opts, lstm=dict(opts["lstm"], dim=opts["lstm"]["dim"] + 4))
    with pytest.raises(WeightFileError, match=r"W_0.*lstm.dim"):
        ElmoBiLm(other, str(d / "weights.hdf5"))
    fewer = dict(opts, char_cnn=dict(opts["char_cnn"], filters=opts["char_cnn"]["filters"][:2]))
    with pytest.raises(WeightFileError, match="only 2 filters"):
        ElmoBiLm(fewer, str(d / "weights.hdf5"))


def test_not_hdf5_and_corrupt_checkpoint(files):
    d, opts, _ = files
    with pytest.raises(WeightFileError, match="neither HDF5"):
        ElmoBiLm(opts, str(d / "options.json"))
    bilm = ElmoBiLm(opts)
    save_checkpoint(bilm, d / "m.safetensors")
    data = (d / "m.safetensors").read_bytes()
    (d / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="corrupt"):
        ElmoBiLm(opts, str(d / "cut.safetensors"))
    with pytest.raises(FileNotFoundError):
        ElmoBiLm(opts, str(d / "nope.hdf5"))


def test_non_finite_and_malformed_weights_are_named(files):
    """A NaN weight used to load without a word (every output NaN); so did a garbled checkpoint."""
    d, opts, weights = files
    bad = dict(weights)
    bad["CNN_proj/W_proj"] = weights["CNN_proj/W_proj"].copy()
    bad["CNN_proj/W_proj"][1, 2] = np.nan
    write_hdf5(d / "nan.hdf5", bad)
    with pytest.raises(WeightFileError, match=r"'CNN_proj/W_proj' holds NaN or Inf"):
        ElmoBiLm(opts, str(d / "nan.hdf5"))
    with h5py.File(d / "group.hdf5", "w") as f:  # a group where a dataset belongs
        for k, v in weights.items():
            if k != "char_embed":
                f[k] = v
        f.create_group("char_embed")
    with pytest.raises(WeightFileError, match="'char_embed' is a group"):
        ElmoBiLm(opts, str(d / "group.hdf5"))

    bilm = ElmoBiLm(opts)
    with torch.no_grad():
        bilm._token_embedder._projection.bias[0] = float("inf")
    save_checkpoint(bilm, d / "inf.safetensors")
    with pytest.raises(WeightFileError, match="_projection.bias' holds NaN or Inf"):
        ElmoBiLm(opts, str(d / "inf.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(d / "meta.safetensors"), metadata={"format": "elmo_fast", "options": "{not json"})
    with pytest.raises(WeightFileError, match="not valid JSON"):
        ElmoBiLm(opts, str(d / "meta.safetensors"))


@pytest.mark.parametrize("section,key,value,message", [
    ("lstm", "n_layers", "2", "lstm.n_layers must be an integer >= 1"),
    ("lstm", "n_layers", True, "lstm.n_layers must be an integer >= 1"),  # loaded a 2-layer file as 1 layer
    ("lstm", "dim", 256.0, "lstm.dim must be an integer"),
    ("lstm", "cell_clip", "3", "lstm.cell_clip must be a number"),
    ("char_cnn", "n_highway", -1, "char_cnn.n_highway must be an integer >= 0"),  # ignored the file's highway
    ("char_cnn", "embedding", 16, "char_cnn.embedding must be an object"),
    ("char_cnn", "filters", [[1, "32"]], "char_cnn.filters must be a list of"),
])
def test_option_types_are_checked(section, key, value, message):
    bad = json.loads(json.dumps(small_options()))
    bad[section][key] = value
    with pytest.raises(OptionsError, match=message):
        load_options(bad)


def test_checkpoint_with_other_options_is_refused(files):
    d, opts, _ = files
    save_checkpoint(ElmoBiLm(opts), d / "m.safetensors")
    other = small_options(dim=28)
    with pytest.raises(WeightFileError, match="options differ"):
        ElmoBiLm(other, str(d / "m.safetensors"))


def test_option_errors(tmp_path, caplog):
    opts = small_options()
    bad = json.loads(json.dumps(opts))
    del bad["lstm"]["dim"]
    with pytest.raises(OptionsError, match=r"missing option\(s\) \['dim'\]"):
        load_options(bad)
    bad = json.loads(json.dumps(opts))
    bad["char_cnn"]["n_higway"] = bad["char_cnn"].pop("n_highway")  # a misspelt required key
    with pytest.raises(OptionsError, match=r"missing option\(s\) \['n_highway'\]"):
        load_options(bad)
    # Unknown extra keys are ignored as AllenNLP does (other trainers write them), with a warning
    # that names them, so a misspelt optional key is still seen.
    extra = json.loads(json.dumps(opts))
    extra["lstm"]["dropout"] = 0.1
    extra["lstm"]["cell_clp"] = 3
    extra["vocab_file"] = "vocab.txt"
    with caplog.at_level("WARNING", logger="elmo_fast.options"):
        loaded = load_options(extra)
    assert loaded["lstm"]["dim"] == opts["lstm"]["dim"]
    assert "['cell_clp', 'dropout']" in caplog.text and "['vocab_file']" in caplog.text
    (tmp_path / "o.json").write_text("{not json")
    with pytest.raises(OptionsError, match="not valid JSON"):
        load_options(str(tmp_path / "o.json"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_options(str(tmp_path / "missing.json"))
    assert load_options("original")["lstm"]["dim"] == 4096


def test_urls_and_home_paths_are_accepted(files, tmp_path_factory, monkeypatch):
    """AllenNLP's Elmo opens both files through `cached_path`: the published https/s3 URLs and `~`
    paths work there, so they must here. A local HTTP server stands in for S3."""
    import functools
    import http.server
    import threading

    d, opts, _ = files
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ELMO_FAST_CACHE", str(cache))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(d))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    ids = batch_to_ids([["A", "url", "."], ["Two"]])
    local = Elmo(str(d / "options.json"), str(d / "weights.hdf5"), 1, dropout=0.0, stateful=False)
    try:
        remote = Elmo(f"{base}/options.json", f"{base}/weights.hdf5", 1, dropout=0.0, stateful=False)
        with pytest.raises(OSError, match="could not download the weight file"):
            Elmo(f"{base}/options.json", f"{base}/no_such.hdf5", 1)
    finally:
        server.shutdown()
        server.server_close()
    # (the downloader's lock files aside)
    assert sorted(p.name.split("-", 1)[1] for p in cache.iterdir() if p.suffix != ".lock") == ["options.json", "weights.hdf5"]
    # the server is gone: a second construction is served from the download cache
    again = Elmo(f"{base}/options.json", f"{base}/weights.hdf5", 1, dropout=0.0, stateful=False)
    for m in (remote, again):
        torch.testing.assert_close(m(ids)["elmo_representations"][0], local(ids)["elmo_representations"][0], rtol=0, atol=0)

    home = tmp_path_factory.mktemp("home")
    (home / "elmo").mkdir()
    for name in ("options.json", "weights.hdf5"):
        (home / "elmo" / name).write_bytes((d / name).read_bytes())
    monkeypatch.setenv("HOME", str(home))
    tilde = Elmo("~/elmo/options.json", "~/elmo/weights.hdf5", 1, dropout=0.0, stateful=False)
    torch.testing.assert_close(tilde(ids)["elmo_representations"][0], local(ids)["elmo_representations"][0], rtol=0, atol=0)


def test_export_stopped_between_the_files_leaves_no_mismatched_pair(files, tmp_path, monkeypatch):
    """weights.hdf5 and options.json are each atomic, not as a pair: an export stopped between them
    must not leave an older run's options.json next to the new weights."""
    import elmo_fast.options as options_mod
    from elmo_fast import export_elmo

    d, opts, _ = files
    out = tmp_path / "export"
    out.mkdir()
    (out / "options.json").write_text(json.dumps(small_options(dim=28)))  # a previous, different model
    monkeypatch.setattr(options_mod, "save_options", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export_elmo(ElmoBiLm(opts), out)
    assert (out / "weights.hdf5").exists() and not (out / "options.json").exists()


def test_an_elmo_module_saves_and_exports_its_bilm(files, tmp_path, caplog):
    """save_checkpoint / export_elmo take an Elmo too (they needed the private `_elmo_lstm`), and
    an Elmo built without weights says that its biLM is random."""
    from elmo_fast import export_elmo

    d, opts, _ = files
    elmo = Elmo(str(d / "options.json"), str(d / "weights.hdf5"), 1, dropout=0.0, stateful=False)
    save_checkpoint(elmo, tmp_path / "e.safetensors")
    export_elmo(elmo, tmp_path / "exported")
    ids = batch_to_ids([["a", "b"], ["c"]])
    expected = elmo(ids)["elmo_representations"][0]
    for w in (tmp_path / "e.safetensors", tmp_path / "exported" / "weights.hdf5"):
        again = Elmo(str(d / "options.json"), str(w), 1, dropout=0.0, stateful=False)
        assert torch.equal(again(ids)["elmo_representations"][0], expected)
    with caplog.at_level("WARNING"):
        Elmo(opts, None, 1)
    assert "random weights" in caplog.text
