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


# Triton's own floor for NVIDIA GPUs (its README: compute capability 8.0+); older chips take the next backend.
TRITON_MIN_CAPABILITY = (8, 0)


def _parse_arch(arch: str) -> tuple[int, int, bool]:
    """"8.6" -> (8, 6, False); "12.0+PTX" -> (12, 0, True); an arch-specific "9.0a" counts as 9.0."""
    base, _, ptx = arch.partition("+")
    major, minor = base.split(".")
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0), ptx.upper() == "PTX"


def arch_fits(capability: tuple[int, int], archs: list[str]) -> bool:
    """Whether a device of `capability` can run code compiled for `archs`: SASS runs on the same major
    version with an equal or higher minor, PTX on anything at least as new (the driver JIT-compiles it)."""
    for major, minor, ptx in map(_parse_arch, archs):
        if (major == capability[0] and minor <= capability[1]) or (ptx and (major, minor) <= tuple(capability)):
            return True
    return False


def _capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device` here, or None when it can."""
    device = torch.device(device)
    if backend == "torch":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    needs = {"cpp": "cpu", "cuda": "cuda"}.get(backend)
    if needs is not None and device.type != needs:
        return f"it runs on {needs} tensors only"
    if backend == "cpp":
        return None if _ext.cpp_ext() is not None else f"elmo_fast._C is not loaded: {_ext.load_error('_C')}"
    if backend == "cuda":
        if _ext.cuda_ext() is None:
            return f"elmo_fast._C_cuda is not loaded: {_ext.load_error('_C_cuda')}"
        cap, archs = _capability(device), _ext.cuda_archs()
        if not arch_fits(cap, archs):
            return (f"elmo_fast._C_cuda was compiled for CUDA archs {';'.join(archs)}, which cannot run on "
                    f"{torch.cuda.get_device_name(device)} (compute capability {cap[0]}.{cap[1]}); rebuild with "
                    f"TORCH_CUDA_ARCH_LIST=\"{cap[0]}.{cap[1]}\" {_ext.REBUILD}")
        return None
    # triton: on the CPU only under its interpreter (tests); never chosen by default there.
    if not _ext.has_triton():
        return "Triton is not installed (pip install 'elmo_fast[triton]')"
    if device.type == "cuda":
        cap = _capability(device)
        if cap < TRITON_MIN_CAPABILITY:
            return (f"Triton needs compute capability {TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]}+, and "
                    f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
        return None
    return None if _interpret() else "on the CPU, Triton runs only under TRITON_INTERPRET=1 (tests)"


def backend_available(backend: str, device: torch.device) -> bool:
    return unavailable_reason(backend, device) is None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if backend_available(b, device)]


class BackendUnavailableError(ValueError, RuntimeError):
    """A backend that was asked for (argument or environment) cannot run here: a configuration error
    (a ValueError for callers that validate settings, a RuntimeError as it always was)."""


_fallback_warned: set = set()


def _warn_fallback(skipped: str, chosen: str, device: torch.device, reason: str) -> None:
    key = (skipped, chosen, device.type, _capability(device) if device.type == "cuda" else None)
    if key in _fallback_warned:
        return
    _fallback_warned.add(key)
    import warnings

    warnings.warn(f"elmo_fast: backend {skipped!r} is not used on {device}: {reason}; running on {chosen!r} instead",
                  RuntimeWarning, stacklevel=3)


def choose_backend(device: torch.device, supported: tuple[str, ...] = BACKENDS, requested: str | None = None) -> str:
    """Backend for an op that implements `supported` (every op implements all of BACKENDS) on `device`.

    `requested` (an argument) wins over the environment; with neither, the fastest available. On a
    GPU, a faster backend that is installed but cannot run there (a GPU older than the compiled archs,
    or than Triton's minimum; a CUDA extension that failed to load) is skipped with a one-time warning.
    """
    device = torch.device(device)
    source = "backend=" if requested else ENV
    requested = requested or os.environ.get(ENV) or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"unknown backend {requested!r} (from {source}); choose one of {BACKENDS}")
        if requested not in supported:
            raise ValueError(f"backend {requested!r} is not implemented for this op; it has {supported}")
        reason = unavailable_reason(requested, device)
        if reason is not None:
            needs = {"cpp": "cpu", "cuda": "cuda", "triton": "cuda" if _ext.has_triton() else None}.get(requested)
            if needs is not None and needs != device.type and not (requested == "triton" and _interpret()):
                # The usual cause: a module or its inputs still on the other device.
                also = " (or CPU ones under TRITON_INTERPRET=1, for tests)" if requested == "triton" else ""
                raise BackendUnavailableError(
                    f"kernel backend {requested!r} (from {source}) cannot run on {device.type} tensors: it needs {needs} ones{also}; "
                    f"move the module and its inputs with .to({needs!r}), or let elmo_fast choose (no {source})")
            raise BackendUnavailableError(f"kernel backend {requested!r} (from {source}) cannot run on {device.type} here: {reason}; "
                                          f"fix that or let elmo_fast choose (no {source})")
        return requested
    order = ("cuda", "triton", "cpp", "torch") if device.type == "cuda" else ("cpp", "triton", "torch")
    skipped = []
    for b in order:
        if b not in supported or (b == "triton" and device.type == "cpu"):
            continue
        reason = unavailable_reason(b, device)
        if reason is None:
            if device.type == "cuda":
                for s, why in skipped:
                    _warn_fallback(s, b, device, why)
            return b
        skipped.append((b, reason))
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
