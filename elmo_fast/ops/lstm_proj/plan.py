"""Which LSTM kernel variant runs, decided in one place: `plan_lstm_proj` returns a `LstmPlan`
that `lstm_proj`, `lstm_proj_pair` and `modules/lstm.py:run_layer` follow, and that
`python -m elmo_fast.info --plan` prints. The kernels themselves take no decisions of their own
except on empty inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ... import _ext
from ..._backend import BACKENDS, choose_backend, gpu_autocast_dtype

#: The Triton in-kernel time loop is used when padded C x P is at most this (the 4 gate blocks of
#: w_rec and w_proj, 5 x C x P values, then stay on chip); larger models use the per-step kernels
#: with cuBLAS GEMMs.
TIME_LOOP_MAX_WEIGHTS = 64 * 64

#: Both directions of a layer run concurrently only up to this recurrent weight size (see `_pair`).
PAIR_MAX_RECURRENT_WEIGHTS = 1 << 20

_log = logging.getLogger("elmo_fast.plan")


@dataclass(frozen=True)
class LstmPlan:
    """backend: 'torch' | 'cpp' | 'triton' | 'cuda'. kernel: what runs the time loop. packed: the
    dtype of the cached packed weight copies the C++ GEMMs take (None: the weights as they are).
    pair: both directions of a layer at once, one thread each. autocast: the dtype the GPU kernels
    run in under autocast (inputs and weights cast to it). gemm_dtype: the CPU bf16-GEMM option."""

    backend: str
    kernel: str
    packed: torch.dtype | None = None
    pair: bool = False
    autocast: torch.dtype | None = None
    gemm_dtype: torch.dtype | None = None

    def describe(self) -> str:
        parts = [f"backend={self.backend}", f"kernel={self.kernel}"]
        if self.packed is not None:
            parts.append(f"packed weights={str(self.packed).removeprefix('torch.')}")
        parts.append("directions=pair (one thread each)" if self.pair else "directions=one after the other")
        if self.autocast is not None:
            parts.append(f"autocast={str(self.autocast).removeprefix('torch.')}")
        return ", ".join(parts)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def uses_time_loop(hidden: int, proj: int, dtype: torch.dtype) -> bool:
    """The Triton variant: one persistent kernel over all steps, or a launch per step. fp64
    (gradcheck, reference runs) takes the per-step path, whose pointwise kernels compute in fp64;
    the time loop computes in fp32."""
    return _pow2(hidden) * _pow2(proj) <= TIME_LOOP_MAX_WEIGHTS and dtype != torch.float64


def _pair(device: torch.device, dtype: torch.dtype, gemm_dtype, w_rec_numel: int) -> bool:
    """Whether both directions of a layer should run concurrently (`lstm_proj_pair`): the cpp backend
    on fp32/fp64 CPU tensors (bf16 GEMMs with fp32 ones), exactly 2 intra-op threads (the directions
    take one thread each; with more threads a per-step split of each GEMM can use them all), and a
    recurrent weight of at most 1M values. Measured on 2 threads of an Intel Xeon, biLSTM forward /
    forward+backward against splitting every per-step GEMM over both threads: 'tiny' (w_rec 1024 x
    128) 1.45x / 1.33x, 'small' (4096 x 128) 0.99-1.14x / 1.06-1.07x, 'original' (16384 x 512: big
    per-step GEMMs that split well) 0.95-0.97x / 0.90-1.04x."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    if gemm_dtype is not None and (gemm_dtype != torch.bfloat16 or dtype != torch.float32):
        return False
    return w_rec_numel <= PAIR_MAX_RECURRENT_WEIGHTS and torch.get_num_threads() == 2 and _ext.cpp_ext() is not None


def plan_lstm_proj(device: torch.device, dtype: torch.dtype, w_rec_shape, w_proj_shape, backend: str | None = None,
                   gemm_dtype: torch.dtype | None = None, *, directions: int = 1) -> LstmPlan:
    """The plan for an LSTM layer's direction(s) on `device` with inputs and weights of `dtype`
    (`w_rec` `[4C, P]`, `w_proj` `[P, C]`); `directions=2` asks whether a layer's two directions
    run as a pair. Raises what `choose_backend` raises for a backend that cannot run."""
    chosen = choose_backend(device, BACKENDS, backend)
    autocast = gpu_autocast_dtype(device, chosen, dtype) if torch.is_autocast_enabled(device.type) else None
    run_dtype = autocast or dtype
    C, P = w_rec_shape[0] // 4, w_proj_shape[0]
    packed = None
    if chosen == "torch":
        kernel = "eager (lstm_proj_ref)"
    elif chosen == "cpp":
        packed = gemm_dtype if gemm_dtype is not None else (torch.float32 if run_dtype == torch.float32 else None)
        kernel = "lstm_proj_fwd_packed" if packed is not None else "lstm_proj_fwd"
    elif chosen == "triton":
        kernel = "triton time loop" if uses_time_loop(C, P, run_dtype) else "triton per-step"
    else:
        kernel = "cuda"
    pair = (directions == 2 and chosen == "cpp" and autocast is None
            and _pair(device, dtype, gemm_dtype, w_rec_shape[0] * w_rec_shape[1]))
    if pair:
        kernel = "lstm_proj_fwd_pair"
    plan = LstmPlan(chosen, kernel, packed, pair, autocast, gemm_dtype)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("lstm_proj plan: %s", plan.describe())
    return plan
