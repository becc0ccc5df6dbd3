// The parallel_for the torch-free CPU kernel templates take, backed by ATen's thread pool.
#pragma once
#include <ATen/Parallel.h>

namespace ck::cpu {

// parallel_for(begin, end, fn[, grain]): fn(b, e) over parts of at least `grain` items; a range
// under it runs on the calling thread (no OpenMP region for a few hundred operations).
inline auto aten_parallel_for() {
  return [](int64_t begin, int64_t end, const auto& fn, int64_t grain = 1) {
    at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) { fn(b, e); });
  };
}

}  // namespace ck::cpu
