// CUDA kernels of the fused character CNN (gather -> conv of each width -> max over positions ->
// activation) and of its argmax backward; registered as the CUDA implementation of the ops that
// csrc/char_cnn/char_cnn.cpp defines (torch.ops.elmo_fast.char_cnn_conv_max[_backward]).
//
// Shapes as in char_cnn.cpp: char_ids int64 [N, W], embedding [V, E], weights[i] [F_i, E, w_i],
// biases[i] [F_i] -> features [N, F], argmax int32 [N, F]. fp32/fp64/fp16/bf16 inputs; fp32
// accumulation (fp64 for fp64).
//
// Forward: one block per (kTN tokens, kTF filters) of one width. The tokens' embedding rows and the
// [w * E, kTF] weight panel are staged in shared memory; thread (tx, ty) owns filter tx of token ty
// and walks the positions 0..min(L, W - w) (L = start of the token's trailing run of one repeated
// id; later windows repeat that one bit for bit), keeping a running max and its position. The
// per-position conv outputs never leave registers.
// Backward: the character-table formulation of char_cnn.cpp. One thread per (token, filter) forms
// d_pre = grad * act'(y), adds it into the bias gradient (a block-level partial sum, one atomic per
// filter and block) and scatters it into S[f, j, ids[n, argmax + j]], the gradient of a [F_i, w, V]
// character table, for every tap j; then two small cuBLAS GEMMs: d_weight[f, :, j] = S[f, j] @ emb
// and d_embedding += sum_{f, j} S[f, j]^T w[f, :, j]. That is N * F * w atomics (none where d_pre is
// 0) spread over F * w * V cells, where scattering straight into d_embedding costs E times more on
// only V * E cells, and every block owns a 2-D tile of (tokens, filters), so the grid is wide.
// Lean includes (no torch/extension.h): this file needs no Python and compiles much faster.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_math.cuh"

#include <vector>

namespace elmo_fast {
namespace {

constexpr int kTN = 4;   // tokens per block (threadIdx.y)
constexpr int kTF = 64;  // filters per block (threadIdx.x)

using cuda_math::Acc;
using cuda_math::tanh_;

template <typename scalar_t>
__global__ void char_cnn_fwd_kernel(const int64_t* __restrict__ ids, const int32_t* __restrict__ tails,
                                    const scalar_t* __restrict__ emb, const scalar_t* __restrict__ weight /*[F_i,E,w]*/,
                                    const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                    int32_t* __restrict__ amax, int64_t N, int F_i, int F_total, int col, int W, int E,
                                    int width, bool relu) {
  using acc_t = typename Acc<scalar_t>::type;
  extern __shared__ unsigned char smem_raw[];
  acc_t* xs = reinterpret_cast<acc_t*>(smem_raw);  // [kTN][W][E]
  acc_t* ws = xs + kTN * W * E;                     // [w * E][kTF], k = j * E + e
  const int K = width * E;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTF + tx;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTN;
  const int f0 = blockIdx.y * kTF;
  for (int idx = tid; idx < kTN * W * E; idx += kTN * kTF) {
    const int t = idx / (W * E), p = (idx / E) % W, e = idx % E;
    const int64_t n = n0 + t;
    xs[idx] = n < N ? static_cast<acc_t>(emb[ids[n * W + p] * E + e]) : acc_t(0);
  }
  for (int idx = tid; idx < K * kTF; idx += kTN * kTF) {
    const int k = idx / kTF, f = f0 + idx % kTF, j = k / E, e = k % E;
    ws[idx] = f < F_i ? static_cast<acc_t>(weight[(static_cast<int64_t>(f) * E + e) * width + j]) : acc_t(0);
  }
  __syncthreads();
  const int64_t n = n0 + ty;
  const int f = f0 + tx;
  if (n >= N || f >= F_i) return;
  const int last = min(tails[n], W - width);
  const acc_t* x = xs + ty * W * E;
  acc_t best = -INFINITY;
  int best_at = 0;
  for (int p = 0; p <= last; ++p) {
    acc_t acc = 0;
    const acc_t* xp = x + p * E;  // the window is contiguous: w rows of E
    for (int k = 0; k < K; ++k) acc += xp[k] * ws[k * kTF + tx];
    // strict: the first maximum wins, like torch.max, and so does the first NaN (torch.max
    // propagates it; `acc > best` alone would hide a diverged weight)
    if (acc > best || (acc != acc && best == best)) {
      best = acc;
      best_at = p;
    }
  }
  const acc_t pre = best + static_cast<acc_t>(bias[f]);
  const acc_t y = relu ? (pre < acc_t(0) ? acc_t(0) : pre) : tanh_(pre);  // relu keeps NaN, as torch.relu
  out[n * F_total + col + f] = static_cast<scalar_t>(y);
  amax[n * F_total + col + f] = best_at;
}

constexpr int kSF = 32;   // filters per scatter block (threadIdx.x)
constexpr int kSR = 8;    // token rows per scatter block (threadIdx.y)
constexpr int kSN = 64;   // tokens per scatter block

template <typename scalar_t>
__global__ void char_cnn_bwd_scatter_kernel(const int64_t* __restrict__ ids, const scalar_t* __restrict__ grad,
                                            const scalar_t* __restrict__ feats, const int32_t* __restrict__ amax,
                                            typename Acc<scalar_t>::type* __restrict__ table /*[F_i, w, V]*/,
                                            typename Acc<scalar_t>::type* __restrict__ db, int64_t N, int F_i,
                                            int F_total, int col, int W, int V, int width, bool relu) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ acc_t part[kSR][kSF];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int f = blockIdx.y * kSF + tx;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSN;
  const int64_t n1 = n0 + kSN < N ? n0 + kSN : N;
  acc_t bsum = 0;
  if (f < F_i) {
    acc_t* cells = table + static_cast<int64_t>(f) * width * V;
    for (int64_t n = n0 + ty; n < n1; n += kSR) {
      const int64_t at = n * F_total + col + f;  // consecutive f: coalesced
      const acc_t g = static_cast<acc_t>(grad[at]), y = static_cast<acc_t>(feats[at]);
      const acc_t d = relu ? (y > acc_t(0) ? g : acc_t(0)) : g * (acc_t(1) - y * y);
      if (d == acc_t(0)) continue;  // relu-inactive filters: about half of them
      bsum += d;
      const int64_t* c = ids + n * W + amax[at];
      for (int j = 0; j < width; ++j) atomicAdd(cells + static_cast<int64_t>(j) * V + c[j], d);
    }
  }
  part[ty][tx] = bsum;
  __syncthreads();
  if (ty == 0 && f < F_i) {
    acc_t s = 0;
    for (int r = 0; r < kSR; ++r) s += part[r][tx];
    atomicAdd(db + f, s);
  }
}

at::Tensor tail_starts(const at::Tensor& ids) {
  // Trailing run of one repeated id: count trailing positions equal to the last id.
  auto same = ids.eq(ids.narrow(1, ids.size(1) - 1, 1)).flip({1}).to(at::kInt).cumprod(1).sum(1);
  return (ids.size(1) - same).to(at::kInt).contiguous();
}

void check_cuda(const at::Tensor& char_ids, const at::Tensor& embedding, at::TensorList weights) {
  TORCH_CHECK(char_ids.is_cuda() && embedding.is_cuda() && char_ids.device() == embedding.device(),
              "char_cnn (cuda backend): char_ids and the embedding must be on one CUDA device");
  TORCH_CHECK(char_ids.dim() == 2 && char_ids.scalar_type() == at::kLong, "char_cnn: char_ids must be int64 [N, W]");
  TORCH_CHECK(embedding.dim() == 2, "char_cnn: embedding must be [V, E]");
  for (const auto& w : weights)
    TORCH_CHECK(w.dim() == 3 && w.size(1) == embedding.size(1) && w.size(2) <= char_ids.size(1) &&
                    w.size(0) > 0 && w.size(2) > 0 && w.scalar_type() == embedding.scalar_type() &&
                    w.device() == embedding.device(),
                "char_cnn: each conv weight must be [F_i >= 1, E, 1 <= w_i <= W] on the embedding's device and dtype, got ",
                w.sizes());
}

std::tuple<at::Tensor, at::Tensor> char_cnn_conv_max_cuda(const at::Tensor& char_ids, const at::Tensor& embedding,
                                                          at::TensorList weights, at::TensorList biases,
                                                          c10::string_view activation) {
  TORCH_CHECK(activation == "relu" || activation == "tanh", "char_cnn: activation must be 'relu' or 'tanh'");
  check_cuda(char_ids, embedding, weights);
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(), "char_cnn: weights and biases must pair up");
  const c10::cuda::CUDAGuard guard(embedding.device());
  const int64_t N = char_ids.size(0), W = char_ids.size(1), E = embedding.size(1);
  int64_t F_total = 0;
  for (const auto& b : biases) F_total += b.size(0);
  auto out = at::empty({N, F_total}, embedding.options());
  auto amax = at::empty({N, F_total}, embedding.options().dtype(at::kInt));
  if (N == 0) return {out, amax};
  auto ids = char_ids.contiguous();
  auto tails = tail_starts(ids);
  auto emb = embedding.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  int col = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    auto w = weights[i].contiguous();
    auto b = biases[i].contiguous();
    const int F_i = static_cast<int>(w.size(0)), width = static_cast<int>(w.size(2));
    // The kernel reads F_i biases through a raw device pointer: a short or host-side bias would be
    // an out-of-bounds / illegal-address read rather than an error.
    TORCH_CHECK(b.dim() == 1 && b.size(0) == F_i && b.scalar_type() == emb.scalar_type() && b.device() == emb.device(),
                "char_cnn: bias ", i, " must be [", F_i, "] on the embedding's device and dtype, got ", b.sizes());
    const dim3 grid(static_cast<unsigned>((N + kTN - 1) / kTN), static_cast<unsigned>((F_i + kTF - 1) / kTF));
    const dim3 block(kTF, kTN);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "char_cnn_fwd_cuda", [&] {
      using acc_t = typename Acc<scalar_t>::type;
      const size_t smem = (kTN * W * E + width * E * kTF) * sizeof(acc_t);
      if (smem > 48 * 1024)  // fp64 panels of wide filters: opt in to more than the default 48 KiB
        C10_CUDA_CHECK(cudaFuncSetAttribute(char_cnn_fwd_kernel<scalar_t>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      char_cnn_fwd_kernel<scalar_t><<<grid, block, smem, stream>>>(
          ids.data_ptr<int64_t>(), tails.data_ptr<int32_t>(), emb.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
          b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), amax.data_ptr<int32_t>(), N, F_i,
          static_cast<int>(F_total), col, static_cast<int>(W), static_cast<int>(E), width, activation == "relu");
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    col += F_i;
  }
  return {out, amax};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> char_cnn_conv_max_backward_cuda(
    const at::Tensor& grad, const at::Tensor& char_ids, const at::Tensor& embedding, at::TensorList weights,
    const at::Tensor& features, const at::Tensor& argmax, c10::string_view activation) {
  TORCH_CHECK(activation == "relu" || activation == "tanh", "char_cnn: activation must be 'relu' or 'tanh'");
  check_cuda(char_ids, embedding, weights);
  const c10::cuda::CUDAGuard guard(embedding.device());
  const int64_t N = char_ids.size(0), W = char_ids.size(1), V = embedding.size(0), E = embedding.size(1);
  TORCH_CHECK(features.dim() == 2 && features.size(0) == N && features.scalar_type() == embedding.scalar_type() &&
                  features.device() == embedding.device(),
              "char_cnn backward: features must be [N, F] in the embedding's dtype, on its device; got ",
              features.sizes(), " ", features.scalar_type());
  TORCH_CHECK(grad.sizes() == features.sizes() && grad.device() == embedding.device(),
              "char_cnn backward: grad must match the features' shape ", features.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.sizes() == features.sizes() && argmax.device() == embedding.device(),
              "char_cnn backward: argmax must be int32 [N, F] like the features, on the embedding's device");
  auto g = grad.to(features.scalar_type()).contiguous();
  auto y = features.contiguous();
  auto am = argmax.contiguous();
  auto ids = char_ids.contiguous();
  auto emb = embedding.contiguous();
  const auto acc_type = emb.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = emb.options().dtype(acc_type);
  auto emb_acc = emb.to(acc_type);
  auto demb = at::zeros(emb.sizes(), acc_opts);
  const int F_total = static_cast<int>(features.size(1));
  auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> gw, gb;
  int col = 0;
  for (const auto& w_in : weights) {
    auto w = w_in.contiguous();
    const int F_i = static_cast<int>(w.size(0)), width = static_cast<int>(w.size(2));
    TORCH_CHECK(col + F_i <= F_total, "char_cnn backward: the weights have more filters than the features' ", F_total,
                " columns");
    auto table = at::zeros({F_i, width, V}, acc_opts);
    auto db = at::zeros({F_i}, acc_opts);
    if (N > 0) {
      const dim3 grid(static_cast<unsigned>((N + kSN - 1) / kSN), static_cast<unsigned>((F_i + kSF - 1) / kSF));
      const dim3 block(kSF, kSR);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, emb.scalar_type(), "char_cnn_bwd_cuda", [&] {
        using acc_t = typename Acc<scalar_t>::type;
        char_cnn_bwd_scatter_kernel<scalar_t><<<grid, block, 0, stream>>>(
            ids.data_ptr<int64_t>(), g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), am.data_ptr<int32_t>(),
            table.data_ptr<acc_t>(), db.data_ptr<acc_t>(), N, F_i, F_total, col, static_cast<int>(W),
            static_cast<int>(V), width, activation == "relu");
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    auto flat = table.view({F_i * width, V});
    auto dw = at::matmul(flat, emb_acc).view({F_i, width, E});  // [F_i, w, E]
    demb.addmm_(flat.t(), w.to(acc_type).permute({0, 2, 1}).reshape({F_i * width, E}));
    // The Conv1d layout is [F_i, E, w].
    gw.push_back(dw.permute({0, 2, 1}).contiguous().to(w.scalar_type()));
    gb.push_back(db.to(w.scalar_type()));
    col += F_i;
  }
  return {demb.to(emb.scalar_type()), gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(elmo_fast, CUDA, m) {
  m.impl("char_cnn_conv_max", &char_cnn_conv_max_cuda);
  m.impl("char_cnn_conv_max_backward", &char_cnn_conv_max_backward_cuda);
}

}  // namespace elmo_fast
