"""The kernel plans: each variant the encoder and the LSTM can run is named by `plan_char_cnn` /
`plan_lstm_proj`, the calls follow them (checked by what runs), a debug log line names the plan
of every call, and `python -m elmo_fast.info --plan` prints them for a model."""

from __future__ import annotations

import logging
import subprocess
import sys

import torch

from elmo_fast.ops.encoder.plan import plan_char_cnn
from elmo_fast.ops.lstm_proj.plan import plan_lstm_proj
from tests.ops.char_cnn_helpers import requires_cpp
from tests.ops.lstm_proj_helpers import make_inputs

CPU = torch.device("cpu")


@requires_cpp
def test_encoder_plans_on_the_cpu():
    inf = plan_char_cnn(CPU, torch.float32, inference=True, cache=True)
    assert (inf.backend, inf.highway, inf.packed, inf.cache, inf.dedup) == ("cpp", "packed", torch.float32, True, False)
    train = plan_char_cnn(CPU, torch.float32, inference=False, cache=True)
    assert (train.highway, train.packed, train.cache, train.dedup) == ("cpp", None, False, True)
    assert plan_char_cnn(CPU, torch.float64, inference=True).packed is None
    bf16 = plan_char_cnn(CPU, torch.float32, inference=True, gemm_dtype=torch.bfloat16)
    assert (bf16.packed, bf16.highway) == (torch.bfloat16, "packed")
    eager = plan_char_cnn(CPU, torch.float32, "torch", inference=True)
    assert (eager.backend, eager.highway, eager.packed, eager.dedup) == ("torch", "eager", None, False)
    assert plan_char_cnn(CPU, torch.float32, "torch", inference=True, gemm_dtype=torch.bfloat16).highway == "eager"
    assert not train.deterministic_backward  # only the GPU backends' backward has atomics


@requires_cpp
def test_lstm_plans_on_the_cpu(monkeypatch):
    small, original = ((4096, 128), (128, 1024)), ((16384, 512), (512, 4096))
    p = plan_lstm_proj(CPU, torch.float32, *small)
    assert (p.backend, p.kernel, p.packed, p.pair) == ("cpp", "lstm_proj_fwd_packed", torch.float32, False)
    assert plan_lstm_proj(CPU, torch.float64, *small).kernel == "lstm_proj_fwd"
    assert plan_lstm_proj(CPU, torch.float32, *small, gemm_dtype=torch.bfloat16).packed == torch.bfloat16
    assert plan_lstm_proj(CPU, torch.float32, *small, "torch").kernel == "eager (lstm_proj_ref)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert plan_lstm_proj(CPU, torch.float32, *small, directions=2).pair
    assert not plan_lstm_proj(CPU, torch.float32, *original, directions=2).pair  # its per-step GEMMs split well
    assert not plan_lstm_proj(CPU, torch.float32, *small, "torch", directions=2).pair
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert not plan_lstm_proj(CPU, torch.float32, *small, directions=2).pair


@requires_cpp
def test_the_calls_follow_their_plans_and_log_them(caplog):
    """One Elmo forward logs one encoder plan and a plan per LSTM layer; the encoder's packed plan
    runs the packed GEMM op (and the training plan does not)."""
    from elmo_fast import Elmo, batch_to_ids
    from elmo_fast.testing import small_options

    elmo = Elmo(small_options(n_layers=2), None, 1, dropout=0.0, stateful=False)
    ids = batch_to_ids([["a", "b", "c"], ["d"]])
    calls = []
    real = torch.ops.elmo_fast.packed_linear

    class Spy:
        def __call__(self, *a):
            calls.append(a[0].shape)
            return real(*a)

        def __getattr__(self, name):
            return getattr(real, name)

    ops = torch.ops.elmo_fast
    try:
        ops.packed_linear = Spy()
        with caplog.at_level(logging.DEBUG, logger="elmo_fast.plan"), torch.no_grad():
            elmo(ids)
        assert calls, "inference on the cpp backend did not take the packed highway/projection GEMMs"
        messages = [r.getMessage() for r in caplog.records if r.name == "elmo_fast.plan"]
        assert any(m.startswith("char_cnn plan: backend=cpp, highway=packed") for m in messages), messages
        assert sum(m.startswith("lstm_proj plan: backend=cpp") for m in messages) >= 2, messages
        calls.clear()
        tuned = Elmo(small_options(n_layers=2), None, 1, dropout=0.0, stateful=False, requires_grad=True)
        tuned(ids)["elmo_representations"][0].sum().backward()
        assert not calls, "a forward that needs gradients ran the packed (inference-only) GEMMs"
    finally:
        del ops.packed_linear


def test_info_prints_the_plan():
    out = subprocess.run([sys.executable, "-m", "elmo_fast.info", "--plan", "tiny", "--train"], capture_output=True,
                         text=True, check=True).stdout
    assert "plans for 'tiny' on cpu, training (gradients)" in out
    assert "char encoder: backend=" in out and "biLSTM (2 layers, C=256, P=128): backend=" in out
    bad = subprocess.run([sys.executable, "-m", "elmo_fast.info", "--plan", "tiny", "--backend", "cuda"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "cannot run on cpu tensors" in bad.stderr and "Traceback" not in bad.stderr


@requires_cpp
def test_the_pair_takes_the_packed_weights_its_plan_names():
    """lstm_proj_pair packs the weights in the dtype `LstmPlan.packed` says: fp32 copies for fp32,
    bf16 ones with the bf16-GEMM option, none for fp64 (the unpacked kernels)."""
    from elmo_fast.ops.lstm_proj.function import _pair_args

    for dtype, gemm_dtype, want in ((torch.float32, None, torch.float32), (torch.float32, torch.bfloat16, torch.bfloat16),
                                    (torch.float64, None, None)):
        x, lengths, ws, h0, c0 = make_inputs(B=3, T=4, I=5, C=6, P=3, dtype=dtype)
        plan = plan_lstm_proj(x.device, dtype, ws[1].shape, ws[3].shape, "cpp", gemm_dtype, directions=2)
        assert plan.packed == want
        packed = _pair_args(plan, x, lengths, *ws, h0, c0)[8:]
        assert all(p is None for p in packed) if want is None else all(p.dtype == want for p in packed)
