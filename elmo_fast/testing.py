"""Helpers shared by the tests and benchmarks: random weight files in the published layout and a
comparison that reports max-abs and relative-RMS error (and fails on NaN/Inf)."""

from __future__ import annotations

import os

import numpy as np
import torch

#: (atol, rtol) per dtype for comparing a fast kernel against the fp32/fp64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (5e-3, 5e-3),
}


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float | None = None, rtol: float | None = None) -> None:
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{name}: output has NaN/Inf")
    d_atol, d_rtol = TOLERANCES[ref.dtype]
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    r, o = ref.detach().double(), out.detach().double()
    err = (r - o).abs()
    max_abs = err.max().item() if err.numel() else 0.0
    rel_rms = (err.pow(2).mean().sqrt() / r.pow(2).mean().sqrt().clamp_min(1e-30)).item() if err.numel() else 0.0
    bad = err > atol + rtol * r.abs()
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{err.numel()} elements differ; max abs err {max_abs:.3g}, rel RMS {rel_rms:.3g}; "
            f"first at {idx}: ref {r[idx].item():.8g} vs out {o[idx].item():.8g}"
        )


def random_tf_weights(options: dict, scale: float = 1.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights keyed by HDF5 dataset name, in the published layout.

    `scale` > 1 makes the LSTM pre-activations large enough that the cell and projection clips fire
    (the character encoder keeps unit scale, so float32 rounding is not amplified beyond ~1e-5).
    """
    rng = np.random.default_rng(seed)
    cnn, lstm = options["char_cnn"], options["lstm"]
    E, P, C = cnn["embedding"]["dim"], lstm["projection_dim"], lstm["dim"]
    F_total = sum(n for _, n in cnn["filters"])

    def normal(*shape, fan_in, s=1.0):
        return (rng.standard_normal(shape) * s / np.sqrt(fan_in)).astype(np.float32)

    w = {"char_embed": rng.uniform(-1, 1, (261, E)).astype(np.float32)}
    for i, (width, num) in enumerate(cnn["filters"]):
        w[f"CNN/W_cnn_{i}"] = normal(1, width, E, num, fan_in=width * E)
        w[f"CNN/b_cnn_{i}"] = normal(num, fan_in=1) * 0.1
    for k in range(cnn["n_highway"]):
        w[f"CNN_high_{k}/W_transform"] = normal(F_total, F_total, fan_in=F_total)
        w[f"CNN_high_{k}/b_transform"] = normal(F_total, fan_in=1) * 0.1
        w[f"CNN_high_{k}/W_carry"] = normal(F_total, F_total, fan_in=F_total)
        w[f"CNN_high_{k}/b_carry"] = normal(F_total, fan_in=1) * 0.1
    w["CNN_proj/W_proj"] = normal(F_total, P, fan_in=F_total)
    w["CNN_proj/b_proj"] = normal(P, fan_in=1) * 0.1
    for d in range(2):
        for layer in range(lstm["n_layers"]):
            g = f"RNN_{d}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            w[f"{g}/W_0"] = normal(2 * P, 4 * C, fan_in=P, s=scale)
            w[f"{g}/B"] = normal(4 * C, fan_in=1) * 0.5
            w[f"{g}/W_P_0"] = normal(C, P, fan_in=C, s=scale)
    return w


def write_hdf5(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, value in weights.items():
            f[name] = value


def small_options(n_layers: int = 2, dim: int = 24, proj: int = 12, n_highway: int = 2, activation: str = "relu",
                  filters=((1, 4), (2, 5), (3, 7)), embed: int = 6) -> dict:
    """Tiny options for fast, odd-shaped tests."""
    return {
        "lstm": {"use_skip_connections": True, "projection_dim": proj, "cell_clip": 3, "proj_clip": 3, "dim": dim, "n_layers": n_layers},
        "char_cnn": {"activation": activation, "filters": [list(f) for f in filters], "n_highway": n_highway,
                     "embedding": {"dim": embed}, "n_characters": 262, "max_characters_per_token": 50},
    }


def random_char_ids(n_tokens: int, seed: int = 0, min_len: int = 1, max_len: int = 48, pad_tokens: int = 0) -> torch.Tensor:
    """`[n_tokens, 50]` ids of random words (lengths in [min_len, max_len]); `pad_tokens` all-zero rows appended."""
    g = np.random.default_rng(seed)
    from .chars import tokens_to_char_ids

    words = ["".join(chr(c) for c in g.integers(33, 127, g.integers(min_len, max_len + 1))) for _ in range(n_tokens)]
    ids = tokens_to_char_ids(words)
    return torch.cat([torch.from_numpy(ids), torch.zeros(pad_tokens, 50, dtype=torch.long)])
