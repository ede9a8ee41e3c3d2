"""Pretraining throughput: one full training step (char encoder + biLSTM forward, sampled softmax,
backward, Adam update) with the fused ops (default backends) vs the eager reference, same model and
same batches of real text, side by side in one process. Tokens/s lands in each result's extra_info.

    python -m pytest benchmarks/test_bench_train.py --benchmark-json=benchmarks/results/train_cpu.json
    python -m benchmarks.test_bench_train --config tiny --batch-size 32 --steps 6   # interleaved A/B ratio
"""

from __future__ import annotations

import argparse
import os
import time

import pytest
import torch

from elmo_fast.options import load_options
from elmo_fast.train.data import LMBatcher, Vocabulary
from elmo_fast.train.model import BidirectionalLM
from benchmarks.common import LM_CORPUS

TRAIN = LM_CORPUS


def _setup(config: str, batch_size: int, backend, n_negative: int = 1024, seed: int = 0):
    if not os.path.exists(TRAIN):
        pytest.skip(f"real text not found at {TRAIN}")
    vocab = Vocabulary.build(TRAIN, min_count=1)
    batcher = LMBatcher(TRAIN, vocab, batch_size, 20)
    torch.manual_seed(seed)
    model = BidirectionalLM(load_options(config), len(vocab), dropout=0.1, n_negative=n_negative, backend=backend)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    return model, opt, batcher


def _step(model, opt, batcher, state, step):
    batch = batcher.next_batch()
    (lf, lb, nf, nb), new_state = model(batch, state, step)
    loss = (lf / nf + lb / nb) / 2
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return tuple([(h.detach(), c.detach()) for h, c in d] for d in new_state), int(nf + nb) // 2


@pytest.mark.parametrize("provider", ["eager", "fast"])
@pytest.mark.parametrize("batch_size", [32])
@pytest.mark.parametrize("config", ["tiny"])
def test_train_step(benchmark, config, batch_size, provider):
    model, opt, batcher = _setup(config, batch_size, "torch" if provider == "eager" else None)
    box = {"state": None, "step": 0, "tokens": 0}

    def run():
        box["state"], n = _step(model, opt, batcher, box["state"], box["step"])
        box["step"] += 1
        box["tokens"] = n

    run()  # warm-up
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(provider=provider, config=config, batch_size=batch_size, unroll=20,
                                threads=torch.get_num_threads(), tokens=box["tokens"])
    if benchmark.stats and benchmark.stats.stats.mean:
        benchmark.extra_info["tokens_per_s"] = box["tokens"] / benchmark.stats.stats.mean


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--n-negative", type=int, default=1024)
    args = p.parse_args()
    runs = {name: _setup(args.config, args.batch_size, backend, args.n_negative) for name, backend in (("eager", "torch"), ("fast", None))}
    state = {k: None for k in runs}
    times = {k: [] for k in runs}
    for step in range(args.steps + 1):
        for name, (model, opt, batcher) in runs.items():  # interleaved: both see the same host load
            t0 = time.perf_counter()
            state[name], n = _step(model, opt, batcher, state[name], step)
            if step:  # step 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"{name:5s} {args.config} B={args.batch_size}x20: median step {med * 1e3:.0f} ms, {n / med:.0f} tokens/s")
    print(f"speed-up fast/eager: {sorted(times['eager'])[len(ts) // 2] / sorted(times['fast'])[len(ts) // 2]:.2f}x "
          f"({torch.get_num_threads()} threads, {torch.__version__})")


if __name__ == "__main__":
    main()
