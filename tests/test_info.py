import os
import subprocess
import sys

import pytest

from elmo_fast import _ext
from elmo_fast._backend import available_backends, choose_backend


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "elmo_fast.info"], capture_output=True, text=True, check=True).stdout
    assert "backends usable on cpu" in out and "torch" in out


@pytest.mark.skipif(os.environ.get("ELMO_FAST_NO_EXT") == "1", reason="built without the native extension on purpose")
def test_cpp_extension_is_built_and_preferred_on_cpu():
    assert _ext.cpp_ext() is not None, f"C++ extension missing: {_ext.load_error('_C')}"
    assert "cpp" in available_backends("cpu")
    assert choose_backend("cpu", ("torch", "cpp")) == "cpp"


def test_backend_override_errors_are_clear(monkeypatch):
    monkeypatch.setenv("ELMO_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"'cuda' \(from ELMO_FAST_BACKEND\) cannot run on cpu tensors: it needs cuda ones; "
                                           r"move the module and its inputs with .to\('cuda'\)"):
        choose_backend("cpu", ("torch", "cuda"))
    monkeypatch.delenv("ELMO_FAST_BACKEND")
    with pytest.raises(RuntimeError, match=r"'cuda' \(from backend=\) cannot run on cpu tensors"):
        choose_backend("cpu", ("torch", "cuda"), requested="cuda")
    if _ext.cpp_ext() is not None:
        with pytest.raises(RuntimeError, match=r"'cpp' \(from backend=\) cannot run on cuda tensors: it needs cpu ones"):
            choose_backend("cuda", ("torch", "cpp"), requested="cpp")
    monkeypatch.setenv("ELMO_FAST_BACKEND", "fortran")
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend("cpu", ("torch",))
    monkeypatch.delenv("ELMO_FAST_BACKEND")
    assert choose_backend("cpu", ("torch",)) == "torch"
    assert choose_backend("cpu", ("torch", "cpp"), requested="torch") == "torch"


@pytest.mark.skipif(_ext.cpp_ext() is None, reason="C++ extension not built")
def test_gemm_isa_env_switch_and_errors():
    env = dict(os.environ, ELMO_FAST_CPU_ISA="avx2")
    out = subprocess.run([sys.executable, "-m", "elmo_fast.info"], capture_output=True, text=True, check=True, env=env).stdout
    assert "packed GEMM micro-kernel: avx2" in out
    import torch

    with pytest.raises(RuntimeError, match="expected 'avx2' or 'avx512'"):
        torch.ops.elmo_fast.gemm_isa("sse")
