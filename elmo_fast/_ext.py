"""Loading of the optional native extensions, checked against what they were built for.

setup.py records in `elmo_fast._build_info` the torch (version, CUDA, C++ ABI), the CPU ISA flags and
the CUDA archs it compiled for. Before importing `_C` / `_C_cuda` this module checks them against the
running torch and CPU: an extension built for another torch is not loaded (it would fail with undefined
symbols, or worse, run against a changed ABI), nor is `_C` on a CPU without the instructions it was
compiled with (it would die of SIGILL). Each such case, and an extension that fails to load, gives ONE
warning naming the cause and the rebuild command; the ops then run on the next backend. Asking for the
backend explicitly (`ELMO_FAST_BACKEND=cpp|cuda`, `backend=`) raises with the same cause.
`import torch` must come first: _C links to libtorch.
"""

from __future__ import annotations

import importlib
import warnings

import torch

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."
INSTALL_HINT = (f"{REBUILD}  (from the elmo_fast source, with the torch you run installed first; "
                "add -e for a checkout; needs a C++ compiler and ninja)")
# The ops the cuda backend calls; each needs a kernel for the CUDA dispatch key in _C_cuda. The other
# ops of the namespace are CPU micro-kernels (packed GEMMs, the thread pool, the per-step bf16 path).
CUDA_OPS = ("char_cnn_conv_max", "char_cnn_conv_max_backward", "lstm_proj_fwd", "lstm_proj_bwd")

_cache: dict[str, object] = {}


class ExtensionUnavailable(ImportError):
    """A native extension that is not loaded, with the reason a user can act on."""


def build_info() -> dict:
    """What setup.py recorded for this install ({} when the package was never built, e.g. a bare checkout)."""
    try:
        mod = importlib.import_module("elmo_fast._build_info")
    except ImportError:
        return {}
    return {k: v for k, v in vars(mod).items() if not k.startswith("_")}


def cpu_flags() -> set[str] | None:
    """The running CPU's feature flags (/proc/cpuinfo), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _public_version(v: str) -> str:
    return v.split("+", 1)[0]


def _mismatch(info: dict, cuda: bool) -> tuple[str | None, bool]:
    """(why an extension built as `info` must not be loaded into this process or None, whether its absence
    was chosen at build time: a pure-Python install, or no CUDA extension next to a CPU torch)."""
    if not info:
        return "elmo_fast's extensions were never built (no elmo_fast/_build_info.py: a checkout that was not installed)", False
    if not info.get("ext_built"):
        return f"elmo_fast was installed without native extensions ({info.get('reason', 'ELMO_FAST_NO_EXT=1')})", True
    if cuda and not info.get("cuda_ext_built"):
        return info.get("cuda_reason") or "the CUDA extension was not built", True
    built, running = info["torch_version"], torch.__version__
    if _public_version(built) != _public_version(running):
        return f"it was built for torch {built}, but torch {running} is running", False
    if bool(info.get("cxx11_abi")) != bool(torch._C._GLIBCXX_USE_CXX11_ABI):
        return f"it was built with _GLIBCXX_USE_CXX11_ABI={int(info['cxx11_abi'])}, unlike the running torch {running}", False
    if cuda:
        if info.get("torch_cuda_version") != torch.version.cuda:
            return (f"it was built for CUDA {info.get('torch_cuda_version')}, "
                    f"but torch {running} uses CUDA {torch.version.cuda}"), False
        return None, False
    flags = cpu_flags()
    missing = [f for f in info.get("cpu_isa_flags", ()) if flags is not None and f not in flags]
    if missing:
        return (f"it was compiled with {' '.join('-m' + f for f in info['cpu_isa_flags'])} and this CPU lacks "
                f"{', '.join(missing)} (it would crash with an illegal instruction)"), False
    return None, False


def _warn(name: str, reason: str) -> None:
    what = "C++ (CPU)" if name == "_C" else "CUDA"
    fallback = "the other backends (Triton on a GPU, else eager PyTorch)" if name == "_C_cuda" else "eager PyTorch"
    warnings.warn(f"elmo_fast: the {what} extension elmo_fast.{name} is not used: {reason}. Its ops run on "
                  f"{fallback}, which is slower. Rebuild for this torch: {REBUILD}", RuntimeWarning, stacklevel=3)


def _load(name: str):
    if name not in _cache:
        reason, chosen = _mismatch(build_info(), cuda=name == "_C_cuda")
        if reason is None:
            try:
                _cache[name] = importlib.import_module(f"elmo_fast.{name}")
            except ImportError as e:
                reason = f"it failed to load ({e})"
        if reason is not None:
            _cache[name] = ExtensionUnavailable(reason)
            if not chosen:  # a deliberate absence is listed by `python -m elmo_fast.info`, not warned about
                _warn(name, reason)
    return _cache[name]


def cpp_ext():
    """The CPU extension module, or None."""
    mod = _load("_C")
    return None if isinstance(mod, Exception) else mod


def cuda_ext():
    """The CUDA extension module (needs _C loaded first: it owns the op schemas), or None."""
    if cpp_ext() is None:
        return None
    mod = _load("_C_cuda")
    return None if isinstance(mod, Exception) else mod


def load_error(name: str) -> str | None:
    if name == "_C_cuda" and cpp_ext() is None:
        return f"needs the C++ extension, which is not loaded: {load_error('_C')}"
    mod = _load(name)
    return str(mod) if isinstance(mod, Exception) else None


def cuda_archs() -> list[str]:
    """The CUDA archs _C_cuda was compiled for, e.g. ["7.5", ..., "12.0+PTX"]."""
    return list(build_info().get("cuda_archs", ()))


def missing_cuda_kernels() -> list[str]:
    """The ops of CUDA_OPS with no kernel registered for the CUDA dispatch key (all of them when
    _C_cuda is not loaded)."""
    if cuda_ext() is None:
        return list(CUDA_OPS)
    return [op for op in CUDA_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"elmo_fast::{op}", "CUDA")]


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require_cpp():
    mod = cpp_ext()
    if mod is None:
        raise RuntimeError(f"elmo_fast's C++ extension is not loaded: {load_error('_C')}. Build it with: {INSTALL_HINT}")
    return mod
