// The schemas of the LSTM-with-projection ops; their kernels: lstm_proj_cpu.cpp and pair.cpp
// (CPU), lstm_proj_kernels.cu (CUDA, in _C_cuda); their fakes: elmo_fast/ops/lstm_proj/registration.py.
#include <torch/library.h>

#include "common/no_autograd.h"

namespace elmo_fast {
namespace lstm_proj {

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def(
      "lstm_proj_fwd(Tensor x, Tensor lengths, Tensor w_in, Tensor w_rec, Tensor bias, Tensor w_proj, Tensor h0, "
      "Tensor c0, float cell_clip, float proj_clip, bool reverse, bool save_cache) -> (Tensor out, Tensor h_n, "
      "Tensor c_n, Tensor gates, Tensor c_raw, Tensor m, Tensor h_raw, Tensor h_prev)");
  m.def(
      "lstm_proj_bwd(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor lengths, Tensor w_in, "
      "Tensor w_rec, Tensor w_proj, Tensor h0, Tensor c0, Tensor gates, Tensor c_raw, Tensor m, Tensor h_raw, "
      "Tensor h_prev, float cell_clip, float proj_clip, bool reverse) -> (Tensor dx, Tensor dw_in, Tensor dw_rec, "
      "Tensor dbias, Tensor dw_proj, Tensor dh0, Tensor dc0)");
  m.def(
      "lstm_proj_fwd_packed(Tensor x, Tensor lengths, Tensor w_in, Tensor w_rec, Tensor bias, Tensor w_proj, "
      "Tensor h0, Tensor c0, Tensor w_in_packed, Tensor w_rec_packed, Tensor w_proj_packed, float cell_clip, "
      "float proj_clip, "
      "bool reverse, bool save_cache) -> (Tensor out, Tensor h_n, Tensor c_n, Tensor gates, Tensor c_raw, "
      "Tensor m, Tensor h_raw, Tensor h_prev)");
  m.def(
      "lstm_proj_fwd_pair(Tensor?[] fwd, Tensor?[] bwd, float cell_clip, float proj_clip, bool save_cache) -> "
      "Tensor[][]");
  m.def("lstm_proj_bwd_pair(Tensor[] fwd, Tensor[] bwd, float cell_clip, float proj_clip) -> Tensor[][]");
  m.def(
      "lstm_proj_fwd_bf16(Tensor x, Tensor lengths, Tensor w_in, Tensor w_rec, Tensor bias, Tensor w_proj, "
      "Tensor h0, Tensor c0, float cell_clip, float proj_clip, bool reverse) -> (Tensor out, Tensor h_n, Tensor c_n)");
}

// Their autograd: LstmProjFunction / LstmProjPairFunction (elmo_fast/ops/lstm_proj/function.py).
TORCH_LIBRARY_IMPL(elmo_fast, Autograd, m) {
  for (const char* op : {"lstm_proj_fwd", "lstm_proj_bwd", "lstm_proj_fwd_packed", "lstm_proj_fwd_bf16"}) {
    m.impl(op, no_autograd("elmo_fast.ops.lstm_proj.lstm_proj"));
  }
  for (const char* op : {"lstm_proj_fwd_pair", "lstm_proj_bwd_pair"}) {
    m.impl(op, no_autograd("elmo_fast.ops.lstm_proj.lstm_proj_pair"));
  }
}

}  // namespace lstm_proj
}  // namespace elmo_fast
