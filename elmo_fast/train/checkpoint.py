"""Training checkpoints: model, optimizer, sampler step, data position, carried LSTM state and RNG,
written atomically (a kill never leaves a half-written file under the final name) and checked on
load, so a corrupt or mismatched checkpoint is refused with a message instead of training on."""

from __future__ import annotations

import hashlib
import os

import torch

from ..utils import atomic_path

FORMAT = "elmo_fast.pretrain"
VERSION = 1
NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume this run."""


def vocab_digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def save(path, payload: dict) -> None:
    """Write `payload` (plus format markers) to `path` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, ...: all mean "unusable"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); delete it to start over, "
            "or point --out at a directory with a good checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an elmo_fast pretraining checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this elmo_fast reads version {VERSION}")
    return ckpt


def check_compatible(ckpt: dict, expected: dict, path) -> None:
    """Refuse a checkpoint whose run-defining settings differ from this run's."""
    theirs = ckpt.get("signature", {})
    diffs = {k: (theirs.get(k), v) for k, v in expected.items() if theirs.get(k) != v}
    if diffs:
        details = "; ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(
            f"checkpoint {path} does not match this run ({details}); resume with the same config, data, "
            "vocabulary and global batch size, or use a fresh --out directory"
        )
