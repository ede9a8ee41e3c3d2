#include "common/cpu_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace elmo_fast {
namespace cpu_pool {
namespace {

constexpr size_t kAlign = 2 << 20;  // a huge page

int64_t limit_from_env() {
  const char* env = std::getenv("ELMO_FAST_CPU_POOL_MB");
  if (env == nullptr || *env == '\0') return int64_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && mb >= 0, "ELMO_FAST_CPU_POOL_MB must be a whole number of megabytes >= 0, got '",
              env, "'");
  return int64_t(mb) << 20;
}

// A free block not taken again within this many pooled requests goes back to the OS. A training
// step of 'original' makes a few dozen pooled requests and takes back the same sizes every step, so
// its blocks never age out; inference over length-bucketed batches asks for ever other sizes, and
// without ageing the cache filled up to `limit` with sizes no batch asked for again (peak RSS of
// `elmo-fast embed` grew with the corpus until the cap).
constexpr uint64_t kMaxAge = 256;

struct Block {
  void* ptr;
  uint64_t freed_at;  // Pool::clock when it was given back
};

struct Pool {
  std::mutex mu;
  std::multimap<size_t, Block> free_blocks;  // by size
  int64_t cached = 0;
  int64_t limit = limit_from_env();
  uint64_t clock = 0;  // pooled requests so far
};

// Never destroyed: tensors freed during interpreter shutdown still hand their blocks back.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

void give_back(void* ptr, size_t bytes) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.cached + int64_t(bytes) <= p.limit) {
      p.free_blocks.emplace(bytes, Block{ptr, p.clock});
      p.cached += int64_t(bytes);
      return;
    }
  }
  std::free(ptr);
}

}  // namespace

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  TORCH_CHECK(opts.device().is_cpu(), "cpu_pool: CPU tensors only");
  int64_t numel = 1;
  for (const auto s : sizes) numel *= s;
  const int64_t want = numel * int64_t(opts.dtype().itemsize());
  Pool& p = pool();
  if (want < kMinBytes || p.limit == 0) return at::empty(sizes, opts);
  const size_t bytes = (size_t(want) + kAlign - 1) / kAlign * kAlign;
  void* ptr = nullptr;
  size_t got = 0;
  std::vector<void*> stale;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    ++p.clock;
    // The smallest free block that fits, if it is at most twice the request (a big block is not
    // spent on a small buffer while its own users wait for it).
    auto it = p.free_blocks.lower_bound(bytes);
    if (it != p.free_blocks.end() && it->first <= 2 * bytes) {
      got = it->first;
      ptr = it->second.ptr;
      p.free_blocks.erase(it);
      p.cached -= int64_t(got);
    }
    for (auto b = p.free_blocks.begin(); b != p.free_blocks.end();) {
      if (p.clock - b->second.freed_at > kMaxAge) {
        stale.push_back(b->second.ptr);
        p.cached -= int64_t(b->first);
        b = p.free_blocks.erase(b);
      } else {
        ++b;
      }
    }
  }
  for (void* q : stale) std::free(q);  // outside the lock: munmap can take a while
  if (ptr == nullptr) {
    TORCH_CHECK(posix_memalign(&ptr, kAlign, bytes) == 0, "cpu_pool: out of memory allocating ", bytes, " bytes");
    got = bytes;
#ifdef MADV_HUGEPAGE
    madvise(ptr, bytes, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
  }
  return at::from_blob(ptr, sizes, [got](void* q) { give_back(q, got); }, opts);
}

namespace {

int64_t cached_bytes_op() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.cached;
}

void clear_op() {
  Pool& p = pool();
  std::multimap<size_t, Block> blocks;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    blocks.swap(p.free_blocks);
    p.cached = 0;
  }
  for (auto& kv : blocks) std::free(kv.second.ptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(elmo_fast, m) {
  m.def("cpu_pool_cached_bytes() -> int", &cached_bytes_op);
  m.def("cpu_pool_clear() -> ()", &clear_op);
}

}  // namespace cpu_pool
}  // namespace elmo_fast
