// Work split shared by the CPU kernels' row-parallel loops.
#pragma once

#include <algorithm>
#include <cstdint>

namespace elmo_fast {

// Rows per at::parallel_for chunk: ~16K elements of work each, so small inputs stay on one thread.
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

}  // namespace elmo_fast
