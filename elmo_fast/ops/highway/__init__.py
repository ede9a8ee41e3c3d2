from .function import GPU_HIGHWAY_ENV, HighwayFunction, TritonHighwayFunction, highway, highway_variant
from .reference import highway_gate_ref, highway_ref

__all__ = ["GPU_HIGHWAY_ENV", "HighwayFunction", "TritonHighwayFunction", "highway", "highway_gate_ref", "highway_variant", "highway_ref"]
