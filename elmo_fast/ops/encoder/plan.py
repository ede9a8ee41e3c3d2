"""Which kernel variants the character encoder runs, decided in one place: `plan_char_cnn`
returns an `EncoderPlan` that `char_cnn` follows and `python -m elmo_fast.info --plan` prints."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..._backend import BACKENDS, choose_backend, gpu_autocast_dtype
from ..highway import highway_variant

_log = logging.getLogger("elmo_fast.plan")


@dataclass(frozen=True)
class EncoderPlan:
    """backend: of the conv-max op. autocast: the dtype the GPU kernels run in under autocast (the
    whole encoder cast to it). cache: the word-vector cache serves the call (inference). dedup: one
    run per distinct token. packed: the dtype of the packed highway/projection weight copies (CPU
    inference), None: the weights as they are. highway: `highway_variant`'s choice. gemm_dtype: the
    CPU bf16-GEMM option. deterministic_backward: the conv-max backward takes the eager path (GPU
    backends under torch.use_deterministic_algorithms; decided again when backward runs)."""

    backend: str
    autocast: torch.dtype | None = None
    cache: bool = False
    dedup: bool = True
    packed: torch.dtype | None = None
    highway: str = "eager"
    gemm_dtype: torch.dtype | None = None
    deterministic_backward: bool = False

    def describe(self) -> str:
        def name(d):
            return str(d).removeprefix("torch.")

        parts = [f"backend={self.backend}", f"highway={self.highway}"]
        if self.packed is not None:
            parts.append(f"packed weights={name(self.packed)}")
        if self.autocast is not None:
            parts.append(f"autocast={name(self.autocast)}")
        parts.append("word cache" if self.cache else ("dedup" if self.dedup else "every token"))
        if self.deterministic_backward:
            parts.append("deterministic (eager) conv-max backward")
        return ", ".join(parts)


def plan_char_cnn(device: torch.device, dtype: torch.dtype, backend: str | None = None, *, inference: bool,
                  gemm_dtype: torch.dtype | None = None, dedup: bool | None = None, cache: bool = False) -> EncoderPlan:
    """The plan for the encoder with weights of `dtype` on `device`; `inference`: no gradient is
    needed; `cache`: a word-vector cache was passed. Raises what `choose_backend` raises."""
    chosen = choose_backend(device, BACKENDS, backend)
    autocast = gpu_autocast_dtype(device, chosen, dtype)
    run_dtype = autocast or dtype
    use_cache = cache and inference
    if use_cache:
        dedup = False  # the cache finds the distinct tokens itself
    elif dedup is None:
        dedup = chosen != "torch"
    # CPU fp32 inference runs the highway and projection GEMMs against cached packed weights: the
    # weights stay the same across calls there, and at the highway's shape the packed GEMM ran at
    # 70-77 GFLOP/s on 1 thread against 51-64 for MKL's sgemm, which re-packs the 32 MB 'small'
    # weight inside every call. gemm_dtype=torch.bfloat16 takes bf16-packed copies of the same
    # weights (vdpbf16ps micro-kernels).
    packed = (gemm_dtype or torch.float32) if inference and chosen == "cpp" and run_dtype == torch.float32 else None
    # off the cpp backend the bf16-GEMM option runs eager GEMMs on bf16 weight copies (fp32 input)
    same_dtype = gemm_dtype is None or chosen == "cpp"
    plan = EncoderPlan(
        backend=chosen,
        autocast=autocast,
        cache=use_cache,
        dedup=dedup,
        packed=packed,
        highway=highway_variant(chosen, device, packed, same_dtype),
        gemm_dtype=gemm_dtype,
        deterministic_backward=(not inference and chosen in ("cuda", "triton") and torch.are_deterministic_algorithms_enabled()),
    )
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("char_cnn plan: %s", plan.describe())
    return plan
