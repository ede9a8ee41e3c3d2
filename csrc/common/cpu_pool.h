// A cache of large CPU buffers for the LSTM's forward cache and backward gradients.
//
// Why: on this VM class a fresh allocation above glibc's mmap threshold (32 MB at most) is
// page-faulted in on every call at ~1.2 GB/s: at 'small' 64 x 40 a zeroed [T, B, 4C] buffer (44 MB)
// cost 36 ms, against 47-70 ms for a weight-gradient GEMM over the same rows, and training makes
// five such buffers per direction per step. Blocks here are 2 MB aligned and advised as huge pages
// (4 KB page faults become 2 MB ones), and a freed block goes back to the cache rather than to the
// OS, so the next step's buffers are already mapped.
//
// Tensors are ordinary CPU tensors whose storage returns its block here when the last reference
// dies (from any thread). Only blocks of at least kMinBytes are pooled; the cache holds at most
// `limit` bytes of free blocks (ELMO_FAST_CPU_POOL_MB, default 1024; 0 disables the pool), a block
// that no request took within the last 256 pooled requests goes back to the OS (so the cache holds
// the sizes in use, not every size seen), and cpu_pool_clear() hands them all back.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace elmo_fast {
namespace cpu_pool {

constexpr int64_t kMinBytes = 4 << 20;

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

inline at::Tensor zeros(at::IntArrayRef sizes, const at::TensorOptions& opts) { return empty(sizes, opts).zero_(); }

}  // namespace cpu_pool
}  // namespace elmo_fast
