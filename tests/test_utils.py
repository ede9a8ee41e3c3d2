"""Atomic writes: nothing half-written under the final name, and ordinary permissions."""

import os
import stat

import pytest

from elmo_fast.utils import atomic_path, atomic_write_text


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_write_gets_the_umask_mode_or_keeps_the_old_one(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert _mode(tmp_path / "a.json") == 0o644  # was 0600 (mkstemp's): unreadable in a shared folder
        os.chmod(tmp_path / "a.json", 0o640)
        atomic_write_text(tmp_path / "a.json", "{ }")
        assert _mode(tmp_path / "a.json") == 0o640
        assert (tmp_path / "a.json").read_text() == "{ }"
    finally:
        os.umask(old)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "w.txt", "complete")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "w.txt") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "w.txt").read_text() == "complete"
    assert sorted(os.listdir(tmp_path)) == ["w.txt"]
