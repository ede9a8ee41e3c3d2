"""Shape-only ("fake") kernels of the packed-GEMM ops (schemas: csrc/common/gemm_ops.cpp), for
torch.compile and opcheck. Imported by elmo_fast._ext once the C++ extension has loaded."""

from __future__ import annotations

import torch


@torch.library.register_fake("elmo_fast::gemm_pack")
def _pack_fake(b):
    K, N = b.shape
    return b.new_empty((N + 15) // 16, K, 16)


@torch.library.register_fake("elmo_fast::gemm_pack_bf16")
def _pack_bf16_fake(b):
    K, N = b.shape
    return b.new_empty((N + 15) // 16, (K + 1) // 2, 32, dtype=torch.bfloat16)


@torch.library.register_fake("elmo_fast::packed_linear")
def _packed_linear_fake(x, packed, bias, n):
    return x.new_empty(x.shape[0], n)
