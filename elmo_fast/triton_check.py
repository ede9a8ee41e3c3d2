"""Compile every Triton kernel of elmo_fast for a real GPU architecture on a machine without a GPU,
and report what ptxas made of each: registers, spills, shared memory.

    python -m elmo_fast.triton_check                 # sm_90 (H100/H200)
    python -m elmo_fast.triton_check --arch 80 90 --json report.json

Why: under TRITON_INTERPRET=1 (CI's only way to run the kernels) nothing is compiled, so a kernel
that the GPU compiler rejects (a tl.dot tile under 16, a dtype the target lacks, more shared memory
than the SM has) or that spills registers to local memory would only show up on a GPU. Triton can
compile for any target without one, and ships ptxas and cuobjdump: a stand-in driver names the
target, the real host launchers run on CPU tensors with the shapes and dtypes the library uses, and
each launch compiles (Triton's `warmup`) instead of running. The launch arguments are those of a
real call, so the compiled specialisations (constexprs, pointer alignment, dtypes) are the ones a
GPU would get.

Exit status 1 when a kernel fails to compile, spills (fp64, a test-only dtype, may spill), or
needs more shared memory than the architecture offers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from unittest import mock

#: Shared memory per block that a kernel may use, by architecture (opt-in maximum, bytes).
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass
class KernelReport:
    kernel: str
    arch: int
    case: str
    constexprs: dict
    num_warps: int
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    problems: list = field(default_factory=list)


def _driver(arch: int):
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class CompileOnlyDriver(DriverBase):
        """Names a target for Triton's compiler; has no device to launch on."""

        target = GPUTarget("cuda", arch, 32)

        @staticmethod
        def is_active():
            return False

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            # Triton caches compiled kernels per device index: one index per arch, or a second
            # arch checked in the same process would be handed the first one's binaries.
            return arch

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_benchmarker(self):
            raise RuntimeError("compile-only driver: nothing can be timed")

        def get_device_interface(self):
            return torch.cuda

    return CompileOnlyDriver()


@contextlib.contextmanager
def compile_only(arch: int, sink: list):
    """Within the block, `kernel[grid](*args)` compiles for sm_<arch> and appends
    (kernel name, the launch's constexpr keywords, CompiledKernel) to `sink`; nothing runs."""
    import triton
    from triton.runtime import jit

    saved = jit.JITFunction.__getitem__

    def getitem(self, grid):
        def compile_(*args, **kwargs):
            compiled = self.run(*args, grid=grid, warmup=True, **kwargs)
            consts = {k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str))}
            sink.append((self.fn.__name__, consts, compiled))
            return compiled

        return compile_

    triton.runtime.driver.set_active(_driver(arch))
    jit.JITFunction.__getitem__ = getitem
    try:
        yield
    finally:
        jit.JITFunction.__getitem__ = saved
        triton.runtime.driver._active = None


def _cases():
    """(name, dtype, fn): each fn drives one launcher the way the library calls it."""
    import torch

    from .ops.char_cnn import triton_impl as cnn
    from .ops.highway import triton_impl as hwy
    from .ops.lstm_proj import triton_impl as lstm

    original = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]

    def char_cnn(filters, dtype, N=48, E=16, tf32=False):
        def run():
            if tf32:  # a GPU's default for fp32 (cudnn.allow_tf32): CPU tensors would always pick exact fp32
                with mock.patch.object(cnn, "_ieee", lambda emb: False):
                    return char_cnn(filters, dtype, N, E)()
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, 262, (N, 50), generator=g)
            emb = torch.randn(262, E, dtype=dtype)
            ws = [torch.randn(n, E, w, dtype=dtype) for w, n in filters]
            bs = [torch.randn(n, dtype=dtype) for _, n in filters]
            feats, argmax = cnn.char_cnn_conv_max_fwd(ids, emb, ws, bs, "relu")
            # The forward only compiled: give backward a valid argmax of its own.
            argmax = torch.zeros_like(argmax)
            cnn.char_cnn_conv_max_bwd(torch.randn(feats.shape, dtype=dtype), ids, emb, ws, feats.zero_(), argmax, "tanh")

        return run

    def lstm_proj(C, P, dtype, B=5, T=4, I=16, reverse=False):
        def run():
            x = torch.randn(B, T, I, dtype=dtype)
            lengths = torch.tensor([T, 1, T - 1, 2, T][:B])
            w_in, w_rec = torch.randn(4 * C, I, dtype=dtype), torch.randn(4 * C, P, dtype=dtype)
            bias, w_proj = torch.randn(4 * C, dtype=dtype), torch.randn(P, C, dtype=dtype)
            h0, c0 = torch.zeros(B, P, dtype=dtype), torch.zeros(B, C, dtype=dtype)
            for save in (False, True):
                out = lstm.lstm_proj_fwd(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, 3.0, 3.0, reverse, save)
            lstm.lstm_proj_bwd(torch.randn(B, T, P, dtype=dtype), torch.zeros_like(h0), torch.zeros_like(c0), x, lengths,
                               w_in, w_rec, w_proj, h0, c0, *out[3:], 3.0, 3.0, reverse)

        return run

    def highway(dtype, D=2048, M=100, precision=None):
        def run():
            if precision is not None:  # a GPU's choice for fp32: CPU tensors would always pick "ieee"
                with mock.patch.object(hwy, "highway_precision", lambda x: precision):
                    return highway(dtype, D, M)()
            x, w, b = torch.randn(M, D, dtype=dtype), torch.randn(2 * D, D, dtype=dtype), torch.randn(2 * D, dtype=dtype)
            for save in (False, True):
                hwy.highway_fwd(x, w, b, save_z=save)

        return run

    f32, bf16, f16, f64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
    cases = [(f"char_cnn original {d}", d, char_cnn(original, d)) for d in (f32, bf16)]
    cases.append(("char_cnn original fp32 tf32", f32, char_cnn(original, f32, tf32=True)))
    cases += [(f"char_cnn widths 1,7 {d}", d, char_cnn([[1, 4], [7, 17]], d)) for d in (f16, f64)]
    # The highway at the 'original' width: fp32 as a GPU runs it (3xTF32 by default, TF32 under
    # allow_tf32), and the half and double types.
    cases += [(f"highway fp32 {p}", f32, highway(f32, precision=p)) for p in ("tf32x3", "tf32")]
    cases += [(f"highway {d}", d, highway(d)) for d in (bf16, f16, f64)]
    # In-kernel time loop: the largest on-chip size (64 x 64) and a small ragged one; per-step kernels:
    # 'tiny' (C 256) and 'original' (C 4096: the 1024-wide blocks).
    for C, P in ((64, 64), (20, 12), (256, 128), (4096, 512)):
        for d in (f32, bf16) if C * P <= 256 * 128 else (f32,):
            cases.append((f"lstm_proj C{C} P{P} {d}", d, lstm_proj(C, P, d)))
    cases += [(f"lstm_proj C{C} P{P} {d}", d, lstm_proj(C, P, d)) for C, P in ((64, 64), (20, 12)) for d in (f16, f64)]
    return cases


def _resources(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if "REG:" in l)
    fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
    return {"registers": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"])}


def check(archs=(90,)) -> list[KernelReport]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 replaces compilation by interpretation: run this without it")
    import torch

    reports = []
    for arch in archs:
        for case, dtype, run in _cases():
            sink: list = []
            try:
                with compile_only(arch, sink):
                    run()
            except Exception as e:  # a compile error names the kernel in its message
                reports.append(KernelReport("?", arch, case, {}, 0, 0, 0, 0, 0, [f"failed to compile: {type(e).__name__}: {e}"]))
                continue
            seen = set()
            for name, consts, compiled in sink:
                if compiled.hash in seen:
                    continue
                seen.add(compiled.hash)
                res = _resources(compiled.asm["cubin"])
                r = KernelReport(name, arch, case, consts, compiled.metadata.num_warps, res["registers"], res["stack"],
                                 res["local"], compiled.metadata.shared)
                if (r.stack_bytes or r.local_bytes) and dtype != torch.float64:
                    r.problems.append(f"spills: {r.stack_bytes} B stack, {r.local_bytes} B local per thread")
                limit = MAX_SHARED.get(arch)
                if limit is not None and r.shared_bytes > limit:
                    r.problems.append(f"needs {r.shared_bytes} B of shared memory, sm_{arch} has {limit}")
                reports.append(r)
    return reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 80 90 (default 90)")
    ap.add_argument("--json", help="also write the reports here")
    args = ap.parse_args(argv)
    reports = check(tuple(args.arch))
    print(f"{'arch':>4}  {'case':<30} {'kernel':<32} {'warps':>5} {'regs':>4} {'spill':>5} {'smem':>7}  problems")
    for r in reports:
        spill = r.stack_bytes + r.local_bytes
        print(f"{r.arch:>4}  {r.case:<30} {r.kernel:<32} {r.num_warps:>5} {r.registers:>4} {spill:>5} {r.shared_bytes:>7}  "
              f"{'; '.join(r.problems)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in reports], f, indent=1)
    bad = [r for r in reports if r.problems]
    print(f"{len(reports)} compiled kernels, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
