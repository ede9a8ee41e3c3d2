"""Inputs and checks shared by the char-CNN tests of every backend (C++, Triton, CUDA)."""

from __future__ import annotations

import pytest
import torch

from elmo_fast import _ext
from elmo_fast.ops.char_cnn import char_cnn_conv_max
from elmo_fast.ops.char_cnn.reference import conv_max_ref
from elmo_fast.ops.encoder import char_cnn, char_cnn_ref
from elmo_fast.testing import random_char_ids

requires_cpp = pytest.mark.skipif(_ext.cpp_ext() is None, reason=f"C++ extension not built: {_ext.load_error('_C')}")
CPU_BACKENDS = ["torch", pytest.param("cpp", marks=requires_cpp)]

FILTERS = ((1, 4), (2, 5), (3, 7), (7, 17))  # odd counts: a partial 16-filter panel in each width


def make_params(filters=FILTERS, E=6, P=5, n_highway=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    F_total = sum(n for _, n in filters)
    emb = rnd(262, E)
    ws = [rnd(n, E, w, scale=(w * E) ** -0.5) for w, n in filters]
    bs = [rnd(n, scale=0.1) for _, n in filters]
    hw = [rnd(2 * F_total, F_total, scale=F_total**-0.5) for _ in range(n_highway)]
    hb = [rnd(2 * F_total, scale=0.1) for _ in range(n_highway)]
    pw, pb = rnd(P, F_total, scale=F_total**-0.5), rnd(P, scale=0.1)
    return emb, ws, bs, hw, hb, pw, pb


def flat(params):
    emb, ws, bs, hw, hb, pw, pb = params
    return [emb, *ws, *bs, *hw, *hb, pw, pb]


def mixed_ids(n_random=11, seed=0):
    """Odd count: random words of 1..48 bytes, 1-byte and 48-byte words, all-padding rows, repeats."""
    ids = torch.cat(
        [
            random_char_ids(n_random, seed=seed),
            random_char_ids(2, seed=seed + 1, min_len=1, max_len=1),
            random_char_ids(2, seed=seed + 2, min_len=48, max_len=48),
            torch.zeros(2, 50, dtype=torch.long),
        ]
    )
    return torch.cat([ids, ids[[0, 3, 0, -1]]])  # repeats, incl. an all-padding row

def check_nan_propagates(backend: str, device: str = "cpu") -> None:
    """NaN in a conv weight or in a used character's embedding row must come out where the eager
    reference puts it (torch.max and torch.relu propagate NaN). The fused max compared `acc > best`,
    which a NaN never wins, so a diverged weight vanished behind the other positions (all rows came
    out finite where eager's were all NaN). Shared with the Triton and CUDA tests."""
    ids = mixed_ids(n_random=5).to(device)
    for where in ("conv weight", "embedding row"):
        params = make_params(filters=((1, 4), (2, 5), (3, 7)), n_highway=1)
        with torch.no_grad():
            if where == "conv weight":
                params[1][1][2, 3, 1] = float("nan")  # width 2, filter 2
            else:
                params[0][int(ids[0, 2])] = float("nan")  # a character of the first word
        params = [p.to(device) if isinstance(p, torch.Tensor) else [q.to(device) for q in p] for p in params]
        emb, ws, bs = params[0], params[1], params[2]
        ref_feats, _ = conv_max_ref(ids, emb, ws, bs, "relu")
        feats, _ = char_cnn_conv_max(ids, emb, ws, bs, "relu", backend=backend)
        assert torch.isnan(ref_feats).any(), where
        assert torch.equal(torch.isnan(feats), torch.isnan(ref_feats)), f"{where}: NaN features differ from eager's"
        out = char_cnn(ids, *params, "relu", backend=backend)
        assert torch.equal(torch.isnan(out), torch.isnan(char_cnn_ref(ids, *params, "relu"))), where
