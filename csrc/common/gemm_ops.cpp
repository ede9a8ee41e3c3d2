// The packed-weight GEMM (packed_gemm.h) as ops of its own, for the Python side: `gemm_pack` builds
// the packed copy (cached per weight version by elmo_fast/ops/weight_copies.py) and `packed_linear`
// is F.linear against it. The char CNN's highway and projection layers use it at inference, where
// the weight stays the same across calls: MKL re-packs a weight inside every sgemm call, and on
// 2 threads its GEMM at the highway's shape (362 x 2048 -> 4096) scaled to ~1.5x only.
#include "common/no_autograd.h"
#include "common/packed_gemm.h"

#include <torch/extension.h>

namespace elmo_fast {
namespace gemm {
namespace {

at::Tensor gemm_pack_op(const at::Tensor& b) { return pack(b); }

at::Tensor gemm_pack_bf16_op(const at::Tensor& b) { return pack_bf16(b); }

// y[M, n] = x[M, K] @ B + bias, B = packed [ceil(n / 16), K, 16] (fp32, from gemm_pack) or
// [ceil(n / 16), ceil(K / 2), 32] (bf16, from gemm_pack_bf16: x rounded to bf16, fp32 sums and y).
at::Tensor packed_linear_op(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                            int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "packed_linear: x must be a float32 CPU matrix [M, K], got ", x.scalar_type(), " ", x.sizes(), " on ",
              x.device());
  TORCH_CHECK((packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kBFloat16) && packed.device().is_cpu(),
              "packed_linear: the packed weight must be a CPU tensor from gemm_pack (float32) or gemm_pack_bf16 "
              "(bfloat16), got ", packed.scalar_type(), " on ", packed.device());
  const auto xc = x.contiguous();
  const auto pc = packed.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  auto y = at::empty({M, n}, x.options());
  bool accumulate = false;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->scalar_type() == at::kFloat,
                "packed_linear: bias must be float32 [", n, "], got ", bias->scalar_type(), " ", bias->sizes());
    y.copy_(bias->unsqueeze(0).expand({M, n}));
    accumulate = true;
  }
  gemm(xc.data_ptr<float>(), M, K, K, pc, n, y.data_ptr<float>(), n, accumulate);
  return y;
}

// The packed GEMM's micro-kernels: returns the level in use (avx2 | avx512 | avx512bf16, see isa_flag);
// with a name, switches to it first.
std::string gemm_isa_op(c10::string_view name) {
  if (!name.empty()) set_isa(std::string(name));
  return isa();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def("gemm_pack(Tensor b) -> Tensor");
  m.def("gemm_pack_bf16(Tensor b) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor? bias, int n) -> Tensor");
  m.def("gemm_isa(str name=\"\") -> str");
  m.impl("gemm_isa", &gemm_isa_op);
}

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("gemm_pack", &gemm_pack_op);
  m.impl("gemm_pack_bf16", &gemm_pack_bf16_op);
  m.impl("packed_linear", &packed_linear_op);
}

TORCH_LIBRARY_IMPL(elmo_fast, Autograd, m) {
  // the packed GEMMs serve inference only (the plans never pick them when a gradient is needed)
  m.impl("gemm_pack", no_autograd("torch.nn.functional.linear"));
  m.impl("gemm_pack_bf16", no_autograd("torch.nn.functional.linear"));
  m.impl("packed_linear", no_autograd("torch.nn.functional.linear"));
}

}  // namespace gemm
}  // namespace elmo_fast
