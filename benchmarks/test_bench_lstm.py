"""The stacked biLSTM (ElmoLstm: both directions, every layer, residuals) through lstm_proj:
fast backend vs the eager reference, side by side in one process, forward and forward+backward,
for the published 'small' and 'original' sizes at 32x20 and 64x40 words (+2 boundary tokens),
with 1 and 2 intra-op threads. Not run by CI (speed is never asserted in tests).

    OMP_WAIT_POLICY=ACTIVE PYTHONPATH=. python -m pytest benchmarks/test_bench_lstm.py \\
        --benchmark-json benchmarks/results/lstm_cpu.json -k "small"

Select with -k (e.g. "small and fwd and 32x20"); 'original' forward+backward is slow on a CPU.
Providers: "eager" (lstm_proj_ref, AllenNLP's per-step structure) and the fastest available
backend for the device ("cpp" on a CPU, "cuda" on a GPU); "triton" too on a GPU; "cpp_bf16" is
the cpp backend with bf16 GEMM operands and fp32 state (inference only); "gemm_bound" (forward)
runs only the GEMMs a fused forward must do -- per layer and direction one input-map GEMM over all
steps, then per step the recurrent and projection GEMMs on the active rows -- through torch.mm
(cuBLAS on a GPU, MKL on a CPU) into preallocated outputs: the lower bound the LSTM issue measures
the fused op against ("within 1.5x of the GEMM-only lower bound"); "torch_lstm" (CPU) is what a
user would pick instead: per layer and direction a `torch.nn.LSTM(proj_size=P)` (the same weights,
no cell or projection clip: nn.LSTM has none) on packed sequences, with the same residuals.
Every CPU row's extra_info has its GFLOP/s and fraction of the machine's GEMM peak in its GEMM
dtype (benchmarks/peak.py): model FLOPs of the active rows, backward counted as 2x forward.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import options
from benchmarks.peak import lstm_flops, record_rate
from elmo_fast._backend import available_backends, cpu_has_native_bf16
from elmo_fast.modules.lstm import ElmoLstm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = [b for b in ("cuda", "triton") if b in available_backends(DEVICE)] if DEVICE == "cuda" else ["cpp", "cpp_bf16"]
FAST.append("gemm_bound")
if DEVICE == "cpu":
    FAST.append("torch_lstm")
SHAPES = [(32, 20), (64, 40)]


def _model(preset: str) -> ElmoLstm:
    lstm = options(preset)["lstm"]
    P, C = lstm["projection_dim"], lstm["dim"]
    torch.manual_seed(0)
    model = ElmoLstm(P, P, C, lstm["n_layers"], True, memory_cell_clip_value=lstm["cell_clip"],
                     state_projection_clip_value=lstm["proj_clip"], stateful=False)
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


def _gemm_bound_step(model: ElmoLstm, x: torch.Tensor, mask: torch.Tensor):
    """The GEMMs of a fused forward and nothing else (no pointwise work, no clipping, no residuals);
    outputs are preallocated, so the time is the GEMMs' alone. Rows are taken in length order, so
    step t's active rows are a prefix, as in the fused op."""
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True)
    active = [int(n) for n in (lengths[order][None, :] > torch.arange(x.shape[1], device=x.device)[:, None]).sum(1)]
    B, T, _ = x.shape
    layers = [getattr(model, f"{d}_layer_{k}") for k in range(model.num_layers) for d in ("forward", "backward")]
    C4, P = layers[0].state_linearity.weight.shape
    C = C4 // 4
    gates = torch.empty(T * B, C4, device=x.device)
    g_step, hp = torch.empty(B, C4, device=x.device), torch.empty(B, P, device=x.device)
    m = torch.randn(B, C, device=x.device)
    xs = x.transpose(0, 1).reshape(T * B, -1).contiguous()

    def run():
        for cell in layers:
            torch.mm(xs, cell.input_linearity.weight.t(), out=gates)
            for t in range(T):
                n = active[t]
                if n:
                    torch.mm(hp[:n], cell.state_linearity.weight.t(), out=g_step[:n])
                    torch.mm(m[:n], cell.state_projection.weight.t(), out=hp[:n])

    return run


def _torch_lstm_step(model: ElmoLstm, x: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor | None):
    """The same biLSTM as torch.nn.LSTM(proj_size=P) modules, one per layer and direction, on packed
    sequences (the reverse direction on each row reversed within its length), residuals above the
    first layer as ElmoLstm adds them; no clips (nn.LSTM has none)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = mask.sum(1).cpu()
    B, T, _ = x.shape
    t = torch.arange(T)[None, :]
    rev = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t).to(x.device)  # per-row reversal
    lstms = {}
    for k in range(model.num_layers):
        for d in ("forward", "backward"):
            cell = getattr(model, f"{d}_layer_{k}")
            C4, P = cell.state_linearity.weight.shape
            m = torch.nn.LSTM(cell.input_linearity.weight.shape[1], C4 // 4, proj_size=P, batch_first=True).to(x.device)
            with torch.no_grad():
                m.weight_ih_l0.copy_(cell.input_linearity.weight)
                m.weight_hh_l0.copy_(cell.state_linearity.weight)
                m.bias_ih_l0.copy_(cell.state_linearity.bias)
                m.bias_hh_l0.zero_()
                m.weight_hr_l0.copy_(cell.state_projection.weight)
            m.requires_grad_(grad is not None)
            lstms[d, k] = m

    def run():
        f, b = x, x.gather(1, rev[..., None].expand_as(x))
        for k in range(model.num_layers):
            outs = []
            for d, inp in (("forward", f), ("backward", b)):
                packed = pack_padded_sequence(inp, lengths, batch_first=True, enforce_sorted=False)
                out, _ = pad_packed_sequence(lstms[d, k](packed)[0], batch_first=True, total_length=T)
                outs.append(out + inp if k > 0 else out)
            f, b = outs
        if grad is not None:
            (f * grad[..., : f.shape[-1]]).sum().add((b * grad[..., f.shape[-1] :]).sum()).backward()
            for m in lstms.values():
                m.zero_grad(set_to_none=True)

    return run


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
    if provider in ("cpp_bf16", "gemm_bound") and mode != "fwd":
        pytest.skip(f"{provider} is a forward-only provider")
    if "bf16" in provider and not cpu_has_native_bf16():
        pytest.skip("this CPU has no avx512_bf16/AMX: bf16 GEMMs would be emulated (slower than fp32)")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = _model(preset)
        model.set_backend({"eager": "torch", "cpp_bf16": "cpp", "gemm_bound": "torch", "torch_lstm": "torch"}.get(provider, provider))
        model.set_gemm_dtype(torch.bfloat16 if provider == "cpp_bf16" else None)
        x, mask = _inputs(*shape, model.hidden_size)
        if mode == "fwdbwd":
            model.requires_grad_(True)
            x.requires_grad_(True)
            grad = torch.randn(model.num_layers, *x.shape[:2], 2 * model.hidden_size, device=DEVICE)

        bound = _gemm_bound_step(model, x, mask) if provider == "gemm_bound" else None
        if provider == "torch_lstm":
            bound = _torch_lstm_step(model, x, mask, grad[-1] if mode == "fwdbwd" else None)

        def step():
            if provider == "torch_lstm" and mode == "fwdbwd":
                bound()
            elif bound is not None:
                with torch.no_grad():
                    bound()
            elif mode == "fwd":
                with torch.no_grad():
                    model(x, mask)
            else:
                model(x, mask).backward(grad)
                model.zero_grad(set_to_none=True)
            _sync()

        slow = DEVICE == "cpu" and preset == "original"
        benchmark.pedantic(step, rounds=2 if slow else 4, iterations=1, warmup_rounds=1)
        benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                                    tokens=shape[0] * (shape[1] + 2), threads=threads, steps=shape[1] + 2)
        benchmark.extra_info["ms_per_step"] = 1e3 * benchmark.stats.stats.min / (shape[1] + 2)
        benchmark.extra_info["tokens_per_s"] = benchmark.extra_info["tokens"] / benchmark.stats.stats.mean
        if DEVICE == "cpu":
            lstm = options(preset)["lstm"]
            P, C = lstm["projection_dim"], lstm["dim"]
            flops = lstm_flops(mask.sum(1), x.shape[1], P, C, P, lstm["n_layers"]) * (3 if mode == "fwdbwd" else 1)
            record_rate(benchmark, flops, torch.bfloat16 if provider == "cpp_bf16" else torch.float32)
    finally:
        torch.set_num_threads(old)
