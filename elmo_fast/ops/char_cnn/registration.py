"""Registrations of the conv-max ops (schemas: csrc/char_cnn/char_cnn.cpp): shape-only ("fake")
kernels for torch.compile and opcheck, and the autograd of torch.ops.elmo_fast.char_cnn_conv_max
called on its own (through `conv_max_backward`, the backward `CharConvMaxFunction` uses too).
Imported by elmo_fast.ops.registration once the C++ extension has loaded."""

from __future__ import annotations

import torch

from .backends import conv_max_backward


@torch.library.register_fake("elmo_fast::char_cnn_conv_max")
def _conv_max_fake(char_ids, embedding, weights, biases, activation):
    F_total = sum(b.shape[0] for b in biases)
    N = char_ids.shape[0]
    return embedding.new_empty(N, F_total), embedding.new_empty(N, F_total, dtype=torch.int32)


@torch.library.register_fake("elmo_fast::char_cnn_conv_max_backward")
def _conv_max_backward_fake(grad, char_ids, embedding, weights, features, argmax, activation):
    return torch.empty_like(embedding), [torch.empty_like(w) for w in weights], [w.new_empty(w.shape[0]) for w in weights]


def _setup_context(ctx, inputs, output):
    char_ids, emb, weights, _biases, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(char_ids, emb, output[0], output[1], *weights)


def _backward(ctx, grad, _grad_argmax):
    char_ids, emb, feats, argmax, *weights = ctx.saved_tensors
    backend = "cuda" if grad.is_cuda else "cpp"
    grad_emb, gw, gb = conv_max_backward(backend, grad, char_ids, emb, weights, feats, argmax, ctx.activation)
    return None, grad_emb, gw, gb, None


torch.library.register_autograd("elmo_fast::char_cnn_conv_max", _backward, setup_context=_setup_context)
