// CUDA backend of lstm_proj: the time loop of lstm_proj_cpu.cpp with the GEMMs done by ATen (cuBLAS on
// the current stream) and the per-step pointwise work in the two fused kernels below, launched on
// that same stream. Layout and cache: see lstm_proj.h. Registered for the CUDA dispatch key of
// the ops that schemas.cpp defines (the _C extension must be loaded first).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "common/cuda_math.cuh"
#include "lstm_proj/lstm_proj.h"

namespace elmo_fast {
namespace lstm_proj {
namespace {

constexpr int kThreads = 256;

using cuda_math::Acc;
using cuda_math::sigmoid_;
using cuda_math::tanh_;
using cuda_math::to_acc;

// gates [n, 4C]: pre-activations (no bias) in; act [n, 4C]: post-activations out (act == gates for
// fp32/fp64, so no __restrict__ on either). c [n, C]: state in, clipped new cell out. c_raw:
// unclipped cell. m: o * tanh(clip(c)). Grid (n, ceil(C / kThreads)): rows
// on x, whose limit is 2^31 - 1 (gridDim.y stops at 65535, a plausible batch size).
// clip(x) as torch.clamp: CUDA's fmin/fmax return the other operand for a NaN, which would turn a
// NaN cell (a NaN carried in c0) into -clip, or -inf with no clip, and hide it.
template <typename A>
__device__ __forceinline__ A clamp_keep_nan(A x, A hi) {
  return x != x ? x : fmin(fmax(x, -hi), hi);
}

template <typename T, typename S = typename Acc<T>::type>
__global__ void lstm_proj_fwd_step_kernel(const T* gates, S* act, const T* __restrict__ bias, S* __restrict__ c,
                                          S* __restrict__ c_raw, T* __restrict__ m, int64_t C, double clip) {
  using acc_t = typename Acc<T>::type;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.x;
  if (j >= C) return;
  const acc_t hi = static_cast<acc_t>(clip);
  const T* g = gates + r * 4 * C;
  const acc_t i = sigmoid_(to_acc(g[j]) + to_acc(bias[j]));
  const acc_t f = sigmoid_(to_acc(g[C + j]) + to_acc(bias[C + j]));
  const acc_t gg = tanh_(to_acc(g[2 * C + j]) + to_acc(bias[2 * C + j]));
  const acc_t o = sigmoid_(to_acc(g[3 * C + j]) + to_acc(bias[3 * C + j]));
  const acc_t cn = i * gg + f * c[r * C + j];
  const acc_t cc = clamp_keep_nan(cn, hi);
  c_raw[r * C + j] = cn;
  c[r * C + j] = cc;
  m[r * C + j] = static_cast<T>(o * tanh_(cc));
  S* a = act + r * 4 * C;
  a[j] = i;
  a[C + j] = f;
  a[2 * C + j] = gg;
  a[3 * C + j] = o;
}

// Backward of one step for rows [0, n): see pointwise_bwd in lstm_proj_cpu.cpp. first[r] != 0 marks
// the row's first step, whose previous cell is c0 (unclipped); otherwise clip(c_raw_prev).
template <typename T, typename S = typename Acc<T>::type>
__global__ void lstm_proj_bwd_step_kernel(const S* __restrict__ act, const S* __restrict__ c_raw,
                                          const S* __restrict__ c_raw_prev, const S* __restrict__ c0,
                                          const int32_t* __restrict__ first, const T* __restrict__ dm,
                                          S* __restrict__ dc, T* __restrict__ dz, int64_t C, double clip) {
  using acc_t = typename Acc<T>::type;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.x;
  if (j >= C) return;
  const acc_t hi = static_cast<acc_t>(clip);
  const S* a = act + r * 4 * C;
  const acc_t i = a[j], f = a[C + j], gg = a[2 * C + j], o = a[3 * C + j];
  const acc_t cn = c_raw[r * C + j];
  const acc_t cc = clamp_keep_nan(cn, hi);
  const acc_t tc = tanh_(cc);
  const acc_t d_m = to_acc(dm[r * C + j]);
  // no clip (hi = inf): everything passes, a NaN too (eager has no clamp then); with a clip, the
  // clamp's gradient is 0 outside [-hi, hi] and for a NaN, as torch.clamp's
  const acc_t pass = (isinf(hi) || fabs(cn) <= hi) ? acc_t(1) : acc_t(0);
  const acc_t dcn = (d_m * o * (acc_t(1) - tc * tc) + dc[r * C + j]) * pass;
  const acc_t c_prev = first[r] ? c0[r * C + j] : clamp_keep_nan(c_raw_prev[r * C + j], hi);
  T* d = dz + r * 4 * C;
  d[j] = static_cast<T>(dcn * gg * i * (acc_t(1) - i));
  d[C + j] = static_cast<T>(dcn * c_prev * f * (acc_t(1) - f));
  d[2 * C + j] = static_cast<T>(dcn * i * (acc_t(1) - gg * gg));
  d[3 * C + j] = static_cast<T>(d_m * tc * o * (acc_t(1) - o));
  dc[r * C + j] = dcn * f;
}

// The cell state, the cached gate activations and cell (act, c_raw) and the carried cell gradient
// dc are fp32 for fp16/bf16 inputs (S = Acc<T>::type); the GEMM operands and results, m and the
// outputs stay in T. Why, with the error measured: elmo_fast/ops/lstm_proj/triton_impl.py, whose
// kernels make the same choice.
inline at::ScalarType state_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 ? at::kFloat : t;
}

inline double bound(double clip) { return clip > 0 ? clip : INFINITY; }

inline dim3 grid(int64_t C, int64_t n) {
  return dim3(static_cast<unsigned>(n), static_cast<unsigned>((C + kThreads - 1) / kThreads));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_proj_fwd_cuda(const at::Tensor& x_, const at::Tensor& lengths, const at::Tensor& w_in_, const at::Tensor& w_rec_,
                   const at::Tensor& bias_, const at::Tensor& w_proj_, const at::Tensor& h0, const at::Tensor& c0,
                   double cell_clip, double proj_clip, bool reverse, bool save_cache) {
  check_args(x_, lengths, w_in_, w_rec_, bias_, w_proj_, h0, c0);
  c10::cuda::CUDAGuard guard(x_.device());
  auto x = x_.contiguous(), w_in = w_in_.contiguous(), w_rec = w_rec_.contiguous();
  auto bias = bias_.contiguous(), w_proj = w_proj_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  const int64_t C4 = w_in.size(0), C = C4 / 4, P = w_proj.size(0);
  Plan plan = make_plan(lengths, T, x.device());
  auto opts = x.options();
  auto stream = c10::cuda::getCurrentCUDAStream();

  auto xs = x.index_select(0, plan.perm).transpose(0, 1).contiguous();
  auto gates = at::mm(xs.view({T * B, I}), w_in.t()).view({T, B, C4});
  auto sopts = opts.dtype(state_type(x.scalar_type()));
  auto h = h0.index_select(0, plan.perm).contiguous();
  auto c = c0.index_select(0, plan.perm).to(sopts.dtype()).contiguous();
  auto h_raw = at::zeros({T, B, P}, opts);
  auto c_raw = save_cache ? at::zeros({T, B, C}, sopts) : at::empty({B, C}, sopts);
  auto m = save_cache ? at::zeros({T, B, C}, opts) : at::empty({B, C}, opts);
  auto h_prev = save_cache ? at::zeros({T, B, P}, opts) : at::empty({0}, opts);
  // Gate activations overwrite the pre-activations when the state dtype is the model's; otherwise
  // they go to an fp32 cache (or, without one, to a scratch row block the kernel may overwrite).
  const bool split = sopts.dtype() != opts.dtype();
  auto act = !split ? gates : save_cache ? at::zeros({T, B, C4}, sopts) : at::empty({B, C4}, sopts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_proj_fwd_cuda", [&] {
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t n = plan.active[t];
      if (n == 0) continue;
      auto g = gates[t].narrow(0, 0, n);
      auto a = !split || save_cache ? act[t] : act;
      auto hp = h.narrow(0, 0, n);
      if (save_cache) h_prev[t].narrow(0, 0, n).copy_(hp);
      g.addmm_(hp, w_rec.t());
      auto craw_t = save_cache ? c_raw[t] : c_raw;
      auto m_t = (save_cache ? m[t] : m).narrow(0, 0, n);
      using state_t = typename Acc<scalar_t>::type;
      lstm_proj_fwd_step_kernel<scalar_t><<<grid(C, n), kThreads, 0, stream>>>(
          g.data_ptr<scalar_t>(), a.data_ptr<state_t>(), bias.data_ptr<scalar_t>(), c.data_ptr<state_t>(),
          craw_t.data_ptr<state_t>(), m_t.data_ptr<scalar_t>(), C, bound(cell_clip));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto hr = h_raw[t].narrow(0, 0, n);
      at::mm_out(hr, m_t, w_proj.t());
      if (proj_clip > 0)
        at::clamp_out(hp, hr, -proj_clip, proj_clip);
      else
        hp.copy_(hr);
    }
  });

  auto out_tm = proj_clip > 0 ? h_raw.clamp(-proj_clip, proj_clip) : h_raw;
  auto out = out_tm.transpose(0, 1).index_select(0, plan.inv_perm);
  auto h_n = h.index_select(0, plan.inv_perm);
  auto c_n = c.index_select(0, plan.inv_perm).to(x.scalar_type());
  if (!save_cache) {
    auto none = [&] { return at::empty({0}, opts); };
    return {out, h_n, c_n, none(), none(), none(), none(), none()};
  }
  return {out, h_n, c_n, act, c_raw, m, h_raw, h_prev};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_proj_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& x_,
    const at::Tensor& lengths, const at::Tensor& w_in_, const at::Tensor& w_rec_, const at::Tensor& w_proj_,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& gates_, const at::Tensor& c_raw_,
    const at::Tensor& m_, const at::Tensor& h_raw_, const at::Tensor& h_prev_, double cell_clip, double proj_clip,
    bool reverse) {
  c10::cuda::CUDAGuard guard(x_.device());
  auto x = x_.contiguous(), w_in = w_in_.contiguous(), w_rec = w_rec_.contiguous(), w_proj = w_proj_.contiguous();
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  const int64_t C4 = w_in.size(0), C = C4 / 4, P = w_proj.size(0);
  TORCH_CHECK(gates_.numel() == T * B * C4 && c_raw_.numel() == T * B * C && m_.numel() == T * B * C &&
                  h_raw_.numel() == T * B * P && h_prev_.numel() == T * B * P,
              "lstm_proj backward: the forward cache is missing or has the wrong shape (run forward with "
              "save_cache=True)");
  const auto sdtype = state_type(x.scalar_type());
  TORCH_CHECK(c_raw_.scalar_type() == sdtype && gates_.scalar_type() == sdtype, "lstm_proj backward: the cached ",
              "gates/cell are ", gates_.scalar_type(), "/", c_raw_.scalar_type(), ", expected ", sdtype, " for ",
              x.scalar_type(), " inputs (pass the cache this forward returned)");
  auto gates = gates_.contiguous(), c_raw = c_raw_.contiguous(), m = m_.contiguous();
  auto h_raw = h_raw_.contiguous(), h_prev = h_prev_.contiguous();
  Plan plan = make_plan(lengths, T, x.device());
  auto opts = x.options();
  auto stream = c10::cuda::getCurrentCUDAStream();

  // first[t, r]: position t is row r's first step (its previous cell is c0). One upload per call.
  std::vector<int32_t> first_host(T * B, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < plan.active[t]; ++r)
      first_host[t * B + r] = reverse ? plan.sorted_len[r] == t + 1 : t == 0;
  auto first = at::from_blob(first_host.data(), {T, B}, at::kInt).to(x.device());

  auto go = grad_out.index_select(0, plan.perm).transpose(0, 1).contiguous();
  auto dh = grad_hn.index_select(0, plan.perm).contiguous();
  auto dc = grad_cn.index_select(0, plan.perm).to(sdtype).contiguous();
  auto c0s = c0.index_select(0, plan.perm).to(sdtype).contiguous();
  auto dz = at::zeros({T, B, C4}, opts);
  auto dh_raw = at::zeros({T, B, P}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lstm_proj_bwd_cuda", [&] {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t n = plan.active[t];
      if (n == 0) continue;
      auto dhr = dh_raw[t].narrow(0, 0, n);
      at::add_out(dhr, go[t].narrow(0, 0, n), dh.narrow(0, 0, n));
      if (proj_clip > 0) dhr.mul_(h_raw[t].narrow(0, 0, n).abs().le(proj_clip));
      auto dm = at::mm(dhr, w_proj);
      const int64_t tp = reverse ? t + 1 : t - 1;
      const at::Tensor& prev = (tp >= 0 && tp < T) ? c_raw[tp] : c0s;
      auto dz_t = dz[t].narrow(0, 0, n);
      using state_t = typename Acc<scalar_t>::type;
      lstm_proj_bwd_step_kernel<scalar_t><<<grid(C, n), kThreads, 0, stream>>>(
          gates[t].data_ptr<state_t>(), c_raw[t].data_ptr<state_t>(), prev.data_ptr<state_t>(),
          c0s.data_ptr<state_t>(), first[t].data_ptr<int32_t>(), dm.data_ptr<scalar_t>(), dc.data_ptr<state_t>(),
          dz_t.data_ptr<scalar_t>(), C, bound(cell_clip));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto dh_t = dh.narrow(0, 0, n);
      at::mm_out(dh_t, dz_t, w_rec);
    }
  });

  auto dz2 = dz.view({T * B, C4});
  auto xs = x.index_select(0, plan.perm).transpose(0, 1).contiguous();
  for (int64_t t = 0; t < T; ++t)
    if (plan.active[t] < B) xs[t].narrow(0, plan.active[t], B - plan.active[t]).zero_();
  xs = xs.view({T * B, I});
  auto dx = at::mm(dz2, w_in).view({T, B, I}).transpose(0, 1).index_select(0, plan.inv_perm);
  return {dx,
          at::mm(dz2.t(), xs),
          at::mm(dz2.t(), h_prev.view({T * B, P})),
          dz2.sum(0),
          at::mm(dh_raw.view({T * B, P}).t(), m.view({T * B, C})),
          dh.index_select(0, plan.inv_perm),
          dc.index_select(0, plan.inv_perm).to(x.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(elmo_fast, CUDA, m) {
  m.impl("lstm_proj_fwd", &lstm_proj_fwd_cuda);
  m.impl("lstm_proj_bwd", &lstm_proj_bwd_cuda);
}

}  // namespace lstm_proj
}  // namespace elmo_fast
