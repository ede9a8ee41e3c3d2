"""`elmo-fast classify --train CSV --test CSV --elmo DIR --out DIR`: train a topic classifier on a
frozen ELMo and report test accuracy (metrics.json, report.txt, confusion_matrix.png in --out)."""

from __future__ import annotations

from .features import DEFAULT_MEMORY_BUDGET


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("classify", help="train and evaluate a text classifier on ELMo (AG News CSV layout)",
                              description="Train a classifier (own scalar mix + BiLSTM/pooling + linear) on a frozen ELMo "
                              "and evaluate it. CSVs: no header; class index (1..K), title, description.")
    p.add_argument("--train", required=True, help="training CSV")
    p.add_argument("--test", required=True, help="test CSV")
    p.add_argument("--valid", default=None, help="validation CSV for early stopping (default: a stratified part of --train)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="part of --train held out for validation (default 0.1)")
    p.add_argument("--classes", default=None, help="classes.txt (default: the one next to --train, if any)")
    p.add_argument("--elmo", required=True, help="directory with options.json + weights.hdf5 (e.g. from `elmo-fast pretrain`), "
                   "or a published model: small, medium, original, original-5.5B (downloaded once)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--encoder", choices=("bilstm", "pool"), default="bilstm")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (early stopping on the validation split)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--max-tokens", type=int, default=200, help="tokens kept per document (title first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="after training on the frozen ELMo, fine-tune the biLM with the head for up to N epochs (default 0: frozen)")
    p.add_argument("--finetune-lr", type=float, default=1e-4, help="biLM learning rate when fine-tuning (the head uses 5e-4)")
    p.add_argument("--bow", action="store_true", help="combine with a TF-IDF + logistic-regression model (weight chosen on validation)")
    p.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF + linear SVM baseline")
    p.add_argument("--cache-memory", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                   help="GiB of ELMo layers kept in memory; a split whose layers do not fit goes to a temporary file in --cache-dir (same results)")
    p.add_argument("--cache-dir", default=None, help="folder for the layer cache beyond --cache-memory (default: the system's temporary folder)")
    p.add_argument("--backend", default=None, help="kernel backend (torch|cpp|triton|cuda; default: fastest)")
    p.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


# classify()'s keyword arguments as the command line spells them, for the messages of check_options.
FLAGS = {"valid_fraction": "--valid-fraction", "max_tokens": "--max-tokens", "encoder": "--encoder", "hidden": "--hidden",
         "max_epochs": "--epochs", "patience": "--patience", "batch_size": "--batch-size", "lr": "--lr", "dropout": "--dropout",
         "seed": "--seed", "finetune_epochs": "--finetune-epochs", "finetune_lr": "--finetune-lr"}


def cache_budget(gib: float) -> int:
    """--cache-memory in bytes; a UsageError unless it is a number >= 0."""
    import math

    from ..utils import UsageError

    if not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib < 0:
        raise UsageError(f"--cache-memory must be a number of GiB >= 0 (0: all on disk), got {gib!r}")
    return int(gib * 2**30)


def run(args) -> int:
    import os

    from .. import pretrained
    from ..utils import check_output_dir, resolve_device
    from .data import load_csv
    from .train import check_data, check_options, classify, load_bilm

    # Options, output location and device first: a mistake there must not cost the data loading,
    # the ELMo features and the training that come before the report is written.
    options = {"valid_fraction": args.valid_fraction, "max_tokens": args.max_tokens, "encoder": args.encoder, "hidden": args.hidden,
               "max_epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
               "dropout": args.dropout, "seed": args.seed, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr}
    check_options(FLAGS, **options)
    check_output_dir(args.out)
    memory_budget = cache_budget(args.cache_memory)
    if args.cache_dir is not None:
        check_output_dir(args.cache_dir)
    device = resolve_device(args.device)
    train = load_csv(args.train, args.classes)
    check_data(train)  # a single training class: say so before blaming the test file's labels
    # Test and validation rows are measured against the training classes: the same classes.txt, or
    # without one the indices the training data has (so a class it lacks is an error there too).
    classes = train.classes_file or train.class_names
    classes_from = None if train.classes_file else (f"the training data {args.train} has class indices 1..{train.num_classes} "
                                                    "and no classes.txt")
    test = load_csv(args.test, classes, classes_from=classes_from)
    valid = load_csv(args.valid, classes, classes_from=classes_from) if args.valid else None
    check_data(train, test, valid)
    bilm = load_bilm(args.elmo, backend=args.backend, device=device)
    elmo = args.elmo if pretrained.is_published(args.elmo) else os.path.abspath(args.elmo)
    m = classify(train, test, bilm, args.out, valid=valid, progress=not args.no_progress, baseline=not args.no_baseline,
                 bow=args.bow, memory_budget=memory_budget, cache_dir=args.cache_dir, elmo=elmo, **options)
    what = "ELMo + bag-of-words" if args.bow else "ELMo"
    print(f"test accuracy ({what}): {m['accuracy']:.4f}  (macro-F1 {m['macro_f1']:.4f}, {m['n_test']} test rows)")
    if "elmo_frozen" in m:
        print(f"  frozen ELMo (before fine-tuning) {m['elmo_frozen']['accuracy']:.4f}")
    if args.bow:
        print(f"  ELMo alone {m['elmo_only']['accuracy']:.4f}, bag-of-words alone {m['bow_only']['accuracy']:.4f}")
    if "tfidf_svm" in m:
        print(f"TF-IDF + linear SVM baseline on the same split: accuracy {m['tfidf_svm']['accuracy']:.4f}")
    print(f"report: {args.out}/metrics.json, report.txt, confusion_matrix.png")
    return 0
