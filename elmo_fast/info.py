"""`python -m elmo_fast.info`: which backends this install has, and why the others are missing."""

import os
import platform

import torch

from . import __version__, _ext
from ._backend import ENV, available_backends


def report() -> str:
    lines = [f"elmo_fast {__version__}  torch {torch.__version__}  python {platform.python_version()}"]
    cuda = torch.cuda.is_available()
    lines.append(f"torch CUDA build: {torch.version.cuda or 'no'}; GPU visible: {torch.cuda.get_device_name(0) if cuda else 'no'}")
    lines.append(f"C++ extension (_C):       {'yes' if _ext.cpp_ext() else 'no: ' + str(_ext.load_error('_C'))}")
    lines.append(f"CUDA extension (_C_cuda): {'yes' if _ext.cuda_ext() else 'no: ' + str(_ext.load_error('_C_cuda'))}")
    lines.append(f"Triton:                   {'yes' if _ext.has_triton() else 'no (pip install triton)'}")
    lines.append(f"backends usable on cpu:   {', '.join(available_backends('cpu'))}")
    if cuda:
        lines.append(f"backends usable on cuda:  {', '.join(available_backends('cuda'))}")
    lines.append(f"{ENV}={os.environ.get(ENV, '(unset: fastest available)')}")
    lines.append(f"CPU threads: {torch.get_num_threads()}; ATen CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    if _ext.cpp_ext():
        lines.append(f"packed GEMM micro-kernel: {torch.ops.elmo_fast.gemm_isa()} (ELMO_FAST_CPU_ISA=avx2 forces AVX2)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
