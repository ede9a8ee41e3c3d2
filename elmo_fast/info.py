"""`python -m elmo_fast.info`: what this install was built for, which backends it can use, and why the others are missing."""

from __future__ import annotations

import os
import platform

import torch

from . import __version__, _ext
from ._backend import ENV, TRITON_MIN_CAPABILITY, available_backends, unavailable_reason


def _yes_or_why(name: str) -> str:
    mod = _ext.cpp_ext() if name == "_C" else _ext.cuda_ext()
    return "loaded" if mod is not None else "not loaded: " + str(_ext.load_error(name))


def report() -> str:
    info = _ext.build_info()
    cuda = torch.cuda.is_available()
    lines = [f"elmo_fast {__version__}  torch {torch.__version__}  python {platform.python_version()}  ({platform.machine()})"]
    lines.append(f"torch CUDA build: {torch.version.cuda or 'no'}; GPU visible: "
                 + (", ".join(f"{torch.cuda.get_device_name(i)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
                              for i in range(torch.cuda.device_count())) if cuda else "no"))
    if info.get("ext_built"):
        lines.append(f"built for:  torch {info['torch_version']}, CUDA {info.get('torch_cuda_version') or 'none'}, "
                     f"_GLIBCXX_USE_CXX11_ABI={int(info['cxx11_abi'])}, CPU flags "
                     f"{' '.join('-m' + f for f in info.get('cpu_isa_flags', ())) or '(none)'} ({info.get('machine')})")
    elif info:
        lines.append(f"built for:  no native extensions ({info.get('reason')})")
    else:
        lines.append("built for:  (not built: no elmo_fast/_build_info.py)")
    lines.append(f"C++ extension (_C):       {_yes_or_why('_C')}")
    lines.append(f"CUDA extension (_C_cuda): {_yes_or_why('_C_cuda')}")
    if info.get("cuda_ext_built"):
        lines.append(f"  CUDA archs compiled:    {';'.join(info['cuda_archs'])}  (toolkit {info.get('cuda_home')})")
        if _ext.cuda_ext() is not None:
            missing = _ext.missing_cuda_kernels()
            lines.append(f"  CUDA kernels:           {'all ' + str(len(_ext.CUDA_OPS)) + ' ops registered' if not missing else 'MISSING ' + ', '.join(missing)}")
    lines.append(f"Triton:                   {'yes' if _ext.has_triton() else 'no (pip install elmo_fast[triton])'}"
                 f"  (GPUs of compute capability {TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]}+)")
    lines.append(f"backends usable on cpu:   {', '.join(available_backends('cpu'))}")
    for i in range(torch.cuda.device_count() if cuda else 0):
        dev = torch.device("cuda", i)
        lines.append(f"backends usable on {dev}: {', '.join(available_backends(dev))}")
        for b in ("cuda", "triton"):
            why = unavailable_reason(b, dev)
            if why:
                lines.append(f"  not {b}: {why}")
    lines.append(f"{ENV}={os.environ.get(ENV, '(unset: fastest available)')}")
    lines.append(f"CPU threads: {torch.get_num_threads()}; ATen CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    if _ext.cpp_ext():
        lines.append(f"packed GEMM micro-kernel: {torch.ops.elmo_fast.gemm_isa()} (ELMO_FAST_CPU_ISA=avx2 forces AVX2)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
