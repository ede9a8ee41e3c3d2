// Device math shared by the CUDA kernels (char_cnn_cuda.cu, lstm_proj_kernels.cu): the
// accumulation type of each storage type and the pointwise functions, in fp32 for fp32/fp16/bf16
// (fast __expf), in fp64 for fp64, as the CPU kernels compute.
#pragma once

#include <cuda_runtime.h>

namespace elmo_fast {
namespace cuda_math {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}

__device__ __forceinline__ float sigmoid_(float v) { return 1.0f / (1.0f + __expf(-v)); }
__device__ __forceinline__ double sigmoid_(double v) { return 1.0 / (1.0 + exp(-v)); }
// Not tanhf: under --use_fast_math (setup.py) it compiles to tanh.approx.f32, ~5e-4 relative
// error; 1 - 2 / (1 + e^2v) through __expf is good to ~1e-7 and saturates to +-1 cleanly.
__device__ __forceinline__ float tanh_(float v) { return 1.0f - 2.0f / (1.0f + __expf(2.0f * v)); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

}  // namespace cuda_math
}  // namespace elmo_fast
