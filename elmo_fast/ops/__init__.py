"""Ops: each folder holds `reference.py` (plain PyTorch oracle) next to its fast backends."""

from . import registration  # noqa: E402,F401  (fakes and autograd of the C++ ops, with the extension)
