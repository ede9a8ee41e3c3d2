"""The one place that picks a kernel backend.

Order of preference: cuda -> triton -> cpp -> torch (the eager reference, always available).
`ELMO_FAST_BACKEND=torch|cpp|triton|cuda` overrides the choice for every op; asking for a backend
that cannot run on the tensor's device, or is not installed, is an error rather than a silent
fallback, so benchmarks never measure something other than what they name.
"""

from __future__ import annotations

import functools
import os

import torch

from . import _ext

BACKENDS = ("torch", "cpp", "triton", "cuda")
ENV = "ELMO_FAST_BACKEND"


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend_available(backend: str, device: torch.device) -> bool:
    if backend == "torch":
        return True
    if backend == "cpp":
        return device.type == "cpu" and _ext.cpp_ext() is not None
    if backend == "cuda":
        return device.type == "cuda" and _ext.cuda_ext() is not None
    if backend == "triton":
        # On the CPU Triton only runs under its interpreter (tests); never chosen by default there.
        return _ext.has_triton() and (device.type == "cuda" or _interpret())
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if backend_available(b, device)]


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for (argument or environment) cannot run here: a configuration error."""


def choose_backend(device: torch.device, supported: tuple[str, ...], requested: str | None = None) -> str:
    """Backend for an op that implements `supported` on `device`.

    `requested` (an argument) wins over the environment; with neither, the fastest available.
    """
    device = torch.device(device)
    source = "backend=" if requested else ENV
    requested = requested or os.environ.get(ENV) or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r} (from {ENV} or backend=); choose one of {BACKENDS}")
        if requested not in supported:
            raise ValueError(f"backend {requested!r} is not implemented for this op; it has {supported}")
        if not backend_available(requested, device):
            needs = {"cpp": "cpu", "cuda": "cuda", "triton": "cuda" if _ext.has_triton() else None}.get(requested)
            if needs is not None and needs != device.type:
                # The usual cause: a module or its inputs still on the other device.
                also = " (or CPU ones under TRITON_INTERPRET=1, for tests)" if requested == "triton" else ""
                raise BackendUnavailableError(
                    f"backend {requested!r} (from {source}) cannot run on {device.type} tensors: it needs {needs} ones{also}; "
                    f"move the module and its inputs with .to({needs!r}), or let elmo_fast choose (no {source})")
            hint = _ext.INSTALL_HINT if requested in ("cpp", "cuda") else "pip install triton (GPU, or TRITON_INTERPRET=1 on CPU)"
            raise BackendUnavailableError(f"backend {requested!r} (from {source}) cannot run on {device.type} here; install it ({hint}) "
                               f"or let elmo_fast choose (no {source})")
        return requested
    order = ("cuda", "triton", "cpp", "torch") if device.type == "cuda" else ("cpp", "triton", "torch")
    for b in order:
        if b in supported and backend_available(b, device) and not (b == "triton" and device.type == "cpu"):
            return b
    return "torch"


def gpu_autocast_dtype(device: torch.device, backend: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a fused GPU op ("triton"/"cuda") must run in under autocast, or None for its inputs' own.

    A custom autograd Function is not autocast: it receives the fp32 parameters as they are, where
    eager's F.linear and conv1d would run in the autocast dtype (bf16 tensor cores in GPU
    pretraining). So the callers cast their fp32 inputs to that dtype, as autocast itself would, and
    run with autocast off; the casts are differentiable, so gradients still reach the fp32
    parameters. fp64 stays fp64 (autocast leaves it alone too). The CPU backend keeps fp32: CPU
    autocast is for eager ops, and the C++ kernels have no half-precision path."""
    if backend not in ("triton", "cuda") or dtype != torch.float32 or not torch.is_autocast_enabled(device.type):
        return None
    amp = torch.get_autocast_dtype(device.type)
    return amp if amp != dtype else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or AMX), where bf16 GEMMs are
    faster than fp32 ones; elsewhere oneDNN emulates them."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


_bf16_warned = False


def warn_if_bf16_emulated() -> None:
    """The CPU bf16-GEMM option on a CPU without native bf16: measured ~10x SLOWER than fp32 on an
    AVX2-only AMD EPYC (Zen 3), so say so once instead of letting a 'faster' setting quietly slow
    everything down. The numbers stay right; only the speed is lost."""
    global _bf16_warned
    if _bf16_warned or cpu_has_native_bf16():
        return
    _bf16_warned = True
    import warnings

    warnings.warn(
        f"gemm dtype torch.bfloat16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no avx512_bf16 or AMX, "
        "so bf16 GEMMs are emulated and run several times slower than fp32; keep set_gemm_dtype(None) here",
        RuntimeWarning,
        stacklevel=3,
    )


def on_device_of_first_arg(fn):
    """For Triton launchers: Triton launches on the current CUDA device, not on the tensors' one,
    so make the first argument's device current (a no-op for CPU tensors under the interpreter)."""

    @functools.wraps(fn)
    def wrapper(first, *args, **kwargs):
        with torch.cuda.device_of(first):
            return fn(first, *args, **kwargs)

    return wrapper
