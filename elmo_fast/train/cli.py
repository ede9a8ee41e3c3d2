"""`elmo-fast pretrain`: train a biLM and write options.json + weights.hdf5."""

from __future__ import annotations

import argparse
import os

from ..utils import UsageError

# The training settings left out take the --config preset's values (PRESET_TRAIN), else bilm-tf's.
PRESET = "(default: the --config preset's, see elmo_fast.train.TRAIN_DEFAULTS)"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a bidirectional LM (ELMo) on text with one tokenized sentence per line",
        description="Pretrain ELMo's biLM; OUT receives options.json and weights.hdf5 (loadable by elmo_fast.Elmo). "
        "Multi-GPU / multi-node: launch with torchrun.",
    )
    p.add_argument("--train", required=True, nargs="+", help="training text file(s), one tokenized sentence per line")
    p.add_argument("--valid", nargs="+", default=None, help="held-out text file(s) for perplexity")
    p.add_argument("--config", default="tiny", help="tiny | small | medium | original | path to options.json (default: tiny); the training "
                   "settings default to the preset's (an options.json with a preset's model counts as that preset), "
                   "otherwise to bilm-tf's (elmo_fast.train.TRAIN_DEFAULTS)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: no limit; give --max-steps and/or --max-time)")
    p.add_argument("--max-time", type=float, default=None, help="seconds of training, evaluation included (default: no limit)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per process (global batch = this x processes) " + PRESET)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run (checkpoint.pt, weights.hdf5) already in OUT; without it (or --resume) such an OUT is refused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None, choices=["torch", "cpp", "triton", "cuda"], help="kernel backend (default: fastest)")
    p.add_argument("--optimizer", choices=["adagrad", "adam"], default=None, help=PRESET)
    p.add_argument("--lr", type=float, default=None, help=PRESET)
    p.add_argument("--n-negative", type=int, default=None, help="negatives of the sampled softmax " + PRESET)
    p.add_argument("--dropout", type=float, default=None, help=PRESET)
    p.add_argument("--min-count", type=int, default=None, help="vocabulary: minimum word count " + PRESET)
    p.add_argument("--max-vocab", type=int, default=None, help="vocabulary: maximum size " + PRESET)
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation evaluations " + PRESET)
    p.add_argument("--eval-max-tokens", type=int, default=None,
                   help="score at most this many validation tokens per evaluation (0: all; the tiny preset uses 20000) " + PRESET)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints " + PRESET)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .loop import pretrain

    if args.max_steps is None and args.max_time is None:
        raise UsageError("give --max-steps and/or --max-time, otherwise pretraining never stops")
    extra = {k: getattr(args, k) for k in ("optimizer", "lr", "n_negative", "dropout", "min_count", "max_vocab",
                                           "eval_every", "checkpoint_every", "device") if getattr(args, k) is not None}
    if args.eval_max_tokens is not None:
        if args.eval_max_tokens < 0:
            raise UsageError(f"--eval-max-tokens must be >= 0 (0: all), got {args.eval_max_tokens}")
        extra["eval_max_tokens"] = args.eval_max_tokens or None
    result = pretrain(args.train, args.valid, args.config, args.out, max_steps=args.max_steps, max_time=args.max_time,
                      batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite, seed=args.seed,
                      progress=not args.no_progress, backend=args.backend, **extra)
    if int(os.environ.get("RANK", "0")) == 0:
        ppl = result["valid_perplexity"]
        print(f"steps {result['steps']}, train tokens/s {result['train_tokens_per_s']:.0f}")
        print(f"validation perplexity: {ppl:.2f}" if ppl is not None else "validation perplexity: n/a (no --valid)")
        print(f"wrote {result['options_file']} and {result['weight_file']}")
    return 0
