// The elementwise and reduction passes of the ConvNeXt MLP and of GRN on the CPU, between the
// GEMMs and GELU (ATen's, in mlp.cpp). Torch-free; T is the storage type, Acc the accumulation type
// (float, or double for double); parallel_for(begin, end, fn) as in dwconv_kernels.h.
// Rows are [rows, C] contiguous; "samples" are consecutive groups of rows_per_sample rows
// (N,H,W,C: a sample is an image). Every reduction has a fixed order (bitwise reproducible).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace ck::cpu {

// out = [residual +] [row_scale[row / rows_per_sample] *] [col_scale *] y, each optional (null).
template <typename T, typename Acc, typename ParallelFor>
void scale_rows_cols(const T* y, const T* col_scale, const T* row_scale, const T* residual, T* out,
                     int64_t rows, int64_t C, int64_t rows_per_sample, ParallelFor parallel_for) {
  parallel_for(0, rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Acc rs = row_scale ? static_cast<Acc>(row_scale[r / rows_per_sample]) : Acc(1);
      for (int64_t c = 0; c < C; ++c) {
        Acc v = static_cast<Acc>(y[r * C + c]) * rs;
        if (col_scale) v *= static_cast<Acc>(col_scale[c]);
        if (residual) v += static_cast<Acc>(residual[r * C + c]);
        out[r * C + c] = static_cast<T>(v);
      }
    }
  });
}

// uv[s][c] = sum over sample s's rows of u*v; u_sum[s][c] (if not null) = sum of u. v may be u.
template <typename T, typename Acc, typename ParallelFor>
void per_sample_column_sums(const T* u, const T* v, Acc* uv, Acc* u_sum, int64_t samples,
                            int64_t rows_per_sample, int64_t C, ParallelFor parallel_for) {
  parallel_for(0, samples, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      Acc* uv_s = uv + s * C;
      std::fill(uv_s, uv_s + C, Acc(0));
      if (u_sum) std::fill(u_sum + s * C, u_sum + (s + 1) * C, Acc(0));
      for (int64_t r = s * rows_per_sample; r < (s + 1) * rows_per_sample; ++r) {
        const T* ur = u + r * C;
        const T* vr = v + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          uv_s[c] += static_cast<Acc>(ur[c]) * static_cast<Acc>(vr[c]);
        if (u_sum)
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) u_sum[s * C + c] += static_cast<Acc>(ur[c]);
      }
    }
  });
}

// out = u*s_u[s][c] [+ v*s_v[s][c]] [+ bias[c]] (s = row's sample). out may be u.
template <typename T, typename Acc, typename ParallelFor>
void scaled_sum(const T* u, const Acc* s_u, const T* v, const Acc* s_v, const T* bias, T* out,
                int64_t rows, int64_t C, int64_t rows_per_sample, ParallelFor parallel_for) {
  parallel_for(0, rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t s = r / rows_per_sample;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = r * C + c;
        Acc o = static_cast<Acc>(u[i]) * s_u[s * C + c];
        if (v) o += static_cast<Acc>(v[i]) * s_v[s * C + c];
        if (bias) o += static_cast<Acc>(bias[c]);
        out[i] = static_cast<T>(o);
      }
    }
  });
}

// sums[c] = sum over rows of g*y [* row_scale[row / rows_per_sample]]: chunk partials from the
// shape alone, added in chunk order.
template <typename T, typename Acc, typename ParallelFor>
void scaled_product_column_sums(const T* g, const T* y, const T* row_scale, Acc* sums, int64_t rows,
                                int64_t C, int64_t rows_per_sample, ParallelFor parallel_for) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, 64));
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  std::vector<Acc> partial(chunks * C, Acc(0));
  parallel_for(0, chunks, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      Acc* p = partial.data() + chunk * C;
      for (int64_t r = chunk * per_chunk; r < std::min(rows, (chunk + 1) * per_chunk); ++r) {
        const Acc rs = row_scale ? static_cast<Acc>(row_scale[r / rows_per_sample]) : Acc(1);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          p[c] += static_cast<Acc>(g[r * C + c]) * static_cast<Acc>(y[r * C + c]) * rs;
      }
    }
  });
  std::fill(sums, sums + C, Acc(0));
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t c = 0; c < C; ++c) sums[c] += partial[chunk * C + c];
}

}  // namespace ck::cpu
