"""`python -m elmo_fast.info`: what this install was built for, which backends it can use, and why the others are missing."""

from __future__ import annotations

import os
import platform
import sys

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


def plan_report(model: str, device: str = "cpu", backend: str | None = None, train: bool = False,
                gemm_dtype: torch.dtype | None = None) -> str:
    """The kernel plans `Elmo` would run for `model` (a preset name or an options.json) on `device`:
    the character encoder's, and every biLSTM layer's (both directions share one plan)."""
    from .ops.encoder.plan import plan_char_cnn
    from .ops.lstm_proj.plan import plan_lstm_proj
    from .options import load_options

    opts = load_options(model)
    dev = torch.device(device)
    lstm = opts["lstm"]
    P, C = lstm["projection_dim"], lstm["dim"]
    mode = "training (gradients)" if train else "inference"
    lines = [f"plans for {model!r} on {dev}, {mode}, threads {torch.get_num_threads()}"
             + (f", gemm dtype {gemm_dtype}" if gemm_dtype is not None else "") + ":"]
    enc = plan_char_cnn(dev, torch.float32, backend, inference=not train, gemm_dtype=gemm_dtype, cache=not train)
    lines.append(f"  char encoder: {enc.describe()}")
    layer = plan_lstm_proj(dev, torch.float32, (4 * C, P), (P, C), backend, gemm_dtype, directions=2)
    lines.append(f"  biLSTM ({lstm['n_layers']} layers, C={C}, P={P}): {layer.describe()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m elmo_fast.info", description=__doc__)
    ap.add_argument("--plan", metavar="MODEL", help="also print the kernel plan for MODEL (a preset name or options.json)")
    ap.add_argument("--device", default="cpu", help="for --plan: cpu, cuda, cuda:1 (default cpu)")
    ap.add_argument("--backend", default=None, help="for --plan: torch|cpp|triton|cuda (default: the fastest available)")
    ap.add_argument("--train", action="store_true", help="for --plan: the plan with gradients (pretraining, fine-tuning)")
    ap.add_argument("--bf16-gemm", action="store_true", help="for --plan: with set_gemm_dtype(torch.bfloat16)")
    args = ap.parse_args(argv)
    print(report())
    if args.plan:
        from ._backend import BackendUnavailableError

        try:
            print(plan_report(args.plan, args.device, args.backend, args.train, torch.bfloat16 if args.bf16_gemm else None))
        except (BackendUnavailableError, FileNotFoundError, ValueError) as e:
            print(f"python -m elmo_fast.info --plan: {e}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
