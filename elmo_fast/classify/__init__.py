"""Text classification with ELMo (AG News layout): data loading, a classifier over frozen-ELMo
layers, training with early stopping, metrics and the `elmo-fast classify` command."""

from .data import DataError, LabeledTexts, clean_text, load_csv, stratified_split
from .features import LayerCache, compute_layers, tokenize_documents
from .model import ElmoClassifierHead
from .report import compute_metrics, write_report
from .train import classify, load_bilm, predict, tfidf_svm_baseline, train_head

__all__ = [
    "DataError", "LabeledTexts", "clean_text", "load_csv", "stratified_split", "LayerCache", "compute_layers",
    "tokenize_documents", "ElmoClassifierHead", "compute_metrics", "write_report", "classify", "load_bilm", "predict",
    "tfidf_svm_baseline", "train_head",
]
