// Fused character CNN (embedding gather -> every filter width's conv -> max over positions ->
// activation) on the CPU, forward and backward. Highway layers and the projection are plain GEMMs
// and stay in ATen (see elmo_fast/ops/encoder/function.py and ops/highway/).
//
// Shapes (N tokens, W characters per token, V = 262 char ids, E embedding dim, F = sum_i F_i):
//   char_ids   int64 [N, W]
//   embedding        [V, E]
//   weights[i]       [F_i, E, w_i]   (PyTorch Conv1d layout)
//   biases[i]        [F_i]
//   -> features      [N, F]  activation(max_p conv_i(x)[p] + b_i), filters concatenated in order
//   -> argmax  int32 [N, F]  the position p that won the max; backward routes gradients through it
//
// Character-table formulation. The input of every conv is an embedding row per character, and a
// batch only ever holds a few dozen distinct characters (<= V = 262). A window's conv value is a
// sum of one contribution per tap,
//   conv_i(x)[p, f] = sum_{j < w_i} T[ids[p + j], col_i(j, f)],   T = emb[present] @ Wcat,
// where Wcat [E, sum_i w_i Fp_i] holds each filter's tap j as a column (col_i(j, f) = base_i + j Fp_i + f,
// Fp_i = F_i rounded up to a vector tile). Building T is one small GEMM (V' x E x sum_i w_i F_i, V'
// distinct characters); evaluating a window is then w_i vector loads and adds per filter instead of
// w_i * E multiply-adds, i.e. E (16 for the published models) times fewer operations, and the max
// over positions is folded in registers as each window is summed. The per-position conv outputs
// ([N, F, W - w + 1]) are never written. The sums are the same products added in another order, so
// results equal the direct convolution to fp32 rounding.
//
// Backward is the transpose of the same factorisation: each (token, filter) adds its gradient to the
// table cells of its winning window's characters (dT), then d_embedding = dT @ Wcat^T and
// d_Wcat = emb[present]^T @ dT are two small GEMMs.
//
// Trailing-run shortcut (exact, not an approximation): a token is a few real characters followed by
// one id repeated to the end (padding char 261, or 0 for an all-padding token). Every window that
// lies entirely inside that run sees the same inputs, so it has the same value bit for bit as the
// first such window. We therefore evaluate positions 0..L only (L = start of the run), which cuts
// the work for a 5-letter word by ~6x versus all 44 positions of the width-7 filters. Ties between
// identical windows route the gradient to the same embedding rows and weights whichever wins.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "common/no_autograd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace elmo_fast {
namespace {

constexpr int64_t kFB = 32;  // filters per register tile: four AVX2 vectors of fp32 (window sum, max, argmax)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// First position of the trailing run of one repeated id (0 for an all-padding token).
template <typename Id>
inline int64_t tail_start(const Id* ids, int64_t W) {
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

// One filter width's place in the output and in the character table. The table of a width is
// tile-major, [tiles][V'][w][kFB]: everything one register tile of filters reads (V' chars x w taps
// x 32 filters, ~70 KB for the published width 7) is contiguous, so it stays in L2 and the TLB while
// a block of tokens streams over it (a [V', sum_i w_i F_i] row-major table put the rows of
// different characters 49 KB apart and measured 4x slower).
struct Group {
  int64_t width, count, tiles, out;  // w_i, F_i, ceil(F_i / kFB), first feature column
  int64_t base = 0;                  // first element of this width's table (depends on V')
};

// The characters of a batch, renumbered densely: `present` [V'] lists the ids that occur,
// `compact` [N, W] int32 holds each id's index in it.
struct Chars {
  at::Tensor present;
  std::vector<int32_t> compact;
};

Chars compact_chars(const at::Tensor& char_ids, int64_t V) {
  const int64_t n = char_ids.numel();
  const int64_t* ids = char_ids.data_ptr<int64_t>();
  std::vector<int32_t> slot(V, -1);
  std::vector<int64_t> present;
  Chars chars;
  chars.compact.resize(n);
  for (int64_t k = 0; k < n; ++k) {
    int32_t& s = slot[ids[k]];
    if (s < 0) {
      s = static_cast<int32_t>(present.size());
      present.push_back(ids[k]);
    }
    chars.compact[k] = s;
  }
  chars.present = at::from_blob(present.data(), {static_cast<int64_t>(present.size())}, at::kLong).clone();
  return chars;
}

// Per width, the taps as [tiles, E, w * kFB]: taps[q, e, j * kFB + l] = weight[q * kFB + l, e, j] (0 past F_i).
std::vector<at::Tensor> pack_taps(at::TensorList weights, std::vector<Group>& groups) {
  std::vector<at::Tensor> taps;
  groups.clear();
  int64_t out = 0;
  for (const auto& w : weights) {
    const int64_t Fi = w.size(0), E = w.size(1), width = w.size(2), tiles = (Fi + kFB - 1) / kFB;
    groups.push_back({width, Fi, tiles, out});
    out += Fi;
    auto padded = at::zeros({tiles * kFB, E, width}, w.options());
    padded.narrow(0, 0, Fi).copy_(w);
    taps.push_back(padded.view({tiles, kFB, E, width}).permute({0, 2, 3, 1}).reshape({tiles, E, width * kFB}));
  }
  return taps;
}

// Sets each group's base for V' characters; returns the total table size in elements.
int64_t place_groups(std::vector<Group>& groups, int64_t n_chars) {
  int64_t total = 0;
  for (Group& g : groups) {
    g.base = total;
    total += g.tiles * n_chars * g.width * kFB;
  }
  return total;
}

// View of one width's part of a flat table (or of its gradient) as [tiles, V', w * kFB].
at::Tensor group_view(const at::Tensor& flat, const Group& g, int64_t n_chars) {
  return flat.narrow(0, g.base, g.tiles * n_chars * g.width * kFB).view({g.tiles, n_chars, g.width * kFB});
}

bool all_finite(const at::Tensor& t) {
  const auto c = t.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "all_finite", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    const int64_t n = c.numel();
    for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(p[i]);
  });
  return ok;
}

// kNanAware: the running max also takes a NaN (the first one, as torch.max does). That compare
// costs ~30% of this kernel, so it is instantiated only for inputs with a non-finite value: from
// finite embeddings and weights no window sum is NaN (barring an overflow of the table itself).
template <typename scalar_t, bool kNanAware>
void forward_kernel(const int32_t* cids, int64_t N, int64_t W, const scalar_t* table, int64_t n_chars,
                    const std::vector<Group>& groups, const std::vector<const scalar_t*>& bias, bool relu,
                    scalar_t* out, int32_t* amax, int64_t F) {
  // GCC/Clang vector extension: 32 bytes = one AVX2 register (plain SSE/NEON code elsewhere).
  typedef scalar_t Vec __attribute__((vector_size(32)));
  using Idx = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;  // lane-matched compare masks
  typedef Idx IVec __attribute__((vector_size(32)));
  constexpr int kLanes = 32 / sizeof(scalar_t);
  constexpr int kNV = kFB / kLanes;
  // Token blocks: each (width, filter tile) slice of the table is reused by all tokens of a block
  // while it sits in L2; a few blocks per thread balance the load.
  const int64_t n_threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t tb = std::min<int64_t>(128, std::max<int64_t>(8, N / (4 * n_threads)));
  at::parallel_for(0, (N + tb - 1) / tb, 1, [&](int64_t blk_begin, int64_t blk_end) {
    std::vector<int64_t> tails(tb);
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
      const int64_t n0 = blk * tb, nt = std::min(tb, N - n0);
      for (int64_t t = 0; t < nt; ++t) tails[t] = tail_start(cids + (n0 + t) * W, W);
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        const Group& g = groups[gi];
        const int64_t row = g.width * kFB;  // elements per character in a tile's slice
        for (int64_t q = 0; q < g.tiles; ++q) {
          const scalar_t* __restrict slice = table + g.base + q * n_chars * row;
          const int64_t f0 = q * kFB, valid = std::min(kFB, g.count - f0);
          for (int64_t t = 0; t < nt; ++t) {
            const int32_t* c = cids + (n0 + t) * W;
            const int64_t n_pos = std::min(tails[t], W - g.width) + 1;  // positions 0..min(L, W - w)
            Vec best[kNV];
            IVec best_at[kNV];
            for (int u = 0; u < kNV; ++u) {
              best[u] = Vec{} - std::numeric_limits<scalar_t>::infinity();
              best_at[u] = IVec{};
            }
            for (int64_t p = 0; p < n_pos; ++p) {
              // Starting from zero, not from a memcpy of the first tap: gcc turns that copy into
              // 16-byte stores reread as 32-byte vectors, a store-forwarding stall that measured 40%
              // of the kernel.
              Vec acc[kNV] = {};
              for (int64_t j = 0; j < g.width; ++j) {
                const scalar_t* tap = slice + c[p + j] * row + j * kFB;
                for (int u = 0; u < kNV; ++u) {
                  Vec v;
                  std::memcpy(&v, tap + u * kLanes, sizeof(Vec));
                  acc[u] += v;
                }
              }
              const IVec pos = IVec{} + static_cast<Idx>(p);
              for (int u = 0; u < kNV; ++u) {
                // strict, positions in order: the first maximum wins (and the first NaN, see above)
                IVec better = acc[u] > best[u];
                if constexpr (kNanAware) better |= (acc[u] != acc[u]) & (best[u] == best[u]);
                best[u] = better ? acc[u] : best[u];
                best_at[u] = better ? pos : best_at[u];
              }
            }
            scalar_t b[kFB];
            Idx a[kFB];
            std::memcpy(b, best, sizeof b);
            std::memcpy(a, best_at, sizeof a);
            scalar_t* o = out + (n0 + t) * F + g.out + f0;
            int32_t* am = amax + (n0 + t) * F + g.out + f0;
            for (int64_t v = 0; v < valid; ++v) {
              // The bias is the same at every position, so adding it after the max is exact.
              const scalar_t pre = b[v] + bias[gi][f0 + v];
              o[v] = relu ? std::max(pre, scalar_t(0)) : std::tanh(pre);
              am[v] = static_cast<int32_t>(a[v]);
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
  const int64_t N = char_ids.size(0), W = char_ids.size(1);
  auto features = at::empty({N, F}, embedding.options());
  auto argmax = at::empty({N, F}, embedding.options().dtype(at::kInt));
  if (N == 0) return {features, argmax};
  auto ids = char_ids.contiguous();
  Chars chars = compact_chars(ids, embedding.size(0));
  const int64_t n_chars = chars.present.size(0);
  std::vector<Group> groups;
  auto taps = pack_taps(weights, groups);
  auto table = at::empty({place_groups(groups, n_chars)}, embedding.options());
  auto emb_c = embedding.index_select(0, chars.present);  // [V', E]
  for (size_t i = 0; i < groups.size(); ++i) {
    auto view = group_view(table, groups[i], n_chars);
    at::bmm_out(view, emb_c.expand({groups[i].tiles, n_chars, emb_c.size(1)}), taps[i]);
  }
  std::vector<at::Tensor> bias_c;
  for (const auto& b : biases) bias_c.push_back(b.contiguous());
  // Whether a NaN can appear in a window sum: only from a non-finite value in the used embedding
  // rows or the weights (barring an overflow of the table itself). A plain scan: the same check
  // with ATen sums measured up to 3 ms slower per call here.
  bool nan_aware = !all_finite(emb_c);
  for (const auto& w : weights) nan_aware = nan_aware || !all_finite(w);
  AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "char_cnn_conv_max", [&] {
    std::vector<const scalar_t*> bias;
    for (const auto& b : bias_c) bias.push_back(b.data_ptr<scalar_t>());
    auto run = nan_aware ? forward_kernel<scalar_t, true> : forward_kernel<scalar_t, false>;
    run(chars.compact.data(), N, W, table.data_ptr<scalar_t>(), n_chars, groups, bias, relu,
        features.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>(), F);
  });
  return {features, argmax};
}

// Backward. Only the winning window of each (token, filter) carries gradient:
//   d_pre[n, f]                   = grad[n, f] * act'(features[n, f])
//   d_bias[f]                     = sum_n d_pre[n, f]
//   dT[tile(f), ids[n, a + j], j, lane(f)] += d_pre[n, f]      for every tap j (a = argmax[n, f])
//   d_embedding[present] = sum_tiles dT @ taps^T,   d_taps = emb[present]^T @ dT   (batched over tiles)
// The scatter is parallel over filter tiles: each thread owns its table cells.
template <typename scalar_t>
void backward_scatter(const scalar_t* dpre_t /*[F, N]*/, const int32_t* argmax_t /*[F, N]*/, const int32_t* cids,
                      int64_t N, int64_t W, const std::vector<Group>& groups, int64_t n_chars, scalar_t* dT) {
  std::vector<std::pair<int64_t, int64_t>> tiles;  // (group, tile)
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (int64_t q = 0; q < groups[gi].tiles; ++q) tiles.emplace_back(static_cast<int64_t>(gi), q);
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Group& g = groups[tiles[k].first];
      const int64_t q = tiles[k].second, row = g.width * kFB;
      scalar_t* slice = dT + g.base + q * n_chars * row;
      for (int64_t l = 0; l < std::min(kFB, g.count - q * kFB); ++l) {
        const int64_t f = g.out + q * kFB + l;
        const scalar_t* d = dpre_t + f * N;
        const int32_t* a = argmax_t + f * N;
        for (int64_t n = 0; n < N; ++n) {
          if (d[n] == scalar_t(0)) continue;  // relu-inactive filters: about half of them
          const int32_t* c = cids + n * W + a[n];
          for (int64_t j = 0; j < g.width; ++j) slice[c[j] * row + j * kFB + l] += d[n];
        }
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
  const int64_t N = char_ids.size(0), W = char_ids.size(1), E = embedding.size(1);
  std::vector<at::Tensor> grad_b;
  int64_t off = 0;
  for (const auto& w : weights) {
    grad_b.push_back(dpre.narrow(1, off, w.size(0)).sum(0));
    off += w.size(0);
  }
  std::vector<Group> groups;
  auto taps = pack_taps(weights, groups);
  auto grad_emb = at::zeros_like(embedding);
  std::vector<at::Tensor> grad_taps;
  if (N > 0) {
    auto ids = char_ids.contiguous();
    Chars chars = compact_chars(ids, embedding.size(0));
    const int64_t n_chars = chars.present.size(0);
    auto dT = at::zeros({place_groups(groups, n_chars)}, embedding.options());
    auto dpre_t = dpre.t().contiguous();
    auto am_t = argmax.t().contiguous();
    AT_DISPATCH_FLOATING_TYPES(embedding.scalar_type(), "char_cnn_conv_max_backward", [&] {
      backward_scatter<scalar_t>(dpre_t.data_ptr<scalar_t>(), am_t.data_ptr<int32_t>(), chars.compact.data(), N, W,
                                 groups, n_chars, dT.data_ptr<scalar_t>());
    });
    auto emb_c = embedding.index_select(0, chars.present);
    auto d_emb_c = at::zeros({n_chars, E}, embedding.options());
    for (size_t i = 0; i < groups.size(); ++i) {
      auto d = group_view(dT, groups[i], n_chars);  // [tiles, V', w * kFB]
      d_emb_c += at::bmm(d, taps[i].transpose(1, 2)).sum(0);
      grad_taps.push_back(at::bmm(emb_c.t().expand({groups[i].tiles, E, n_chars}), d));
    }
    grad_emb.index_copy_(0, chars.present, d_emb_c);
  } else {
    for (const auto& t : taps) grad_taps.push_back(at::zeros_like(t));
  }
  std::vector<at::Tensor> grad_w;
  for (size_t i = 0; i < groups.size(); ++i) {
    const Group& g = groups[i];
    grad_w.push_back(grad_taps[i].view({g.tiles, E, g.width, kFB}).permute({0, 3, 1, 2}).reshape({g.tiles * kFB, E, g.width})
                         .narrow(0, 0, g.count).contiguous());
  }
  return {grad_emb, grad_w, grad_b};
}

// Distinct rows of char_ids [N, W] in first-occurrence order, and inverse [N] with
// ids == uniq[inverse]. A hash map of rows (exact comparison on collision) instead of
// torch.unique(dim=0), which issues a few ATen ops per row: ~7,000 per 704-token batch, 4.5 ms.
std::tuple<at::Tensor, at::Tensor> unique_rows(const at::Tensor& char_ids) {
  TORCH_CHECK(char_ids.dim() == 2 && char_ids.scalar_type() == at::kLong && char_ids.device().is_cpu(),
              "unique_rows: expects int64 CPU char ids [N, W], got ", char_ids.scalar_type(), " ", char_ids.sizes());
  auto ids = char_ids.contiguous();
  const int64_t N = ids.size(0), W = ids.size(1);
  const int64_t* p = ids.data_ptr<int64_t>();
  auto row_hash = [&](int64_t r) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int64_t k = 0; k < W; ++k) h = (h ^ static_cast<uint64_t>(p[r * W + k])) * 0x100000001b3ull;
    return static_cast<size_t>(h ^ (h >> 29));
  };
  auto row_eq = [&](int64_t a, int64_t b) { return std::memcmp(p + a * W, p + b * W, W * sizeof(int64_t)) == 0; };
  std::unordered_map<int64_t, int64_t, decltype(row_hash), decltype(row_eq)> first(2 * N + 1, row_hash, row_eq);
  auto inverse = at::empty({N}, ids.options());
  int64_t* inv = inverse.data_ptr<int64_t>();
  std::vector<int64_t> keep;
  for (int64_t r = 0; r < N; ++r) {
    const auto [it, inserted] = first.emplace(r, static_cast<int64_t>(keep.size()));
    if (inserted) keep.push_back(r);
    inv[r] = it->second;
  }
  auto rows = at::from_blob(keep.data(), {static_cast<int64_t>(keep.size())}, at::kLong).clone();
  return {ids.index_select(0, rows), inverse};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def(
      "char_cnn_conv_max(Tensor char_ids, Tensor embedding, Tensor[] weights, Tensor[] biases, str activation)"
      " -> (Tensor, Tensor)");
  m.def(
      "char_cnn_conv_max_backward(Tensor grad, Tensor char_ids, Tensor embedding, Tensor[] weights, Tensor features,"
      " Tensor argmax, str activation) -> (Tensor, Tensor[], Tensor[])");
  m.def("unique_rows(Tensor char_ids) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(elmo_fast, CPU, m) {
  m.impl("char_cnn_conv_max", &char_cnn_conv_max);
  m.impl("char_cnn_conv_max_backward", &char_cnn_conv_max_backward);
  m.impl("unique_rows", &unique_rows);
}

TORCH_LIBRARY_IMPL(elmo_fast, Autograd, m) {
  // the one autograd path of conv-max: CharConvMaxFunction (elmo_fast/ops/char_cnn/function.py)
  m.impl("char_cnn_conv_max", no_autograd("elmo_fast.ops.char_cnn.char_cnn_conv_max"));
  m.impl("char_cnn_conv_max_backward", no_autograd("elmo_fast.ops.char_cnn.char_cnn_conv_max"));
  m.impl("unique_rows", no_autograd("elmo_fast.ops.encoder.unique_tokens"));
}

}  // namespace elmo_fast
