"""The backends of the fused conv + max + activation op, forward and backward, by name.

Forward: `(char_ids, emb, weights, biases, activation) -> (features [N, F], argmax int32 [N, F])`.
'cpp' and 'cuda' are one registered op, torch.ops.elmo_fast.char_cnn_conv_max (the dispatcher
picks the kernel by device: csrc/char_cnn/char_cnn.cpp, char_cnn_cuda.cu); 'triton' is
triton_impl.py; 'torch' the eager reference.
"""

from __future__ import annotations

import torch

from ... import _ext
from .reference import conv_max_backward_ref, conv_max_ref


def _conv_max_cpp(char_ids, emb, weights, biases, activation):
    _ext.require_cpp()
    return torch.ops.elmo_fast.char_cnn_conv_max(char_ids, emb, list(weights), list(biases), activation)


def _conv_max_cuda(char_ids, emb, weights, biases, activation):
    if _ext.cuda_ext() is None:
        raise RuntimeError(f"elmo_fast._C_cuda is not built ({_ext.load_error('_C_cuda')}); build with a CUDA torch: {_ext.INSTALL_HINT}")
    return torch.ops.elmo_fast.char_cnn_conv_max(char_ids, emb, list(weights), list(biases), activation)


def _conv_max_bwd_op(grad, char_ids, emb, weights, feats, argmax, activation):
    return torch.ops.elmo_fast.char_cnn_conv_max_backward(grad.contiguous(), char_ids, emb, list(weights), feats, argmax, activation)


def _triton():
    from . import triton_impl

    return triton_impl


FORWARD = {
    "torch": conv_max_ref,
    "cpp": _conv_max_cpp,
    "cuda": _conv_max_cuda,
    "triton": lambda *a: _triton().char_cnn_conv_max_fwd(*a),
}
_BACKWARD = {
    "torch": conv_max_backward_ref,
    "cpp": _conv_max_bwd_op,
    "cuda": _conv_max_bwd_op,  # the same registered op; the dispatcher picks the CUDA kernel
    "triton": lambda *a: _triton().char_cnn_conv_max_bwd(*a),
}


def conv_max_backward(backend: str, grad, char_ids, emb, weights, feats, argmax, activation):
    """(grad_emb, weight grads, bias grads) of the conv-max op: the backward of `CharConvMaxFunction`."""
    if backend in ("cuda", "triton") and torch.are_deterministic_algorithms_enabled():
        # The GPU kernels scatter the embedding and bias gradients with atomics, whose summation
        # order varies run to run. Under torch.use_deterministic_algorithms (e.g.
        # pretrain(deterministic=True)) take the eager backward through the same argmax instead:
        # same math, deterministic index_add_, slower and with more memory.
        backend = "torch"
    return _BACKWARD[backend](grad, char_ids, emb, weights, feats, argmax, activation)
