"""Weight files: the published `weights.hdf5` layout (read and write) and our safetensors checkpoint.

HDF5 layout (TensorFlow convention `y = x @ W`, gate blocks i, j, f, o, forget bias added at run
time); see SPEC.md. Conversions to PyTorch are transposes, block swaps and negations, which are
exact; the +1.0 forget bias is not (b + 1 - 1 != b in float32), so the original TF bias is remembered
at load time and written back while the parameter is untouched: an HDF5 -> Elmo -> HDF5 round trip
is bit-exact.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .options import validate_options
from .pretrained import resolve_file
from .utils import atomic_path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class WeightFileError(ValueError):
    """A weight file that is not what the options describe (missing dataset, wrong shape, bad format)."""


def _lstm_group(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == HDF5_MAGIC


def _weight_file(path) -> tuple[str, str]:
    """(local path, 'hdf5' | 'safetensors') of a weight file, chosen by content."""
    path = resolve_file(path, "weight file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    if _is_hdf5(path):
        return path, "hdf5"
    if _is_safetensors(path):
        return path, "safetensors"
    raise WeightFileError(f"{path} is neither HDF5 (weights.hdf5) nor safetensors; is it the right file (not options.json)?")


def load_weights(bilm, path) -> None:
    """Fill an `ElmoBiLm` from weights.hdf5 or a .safetensors checkpoint (chosen by content)."""
    path, kind = _weight_file(path)
    if kind == "hdf5":
        load_hdf5(bilm, path)
    else:
        load_checkpoint_into(bilm, path)


def load_char_encoder_weights(enc, path) -> None:
    """Fill an `ElmoCharacterEncoder` alone (AllenNLP's `_ElmoCharacterEncoder(options, weights)`)
    from weights.hdf5 or an elmo_fast checkpoint; the LSTM's weights in the file are not read."""
    path, kind = _weight_file(path)
    if kind == "hdf5":
        with _open_hdf5(path) as f:
            _load_hdf5_encoder(f, enc, enc._options, path)
        return
    opts = read_checkpoint_options(path)
    mine = enc._options
    if opts["char_cnn"] != mine["char_cnn"] or opts["lstm"]["projection_dim"] != mine["lstm"]["projection_dim"]:
        raise WeightFileError(f"{path}: the checkpoint's character encoder options differ from the encoder's: "
                              f"{opts['char_cnn']} (projection_dim {opts['lstm']['projection_dim']}) vs "
                              f"{mine['char_cnn']} (projection_dim {mine['lstm']['projection_dim']})")
    enc.load_state_dict(_read_checkpoint_state(path, prefix="_token_embedder."))


def _dataset(f, name: str, shape: tuple, path: str, option_hint: str) -> np.ndarray:
    import h5py

    if name not in f:
        raise WeightFileError(f"{path}: missing HDF5 dataset {name!r} ({option_hint}); the file does not match the options")
    node = f[name]
    if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiu":
        what = "a group" if not isinstance(node, h5py.Dataset) else f"of type {node.dtype}"
        raise WeightFileError(f"{path}: {name!r} is {what}, not a numeric dataset; is this an ELMo weights.hdf5?")
    data = node[...]
    if tuple(data.shape) != tuple(shape):
        raise WeightFileError(f"{path}: dataset {name!r} has shape {tuple(data.shape)} but the options imply {tuple(shape)} ({option_hint})")
    data = np.asarray(data, dtype=np.float32)
    _check_finite(data, path, f"dataset {name!r}")
    return data


def _check_finite(data, path: str, what: str) -> None:
    # A NaN/Inf weight makes every output NaN; say so at load time, naming where it is.
    finite = torch.isfinite(data).all() if isinstance(data, torch.Tensor) else np.isfinite(data).all()
    if not finite:
        raise WeightFileError(f"{path}: {what} holds NaN or Inf values: the file is corrupt or comes from a diverged "
                              "training run; use an earlier checkpoint or re-export the weights")


def _open_hdf5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(f"{path} could not be read as HDF5 ({e})") from None


def _load_hdf5_encoder(f, enc, opts: dict, path: str) -> None:
    """The character encoder's datasets (char_embed, CNN, CNN_high_k, CNN_proj) into `enc`."""
    cnn = opts["char_cnn"]
    E = cnn["embedding"]["dim"]
    F_total = enc.n_filters_total
    P = opts["lstm"]["projection_dim"]
    with torch.no_grad():
        char = _dataset(f, "char_embed", (261, E), path, "char_cnn.embedding.dim")
        emb = np.zeros((262, E), dtype=np.float32)
        emb[1:] = char
        enc._char_embedding_weights.copy_(torch.from_numpy(emb))
        for i, (width, num) in enumerate(cnn["filters"]):
            w = _dataset(f, f"CNN/W_cnn_{i}", (1, width, E, num), path, f"char_cnn.filters[{i}] = [{width}, {num}]")
            b = _dataset(f, f"CNN/b_cnn_{i}", (num,), path, f"char_cnn.filters[{i}]")
            conv = getattr(enc, f"char_conv_{i}")
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[0].transpose(2, 1, 0))))  # [num, E, width]
            conv.bias.copy_(torch.from_numpy(b))
        extra = f"CNN/W_cnn_{len(cnn['filters'])}"
        if extra in f:
            raise WeightFileError(f"{path}: has dataset {extra!r} but the options list only {len(cnn['filters'])} filters")
        for k, layer in enumerate(enc._highways._layers):
            g = f"CNN_high_{k}"
            hint = f"char_cnn.n_highway = {cnn['n_highway']}"
            wt = _dataset(f, f"{g}/W_transform", (F_total, F_total), path, hint)
            bt = _dataset(f, f"{g}/b_transform", (F_total,), path, hint)
            wc = _dataset(f, f"{g}/W_carry", (F_total, F_total), path, hint)
            bc = _dataset(f, f"{g}/b_carry", (F_total,), path, hint)
            layer.weight.copy_(torch.from_numpy(np.concatenate([wt.T, -wc.T], axis=0)))
            layer.bias.copy_(torch.from_numpy(np.concatenate([bt, -bc])))
        if f"CNN_high_{cnn['n_highway']}" in f:
            raise WeightFileError(f"{path}: has more highway layers than char_cnn.n_highway = {cnn['n_highway']}")
        wp = _dataset(f, "CNN_proj/W_proj", (F_total, P), path, "lstm.projection_dim")
        bp = _dataset(f, "CNN_proj/b_proj", (P,), path, "lstm.projection_dim")
        enc._projection.weight.copy_(torch.from_numpy(np.ascontiguousarray(wp.T)))
        enc._projection.bias.copy_(torch.from_numpy(bp))


def load_hdf5(bilm, path) -> None:
    path = os.fspath(path)
    opts = bilm.options
    C, P = opts["lstm"]["dim"], opts["lstm"]["projection_dim"]
    with _open_hdf5(path) as f, torch.no_grad():
        _load_hdf5_encoder(f, bilm._token_embedder, opts, path)
        lstm = bilm._elmo_lstm
        for layer_idx, cells in enumerate(zip(lstm.forward_layers, lstm.backward_layers)):
            for direction, cell in enumerate(cells):
                g = _lstm_group(direction, layer_idx)
                I = cell.input_size
                hint = f"lstm.dim = {C}, lstm.projection_dim = {P}"
                W = _dataset(f, f"{g}/W_0", (I + P, 4 * C), path, hint)
                B = _dataset(f, f"{g}/B", (4 * C,), path, hint)
                WP = _dataset(f, f"{g}/W_P_0", (C, P), path, hint)
                W_t = _tf_to_torch_gates(W.T, C)  # [4C, I + P]
                cell.input_linearity.weight.copy_(torch.from_numpy(np.ascontiguousarray(W_t[:, :I])))
                cell.state_linearity.weight.copy_(torch.from_numpy(np.ascontiguousarray(W_t[:, I:])))
                b = B.copy()
                b[2 * C : 3 * C] += np.float32(1.0)
                cell.state_linearity.bias.copy_(torch.from_numpy(_tf_to_torch_gates(b, C)))
                cell.state_projection.weight.copy_(torch.from_numpy(np.ascontiguousarray(WP.T)))
                # Remember the exact TF bias for a bit-exact write-back (see module docstring).
                cell._tf_bias_source = (cell.state_linearity.bias.detach().clone(), B.copy())
        if f"RNN_0/RNN/MultiRNNCell/Cell{lstm.num_layers}" in f:
            raise WeightFileError(f"{path}: has more LSTM layers than lstm.n_layers = {lstm.num_layers}")


def _tf_to_torch_gates(a: np.ndarray, C: int) -> np.ndarray:
    """Swap gate blocks 1 and 2 along axis 0 (TF i, j, f, o <-> PyTorch i, f, g, o); self-inverse."""
    out = a.copy()
    out[C : 2 * C], out[2 * C : 3 * C] = a[2 * C : 3 * C], a[C : 2 * C]
    return out


def _bilm_of(model):
    """The `ElmoBiLm` of an `Elmo` (its `_elmo_lstm`, AllenNLP's name), or the biLM itself."""
    inner = getattr(model, "_elmo_lstm", None)
    return inner if hasattr(inner, "_token_embedder") else model


def save_hdf5(bilm, path) -> None:
    """Write an `ElmoBiLm` (or an `Elmo`'s biLM) in the published weights.hdf5 layout (atomically)."""
    import h5py

    bilm = _bilm_of(bilm)
    enc = bilm._token_embedder
    cnn = bilm.options["char_cnn"]

    def np32(t):
        return t.detach().float().cpu().numpy()

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["char_embed"] = np32(enc._char_embedding_weights)[1:]
        for i in range(len(cnn["filters"])):
            conv = getattr(enc, f"char_conv_{i}")
            f[f"CNN/W_cnn_{i}"] = np32(conv.weight).transpose(2, 1, 0)[None]
            f[f"CNN/b_cnn_{i}"] = np32(conv.bias)
        F_total = enc.n_filters_total
        for k, layer in enumerate(enc._highways._layers):
            w, b = np32(layer.weight), np32(layer.bias)
            f[f"CNN_high_{k}/W_transform"] = np.ascontiguousarray(w[:F_total].T)
            f[f"CNN_high_{k}/b_transform"] = b[:F_total]
            f[f"CNN_high_{k}/W_carry"] = np.ascontiguousarray(-w[F_total:].T)
            f[f"CNN_high_{k}/b_carry"] = -b[F_total:]
        f["CNN_proj/W_proj"] = np.ascontiguousarray(np32(enc._projection.weight).T)
        f["CNN_proj/b_proj"] = np32(enc._projection.bias)
        lstm = bilm._elmo_lstm
        for layer_idx, cells in enumerate(zip(lstm.forward_layers, lstm.backward_layers)):
            for direction, cell in enumerate(cells):
                g = _lstm_group(direction, layer_idx)
                C = cell.cell_size
                W_t = np.concatenate([np32(cell.input_linearity.weight), np32(cell.state_linearity.weight)], axis=1)
                f[f"{g}/W_0"] = np.ascontiguousarray(_tf_to_torch_gates(W_t, C).T)
                bias = cell.state_linearity.bias.detach()
                source = getattr(cell, "_tf_bias_source", None)
                if source is not None and torch.equal(source[0].to(bias.device), bias):
                    f[f"{g}/B"] = source[1]
                else:
                    b = _tf_to_torch_gates(np32(bias), C)
                    b[2 * C : 3 * C] -= np.float32(1.0)
                    f[f"{g}/B"] = b
                f[f"{g}/W_P_0"] = np.ascontiguousarray(np32(cell.state_projection.weight).T)


def export_elmo(bilm, out_dir) -> tuple[str, str]:
    """Write `options.json` + `weights.hdf5` of an `ElmoBiLm` or an `Elmo` into `out_dir` (what
    `Elmo(options, weights, ...)` reads)."""
    from .options import save_options

    bilm = _bilm_of(bilm)
    os.makedirs(out_dir, exist_ok=True)
    opt_path, w_path = os.path.join(out_dir, "options.json"), os.path.join(out_dir, "weights.hdf5")
    # Each file is written atomically, the pair is not: remove options that do not describe these
    # weights first, so an export stopped between the two leaves a missing options.json (a clear
    # error) rather than old options next to new weights (a shape mismatch, or a wrong model).
    if os.path.exists(opt_path):
        try:
            with open(opt_path, encoding="utf-8") as f:
                stale = json.load(f) != bilm.options
        except (OSError, ValueError):
            stale = True
        if stale:
            os.unlink(opt_path)
    save_hdf5(bilm, w_path)
    save_options(bilm.options, opt_path)
    return opt_path, w_path


# ---- safetensors checkpoint: the state_dict + options in the header metadata --------------------

def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def save_checkpoint(bilm, path) -> None:
    """Write the biLM's (an `ElmoBiLm`'s or an `Elmo`'s) state_dict and options to one .safetensors
    file, atomically."""
    from safetensors.torch import save_file

    bilm = _bilm_of(bilm)
    state = {k: v.detach().contiguous().cpu() for k, v in bilm.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": "elmo_fast", "options": json.dumps(bilm.options)})


def read_checkpoint_options(path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated headers
        raise WeightFileError(f"{path}: corrupt or truncated safetensors checkpoint ({e})") from None
    if meta.get("format") != "elmo_fast" or "options" not in meta:
        raise WeightFileError(f"{path}: a safetensors file, but not an elmo_fast checkpoint (no options in its metadata)")
    try:
        opts = json.loads(meta["options"])
    except json.JSONDecodeError as e:
        raise WeightFileError(f"{path}: corrupt checkpoint: the options in its metadata are not valid JSON ({e})") from None
    validate_options(opts, path)
    return opts


def _read_checkpoint_state(path, prefix: str = "") -> dict:
    """A checkpoint's tensors whose names start with `prefix` (removed from the names), each
    checked to be finite."""
    from safetensors.torch import load_file

    try:
        state = load_file(os.fspath(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WeightFileError(f"{path}: corrupt safetensors checkpoint ({e})") from None
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for k, v in state.items():
        if v.is_floating_point():
            _check_finite(v, path, f"tensor {prefix + k!r}")
    return state


def load_checkpoint_into(bilm, path) -> None:
    opts = read_checkpoint_options(path)
    if opts != bilm.options:
        raise WeightFileError(f"{path}: checkpoint options differ from the model's options: {opts} vs {bilm.options}")
    state = _read_checkpoint_state(path)
    own = bilm.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise WeightFileError(f"{path}: checkpoint keys do not match the model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise WeightFileError(f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    bilm.load_state_dict(state)
