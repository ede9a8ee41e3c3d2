"""Character encoder: fused op (dedup + C++/CUDA/Triton conv kernel, then the highway -- packed GEMM
+ C++ gate on the CPU, one fused Triton kernel on a GPU -- and the projection) vs the eager reference
`char_cnn_ref`, side by side in one run; on a GPU also one highway layer alone (`test_highway_cuda`).

Grid: provider (eager, fast = the default backend, on the CPU fast-bf16: `gemm_dtype=torch.bfloat16`,
forward, and on a GPU triton besides the default cuda) x mode (fwd, fwd+bwd) x preset ('small', 'original') x data (real
text, random unique words: separates dedup from kernel speed) x shape (32x20, 64x40) x threads
(1, 2; CPU only). Each record carries tokens/s and the achieved FLOP/s counted with the eager
reference's operation count (so 'fast' above the hardware peak means work avoided, not faster
arithmetic). Run:  pytest benchmarks/test_bench_char_cnn.py --benchmark-json out.json
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import (
    SHAPES,
    char_ids,
    options,
    real_text_batch,
    tokens_per_second,
    unique_words_batch,
)
from elmo_fast._backend import choose_backend, cpu_has_native_bf16
from elmo_fast.modules.char_encoder import ElmoCharacterEncoder, add_sentence_boundary_token_ids
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def eager_flops(opts: dict, n_tokens: int, backward: bool) -> float:
    """Multiply-adds x 2 of the eager encoder (full conv over all positions), x3 with backward."""
    cnn = opts["char_cnn"]
    E, W, F_total = cnn["embedding"]["dim"], cnn["max_characters_per_token"], sum(n for _, n in cnn["filters"])
    conv = sum(2 * n * E * w * (W - w + 1) for w, n in cnn["filters"])
    dense = cnn["n_highway"] * 2 * F_total * 2 * F_total + 2 * F_total * opts["lstm"]["projection_dim"]
    return (conv + dense) * n_tokens * (3 if backward else 1)


@pytest.mark.parametrize("provider", ["eager", "fast", "fast-bf16", "triton"])  # top decorator varies fastest: providers adjacent
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("data", ["real", "unique"])
@pytest.mark.parametrize("preset", ["small", "original"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_char_encoder(benchmark, provider, mode, preset, data, shape, device, threads):
    if device == "cuda" and threads == 2:
        pytest.skip("thread count only matters on the CPU")
    if provider == "fast-bf16" and (device != "cpu" or mode != "fwd"):
        pytest.skip("the bf16-GEMM option is CPU inference")
    if provider == "triton" and device != "cuda":
        pytest.skip("Triton is a GPU backend here (on the CPU it only runs interpreted, in tests)")
    if "bf16" in provider and not cpu_has_native_bf16():
        pytest.skip("this CPU has no avx512_bf16/AMX: bf16 GEMMs would be emulated (slower than fp32)")
    opts = options(preset)
    enc = ElmoCharacterEncoder(opts, requires_grad=True).to(device)
    batch = real_text_batch(*shape) if data == "real" else unique_words_batch(*shape)
    x = char_ids(batch).to(device)
    ids, _ = add_sentence_boundary_token_ids(x, (x > 0).any(-1), enc._beginning_of_sentence_characters, enc._end_of_sentence_characters)
    ids = ids.reshape(-1, ids.shape[-1])
    convs = enc.convolutions
    args = (
        ids,
        enc._char_embedding_weights,
        [c.weight for c in convs],
        [c.bias for c in convs],
        [layer.weight for layer in enc._highways._layers],
        [layer.bias for layer in enc._highways._layers],
        enc._projection.weight,
        enc._projection.bias,
        opts["char_cnn"]["activation"],
    )
    fn = {"eager": lambda: char_cnn_ref(*args), "fast": lambda: char_cnn(*args),
          "fast-bf16": lambda: char_cnn(*args, gemm_dtype=torch.bfloat16),
          # on a GPU 'fast' is the CUDA backend (the default there); this row measures the other one
          "triton": lambda: char_cnn(*args, backend="triton")}[provider]
    if provider == "fast-bf16":
        with torch.no_grad():
            ref, out = char_cnn(*args), fn()
        benchmark.extra_info["rel_rms_err_vs_fp32"] = ((out - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
    backward = mode == "fwd_bwd"
    grad = torch.randn(ids.shape[0], opts["lstm"]["projection_dim"], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        if backward:
            enc.zero_grad(set_to_none=True)
            fn().backward(grad)
        else:
            with torch.no_grad():
                fn()
        sync()

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run()  # warm-up (JIT of Triton kernels, allocator)
        benchmark.pedantic(run, rounds=3 if preset == "original" or shape[0] > 32 else 5, iterations=1)
    finally:
        torch.set_num_threads(old_threads)
    tokens_per_second(benchmark, ids.shape[0])
    benchmark.extra_info.update(
        backend={"eager": "torch-eager", "triton": "triton"}.get(provider) or choose_backend(ids.device),
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        unique_tokens=int(torch.unique(ids, dim=0).shape[0]),
    )
    if benchmark.stats is not None and benchmark.stats.stats.mean:
        benchmark.extra_info["eager_equivalent_gflops"] = eager_flops(opts, ids.shape[0], backward) / benchmark.stats.stats.mean / 1e9


@pytest.mark.parametrize("provider", ["eager", "triton"])
@pytest.mark.parametrize("rows", [1024, 2560])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_highway_cuda(benchmark, provider, rows, mode):
    """One highway layer at the published width (F = 2048, W [4096, 2048]) on a GPU: eager (cuBLAS
    GEMM + five pointwise kernels; IEEE fp32 under PyTorch's default flags) vs the fused Triton
    GEMM + gate (3xTF32 under those flags). 1024 rows ~ the distinct tokens of a 64x40 batch of
    real text, 2560 = all of them. Records TFLOP/s of the forward GEMM and the error against fp64."""
    if not torch.cuda.is_available():
        pytest.skip("the fused highway kernel is the GPU path (the CPU runs the packed GEMM + C++ gate)")
    from elmo_fast.ops.highway import TritonHighwayFunction, highway_ref

    D = 2048
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(rows, D, generator=g, dtype=torch.float64)
    w64 = torch.randn(2 * D, D, generator=g, dtype=torch.float64) / D**0.5
    b64 = torch.randn(2 * D, generator=g, dtype=torch.float64)
    x, w, b = (t.float().cuda().requires_grad_(mode == "fwd_bwd") for t in (x64, w64, b64))
    fn = highway_ref if provider == "eager" else TritonHighwayFunction.apply
    dy = torch.randn(rows, D, device="cuda")

    def run():
        if mode == "fwd":
            with torch.no_grad():
                fn(x, w, b)
        else:
            x.grad = w.grad = b.grad = None
            fn(x, w, b).backward(dy)
        torch.cuda.synchronize()

    run()
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=20, iterations=1)
    with torch.no_grad():
        err = (fn(x, w, b).double().cpu() - highway_ref(x64, w64, b64)).abs().max().item()
    flops = 2 * rows * D * 2 * D * (3 if mode == "fwd_bwd" else 1)
    benchmark.extra_info.update(provider=provider, rows=rows, mode=mode, device=torch.cuda.get_device_name(),
                                tflops=flops / benchmark.stats.stats.min / 1e12, max_abs_err_vs_fp64=err,
                                peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20)
