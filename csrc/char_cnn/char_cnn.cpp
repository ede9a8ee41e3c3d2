// Fused character CNN (embedding gather -> every filter width's conv -> max over positions ->
// activation) on the CPU, forward and backward. Highway layers and the projection are plain GEMMs
// and stay in ATen (see elmo_fast/ops/char_cnn/function.py).
//
// Shapes (N tokens, W characters per token, V = 262 char ids, E embedding dim, F = sum_i F_i):
//   char_ids   int64 [N, W]
//   embedding        [V, E]
//   weights[i]       [F_i, E, w_i]   (PyTorch Conv1d layout)
//   biases[i]        [F_i]
//   -> features      [N, F]  activation(max_p conv_i(x)[p] + b_i), filters concatenated in order
//   -> argmax  int32 [N, F]  the position p that won the max; backward routes gradients through it
//
// The per-position conv outputs ([N, F, W - w + 1]) are never materialised: each micro-tile of
// 6 windows x 16 filters lives in registers and is folded into a running max at once.
//
// Trailing-run shortcut (exact, not an approximation): a token is a few real characters followed by
// one id repeated to the end (padding char 261, or 0 for an all-padding token). Every window that
// lies entirely inside that run sees the same inputs, so it has the same value bit for bit as the
// first such window. We therefore evaluate positions 0..L only (L = start of the run), which cuts
// the work for a 5-letter word by ~6x versus all 44 positions of the width-7 filters. Ties between
// identical windows route the gradient to the same embedding rows and weights whichever wins.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

namespace elmo_fast {
namespace {

constexpr int64_t kFB = 16;  // filters per micro-tile: two AVX2 vectors of fp32
constexpr int kPB = 6;       // windows per micro-tile (6 x 2 accumulators + 2 weight vectors: 14 of 16 ymm)
constexpr int64_t kTB = 32;  // tokens per work unit

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// First position of the trailing run of one repeated id (0 for an all-padding token).
inline int64_t tail_start(const int64_t* ids, int64_t W) {
  int64_t L = W - 1;
  while (L > 0 && ids[L - 1] == ids[W - 1]) --L;
  return L;
}

void check_inputs(const at::Tensor& char_ids, const at::Tensor& embedding, at::TensorList weights,
                  at::TensorList biases, bool with_biases = true) {
  TORCH_CHECK(char_ids.dim() == 2 && char_ids.scalar_type() == at::kLong,
              "char_cnn: char_ids must be int64 [N, W] (from batch_to_ids), got ", char_ids.scalar_type(), " ",
              char_ids.sizes());
  TORCH_CHECK(embedding.dim() == 2 && embedding.is_floating_point(), "char_cnn: embedding must be a float [V, E] table");
  TORCH_CHECK(char_ids.device().is_cpu() && embedding.device().is_cpu(),
              "char_cnn (cpp backend): tensors must be on the CPU; use backend='cuda' or 'triton' for GPU tensors");
  TORCH_CHECK(!weights.empty() && (!with_biases || weights.size() == biases.size()),
              "char_cnn: weights and biases must be non-empty lists of equal length");
  const int64_t E = embedding.size(1), W = char_ids.size(1);
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(weights[i].dim() == 3 && weights[i].size(1) == E && weights[i].size(2) <= W && weights[i].size(2) >= 1,
                "char_cnn: conv weight ", i, " must be [F_i, ", E, ", w_i] with 1 <= w_i <= ", W, ", got ",
                weights[i].sizes());
    TORCH_CHECK(weights[i].scalar_type() == embedding.scalar_type(),
                "char_cnn: all weights must share the embedding's dtype ", embedding.scalar_type());
    if (!with_biases) continue;
    TORCH_CHECK(biases[i].dim() == 1 && biases[i].size(0) == weights[i].size(0), "char_cnn: conv bias ", i,
                " must be [", weights[i].size(0), "], got ", biases[i].sizes());
    TORCH_CHECK(biases[i].scalar_type() == embedding.scalar_type(),
                "char_cnn: all weights must share the embedding's dtype ", embedding.scalar_type());
  }
  if (char_ids.numel() > 0) {
    const int64_t lo = char_ids.min().item<int64_t>(), hi = char_ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < embedding.size(0), "char_cnn: char ids must lie in [0, ", embedding.size(0),
                "), got min ", lo, " max ", hi, "; build them with elmo_fast.batch_to_ids");
  }
}

// [F_i, E, w] -> [w * E, Fp] (k = j * E + e, filters zero-padded to a multiple of kFB), so a window
// of w gathered embedding rows (contiguous, w * E values) times this matrix is the conv at one position.
at::Tensor pack_forward(const at::Tensor& w) {
  const int64_t Fi = w.size(0), E = w.size(1), width = w.size(2);
  auto packed = at::zeros({width * E, round_up(Fi, kFB)}, w.options());
  packed.narrow(1, 0, Fi).copy_(w.permute({2, 1, 0}).reshape({width * E, Fi}));
  return packed;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& char_ids, const at::Tensor& embedding, const std::vector<at::Tensor>& packed,
                    at::TensorList biases, bool relu, at::Tensor& features, at::Tensor& argmax) {
  // GCC/Clang vector extension: 32 bytes = one AVX2 register (plain SSE/NEON code elsewhere).
  typedef scalar_t Vec __attribute__((vector_size(32)));
  using Idx = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;  // lane-matched compare masks
  typedef Idx IVec __attribute__((vector_size(32)));
  constexpr int kLanes = 32 / sizeof(scalar_t);
  constexpr int kNV = kFB / kLanes;
  const int64_t N = char_ids.size(0), W = char_ids.size(1), E = embedding.size(1), F = features.size(1);
  const int64_t n_filters = static_cast<int64_t>(packed.size());
  int64_t max_width = 1;
  std::vector<int64_t> widths, counts, offsets;
  std::vector<const scalar_t*> wptr, bptr;
  int64_t off = 0;
  for (int64_t i = 0; i < n_filters; ++i) {
    widths.push_back(packed[i].size(0) / E);
    counts.push_back(biases[i].size(0));
    offsets.push_back(off);
    off += biases[i].size(0);
    max_width = std::max(max_width, widths.back());
    wptr.push_back(packed[i].data_ptr<scalar_t>());
    bptr.push_back(biases[i].data_ptr<scalar_t>());
  }
  const int64_t* ids = char_ids.data_ptr<int64_t>();
  const scalar_t* emb = embedding.data_ptr<scalar_t>();
  scalar_t* out = features.data_ptr<scalar_t>();
  int32_t* amax = argmax.data_ptr<int32_t>();

  // Work unit: a block of kTB tokens. Their embeddings are gathered once; then, per filter width,
  // every window that must be evaluated (positions 0..min(L, W - w) of each token) goes into one row
  // list, and each 16-filter weight panel (w * E * 16 values, in L1) is streamed over all rows in
  // tiles of kPB rows that may span token boundaries, so no tile is half empty.
  const int64_t xrows = W + max_width;  // rows past W stay zero; only the padding tile row reads them
  at::parallel_for(0, (N + kTB - 1) / kTB, 1, [&](int64_t blk_begin, int64_t blk_end) {
    std::vector<scalar_t> xbuf((kTB * xrows + max_width) * E, scalar_t(0));
    const scalar_t* zero_row = xbuf.data() + kTB * xrows * E;
    std::vector<int64_t> tails(kTB);
    std::vector<const scalar_t*> row_ptr;
    std::vector<int32_t> row_tok, row_pos;
    std::vector<scalar_t> best(kTB * kFB);
    std::vector<Idx> best_at(kTB * kFB);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t n0 = blk * kTB, nt = std::min(kTB, N - n0);
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t* tok = ids + (n0 + t) * W;
        for (int64_t p = 0; p < W; ++p) std::copy_n(emb + tok[p] * E, E, xbuf.data() + (t * xrows + p) * E);
        tails[t] = tail_start(tok, W);
      }
      for (int64_t i = 0; i < n_filters; ++i) {
        const int64_t width = widths[i], Fi = counts[i], Fp = round_up(Fi, kFB), K = width * E;
        row_ptr.clear();
        row_tok.clear();
        row_pos.clear();
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t n_pos = std::min(tails[t], W - width) + 1;  // positions 0..min(L, W - w)
          for (int64_t p = 0; p < n_pos; ++p) {
            row_ptr.push_back(xbuf.data() + (t * xrows + p) * E);
            row_tok.push_back(static_cast<int32_t>(t));
            row_pos.push_back(static_cast<int32_t>(p));
          }
        }
        const int64_t n_rows = static_cast<int64_t>(row_ptr.size());
        while (row_ptr.size() % kPB) row_ptr.push_back(zero_row);
        const scalar_t* __restrict wi = wptr[i];
        for (int64_t f0 = 0; f0 < Fp; f0 += kFB) {
          std::fill(best.begin(), best.end(), -std::numeric_limits<scalar_t>::infinity());
          std::fill(best_at.begin(), best_at.end(), Idx(0));
          for (int64_t r0 = 0; r0 < n_rows; r0 += kPB) {
            // Register tile: kPB windows x kFB filters, one broadcast-FMA per (window, vector).
            Vec acc[kPB][kNV] = {};
            const scalar_t* __restrict x[kPB];
            for (int r = 0; r < kPB; ++r) x[r] = row_ptr[r0 + r];
            for (int64_t k = 0; k < K; ++k) {
              const scalar_t* __restrict wk = wi + k * Fp + f0;
              Vec wv[kNV];
              for (int u = 0; u < kNV; ++u) std::memcpy(&wv[u], wk + u * kLanes, sizeof(Vec));
              for (int r = 0; r < kPB; ++r) {
                const Vec xv = Vec{} + x[r][k];
                for (int u = 0; u < kNV; ++u) acc[r][u] += xv * wv[u];
              }
            }
            const int64_t rows = std::min<int64_t>(kPB, n_rows - r0);
            // Branch-free vector fold into each token's running max (a scalar compare-and-branch
            // per value cost about a third of the tile's time).
            for (int64_t r = 0; r < rows; ++r) {
              scalar_t* bt = best.data() + row_tok[r0 + r] * kFB;
              Idx* at = best_at.data() + row_tok[r0 + r] * kFB;
              const IVec pos = IVec{} + static_cast<Idx>(row_pos[r0 + r]);
              for (int u = 0; u < kNV; ++u) {
                Vec b;
                IVec a;
                std::memcpy(&b, bt + u * kLanes, sizeof(Vec));
                std::memcpy(&a, at + u * kLanes, sizeof(IVec));
                const IVec better = acc[r][u] > b;  // strict, rows in position order: the first maximum wins
                b = better ? acc[r][u] : b;
                a = better ? pos : a;
                std::memcpy(bt + u * kLanes, &b, sizeof(Vec));
                std::memcpy(at + u * kLanes, &a, sizeof(IVec));
              }
            }
          }
          const int64_t valid = std::min(kFB, Fi - f0);
          for (int64_t t = 0; t < nt; ++t) {
            scalar_t* o = out + (n0 + t) * F + offsets[i] + f0;
            int32_t* a = amax + (n0 + t) * F + offsets[i] + f0;
            for (int64_t v = 0; v < valid; ++v) {
              // The bias is the same at every position, so adding it after the max is exact.
              const scalar_t pre = best[t * kFB + v] + bptr[i][f0 + v];
              o[v] = relu ? std::max(pre, scalar_t(0)) : std::tanh(pre);
              a[v] = static_cast<int32_t>(best_at[t * kFB + v]);
            }
          }
        }
      }
    }
  });
}

bool parse_activation(c10::string_view activation) {
  TORCH_CHECK(activation == "relu" || activation == "tanh", "char_cnn: activation must be 'relu' or 'tanh', got '",
              std::string(activation), "'");
  return activation == "relu";
}

std::tuple<at::Tensor, at::Tensor> char_cnn_conv_max(const at::Tensor& char_ids, const at::Tensor& embedding,
                                                     at::TensorList weights, at::TensorList biases,
                                                     c10::string_view activation) {
  const bool relu = parse_activation(activation);
  check_inputs(char_ids, embedding, weights, biases);
  int64_t F = 0;
  for (const auto& b : biases) F += b.size(0);
  const int64_t N = char_ids.size(0);
  auto features = at::empty({N, F}, embedding.options());
  auto argmax = at::empty({N, F}, embedding.options().dtype(at::kInt));
  if (N == 0) return {features, argmax};
  std::vector<at::Tensor> packed, bias_c;
  for (size_t i = 0; i < weights.size(); ++i) {
    packed.push_back(pack_forward(weights[i]));
    bias_c.push_back(biases[i].contiguous());
  }
  auto ids = char_ids.contiguous();
  auto emb = embedding.contiguous();
  AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "char_cnn_conv_max", [&] {
    forward_kernel<scalar_t>(ids, emb, packed, bias_c, relu, features, argmax);
  });
  return {features, argmax};
}

// Backward. Only the winning position of each (token, filter) carries gradient:
//   d_pre[n, f]                     = grad[n, f] * act'(features[n, f])
//   d_bias[f]                       = sum_n d_pre[n, f]
//   d_weight[f, e, j]               = sum_n d_pre[n, f] * emb[ids[n, a + j], e]        (a = argmax[n, f])
//   d_embedding[ids[n, a + j], e]  += d_pre[n, f] * weight[f, e, j]
// d_weight is parallel over filters (each thread owns its rows); d_embedding is parallel over
// tokens with one [V, E] accumulator per thread, summed at the end (many tokens share char ids).
template <typename scalar_t>
void backward_kernel(const at::Tensor& dpre_t /*[F, N]*/, const at::Tensor& argmax_t /*[F, N]*/,
                     const at::Tensor& dpre /*[N, F]*/, const at::Tensor& argmax /*[N, F]*/, const at::Tensor& ids_t,
                     const at::Tensor& embedding, const std::vector<at::Tensor>& wt /*[F_i, w, E]*/,
                     std::vector<at::Tensor>& grad_wt /*[F_i, w, E]*/, at::Tensor& grad_emb_threads /*[T, V, E]*/) {
  const int64_t N = ids_t.size(0), W = ids_t.size(1), E = embedding.size(1), V = embedding.size(0);
  const int64_t F = dpre.size(1);
  const int64_t n_filters = static_cast<int64_t>(wt.size());
  std::vector<int64_t> filter_of(F), local_of(F), width_of(n_filters);
  for (int64_t i = 0, f = 0; i < n_filters; ++i) {
    width_of[i] = wt[i].size(1);
    for (int64_t l = 0; l < wt[i].size(0); ++l, ++f) {
      filter_of[f] = i;
      local_of[f] = l;
    }
  }
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  const scalar_t* emb = embedding.data_ptr<scalar_t>();

  const scalar_t* dT = dpre_t.data_ptr<scalar_t>();
  const int32_t* aT = argmax_t.data_ptr<int32_t>();
  at::parallel_for(0, F, 16, [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      const int64_t i = filter_of[f], width = width_of[i];
      scalar_t* __restrict g = grad_wt[i].data_ptr<scalar_t>() + local_of[f] * width * E;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t d = dT[f * N + n];
        if (d == scalar_t(0)) continue;  // relu-inactive filters: about half of them
        const int64_t* tok = ids + n * W + aT[f * N + n];
        for (int64_t j = 0; j < width; ++j) {
          const scalar_t* __restrict row = emb + tok[j] * E;
          for (int64_t e = 0; e < E; ++e) g[j * E + e] += d * row[e];
        }
      }
    }
  });

  const scalar_t* d = dpre.data_ptr<scalar_t>();
  const int32_t* a = argmax.data_ptr<int32_t>();
  scalar_t* gall = grad_emb_threads.data_ptr<scalar_t>();
  const int64_t n_threads = grad_emb_threads.size(0);
  std::vector<const scalar_t*> wptr;
  for (const auto& w : wt) wptr.push_back(w.data_ptr<scalar_t>());
  at::parallel_for(0, N, 8, [&](int64_t begin, int64_t end) {
    const int64_t t = std::min<int64_t>(at::get_thread_num(), n_threads - 1);
    scalar_t* __restrict gemb = gall + t * V * E;
    std::vector<scalar_t> dx(W * E);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(dx.begin(), dx.end(), scalar_t(0));
      for (int64_t f = 0; f < F; ++f) {
        const scalar_t df = d[n * F + f];
        if (df == scalar_t(0)) continue;
        const int64_t i = filter_of[f], width = width_of[i];
        const scalar_t* __restrict w = wptr[i] + local_of[f] * width * E;
        scalar_t* __restrict x = dx.data() + a[n * F + f] * E;
        for (int64_t k = 0; k < width * E; ++k) x[k] += df * w[k];
      }
      const int64_t* tok = ids + n * W;
      for (int64_t p = 0; p < W; ++p) {
        scalar_t* __restrict row = gemb + tok[p] * E;
        for (int64_t e = 0; e < E; ++e) row[e] += dx[p * E + e];
      }
    }
  });
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> char_cnn_conv_max_backward(
    const at::Tensor& grad, const at::Tensor& char_ids, const at::Tensor& embedding, at::TensorList weights,
    const at::Tensor& features, const at::Tensor& argmax, c10::string_view activation) {
  const bool relu = parse_activation(activation);
  check_inputs(char_ids, embedding, weights, {}, /*with_biases=*/false);
  TORCH_CHECK(grad.sizes() == features.sizes() && argmax.sizes() == features.sizes() &&
                  argmax.scalar_type() == at::kInt && features.size(0) == char_ids.size(0),
              "char_cnn backward: grad, features and argmax must all be [N, F] (argmax int32), got ", grad.sizes(),
              features.sizes(), argmax.sizes());
  auto dpre = relu ? grad * (features > 0).to(grad.scalar_type()) : grad * (1 - features * features);
  dpre = dpre.to(embedding.scalar_type()).contiguous();
  auto am = argmax.contiguous();
  std::vector<at::Tensor> wt, grad_wt, grad_b;
  int64_t off = 0;
  for (const auto& w : weights) {
    wt.push_back(w.permute({0, 2, 1}).contiguous());  // [F_i, w, E]: a tap's E weights contiguous
    grad_wt.push_back(at::zeros_like(wt.back()));
    grad_b.push_back(dpre.narrow(1, off, w.size(0)).sum(0));
    off += w.size(0);
  }
  const int64_t n_threads = std::max<int64_t>(1, at::get_num_threads());
  auto grad_emb_threads = at::zeros({n_threads, embedding.size(0), embedding.size(1)}, embedding.options());
  if (char_ids.size(0) > 0) {
    auto dpre_t = dpre.t().contiguous();
    auto am_t = am.t().contiguous();
    auto ids = char_ids.contiguous();
    auto emb = embedding.contiguous();
    AT_DISPATCH_FLOATING_TYPES(emb.scalar_type(), "char_cnn_conv_max_backward", [&] {
      backward_kernel<scalar_t>(dpre_t, am_t, dpre, am, ids, emb, wt, grad_wt, grad_emb_threads);
    });
  }
  std::vector<at::Tensor> grad_w;
  for (const auto& g : grad_wt) grad_w.push_back(g.permute({0, 2, 1}).contiguous());
  return {grad_emb_threads.sum(0), grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def(
      "char_cnn_conv_max(Tensor char_ids, Tensor embedding, Tensor[] weights, Tensor[] biases, str activation)"
      " -> (Tensor, Tensor)");
  m.def(
      "char_cnn_conv_max_backward(Tensor grad, Tensor char_ids, Tensor embedding, Tensor[] weights, Tensor features,"
      " Tensor argmax, str activation) -> (Tensor, Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("char_cnn_conv_max", &char_cnn_conv_max);
  m.impl("char_cnn_conv_max_backward", &char_cnn_conv_max_backward);
}

}  // namespace elmo_fast
