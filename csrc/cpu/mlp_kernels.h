// The elementwise and reduction passes of the ConvNeXt MLP and of GRN on the CPU, between the
// GEMMs (ATen's, in mlp.cpp) and around GELU (gelu_kernels.h). Torch-free; T is the storage type,
// Acc the accumulation type (float, or double for double); parallel_for(begin, end, fn) as in
// dwconv_plain_kernels.h. Rows are [rows, C] contiguous; "samples" are consecutive groups of
// rows_per_sample rows (N,H,W,C: a sample is an image). Every reduction has a fixed order (bitwise
// reproducible).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "convert.h"
#include "flags.h"

namespace ck::cpu {

// Rows [begin, end) of the MLP's output pass: v = y [+ bias]; y_out = v (when kYOut; may be y);
// out = [residual +] [col_scale *] row_scale[(first_row + row) / rows_per_sample] * v (row_scale
// may be null: 1; first_row: where these rows start among the op's, for a tile of them). The
// optional operands are template flags (flags.h), so that the loop vectorises.
struct OutputRows {
  template <bool kBias, bool kYOut, bool kColScale, bool kResidual, typename T>
  __attribute__((always_inline)) inline static void run(const T* y, const T* bias,
                                                        const T* col_scale, const T* row_scale,
                                                        const T* residual, T* y_out, T* out,
                                                        int64_t begin, int64_t end, int64_t C,
                                                        int64_t rows_per_sample,
                                                        int64_t first_row) {
    using Acc = acc_t<T>;
    for (int64_t r = begin; r < end; ++r) {
      const Acc rs = row_scale ? to_acc<Acc>(row_scale[(first_row + r) / rows_per_sample]) : Acc(1);
      const T* yr = y + r * C;
      const T* res = residual + (kResidual ? r * C : 0);
      T* yo = y_out + (kYOut ? r * C : 0);
      T* o = out + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        Acc v = to_acc<Acc>(yr[c]);
        if constexpr (kBias) v += to_acc<Acc>(bias[c]);
        if constexpr (kYOut) yo[c] = from_acc<T>(v);
        v *= rs;
        if constexpr (kColScale) v *= to_acc<Acc>(col_scale[c]);
        if constexpr (kResidual) v += to_acc<Acc>(res[c]);
        o[c] = from_acc<T>(v);
      }
    }
  }
};

template <typename T>
__attribute__((always_inline)) inline void output_rows(const T* y, const T* bias,
                                                       const T* col_scale, const T* row_scale,
                                                       const T* residual, T* y_out, T* out,
                                                       int64_t begin, int64_t end, int64_t C,
                                                       int64_t rows_per_sample, int64_t first_row) {
  const bool has[] = {bias != nullptr, y_out != nullptr, col_scale != nullptr, residual != nullptr};
  with_flags<4, OutputRows>(has, y, bias, col_scale, row_scale, residual, y_out, out, begin, end, C,
                            rows_per_sample, first_row);
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
