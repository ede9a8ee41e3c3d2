"""Training the classifier head on cached ELMo layers (early stopping on a validation split), and
the whole pipeline: CSV -> tokens -> frozen-ELMo cache -> classifier -> metrics on the test set."""

from __future__ import annotations

import copy
import math
import numbers
import os
import time

import numpy as np
import torch
from torch import nn

from ..utils import UsageError, atomic_path, check_output_dir, is_int, require_extra
from .data import LabeledTexts, stratified_split
from .features import DEFAULT_MEMORY_BUDGET, LayerCache, compute_layers, tokenize_documents
from .model import ENCODERS, ElmoClassifierHead
from .report import log_loss as _log_loss

# The least integer each option can take. Checked before any work: a zero batch size or epoch count
# used to fail (or, for max_tokens=0, silently give every document zero tokens) only after the ELMo
# features of every document had been computed.
_INT_MIN = {"max_tokens": 1, "hidden": 1, "max_epochs": 1, "patience": 1, "batch_size": 1, "seed": 0, "finetune_epochs": 0}
_POSITIVE = ("lr", "finetune_lr")


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def check_options(names: dict[str, str] | None = None, **options) -> None:
    """Raise a one-line ValueError for an option value `classify` cannot use.

    `options` are `classify`'s keyword arguments (any of valid_fraction, max_tokens, encoder, hidden,
    max_epochs, patience, batch_size, lr, dropout, seed, finetune_epochs, finetune_lr); `names` maps
    them to the caller's spelling (the CLI's --flags) for the message.
    """
    names = names or {}

    def bad(key, need):
        raise UsageError(f"{names.get(key, key)} must be {need}, got {options[key]!r}")

    for key, value in options.items():
        if key in _INT_MIN:
            if key == "max_tokens" and value is None:
                continue
            if not is_int(value) or value < _INT_MIN[key]:
                bad(key, f"an integer >= {_INT_MIN[key]}")
            if key == "seed" and value >= 2**32:  # scikit-learn's random_state limit
                bad(key, "below 2**32")
        elif key in _POSITIVE:
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                bad(key, "a number > 0")
        elif key == "dropout":
            if not isinstance(value, numbers.Real) or not 0 <= value < 1:
                bad(key, "in [0, 1)")
        elif key == "valid_fraction":
            # An int is a row count, as stratified_split takes it.
            if is_int(value) and value >= 1:
                continue
            if is_int(value) or not isinstance(value, numbers.Real) or not 0 < value < 1:
                bad(key, "a fraction between 0 and 1 (exclusive)")
        elif key == "encoder":
            if value not in ENCODERS:
                bad(key, f"one of {', '.join(ENCODERS)}")
        else:
            raise TypeError(f"check_options() got an unexpected option {key!r}")


def check_data(train: LabeledTexts, test: LabeledTexts | None = None, valid: LabeledTexts | None = None) -> None:
    """Raise a one-line ValueError when the data cannot give a meaningful classifier: fewer than two
    classes among the training rows, an empty part, or test/validation labels outside the training classes."""
    k = train.num_classes
    for what, d in (("training", train), ("test", test), ("validation", valid)):
        if d is None:
            continue
        name = f"the {what} data" + (f" ({d.source})" if d.source else "")
        if len(d) == 0:
            raise ValueError(f"{name} has no rows")
        if d.num_classes != k:
            raise ValueError(f"the training data has {k} classes but {name} has {d.num_classes}; use the same classes.txt")
        outside = d.labels[(d.labels < 0) | (d.labels >= k)]
        if len(outside):
            raise ValueError(f"{name} has label {int(outside[0])}, outside the {k} training classes (0-based labels 0..{k - 1})")
    present = np.unique(train.labels)
    if len(present) < 2:
        raise ValueError(f"the training data{f' ({train.source})' if train.source else ''} has rows of a single class "
                         f"({train.class_names[present[0]]}); a classifier needs rows of at least 2 classes")


@torch.no_grad()
def predict(head: ElmoClassifierHead, cache: LayerCache, batch_size: int = 128, device=None) -> np.ndarray:
    """Class probabilities `[N, K]` for every document of `cache`."""
    device = device or next(head.parameters()).device
    head.eval()
    lens = cache.lengths().numpy()
    order = np.argsort(lens, kind="stable")  # similar lengths together: less padding
    out = np.zeros((len(cache), head.config["num_classes"]), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        layers, mask = cache.batch(idx, device)
        with torch.autocast(device_type="cuda", enabled=torch.device(device).type == "cuda"):
            logits = head(layers, mask)
        out[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
    return out


def train_head(train: LayerCache, y_train: np.ndarray, valid: LayerCache, y_valid: np.ndarray, num_classes: int, *,
               encoder: str = "bilstm", hidden: int = 128, dropout: float = 0.3, lr: float = 2e-3,
               weight_decay: float = 1e-2, batch_size: int = 32, max_epochs: int = 30, patience: int = 5,
               seed: int = 0, device=None, progress: bool = True, log=print) -> tuple[ElmoClassifierHead, dict]:
    """Train an `ElmoClassifierHead`, keeping the weights of the epoch with the lowest validation
    cross-entropy and stopping after `patience` epochs without improvement. Mixed precision
    (autocast) on a GPU.

    Loss rather than accuracy selects the epoch: on a validation split of a few dozen rows accuracy
    moves in steps of several percent and its first maximum is often an under-trained early epoch
    (measured on a 48-row AG split: best-accuracy selection stopped at epoch 3 and lost 15 points of
    test accuracy against later epochs).

    Returns (head with the best weights, history {'epochs', 'best_epoch', 'valid_accuracy', ...}).
    """
    from tqdm.auto import tqdm

    if len(train) != len(y_train) or len(valid) != len(y_valid):
        raise ValueError(f"features and labels differ in length: train {len(train)} vs {len(y_train)}, valid {len(valid)} vs {len(y_valid)}")
    if len(valid) == 0:
        raise ValueError("the validation split is empty; give more training rows or a --valid CSV")
    check_options(encoder=encoder, hidden=hidden, dropout=dropout, lr=lr, batch_size=batch_size, max_epochs=max_epochs,
                  patience=patience, seed=seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = ElmoClassifierHead(train.num_layers, train.dim, num_classes, encoder=encoder, hidden=hidden, dropout=dropout)
    head.set_feature_stats(*train.layer_stats())
    head = head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = nn.CrossEntropyLoss()
    y_train_t = torch.as_tensor(y_train, dtype=torch.long)
    best, best_loss, best_acc, best_epoch, history = None, float("inf"), 0.0, 0, []
    start = time.perf_counter()
    bar = tqdm(range(1, max_epochs + 1), desc="classifier", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        total = 0.0
        for idx in _batches(len(train), batch_size, rng):
            layers, mask = train.batch(idx, device)
            with torch.autocast(device_type="cuda", enabled=use_amp):
                loss = loss_fn(head(layers, mask).float(), y_train_t[idx].to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
            total += loss.item() * len(idx)
        p_valid = predict(head, valid, device=device)
        acc = float((p_valid.argmax(1) == y_valid).mean())
        vloss = _log_loss(p_valid, y_valid)
        history.append({"epoch": epoch, "train_loss": total / len(train), "valid_loss": vloss, "valid_accuracy": acc})
        bar.set_postfix(loss=f"{total / len(train):.3f}", valid_loss=f"{vloss:.3f}", valid_acc=f"{acc:.3f}")
        if vloss < best_loss:
            best_loss, best_acc, best_epoch, best = vloss, acc, epoch, copy.deepcopy(head.state_dict())
        elif epoch - best_epoch >= patience:
            break
    head.load_state_dict(best)
    info = {"epochs": len(history), "best_epoch": best_epoch, "valid_accuracy": best_acc, "valid_loss": best_loss, "history": history,
            "train_seconds": time.perf_counter() - start}
    log(f"classifier: epoch {best_epoch}/{len(history)} kept (valid loss {best_loss:.4f}, accuracy {best_acc:.4f})")
    return head, info


def tfidf_svm_baseline(train: LabeledTexts, test: LabeledTexts) -> dict:
    """TF-IDF (word 1-2 grams, sublinear tf) + linear SVM on title + description: the bag-of-words
    baseline, measured on exactly the same split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    xtr = vec.fit_transform(train.documents())
    clf = LinearSVC(C=1.0).fit(xtr, train.labels)
    pred = clf.predict(vec.transform(test.documents()))
    return {"accuracy": float(accuracy_score(test.labels, pred)), "macro_f1": float(f1_score(test.labels, pred, average="macro"))}


def bow_probabilities(train: LabeledTexts, *others: LabeledTexts, C: float = 10.0) -> list[np.ndarray]:
    """TF-IDF (word 1-2 grams) + logistic regression fitted on `train`; class probabilities of each of `others`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=C, max_iter=2000).fit(vec.fit_transform(train.documents()), train.labels)
    out = []
    for d in others:
        p = np.zeros((len(d), train.num_classes), dtype=np.float32)
        p[:, clf.classes_] = clf.predict_proba(vec.transform(d.documents()))
        out.append(p)
    return out


def combine(p_elmo: np.ndarray, p_bow: np.ndarray, w: float) -> np.ndarray:
    """Weighted geometric mean of the two models' probabilities (w on ELMo), renormalised."""
    logp = w * np.log(p_elmo + 1e-9) + (1 - w) * np.log(p_bow + 1e-9)
    p = np.exp(logp - logp.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def load_bilm(elmo_dir: str, backend: str | None = None, device=None):
    """The frozen biLM of an ELMo directory (`options.json` + `weights.hdf5`, e.g. from `elmo-fast pretrain`)
    or of a published model name ('original', ...; see `elmo_fast.pretrained`), downloaded once."""
    from .. import pretrained
    from ..modules.bilm import ElmoBiLm

    if pretrained.is_published(elmo_dir):
        options, weights = pretrained.resolve_model(elmo_dir)
    else:
        if isinstance(elmo_dir, str) and not os.path.isdir(elmo_dir):
            raise FileNotFoundError(f"ELMo directory {elmo_dir!r} does not exist; it must hold options.json and weights.hdf5 "
                                    f"(e.g. the --out of `elmo-fast pretrain`), or name a published model "
                                    f"({', '.join(pretrained.names())})")
        options = os.path.join(elmo_dir, "options.json")
        weights = os.path.join(elmo_dir, "weights.hdf5")
        for p in (options, weights):
            if not os.path.exists(p):
                raise FileNotFoundError(f"{p} is missing; an ELMo directory holds options.json and weights.hdf5 (from `elmo-fast pretrain`)")
    bilm = ElmoBiLm(options, weights, requires_grad=False, stateful=False, backend=backend)
    return bilm.to(device) if device is not None else bilm


def classify(train: LabeledTexts, test: LabeledTexts, bilm, out_dir: str | None = None, *, valid: LabeledTexts | None = None,
             valid_fraction: float = 0.1, max_tokens: int | None = 200, encoder: str = "bilstm", hidden: int = 128,
             max_epochs: int = 30, patience: int = 5, batch_size: int = 32, lr: float = 2e-3, dropout: float = 0.3, seed: int = 0,
             baseline: bool = True, bow: bool = False, finetune_epochs: int = 0, finetune_lr: float = 1e-4,
             memory_budget: int | None = DEFAULT_MEMORY_BUDGET, cache_dir: str | None = None, elmo: str | None = None,
             progress: bool = True, log=print) -> dict:
    """The whole pipeline with a frozen ELMo: tokenize, cache the biLM layers, train the head with
    early stopping on `valid` (default: a stratified `valid_fraction` of `train`), evaluate on `test`.

    `finetune_epochs > 0` then fine-tunes the biLM (in place) together with the head, starting from
    the frozen result (see `finetune.py`); `elmo_frozen` holds the frozen head's test metrics.

    `bow=True` adds a bag-of-words model (TF-IDF + logistic regression on the same training rows)
    and combines the two by a weighted geometric mean whose weight is chosen on the validation
    split; `accuracy` is then the combination's, and `elmo_only` / `bow_only` hold the parts.

    The layer caches of the three splits share `memory_budget` bytes (None: no limit); what does not
    fit goes to temporary files under `cache_dir` (default: the system's temporary folder), with the
    same results.

    Writes (when `out_dir` is given) metrics.json, report.txt, confusion_matrix.png, predictions.csv
    and classifier.pt (the head, the class names, the tokenization and the biLM's options, plus
    `elmo`, where the ELMo came from: a directory or a published name, for `elmo-fast predict`).
    Returns the metrics dict (accuracy, macro_f1, per_class, ...).

    Raises ValueError before any ELMo work for options it cannot use (`check_options`), data that
    cannot give a classifier (`check_data`: e.g. a single training class) and an `out_dir` that
    cannot be written (`elmo_fast.utils.check_output_dir`).
    """
    require_extra("classify", "classification")
    from .report import compute_metrics, write_report

    # Everything the user can get wrong is checked here, before the (slow) ELMo features.
    check_options(valid_fraction=valid_fraction, max_tokens=max_tokens, encoder=encoder, hidden=hidden, max_epochs=max_epochs,
                  patience=patience, batch_size=batch_size, lr=lr, dropout=dropout, seed=seed, finetune_epochs=finetune_epochs,
                  finetune_lr=finetune_lr)
    check_data(train, test, valid)
    if out_dir is not None:
        check_output_dir(out_dir)
    if valid is None:
        train, valid = stratified_split(train, valid_fraction, seed=seed)
    timings = {}
    t0 = time.perf_counter()
    docs = {name: tokenize_documents(d.titles, d.texts, max_tokens, progress)
            for name, d in (("train", train), ("valid", valid), ("test", test))}
    timings["tokenize_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    caches, budget = {}, memory_budget
    for name in docs:
        caches[name] = compute_layers(bilm, docs[name], progress=progress, desc=f"ELMo {name}", memory_budget=budget,
                                      cache_dir=cache_dir)
        if budget is not None and not caches[name].on_disk:
            budget -= caches[name].nbytes
    spilled = [n for n, c in caches.items() if c.on_disk]
    if spilled:
        log(f"layer cache: {', '.join(spilled)} on disk in {caches[spilled[0]].location} "
            f"({sum(c.nbytes for c in caches.values()) / 2**30:.2f} GiB in all, memory budget {memory_budget / 2**30:.2f} GiB)")
    timings["elmo_s"] = time.perf_counter() - t0
    n_tok = sum(int(c.lengths().sum()) for c in caches.values())
    timings["elmo_tokens_per_s"] = n_tok / max(timings["elmo_s"], 1e-9)
    log(f"ELMo features: {n_tok:,} tokens in {timings['elmo_s']:.1f} s ({timings['elmo_tokens_per_s']:,.0f} tokens/s)")
    head, info = train_head(caches["train"], train.labels, caches["valid"], valid.labels, train.num_classes,
                            encoder=encoder, hidden=hidden, max_epochs=max_epochs, patience=patience,
                            batch_size=batch_size, lr=lr, dropout=dropout, seed=seed, progress=progress, log=log)
    timings["classifier_s"] = info.pop("train_seconds")
    probs = predict(head, caches["test"])
    p_valid = None
    extra = {}
    if finetune_epochs > 0:
        from .finetune import finetune, predict_documents

        extra["elmo_frozen"] = {m: v for m, v in compute_metrics(test.labels, probs.argmax(1), train.class_names).items()
                                if m in ("accuracy", "macro_f1")}
        info["finetune"] = finetune(bilm, head, docs["train"], train.labels, docs["valid"], valid.labels,
                                    epochs=finetune_epochs, lr_bilm=finetune_lr, seed=seed, progress=progress, log=log)
        timings["finetune_s"] = info["finetune"]["seconds"]
        probs = predict_documents(bilm, head, docs["test"])
        p_valid = predict_documents(bilm, head, docs["valid"])
    if bow:
        if p_valid is None:
            p_valid = predict(head, caches["valid"])
        b_valid, b_test = bow_probabilities(train, valid, test)
        # The weight minimises validation log-loss: accuracy on a few hundred rows is flat across most
        # of the grid and its first maximum (usually an end point) is a coin toss among ties.
        grid = np.round(np.linspace(0, 1, 21), 2)
        losses = [_log_loss(combine(p_valid, b_valid, w), valid.labels) for w in grid]
        best = int(np.argmin(losses))
        w = float(grid[best])
        valid_acc = float((combine(p_valid, b_valid, w).argmax(1) == valid.labels).mean())
        extra.update({"elmo_only": compute_metrics(test.labels, probs.argmax(1), train.class_names),
                      "bow_only": compute_metrics(test.labels, b_test.argmax(1), train.class_names),
                      "ensemble_weight_elmo": w, "ensemble_valid_accuracy": valid_acc, "ensemble_valid_log_loss": losses[best]})
        for k in ("elmo_only", "bow_only"):
            extra[k] = {m: extra[k][m] for m in ("accuracy", "macro_f1")}
        log(f"ELMo + bag-of-words: weight {w} on ELMo (valid log-loss {losses[best]:.4f}, accuracy {valid_acc:.4f}); "
            f"test accuracy ELMo alone {extra['elmo_only']['accuracy']:.4f}, bag-of-words alone {extra['bow_only']['accuracy']:.4f}")
        probs = combine(probs, b_test, w)
    metrics = compute_metrics(test.labels, probs.argmax(1), train.class_names)
    metrics.update(extra)
    metrics.update({"n_train": len(train), "n_valid": len(valid), "n_test": len(test), "encoder": encoder, "bow": bow,
                    "max_tokens": max_tokens, "training": info, "timings": timings})
    if baseline:
        metrics["tfidf_svm"] = tfidf_svm_baseline(train, test)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        state = {"config": head.config, "state_dict": head.state_dict(), "class_names": train.class_names,
                 "max_tokens": max_tokens, "bilm_options": bilm.options, "elmo": elmo, "bow": bow}
        if finetune_epochs > 0:
            state["bilm_state_dict"] = bilm.state_dict()  # the fine-tuned biLM belongs to this head
        with atomic_path(os.path.join(out_dir, "classifier.pt")) as tmp:
            torch.save(state, tmp)
        write_report(out_dir, metrics, test, probs)
    return metrics
