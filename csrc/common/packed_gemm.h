// fp32 GEMM against a weight packed once. The LSTM's per-step GEMMs (y[M, N] (+)= x[M, K] @ B[K, N]
// with M = active rows <= batch, K x N a weight of up to 16384 x 512) and the input map of a chunk of
// steps (M = steps x batch), where it also beat MKL (96 vs 81 GFLOP/s at 1024 x 128 x 4096); and, as
// the op `packed_linear` (gemm_ops.cpp), the char CNN's highway and projection GEMMs at inference.
//
// Why not at::mm: at M = 32, MKL's GEMM with the 'original' recurrent weight (512 x 16384, 32 MB)
// has a fixed cost of ~7 ms per call that does not shrink with M (measured: 8.9 ms at M = 8, 16.2 ms
// at M = 32, i.e. 15-33 GFLOP/s against ~90 at large M) -- by its size, a repack of the weight. The
// recurrence calls that GEMM once per time step with the same weight, so we pack it once (the Python
// wrapper caches it per weight version) and stream it from memory once per step; the register-tiled
// kernel below then runs at the FMA throughput.
//
// Packed layout: [ceil(N / kNR)][K][kNR], zero-padded columns: the kNR = 16 columns a micro-kernel
// needs for one k are 64 contiguous bytes, and a panel's K x 16 block is read sequentially.
//
// Two micro-kernels over the same weight layout, chosen at run time: AVX2 (6 rows x 1 panel, 12 ymm
// accumulators) and AVX-512 (8 rows x 3 panels, 24 zmm accumulators), built with a target
// attribute so the library itself stays x86-64-v3. On an Intel Sapphire Rapids core the AVX2 kernel
// peaked at 88 GFLOP/s, half of MKL's AVX-512 sgemm (162) at the highway's shape; AVX-512 cores with
// one 512-bit FMA pipe (AMD Zen 4) run both at about the same rate. The AVX-512 kernel started as
// 6 x 2 (12 of 32 zmm); 8 x 3 and prefetching the next panels into L2 rather than L1 took one
// Xeon core from 129-169 to 140-200 GFLOP/s (MKL: 123-205) over the LSTM's and the highway's shapes.
#pragma once

#include "common/cpu_pool.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace elmo_fast {
namespace gemm {

constexpr int64_t kNR = 16;   // columns per panel: two AVX2 vectors
constexpr int kMR = 6;        // rows per micro-tile: 6 x 2 accumulators + 2 weight vectors + 1 broadcast = 15 of 16 ymm
constexpr int kMRWide = 8;    // the AVX-512 kernel's rows per micro-tile
constexpr int64_t kNPWide = 3;  // and panels per micro-tile
constexpr int64_t kKC = 256;  // k per block: a panel's 256 x 16 slice (16 KB) stays in L1 while every row block reads it
constexpr int64_t kKCWide = 128;  // the AVX-512 kernel reads three panels: 128 x 48 (24 KB); 192 and 256 measured no better

// b [K, N] (fp32, any strides: a Linear weight is passed as w.t()) -> packed [ceil(N / kNR), K, kNR].
inline at::Tensor pack(const at::Tensor& b) {
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kFloat && b.device().is_cpu(),
              "gemm_pack: expects a float32 CPU matrix [K, N], got ", b.scalar_type(), " ", b.sizes(), " on ", b.device());
  const int64_t K = b.size(0), N = b.size(1), panels = (N + kNR - 1) / kNR;
  const int64_t sk = b.stride(0), sn = b.stride(1);
  auto out = at::empty({panels, K, kNR}, b.options());
  const float* src = b.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // For a transposed weight (sn = K) the 16 reads of one k walk 16 rows in step, one cache line
  // each, which later k's reuse: a streaming copy rather than a strided gather.
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kNR, nc = std::min(kNR, N - n0);
      for (int64_t k = 0; k < K; ++k) {
        float* d = dst + (p * K + k) * kNR;
        const float* s = src + k * sk + n0 * sn;
        for (int64_t l = 0; l < nc; ++l) d[l] = s[l * sn];
        for (int64_t l = nc; l < kNR; ++l) d[l] = 0.0f;
      }
    }
  });
  return out;
}

typedef float V8 __attribute__((vector_size(32)));

inline V8 load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// c[MR, ncols] (+)= a[MR, kc] @ b[kc, 16] (b a panel slice, row stride kNR). One k of a panel is
// one 64-byte line; `next` (the same slice of the next panel) is prefetched a line per k, so memory
// streams the next panel while this one is computed from L1 (without it the DRAM reads of each
// panel and its FMAs did not overlap: 62 instead of ~90 GFLOP/s at M = 32).
// `a` is the tile packed k-major (a[k * MR + r], see pack_a): the MR values of one k are adjacent.
template <int MR>
inline void micro(const float* __restrict a, const float* __restrict b, const float* next, int64_t kc,
                  float* __restrict c, int64_t ldc, int64_t ncols, bool add) {
  V8 lo[MR], hi[MR];
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = V8{};
  for (int64_t k = 0; k < kc; ++k) {
    __builtin_prefetch(next + k * kNR);
    const V8 b0 = load8(b + k * kNR), b1 = load8(b + k * kNR + 8);
    for (int r = 0; r < MR; ++r) {
      const V8 av = V8{} + a[k * MR + r];
      lo[r] += av * b0;
      hi[r] += av * b1;
    }
  }
  // Only copies of the accumulators have their address taken (the partial-panel store): taking
  // lo/hi's own addresses kept them in memory, zeroed with a `rep stos` on every call (8 % of the
  // time at K = 128).
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    if (ncols == kNR) {
      const V8 l = add ? lo[r] + load8(cr) : lo[r], h = add ? hi[r] + load8(cr + 8) : hi[r];
      std::memcpy(cr, &l, sizeof l);
      std::memcpy(cr + 8, &h, sizeof h);
    } else {  // never touch y past its ncols columns (the last row may end the buffer)
      const V8 l = lo[r], h = hi[r];
      float tmp[kNR];
      std::memcpy(tmp, &l, sizeof l);
      std::memcpy(tmp + 8, &h, sizeof h);
      for (int64_t j = 0; j < ncols; ++j) cr[j] = add ? cr[j] + tmp[j] : tmp[j];
    }
  }
}

inline void micro_rows(int rows, const float* a, const float* b, const float* next, int64_t kc, float* c, int64_t ldc,
                       int64_t ncols, bool add) {
  switch (rows) {
    case 6: return micro<6>(a, b, next, kc, c, ldc, ncols, add);
    case 5: return micro<5>(a, b, next, kc, c, ldc, ncols, add);
    case 4: return micro<4>(a, b, next, kc, c, ldc, ncols, add);
    case 3: return micro<3>(a, b, next, kc, c, ldc, ncols, add);
    case 2: return micro<2>(a, b, next, kc, c, ldc, ncols, add);
    default: return micro<1>(a, b, next, kc, c, ldc, ncols, add);
  }
}

#if defined(__x86_64__)
#define ELMO_FAST_GEMM_AVX512 1
typedef float V16 __attribute__((vector_size(64)));

// c[MR, ncols] (+)= a[MR, kc] @ [b | b + pstride | ...][kc, NP * 16]: NP (1 to 3) adjacent panels
// at once, so each broadcast of a feeds NP zmm FMAs. `next` is the first panel after these
// (prefetched). At 8 x 3: 24 accumulators + 3 weight vectors + 1 broadcast of 32 zmm, and 11 loads
// per 24 FMAs where 6 x 2 needed 8 per 12.
template <int MR, int NP>
__attribute__((target("avx512f,avx2,fma"))) void micro512(const float* __restrict a, const float* __restrict b,
                                                          int64_t pstride, const float* next, int64_t kc,
                                                          float* __restrict c, int64_t ldc, int64_t ncols, bool add) {
  V16 acc[NP][MR];
  for (int q = 0; q < NP; ++q)
    for (int r = 0; r < MR; ++r) acc[q][r] = V16{};
  for (int64_t k = 0; k < kc; ++k) {
    V16 bv[NP];
    for (int q = 0; q < NP; ++q) {
      // Into L2 only: this k-block of three panels is 24 KB, half of L1, and every row tile of
      // the block reuses it; prefetching the next one into L1 as well evicted it (149 vs 128
      // GFLOP/s at 640 x 512 x 16384 on one Xeon core).
      __builtin_prefetch(next + q * pstride + k * kNR, 0, 2);
      std::memcpy(&bv[q], b + q * pstride + k * kNR, sizeof(V16));
    }
    for (int r = 0; r < MR; ++r) {
      const V16 av = V16{} + a[k * MR + r];
      for (int q = 0; q < NP; ++q) acc[q][r] += av * bv[q];
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int q = 0; q < NP; ++q) {
      float* cr = c + r * ldc + q * kNR;
      const int64_t nq = std::min<int64_t>(kNR, ncols - q * kNR);
      V16 v = acc[q][r];
      if (nq == kNR) {
        if (add) {
          V16 old;
          std::memcpy(&old, cr, sizeof old);
          v += old;
        }
        std::memcpy(cr, &v, sizeof v);
      } else {  // never touch y past its ncols columns (the last row may end the buffer)
        float tmp[kNR];
        std::memcpy(tmp, &v, sizeof v);
        for (int64_t j = 0; j < nq; ++j) cr[j] = add ? cr[j] + tmp[j] : tmp[j];
      }
    }
  }
}

template <int NP>
void micro512_rows(int rows, const float* a, const float* b, int64_t pstride, const float* next, int64_t kc, float* c,
                   int64_t ldc, int64_t ncols, bool add) {
  switch (rows) {
    case 8: return micro512<8, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 7: return micro512<7, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 6: return micro512<6, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 5: return micro512<5, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 4: return micro512<4, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 3: return micro512<3, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 2: return micro512<2, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
    default: return micro512<1, NP>(a, b, pstride, next, kc, c, ldc, ncols, add);
  }
}

inline void micro512_tile(int rows, int np, const float* a, const float* b, int64_t pstride, const float* next,
                          int64_t kc, float* c, int64_t ldc, int64_t ncols, bool add) {
  switch (np) {
    case 3: return micro512_rows<3>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
    case 2: return micro512_rows<2>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
    default: return micro512_rows<1>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
  }
}
#endif

// Which micro-kernel gemm() uses: "avx512" where the CPU has AVX-512F, else "avx2". The environment
// variable ELMO_FAST_CPU_ISA=avx2 forces the AVX2 one; `isa()`/`set_isa()` (the op gemm_isa) let
// tests run both on one machine.
inline bool cpu_has_avx512() {
#ifdef ELMO_FAST_GEMM_AVX512
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

inline std::atomic<int>& isa_flag() {  // 1 = AVX-512
  static std::atomic<int> flag([] {
    const char* env = std::getenv("ELMO_FAST_CPU_ISA");
    if (env != nullptr && std::string(env) == "avx2") return 0;
    return cpu_has_avx512() ? 1 : 0;
  }());
  return flag;
}

inline std::string isa() { return isa_flag().load() ? "avx512" : "avx2"; }

inline void set_isa(const std::string& name) {
  TORCH_CHECK(name == "avx2" || name == "avx512", "gemm_isa: expected 'avx2' or 'avx512', got '", name, "'");
  TORCH_CHECK(name == "avx2" || cpu_has_avx512(), "gemm_isa: this CPU has no AVX-512F; only 'avx2' is available");
  isa_flag().store(name == "avx512" ? 1 : 0);
}

// x[M, K] (leading dimension ldx) -> ap[M * K], per k-block (k0, kc) and kMR-row tile (m0, r rows):
// x[m0 + i, k0 + k] at ap[k0 * M + m0 * kc + k * r + i]. The micro-kernel then reads its MR values
// of one k from one place instead of MR rows K floats apart (strided broadcasts from L2 held the
// 'small' highway GEMM at ~73 % of an AVX2 core's FMA peak).
inline void pack_a(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t kcb, int64_t mr, float* ap) {
  const int64_t tiles = (M + mr - 1) / mr, kblocks = (K + kcb - 1) / kcb;
  at::parallel_for(0, tiles * kblocks, std::max<int64_t>(1, 16384 / (mr * kcb)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k0 = (t / tiles) * kcb, m0 = (t % tiles) * mr;
      const int64_t kc = std::min(kcb, K - k0), r = std::min<int64_t>(mr, M - m0);
      float* dst = ap + k0 * M + m0 * kc;
      for (int64_t i = 0; i < r; ++i) {
        const float* src = x + (m0 + i) * ldx + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * r + i] = src[k];
      }
    }
  });
}

// y[M, N] = x[M, K] @ B (+ y when accumulate), B given packed by pack(). x and y row-major with
// leading dimensions ldx, ldy. Tasks are (row block, panel group) pairs in row-block-major order,
// split into contiguous ranges: a thread keeps its row blocks in its own L2 and streams the panels
// in order; with a single row block (the per-step GEMMs) that is a split over panels.
//
// Row blocks: a task walks every k-block of its rows, so what it reuses across panel groups is its
// packed x, rows x K. Two choices, by the memory traffic each costs: blocks whose x fits in L2
// (kRowBlockBytes), each of which streams all of B once; or one block, which streams B once and
// its x once per panel group. Measured: the highway's 640 x 2048 x 4096 ran at 139 GFLOP/s with
// L2-sized blocks against 117 with x streaming from L3 per panel pair (AVX-512 kernel, one Sapphire
// Rapids core), and a 4500-row input map at 82+ against 67 (Zen 3); backward's 64 x 16384 x 512
// (K = 4C) must stay one block: 6-row blocks would stream its 32 MB weight 11 times per step.
constexpr int64_t kRowBlockBytes = 512 << 10;

inline int64_t row_block(int64_t M, int64_t K, int64_t N, int64_t group_cols, int64_t mr) {
  const double a_bytes = 4.0 * M * K, b_bytes = 4.0 * K * N;
  const int64_t fit_rows = std::max<int64_t>(mr, kRowBlockBytes / (std::max<int64_t>(1, K) * 4) / mr * mr);
  const double blocks = static_cast<double>((M + fit_rows - 1) / fit_rows);
  const double groups = static_cast<double>((N + group_cols - 1) / group_cols);
  const double fitting = blocks * b_bytes + a_bytes, single = b_bytes + groups * a_bytes;
  return fitting <= single ? fit_rows : std::max<int64_t>(M, 1);
}

inline void gemm(const float* x, int64_t M, int64_t K, int64_t ldx, const at::Tensor& packed, int64_t N, float* y,
                 int64_t ldy, bool accumulate) {
  TORCH_CHECK(packed.dim() == 3 && packed.size(1) == K && packed.size(2) == kNR && packed.size(0) == (N + kNR - 1) / kNR,
              "packed_gemm: packed weight [", packed.sizes(), "] does not match K = ", K, ", N = ", N);
  if (M <= 0) return;
  const float* bp = packed.data_ptr<float>();
  const int64_t panels = (N + kNR - 1) / kNR;
  const bool wide = isa_flag().load() != 0;
  const int64_t kcb = wide ? kKCWide : kKC, mr = wide ? kMRWide : kMR;
  // A task covers `step` panels (kNPWide for the AVX-512 kernel, which computes them at once).
  const int64_t step = wide ? kNPWide : 1, groups = (panels + step - 1) / step;
  const int64_t mc_max = row_block(M, K, N, step * kNR, mr);
  const int64_t blocks = (M + mc_max - 1) / mc_max;
  // Equal blocks (1024 rows as 2 x 516 rather than 1020 + 4), each a whole number of mr-row tiles,
  // so a block's tiles are the tiles pack_a laid out.
  const int64_t mc = ((M + blocks - 1) / blocks + mr - 1) / mr * mr;
  // From cpu_pool: a training step's input map packs all T x B rows of x (5.5 MB at 'original'
  // 64 x 40), which a fresh allocation would page-fault in on every call.
  at::Tensor a_buf = cpu_pool::empty({M * K}, packed.options());
  float* ap = a_buf.data_ptr<float>();
  pack_a(x, M, K, ldx, kcb, mr, ap);
  // ~64K multiply-adds per task at least, so small steps stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, std::min(M, mc) * K * kNR * step));
  at::parallel_for(0, blocks * groups, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t mb = (t / groups) * mc, rows = std::min(mc, M - mb), p = (t % groups) * step;
      const int64_t np = std::min(step, panels - p), ncols = std::min(np * kNR, N - p * kNR);
      if (rows <= 0) continue;  // rounding mc up to whole tiles can leave the last block empty
      for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kc = std::min(kcb, K - k0);
        const bool add = accumulate || k0 > 0;
        const float* b = bp + (p * K + k0) * kNR;
        // Prefetch addresses past the buffer's end (last panel) are harmless: prefetches never fault.
        const float* next = b + np * K * kNR;
        for (int64_t m0 = mb; m0 < mb + rows; m0 += mr) {
          const int r = static_cast<int>(std::min<int64_t>(mr, mb + rows - m0));
          const float* at = ap + k0 * M + m0 * kc;
          float* ct = y + m0 * ldy + p * kNR;
#ifdef ELMO_FAST_GEMM_AVX512
          if (wide) {
            micro512_tile(r, static_cast<int>(np), at, b, K * kNR, next, kc, ct, ldy, ncols, add);
            continue;
          }
#endif
          micro_rows(r, at, b, next, kc, ct, ldy, ncols, add);
        }
      }
    }
  });
}

}  // namespace gemm
}  // namespace elmo_fast
