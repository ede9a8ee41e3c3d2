"""`elmo-fast embed` throughput and peak RSS on 'tiny' (the corpus-size sweep is bench_embed.py; this
runs its smallest case under pytest-benchmark, sentences/s and peak RSS in extra_info).

    OMP_WAIT_POLICY=ACTIVE pytest benchmarks/test_bench_embed.py --benchmark-only
"""

import pytest

from .bench_embed import MODES, make_model, run_one, write_corpus

N = 10_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    make_model(str(d))
    path = str(d / "corpus.txt")
    return str(d), path, write_corpus(path, N)


@pytest.mark.parametrize("mode", list(MODES))
def test_embed_corpus(benchmark, corpus, mode, tmp_path):
    model, path, tokens = corpus
    result = benchmark.pedantic(run_one, args=(path, str(tmp_path / "out.hdf5"), model, MODES[mode]), rounds=1, iterations=1)
    benchmark.extra_info.update(sentences=N, tokens=tokens, sentences_per_s=N / result["wall_s"],
                                tokens_per_s=tokens / result["wall_s"], peak_rss_mb=result["peak_rss_mb"])
