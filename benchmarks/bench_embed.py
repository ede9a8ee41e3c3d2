"""`elmo-fast embed` at corpus scale: sentences/s and peak RSS against the number of sentences, on the
'tiny' preset (random weights in the published layout). Each size runs in its own process, so its
peak RSS (`wait4`'s ru_maxrss) is that run's alone; vectors stream to disk, so it must stay flat.

    OMP_WAIT_POLICY=ACTIVE python benchmarks/bench_embed.py --sizes 10000 100000 --out benchmarks/results/zen4/embed_cpu.md

Sentences: the lines of ../shared/data/lm_corpus/train.txt (real text, 25 tokens on average), cycled
to the size asked; random words where that corpus is absent. `--top` keeps the file at 2P x 4 bytes
per token (1 KB with 'tiny').
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_DATA = os.environ.get("ELMO_FAST_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
TRAIN = os.path.join(SHARED_DATA, "lm_corpus", "train.txt")


def write_corpus(path: str, n: int) -> int:
    """`n` sentences into `path`; returns the number of tokens."""
    if os.path.exists(TRAIN):
        with open(TRAIN, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    else:
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 50))) for _ in range(10000)]
    tokens = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in itertools.islice(itertools.cycle(lines), n):
            f.write(line + "\n")
            tokens += len(line.split())
    return tokens


def make_model(d: str) -> None:
    import torch

    from elmo_fast import ElmoBiLm, save_hdf5
    from elmo_fast.options import save_options

    torch.manual_seed(0)
    bilm = ElmoBiLm("tiny", None)
    save_options(bilm.options, os.path.join(d, "options.json"))
    save_hdf5(bilm, os.path.join(d, "weights.hdf5"))


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_measured(cmd: list[str], what: str, trace: list | None = None) -> tuple[float, float, str]:
    """Run `cmd` in its own process: (wall s, its own peak RSS in MB, its stdout + stderr). The output
    goes to a temporary file, not a pipe, so a chatty child never blocks on a full pipe. `trace`: a
    list that gets (seconds, RSS MB) every second of the run (Linux /proc), to see where RSS grows."""
    import threading

    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(1.0):
                rss = _rss_mb(p.pid)
                if rss is not None:
                    trace.append((round(time.perf_counter() - t0, 1), round(rss, 1)))

        sampler = threading.Thread(target=sample, daemon=True) if trace is not None else None
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        if sampler:
            sampler.join()
        log.seek(0)
        text = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{what} failed: {text[-3000:]}")
    return wall, usage.ru_maxrss / 1024, text


def rss_at(trace: list, fractions=(0.25, 0.5, 0.75, 0.95)) -> dict:
    """RSS (MB) at those fractions of the run's wall time, from a `run_measured` trace."""
    if not trace:
        return {}
    end = trace[-1][0]
    return {f"{int(q * 100)}%": next(r for t, r in trace if t >= q * end) for q in fractions}


def write_results(out: str, markdown: str, rows: list[dict]) -> None:
    """The markdown table to `out` and the raw rows (with the CPU's name) to the .json beside it."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(markdown)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"cpu": cpu_name(), "rows": rows}, f, indent=1)


def run_one(corpus: str, out: str, model: str, extra: list[str]) -> dict:
    """One `elmo-fast embed` process: wall seconds and its own peak RSS."""
    cmd = [sys.executable, "-m", "elmo_fast.cli", "embed", corpus, out, "--top", "--elmo", model, "--no-progress", *extra]
    trace: list = []
    wall, rss, _ = run_measured(cmd, "embed", trace)
    step = max(1, len(trace) // 200)
    return {"wall_s": wall, "peak_rss_mb": rss, "file_mb": os.path.getsize(out) / 2**20, "rss_at_mb": rss_at(trace),
            "rss_trace": trace[::step]}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bench(sizes: list[int], modes: dict[str, list[str]], workdir: str) -> list[dict]:
    model = os.path.join(workdir, "tiny")
    os.makedirs(model, exist_ok=True)
    make_model(model)
    rows = []
    for n in sizes:
        corpus = os.path.join(workdir, f"corpus-{n}.txt")
        tokens = write_corpus(corpus, n)
        for name, extra in modes.items():
            out = os.path.join(workdir, f"out-{n}-{name}.hdf5")
            r = run_one(corpus, out, model, extra)
            os.unlink(out)
            r.update(sentences=n, tokens=tokens, mode=name, sentences_per_s=n / r["wall_s"], tokens_per_s=tokens / r["wall_s"])
            print(json.dumps(r), flush=True)
            rows.append(r)
        os.unlink(corpus)
    return rows


MODES = {
    "allennlp (stateful, --batch-size 64)": [],
    "stateless --max-tokens-per-batch 4096": ["--max-tokens-per-batch", "4096"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--modes", nargs="+", choices=["stateful", "stateless"], default=["stateful", "stateless"])
    ap.add_argument("--out", default=None, help="markdown table to write (with a .json next to it)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    modes = {k: v for k, v in MODES.items() if (k.startswith("allennlp") and "stateful" in args.modes)
             or (k.startswith("stateless") and "stateless" in args.modes)}
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        rows = bench(args.sizes, modes, d)
    if args.out:
        import torch

        head = (f"# `elmo-fast embed` at corpus scale ('tiny', --top)\n\nCPU: {cpu_name()}, {os.cpu_count()} cores; "
                f"torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}. "
                "Wall time includes the process start and the model load. Peak RSS is the process's own.\n\n"
                "RSS at 25/50/75/95% of the run's wall time is sampled from /proc every second (the full trace is in the .json).\n\n"
                "| sentences | tokens | mode | wall s | sentences/s | tokens/s | RSS MB at 25/50/75/95% | peak RSS MB | file MB |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        body = "".join(f"| {r['sentences']:,} | {r['tokens']:,} | {r['mode']} | {r['wall_s']:.1f} | {r['sentences_per_s']:,.0f} | "
                       f"{r['tokens_per_s']:,.0f} | {' / '.join(f'{v:,.0f}' for v in r['rss_at_mb'].values())} | "
                       f"{r['peak_rss_mb']:,.0f} | {r['file_mb']:,.0f} |\n" for r in rows)
        write_results(args.out, head + body, rows)


if __name__ == "__main__":
    main()
