"""Build script for elmo_fast's native extensions, built against the torch that is already installed.

    pip install torch                        # first: the build compiles against this torch
    pip install --no-build-isolation .       # or -e . for a checkout you edit

It builds:
  * elmo_fast._C       every csrc/**/*.cpp (CPU kernels, TORCH_LIBRARY registrations), -O3 + OpenMP
  * elmo_fast._C_cuda  every csrc/**/*.cu (+ csrc/**/*_cuda.cpp), only when torch is a CUDA build
                       AND a CUDA toolkit is found. Never gated on torch.cuda.is_available(): a
                       build machine needs no GPU.
and writes elmo_fast/_build_info.py: the torch version, CUDA version, C++ ABI, CUDA archs and CPU
ISA flags the extensions were compiled for, which elmo_fast checks against the running torch and
machine at import.

Switches (environment):
  ELMO_FAST_NO_EXT=1      build no native extension (pure PyTorch + Triton install)
  ELMO_FAST_NO_CUDA=1     skip the CUDA extension even when it could be built
  TORCH_CUDA_ARCH_LIST    CUDA archs to compile, e.g. "8.0;9.0+PTX" (default: the archs the installed
                          torch was built for that the local nvcc supports, PTX of the newest)
  CUDA_HOME               the CUDA toolkit (default: torch's guess, corrected when it has no libcudart)
  MAX_JOBS                ninja parallelism (torch's cpp_extension reads it)
"""

import glob
import os
import re
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(HERE, "elmo_fast", "_build_info.py")
# Commands that compile; metadata and sdist commands need no torch.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel", "bdist_egg"}
# The x86-64 flags every C++ source is compiled with (x86-64-v3). elmo_fast._ext refuses to load _C on
# a CPU that lacks any of them (it would die of SIGILL); AVX-512 code paths use function-level targets
# and are dispatched at run time.
X86_ISA = ("avx2", "fma")


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "**", pattern), recursive=True))


def _import_torch():
    try:
        import torch
    except ImportError:
        building = bool(BUILD_COMMANDS & set(sys.argv[1:]))
        if not building:
            return None
        sys.exit(
            "elmo_fast: error: torch is not importable in this build environment. elmo_fast's C++/CUDA extensions "
            "are compiled against the torch you have installed, which pip's build isolation hides. Install torch "
            "first, then add --no-build-isolation:\n"
            "    pip install torch && pip install --no-build-isolation .\n"
            "(or set ELMO_FAST_NO_EXT=1 for a pure-Python install that runs every op in eager PyTorch)")
    return torch


def _nvcc_archs(cuda_home):
    """The SM versions the toolkit's nvcc can compile for, e.g. {"7.5", "8.0", ..., "12.1"}."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f"{m[:-1]}.{m[-1]}" for m in re.findall(r"compute_(\d+)", out)}


def _cuda_home(cpp_extension, torch):
    """The CUDA toolkit folder. torch guesses the parent of the `bin/` that holds `nvcc`; where that `nvcc`
    is a wrapper script (/usr/local/bin/nvcc), the guess has no libcudart and the link fails with
    `cannot find -lcudart`, so such a guess is replaced by the versioned toolkit of torch's CUDA."""

    def ok(d):
        return d and os.path.isfile(os.path.join(d, "bin", "nvcc")) and glob.glob(os.path.join(d, "lib*", "libcudart.so*"))

    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = [cpp_extension.CUDA_HOME, f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"]
    return next((d for d in candidates if ok(d)), None)


def _default_arch_list(torch, cuda_home):
    """The archs torch itself was built for (sm_75 ... sm_120 for a CUDA 13 torch), as far as this nvcc
    supports them, with PTX of the newest so that later GPUs can JIT it."""
    torch_archs = [f"{a[3:-1]}.{a[-1]}" for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    supported = _nvcc_archs(cuda_home)
    archs = [a for a in torch_archs if supported is None or a in supported]
    if not archs:  # a torch that reports none: Turing .. Hopper, what every CUDA 12/13 nvcc has
        archs = ["7.5", "8.0", "8.6", "9.0"]
    archs = sorted(set(archs), key=lambda a: tuple(map(int, a.split("."))))
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def _write_build_info(info):
    text = '"""Written by setup.py when the native extensions were built; read by elmo_fast._ext."""\n\n'
    text += "".join(f"{k} = {v!r}\n" for k, v in info.items())
    old = open(BUILD_INFO).read() if os.path.exists(BUILD_INFO) else None
    if old != text:  # unchanged content keeps its mtime, so an incremental rebuild stays incremental
        with open(BUILD_INFO + ".tmp", "w") as f:
            f.write(text)
        os.replace(BUILD_INFO + ".tmp", BUILD_INFO)


def _extensions():
    if os.environ.get("ELMO_FAST_NO_EXT") == "1":
        _write_build_info({"ext_built": False, "reason": "built with ELMO_FAST_NO_EXT=1"})
        return [], {}
    torch = _import_torch()
    if torch is None:  # egg_info / dist_info / sdist: no compilation, no build info
        return [], {}
    from torch.utils import cpp_extension

    # Fast math lets gcc call glibc's vector exp/tanh (8x faster loops); the kernels clamp
    # explicitly, so the no-inf/no-NaN assumption never changes a clip or a saturation.
    # No -std flag: cpp_extension adds the standard that the installed torch's headers need
    # (C++17 up to torch 2.13, C++20 from 2.14, whose headers #error on C++17).
    cxx = ["-O3", "-fopenmp", "-ffast-math", "-fno-finite-math-only"]
    isa = []
    if os.uname().machine in ("x86_64", "AMD64"):
        isa = list(X86_ISA)
        cxx += [f"-m{f}" for f in isa]
    ext_modules = [
        cpp_extension.CppExtension(
            "elmo_fast._C",
            [s for s in _sources("*.cpp") if not s.endswith("_cuda.cpp")],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]
    info = {
        "ext_built": True,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "cpu_isa_flags": isa,
        "machine": os.uname().machine,
        "cuda_ext_built": False,
        "cuda_archs": [],
        "cuda_reason": None,
    }
    cuda_home = _cuda_home(cpp_extension, torch) if torch.version.cuda else None
    if os.environ.get("ELMO_FAST_NO_CUDA") == "1":
        info["cuda_reason"] = "built with ELMO_FAST_NO_CUDA=1"
    elif torch.version.cuda is None:
        info["cuda_reason"] = f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch and rebuild"
    elif cuda_home is None:
        info["cuda_reason"] = (f"no CUDA toolkit found (torch {torch.__version__} wants CUDA {torch.version.cuda}); "
                               "install it or set CUDA_HOME, then rebuild")
    elif not _sources("*.cu"):
        info["cuda_reason"] = "no CUDA sources in csrc/"
    else:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # CUDAExtension reads the module global for include/lib paths
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or _default_arch_list(torch, cuda_home)
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        ext_modules.append(
            cpp_extension.CUDAExtension(
                "elmo_fast._C_cuda",
                _sources("*.cu") + _sources("*_cuda.cpp"),
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
            )
        )
        info.update(cuda_ext_built=True, cuda_home=cuda_home,
                    cuda_archs=[a.strip() for a in re.split(r"[;\s]+", arch_list) if a.strip()])
    _write_build_info(info)
    return ext_modules, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["elmo_fast", "elmo_fast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
