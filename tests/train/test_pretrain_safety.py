"""A failed, refused or diverged run never damages what an output folder already holds, and bad
input is refused up front in one line: options.json only with its weights, existing runs not
replaced silently, non-finite losses stop the run, data compared by content, stale temporaries
removed, non-UTF-8 text and unusable devices named."""

import os
import shutil
import tempfile

import pytest
import torch

import elmo_fast
import elmo_fast.train.loop as loop
from elmo_fast.cli import main as cli_main
from elmo_fast.testing import small_options
from elmo_fast.train import CheckpointError, TrainingDiverged, pretrain

FAST = dict(progress=False, eval_every=0, checkpoint_every=0, n_negative=16, eval_batch_size=4, batch_size=2)


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in ("options.json", "weights.hdf5", "vocab.txt")}


def _step(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)["step"]


class _Killed(Exception):
    pass


def test_refused_or_failed_runs_leave_the_export_loadable(tmp_path, tiny_text, monkeypatch):
    out = tmp_path / "run"
    pretrain(tiny_text, None, small_options(), out, max_steps=2, **FAST)
    before = _snapshot(out)
    # another config: refused, and options.json still describes weights.hdf5
    with pytest.raises(CheckpointError, match="does not match this run.*options"):
        pretrain(tiny_text, None, small_options(dim=20), out, max_steps=3, resume=True, **FAST)
    assert _snapshot(out) == before
    # a replacing run that cannot start (a backend this device lacks, a setting that makes no sense)
    with pytest.raises(ValueError, match="kernel backend 'cuda'.*cannot run on cpu"):
        pretrain(tiny_text, None, small_options(dim=20), out, max_steps=3, overwrite=True, device="cpu", backend="cuda", **FAST)
    with pytest.raises(ValueError, match="n_negative"):
        pretrain(tiny_text, None, small_options(dim=20), out, max_steps=3, overwrite=True, **{**FAST, "n_negative": 0})
    assert _snapshot(out) == before and _step(out) == 2
    elmo_fast.Elmo(str(out / "options.json"), str(out / "weights.hdf5"), 1)

    # options.json is written with the weights at the end, not when a run starts
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        pretrain(tiny_text, None, small_options(), tmp_path / "killed", max_steps=3, optimizer="adam", **FAST)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert sorted(os.listdir(tmp_path / "killed")) == ["vocab.txt"]


@pytest.mark.parametrize("bad, name", [
    (dict(n_negative=0), "n_negative"), (dict(batch_size=0), "batch_size"), (dict(eval_every=-1), "eval_every"),
    (dict(checkpoint_every=-1), "checkpoint_every"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(dropout=1.0), "dropout"), (dict(max_vocab=3), "max_vocab"), (dict(eval_max_tokens=0), "eval_max_tokens"),
    (dict(min_count=0), "min_count"), (dict(clip_norm=-1.0), "clip_norm"), (dict(eval_batch_size=0), "eval_batch_size"),
    (dict(max_steps=0), "max_steps"), (dict(max_steps=-1), "max_steps"), (dict(max_steps=None, max_time=0), "max_time"),
])
def test_settings_that_make_no_sense_are_refused_before_anything_runs(tmp_path, tiny_text, bad, name):
    out = tmp_path / "run"
    kw = {**FAST, "max_steps": 2, **bad}
    with pytest.raises(ValueError, match=rf"^{name} \(--{name.replace('_', '-')}\) must be"):
        pretrain(tiny_text, None, small_options(), out, **kw)
    assert not out.exists()


def test_cli_refuses_n_negative_zero_in_one_line(tmp_path, tiny_text, capsys):
    rc = cli_main(["pretrain", "--train", tiny_text, "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2",
                   "--n-negative", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "n_negative (--n-negative) must be an integer >= 1" in err
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_text, monkeypatch):
    real_forward = loop.BidirectionalLM.forward

    def nan_in_step_3(self, batch, state=None, step=None):
        (lf, lb, nf, nb), new_state = real_forward(self, batch, state, step)
        return (lf * float("nan") if step == 2 else lf, lb, nf, nb), new_state

    monkeypatch.setattr(loop.BidirectionalLM, "forward", nan_in_step_3)
    out = tmp_path / "run"
    kw = {**FAST, "checkpoint_every": 2, "optimizer": "adam", "lr": 1e-2}
    with pytest.raises(TrainingDiverged, match=r"^step 3: the training loss nan is not finite.*lower the learning rate"):
        pretrain(tiny_text, tiny_text, small_options(), out, max_steps=6, **kw)
    assert _step(out) == 2
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "vocab.txt"]  # nothing diverged exported
    # the hint works: --resume with a lower learning rate continues from the last good checkpoint
    monkeypatch.setattr(loop.BidirectionalLM, "forward", real_forward)
    r = pretrain(tiny_text, tiny_text, small_options(), out, max_steps=4, resume=True, **{**kw, "lr": 1e-3})
    assert r["steps"] == 4 and r["train_loss"] == r["train_loss"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(g["lr"] == 1e-3 for g in ckpt["optimizer"]["param_groups"])


def test_non_finite_weights_are_never_checkpointed(tmp_path, tiny_text, monkeypatch):
    """Without clipping no gradient norm is computed: a non-finite update is caught at the checkpoint."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoning_step(self, *a, **k):
        real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning_step)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="^step 2: the model's weights are no longer finite"):
        pretrain(tiny_text, None, small_options(), out, max_steps=4, **{**FAST, "checkpoint_every": 2, "clip_norm": 0,
                                                                         "optimizer": "adam"})
    assert sorted(os.listdir(out)) == ["vocab.txt"]


def test_resume_accepts_the_same_data_under_another_path(tmp_path, tiny_text, monkeypatch):
    (tmp_path / "data").mkdir()
    shutil.copy(tiny_text, tmp_path / "data" / "train.txt")
    monkeypatch.chdir(tmp_path)
    kw = {**FAST, "checkpoint_every": 1}
    pretrain("data/train.txt", None, small_options(), "run", max_steps=2, **kw)
    assert pretrain(str(tmp_path / "data" / "train.txt"), None, small_options(), "run", max_steps=3, resume=True, **kw)["steps"] == 3
    monkeypatch.chdir(tmp_path / "run")
    assert pretrain("../data/train.txt", None, small_options(), ".", max_steps=4, resume=True, **kw)["steps"] == 4
    monkeypatch.chdir(tmp_path)
    # other text of the same name and size is other data, and the message says what to do
    lines = open("data/train.txt", encoding="utf-8").read().splitlines(keepends=True)
    (tmp_path / "other").mkdir()
    with open("other/train.txt", "w", encoding="utf-8") as f:
        f.writelines(lines[::-1])
    assert os.path.getsize("other/train.txt") == os.path.getsize("data/train.txt")
    with pytest.raises(CheckpointError, match="trained on other data.*same content.*paths may differ"):
        pretrain("other/train.txt", None, small_options(), "run", max_steps=5, resume=True, **kw)
    # a checkpoint from before the content check (file names only, paths as typed) still resumes
    ckpt = torch.load("run/checkpoint.pt", weights_only=False)
    del ckpt["signature"]["train_files"]
    ckpt["ranks"][0]["data"]["paths"] = ["train.txt"]
    torch.save(ckpt, "run/checkpoint.pt")
    assert pretrain(str(tmp_path / "data" / "train.txt"), None, small_options(), "run", max_steps=5, resume=True, **kw)["steps"] == 5


def test_an_existing_run_is_not_replaced_silently(tmp_path, tiny_text, capsys):
    out = tmp_path / "run"
    pretrain(tiny_text, None, small_options(), out, max_steps=3, **FAST)
    with pytest.raises(ValueError, match="already holds a pretraining run.*--resume.*--overwrite.*another --out"):
        pretrain(tiny_text, None, small_options(), out, max_steps=1, **FAST)
    assert _step(out) == 3
    with pytest.raises(ValueError, match="exclude each other"):
        pretrain(tiny_text, None, small_options(), out, max_steps=1, resume=True, overwrite=True, **FAST)
    # an exported ELMo without a checkpoint is protected too, even from --resume (nothing to resume)
    (out / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="already holds an ELMo"):
        pretrain(tiny_text, None, small_options(), out, max_steps=1, resume=True, **FAST)
    rc = cli_main(["pretrain", "--train", tiny_text, "--out", str(out), "--config", "tiny", "--max-steps", "1",
                   "--batch-size", "2", "--n-negative", "8", "--overwrite", "--no-progress"])
    assert rc == 0 and _step(out) == 1


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path, tiny_text):
    out = tmp_path / "run"
    pretrain(tiny_text, None, small_options(), out, max_steps=1, **FAST)
    # the names utils.atomic_path gives (a SIGKILL mid-write leaves them), and some that are not ours
    ours = [os.path.basename(tempfile.mkstemp(prefix=f".{n}.", suffix=".tmp", dir=out)[1]) for n in ("checkpoint.pt", "weights.hdf5")]
    others = [".notes.tmp", "x.checkpoint.pt.abc.tmp", ".checkpoint.pt.abc.tmp.keep"]
    for n in others:
        (out / n).write_text("not ours")
    pretrain(tiny_text, None, small_options(), out, max_steps=2, resume=True, **FAST)
    left = os.listdir(out)
    assert not set(ours) & set(left) and set(others) <= set(left)


def test_text_that_is_not_utf8_is_named(tmp_path, tiny_text):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"a b c\nd e\ncaf\xe9 au lait\n")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"latin1\.txt, line 3: not UTF-8 text \(byte 0xe9.*must be UTF-8 text"):
        pretrain(str(latin1), None, small_options(), out, max_steps=1, **{**FAST, "min_count": 1})
    with pytest.raises(ValueError, match=r"latin1\.txt, line 3: not UTF-8 text"):
        pretrain(tiny_text, str(latin1), small_options(), out, max_steps=1, **FAST)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"binary\.txt, line 2: not UTF-8 text \(byte 0x80"):
        pretrain(str(binary), None, small_options(), out, max_steps=1, **FAST)
    assert not out.exists()


def test_unusable_devices_are_one_line_errors(tmp_path, tiny_text, monkeypatch, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pretrain(tiny_text, None, small_options(), out, max_steps=1, device="gpu0", **FAST)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': no CUDA GPU is available"):
        pretrain(tiny_text, None, small_options(), out, max_steps=1, device="cuda", **FAST)
    for device in ("cuda:0", "gpu0", "meta"):
        rc = cli_main(["pretrain", "--train", tiny_text, "--out", str(out), "--max-steps", "1", "--device", device, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"device {device!r}" in err, err
    assert not out.exists()
