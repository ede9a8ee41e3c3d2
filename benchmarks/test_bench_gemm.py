"""The machine's GEMM peak (benchmarks/peak.py) as benchmark rows: our packed micro-kernel and
torch.mm, fp32 and bf16, at the large square shape that defines the peak and at the LSTM's per-step
shapes ('original': recurrent 32 x 512 -> 16384, projection 32 x 4096 -> 512), 1 and 2 threads.

    OMP_WAIT_POLICY=ACTIVE python -m pytest benchmarks/test_bench_gemm.py --benchmark-json=benchmarks/results/gemm_cpu.json

Each row's extra_info has its GFLOP/s and the fraction of the packed kernel's square-shape peak of
its dtype. bf16 rows skip on CPUs without avx512_bf16 (the packed kernel would run them through
fp32 FMAs and torch.mm would emulate them, so there is no bf16 peak to report).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.peak import PEAK_SHAPE, gemm_peak
from elmo_fast import _ext
from elmo_fast._backend import cpu_has_native_bf16

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or _ext.cpp_ext() is None,
                                reason="CPU GEMM peak: needs the C++ extension, measured on CPU-only hosts")

SHAPES = [(PEAK_SHAPE, PEAK_SHAPE, PEAK_SHAPE), (32, 512, 16384), (32, 4096, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("provider", ["packed", "torch_mm"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("threads", [1, 2], ids=lambda t: f"{t}thr")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm(benchmark, shape, threads, dtype, provider):
    if dtype == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no avx512_bf16/AMX: no native bf16 GEMM peak to measure")
    M, K, N = shape
    ops = torch.ops.elmo_fast
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
        if provider == "packed":
            packed = ops.gemm_pack_bf16(w.t()) if dtype == "bf16" else ops.gemm_pack(w.t())

            def run():
                return ops.packed_linear(x, packed, None, N)
        else:
            xd, wd = x.to(DTYPES[dtype]), w.to(DTYPES[dtype]).t()
            y = torch.empty(M, N, dtype=DTYPES[dtype])

            def run():
                return torch.mm(xd, wd, out=y)

        reps = 3 if M * K * N >= PEAK_SHAPE**3 else 20
        benchmark.pedantic(run, rounds=5, iterations=reps, warmup_rounds=1)
        peak = gemm_peak(DTYPES[dtype], threads)["packed"]
        gflops = 2.0 * M * K * N / benchmark.stats.stats.min / 1e9
        benchmark.extra_info.update(threads=threads, dtype=dtype, flops=2.0 * M * K * N, gflops_best=gflops,
                                    peak_gflops=peak, frac_of_peak_best=gflops / peak)
    finally:
        torch.set_num_threads(old)
