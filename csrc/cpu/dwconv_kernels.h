// Depthwise k×k convolution (stride 1, padding k/2) on N,H,W,C-contiguous buffers, for the CPU.
// Torch-free: T is the storage type (float, double, c10::Half, c10::BFloat16, ...), Acc the
// accumulation type; `parallel_for(begin, end, fn)` runs fn(b, e) over a partition of [begin, end).
// The innermost loops run over contiguous channels so the compiler vectorises them.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace ck::cpu {

struct DwconvShape {
  int64_t N, H, W, C;
  int64_t k;
};

// y[n,h,w,c] = bias[c] + sum_{ky,kx} x[n, h+ky-k/2, w+kx-k/2, c] * taps[ky*k+kx][c]
template <typename T, typename Acc, typename ParallelFor>
void dwconv_forward(const T* x, const Acc* taps, const Acc* bias, T* y, DwconvShape s,
                    ParallelFor parallel_for) {
  const int64_t pad = s.k / 2, C = s.C;
  parallel_for(0, s.N * s.H, [&](int64_t row_begin, int64_t row_end) {
    std::vector<Acc> acc(C);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t n = row / s.H, h = row % s.H;
      const int64_t ky_lo = std::max<int64_t>(0, pad - h);
      const int64_t ky_hi = std::min<int64_t>(s.k, s.H + pad - h);
      for (int64_t w = 0; w < s.W; ++w) {
        for (int64_t c = 0; c < C; ++c) acc[c] = bias ? bias[c] : Acc(0);
        const int64_t kx_lo = std::max<int64_t>(0, pad - w);
        const int64_t kx_hi = std::min<int64_t>(s.k, s.W + pad - w);
        for (int64_t ky = ky_lo; ky < ky_hi; ++ky) {
          const T* x_row = x + ((n * s.H + h + ky - pad) * s.W + w - pad) * C;
          for (int64_t kx = kx_lo; kx < kx_hi; ++kx) {
            const T* xp = x_row + kx * C;
            const Acc* tp = taps + (ky * s.k + kx) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<Acc>(xp[c]) * tp[c];
          }
        }
        T* yp = y + (row * s.W + w) * C;
        for (int64_t c = 0; c < C; ++c) yp[c] = static_cast<T>(acc[c]);
      }
    }
  });
}

// Rows (n, h) are cut into chunks that depend on the shape alone; each chunk sums its own
// partial [k*k + 1][C] (taps, then bias), and the partials are added in chunk order, so the
// result is bitwise the same for any thread count.
inline int64_t weight_grad_chunks(DwconvShape s) {
  constexpr int64_t kPartialBudget = int64_t(1) << 23;  // elements of all partials together
  const int64_t per_chunk = (s.k * s.k + 1) * s.C;
  return std::max<int64_t>(1, std::min<int64_t>(s.N * s.H, kPartialBudget / per_chunk));
}

// grad_taps[ky*k+kx][c] = sum_{n,h,w} g[n,h,w,c] * x[n, h+ky-k/2, w+kx-k/2, c];
// grad_bias[c] = sum_{n,h,w} g[n,h,w,c].
template <typename T, typename Acc, typename ParallelFor>
void dwconv_backward_weight(const T* g, const T* x, Acc* grad_taps, Acc* grad_bias,
                            DwconvShape s, ParallelFor parallel_for) {
  const int64_t pad = s.k / 2, C = s.C, taps = s.k * s.k;
  const int64_t rows = s.N * s.H;
  const int64_t chunks = weight_grad_chunks(s);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  std::vector<Acc> partial(chunks * (taps + 1) * C, Acc(0));
  parallel_for(0, chunks, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<Acc> gv(C);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      Acc* part = partial.data() + chunk * (taps + 1) * C;
      Acc* part_bias = part + taps * C;
      const int64_t row_end = std::min(rows, (chunk + 1) * rows_per_chunk);
      for (int64_t row = chunk * rows_per_chunk; row < row_end; ++row) {
        const int64_t n = row / s.H, h = row % s.H;
        const int64_t ky_lo = std::max<int64_t>(0, pad - h);
        const int64_t ky_hi = std::min<int64_t>(s.k, s.H + pad - h);
        for (int64_t w = 0; w < s.W; ++w) {
          const T* gp = g + (row * s.W + w) * C;
          for (int64_t c = 0; c < C; ++c) {
            gv[c] = static_cast<Acc>(gp[c]);
            part_bias[c] += gv[c];
          }
          const int64_t kx_lo = std::max<int64_t>(0, pad - w);
          const int64_t kx_hi = std::min<int64_t>(s.k, s.W + pad - w);
          for (int64_t ky = ky_lo; ky < ky_hi; ++ky) {
            const T* x_row = x + ((n * s.H + h + ky - pad) * s.W + w - pad) * C;
            for (int64_t kx = kx_lo; kx < kx_hi; ++kx) {
              const T* xp = x_row + kx * C;
              Acc* pp = part + (ky * s.k + kx) * C;
              for (int64_t c = 0; c < C; ++c) pp[c] += gv[c] * static_cast<Acc>(xp[c]);
            }
          }
        }
      }
    }
  });
  parallel_for(0, taps + 1, [&](int64_t j_begin, int64_t j_end) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      Acc* out = j < taps ? grad_taps + j * C : grad_bias;
      for (int64_t c = 0; c < C; ++c) out[c] = Acc(0);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const Acc* pp = partial.data() + (chunk * (taps + 1) + j) * C;
        for (int64_t c = 0; c < C; ++c) out[c] += pp[c];
      }
    }
  });
}

}  // namespace ck::cpu
