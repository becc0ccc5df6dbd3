// Elements a thread's part of an elementwise or row pass should hold at least (ATen's grain):
// a pass over a few rows runs on the calling thread (waking the OpenMP threads for a 1-pixel
// LayerNorm backward's per-column sum cost more than the sum itself).
#pragma once
#include <algorithm>
#include <cstdint>

namespace ck::cpu {

constexpr int64_t kElementsPerTask = 32768;

// The grain, in rows of `width` elements, for parallel_for over rows.
inline int64_t rows_per_task(int64_t width) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, width));
}

}  // namespace ck::cpu
