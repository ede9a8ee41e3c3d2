"""Training checkpoints: model, optimizer, sampler step, data position, carried LSTM state and RNG,
written atomically (a kill never leaves a half-written file under the final name) and checked on
load, so a corrupt or mismatched checkpoint is refused with a message instead of training on."""

from __future__ import annotations

import hashlib
import os
import re

import torch

from ..utils import atomic_path

FORMAT = "elmo_fast.pretrain"
VERSION = 1
NAME = "checkpoint.pt"
#: How much of each end of a training file `data_identity` hashes.
_SAMPLE = 1 << 20
# The temporary names utils.atomic_path gives the files pretrain writes (mkstemp: "." + name + "." + random + ".tmp").
_TMP = re.compile(r"\.(?:checkpoint\.pt|vocab\.txt|metrics\.json|options\.json|weights\.hdf5)\.[A-Za-z0-9_]+\.tmp")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume this run."""


def vocab_digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def data_identity(paths) -> list[dict]:
    """Name, size and a hash of the first and last MiB of each training file: the same text under
    another spelling of its path (another working directory, an absolute path, a copy on scratch
    space) resumes; other text of the same name and size does not, and only 2 MiB a file is read."""
    out = []
    for p in paths:
        size = os.path.getsize(p)
        h = hashlib.sha256()
        with open(p, "rb") as f:
            h.update(f.read(_SAMPLE))
            if size > _SAMPLE:
                f.seek(max(_SAMPLE, size - _SAMPLE))
                h.update(f.read(_SAMPLE))
        out.append({"name": os.path.basename(p), "size": size, "sha256_ends": h.hexdigest()})
    return out


def remove_stale_temporaries(out_dir) -> list[str]:
    """Delete the temporary files a killed run left in `out_dir` (SIGKILL during an atomic write
    gives its cleanup no chance); only names of the pattern this package's own writes use."""
    removed = []
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if _TMP.fullmatch(name) and os.path.isfile(path):
            try:
                os.unlink(path)
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


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
    _check_data(theirs, expected["train_files"], path)
    # the training files are compared by content above: their names may differ
    diffs = {k: (theirs.get(k), v) for k, v in expected.items()
             if k not in ("train", "train_files") and theirs.get(k) != v}
    if diffs:
        details = "; ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(
            f"checkpoint {path} does not match this run ({details}); resume with the same config, data, "
            "vocabulary and global batch size, or use a fresh --out directory"
        )


def _check_data(theirs: dict, files: list[dict], path) -> None:
    old = theirs.get("train_files")
    if old is not None:
        same = [(f["size"], f["sha256_ends"]) for f in old] == [(f["size"], f["sha256_ends"]) for f in files]
        was = ", ".join(f"{f['name']} ({f['size']:,} bytes)" for f in old)
    else:
        # a checkpoint from before train_files holds only the names (LMBatcher.load_state still
        # compares the sizes)
        old = theirs.get("train") or []
        same = list(old) == [f["name"] for f in files]
        was = ", ".join(old)
    if not same:
        now = ", ".join(f"{f['name']} ({f['size']:,} bytes)" for f in files)
        raise CheckpointError(
            f"checkpoint {path} was trained on other data ({was}) than this run's --train ({now}); resume with the "
            "same training files, with the same content and in the same order (their paths may differ), or start "
            "a new run in another --out (or replace this one with --overwrite)"
        )
