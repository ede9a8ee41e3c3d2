"""Classification pipeline hot spot: the frozen-ELMo feature pass over real AG News documents,
fused backend vs the eager reference side by side (tokens/s in extra_info).

    PYTHONPATH=. OMP_WAIT_POLICY=ACTIVE pytest benchmarks/bench_classify.py --benchmark-only
"""

import os

import pytest
import torch

from elmo_fast import ElmoBiLm
from elmo_fast._backend import available_backends
from elmo_fast.classify.data import load_csv
from elmo_fast.classify.features import compute_layers, tokenize_documents

from .common import SHARED_DATA, tokens_per_second

AG = os.path.join(SHARED_DATA, "ag_news", "sample.csv")


@pytest.fixture(scope="module")
def docs():
    if not os.path.exists(AG):
        pytest.skip(f"{AG} not present")
    d = load_csv(AG).subset(range(64))
    return tokenize_documents(d.titles, d.texts, 200, progress=False)


@pytest.mark.parametrize("provider", ["eager", "fast"])
def test_feature_pass(benchmark, docs, provider):
    """'eager' = backend 'torch' (the reference modules); 'fast' = the C++ ops, with the word cache
    that compute_layers turns on (fresh in every round: it lives for one call)."""
    backend = "torch" if provider == "eager" else "cpp"
    if backend not in available_backends("cpu"):
        pytest.skip(f"backend {backend} not built here")
    torch.manual_seed(0)
    bilm = ElmoBiLm("tiny", None, stateful=False, backend=backend)
    n_tok = sum(len(s) for doc in docs for s in doc)
    benchmark.pedantic(compute_layers, args=(bilm, docs), kwargs={"progress": False}, rounds=3, warmup_rounds=1)
    tokens_per_second(benchmark, n_tok)
