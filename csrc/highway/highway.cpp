// The highway layer's pointwise part on the CPU, fused: one pass instead of ATen's chunk, sigmoid,
// relu, two products and a sum (five passes over [N, F] and four temporaries, which measured 3-6 ms
// per 'small' layer next to a 35-70 ms GEMM). The GEMM itself stays in ATen
// (elmo_fast/ops/char_cnn/function.py: HighwayFunction).
//
// Shapes: z [N, 2F] = x @ W^T WITHOUT the bias (the bias add is folded in here), bias [2F], x [N, F].
//   n = z[:, :F] + bias[:F],  g = sigmoid(z[:, F:] + bias[F:])
//   y = g * x + (1 - g) * relu(n)
// Backward (dy [N, F]) returns dz [N, 2F] (the gradient of the biased pre-activations, so
// d_bias = dz.sum(0), dW = dz^T x, dx = dz W + dy * g) and dx_direct = dy * g.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "common/fast_math.h"
#include "common/no_autograd.h"
#include "common/parallel.h"

namespace elmo_fast {
namespace {

using fast_math::sigmoid;

template <typename T>
__attribute__((noinline)) void row_fwd(const T* __restrict zn, const T* __restrict zg, const T* __restrict bn,
                                       const T* __restrict bg, const T* __restrict x, T* __restrict y, int64_t F) {
  for (int64_t j = 0; j < F; ++j) {
    const T g = sigmoid(zg[j] + bg[j]);
    const T r = std::max(zn[j] + bn[j], T(0));
    y[j] = g * x[j] + (T(1) - g) * r;
  }
}

template <typename T>
__attribute__((noinline)) void row_bwd(const T* __restrict zn, const T* __restrict zg, const T* __restrict bn,
                                       const T* __restrict bg, const T* __restrict x, const T* __restrict dy,
                                       T* __restrict dn, T* __restrict dg, T* __restrict dx, int64_t F) {
  for (int64_t j = 0; j < F; ++j) {
    const T g = sigmoid(zg[j] + bg[j]);
    const T n = zn[j] + bn[j];
    const T r = std::max(n, T(0));
    const T d = dy[j];
    dn[j] = n > T(0) ? d * (T(1) - g) : T(0);  // relu'(0) = 0, as torch.relu's backward
    dg[j] = d * (x[j] - r) * g * (T(1) - g);
    dx[j] = d * g;
  }
}

void check(const at::Tensor& z, const at::Tensor& bias, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && z.dim() == 2 && z.size(0) == x.size(0) && z.size(1) == 2 * x.size(1),
              "highway_gate: z must be [N, 2F] for x [N, F], got z ", z.sizes(), " and x ", x.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == z.size(1), "highway_gate: bias must be [", z.size(1), "], got ",
              bias.sizes());
  TORCH_CHECK(z.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(),
              "highway_gate: z, bias and x must share one dtype, got ", z.scalar_type(), ", ", bias.scalar_type(), ", ",
              x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && z.device().is_cpu() && bias.device().is_cpu(),
              "highway_gate (cpp backend): tensors must be on the CPU");
}

at::Tensor highway_gate(const at::Tensor& z_, const at::Tensor& bias_, const at::Tensor& x_) {
  check(z_, bias_, x_);
  auto z = z_.contiguous(), bias = bias_.contiguous(), x = x_.contiguous();
  const int64_t N = x.size(0), F = x.size(1);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "highway_gate", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(F), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        row_fwd<scalar_t>(zp + r * 2 * F, zp + r * 2 * F + F, bp, bp + F, xp + r * F, yp + r * F, F);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> highway_gate_backward(const at::Tensor& dy_, const at::Tensor& z_,
                                                         const at::Tensor& bias_, const at::Tensor& x_) {
  check(z_, bias_, x_);
  TORCH_CHECK(dy_.sizes() == x_.sizes() && dy_.scalar_type() == x_.scalar_type(),
              "highway_gate_backward: dy must match x ", x_.sizes(), ", got ", dy_.sizes());
  auto z = z_.contiguous(), bias = bias_.contiguous(), x = x_.contiguous(), dy = dy_.contiguous();
  const int64_t N = x.size(0), F = x.size(1);
  auto dz = at::empty_like(z);
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "highway_gate_backward", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, N, row_grain(F), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        row_bwd<scalar_t>(zp + r * 2 * F, zp + r * 2 * F + F, bp, bp + F, xp + r * F, dyp + r * F, dzp + r * 2 * F,
                          dzp + r * 2 * F + F, dxp + r * F, F);
    });
  });
  return {dz, dx};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def("highway_gate(Tensor z, Tensor bias, Tensor x) -> Tensor");
  m.def("highway_gate_backward(Tensor dy, Tensor z, Tensor bias, Tensor x) -> (Tensor dz, Tensor dx)");
}

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("highway_gate", &highway_gate);
  m.impl("highway_gate_backward", &highway_gate_backward);
}

TORCH_LIBRARY_IMPL(elmo_fast, Autograd, m) {
  m.impl("highway_gate", no_autograd("elmo_fast.ops.highway.highway"));
  m.impl("highway_gate_backward", no_autograd("elmo_fast.ops.highway.highway"));
}

}  // namespace elmo_fast
