"""Two source trees of elmo_fast (e.g. before and after a refactor) timed against each other on the CPU,
interleaved: every round runs one child process per tree, in alternating order, each timing the same
workloads (fast and eager), so the per-round ratios compare runs seconds apart under the same load.

    OMP_WAIT_POLICY=ACTIVE python -m benchmarks.bench_trees --tree before=/path/a --tree after=/path/b \\
        --rounds 5 --out benchmarks/results/zen3/refactor_16.json

Each tree needs its built extension in place (`elmo_fast/_C*.so`); the child imports elmo_fast from
that tree (PYTHONPATH) and checks it. Workloads, 2 threads, 32 sentences x 20 words of real text
(lm_corpus valid.txt when present, else a fixed synthetic vocabulary), random published-layout weights:
  small fwd fast / eager   Elmo('small') forward under no_grad, default backend vs backend="torch"
  small train fast / eager the same with requires_grad=True: forward + backward
  original fwd fast        Elmo('original') forward under no_grad (eager is ~4x slower: left out)
Each child reports the median of `--reps` timed calls after one warm-up call per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, random, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
import elmo_fast
from elmo_fast import Elmo, batch_to_ids
from elmo_fast import _ext
from elmo_fast.options import PRESETS
from elmo_fast.testing import random_tf_weights, write_hdf5
tree = sys.argv[1]
assert os.path.realpath(elmo_fast.__file__).startswith(os.path.realpath(tree)), (elmo_fast.__file__, tree)
assert _ext.cpp_ext() is not None, _ext.load_error("_C")
reps = int(sys.argv[3])
corpus = sys.argv[4]
rng = random.Random(0)
if os.path.exists(corpus):
    lines = [l.split() for l in open(corpus, encoding="utf-8") if len(l.split()) >= 20]
    sents = [l[:20] for l in rng.sample(lines, 32)]
else:
    vocab = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(1, 9))) for _ in range(3000)]
    sents = [[rng.choice(vocab) for _ in range(20)] for _ in range(32)]
ids = batch_to_ids(sents)
models = {}
def model(name, backend, grad):
    key = (name, backend, grad)
    if key not in models:
        path = os.path.join(sys.argv[5], name + ".hdf5")
        if not os.path.exists(path):
            torch.manual_seed(0)
            write_hdf5(path, random_tf_weights(PRESETS[name], scale=0.5, seed=0))
        models[key] = Elmo(PRESETS[name], path, 1, dropout=0.0, stateful=False, requires_grad=grad, backend=backend)
    return models[key]
def fwd(name, backend):
    m = model(name, backend, False)
    with torch.no_grad():
        m(ids)
def train(name, backend):
    m = model(name, backend, True)
    m(ids)["elmo_representations"][0].sum().backward()
work = {
    "small fwd fast": lambda: fwd("small", None),
    "small fwd eager": lambda: fwd("small", "torch"),
    "small train fast": lambda: train("small", None),
    "small train eager": lambda: train("small", "torch"),
    "original fwd fast": lambda: fwd("original", None),
}
out = {}
for name, fn in work.items():
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    out[name] = statistics.median(ts)
print(json.dumps(out))
"""


def main(argv=None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree (twice or more)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights-dir", default="/tmp", help="where the random weight files are cached")
    p.add_argument("--corpus", default=os.path.join(here, "..", "..", "shared", "data", "lm_corpus", "valid.txt"))
    p.add_argument("--out", default=None, help="JSON file for every round's times and the summary")
    args = p.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree]
    if len(trees) < 2 or any(len(t) != 2 for t in trees):
        p.error("give at least two --tree NAME=PATH")
    rounds = []
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        res = {}
        for name, path in order:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
            proc = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(path), str(args.threads), str(args.reps),
                                   args.corpus, args.weights_dir], capture_output=True, text=True, env=env, cwd=args.weights_dir)
            if proc.returncode:
                sys.exit(f"tree {name} failed:\n{proc.stderr[-3000:]}")
            res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append(res)
        print(f"round {r + 1}: " + json.dumps(res), flush=True)
    base = trees[0][0]
    work = list(rounds[0][base])
    summary = {}
    lines = [f"| workload | {' | '.join(n + ' median s' for n, _ in trees)} | "
             + " | ".join(f"{n} / {base} (median, min-max)" for n, _ in trees[1:]) + " |",
             "|---|" + "---|" * (2 * len(trees) - 1)]
    for w in work:
        med = {n: statistics.median(rd[n][w] for rd in rounds) for n, _ in trees}
        ratios = {n: [rd[n][w] / rd[base][w] for rd in rounds] for n, _ in trees[1:]}
        summary[w] = {"median_s": med, "time_ratio_vs_" + base: {n: [statistics.median(v), min(v), max(v)] for n, v in ratios.items()}}
        lines.append(f"| {w} | " + " | ".join(f"{med[n]:.4f}" for n, _ in trees) + " | "
                     + " | ".join(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in ratios.values()) + " |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"trees": dict(trees), "threads": args.threads, "reps": args.reps, "rounds": rounds, "summary": summary,
                       "table": lines}, f, indent=1)


if __name__ == "__main__":
    main()
