// Shared declarations of the LSTM-with-projection sequence op: schemas in schemas.cpp, the CPU
// time loops in lstm_proj_cpu.cpp, both directions at once in pair.cpp, the CUDA step kernels and
// their registration in lstm_proj_kernels.cu.
//
// Layout (haste-style): rows are sorted by length, descending, once per call, so the rows active
// at time position t are always a prefix [0, active[t]) of the sorted batch -- in both
// directions, because a row is active at position t iff its length > t. Everything inside the
// time loop is time-major: [T, B, *].
//
// Shapes: B batch, T time, I input, C cell, P projection.
//   x [B, T, I], lengths int64 [B], w_in [4C, I], w_rec [4C, P], bias [4C], w_proj [P, C],
//   h0 [B, P], c0 [B, C]. Gate blocks in PyTorch order i, f, g, o. A clip of 0 means no clip.
//
// Forward returns (out [B, T, P], h_n [B, P], c_n [B, C]) and, when save_cache, the cache that
// backward reads (time-major, sorted rows, zeros at inactive rows):
//   gates [T, B, 4C]  post-activation i, f, g, o
//   c_raw [T, B, C]   the cell state BEFORE its clip (the clip's gradient mask comes from it)
//   m     [T, B, C]   o * tanh(clip(c)), the projection's input
//   h_raw [T, B, P]   the projection BEFORE its clip
//   h_prev[T, B, P]   the recurrent GEMM's input at each step
// Caching costs (4C + 2C + 2P) floats per token; recomputing gates instead would save 4C of it at
// the price of a second recurrent GEMM per step in backward, which is the dominant cost here.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace elmo_fast {
namespace lstm_proj {

struct Plan {
  at::Tensor perm;      // int64 [B] on the data's device: sorted position -> original row
  at::Tensor inv_perm;  // int64 [B]: original row -> sorted position
  std::vector<int64_t> sorted_len;  // [B] descending
  std::vector<int64_t> active;      // [T] rows with length > t
};

// Stable descending sort of the lengths (host side: B integers, one sync per call on a GPU).
// Inline because the CPU and CUDA extensions are separate shared objects.
inline Plan make_plan(const at::Tensor& lengths, int64_t T, const at::Device& device) {
  auto len = lengths.to(at::kCPU, at::kLong).contiguous();
  const int64_t B = len.numel();
  const int64_t* lp = len.data_ptr<int64_t>();
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lp[a] > lp[b]; });
  Plan plan;
  plan.sorted_len.resize(B);
  std::vector<int64_t> inv(B);
  for (int64_t k = 0; k < B; ++k) {
    plan.sorted_len[k] = lp[order[k]];
    inv[order[k]] = k;
  }
  plan.active.assign(T, 0);
  for (int64_t t = 0, n = B; t < T; ++t) {
    while (n > 0 && plan.sorted_len[n - 1] <= t) --n;
    plan.active[t] = n;
  }
  auto opts = at::TensorOptions().dtype(at::kLong);
  plan.perm = at::from_blob(order.data(), {B}, opts).clone().to(device);
  plan.inv_perm = at::from_blob(inv.data(), {B}, opts).clone().to(device);
  return plan;
}

// The Python wrapper validates first with friendlier messages; these guard direct torch.ops calls.
// bf16_weights: the bf16-GEMM inference op also takes w_in / w_rec / w_proj already in bf16 (the
// caller caches the converted copies instead of converting ~19M weights on every call).
inline void check_args(const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& w_in, const at::Tensor& w_rec,
                       const at::Tensor& bias, const at::Tensor& w_proj, const at::Tensor& h0, const at::Tensor& c0,
                       bool bf16_weights = false) {
  TORCH_CHECK(x.dim() == 3, "lstm_proj: x must be [B, T, I], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(1) == I && w_in.size(0) % 4 == 0, "lstm_proj: w_in must be [4C, ", I,
              "], got ", w_in.sizes());
  const int64_t C = w_in.size(0) / 4;
  TORCH_CHECK(w_proj.dim() == 2 && w_proj.size(1) == C, "lstm_proj: w_proj must be [P, ", C, "], got ", w_proj.sizes());
  const int64_t P = w_proj.size(0);
  TORCH_CHECK(w_rec.dim() == 2 && w_rec.size(0) == 4 * C && w_rec.size(1) == P, "lstm_proj: w_rec must be [", 4 * C,
              ", ", P, "], got ", w_rec.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == 4 * C, "lstm_proj: bias must be [", 4 * C, "], got ", bias.sizes());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "lstm_proj: lengths must be [", B, "], got ", lengths.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == P, "lstm_proj: h0 must be [", B, ", ", P, "], got ",
              h0.sizes());
  TORCH_CHECK(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == C, "lstm_proj: c0 must be [", B, ", ", C, "], got ",
              c0.sizes());
  for (const at::Tensor* t : {&w_in, &w_rec, &bias, &w_proj, &h0, &c0}) {
    const bool gemm_weight = t == &w_in || t == &w_rec || t == &w_proj;
    TORCH_CHECK(t->scalar_type() == x.scalar_type() || (bf16_weights && gemm_weight && t->scalar_type() == at::kBFloat16),
                "lstm_proj: every weight and state must have x's dtype ", x.scalar_type(), ", got ", t->scalar_type(),
                " (cast them with .to(x.dtype))");
    TORCH_CHECK(t->device() == x.device(), "lstm_proj: every weight and state must be on x's device ", x.device(),
                ", got ", t->device());
  }
  (void)T;
}

// The CPU time loops (lstm_proj_cpu.cpp); the vectors hold the ops' outputs in schema order.
// w_*_packed: gemm::pack(w.t()) or gemm::pack_bf16(w.t()) of w_in, w_rec, w_proj (fp32 x only);
// undefined ones are packed per call in fp32.
std::vector<at::Tensor> lstm_proj_fwd_cpu(const at::Tensor& x, const at::Tensor& lengths, const at::Tensor& w_in,
                                          const at::Tensor& w_rec, const at::Tensor& bias, const at::Tensor& w_proj,
                                          const at::Tensor& h0, const at::Tensor& c0, double cell_clip,
                                          double proj_clip, bool reverse, bool save_cache,
                                          at::Tensor w_in_packed = {}, at::Tensor w_rec_packed = {},
                                          at::Tensor w_proj_packed = {});
std::vector<at::Tensor> lstm_proj_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                          const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& lengths,
                                          const at::Tensor& w_in, const at::Tensor& w_rec, const at::Tensor& w_proj,
                                          const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& gates,
                                          const at::Tensor& c_raw, const at::Tensor& m, const at::Tensor& h_raw,
                                          const at::Tensor& h_prev, double cell_clip, double proj_clip, bool reverse);

}  // namespace lstm_proj
}  // namespace elmo_fast
