"""Pretraining the bidirectional language model (ELMo's biLM) on raw or tokenized text.

    from elmo_fast.train import pretrain
    result = pretrain("train.txt", "valid.txt", config="tiny", out_dir="runs/tiny", max_time=600)
    elmo = elmo_fast.Elmo(result["options_file"], result["weight_file"], 1)
"""

from .checkpoint import CheckpointError
from .data import LMBatcher, Vocabulary
from .loop import PRESET_TRAIN, TRAIN_DEFAULTS, TrainingDiverged, evaluate, pretrain
from .model import BidirectionalLM, LogUniformSampler, full_softmax_loss, sampled_softmax_loss

__all__ = [
    "pretrain", "evaluate", "Vocabulary", "LMBatcher", "BidirectionalLM", "LogUniformSampler", "full_softmax_loss",
    "sampled_softmax_loss", "CheckpointError", "TrainingDiverged", "TRAIN_DEFAULTS", "PRESET_TRAIN",
]
