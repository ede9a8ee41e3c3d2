"""Loads every op's registrations (fakes, autograd) once the C++ extension that defines the
schemas is loaded: one module per op (<op>/registration.py), imported from here and nowhere else."""

from __future__ import annotations

from .. import _ext

if _ext.cpp_ext() is not None:
    from .char_cnn import registration as _char_cnn  # noqa: F401
    from .encoder import registration as _encoder  # noqa: F401
    from .gemm import registration as _gemm  # noqa: F401
    from .highway import registration as _highway  # noqa: F401
    from .lstm_proj import registration as _lstm_proj  # noqa: F401
