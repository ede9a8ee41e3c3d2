"""An independent float64 NumPy forward of ELMo, written from the published TF conventions
(`y = x @ W`, gates i, j, f, o, forget bias +1 at run time, carry gate from W_carry), one sentence
at a time. It shares no code with elmo_fast: it is the oracle for the eager reference."""

from __future__ import annotations

import numpy as np


def char_ids_py(token: str) -> list[int]:
    """Plain per-token version of bilm-tf's character mapping (already +1)."""
    if token == "<S>":
        raw = [258, 256, 259] + [260] * 47
    elif token == "</S>":
        raw = [258, 257, 259] + [260] * 47
    else:
        data = token.encode("utf-8", "ignore")[:48]
        raw = [258] + list(data) + [259] + [260] * (48 - len(data))
    return [c + 1 for c in raw]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class NumpyElmo:
    def __init__(self, weights: dict[str, np.ndarray], options: dict):
        self.w = {k: v.astype(np.float64) for k, v in weights.items()}
        self.o = options
        self.fired = {"cell": False, "proj": False}

    def token_vectors(self, tokens: list[str]) -> np.ndarray:
        w, cnn = self.w, self.o["char_cnn"]
        table = np.vstack([np.zeros((1, w["char_embed"].shape[1])), w["char_embed"]])
        ids = np.array([char_ids_py(t) for t in tokens])
        emb = table[ids]  # [T, 50, E]
        feats = []
        for i, (width, num) in enumerate(cnn["filters"]):
            W = w[f"CNN/W_cnn_{i}"][0]  # [width, E, num]
            n_pos = 50 - width + 1
            conv = np.zeros((len(tokens), n_pos, num))
            for k in range(width):
                conv += emb[:, k : k + n_pos, :] @ W[k]
            conv += w[f"CNN/b_cnn_{i}"]
            pooled = conv.max(axis=1)
            feats.append(np.maximum(pooled, 0) if cnn["activation"] == "relu" else np.tanh(pooled))
        x = np.concatenate(feats, axis=1)
        for k in range(cnn["n_highway"]):
            g = f"CNN_high_{k}"
            carry = _sigmoid(x @ w[f"{g}/W_carry"] + w[f"{g}/b_carry"])
            transform = np.maximum(x @ w[f"{g}/W_transform"] + w[f"{g}/b_transform"], 0)
            x = carry * transform + (1 - carry) * x
        return x @ w["CNN_proj/W_proj"] + w["CNN_proj/b_proj"]

    def _lstm(self, xs: np.ndarray, direction: int, layer: int, h=None, c=None):
        g = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
        W, B, WP = self.w[f"{g}/W_0"], self.w[f"{g}/B"], self.w[f"{g}/W_P_0"]
        C, P = WP.shape
        lo = self.o["lstm"]
        h = np.zeros(P) if h is None else h
        c = np.zeros(C) if c is None else c
        out = []
        for x in xs:
            z = np.concatenate([x, h]) @ W + B
            i, j, f, o = z[:C], z[C : 2 * C], z[2 * C : 3 * C], z[3 * C :]
            c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
            if lo.get("cell_clip"):
                self.fired["cell"] |= bool(np.abs(c).max() > lo["cell_clip"])
                c = np.clip(c, -lo["cell_clip"], lo["cell_clip"])
            h = (_sigmoid(o) * np.tanh(c)) @ WP
            if lo.get("proj_clip"):
                self.fired["proj"] |= bool(np.abs(h).max() > lo["proj_clip"])
                h = np.clip(h, -lo["proj_clip"], lo["proj_clip"])
            out.append(h)
        return np.array(out), h, c

    def layers(self, sentence: list[str]) -> list[np.ndarray]:
        """n_layers + 1 arrays `[len + 2, 2P]` for one sentence, with its boundary tokens."""
        x = self.token_vectors(["<S>"] + list(sentence) + ["</S>"])
        result = [np.concatenate([x, x], axis=1)]
        f_in, b_in = x, x[::-1]
        for layer in range(self.o["lstm"]["n_layers"]):
            f_out, _, _ = self._lstm(f_in, 0, layer)
            b_out, _, _ = self._lstm(b_in, 1, layer)
            if layer > 0:
                f_out, b_out = f_out + f_in, b_out + b_in
            result.append(np.concatenate([f_out, b_out[::-1]], axis=1))
            f_in, b_in = f_out, b_out
        return result
