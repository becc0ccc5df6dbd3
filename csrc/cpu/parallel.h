// The parallel_for the torch-free CPU kernel templates take, backed by ATen's thread pool.
#pragma once
#include <ATen/Parallel.h>

namespace ck::cpu {

inline auto aten_parallel_for() {
  return [](int64_t begin, int64_t end, const auto& fn) {
    at::parallel_for(begin, end, 1, [&](int64_t b, int64_t e) { fn(b, e); });
  };
}

}  // namespace ck::cpu
