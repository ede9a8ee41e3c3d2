// Both directions of one LSTM layer at once, one direction per thread (the lstm_proj_{fwd,bwd}_pair
// ops): the CPU kernels of lstm_proj_cpu.cpp, run as two tasks. ops/lstm_proj/plan.py decides when.
#include "lstm_proj/lstm_proj.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <optional>
#include <vector>

namespace elmo_fast {
namespace lstm_proj {
namespace {

// Both directions of one layer at once, one per thread: args[d] is (x, lengths, w_in, w_rec, bias,
// w_proj, h0, c0, w_in_packed, w_rec_packed, w_proj_packed) of direction d (0 forward, 1 reverse; the
// packed weights may be undefined), returns (out, h_n, c_n, gates, c_raw, m, h_raw, h_prev) per
// direction. Within a task every parallel_for of the GEMMs runs inline on that task's thread, so
// with 2 threads the per-step GEMMs are no longer split and joined at every step: at the 'tiny'
// and 'small' sizes a step's GEMM is a few MFLOP and the split scaled 1.28x on 2 threads.
// ThreadLocalState carries the caller's dispatch state (below autograd) into the worker thread.
template <typename Fn>
std::vector<std::vector<at::Tensor>> per_direction(Fn&& run) {
  std::vector<std::vector<at::Tensor>> r(2);
  at::ThreadLocalState state;
  at::parallel_for(0, 2, 1, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t d = b; d < e; ++d) r[d] = run(d);
  });
  return r;
}

std::vector<std::vector<at::Tensor>> fwd_pair_op(const std::vector<std::optional<at::Tensor>>& fwd,
                                                 const std::vector<std::optional<at::Tensor>>& bwd, double cell_clip,
                                                 double proj_clip, bool save_cache) {
  TORCH_CHECK(fwd.size() == 11 && bwd.size() == 11,
              "lstm_proj_fwd_pair: expects 11 tensors per direction (x, lengths, w_in, w_rec, bias, w_proj, h0, c0, "
              "and the 3 packed weights or None), got ", fwd.size(), " and ", bwd.size());
  const std::vector<std::optional<at::Tensor>>* args[2] = {&fwd, &bwd};
  for (int d = 0; d < 2; ++d)
    for (int i = 0; i < 8; ++i)
      TORCH_CHECK((*args[d])[i].has_value(), "lstm_proj_fwd_pair: argument ", i, " of direction ", d, " is None");
  return per_direction([&](int64_t d) {
    const auto& a = *args[d];
    auto t = [&](int i) { return a[i].has_value() ? a[i]->contiguous() : at::Tensor(); };
    return lstm_proj_fwd_cpu(t(0), *a[1], t(2), t(3), t(4), t(5), *a[6], *a[7], cell_clip, proj_clip, d == 1,
                             save_cache, t(8), t(9), t(10));
  });
}

// args[d] = (grad_out, grad_hn, grad_cn, x, lengths, w_in, w_rec, w_proj, h0, c0, gates, c_raw, m, h_raw,
// h_prev) of direction d; returns (dx, dw_in, dw_rec, dbias, dw_proj, dh0, dc0) per direction.
std::vector<std::vector<at::Tensor>> bwd_pair_op(const std::vector<at::Tensor>& fwd, const std::vector<at::Tensor>& bwd,
                                                 double cell_clip, double proj_clip) {
  TORCH_CHECK(fwd.size() == 15 && bwd.size() == 15, "lstm_proj_bwd_pair: expects 15 tensors per direction, got ",
              fwd.size(), " and ", bwd.size());
  const std::vector<at::Tensor>* args[2] = {&fwd, &bwd};
  return per_direction([&](int64_t d) {
    const auto& a = *args[d];
    return lstm_proj_bwd_cpu(a[0], a[1], a[2], a[3].contiguous(), a[4], a[5].contiguous(), a[6].contiguous(),
                             a[7].contiguous(), a[8], a[9], a[10], a[11], a[12], a[13], a[14], cell_clip, proj_clip,
                             d == 1);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("lstm_proj_fwd_pair", &fwd_pair_op);
  m.impl("lstm_proj_bwd_pair", &bwd_pair_op);
}

}  // namespace lstm_proj
}  // namespace elmo_fast
