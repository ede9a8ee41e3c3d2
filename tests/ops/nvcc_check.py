"""nvcc compile-check of a csrc/ .cu file without a GPU, shared by the CUDA op tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig

import pytest
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
    candidates = [os.path.join(home, "bin", "nvcc")] if home else []
    candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
    return next((c for c in candidates if c and os.path.exists(c)), None)


requires_nvcc = pytest.mark.skipif(nvcc() is None, reason="nvcc not found (install the CUDA toolkit or set CUDA_HOME): CUDA sources not compile-checked")


def compile_check(src: str, out_dir) -> None:
    """Device code for sm_90 as the build makes it (ptxas -O3), host code at -O0 to keep the check
    quick; against the installed torch headers (C++20: torch 2.14 refuses C++17), with C10_USING_CUSTOM_GENERATED_MACROS standing in for the
    CUDA build's generated macros (TOOLCHAIN.md; the object is not linkable). Fails on any error and
    on any kernel that ptxas makes spill registers to local memory."""
    cmd = [nvcc(), "-c", "-arch=sm_90", "-std=c++20", "-Xcompiler", "-O0", "--use_fast_math", "-Xptxas", "-v",
           "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DTORCH_EXTENSION_NAME=_C_cuda", "-w",
           "-I" + os.path.join(ROOT, "csrc"), "-I" + sysconfig.get_paths()["include"],
           *("-I" + p for p in cpp_extension.include_paths()), src, "-o", os.path.join(str(out_dir), "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-4000:]}"
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", proc.stdout + proc.stderr)]
    assert spills, f"no ptxas report in nvcc's output:\n{proc.stderr[-2000:]}"
    assert max(spills) == 0, f"a kernel spills registers ({max(spills)} B):\n{proc.stderr[-4000:]}"
