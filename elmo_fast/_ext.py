"""Loading of the optional native extensions. `import torch` must come first: _C links to libtorch."""

from __future__ import annotations

import importlib

import torch  # noqa: F401

INSTALL_HINT = "pip install --no-build-isolation -e .  (from the elmo_fast checkout; needs a C++ compiler and ninja)"

_cache: dict[str, object] = {}


def _load(name: str):
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"elmo_fast.{name}")
        except ImportError as e:  # recorded, so `python -m elmo_fast.info` can say why
            _cache[name] = e
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
    mod = _load(name)
    return str(mod) if isinstance(mod, Exception) else None


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require_cpp():
    mod = cpp_ext()
    if mod is None:
        raise RuntimeError(f"elmo_fast's C++ extension is not built ({load_error('_C')}). Build it with: {INSTALL_HINT}")
    return mod
