from .function import check_gemm_dtype, gemm_packed_bf16_t, gemm_packed_t, linear

__all__ = ["check_gemm_dtype", "gemm_packed_bf16_t", "gemm_packed_t", "linear"]
