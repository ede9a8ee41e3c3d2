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
//
// bf16 weights (pack_bf16, the gemm_dtype=torch.bfloat16 option): the same panels with k in pairs,
// [ceil(N / kNR)][ceil(K / 2)][kNR][2] bf16, so one k-pair of a panel is again 64 bytes, and
// vdpbf16ps (avx512_bf16) multiplies a 32-bit broadcast of x's pair (x[k], x[k+1]) with it into 16
// fp32 sums: twice the multiply-adds per instruction and half the weight bytes per step of fp32.
// x stays fp32 in memory and is rounded to bf16 (nearest even) as its tile is packed; the result is
// fp32. Where the CPU has no avx512_bf16 the same packed weights run through fp32 FMAs (each bf16 is
// an fp32 with 16 zero bits, so products are exact and only the summation order differs): the same
// numbers on every CPU, at about fp32's speed.
#pragma once

#include "common/cpu_pool.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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

// cr[0, ncols) (+)= [l | h]. Only these copies of the accumulators have their address taken (the
// partial-panel store): taking the kernels' own lo/hi addresses kept them in memory, zeroed with a
// `rep stos` on every call (8 % of the time at K = 128).
inline void store16(float* cr, V8 l, V8 h, int64_t ncols, bool add) {
  if (ncols == kNR) {
    if (add) {
      l += load8(cr);
      h += load8(cr + 8);
    }
    std::memcpy(cr, &l, sizeof l);
    std::memcpy(cr + 8, &h, sizeof h);
  } else {  // never touch y past its ncols columns (the last row may end the buffer)
    float tmp[kNR];
    std::memcpy(tmp, &l, sizeof l);
    std::memcpy(tmp + 8, &h, sizeof h);
    for (int64_t j = 0; j < ncols; ++j) cr[j] = add ? cr[j] + tmp[j] : tmp[j];
  }
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
  for (int r = 0; r < MR; ++r) store16(c + r * ldc, lo[r], hi[r], ncols, add);
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

// Which micro-kernels gemm() uses, as a level: 2 "avx512bf16" (AVX-512 fp32 kernel, vdpbf16ps for bf16
// weights), 1 "avx512" (bf16 weights through fp32 FMAs), 0 "avx2" (both with the AVX2 kernels). The
// default is the best the CPU has; the environment variable ELMO_FAST_CPU_ISA (avx2 | avx512 |
// avx512bf16) caps it, and `isa()`/`set_isa()` (the op gemm_isa) let tests run every variant on one
// machine.
enum IsaLevel : int { kAvx2 = 0, kAvx512 = 1, kAvx512Bf16 = 2 };

inline bool cpu_has_avx512() {
#ifdef ELMO_FAST_GEMM_AVX512
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// vdpbf16ps also needs AVX-512BW/VL for the conversions and masked stores around it.
inline bool cpu_has_avx512_bf16() {
#ifdef ELMO_FAST_GEMM_AVX512
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

inline int max_isa_level() { return cpu_has_avx512_bf16() ? kAvx512Bf16 : cpu_has_avx512() ? kAvx512 : kAvx2; }

inline int isa_level(const std::string& name) {
  if (name == "avx2") return kAvx2;
  if (name == "avx512") return kAvx512;
  if (name == "avx512bf16") return kAvx512Bf16;
  return -1;
}

inline std::atomic<int>& isa_flag() {
  static std::atomic<int> flag([] {
    const char* env = std::getenv("ELMO_FAST_CPU_ISA");
    const int wanted = env != nullptr ? isa_level(env) : -1;
    return wanted >= 0 ? std::min(wanted, max_isa_level()) : max_isa_level();
  }());
  return flag;
}

inline std::string isa() {
  switch (isa_flag().load()) {
    case kAvx512Bf16: return "avx512bf16";
    case kAvx512: return "avx512";
    default: return "avx2";
  }
}

inline void set_isa(const std::string& name) {
  const int level = isa_level(name);
  TORCH_CHECK(level >= 0, "gemm_isa: expected 'avx2' or 'avx512' or 'avx512bf16', got '", name, "'");
  TORCH_CHECK(level <= max_isa_level(), "gemm_isa: this CPU has no ",
              level == kAvx512Bf16 ? "avx512_bf16 (with AVX-512F/BW/VL)" : "AVX-512F", "; available: up to '",
              max_isa_level() == kAvx512 ? "avx512" : "avx2", "'");
  isa_flag().store(level);
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

// K in the kernel's k-units (k-pairs for bf16 weights): a unit is 4 bytes of x per row and of B per column.

inline int64_t row_block(int64_t M, int64_t K, int64_t N, int64_t group_cols, int64_t mr) {
  const double a_bytes = 4.0 * M * K, b_bytes = 4.0 * K * N;
  const int64_t fit_rows = std::max<int64_t>(mr, kRowBlockBytes / (std::max<int64_t>(1, K) * 4) / mr * mr);
  const double blocks = static_cast<double>((M + fit_rows - 1) / fit_rows);
  const double groups = static_cast<double>((N + group_cols - 1) / group_cols);
  const double fitting = blocks * b_bytes + a_bytes, single = b_bytes + groups * a_bytes;
  return fitting <= single ? fit_rows : std::max<int64_t>(M, 1);
}

// bf16 weights: b [K, N] (fp32 or bf16, any strides) -> [ceil(N / kNR), ceil(K / 2), 2 * kNR] bf16 where
// [p][u][2 l + j] = b[2 u + j, p * kNR + l] rounded to nearest even, zero past K and N.
// The shape holds ceil(K / 2) only: for odd K it is also the pack of the K + 1 rows with a zero last row.
inline at::Tensor pack_bf16(const at::Tensor& b_) {
  TORCH_CHECK(b_.dim() == 2 && (b_.scalar_type() == at::kFloat || b_.scalar_type() == at::kBFloat16) && b_.device().is_cpu(),
              "gemm_pack_bf16: expects a float32 or bfloat16 CPU matrix [K, N], got ", b_.scalar_type(), " ", b_.sizes(),
              " on ", b_.device());
  const at::Tensor b = b_.scalar_type() == at::kFloat ? b_ : b_.to(at::kFloat);
  const int64_t K = b.size(0), N = b.size(1), panels = (N + kNR - 1) / kNR, Ku = (K + 1) / 2;
  const int64_t sk = b.stride(0), sn = b.stride(1);
  auto out = at::empty({panels, Ku, 2 * kNR}, b.options().dtype(at::kBFloat16));
  const float* src = b.data_ptr<float>();
  c10::BFloat16* dst = out.data_ptr<c10::BFloat16>();
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kNR, nc = std::min(kNR, N - n0);
      for (int64_t u = 0; u < Ku; ++u) {
        c10::BFloat16* d = dst + (p * Ku + u) * 2 * kNR;
        for (int64_t l = 0; l < kNR; ++l)
          for (int64_t j = 0; j < 2; ++j) {
            const int64_t k = 2 * u + j;
            d[2 * l + j] = (l < nc && k < K) ? c10::BFloat16(src[k * sk + (n0 + l) * sn]) : c10::BFloat16(0.0f);
          }
      }
    }
  });
  return out;
}

// fp32 -> bf16, round to nearest even (NaN stays a quiet NaN): what c10::BFloat16 and vcvtneps2bf16
// compute for normal numbers, written so that gcc vectorises it with AVX2.
inline void round_bf16(const float* __restrict src, int64_t n, uint16_t* __restrict dst) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t u;
    std::memcpy(&u, src + j, sizeof u);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    dst[j] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
  }
}

#ifdef ELMO_FAST_GEMM_AVX512
#define ELMO_FAST_TARGET_BF16 "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"

__attribute__((target(ELMO_FAST_TARGET_BF16))) inline void round_bf16_native(const float* src, int64_t n,
                                                                            uint16_t* dst) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
    _mm512_storeu_si512(dst + j, (__m512i)v);
  }
  for (; j < n; j += 16) {
    const __mmask16 mask = n - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - j)) - 1);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + j));
    _mm256_mask_storeu_epi16(dst + j, mask, (__m256i)v);
  }
}
#endif

// x[M, K] -> bf16 pairs for the bf16 micro-kernels, laid out as pack_a's fp32 tiles with a pair in
// place of a k: per k-block (u0, uc pairs) and mr-row tile (m0, r rows), pair u of row i at
// ap[u0 * M + m0 * uc + u * r + i], its low half x[m0 + i, 2 (u0 + u)]. Each row is rounded as whole
// vectors into a buffer first, then its pairs are spread over the tile.
inline void pack_a_bf16(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t kcb, int64_t mr, uint32_t* ap,
                        bool native) {
  const int64_t Ku = (K + 1) / 2, tiles = (M + mr - 1) / mr, kblocks = (Ku + kcb - 1) / kcb;
  at::parallel_for(0, tiles * kblocks, std::max<int64_t>(1, 16384 / (2 * mr * kcb)), [&](int64_t t0, int64_t t1) {
    std::vector<uint32_t> row(kcb);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t u0 = (t / tiles) * kcb, m0 = (t % tiles) * mr;
      const int64_t uc = std::min(kcb, Ku - u0), r = std::min<int64_t>(mr, M - m0);
      const int64_t k0 = 2 * u0, kn = std::min(2 * uc, K - k0);
      uint32_t* dst = ap + u0 * M + m0 * uc;
      for (int64_t i = 0; i < r; ++i) {
        uint16_t* half = reinterpret_cast<uint16_t*>(row.data());
        const float* src = x + (m0 + i) * ldx + k0;
#ifdef ELMO_FAST_GEMM_AVX512
        if (native) {
          round_bf16_native(src, kn, half);
        } else
#endif
        {
          round_bf16(src, kn, half);
        }
        if (kn & 1) half[kn] = 0;  // odd K: the last pair's second half multiplies the weights' zero padding
        for (int64_t u = 0; u < uc; ++u) dst[u * r + i] = row[u];
      }
    }
  });
  (void)native;
}

typedef uint32_t U8 __attribute__((vector_size(32)));
typedef uint32_t U16 __attribute__((vector_size(64)));

inline float bf16_lo(uint32_t pair) {  // the pair's first bf16 (k even) as fp32
  const uint32_t v = pair << 16;
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}

inline float bf16_hi(uint32_t pair) {  // its second (k odd)
  const uint32_t v = pair & 0xffff0000u;
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}

// c[MR, ncols] (+)= a[MR, 2 kc] @ b[2 kc, 16] for bf16 pairs without avx512_bf16: each pair of a
// column of b widened to two fp32 vectors (a shift and a mask), then AVX2 FMAs as in micro().
template <int MR>
inline void micro_bf16_avx2(const uint32_t* __restrict a, const uint32_t* __restrict b, const uint32_t* next, int64_t kc,
                            float* __restrict c, int64_t ldc, int64_t ncols, bool add) {
  V8 lo[MR], hi[MR];
  for (int r = 0; r < MR; ++r) lo[r] = hi[r] = V8{};
  for (int64_t u = 0; u < kc; ++u) {
    __builtin_prefetch(next + u * kNR);
    U8 b0, b1;
    std::memcpy(&b0, b + u * kNR, sizeof b0);
    std::memcpy(&b1, b + u * kNR + 8, sizeof b1);
    const V8 e0 = (V8)(b0 << 16), e1 = (V8)(b1 << 16);
    for (int r = 0; r < MR; ++r) {
      const V8 av = V8{} + bf16_lo(a[u * MR + r]);
      lo[r] += av * e0;
      hi[r] += av * e1;
    }
    const U8 mask = U8{} + 0xffff0000u;
    const V8 o0 = (V8)(b0 & mask), o1 = (V8)(b1 & mask);
    for (int r = 0; r < MR; ++r) {
      const V8 av = V8{} + bf16_hi(a[u * MR + r]);
      lo[r] += av * o0;
      hi[r] += av * o1;
    }
  }
  for (int r = 0; r < MR; ++r) store16(c + r * ldc, lo[r], hi[r], ncols, add);
}

inline void micro_bf16_avx2_rows(int rows, const uint32_t* a, const uint32_t* b, const uint32_t* next, int64_t kc,
                                 float* c, int64_t ldc, int64_t ncols, bool add) {
  switch (rows) {
    case 6: return micro_bf16_avx2<6>(a, b, next, kc, c, ldc, ncols, add);
    case 5: return micro_bf16_avx2<5>(a, b, next, kc, c, ldc, ncols, add);
    case 4: return micro_bf16_avx2<4>(a, b, next, kc, c, ldc, ncols, add);
    case 3: return micro_bf16_avx2<3>(a, b, next, kc, c, ldc, ncols, add);
    case 2: return micro_bf16_avx2<2>(a, b, next, kc, c, ldc, ncols, add);
    default: return micro_bf16_avx2<1>(a, b, next, kc, c, ldc, ncols, add);
  }
}

#ifdef ELMO_FAST_GEMM_AVX512
// The AVX-512 bf16 kernels: MR rows x NP panels as micro512, over k-pairs. With avx512_bf16 each
// k-pair is one vdpbf16ps per accumulator (the pair's two products summed into fp32); without, the
// widened even and odd halves take one FMA each.
template <int MR, int NP, bool kNative>
__attribute__((target(ELMO_FAST_TARGET_BF16))) void micro512_bf16(const uint32_t* __restrict a,
                                                                  const uint32_t* __restrict b, int64_t pstride,
                                                                  const uint32_t* next, int64_t kc,
                                                                  float* __restrict c, int64_t ldc, int64_t ncols,
                                                                  bool add) {
  __m512 acc[NP][MR];
  for (int q = 0; q < NP; ++q)
    for (int r = 0; r < MR; ++r) acc[q][r] = _mm512_setzero_ps();
  for (int64_t u = 0; u < kc; ++u) {
    __m512i bv[NP];
    for (int q = 0; q < NP; ++q) {
      __builtin_prefetch(next + q * pstride + u * kNR, 0, 2);  // into L2, as micro512
      bv[q] = _mm512_loadu_si512(b + q * pstride + u * kNR);
    }
    if constexpr (kNative) {
      for (int r = 0; r < MR; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[u * MR + r]));
        for (int q = 0; q < NP; ++q) acc[q][r] = _mm512_dpbf16_ps(acc[q][r], av, (__m512bh)bv[q]);
      }
    } else {
      __m512 w[NP];
      for (int q = 0; q < NP; ++q) w[q] = (__m512)((U16)bv[q] << 16);  // (gcc 12's _mm512_slli_epi32 warns spuriously)
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(bf16_lo(a[u * MR + r]));
        for (int q = 0; q < NP; ++q) acc[q][r] = _mm512_fmadd_ps(av, w[q], acc[q][r]);
      }
      const __m512i mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
      for (int q = 0; q < NP; ++q) w[q] = _mm512_castsi512_ps(_mm512_and_si512(bv[q], mask));
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(bf16_hi(a[u * MR + r]));
        for (int q = 0; q < NP; ++q) acc[q][r] = _mm512_fmadd_ps(av, w[q], acc[q][r]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NP; ++q) {
      float* cr = c + r * ldc + q * kNR;
      const int64_t nq = std::min<int64_t>(kNR, ncols - q * kNR);
      // A partial panel is written through a mask: never touch y past its ncols columns.
      const __mmask16 mask = nq >= kNR ? __mmask16(0xffff) : __mmask16((1u << nq) - 1);
      __m512 v = acc[q][r];
      if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cr));
      _mm512_mask_storeu_ps(cr, mask, v);
    }
}

template <int NP, bool kNative>
void micro512_bf16_rows(int rows, const uint32_t* a, const uint32_t* b, int64_t pstride, const uint32_t* next,
                        int64_t kc, float* c, int64_t ldc, int64_t ncols, bool add) {
  switch (rows) {
    case 8: return micro512_bf16<8, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 7: return micro512_bf16<7, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 6: return micro512_bf16<6, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 5: return micro512_bf16<5, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 4: return micro512_bf16<4, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 3: return micro512_bf16<3, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    case 2: return micro512_bf16<2, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
    default: return micro512_bf16<1, NP, kNative>(a, b, pstride, next, kc, c, ldc, ncols, add);
  }
}

template <bool kNative>
void micro512_bf16_tile(int rows, int np, const uint32_t* a, const uint32_t* b, int64_t pstride, const uint32_t* next,
                        int64_t kc, float* c, int64_t ldc, int64_t ncols, bool add) {
  switch (np) {
    case 3: return micro512_bf16_rows<3, kNative>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
    case 2: return micro512_bf16_rows<2, kNative>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
    default: return micro512_bf16_rows<1, kNative>(rows, a, b, pstride, next, kc, c, ldc, ncols, add);
  }
}
#endif

// The kernel variants as policies of one driver, in k-units (one k for fp32 weights, one k-pair for
// bf16 ones): a packed panel's unit is kNR 4-byte values either way, and so is a row's unit of the
// packed x, so blocking, row blocks and the split over threads are the same for all of them.
struct F32Avx2 {
  using A = float;
  using B = float;
  static constexpr int64_t kPerUnit = 1, kKCU = kKC, kMR = gemm::kMR, kNP = 1;
  static void pack(const float* x, int64_t M, int64_t K, int64_t ldx, A* ap) { pack_a(x, M, K, ldx, kKCU, kMR, ap); }
  static void tile(int r, int, const A* a, const B* b, int64_t, const B* next, int64_t kc, float* c, int64_t ldc,
                   int64_t ncols, bool add) {
    micro_rows(r, a, b, next, kc, c, ldc, ncols, add);
  }
};

struct Bf16Avx2 {
  using A = uint32_t;
  using B = uint32_t;
  static constexpr int64_t kPerUnit = 2, kKCU = kKC, kMR = gemm::kMR, kNP = 1;  // 16 KB of panel per k-block, as fp32
  static void pack(const float* x, int64_t M, int64_t K, int64_t ldx, A* ap) {
    pack_a_bf16(x, M, K, ldx, kKCU, kMR, ap, false);
  }
  static void tile(int r, int, const A* a, const B* b, int64_t, const B* next, int64_t kc, float* c, int64_t ldc,
                   int64_t ncols, bool add) {
    micro_bf16_avx2_rows(r, a, b, next, kc, c, ldc, ncols, add);
  }
};

#ifdef ELMO_FAST_GEMM_AVX512
struct F32Avx512 {
  using A = float;
  using B = float;
  static constexpr int64_t kPerUnit = 1, kKCU = kKCWide, kMR = kMRWide, kNP = kNPWide;
  static void pack(const float* x, int64_t M, int64_t K, int64_t ldx, A* ap) { pack_a(x, M, K, ldx, kKCU, kMR, ap); }
  static void tile(int r, int np, const A* a, const B* b, int64_t pstride, const B* next, int64_t kc, float* c,
                   int64_t ldc, int64_t ncols, bool add) {
    micro512_tile(r, np, a, b, pstride, next, kc, c, ldc, ncols, add);
  }
};

// kKCWide pairs: a k-block of three bf16 panels is 24 KB, as fp32's kKCWide k.
template <bool kNative>
struct Bf16Avx512 {
  using A = uint32_t;
  using B = uint32_t;
  static constexpr int64_t kPerUnit = 2, kKCU = 2 * kKCWide, kMR = kMRWide, kNP = kNPWide;
  static void pack(const float* x, int64_t M, int64_t K, int64_t ldx, A* ap) {
    pack_a_bf16(x, M, K, ldx, kKCU, kMR, ap, kNative);
  }
  static void tile(int r, int np, const A* a, const B* b, int64_t pstride, const B* next, int64_t kc, float* c,
                   int64_t ldc, int64_t ncols, bool add) {
    micro512_bf16_tile<kNative>(r, np, a, b, pstride, next, kc, c, ldc, ncols, add);
  }
};
#endif

// y[M, N] (+)= x[M, K] @ B, B packed as Kernel::B units [panels][Ku][kNR].
template <class Kernel>
void drive(const float* x, int64_t M, int64_t K, int64_t ldx, const typename Kernel::B* bp, int64_t N, float* y,
           int64_t ldy, bool accumulate) {
  using A = typename Kernel::A;
  static_assert(sizeof(A) == sizeof(float) && sizeof(typename Kernel::B) == sizeof(float), "4-byte units");
  const int64_t Ku = (K + Kernel::kPerUnit - 1) / Kernel::kPerUnit;
  const int64_t panels = (N + kNR - 1) / kNR;
  const int64_t kcb = Kernel::kKCU, mr = Kernel::kMR;
  // A task covers `step` panels (kNPWide for the AVX-512 kernels, which compute them at once).
  const int64_t step = Kernel::kNP, groups = (panels + step - 1) / step;
  const int64_t mc_max = row_block(M, Ku, N, step * kNR, mr);
  const int64_t blocks = (M + mc_max - 1) / mc_max;
  // Equal blocks (1024 rows as 2 x 516 rather than 1020 + 4), each a whole number of mr-row tiles,
  // so a block's tiles are the tiles the packing laid out.
  const int64_t mc = ((M + blocks - 1) / blocks + mr - 1) / mr * mr;
  // From cpu_pool: a training step's input map packs all T x B rows of x (5.5 MB at 'original'
  // 64 x 40), which a fresh allocation would page-fault in on every call.
  at::Tensor a_buf = cpu_pool::empty({M * Ku}, at::TensorOptions().dtype(at::kFloat));
  A* ap = reinterpret_cast<A*>(a_buf.data_ptr<float>());
  Kernel::pack(x, M, K, ldx, ap);
  // ~64K multiply-adds per task at least, so small steps stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, std::min(M, mc) * K * kNR * step));
  at::parallel_for(0, blocks * groups, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t mb = (t / groups) * mc, rows = std::min(mc, M - mb), p = (t % groups) * step;
      const int64_t np = std::min(step, panels - p), ncols = std::min(np * kNR, N - p * kNR);
      if (rows <= 0) continue;  // rounding mc up to whole tiles can leave the last block empty
      for (int64_t u0 = 0; u0 < Ku; u0 += kcb) {
        const int64_t uc = std::min(kcb, Ku - u0);
        const bool add = accumulate || u0 > 0;
        const auto* b = bp + (p * Ku + u0) * kNR;
        // Prefetch addresses past the buffer's end (last panel) are harmless: prefetches never fault.
        const auto* next = b + np * Ku * kNR;
        for (int64_t m0 = mb; m0 < mb + rows; m0 += mr) {
          const int r = static_cast<int>(std::min<int64_t>(mr, mb + rows - m0));
          Kernel::tile(r, static_cast<int>(np), ap + u0 * M + m0 * uc, b, Ku * kNR, next, uc, y + m0 * ldy + p * kNR,
                       ldy, ncols, add);
        }
      }
    }
  });
}

// y[M, N] = x[M, K] @ B (+ y when accumulate), B given packed by pack() (fp32) or pack_bf16() (bf16:
// x is rounded to bf16, products are summed in fp32). x and y fp32 row-major with leading
// dimensions ldx, ldy. The packed weight's dtype is the GEMM policy: the LSTM's time loop and
// packed_linear run either format through this one call.
inline void gemm(const float* x, int64_t M, int64_t K, int64_t ldx, const at::Tensor& packed, int64_t N, float* y,
                 int64_t ldy, bool accumulate) {
  const int64_t panels = (N + kNR - 1) / kNR;
  const int level = isa_flag().load();
  if (packed.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(packed.dim() == 3 && packed.size(0) == panels && packed.size(1) == (K + 1) / 2 &&
                    packed.size(2) == 2 * kNR && packed.is_contiguous(),
                "packed_gemm: bf16 packed weight [", packed.sizes(), "] does not match K = ", K, ", N = ", N,
                " (expected gemm_pack_bf16's [", panels, ", ", (K + 1) / 2, ", ", 2 * kNR, "])");
    if (M <= 0) return;
    const auto* bp = reinterpret_cast<const uint32_t*>(packed.data_ptr<c10::BFloat16>());
#ifdef ELMO_FAST_GEMM_AVX512
    if (level == kAvx512Bf16) return drive<Bf16Avx512<true>>(x, M, K, ldx, bp, N, y, ldy, accumulate);
    if (level == kAvx512) return drive<Bf16Avx512<false>>(x, M, K, ldx, bp, N, y, ldy, accumulate);
#endif
    return drive<Bf16Avx2>(x, M, K, ldx, bp, N, y, ldy, accumulate);
  }
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.dim() == 3 && packed.size(1) == K &&
                  packed.size(2) == kNR && packed.size(0) == panels && packed.is_contiguous(),
              "packed_gemm: packed weight ", packed.scalar_type(), " [", packed.sizes(), "] does not match K = ", K,
              ", N = ", N);
  if (M <= 0) return;
  const float* bp = packed.data_ptr<float>();
#ifdef ELMO_FAST_GEMM_AVX512
  if (level >= kAvx512) return drive<F32Avx512>(x, M, K, ldx, bp, N, y, ldy, accumulate);
#endif
  return drive<F32Avx2>(x, M, K, ldx, bp, N, y, ldy, accumulate);
}

}  // namespace gemm
}  // namespace elmo_fast
