// CPU LSTM-with-projection over a packed batch: one input GEMM for many steps (all of them, or
// bounded chunks; see InputMap), then per step a recurrent GEMM on the active prefix, ONE fused
// vectorised pointwise loop and the projection GEMM + clip. For fp32 inputs every one of these GEMMs
// runs against a packed weight (packed_gemm.h), in fp32 or, with bf16-packed weights (the
// gemm_dtype=torch.bfloat16 option), with bf16 operands and fp32 sums: the packed format is the
// time loop's GEMM policy, the loop itself is the same. fp64 uses ATen's. Backward through time mirrors it, then
// does every weight gradient as one big GEMM over all steps. Layout and cache: see lstm_proj.h.
#include "common/cpu_pool.h"
#include "common/fast_math.h"
#include "common/parallel.h"
#include "common/packed_gemm.h"
#include "lstm_proj/lstm_proj.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

namespace elmo_fast {
namespace lstm_proj {
namespace {

using fast_math::fast_exp;
using fast_math::fast_tanh;
using fast_math::sigmoid;

// A clip of 0 means no clip; an infinite bound keeps the clamp branch-free.
template <typename T>
inline T clip_bound(double clip) {
  return clip > 0 ? T(clip) : std::numeric_limits<T>::infinity();
}


// gcc only vectorises these row loops when the restrict pointers are distinct parameters (restrict
// locals derived from one base pointer are not trusted), hence one noinline function per row.
template <typename T>
__attribute__((noinline)) void row_fwd(T* __restrict gi, T* __restrict gf, T* __restrict gg, T* __restrict go,
                                       const T* __restrict bi, const T* __restrict bf, const T* __restrict bg,
                                       const T* __restrict bo, T* __restrict cr, T* __restrict craw,
                                       T* __restrict mr, int64_t C, T hi) {
  for (int64_t j = 0; j < C; ++j) {
    const T i = sigmoid(gi[j] + bi[j]);
    const T f = sigmoid(gf[j] + bf[j]);
    const T g = fast_tanh(gg[j] + bg[j]);
    const T o = sigmoid(go[j] + bo[j]);
    const T cn = i * g + f * cr[j];
    const T cc = std::min(std::max(cn, -hi), hi);
    craw[j] = cn;
    cr[j] = cc;
    mr[j] = o * fast_tanh(cc);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
  }
}

// gates [n, 4C] holds pre-activations (bias not yet added) in, post-activations out; c [n, C] is the state (clipped c
// written back); c_raw [n, C] the unclipped cell; m [n, C] = o * tanh(clip(c)).
template <typename T>
void pointwise_fwd(T* gates, const T* b, T* c, T* c_raw, T* m, int64_t n, int64_t C, T hi) {
  at::parallel_for(0, n, row_grain(8 * C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* g = gates + r * 4 * C;
      row_fwd<T>(g, g + C, g + 2 * C, g + 3 * C, b, b + C, b + 2 * C, b + 3 * C, c + r * C, c_raw + r * C, m + r * C, C, hi);
    }
  });
}

// dst[k] = clamp(src[k]) over count contiguous elements.
template <typename T>
void clamp_copy(T* __restrict dst, const T* __restrict src, int64_t count, T hi) {
  for (int64_t k = 0; k < count; ++k) dst[k] = std::min(std::max(src[k], -hi), hi);
}

// dh_raw = (grad_out + dh) * [|h_raw| <= clip]: the clip's exact gradient (as torch.clamp's).
template <typename T>
void hclip_bwd(const T* __restrict grad_out, const T* __restrict dh, const T* __restrict h_raw, T* __restrict dh_raw,
               int64_t count, T hi) {
  for (int64_t k = 0; k < count; ++k) {
    const T pass = std::abs(h_raw[k]) <= hi ? T(1) : T(0);
    dh_raw[k] = (grad_out[k] + dh[k]) * pass;
  }
}

template <typename T>
__attribute__((noinline)) void row_bwd(const T* __restrict gi, const T* __restrict gf, const T* __restrict gg,
                                       const T* __restrict go, const T* __restrict craw, const T* __restrict cp,
                                       const T* __restrict dmr, T* __restrict dcr, T* __restrict dzi,
                                       T* __restrict dzf, T* __restrict dzg, T* __restrict dzo, int64_t C, T hi,
                                       T phi) {
  // With no clip everything passes, a NaN cell too (eager has no clamp to stop its gradient);
  // with one, the clamp's gradient is 0 outside [-hi, hi] and for a NaN, as torch.clamp's.
  const bool clipped = !std::isinf(hi);
  for (int64_t j = 0; j < C; ++j) {
    const T i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const T cn = craw[j];
    const T cc = std::min(std::max(cn, -hi), hi);
    const T tc = fast_tanh(cc);
    const T d_m = dmr[j];
    const T pass = (!clipped || std::abs(cn) <= hi) ? T(1) : T(0);
    const T dcn = (d_m * o * (T(1) - tc * tc) + dcr[j]) * pass;
    const T c_prev = std::min(std::max(cp[j], -phi), phi);
    dzi[j] = dcn * g * i * (T(1) - i);
    dzf[j] = dcn * c_prev * f * (T(1) - f);
    dzg[j] = dcn * i * (T(1) - g * g);
    dzo[j] = d_m * tc * o * (T(1) - o);
    dcr[j] = dcn * f;
  }
}

// One step of backward through the cell for rows [0, n): reads the cached activations, the
// unclipped cell, dm = d(o * tanh(c)) and the carried dc; writes d(pre-activations) into dz and the
// gradient for the previous cell state back into dc. prev_c[r] points at that row's previous
// UNCLIPPED cell (clipped here) or at its c0 (never clipped: the reference feeds c0 as is).
template <typename T>
void pointwise_bwd(const T* gates, const T* c_raw, const T* const* prev_c, const uint8_t* prev_is_c0, const T* dm,
                   T* dc, T* dz, int64_t n, int64_t C, T hi) {
  at::parallel_for(0, n, row_grain(12 * C), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* g = gates + r * 4 * C;
      T* d = dz + r * 4 * C;
      const T phi = prev_is_c0[r] ? std::numeric_limits<T>::infinity() : hi;
      row_bwd<T>(g, g + C, g + 2 * C, g + 3 * C, c_raw + r * C, prev_c[r], dm + r * C, dc + r * C, d, d + C,
                 d + 2 * C, d + 3 * C, C, hi, phi);
    }
  });
}

// The input map x W_in^T of the steps, [T, B, 4C] time-major. All steps at once when they are kept
// for backward (the post-activation gates are written over them in place); otherwise in chunks of
// steps into one buffer of at most kInputChunkBytes: a fresh buffer above glibc's 32 MB mmap
// threshold is page-faulted in on every call, which measured 20 ms of a 52 ms GEMM at 'small'
// 64 x 40 (the 44 MB map). `fill(lo, hi, out)` computes steps [lo, hi) into out [hi - lo, B, 4C].
class InputMap {
 public:
  static constexpr int64_t kInputChunkBytes = 16 << 20;

  InputMap(int64_t T, int64_t B, int64_t C4, bool all_steps, bool reverse, const at::TensorOptions& opts,
           std::function<void(int64_t, int64_t, at::Tensor)> fill)
      : T_(T), reverse_(reverse), fill_(std::move(fill)) {
    const int64_t step_bytes = std::max<int64_t>(1, B * C4 * static_cast<int64_t>(opts.dtype().itemsize()));
    chunk_ = all_steps ? T : std::max<int64_t>(1, std::min<int64_t>(T, kInputChunkBytes / step_bytes));
    buf_ = cpu_pool::empty({std::max<int64_t>(chunk_, 1), B, C4}, opts);
  }

  // [B, 4C] input map of step t (computing its chunk first if needed).
  at::Tensor step(int64_t t) {
    if (t < lo_ || t >= hi_) {
      lo_ = reverse_ ? std::max<int64_t>(0, t + 1 - chunk_) : t;
      hi_ = std::min(T_, lo_ + chunk_);
      fill_(lo_, hi_, buf_.narrow(0, 0, hi_ - lo_));
    }
    return buf_[t - lo_];
  }

  // Every step's map, for the backward cache (all_steps only).
  at::Tensor all() {
    if (T_ > 0 && lo_ != 0) step(reverse_ ? T_ - 1 : 0);
    return buf_.narrow(0, 0, T_);
  }

 private:
  int64_t T_, chunk_, lo_ = -1, hi_ = -1;
  bool reverse_;
  std::function<void(int64_t, int64_t, at::Tensor)> fill_;
  at::Tensor buf_;
};

}  // namespace

// w_*_packed: gemm::pack(w.t()) or gemm::pack_bf16(w.t()) of w_in, w_rec, w_proj (fp32 x only), e.g.
// cached across calls by the caller; undefined tensors are packed here in fp32. With all three given,
// w_in, w_rec and w_proj are read for their shapes only and may be bf16.
std::vector<at::Tensor> lstm_proj_fwd_cpu(const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& w_in,
                                          const at::Tensor& w_rec, const at::Tensor& bias, const at::Tensor& w_proj,
                                          const at::Tensor& h0, const at::Tensor& c0, double cell_clip,
                                          double proj_clip, bool reverse, bool save_cache,
                                          at::Tensor w_in_packed, at::Tensor w_rec_packed,
                                          at::Tensor w_proj_packed) {
  const bool all_packed = w_in_packed.defined() && w_rec_packed.defined() && w_proj_packed.defined();
  check_args(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, /*bf16_weights=*/all_packed && x.scalar_type() == at::kFloat);
  TORCH_CHECK(x.device().is_cpu(), "lstm_proj (cpp backend): tensors must be on the CPU, got ", x.device());
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  const int64_t C4 = w_in.size(0), C = C4 / 4, P = w_proj.size(0);
  Plan plan = make_plan(lengths, T, x.device());
  auto opts = x.options();
  const bool packed = x.scalar_type() == at::kFloat;
  if (packed && !w_in_packed.defined()) w_in_packed = gemm::pack(w_in.t());
  if (packed && !w_rec_packed.defined()) w_rec_packed = gemm::pack(w_rec.t());
  if (packed && !w_proj_packed.defined()) w_proj_packed = gemm::pack(w_proj.t());

  auto xs = x.index_select(0, plan.perm).transpose(0, 1).contiguous();  // [T, B, I]
  // One GEMM for the input map of many steps at once (all of them, or chunks; see InputMap). The
  // bias is added in the pointwise step: addmm's broadcast copy of it into [T*B, 4C] cost ~10% of
  // the whole forward.
  auto w_in_t = w_in.t();
  InputMap input_map(T, B, C4, save_cache, reverse, opts, [&](int64_t lo, int64_t hi, at::Tensor out) {
    if (packed) {  // also faster than MKL here: 96 vs 81 GFLOP/s at 1024 x 128 x 4096, 100 vs 63 at 256 x 512 x 16384
      gemm::gemm(xs.data_ptr<float>() + lo * B * I, (hi - lo) * B, I, I, w_in_packed, C4, out.data_ptr<float>(), C4,
                 /*accumulate=*/false);
    } else {
      auto flat = out.view({(hi - lo) * B, C4});
      at::mm_out(flat, xs.narrow(0, lo, hi - lo).view({(hi - lo) * B, I}), w_in_t);
    }
  });
  auto bias_c = bias.contiguous();
  auto h = h0.index_select(0, plan.perm).contiguous();  // [B, P] state, updated in place per prefix
  auto c = c0.index_select(0, plan.perm).contiguous();  // [B, C]
  // The backward cache comes from cpu_pool: a fresh buffer of this size is page-faulted in on
  // every call (see cpu_pool.h).
  auto h_raw = cpu_pool::zeros({T, B, P}, opts);
  auto c_raw = save_cache ? cpu_pool::zeros({T, B, C}, opts) : at::empty({B, C}, opts);
  auto m = save_cache ? cpu_pool::zeros({T, B, C}, opts) : at::empty({B, C}, opts);
  auto h_prev = save_cache ? cpu_pool::zeros({T, B, P}, opts) : at::empty({0}, opts);
  auto w_rec_t = w_rec.t();
  auto w_proj_t = w_proj.t();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_proj_fwd_cpu", [&] {
    const scalar_t chi = clip_bound<scalar_t>(cell_clip);
    const scalar_t phi = clip_bound<scalar_t>(proj_clip);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t n = plan.active[t];
      if (n == 0) continue;
      auto g = input_map.step(t).narrow(0, 0, n);
      auto hp = h.narrow(0, 0, n);
      if (save_cache) h_prev[t].narrow(0, 0, n).copy_(hp);
      auto craw_t = save_cache ? c_raw[t] : c_raw;
      auto m_t = (save_cache ? m[t] : m).narrow(0, 0, n);
      auto hr = h_raw[t].narrow(0, 0, n);
      if constexpr (std::is_same_v<scalar_t, float>) {
        gemm::gemm(hp.data_ptr<float>(), n, P, P, w_rec_packed, C4, g.data_ptr<float>(), C4, /*accumulate=*/true);
      } else {
        g.addmm_(hp, w_rec_t);
      }
      pointwise_fwd<scalar_t>(g.data_ptr<scalar_t>(), bias_c.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), craw_t.data_ptr<scalar_t>(),
                              m_t.data_ptr<scalar_t>(), n, C, chi);
      if constexpr (std::is_same_v<scalar_t, float>) {
        gemm::gemm(m_t.data_ptr<float>(), n, C, C, w_proj_packed, P, hr.data_ptr<float>(), P, /*accumulate=*/false);
      } else {
        at::mm_out(hr, m_t, w_proj_t);
      }
      clamp_copy<scalar_t>(h.data_ptr<scalar_t>(), hr.data_ptr<scalar_t>(), n * P, phi);
    }
  });

  // Inactive positions of h_raw are 0, so the clamped copy is exactly 0 there as well.
  auto out_tm = proj_clip > 0 ? h_raw.clamp(-proj_clip, proj_clip) : h_raw;  // index_select copies
  auto out = out_tm.transpose(0, 1).index_select(0, plan.inv_perm);
  auto h_n = h.index_select(0, plan.inv_perm);
  auto c_n = c.index_select(0, plan.inv_perm);
  if (!save_cache) {
    auto none = [&] { return at::empty({0}, opts); };  // distinct tensors: outputs must not alias
    return {out, h_n, c_n, none(), none(), none(), none(), none()};
  }
  return {out, h_n, c_n, input_map.all(), c_raw, m, h_raw, h_prev};
}

std::vector<at::Tensor> lstm_proj_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                          const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& lengths,
                                          const at::Tensor& w_in, const at::Tensor& w_rec, const at::Tensor& w_proj,
                                          const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& gates,
                                          const at::Tensor& c_raw, const at::Tensor& m, const at::Tensor& h_raw,
                                          const at::Tensor& h_prev, double cell_clip, double proj_clip, bool reverse) {
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  const int64_t C4 = w_in.size(0), C = C4 / 4, P = w_proj.size(0);
  TORCH_CHECK(x.device().is_cpu(), "lstm_proj backward (cpp backend): tensors must be on the CPU");
  TORCH_CHECK(gates.numel() == T * B * C4 && c_raw.numel() == T * B * C && m.numel() == T * B * C &&
                  h_raw.numel() == T * B * P && h_prev.numel() == T * B * P,
              "lstm_proj backward: the forward cache is missing or has the wrong shape (run forward with "
              "save_cache=True)");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({B, T, P}) && grad_hn.sizes() == at::IntArrayRef({B, P}) &&
                  grad_cn.sizes() == at::IntArrayRef({B, C}),
              "lstm_proj backward: gradient shapes must match the outputs");
  Plan plan = make_plan(lengths, T, x.device());
  auto opts = x.options();

  auto gates_c = gates.contiguous(), c_raw_c = c_raw.contiguous(), m_c = m.contiguous();
  auto h_raw_c = h_raw.contiguous(), h_prev_c = h_prev.contiguous();
  auto go = grad_out.index_select(0, plan.perm).transpose(0, 1).contiguous();  // [T, B, P]
  auto dh = grad_hn.index_select(0, plan.perm).contiguous();                    // carried d h
  auto dc = grad_cn.index_select(0, plan.perm).contiguous();                    // carried d c (clipped)
  auto c0s = c0.index_select(0, plan.perm).contiguous();
  auto dz = cpu_pool::zeros({T, B, C4}, opts);  // d pre-activations; 0 at inactive rows
  auto dh_raw = cpu_pool::zeros({T, B, P}, opts);
  auto dm = at::empty({B, C}, opts);
  std::vector<uint8_t> is_c0(B);
  // The per-step GEMMs of backward use the weights as they are ([K, N] row-major): packed once here.
  const bool packed = x.scalar_type() == at::kFloat;
  auto w_proj_packed = packed ? gemm::pack(w_proj) : at::Tensor();  // dm = dh_raw @ w_proj
  auto w_rec_packed = packed ? gemm::pack(w_rec) : at::Tensor();    // dh = dz @ w_rec

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_proj_bwd_cpu", [&] {
    const scalar_t chi = clip_bound<scalar_t>(cell_clip);
    const scalar_t phi = clip_bound<scalar_t>(proj_clip);
    std::vector<const scalar_t*> prev(B);
    const scalar_t* craw_base = c_raw_c.data_ptr<scalar_t>();
    const scalar_t* c0_base = c0s.data_ptr<scalar_t>();
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t n = plan.active[t];
      if (n == 0) continue;
      // A row's previous step is t -/+ 1 unless t is its first step (forward: t == 0; reverse:
      // t == length - 1), where the previous cell is c0.
      for (int64_t r = 0; r < n; ++r) {
        const bool first = reverse ? plan.sorted_len[r] == t + 1 : t == 0;
        const int64_t tp = reverse ? t + 1 : t - 1;
        is_c0[r] = first;
        prev[r] = first ? c0_base + r * C : craw_base + (tp * B + r) * C;
      }
      auto dhr = dh_raw[t].narrow(0, 0, n);
      hclip_bwd<scalar_t>(go[t].data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(), h_raw_c[t].data_ptr<scalar_t>(),
                          dhr.data_ptr<scalar_t>(), n * P, phi);
      auto dm_t = dm.narrow(0, 0, n);
      if constexpr (std::is_same_v<scalar_t, float>) {
        gemm::gemm(dhr.data_ptr<float>(), n, P, P, w_proj_packed, C, dm_t.data_ptr<float>(), C, /*accumulate=*/false);
      } else {
        at::mm_out(dm_t, dhr, w_proj);
      }
      auto dz_t = dz[t].narrow(0, 0, n);
      pointwise_bwd<scalar_t>(gates_c[t].data_ptr<scalar_t>(), c_raw_c[t].data_ptr<scalar_t>(), prev.data(),
                              is_c0.data(), dm_t.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                              dz_t.data_ptr<scalar_t>(), n, C, chi);
      auto dh_t = dh.narrow(0, 0, n);
      if constexpr (std::is_same_v<scalar_t, float>) {
        gemm::gemm(dz_t.data_ptr<float>(), n, C4, C4, w_rec_packed, P, dh_t.data_ptr<float>(), P, /*accumulate=*/false);
      } else {
        at::mm_out(dh_t, dz_t, w_rec);
      }
    }
  });

  // Every weight gradient as one GEMM over all steps: inactive rows contribute exact zeros.
  auto dz2 = dz.view({T * B, C4});
  // dw_in and dw_rec as ONE GEMM, dz^T [x | h_prev]: both read all of dz (44 MB at 'small' 64 x 40),
  // and the one GEMM with N = I + P ran 103 ms against 71 + 71 for the two.
  auto xh = cpu_pool::empty({T, B, I + P}, opts);
  xh.narrow(2, 0, I).copy_(x.index_select(0, plan.perm).transpose(0, 1));
  xh.narrow(2, I, P).copy_(h_prev_c.view({T, B, P}));
  // Padding is ignored by contract (may hold anything, even NaN): 0 * NaN would leak into dw_in.
  for (int64_t t = 0; t < T; ++t)
    if (plan.active[t] < B) xh[t].narrow(0, plan.active[t], B - plan.active[t]).zero_();
  auto dx = at::mm(dz2, w_in).view({T, B, I}).transpose(0, 1).index_select(0, plan.inv_perm);
  auto dw_in_rec = at::mm(dz2.t(), xh.view({T * B, I + P}));
  auto dw_in = dw_in_rec.narrow(1, 0, I).contiguous();
  auto dw_rec = dw_in_rec.narrow(1, I, P).contiguous();
  auto dbias = dz2.sum(0);
  auto dw_proj = at::mm(dh_raw.view({T * B, P}).t(), m_c.view({T * B, C}));
  auto dh0 = dh.index_select(0, plan.inv_perm);
  auto dc0 = dc.index_select(0, plan.inv_perm);
  return {dx, dw_in, dw_rec, dbias, dw_proj, dh0, dc0};
}

namespace {

// Inference with bf16 GEMM operands (weights, x, h, m) and fp32 sums, gates, cell state and outputs:
// the fp32 time loop with bf16-packed weights, packed here on every call. The Python wrapper caches
// the packed copies and calls lstm_proj_fwd_packed instead; this op takes w_in / w_rec / w_proj in
// fp32 or bf16. No cache, no backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_bf16_op(const at::Tensor& x, const at::Tensor& lengths,
                                                           const at::Tensor& w_in, const at::Tensor& w_rec,
                                                           const at::Tensor& bias, const at::Tensor& w_proj,
                                                           const at::Tensor& h0, const at::Tensor& c0,
                                                           double cell_clip, double proj_clip, bool reverse) {
  check_args(x, lengths, w_in, w_rec, bias, w_proj, h0, c0, /*bf16_weights=*/true);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "lstm_proj_fwd_bf16: expects float32 CPU tensors (bf16 is used inside for the GEMMs only)");
  auto r = lstm_proj_fwd_cpu(x.contiguous(), lengths, w_in, w_rec, bias.contiguous(), w_proj, h0, c0, cell_clip,
                             proj_clip, reverse, /*save_cache=*/false, gemm::pack_bf16(w_in.t()),
                             gemm::pack_bf16(w_rec.t()), gemm::pack_bf16(w_proj.t()));
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fwd_op(
    const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& w_in, const at::Tensor& w_rec,
    const at::Tensor& bias, const at::Tensor& w_proj, const at::Tensor& h0, const at::Tensor& c0, double cell_clip,
    double proj_clip, bool reverse, bool save_cache) {
  auto r = lstm_proj_fwd_cpu(x.contiguous(), lengths, w_in.contiguous(), w_rec.contiguous(), bias.contiguous(),
                             w_proj.contiguous(), h0, c0, cell_clip, proj_clip, reverse, save_cache);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

// The forward with its three weights already packed (gemm_pack(w.t()) or gemm_pack_bf16(w.t()) of w_in,
// w_rec, w_proj): the Python wrapper caches them per weight version, so inference packs each weight once.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fwd_packed_op(
    const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& w_in, const at::Tensor& w_rec,
    const at::Tensor& bias, const at::Tensor& w_proj, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_in_packed, const at::Tensor& w_rec_packed, const at::Tensor& w_proj_packed, double cell_clip,
    double proj_clip, bool reverse, bool save_cache) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lstm_proj_fwd_packed: packed weights take float32 x; use lstm_proj_fwd for ",
              x.scalar_type());
  auto r = lstm_proj_fwd_cpu(x.contiguous(), lengths, w_in.contiguous(), w_rec.contiguous(), bias.contiguous(),
                             w_proj.contiguous(), h0, c0, cell_clip, proj_clip, reverse, save_cache,
                             w_in_packed.contiguous(), w_rec_packed.contiguous(), w_proj_packed.contiguous());
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_op(
    const at::Tensor& grad_out, const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& x,
    const at::Tensor& lengths, const at::Tensor& w_in, const at::Tensor& w_rec, const at::Tensor& w_proj,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& gates, const at::Tensor& c_raw, const at::Tensor& m,
    const at::Tensor& h_raw, const at::Tensor& h_prev, double cell_clip, double proj_clip, bool reverse) {
  auto r = lstm_proj_bwd_cpu(grad_out, grad_hn, grad_cn, x.contiguous(), lengths, w_in.contiguous(),
                             w_rec.contiguous(), w_proj.contiguous(), h0, c0, gates, c_raw, m, h_raw, h_prev,
                             cell_clip, proj_clip, reverse);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("lstm_proj_fwd", &fwd_op);
  m.impl("lstm_proj_bwd", &bwd_op);
  m.impl("lstm_proj_fwd_bf16", &fwd_bf16_op);
  m.impl("lstm_proj_fwd_packed", &fwd_packed_op);
}

}  // namespace lstm_proj
}  // namespace elmo_fast
