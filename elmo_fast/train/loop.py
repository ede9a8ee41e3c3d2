"""The pretraining loop: `pretrain(train, valid, config, out_dir, ...)`."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import random
import time
from typing import Any

import numpy as np
import torch

from ..options import PRESETS, load_options
from ..utils import UsageError, check_output_dir, is_int, resolve_device
from ..weights import export_elmo
from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .data import LMBatcher, Vocabulary, as_paths, check_utf8
from .model import BidirectionalLM

logger = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The loss (or the weights) became NaN or infinite; nothing of the diverged model was saved.
    A ValueError, so `elmo-fast` reports it in one line: its usual causes are settings."""


_DIVERGED_HINT = ("training diverged and nothing of it was saved (out_dir keeps the last good checkpoint, if any); "
                  "lower the learning rate (--lr) or clip gradients harder (clip_norm) and --resume, or start over")

#: Training settings (bilm-tf's names where it has one). Per-preset overrides below; any of them can
#: be passed to `pretrain(**kwargs)`.
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,  # rows per process (global batch = batch_size * world size)
    "unroll": 20,  # unroll_steps: inputs per window
    "n_negative": 8192,  # n_negative_samples_batch
    "dropout": 0.1,
    "optimizer": "adagrad",  # 'adagrad' (bilm-tf) or 'adam'
    "lr": 0.2,
    "clip_norm": 10.0,  # all_clip_norm_val
    "min_count": 1,
    "max_vocab": None,
    "eval_every": 1000,  # steps between held-out perplexity evaluations (0: only at the end)
    "eval_batch_size": 32,
    "eval_max_tokens": None,  # evaluate on at most this many valid tokens per direction (None: all)
    "checkpoint_every": 500,  # steps between checkpoints (0: only at the end)
    "device": None,  # None: cuda if available, else cpu
    "amp": True,  # bf16 autocast on GPU (ignored on CPU)
    "deterministic": False,
}
PRESET_TRAIN: dict[str, dict[str, Any]] = {
    # CPU-sized: a few minutes must already give a useful LM
    "tiny": {"batch_size": 32, "n_negative": 1024, "optimizer": "adam", "lr": 2e-3, "clip_norm": 5.0,
             "min_count": 3, "max_vocab": 30000, "eval_every": 500, "checkpoint_every": 200, "eval_max_tokens": 20000},
    "small": {"batch_size": 64, "n_negative": 4096, "min_count": 3},
    "original": {"batch_size": 128, "n_negative": 8192, "min_count": 3},
}


def _amp_enabled(settings: dict, device: torch.device) -> bool:
    """bf16 autocast: on a GPU when the `amp` setting asks (the default); never on the CPU."""
    return bool(settings["amp"]) and device.type == "cuda"


def _autocast(enabled: bool):
    """The mixed-precision context of training and evaluation steps (a function, so tests can run
    the whole loop under CPU autocast: its GPU-only path is otherwise never exercised here)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def _config(config, kwargs: dict) -> tuple[dict, dict]:
    """-> (model options, training settings)."""
    if isinstance(config, str) and config in PRESETS:
        options = load_options(config)
        settings = {**TRAIN_DEFAULTS, **PRESET_TRAIN.get(config, {})}
    else:
        options = load_options(config)
        # An options file with a preset's model (e.g. a pretrained tiny run's options.json) trains
        # with that preset's settings, as the name would; any other model with bilm-tf's defaults.
        preset = next((name for name, p in PRESETS.items() if p == options), None)
        settings = {**TRAIN_DEFAULTS, **PRESET_TRAIN.get(preset, {})}
    unknown = set(kwargs) - set(TRAIN_DEFAULTS)
    if unknown:
        raise TypeError(f"pretrain() got unknown setting(s) {sorted(unknown)}; known: {sorted(TRAIN_DEFAULTS)}")
    settings.update({k: v for k, v in kwargs.items() if v is not None or k in ("max_vocab", "eval_max_tokens")})
    if settings["optimizer"] not in ("adagrad", "adam"):
        raise UsageError(f"optimizer must be 'adagrad' or 'adam', got {settings['optimizer']!r}")
    _check_settings(settings)
    return options, settings


def _bad(name: str, value, need: str) -> ValueError:
    return UsageError(f"{name} (--{name.replace('_', '-')}) must be {need}, got {value!r}")


def _check_int(name: str, value, low: int, need: str | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not is_int(value) or value < low:
        raise _bad(name, value, need or f"an integer >= {low}")


def _check_real(name: str, value, low: float, strict: bool, need: str) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise _bad(name, value, need)


def _check_settings(settings: dict) -> None:
    """Refuse values that make no sense before anything runs: n_negative=0 made every loss NaN,
    and eval_every=-1 evaluated after every step, all without an error."""
    for name in ("batch_size", "unroll", "n_negative", "eval_batch_size"):
        _check_int(name, settings[name], 1)
    _check_int("min_count", settings["min_count"], 1, "an integer >= 1 (1 keeps every word)")
    _check_int("max_vocab", settings["max_vocab"], 4, "None or an integer >= 4 (<S>, </S>, <UNK> and a word)", True)
    for name in ("eval_every", "checkpoint_every"):
        _check_int(name, settings[name], 0, "an integer >= 0 (0: only at the end)")
    _check_int("eval_max_tokens", settings["eval_max_tokens"], 1, "None (all) or an integer >= 1", True)
    _check_real("lr", settings["lr"], 0.0, True, "a number > 0")
    _check_real("dropout", settings["dropout"], 0.0, False, "a number in [0, 1)")
    if settings["dropout"] >= 1:
        raise _bad("dropout", settings["dropout"], "a number in [0, 1)")
    if settings["clip_norm"] is not None:
        _check_real("clip_norm", settings["clip_norm"], 0.0, False, "None, 0 (no clipping) or a number > 0")
    if settings["device"] is not None and not isinstance(settings["device"], (str, torch.device)):
        raise _bad("device", settings["device"], "None, 'cpu', 'cuda' or 'cuda:N'")


def _check_limits(max_steps, max_time) -> None:
    if max_steps is None and max_time is None:
        raise UsageError("give max_steps and/or max_time (seconds), otherwise pretraining never stops")
    _check_int("max_steps", max_steps, 1, "None or an integer >= 1", True)
    if max_time is not None:
        _check_real("max_time", max_time, 0.0, True, "None or a number of seconds > 0")


def _check_backend(backend, device: torch.device) -> None:
    """Refuse a kernel backend (the argument or $ELMO_FAST_BACKEND) that cannot run on `device`
    before anything is written; otherwise the first training step fails with a traceback."""
    from .._backend import BACKENDS, choose_backend

    choose_backend(device, BACKENDS, backend)


def _check_out_dir(out_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that cannot be written, or that holds a run this one would silently replace."""
    check_output_dir(out_dir)
    if overwrite:
        return
    ckpt = os.path.exists(os.path.join(out_dir, ckpt_io.NAME))
    held = [n for n in (ckpt_io.NAME, "weights.hdf5") if os.path.exists(os.path.join(out_dir, n))]
    if held and not (resume and ckpt):
        what = "a pretraining run" if ckpt else "an ELMo"
        hint = ("pass --resume (resume=True) to continue it, " if ckpt else "") + \
            "--overwrite (overwrite=True) to replace it, or choose another --out"
        raise ValueError(f"{out_dir} already holds {what} ({', '.join(held)}); {hint}")


def _make_optimizer(params, settings: dict) -> torch.optim.Optimizer:
    # PyTorch's fused optimizers: one kernel per parameter instead of ~8 ATen ops. For the 'tiny'
    # pretraining model (3.1M parameters, 2 CPU threads) Adam's step took 1.2 instead of 6.6 ms, 8 %
    # of a training step. Same update formula; fused Adagrad exists for CPU parameters only.
    params = list(params)
    devices = {p.device.type for p in params}
    if settings["optimizer"] == "adagrad":
        # bilm-tf: Adagrad with initial accumulator 1.0
        return torch.optim.Adagrad(params, lr=settings["lr"], initial_accumulator_value=1.0, fused=devices == {"cpu"} or None)
    return torch.optim.Adam(params, lr=settings["lr"], fused=devices <= {"cpu", "cuda"} or None)


def _detach(state):
    if state is None:
        return None
    return tuple([(h.detach(), c.detach()) for h, c in direction] for direction in state)


def _state_to_cpu(state):
    if state is None:
        return None
    return tuple([(h.detach().cpu(), c.detach().cpu()) for h, c in direction] for direction in state)


def _state_to(state, device):
    if state is None:
        return None
    return tuple([(h.to(device), c.to(device)) for h, c in direction] for direction in state)


@torch.no_grad()
def evaluate(model: BidirectionalLM, paths, vocab: Vocabulary, batch_size: int = 32, unroll: int = 20,
             device="cpu", max_tokens: int | None = None, amp: bool = False) -> dict:
    """Full-softmax perplexity on held-out text, reading it once with carried state.

    Returns {'forward_perplexity', 'backward_perplexity', 'perplexity' (exp of the mean of both
    losses), 'tokens' (scored targets per direction)}.
    """
    was_training = model.training
    model.eval()
    batcher = LMBatcher(paths, vocab, batch_size, unroll, train=False)
    sums, counts = [0.0, 0.0], [0, 0]
    state = None
    try:
        while True:
            batch = batcher.next_batch()
            if batch is None:
                break
            batch = batch.to(device)
            with _autocast(amp):
                (lf, lb, nf, nb), state = model(batch, state)
            sums[0] += float(lf)
            sums[1] += float(lb)
            counts[0] += int(nf)
            counts[1] += int(nb)
            if max_tokens is not None and min(counts) >= max_tokens:
                break
    finally:
        batcher.close()
        model.train(was_training)
    if min(counts) == 0:
        raise ValueError(f"validation data {paths} has no tokens to score")
    f, b = sums[0] / counts[0], sums[1] / counts[1]
    return {"forward_perplexity": math.exp(f), "backward_perplexity": math.exp(b), "perplexity": math.exp((f + b) / 2),
            "tokens": min(counts)}


def pretrain(train, valid=None, config="tiny", out_dir="runs/pretrain", *, max_steps=None, max_time=None,
             batch_size=None, resume=False, overwrite=False, seed=0, progress=True, backend=None, **kwargs) -> dict:
    """Pretrain a bidirectional LM and export it in the published ELMo layout.

    Args:
        train, valid: a path (or list of paths) to text with one tokenized sentence per line.
        config: 'tiny' | 'small' | 'original' | path to options.json | options dict.
        out_dir: receives options.json + weights.hdf5 (loadable by `elmo_fast.Elmo`), vocab.txt,
            checkpoint.pt and metrics.json.
        max_steps, max_time: stop after this many optimizer steps / seconds (whichever first;
            at least one of them, or the run never ends). Periodic evaluations count against
            max_time; the final evaluation and the export come after it.
        batch_size: rows per process (the global batch is batch_size * world size).
        resume: continue from out_dir/checkpoint.pt (same config, data and global batch).
        overwrite: replace the run (or ELMo) already in out_dir; without it (or `resume`), pretrain
            refuses an out_dir that holds a checkpoint.pt or weights.hdf5.
        seed: seeds initialisation, dropout and the negative sampler.
        backend: kernel backend for both ops ('torch' = eager reference; None = fastest available).
        **kwargs: any key of `TRAIN_DEFAULTS` (optimizer, lr, n_negative, dropout, clip_norm, ...).

    Everything is checked before anything is written to out_dir; options.json and weights.hdf5 are
    written together at the end, so a refused or failed run leaves a previous export loadable.
    Raises `TrainingDiverged` (a ValueError) when the loss becomes NaN or infinite; the last
    checkpoint is then the last good one.

    Returns:
        {'valid_perplexity', 'forward_perplexity', 'backward_perplexity', 'train_tokens_per_s',
         'steps', 'tokens', 'train_loss', 'out_dir', 'options_file', 'weight_file', 'vocab_file'}

    Example:
        >>> pretrain("train.txt", "valid.txt", "tiny", "runs/tiny", max_time=600)["valid_perplexity"]
    """
    _check_limits(max_steps, max_time)
    if resume and overwrite:
        raise UsageError("resume and overwrite exclude each other: --resume continues the run in --out, --overwrite replaces it")
    options, settings = _config(config, {**kwargs, "batch_size": batch_size})
    train_paths = as_paths(train)
    valid_paths = as_paths(valid) if valid is not None else None
    for p in valid_paths or ():
        check_utf8(p)  # evaluation would only meet a bad byte after training, or never (eval_max_tokens)
    device = resolve_device(settings["device"])
    _check_backend(backend, device)
    out_dir = os.fspath(out_dir)
    _check_out_dir(out_dir, resume, overwrite)
    info = dist_utils.setup(str(device))
    try:
        return _pretrain(train_paths, valid_paths, options, settings, out_dir, max_steps, max_time,
                         resume, seed, progress, backend, info, device)
    finally:
        dist_utils.teardown(info)


def _pretrain(train_paths, valid_paths, options, settings, out_dir, max_steps, max_time, resume, seed, progress,
              backend, info: dist_utils.DistInfo, device: torch.device) -> dict:
    if device.type == "cuda" and info.enabled:
        device = resolve_device(f"cuda:{info.local_rank}")
    amp = _amp_enabled(settings, device)
    if settings["deterministic"]:
        torch.use_deterministic_algorithms(True)
    ckpt_path = os.path.join(out_dir, ckpt_io.NAME)
    vocab_path = os.path.join(out_dir, "vocab.txt")
    B, T = settings["batch_size"], settings["unroll"]
    signature = {"options": options, "global_batch": B * info.world, "unroll": T, "world_size": info.world,
                 "train": [os.path.basename(p) for p in train_paths], "train_files": ckpt_io.data_identity(train_paths),
                 "optimizer": settings["optimizer"]}
    ckpt = None
    if resume and os.path.exists(ckpt_path):
        ckpt = ckpt_io.load(ckpt_path)
        ckpt_io.check_compatible(ckpt, {**signature, "vocab": ckpt_io.vocab_digest(ckpt["vocab"])}, ckpt_path)
    elif resume and info.is_main:
        logger.info("--resume: no checkpoint in %s yet, starting from scratch", out_dir)

    # Vocabulary: built once by rank 0 (or taken from the run being resumed) and shared.
    if ckpt is not None:
        vocab = Vocabulary(ckpt["vocab"])
    else:
        vocab = None
        if info.is_main:
            vocab = Vocabulary.build(train_paths, settings["min_count"], settings["max_vocab"])
        vocab = Vocabulary(dist_utils.broadcast_object(vocab.words if vocab else None, info))
    signature["vocab"] = ckpt_io.vocab_digest(vocab.words)

    torch.manual_seed(seed)  # identical initial weights on every rank
    model = BidirectionalLM(options, len(vocab), settings["dropout"], min(settings["n_negative"], len(vocab)), seed,
                            backend).to(device)
    optimizer = _make_optimizer(model.parameters(), settings)
    batcher = LMBatcher(train_paths, vocab, B, T, info.rank, info.world, train=True)
    try:
        return _train(model, optimizer, batcher, vocab, ckpt, signature, valid_paths, settings, out_dir, max_steps,
                      max_time, seed, progress, info, device, amp, ckpt_path, vocab_path)
    finally:
        batcher.close()


def _train(model, optimizer, batcher, vocab, ckpt, signature, valid_paths, settings, out_dir, max_steps, max_time,
           seed, progress, info, device, amp, ckpt_path, vocab_path) -> dict:
    T = settings["unroll"]
    step, tokens_seen, elapsed_before, state = 0, 0, 0.0, None
    history: list[dict] = []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        # load_state_dict restores the checkpoint's learning rate; this run's is what was asked for
        # (the way to continue a diverged run from its last good checkpoint is --resume --lr smaller)
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"]
        step, tokens_seen, elapsed_before = ckpt["step"], ckpt["tokens"], ckpt["elapsed"]
        history = ckpt.get("history", [])
        mine = ckpt["ranks"][info.rank]
        batcher.load_state(mine["data"])
        state = _state_to(mine["lstm_state"], device)
        torch.set_rng_state(mine["rng"]["torch"])
        random.setstate(mine["rng"]["python"])
        np.random.set_state(mine["rng"]["numpy"])
        if device.type == "cuda" and mine["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(mine["rng"]["cuda"], device)
    else:
        torch.manual_seed(seed + 1 + info.rank)  # dropout differs per rank, as separate data does
        random.seed(seed + info.rank)
        np.random.seed(seed + info.rank)

    # Only now, with the run known to start, is out_dir touched: options.json comes with the
    # weights at export, so a refused run never leaves it describing a model it did not write.
    if info.is_main:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the output directory {out_dir!r}: {e.strerror}") from None
        for name in ckpt_io.remove_stale_temporaries(out_dir):
            logger.info("removed %s, left in %s by an interrupted write", name, out_dir)
        vocab.save(vocab_path)
    dist_utils.barrier(info)

    ddp = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()

    def save_checkpoint() -> None:
        # Without clipping no gradient norm is checked per step: a non-finite update shows here.
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            raise TrainingDiverged(f"step {step}: the model's weights are no longer finite; {_DIVERGED_HINT}")
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        ranks = dist_utils.gather_objects({"data": batcher.state(), "lstm_state": _state_to_cpu(state), "rng": rng}, info)
        if info.is_main:
            ckpt_io.save(ckpt_path, {
                "signature": signature, "vocab": vocab.words, "step": step, "tokens": tokens_seen,
                "elapsed": elapsed_before + (time.perf_counter() - t_start), "history": history,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "ranks": ranks,
            })
        dist_utils.barrier(info)

    def run_eval() -> dict | None:
        result = None
        if info.is_main and valid_paths is not None:
            result = evaluate(model, valid_paths, vocab, settings["eval_batch_size"], T, device,
                              settings["eval_max_tokens"], amp)
            result["step"] = step
            history.append(result)
        dist_utils.barrier(info)
        return result

    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=step, unit="step", dynamic_ncols=True, desc="pretrain")
    t_start = time.perf_counter()
    train_tokens_time = 0.0  # time spent in training steps only (evaluation excluded)
    tokens_this_run = 0
    loss_ema = None
    last_eval = None
    try:
        while True:
            elapsed = time.perf_counter() - t_start
            stop = (max_steps is not None and step >= max_steps) or (max_time is not None and elapsed_before + elapsed >= max_time)
            if dist_utils.broadcast_object(stop, info):
                break
            t0 = time.perf_counter()
            batch = batcher.next_batch().to(device)
            n_f, n_b = dist_utils.all_sum([float((batch.fwd_targets >= 0).sum()), float((batch.bwd_targets >= 0).sum())],
                                          info, device)
            with _autocast(amp):
                (lf, lb, _, _), new_state = ddp(batch, state, step)
            # DDP averages gradients over ranks; scaling by world makes that the gradient of the
            # global mean loss, so N processes train exactly like one with N times the batch.
            loss = (lf / max(n_f, 1.0) + lb / max(n_b, 1.0)) * (0.5 * info.world)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = None
            if settings["clip_norm"]:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings["clip_norm"])
            optimizer.step()
            state = _detach(new_state)
            step += 1
            n_tok = int(n_f + n_b) // 2  # scored tokens per direction, all ranks
            tokens_seen += n_tok
            tokens_this_run += n_tok
            train_tokens_time += time.perf_counter() - t0
            # one device sync for both: the loss and the gradient norm (identical on all ranks after DDP)
            norm = grad_norm if grad_norm is not None else loss.new_zeros(())
            lval, gval = torch.stack([loss.detach().float(), norm.float()]).tolist()
            lval = dist_utils.all_sum([lval], info, device)[0] / info.world  # the global mean loss
            if not (math.isfinite(lval) and math.isfinite(gval)):
                # Raised before this step's weights can reach a checkpoint or the export.
                what = f"training loss {lval}" if not math.isfinite(lval) else f"gradient norm {gval}"
                raise TrainingDiverged(f"step {step}: the {what} is not finite; {_DIVERGED_HINT}")
            loss_ema = lval if loss_ema is None else 0.95 * loss_ema + 0.05 * lval
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tokens_this_run / max(train_tokens_time, 1e-9):.0f}")
            if settings["checkpoint_every"] and step % settings["checkpoint_every"] == 0:
                save_checkpoint()
            if settings["eval_every"] and step % settings["eval_every"] == 0:
                last_eval = run_eval()
                if bar is not None and last_eval is not None:
                    bar.write(f"step {step}: valid perplexity {last_eval['perplexity']:.2f} "
                              f"(forward {last_eval['forward_perplexity']:.2f}, backward {last_eval['backward_perplexity']:.2f})")
    finally:
        if bar is not None:
            bar.close()
    save_checkpoint()
    if last_eval is None or last_eval["step"] != step:
        last_eval = run_eval()
    result = {
        "valid_perplexity": last_eval["perplexity"] if last_eval else None,
        "forward_perplexity": last_eval["forward_perplexity"] if last_eval else None,
        "backward_perplexity": last_eval["backward_perplexity"] if last_eval else None,
        "train_tokens_per_s": tokens_this_run / max(train_tokens_time, 1e-9),
        "train_loss": loss_ema,
        "steps": step,
        "tokens": tokens_seen,
        "vocab_size": len(vocab),
        "world_size": info.world,
        "out_dir": out_dir,
        "options_file": os.path.join(out_dir, "options.json"),
        "weight_file": os.path.join(out_dir, "weights.hdf5"),
        "vocab_file": vocab_path,
        "history": history,
    }
    if info.is_main:
        export_elmo(model.bilm, out_dir)
        from ..utils import atomic_write_text

        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=2) + "\n")
    dist_utils.barrier(info)
    return result
