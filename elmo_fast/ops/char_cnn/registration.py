"""Shape-only ("fake") kernels of the conv-max ops (schemas: csrc/char_cnn/char_cnn.cpp), for
torch.compile and opcheck. Their one autograd path is `CharConvMaxFunction` (function.py); the raw
ops refuse tensors that require grad (csrc/common/no_autograd.h). Imported by
elmo_fast.ops.registration once the C++ extension has loaded."""

from __future__ import annotations

import torch


@torch.library.register_fake("elmo_fast::char_cnn_conv_max")
def _conv_max_fake(char_ids, embedding, weights, biases, activation):
    F_total = sum(b.shape[0] for b in biases)
    N = char_ids.shape[0]
    return embedding.new_empty(N, F_total), embedding.new_empty(N, F_total, dtype=torch.int32)


@torch.library.register_fake("elmo_fast::char_cnn_conv_max_backward")
def _conv_max_backward_fake(grad, char_ids, embedding, weights, features, argmax, activation):
    return torch.empty_like(embedding), [torch.empty_like(w) for w in weights], [w.new_empty(w.shape[0]) for w in weights]
