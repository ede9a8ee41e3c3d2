"""The stacked biLSTM (ElmoLstm: both directions, every layer, residuals) through lstm_proj:
fast backend vs the eager reference, side by side in one process, forward and forward+backward,
for the published 'small' and 'original' sizes at 32x20 and 64x40 words (+2 boundary tokens),
with 1 and 2 intra-op threads. Not run by CI (speed is never asserted in tests).

    OMP_WAIT_POLICY=ACTIVE PYTHONPATH=. python -m pytest benchmarks/test_bench_lstm.py \\
        --benchmark-json benchmarks/results/lstm_cpu.json -k "small"

Select with -k (e.g. "small and fwd and 32x20"); 'original' forward+backward is slow on a CPU.
Providers: "eager" (lstm_proj_ref, AllenNLP's per-step structure) and the fastest available
backend for the device ("cpp" on a CPU, "cuda" on a GPU); "triton" too on a GPU; "cpp_bf16" is
the cpp backend with bf16 GEMM operands and fp32 state (inference only).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import options
from elmo_fast._backend import available_backends
from elmo_fast.modules.lstm import ElmoLstm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = [b for b in ("cuda", "triton") if b in available_backends(DEVICE)] if DEVICE == "cuda" else ["cpp", "cpp_bf16"]
SHAPES = [(32, 20), (64, 40)]


def _model(preset: str) -> ElmoLstm:
    lstm = options(preset)["lstm"]
    P, C = lstm["projection_dim"], lstm["dim"]
    torch.manual_seed(0)
    model = ElmoLstm(P, P, C, lstm["n_layers"], lstm["cell_clip"], lstm["proj_clip"], stateful=False)
    with torch.no_grad():
        for p in model.parameters():  # weights of trained-model scale, so the clips fire now and then
            p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    return model.to(DEVICE)


def _inputs(batch: int, words: int, P: int):
    g = torch.Generator().manual_seed(0)
    T = words + 2
    lengths = torch.randint(max(3, T // 2), T + 1, (batch,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    x = torch.randn(batch, T, P, generator=g) * mask[..., None]
    return x.to(DEVICE), mask.to(DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# provider varies fastest, so fast and eager of one configuration run back to back (noisy host)
@pytest.mark.parametrize("provider", ["eager", *FAST])
@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"{t}thr")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("preset", ["small", "original"])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_elmo_lstm(benchmark, provider, mode, preset, shape, threads):
    if DEVICE == "cuda" and threads != 1:
        pytest.skip("thread count only matters on the CPU")
    if provider == "cpp_bf16" and mode != "fwd":
        pytest.skip("the bf16-GEMM path is inference-only")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _model(preset)
        model.set_backend({"eager": "torch", "cpp_bf16": "cpp"}.get(provider, provider))
        model.set_gemm_dtype(torch.bfloat16 if provider == "cpp_bf16" else None)
        x, mask = _inputs(*shape, model.hidden_size)
        if mode == "fwdbwd":
            model.requires_grad_(True)
            x.requires_grad_(True)
            grad = torch.randn(model.num_layers, *x.shape[:2], 2 * model.hidden_size, device=DEVICE)

        def step():
            if mode == "fwd":
                with torch.no_grad():
                    model(x, mask)
            else:
                model(x, mask).backward(grad)
                model.zero_grad(set_to_none=True)
            _sync()

        slow = DEVICE == "cpu" and preset == "original"
        benchmark.pedantic(step, rounds=2 if slow else 4, iterations=1, warmup_rounds=1)
        benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                                    tokens=shape[0] * (shape[1] + 2), threads=threads)
        benchmark.extra_info["tokens_per_s"] = benchmark.extra_info["tokens"] / benchmark.stats.stats.mean
    finally:
        torch.set_num_threads(old)
