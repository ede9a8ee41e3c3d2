"""Whole-`Elmo` forward, fast (default backends) vs eager (the reference, AllenNLP's structure),
side by side, on real text. Tokens/s lands in each result's extra_info.

    python -m pytest benchmarks/test_bench_elmo.py --benchmark-json=benchmarks/results/elmo_cpu.json
"""

import pytest
import torch

from benchmarks.common import SHAPES, real_text_batch, tokens_per_second
from elmo_fast import Elmo, PRESETS, batch_to_ids
from elmo_fast.testing import random_tf_weights, write_hdf5


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    files = {}
    for name in ("small", "original"):
        d = tmp_path_factory.mktemp(name)
        write_hdf5(d / "weights.hdf5", random_tf_weights(PRESETS[name], scale=1.0, seed=0))
        files[name] = str(d / "weights.hdf5")
    return files


@pytest.mark.parametrize("provider", ["eager", "fast"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("config", ["small", "original"])
def test_elmo_forward(benchmark, weight_files, config, shape, provider):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "torch" if provider == "eager" else None
    elmo = Elmo(config, weight_files[config], 1, dropout=0.0, stateful=False, backend=backend).to(device).eval()
    batch = real_text_batch(*shape)
    ids = batch_to_ids(batch).to(device)
    n_tokens = sum(map(len, batch))

    def run():
        with torch.no_grad():
            out = elmo(ids)["elmo_representations"][0]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up (allocator, lazy init)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=3 if config == "original" else 5, iterations=1)
    tokens_per_second(benchmark, n_tokens)
    benchmark.extra_info.update(provider=provider, config=config, shape=f"{shape[0]}x{shape[1]}", device=device,
                                threads=torch.get_num_threads())
    if device == "cuda":
        benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        benchmark.extra_info["device_name"] = torch.cuda.get_device_name()
