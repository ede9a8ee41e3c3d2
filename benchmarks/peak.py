"""This machine's GEMM peak and the FLOPs of the benchmarked models, so that CPU benchmark rows can
state their achieved GFLOP/s and the fraction of that peak next to tokens/s.

The peak is what our packed micro-kernel (csrc/common/packed_gemm.h) reaches on a large square GEMM
(2048^3, weights packed once, x and y preallocated) in fp32 and in bf16 (bf16 operands, fp32 sums;
the vdpbf16ps kernel on avx512_bf16 CPUs), with the threads the row runs with; `torch.mm` at the same
shape is measured beside it. Rows divide by the packed kernel's peak of their GEMM dtype.

FLOPs are the model's multiply-adds x 2 (padding excluded): the LSTM counts, per layer and
direction, the input map, recurrent and projection GEMMs of the active rows of each step, for every
token; the char encoder its convolutions, highway layers and projection once per distinct word of
the batch (a word's vector does not depend on its context, so that is the work the batch needs;
eager, which encodes every token, does more than it). Backward is counted as twice the forward.
"""

from __future__ import annotations

import time

import torch

PEAK_SHAPE = 2048
_PEAKS: dict[tuple, dict[str, float]] = {}


def _best_seconds(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_peak(dtype: torch.dtype = torch.float32, threads: int | None = None, n: int = PEAK_SHAPE) -> dict[str, float]:
    """GFLOP/s at n x n x n of {'packed': our micro-kernel, 'torch_mm': torch.mm} in `dtype`
    (torch.float32 or torch.bfloat16), cached per (dtype, threads) for the process."""
    threads = threads or torch.get_num_threads()
    key = (dtype, threads, n)
    if key not in _PEAKS:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _PEAKS[key] = measure_gemm(n, n, n, dtype)
        finally:
            torch.set_num_threads(old)
    return _PEAKS[key]


def measure_gemm(M: int, K: int, N: int, dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of y[M, N] = x[M, K] @ w[N, K]^T: packed_linear on the packed weight (packed once) and
    torch.mm with a preallocated output (bf16: bf16 operands; torch.mm's result is bf16, ours fp32)."""
    ops = torch.ops.elmo_fast
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    flops = 2.0 * M * K * N
    out: dict[str, float] = {}
    if hasattr(ops, "gemm_pack"):
        packed = ops.gemm_pack_bf16(w.t()) if dtype == torch.bfloat16 else ops.gemm_pack(w.t())
        # A fresh [M, N] output per call would be page-faulted in each time (large ones are mmapped):
        # the allocation is timed too, as in every packed_linear call, so keep M x N moderate.
        out["packed"] = flops / _best_seconds(lambda: ops.packed_linear(x, packed, None, N), repeats) / 1e9
    xd, wd = x.to(dtype), w.to(dtype).t()
    y = torch.empty(M, N, dtype=dtype)
    out["torch_mm"] = flops / _best_seconds(lambda: torch.mm(xd, wd, out=y), repeats) / 1e9
    return out


def lstm_flops(lengths: torch.Tensor, T: int, I: int, C: int, P: int, layers: int, directions: int = 2) -> float:
    """Forward FLOPs of a stacked LSTM with projection over a packed batch (rows active for their
    length only); every layer has input size I (ELMo's layers take P = I)."""
    active = sum(int(v) for v in lengths.clamp(max=T))
    return 2.0 * active * (4 * C * I + 4 * C * P + P * C) * layers * directions


def char_cnn_flops(options: dict, n_tokens: int) -> float:
    """Forward FLOPs of the char encoder per `n_tokens` tokens (50 characters each)."""
    cnn = options["char_cnn"]
    E, W = cnn["embedding"]["dim"], cnn["max_characters_per_token"]
    conv = sum(2.0 * E * w * n * (W - w + 1) for w, n in cnn["filters"])
    F = sum(n for _, n in cnn["filters"])
    highway = cnn["n_highway"] * 2.0 * F * 2 * F
    proj = 2.0 * F * options["lstm"]["projection_dim"]
    return n_tokens * (conv + highway + proj)


def elmo_flops(options: dict, sentences: list[list[str]]) -> float:
    """Forward FLOPs of the whole biLM on these sentences: the char encoder once per distinct word
    (and the two boundary tokens), the biLSTM for every token of every sentence (plus its boundary tokens)."""
    lstm = options["lstm"]
    lengths = torch.tensor([len(s) + 2 for s in sentences])
    T = int(lengths.max())
    P, C = lstm["projection_dim"], lstm["dim"]
    distinct = len({w for s in sentences for w in s}) + 2
    return char_cnn_flops(options, distinct) + lstm_flops(lengths, T, P, C, P, lstm["n_layers"])


def record_rate(benchmark, flops: float, gemm_dtype: torch.dtype = torch.float32) -> None:
    """GFLOP/s and the fraction of this machine's peak (the packed micro-kernel at 2048^3 in the row's
    GEMM dtype, same thread count) in the row's extra_info, from the mean time; summarize.py
    recomputes both from the minimum."""
    peak = gemm_peak(gemm_dtype)["packed"]
    benchmark.extra_info.update(flops=flops, peak_gflops=peak, peak_dtype=str(gemm_dtype).replace("torch.", ""))
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None and stats.mean:
        benchmark.extra_info["gflops"] = flops / stats.mean / 1e9
        benchmark.extra_info["frac_of_peak"] = benchmark.extra_info["gflops"] / peak
