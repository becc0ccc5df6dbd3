// Elements a thread's part of an elementwise or row pass should hold at least (ATen's grain):
// a pass over a few rows runs on the calling thread (measured beside CI: a 1-pixel, 768-channel
// LayerNorm backward cost ~0.1 ms more than ATen's, most of it waking the OpenMP threads for the
// per-column sum).
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
