// LayerNorm over the C contiguous channels of each pixel (row) of an N,H,W,C buffer, for the CPU.
// Torch-free; see dwconv_kernels.h for the conventions (T storage, Acc accumulation,
// parallel_for(begin, end, fn)). The row reductions are `omp simd` loops (built with
// -fopenmp-simd): without them the compiler may not reorder a float sum and runs it serially.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace ck::cpu {

// y = (x - mean) * rstd * weight + bias per row; mean and rstd (two-pass variance) saved.
template <typename T, typename Acc, typename ParallelFor>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, Acc* mean_out,
                        Acc* rstd_out, int64_t rows, int64_t C, Acc eps, ParallelFor parallel_for) {
  parallel_for(0, rows, [&](int64_t begin, int64_t end) {
    std::vector<Acc> w(C), b(C), v(C);
    for (int64_t c = 0; c < C; ++c) {
      w[c] = static_cast<Acc>(weight[c]);
      b[c] = static_cast<Acc>(bias[c]);
    }
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = x + row * C;
      Acc sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) {
        v[c] = static_cast<Acc>(xr[c]);
        sum += v[c];
      }
      const Acc mean = sum / C;
      Acc sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t c = 0; c < C; ++c) sq += (v[c] - mean) * (v[c] - mean);
      const Acc rstd = Acc(1) / std::sqrt(sq / C + eps);
      T* yr = y + row * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = static_cast<T>((v[c] - mean) * rstd * w[c] + b[c]);
      mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  });
}

// Rows cut into chunks from the shape alone; each chunk sums partial (grad_weight, grad_bias)
// [2][C], added in chunk order afterwards: bitwise reproducible for any thread count.
inline int64_t layer_norm_grad_chunks(int64_t rows, int64_t C) {
  constexpr int64_t kPartialBudget = int64_t(1) << 22;  // elements of all partials together
  return std::max<int64_t>(1, std::min<int64_t>({rows, 256, kPartialBudget / (2 * C)}));
}

// xhat = (x - mean) * rstd, gh = g * weight:
// grad_x = rstd * (gh - mean_c(gh) - xhat * mean_c(gh * xhat)),
// grad_weight = sum_rows g * xhat, grad_bias = sum_rows g.
template <typename T, typename Acc, typename ParallelFor>
void layer_norm_backward(const T* g, const T* x, const T* weight, const Acc* mean, const Acc* rstd,
                         T* grad_x, Acc* grad_weight, Acc* grad_bias, int64_t rows, int64_t C,
                         ParallelFor parallel_for) {
  const int64_t chunks = layer_norm_grad_chunks(rows, C);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  std::vector<Acc> partial(chunks * 2 * C, Acc(0));
  parallel_for(0, chunks, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<Acc> w(C), xhat(C), gh(C);
    for (int64_t c = 0; c < C; ++c) w[c] = static_cast<Acc>(weight[c]);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      Acc* part_w = partial.data() + chunk * 2 * C;
      Acc* part_b = part_w + C;
      const int64_t row_end = std::min(rows, (chunk + 1) * rows_per_chunk);
      for (int64_t row = chunk * rows_per_chunk; row < row_end; ++row) {
        const T* gr = g + row * C;
        const T* xr = x + row * C;
        Acc sum_gh = 0, sum_gh_xhat = 0;
#pragma omp simd reduction(+ : sum_gh, sum_gh_xhat)
        for (int64_t c = 0; c < C; ++c) {
          const Acc gv = static_cast<Acc>(gr[c]);
          xhat[c] = (static_cast<Acc>(xr[c]) - mean[row]) * rstd[row];
          gh[c] = gv * w[c];
          sum_gh += gh[c];
          sum_gh_xhat += gh[c] * xhat[c];
          part_w[c] += gv * xhat[c];
          part_b[c] += gv;
        }
        const Acc mean_gh = sum_gh / C, mean_gh_xhat = sum_gh_xhat / C;
        T* gxr = grad_x + row * C;
        for (int64_t c = 0; c < C; ++c)
          gxr[c] = static_cast<T>(rstd[row] * (gh[c] - mean_gh - xhat[c] * mean_gh_xhat));
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) grad_weight[c] = grad_bias[c] = Acc(0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const Acc* part_w = partial.data() + chunk * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      grad_weight[c] += part_w[c];
      grad_bias[c] += part_w[C + c];
    }
  }
}

}  // namespace ck::cpu
