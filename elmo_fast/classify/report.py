"""Metrics (scikit-learn) and the report files: metrics.json, report.txt, confusion_matrix.png, predictions.csv."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from ..utils import atomic_path, atomic_write_text


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """accuracy, macro_f1, per-class precision/recall/f1/support and the confusion matrix (rows: true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                      for k, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Cross-entropy of probabilities `p` `[N, K]` for labels `y` (every class counted, present or not)."""
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(y, p, labels=np.arange(p.shape[1])))


def plot_confusion(matrix, class_names: list[str], path: str, title: str = "Confusion matrix (test)") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")  # the temporary name has no .png to infer it from
    plt.close(fig)


def format_report(metrics: dict) -> str:
    lines = [f"accuracy  {metrics['accuracy']:.4f}", f"macro-F1  {metrics['macro_f1']:.4f}", "",
             f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<16}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
    if "elmo_only" in metrics:  # --bow: the accuracy above is the combination's
        lines += ["", f"ELMo + bag-of-words (weight {metrics['ensemble_weight_elmo']} on ELMo, chosen on validation): "
                  f"the scores above; ELMo alone: accuracy {metrics['elmo_only']['accuracy']:.4f}, macro-F1 "
                  f"{metrics['elmo_only']['macro_f1']:.4f}; bag-of-words alone: accuracy {metrics['bow_only']['accuracy']:.4f}, "
                  f"macro-F1 {metrics['bow_only']['macro_f1']:.4f}"]
    if "tfidf_svm" in metrics:
        b = metrics["tfidf_svm"]
        lines += ["", f"TF-IDF + linear SVM on the same split: accuracy {b['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f}"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, metrics: dict, test=None, probs: np.ndarray | None = None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "report.txt"), format_report(metrics))
    plot_confusion(metrics["confusion_matrix"], metrics["class_names"], os.path.join(out_dir, "confusion_matrix.png"))
    if test is not None and probs is not None:
        with atomic_path(os.path.join(out_dir, "predictions.csv")) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "true", "predicted", "confidence"])
            names = metrics["class_names"]
            for rid, y, p in zip(test.ids, test.labels, probs):
                w.writerow([int(rid) + 1, names[y], names[int(p.argmax())], f"{p.max():.4f}"])
