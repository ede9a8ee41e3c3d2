"""Build script for elmo_fast's native extensions.

`pip install --no-build-isolation -e .` builds:
  * elmo_fast._C       every csrc/**/*.cpp (CPU kernels, TORCH_LIBRARY registrations), -O3 + OpenMP
  * elmo_fast._C_cuda  every csrc/**/*.cu (+ csrc/**/*_cuda.cpp), only when torch is a CUDA build
                       AND a CUDA toolkit is found. Never gated on torch.cuda.is_available(): a
                       build machine needs no GPU.

Switches (environment):
  ELMO_FAST_NO_EXT=1     build no native extension (pure PyTorch + Triton install)
  ELMO_FAST_NO_CUDA=1    skip the CUDA extension even when it could be built
  ELMO_FAST_MAX_JOBS     ninja parallelism (defaults to torch's MAX_JOBS handling)
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "csrc", "**", pattern), recursive=True))


def _extensions():
    if os.environ.get("ELMO_FAST_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    # Fast math lets gcc call glibc's vector exp/tanh (8x faster loops); the kernels clamp
    # explicitly, so the no-inf/no-NaN assumption never changes a clip or a saturation.
    cxx = ["-O3", "-fopenmp", "-ffast-math", "-fno-finite-math-only", "-std=c++17"]
    if os.uname().machine in ("x86_64", "AMD64"):
        cxx += ["-mavx2", "-mfma"]
    ext_modules = [
        cpp_extension.CppExtension(
            "elmo_fast._C",
            [s for s in _sources("*.cpp") if not s.endswith("_cuda.cpp")],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]
    cuda_home = cpp_extension.CUDA_HOME
    if (
        os.environ.get("ELMO_FAST_NO_CUDA") != "1"
        and torch.version.cuda is not None
        and cuda_home is not None
        and _sources("*.cu")
    ):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        ext_modules.append(
            cpp_extension.CUDAExtension(
                "elmo_fast._C_cuda",
                _sources("*.cu") + _sources("*_cuda.cpp"),
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            )
        )
    return ext_modules, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["elmo_fast", "elmo_fast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
