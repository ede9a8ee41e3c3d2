"""The highway layer op: [n | g] = h @ W^T + b (W `[2F, F]`), t = sigmoid(g), y = t * h + (1 - t) * relu(n).

Backends: on the CPU the GEMM in ATen or against the packed weight copy (ops/gemm) and the one-pass
C++ gate (csrc/highway/highway.cpp, torch.ops.elmo_fast.highway_gate); on a GPU the GEMM and the
gate in one Triton kernel (triton_impl.py); else the eager reference.
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from ..._backend import backend_available
from ..gemm import linear
from .reference import highway_gate_ref


def _triton():
    from . import triton_impl

    return triton_impl


class HighwayFunction(torch.autograd.Function):
    """One highway layer on the CPU: the GEMM in ATen (bias folded into the fused gate), then
    csrc/highway/highway.cpp's one-pass gate forward and backward. Saves x and the GEMM output
    `[N, 2F]` (what eager autograd keeps too), not the gate's four temporaries."""

    @staticmethod
    def forward(ctx, x, w, b):
        z = torch.mm(x, w.t()) if w.dtype == x.dtype else torch.mm(x.to(w.dtype), w.t()).to(x.dtype)  # bf16: inference
        ctx.save_for_backward(x, w, b, z)
        return torch.ops.elmo_fast.highway_gate(z, b, x)

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, dy):
        x, w, b, z = ctx.saved_tensors
        dz, dx = torch.ops.elmo_fast.highway_gate_backward(dy.contiguous(), z, b, x)
        return dx.addmm_(dz, w), dz.t().mm(x), dz.sum(0)


class TritonHighwayFunction(torch.autograd.Function):
    """One highway layer on a GPU (or the interpreter): the GEMM and the gate in one Triton kernel
    (triton_impl.highway_fwd), which saves the pre-activations z `[N, 2F]` for backward only when
    a gradient is needed; backward is torch pointwise ops and cuBLAS GEMMs."""

    @staticmethod
    def forward(ctx, x, w, b):
        save = any(ctx.needs_input_grad)
        y, z = _triton().highway_fwd(x, w, b, save_z=save)
        if save:
            ctx.save_for_backward(x, w, z)
        return y

    @staticmethod
    @once_differentiable  # the backward kernels are not differentiable: double backward raises
    def backward(ctx, dy):
        x, w, z = ctx.saved_tensors
        return _triton().highway_bwd(dy.contiguous(), x, w, z)


GPU_HIGHWAY_ENV = "ELMO_FAST_GPU_HIGHWAY"


def use_triton_highway(backend: str, device: torch.device) -> bool:
    """The fused Triton highway runs for the GPU backends (and 'triton' under the interpreter)
    unless ELMO_FAST_GPU_HIGHWAY=torch asks for eager's cuBLAS GEMM + pointwise ops."""
    choice = os.environ.get(GPU_HIGHWAY_ENV, "triton")
    if choice not in ("triton", "torch"):
        raise ValueError(f"{GPU_HIGHWAY_ENV} must be 'triton' or 'torch', got {choice!r}")
    if choice == "torch" or backend not in ("triton", "cuda"):
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return False  # TF32 tensor cores (3xTF32 needs them) start with Ampere
    return backend == "triton" or backend_available("triton", device)


VARIANTS = ("packed", "cpp", "triton", "eager")


def highway_variant(backend: str, device: torch.device, packed: torch.dtype | None, same_dtype: bool) -> str:
    """Which highway kernel runs (the encoder's plan records it): 'packed' (CPU inference: the GEMM
    against the packed weight copy, then the C++ gate), 'cpp' (`HighwayFunction`), 'triton' (the
    fused kernel, where `use_triton_highway` says so; weights and input of one dtype), 'eager'."""
    if packed is not None:
        return "packed"
    if backend == "cpp":
        return "cpp"
    if same_dtype and use_triton_highway(backend, device):
        return "triton"
    return "eager"


def highway(variant: str, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, packed: torch.dtype | None = None) -> torch.Tensor:
    """One highway layer `[N, F]` -> `[N, F]` with the kernel `highway_variant` chose."""
    if variant == "packed":
        return torch.ops.elmo_fast.highway_gate(linear(h, w, None, packed), b, h)
    if variant == "cpp":
        return HighwayFunction.apply(h, w, b)
    if variant == "triton":
        return TritonHighwayFunction.apply(h, w, b)
    return highway_gate_ref(linear(h, w, b), h)
