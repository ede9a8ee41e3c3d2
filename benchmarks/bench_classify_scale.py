"""`elmo-fast classify` at corpus scale: peak RSS and wall time against the number of documents, with
the layer cache in memory and spilled to disk (`--cache-memory`, `--cache-dir`), on the 'tiny'
preset (random weights in the published layout). Each run is its own process, so its peak RSS
(`wait4`'s ru_maxrss) is that run's alone.

    OMP_WAIT_POLICY=ACTIVE python benchmarks/bench_classify_scale.py --sizes 20000 200000 \\
        --out benchmarks/results/zen3/classify_scale.md

Documents: synthetic AG News rows (4 classes at random; title = the first 8 tokens of one sentence of
../shared/data/lm_corpus/train.txt, description = the next two sentences), random words where that
corpus is absent. The test split is a tenth of the training size. The head is the cheap `pool`
encoder for one epoch: the point is the memory of the feature pass and of reading the cache back,
not the accuracy (random ELMo weights, random labels).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import random
import sys
import tempfile

from bench_embed import TRAIN, cpu_name, make_model, run_measured, write_results


def _sentences():
    if os.path.exists(TRAIN):
        with open(TRAIN, encoding="utf-8") as f:
            lines = [line.split() for line in f if line.strip()]
    else:
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
        lines = [[rng.choice(words) for _ in range(rng.randint(3, 30))] for _ in range(10000)]
    return itertools.cycle(lines)


def write_split(path: str, n: int, sents, rng: random.Random) -> int:
    """`n` rows in the AG News layout into `path`; returns the number of whitespace tokens."""
    tokens = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for _ in range(n):
            title = next(sents)[:8]
            body = next(sents) + next(sents)
            tokens += len(title) + len(body)
            w.writerow([rng.randint(1, 4), " ".join(title), " ".join(body)])
    return tokens


def run_one(train: str, test: str, model: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "elmo_fast.cli", "classify", "--train", train, "--test", test, "--elmo", model,
           "--out", out, "--encoder", "pool", "--hidden", "32", "--epochs", "1", "--no-baseline", "--no-progress", *extra]
    wall, rss, log = run_measured(cmd, "classify")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    spill = [line for line in log.splitlines() if line.startswith("layer cache:")]
    return {"wall_s": wall, "peak_rss_mb": rss, "elmo_s": m["timings"]["elmo_s"],
            "elmo_tokens_per_s": m["timings"]["elmo_tokens_per_s"], "spill": spill[0] if spill else "in memory"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--cache-memory", nargs="+", default=["0.25", "none"],
                    help="GiB for --cache-memory per run ('none': a budget larger than any cache, all in memory)")
    ap.add_argument("--in-memory-up-to", type=int, default=20_000, help="skip the in-memory run above this size")
    ap.add_argument("--out", default=None, help="markdown table to write (with a .json next to it)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        model = os.path.join(d, "tiny")
        os.makedirs(model)
        make_model(model)
        rng, sents = random.Random(0), _sentences()
        for n in args.sizes:
            train, test = os.path.join(d, f"train-{n}.csv"), os.path.join(d, f"test-{n}.csv")
            tokens = write_split(train, n, sents, rng) + write_split(test, n // 10, sents, rng)
            for budget in args.cache_memory:
                if budget == "none" and n > args.in_memory_up_to:
                    continue
                extra = ["--cache-memory", "1e6" if budget == "none" else budget, "--cache-dir", os.path.join(d, "spill")]
                os.makedirs(os.path.join(d, "spill"), exist_ok=True)
                r = run_one(train, test, model, os.path.join(d, f"out-{n}-{budget}"), extra)
                r.update(documents=n, test_documents=n // 10, tokens=tokens, cache_memory_gib=budget)
                print(json.dumps(r), flush=True)
                rows.append(r)
    if args.out:
        import torch

        head = (f"# `elmo-fast classify` at corpus scale ('tiny', `--encoder pool`, 1 epoch)\n\nCPU: {cpu_name()}, "
                f"{os.cpu_count()} cores; torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}. "
                "Documents: training rows (plus a tenth as many test rows; a tenth of training is validation). "
                "Wall time includes the process start and the model load. Peak RSS is the process's own.\n\n"
                "| documents | tokens | --cache-memory GiB | wall s | ELMo tokens/s | peak RSS MB | layer cache |\n"
                "|---|---|---|---|---|---|---|\n")
        body = "".join(f"| {r['documents']:,} | {r['tokens']:,} | {r['cache_memory_gib']} | {r['wall_s']:.0f} | "
                       f"{r['elmo_tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['spill']} |\n" for r in rows)
        write_results(args.out, head + body, rows)


if __name__ == "__main__":
    main()
