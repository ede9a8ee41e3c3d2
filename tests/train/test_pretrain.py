"""End to end: learning, kill-and-resume equality, export -> load round trip, bad input, CLI."""

import collections
import json
import math
import os

import pytest
import torch

import elmo_fast
from elmo_fast.testing import assert_close, small_options
from elmo_fast.train import CheckpointError, pretrain

FAST = dict(progress=False, eval_every=0, checkpoint_every=0, n_negative=16, eval_batch_size=4)


def _unigram_perplexity(train, valid, vocab_words):
    """Perplexity of the train unigram distribution on valid (same vocabulary, same scored targets)."""
    index = set(vocab_words)
    counts = collections.Counter()
    for ln in open(train, encoding="utf-8"):
        counts.update(w if w in index else "<UNK>" for w in ln.split())
        counts["</S>"] += 1
    total = sum(counts.values())
    nll = n = 0
    for ln in open(valid, encoding="utf-8"):
        for w in ln.split() + ["</S>"]:
            nll -= math.log(counts[w if w in index else "<UNK>"] / total)
            n += 1
    return math.exp(nll / n)


def test_short_run_beats_unigram(tmp_path, corpus_slice, lm_options):
    train, valid = corpus_slice
    out = tmp_path / "run"
    r = pretrain(train, valid, lm_options, out, max_steps=250, batch_size=16, progress=False, n_negative=128,
                 max_vocab=400, optimizer="adam", lr=5e-3, dropout=0.0, eval_every=0, checkpoint_every=0)
    unigram = _unigram_perplexity(train, valid, open(out / "vocab.txt").read().split("\n"))
    assert r["steps"] == 250 and 0.9 * 250 * 16 * 20 < r["tokens"] <= 250 * 16 * 20  # <S> after </S> is not scored
    assert r["valid_perplexity"] < 0.75 * unigram, (r["valid_perplexity"], unigram)
    assert r["forward_perplexity"] < unigram and r["backward_perplexity"] < unigram
    assert r["train_tokens_per_s"] > 0
    assert json.load(open(out / "metrics.json"))["valid_perplexity"] == r["valid_perplexity"]


class _Killed(Exception):
    pass


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, tiny_text, monkeypatch):
    kw = dict(FAST, batch_size=3, seed=5, dropout=0.2, optimizer="adam", lr=1e-2, deterministic=False)
    ref = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "ref", max_steps=6, **kw)
    ref_state = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["model"]

    # the "killed" run: checkpoints every 3 steps, dies in the optimizer step of step 5
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Killed
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(_Killed):
        pretrain(tiny_text, tiny_text, small_options(), tmp_path / "run", max_steps=6, **{**kw, "checkpoint_every": 3})
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    res = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "run", max_steps=6, resume=True, **kw)
    assert res["steps"] == 6
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    for k in ref_state:
        assert torch.equal(ref_state[k], state[k]), k
    assert res["valid_perplexity"] == ref["valid_perplexity"]


def test_corrupt_or_mismatched_checkpoint_is_refused(tmp_path, tiny_text):
    out = tmp_path / "run"
    pretrain(tiny_text, None, small_options(), out, max_steps=2, batch_size=2, **FAST)
    with pytest.raises(CheckpointError, match="does not match this run.*global_batch"):
        pretrain(tiny_text, None, small_options(), out, max_steps=3, batch_size=3, resume=True, **FAST)
    with pytest.raises(CheckpointError, match="does not match this run.*options"):
        pretrain(tiny_text, None, small_options(dim=20), out, max_steps=3, batch_size=2, resume=True, **FAST)
    path = out / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        pretrain(tiny_text, None, small_options(), out, max_steps=3, batch_size=2, resume=True, **FAST)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        pretrain(tiny_text, None, small_options(), out, max_steps=3, batch_size=2, resume=True, **FAST)


def test_export_loads_back_to_the_same_numbers(tmp_path, tiny_text):
    out = tmp_path / "run"
    r = pretrain(tiny_text, None, small_options(), out, max_steps=3, batch_size=2, **FAST)
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "metrics.json", "options.json", "vocab.txt", "weights.hdf5"]
    trained = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    bilm = elmo_fast.ElmoBiLm(r["options_file"], r["weight_file"])
    for k, v in bilm.state_dict().items():
        assert_close(k, trained["bilm." + k], v)
    # Elmo reads the files and gives the representation the trained biLM gives
    elmo = elmo_fast.Elmo(r["options_file"], r["weight_file"], 1, dropout=0.0, scalar_mix_parameters=[-100.0, -100.0, 100.0])  # the top layer
    ref_bilm = elmo_fast.ElmoBiLm(small_options(), stateful=False)
    ref_bilm.load_state_dict({k[5:]: v for k, v in trained.items() if k.startswith("bilm.")})
    sentences = [["The", "cat", "sat", "."], ["w1", "w7"]]
    ids = elmo_fast.batch_to_ids(sentences)
    with torch.no_grad():
        got = elmo(ids)["elmo_representations"][0]
        top = ref_bilm(ids)["activations"][-1][:, 1:-1]
    mask = elmo(ids)["mask"]
    assert_close("elmo", top * mask[..., None], got * mask[..., None])


def test_bad_input_gives_clear_errors(tmp_path, tiny_text):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="contain no tokens"):
        pretrain(str(empty), None, small_options(), tmp_path / "o", max_steps=1, **FAST)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(str(tmp_path / "nope.txt"), None, small_options(), tmp_path / "o", max_steps=1, **FAST)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(tiny_text, str(tmp_path / "nope.txt"), small_options(), tmp_path / "o", max_steps=1, **FAST)
    with pytest.raises(ValueError, match="vocabulary has no words"):
        pretrain(tiny_text, None, small_options(), tmp_path / "o", max_steps=1, min_count=10**6, **FAST)
    with pytest.raises(ValueError, match="max_steps and/or max_time"):
        pretrain(tiny_text, None, small_options(), tmp_path / "o")
    with pytest.raises(TypeError, match="unknown setting"):
        pretrain(tiny_text, None, small_options(), tmp_path / "o", max_steps=1, learning_rate=1.0)
    with pytest.raises(FileNotFoundError, match="options file"):
        pretrain(tiny_text, None, str(tmp_path / "missing_options.json"), tmp_path / "o", max_steps=1)


def _cli(argv):
    """Parse and run like `elmo-fast` does (elmo_fast.cli.main), with only this package's subcommand."""
    import argparse

    from elmo_fast.train import cli

    parser = argparse.ArgumentParser(prog="elmo-fast")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, tiny_text, capsys):
    opts = tmp_path / "options.json"
    opts.write_text(json.dumps(small_options()))
    out = tmp_path / "cli"
    rc = _cli(["pretrain", "--train", tiny_text, "--valid", tiny_text, "--config", str(opts), "--out", str(out),
               "--max-steps", "2", "--batch-size", "2", "--n-negative", "8", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    ppl = json.load(open(out / "metrics.json"))["valid_perplexity"]
    assert f"validation perplexity: {ppl:.2f}" in printed
    assert (out / "options.json").exists() and (out / "weights.hdf5").exists()
    # elmo_fast.cli.main turns these into one line on stderr and exit status 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _cli(["pretrain", "--train", str(tmp_path / "missing.txt"), "--out", str(out), "--max-steps", "1"])
    with pytest.raises(ValueError, match="--max-steps and/or --max-time"):
        _cli(["pretrain", "--train", tiny_text, "--out", str(out)])


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_mixed_precision_loop_runs_on_the_cpu(tmp_path, tiny_text, monkeypatch, backend):
    """The loop's mixed-precision path (GPU only: bf16 autocast) run on the CPU under fp16 autocast:
    training, evaluation and export go through, and the perplexity stays near the fp32 run's.
    It used to fail at the first step: the char encoder's autocast output met the LSTM's fp32
    weights in lstm_proj's dtype check (tests/ops/test_lstm_proj_triton.py runs the Triton backend
    the same way)."""
    import elmo_fast.train.loop as loop

    if backend == "cpp" and not elmo_fast._ext.cpp_ext():
        pytest.skip("C++ extension not built")
    kw = dict(FAST, batch_size=3, seed=1, dropout=0.0, optimizer="adam", lr=1e-2, max_steps=5, backend=backend)
    fp32 = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "fp32", device="cpu", **kw)
    used = []
    monkeypatch.setattr(loop, "_amp_enabled", lambda settings, device: True)
    monkeypatch.setattr(loop, "_autocast", lambda enabled: used.append(enabled) or torch.autocast("cpu", dtype=torch.float16))
    amp = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "amp", device="cpu", **kw)
    assert used and all(used)
    assert math.isfinite(amp["valid_perplexity"])
    assert abs(math.log(amp["valid_perplexity"]) - math.log(fp32["valid_perplexity"])) < 0.05
    assert os.path.exists(amp["weight_file"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_gpu_matches_cpu_run(tmp_path, tiny_text):
    """On a GPU the loop trains under bf16 autocast; its perplexity must stay close to the fp32 CPU run."""
    kw = dict(FAST, batch_size=3, seed=1, dropout=0.0, optimizer="adam", lr=1e-2, max_steps=5)
    cpu = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "cpu", device="cpu", **kw)
    gpu = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "gpu", device="cuda", amp=True, **kw)
    assert math.isfinite(gpu["valid_perplexity"])
    assert abs(math.log(gpu["valid_perplexity"]) - math.log(cpu["valid_perplexity"])) < 0.05


def test_an_options_file_of_a_preset_trains_with_the_preset_settings(tmp_path):
    """`--config tiny` and `--config runs/x/options.json` of a tiny run used to train differently
    (the file fell back to bilm-tf's Adagrad, lr 0.2, batch 64, 8192 negatives)."""
    import json

    from elmo_fast.options import PRESETS
    from elmo_fast.train.loop import _config

    (tmp_path / "options.json").write_text(json.dumps(PRESETS["tiny"]))
    assert _config(str(tmp_path / "options.json"), {}) == _config("tiny", {})
    other = json.loads(json.dumps(PRESETS["tiny"]))
    other["lstm"]["dim"] = 300
    from elmo_fast.train import TRAIN_DEFAULTS

    assert _config(other, {})[1] == TRAIN_DEFAULTS
