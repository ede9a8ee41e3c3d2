"""Two gloo processes on the CPU train exactly like one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elmo_fast.testing import assert_close, small_options
from elmo_fast.train import pretrain

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")

KW = dict(max_steps=4, progress=False, eval_every=0, checkpoint_every=2, n_negative=16, dropout=0.0, optimizer="adam",
          lr=1e-2, eval_batch_size=3, seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, train, out, errors):
    try:
        os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        torch.set_num_threads(1)
        r = pretrain(train, train, small_options(), out, batch_size=2, device="cpu", **KW)
        if rank == 0:
            torch.save(r, os.path.join(out, "result.pt"))
    except BaseException as e:  # report to the parent instead of hanging the other rank
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


def test_two_gloo_processes_equal_one(tmp_path, tiny_text):
    one = pretrain(tiny_text, tiny_text, small_options(), tmp_path / "one", batch_size=4, device="cpu", **KW)
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    out = str(tmp_path / "two")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(k, 2, port, tiny_text, out, errors)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a distributed worker hung"
    msgs = []
    while not errors.empty():
        msgs.append(errors.get())
    assert not msgs and all(p.exitcode == 0 for p in procs), msgs
    two = torch.load(os.path.join(out, "result.pt"), weights_only=False)
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 4 and two["tokens"] == one["tokens"]
    # same data, negatives and global-mean gradient: same model up to float summation order
    assert abs(two["train_loss"] - one["train_loss"]) < 1e-4 * abs(one["train_loss"])
    assert abs(two["valid_perplexity"] - one["valid_perplexity"]) < 1e-4 * one["valid_perplexity"]
    s1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    s2 = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    for k, v in s1["model"].items():
        assert_close(k, v, s2["model"][k], atol=1e-4, rtol=1e-3)
    assert len(s2["ranks"]) == 2  # each rank's data position and LSTM state is in the checkpoint


def test_torchrun_cli(tmp_path, tiny_text):
    """The documented launch: `torchrun --nproc-per-node 2 -m elmo_fast.cli pretrain ...` (gloo on CPU)
    writes one exported ELMo from rank 0 that loads back."""
    import json
    import subprocess
    import sys

    from elmo_fast import Elmo, batch_to_ids
    from elmo_fast.options import save_options

    save_options(small_options(), tmp_path / "options.json")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "elmo_fast.cli",
           "pretrain", "--train", tiny_text, "--valid", tiny_text, "--config", str(tmp_path / "options.json"), "--out", str(out),
           "--max-steps", "3", "--batch-size", "2", "--device", "cpu", "--n-negative", "16", "--eval-every", "0", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 3
    assert "validation perplexity" in proc.stdout
    elmo = Elmo(str(out / "options.json"), str(out / "weights.hdf5"), 1, dropout=0.0)
    assert elmo(batch_to_ids([["w1", "the", "w2"]]))["elmo_representations"][0].shape == (1, 3, 2 * small_options()["lstm"]["projection_dim"])
