"""`elmo-fast embed`: AllenNLP 0.9's `elmo` command. Its HDF5 equals AllenNLP's (transcribed in
allennlp09_embedder.py, over the eager biLM), read back the AllenNLP way; the stateless modes equal
per-sentence eager runs; an interrupted run resumes to the same file; two gloo ranks write the one
file that one process writes."""

import io
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import elmo_fast.embedder as embedder_mod
from elmo_fast.cli import main as cli_main
from elmo_fast.embed import embed_file, embed_sentences
from elmo_fast.options import save_options
from elmo_fast.testing import assert_close, random_tf_weights, small_options, write_hdf5

from .allennlp09_embedder import AllenNLPElmoEmbedder, read_allennlp_hdf5

SENTENCES = ["The cat sat on the mat .", "Hello", "A much longer sentence , with commas and 12,000 numbers in it .",
             "Short one .", "Hello", "Über naïve café £5", "x", "  padded   with   spaces  ", "a b c d e f g h i j k",
             "one more line", "the last one ."]
ATOL, RTOL = 2e-5, 1e-4


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


def _model_args(elmo_dir):
    return ["--options-file", f"{elmo_dir}/options.json", "--weight-file", f"{elmo_dir}/weights.hdf5"]


def _allennlp(elmo_dir, tmp_path, lines, fmt, batch_size, **kw):
    out = tmp_path / f"allennlp-{fmt}-{batch_size}.hdf5"
    AllenNLPElmoEmbedder(f"{elmo_dir}/options.json", f"{elmo_dir}/weights.hdf5").embed_file(
        io.StringIO("\n".join(lines) + "\n"), str(out), fmt, batch_size, **kw)
    return read_allennlp_hdf5(out)


def _assert_same(ref, got, exact=False):
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == np.float32 and got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        if exact:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
        else:
            assert_close(repr(k), torch.from_numpy(ref[k]), torch.from_numpy(got[k]), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("fmt", ["all", "top", "average"])
def test_cli_equals_allennlp(elmo_dir, sentences_file, tmp_path, fmt, capsys):
    out = tmp_path / "emb.hdf5"
    rc = cli_main(["embed", sentences_file, str(out), f"--{fmt}", "--batch-size", "3", *_model_args(elmo_dir), "--no-progress"])
    assert rc == 0 and f"wrote {len(SENTENCES)} sentences" in capsys.readouterr().out
    ref, ref_index = _allennlp(elmo_dir, tmp_path, SENTENCES, fmt, 3)
    got, index = read_allennlp_hdf5(out)
    assert index == ref_index and index["Hello"] == "4" and index["padded   with   spaces"] == "7"
    _assert_same(ref, got)
    assert got["2"].shape == ((3, 13, 14) if fmt == "all" else (13, 14))
    with h5py.File(out, "r") as f, h5py.File(tmp_path / f"allennlp-{fmt}-3.hdf5", "r") as allennlp:
        # AllenNLP's layout: a 1-element variable-length string dataset, the same bytes
        assert f["sentence_to_index"].shape == (1,) and h5py.check_string_dtype(f["sentence_to_index"].dtype) is not None
        assert f["sentence_to_index"][0] == allennlp["sentence_to_index"][0]
    assert sorted(os.listdir(tmp_path)) == sorted(["emb.hdf5", f"allennlp-{fmt}-3.hdf5"])  # no temporary left


def test_sentence_index_is_json_dumps_of_the_dict_without_building_it(tmp_path):
    """The index JSON is streamed (no dict of every sentence), and equals json.dumps of AllenNLP's
    dict byte for byte: repeats keep their first place and take their last line number; quotes,
    backslashes, control and non-ASCII characters are escaped as json.dumps escapes them."""
    import json

    from elmo_fast.embed_hdf5 import _scan, _sentence_index_json

    rng = np.random.default_rng(5)
    pool = ["a b", 'say "hi"', "back\\slash", "tab\there", "Über naïve 😀", "x", "y z", "a b c"]
    lines = [pool[i] for i in rng.integers(0, len(pool), 300)] + [f"unique {i}" for i in range(50)]
    lines = [lines[i] for i in rng.permutation(len(lines))]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    want = json.dumps({line: str(i) for i, line in enumerate(lines)}).encode("ascii")
    assert _sentence_index_json(_scan(str(path), False)) == want
    with open(path, encoding="utf-8") as f:  # an open file, held as a list
        assert _sentence_index_json(_scan(f, False)) == want
    one = tmp_path / "one.txt"
    one.write_text("only\n")
    assert _sentence_index_json(_scan(str(one), False)) == b'{"only": "0"}'


def test_cli_sentence_keys_and_forget_sentences(elmo_dir, tmp_path):
    unique = list(dict.fromkeys(SENTENCES))
    src = tmp_path / "unique.txt"
    src.write_text("\n".join(unique) + "\n", encoding="utf-8")
    out = tmp_path / "keys.hdf5"
    assert cli_main(["embed", str(src), str(out), "--top", "--use-sentence-keys", *_model_args(elmo_dir), "--no-progress"]) == 0
    ref, ref_index = _allennlp(elmo_dir, tmp_path, unique, "top", 64, use_sentence_keys=True)
    got, index = read_allennlp_hdf5(out)
    assert index is None and ref_index is None and "Über naïve café £5" in got
    _assert_same(ref, got)
    out2 = tmp_path / "forget.hdf5"
    assert cli_main(["embed", str(src), str(out2), "--forget-sentences", *_model_args(elmo_dir), "--no-progress"]) == 0
    got, index = read_allennlp_hdf5(out2)
    assert index is None and sorted(got) == sorted(map(str, range(len(unique))))


def test_cli_elmo_dir(elmo_dir, sentences_file, tmp_path):
    a, b = tmp_path / "a.hdf5", tmp_path / "b.hdf5"
    assert cli_main(["embed", sentences_file, str(a), "--elmo", elmo_dir, "--no-progress"]) == 0
    assert cli_main(["embed", sentences_file, str(b), *_model_args(elmo_dir), "--no-progress"]) == 0
    _assert_same(read_allennlp_hdf5(a)[0], read_allennlp_hdf5(b)[0], exact=True)


def _stateless_reference(elmo_dir, fmt):
    """Every sentence alone, from a zero state, on the eager biLM."""
    ref = AllenNLPElmoEmbedder(f"{elmo_dir}/options.json", f"{elmo_dir}/weights.hdf5")
    out = {}
    for i, s in enumerate(SENTENCES):
        ref.elmo_bilm.reset_states()
        e = ref.embed_sentence(s.split())
        out[str(i)] = {"all": e, "top": e[-1], "average": np.average(e, axis=0)}[fmt]
    return out


@pytest.mark.parametrize("args", [["--stateless", "--batch-size", "4"], ["--max-tokens-per-batch", "20"],
                                  ["--max-tokens-per-batch", "1", "--batch-size", "2"]])
def test_cli_stateless_equals_each_sentence_alone(elmo_dir, sentences_file, tmp_path, args):
    out = tmp_path / "s.hdf5"
    assert cli_main(["embed", sentences_file, str(out), "--average", *args, *_model_args(elmo_dir), "--no-progress"]) == 0
    got, index = read_allennlp_hdf5(out)
    assert index["x"] == "6"
    _assert_same(_stateless_reference(elmo_dir, "average"), got)


def test_python_embed_sentences_is_order_independent(elmo_dir):
    tokens = [s.split() for s in SENTENCES] + [[]]
    a = embed_sentences(elmo_dir, tokens, "all", batch_size=1, backend="torch")
    b = embed_sentences(elmo_dir, tokens, "top", batch_size=64)
    ref = _stateless_reference(elmo_dir, "all")
    for i in range(len(SENTENCES)):
        assert_close(f"sentence {i}", torch.from_numpy(ref[str(i)]), torch.from_numpy(a[i]), atol=ATOL, rtol=RTOL)
        assert_close(f"sentence {i} top", torch.from_numpy(ref[str(i)][-1]), torch.from_numpy(b[i]), atol=ATOL, rtol=RTOL)
    assert a[-1].shape == (3, 0, 14) and b[-1].shape == (0, 14)


def test_python_embed_file(elmo_dir, sentences_file, tmp_path):
    n = embed_file(sentences_file, str(tmp_path / "p.hdf5"), elmo_dir, layers="top", batch_size=2, progress=False)
    assert n == len(SENTENCES)
    _assert_same(_stateless_reference(elmo_dir, "top"), read_allennlp_hdf5(tmp_path / "p.hdf5")[0])


@pytest.mark.parametrize("stateless", [False, True])
def test_interrupted_run_leaves_no_output_and_resumes(elmo_dir, sentences_file, tmp_path, monkeypatch, capsys, stateless):
    """Stopped in the fourth batch: nothing under the final name; --resume computes only the rest and
    writes the file an uninterrupted run writes (stateful: the carried state is restored too)."""
    mode = ["--stateless"] if stateless else []
    args = ["embed", sentences_file, str(tmp_path / "r.hdf5"), "--batch-size", "2", *mode, *_model_args(elmo_dir), "--no-progress"]
    assert cli_main([*args[:2], str(tmp_path / "full.hdf5"), *args[3:]]) == 0
    calls = []
    real = embedder_mod.ElmoEmbedder._embed_rows

    def stop_at_fourth(self, batch, force=False):
        calls.append(len(batch))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, batch, force)

    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", stop_at_fourth)
    assert cli_main(args) == 130  # interrupted
    assert "stopped after 6 sentences" in capsys.readouterr().err
    assert not (tmp_path / "r.hdf5").exists() and (tmp_path / "r.hdf5.partial").exists()
    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", lambda self, b, force=False: calls.append(len(b)) or real(self, b, force))
    calls.clear()
    assert cli_main([*args, "--resume"]) == 0
    assert sum(calls) == len(SENTENCES) - 6  # the saved batches are not recomputed
    assert sorted(os.listdir(tmp_path)) == ["full.hdf5", "r.hdf5"]
    full, full_index = read_allennlp_hdf5(tmp_path / "full.hdf5")
    got, index = read_allennlp_hdf5(tmp_path / "r.hdf5")
    assert index == full_index
    # up to float32 rounding, not bit for bit: the resumed run's word cache computes each word's
    # character-encoder vector among other words than the first run did (a carried state that was
    # not restored would differ by ~1e-1, see test_embedder.py)
    _assert_same(full, got)


def test_output_reopened_during_a_run_keeps_every_vector_and_resumes(elmo_dir, sentences_file, tmp_path, monkeypatch, capsys):
    """The part file is closed and reopened every REOPEN_DATASETS datasets (bounded HDF5 metadata in
    memory); with that every 3 datasets, an interrupted run still resumes to the uninterrupted file,
    which is written in HDF5 1.8's format (superblock version 2)."""
    import elmo_fast.embed_hdf5 as eh

    monkeypatch.setattr(eh, "REOPEN_DATASETS", 3)
    args = ["embed", sentences_file, str(tmp_path / "r.hdf5"), "--batch-size", "2", *_model_args(elmo_dir), "--no-progress"]
    assert cli_main([*args[:2], str(tmp_path / "full.hdf5"), *args[3:]]) == 0
    real = embedder_mod.ElmoEmbedder._embed_rows
    calls = []

    def stop_at_fifth(self, batch, force=False):
        calls.append(len(batch))
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, batch, force)

    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", stop_at_fifth)
    assert cli_main(args) == 130
    assert "stopped after 8 sentences" in capsys.readouterr().err
    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", real)
    assert cli_main([*args, "--resume"]) == 0
    full, full_index = read_allennlp_hdf5(tmp_path / "full.hdf5")
    got, index = read_allennlp_hdf5(tmp_path / "r.hdf5")
    assert index == full_index and len(got) == len(SENTENCES)
    _assert_same(full, got)
    with open(tmp_path / "full.hdf5", "rb") as f:
        head = f.read(9)
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] == 2


def test_stop_request_ends_the_run_after_its_batch(elmo_dir, sentences_file, tmp_path, monkeypatch, capsys):
    """SIGTERM's handler only records the signal (an exception raised in a handler can land in a
    finalizer, where Python ignores it); the loop stops at the end of the batch it was in."""
    import signal

    from elmo_fast import embed_hdf5 as eh

    real = embedder_mod.ElmoEmbedder._embed_rows
    calls = []

    def signal_in_third(self, batch, force=False):
        calls.append(len(batch))
        if len(calls) == 3:
            eh.request_stop(signal.SIGTERM)
        return real(self, batch, force)

    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", signal_in_third)
    try:
        args = ["embed", sentences_file, str(tmp_path / "s.hdf5"), "--batch-size", "2", *_model_args(elmo_dir), "--no-progress"]
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            eh.write_embeddings(embedder_mod.ElmoEmbedder(f"{elmo_dir}/options.json", f"{elmo_dir}/weights.hdf5"),
                                sentences_file, str(tmp_path / "s.hdf5"), "all", 2, progress=False)
    finally:
        eh.request_stop(None)
    assert len(calls) == 3 and "stopped after 6 sentences" in capsys.readouterr().err
    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", real)
    assert cli_main([*args, "--resume"]) == 0
    assert len(read_allennlp_hdf5(tmp_path / "s.hdf5")[0]) == len(SENTENCES)


def test_resume_with_other_settings_is_refused(elmo_dir, sentences_file, tmp_path, monkeypatch, capsys):
    args = ["embed", sentences_file, str(tmp_path / "r.hdf5"), "--batch-size", "2", *_model_args(elmo_dir), "--no-progress"]
    real = embedder_mod.ElmoEmbedder._embed_rows
    calls = []

    def stop(self, batch, force=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch, force)

    monkeypatch.setattr(embedder_mod.ElmoEmbedder, "_embed_rows", stop)
    assert cli_main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert cli_main([*args[:4], "3", *args[5:], "--resume"]) == 1
    assert "started with another input, model or settings" in capsys.readouterr().err
    assert cli_main([*args, "--top"]) == 0  # without --resume: starts over
    assert sorted(os.listdir(tmp_path)) == ["r.hdf5"]


def test_bad_input_is_one_line_naming_the_fix(elmo_dir, tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("one sentence\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("one sentence\n\nanother\n\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("fine line\ncaf\xe9 au lait\n".encode("latin-1"))
    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    out = str(tmp_path / "o.hdf5")
    model = _model_args(elmo_dir)
    cases = [
        ([str(blank), out, *model], "line 2 is empty; every line must hold one sentence (remove the blank lines)"),
        ([str(tmp_path / "missing.txt"), out, *model], "does not exist (expected one sentence per line)"),
        ([str(latin), out, *model], "latin1.txt: line 2 is not UTF-8 text"),
        ([str(tmp_path), out, *model], "is a folder; pass a file"),
        ([str(good), str(tmp_path), *model], "is a folder; pass the HDF5 file"),
        ([str(good), str(tmp_path / "nodir" / "o.hdf5"), *model], "does not exist; create it first (mkdir -p"),
        ([str(dup), out, "--use-sentence-keys", *model], "line 3 repeats an earlier sentence"),
        ([str(good), out, "--elmo", elmo_dir, *model], "either --elmo DIR or --options-file/--weight-file"),
        ([str(good), out, "--elmo", str(tmp_path / "noelmo")], "must hold options.json and weights.hdf5"),
        ([str(good), out, "--options-file", f"{elmo_dir}/options.json"], "without weight_file"),
        ([str(good), out, "--batch-size", "0", *model], "batch size must be a positive integer"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(good), out, "--cuda-device", "0", *model], "no CUDA GPU"))
    for args, message in cases:
        rc = cli_main(["embed", *args, "--no-progress"])
        err = capsys.readouterr().err
        assert rc in (1, 2) and message in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    assert sorted(os.listdir(tmp_path)) == sorted(["good.txt", "blank.txt", "latin1.txt", "dup.txt"])


def test_byte_order_mark_is_not_part_of_the_first_token(tmp_path):
    from elmo_fast.embed import read_sentences

    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffHello world\n".encode("utf-8"))
    assert read_sentences(str(p))[1] == [["Hello", "world"]]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("mode", [[], ["--max-tokens-per-batch", "12"]], ids=["allennlp-state", "token-budget"])
def test_torchrun_two_ranks_write_the_file_one_process_writes(elmo_dir, sentences_file, tmp_path, mode):
    """Stateful, each rank takes its rows of every batch (so each row's carried state is the one-process
    one); stateless, its share of the batches. Either way one file, bit for bit one process's."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [sentences_file, "--batch-size", "3", *mode, *_model_args(elmo_dir), "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "elmo_fast.cli", "embed", common[0], str(tmp_path / "one.hdf5"), *common[1:]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "elmo_fast.cli",
           "embed", common[0], str(tmp_path / "two.hdf5"), *common[1:]]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count(f"wrote {len(SENTENCES)} sentences") == 1  # rank 0 reports
    assert sorted(os.listdir(tmp_path)) == ["one.hdf5", "two.hdf5"]  # the parts are merged and gone
    a, a_index = read_allennlp_hdf5(tmp_path / "one.hdf5")
    b, b_index = read_allennlp_hdf5(tmp_path / "two.hdf5")
    assert a_index == b_index
    _assert_same(a, b, exact=True)
    if not mode:
        _assert_same(_allennlp(elmo_dir, tmp_path / "..", SENTENCES, "all", 3)[0], b)


@pytest.mark.slow
def test_sigterm_keeps_the_work_and_resume_finishes_it(elmo_dir, tmp_path):
    """A real signal, as a launcher or a job scheduler sends it, in a separate process."""
    import signal
    import time

    src = tmp_path / "many.txt"
    src.write_text("".join(f"{s} {i}\n" for i in range(40) for s in SENTENCES), encoding="utf-8")
    out = tmp_path / "o.hdf5"
    cmd = [sys.executable, "-m", "elmo_fast.cli", "embed", str(src), str(out), "--batch-size", "1", "--backend", "torch",
           *_model_args(elmo_dir), "--no-progress"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "o.hdf5.partial").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "--resume continues" in err and not out.exists()
    assert (tmp_path / "o.hdf5.partial.state").exists()
    done = torch.load(tmp_path / "o.hdf5.partial.state", weights_only=False)["sentences"]
    assert 0 < done < 40 * len(SENTENCES)
    assert cli_main(cmd[3:] + ["--resume"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["many.txt", "o.hdf5"]
    ref, ref_index = _allennlp(elmo_dir, tmp_path / "..", src.read_text(encoding="utf-8").splitlines(), "all", 1)
    got, index = read_allennlp_hdf5(out)
    assert index == ref_index
    _assert_same(ref, got)
