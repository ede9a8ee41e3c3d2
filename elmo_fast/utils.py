"""Small shared helpers: atomic writes (no half-written file is ever left under the final name),
the download cache folder, UTF-8 text files, device names."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class UsageError(ValueError):
    """A bad argument or setting (a value out of range, an unknown device): `elmo-fast` exits 2 on it,
    as on argparse's own errors; every other error exits 1."""


class MissingExtraError(ImportError):
    """A workflow needs a package of an optional extra that is not installed."""


# extra -> (import name, pip name) of what it brings
EXTRAS = {
    "classify": (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")),
    "demo": (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")),
}


def require_extra(extra: str, what: str) -> None:
    """Raise MissingExtraError, naming the `pip install` that fixes it, unless `extra`'s packages import."""
    import importlib.util

    missing = [pip for mod, pip in EXTRAS[extra] if importlib.util.find_spec(mod) is None]
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'elmo_fast[{extra}]'")


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed over `path`
    (which gets the umask's permissions, or keeps those of the file it replaces)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file owner-only (0600); give it the mode an ordinary open() would (the
        # umask's), or keep the mode of the file it replaces, so shared model folders stay readable.
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(d)  # the rename itself survives a power loss only once the folder is synced
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_int(v) -> bool:
    """An integer setting: a bool (True == 1) does not count."""
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_output_dir(path) -> None:
    """Raise a one-line ValueError unless `path` is a writable directory or can be created, so a
    command finds out before its work, not when it writes its results."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"output directory {path} exists and is not a directory; give a new or existing directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"output directory {path} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"output directory {path} cannot be created: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {path} cannot be created: {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def cache_dir() -> str:
    """Where downloaded options/weight files are kept: `$ELMO_FAST_CACHE`, else `~/.cache/elmo_fast`
    (the downloader is `elmo_fast.pretrained.download`)."""
    return os.path.expanduser(os.environ.get("ELMO_FAST_CACHE") or os.path.join("~", ".cache", "elmo_fast"))


def read_utf8_lines(path, what: str = "text file") -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark dropped); a file in another
    encoding is a ValueError naming the file and line, not a bare codec error."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a folder; pass a file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); save the {what} as UTF-8") from None
    return text.splitlines()


def resolve_device(device) -> torch.device:
    """`device` (a name such as 'cpu', 'cuda', 'cuda:1', or None for cuda when available) checked
    up front, so a typo or a missing GPU is one clear UsageError (a ValueError) instead of a failure deep in a run."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use e.g. cpu, cuda or cuda:1") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: no CUDA GPU is available to this torch ({torch.__version__}); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "meta":
        raise UsageError(f"device {device!r} holds no data; use cpu or cuda")
    elif dev.type != "cpu":
        try:
            torch.empty(1, device=dev)
        except Exception as e:  # noqa: BLE001  (each device type fails in its own way)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"device {device!r} is not usable here ({first}); use cpu or cuda") from None
    return dev


_libc_trim = None


def release_freed_memory() -> None:
    """Give the heap memory that glibc keeps after `free` back to the OS (`malloc_trim(0)`).

    A long embedding run allocates and frees many differently sized arrays per batch; glibc keeps the
    freed chunks, so without this the peak RSS creeps up with the corpus size even though the live data
    does not. A no-op where glibc is not the allocator (macOS, Windows, musl)."""
    global _libc_trim
    if _libc_trim is None:
        _libc_trim = False
        try:
            import ctypes
            import ctypes.util

            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc_trim = lib.malloc_trim
            _libc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            pass
    if _libc_trim:
        _libc_trim(0)
