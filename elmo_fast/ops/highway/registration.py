"""Shape-only ("fake") kernels of the highway gate ops (schemas: csrc/highway/highway.cpp), for
torch.compile and opcheck. Their autograd is `HighwayFunction` (function.py). Imported by
elmo_fast.ops.registration once the C++ extension has loaded."""

from __future__ import annotations

import torch


@torch.library.register_fake("elmo_fast::highway_gate")
def _gate_fake(z, bias, x):
    return torch.empty_like(x)


@torch.library.register_fake("elmo_fast::highway_gate_backward")
def _gate_backward_fake(dy, z, bias, x):
    return torch.empty_like(z), torch.empty_like(x)
