// The plain depthwise k×k convolution (stride 1, padding k/2) on N,H,W,C-contiguous buffers, for
// the CPU: the float64 path (fp32, fp16 and bf16 take the SIMD rows: dwconv_driver.h). Torch-free:
// T is the storage type (float, double, c10::Half, c10::BFloat16, ...), Acc the accumulation type;
// `parallel_for(begin, end, fn)` runs fn(b, e) over a partition of [begin, end). The innermost
// loops run over contiguous channels so the compiler vectorises them.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace ck::cpu {

struct DwconvShape {
  int64_t N, H, W, C;
  int64_t k;
};

// Channels per register block of the forward: the block's accumulators stay in registers while
// all k*k taps are added (a fixed trip count the compiler vectorises).
constexpr int64_t kChannelBlock = 16;

// Adds the taps of one output pixel to acc[0, nc) for channels c0 .. c0 + nc.
template <int64_t NC, typename T, typename Acc>
inline void accumulate_taps(Acc* acc, const T* x_c0, const Acc* taps_c0, int64_t nc, int64_t ky_lo,
                            int64_t ky_hi, int64_t kx_lo, int64_t kx_hi, int64_t k,
                            int64_t row_stride, int64_t C) {
  const int64_t n = NC > 0 ? NC : nc;
  for (int64_t ky = ky_lo; ky < ky_hi; ++ky) {
    for (int64_t kx = kx_lo; kx < kx_hi; ++kx) {
      const T* xp = x_c0 + ky * row_stride + kx * C;
      const Acc* tp = taps_c0 + (ky * k + kx) * C;
      for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<Acc>(xp[j]) * tp[j];
    }
  }
}

// y[n,h,w,c] = bias[c] + sum_{ky,kx} x[n, h+ky-k/2, w+kx-k/2, c] * taps[ky*k+kx][c]
template <typename T, typename Acc, typename ParallelFor>
void dwconv_forward(const T* x, const Acc* taps, const Acc* bias, T* y, DwconvShape s,
                    ParallelFor parallel_for) {
  const int64_t pad = s.k / 2, C = s.C, row_stride = s.W * C;
  parallel_for(0, s.N * s.H, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t n = row / s.H, h = row % s.H;
      const int64_t ky_lo = std::max<int64_t>(0, pad - h);
      const int64_t ky_hi = std::min<int64_t>(s.k, s.H + pad - h);
      for (int64_t w = 0; w < s.W; ++w) {
        const int64_t kx_lo = std::max<int64_t>(0, pad - w);
        const int64_t kx_hi = std::min<int64_t>(s.k, s.W + pad - w);
        // x at tap (0, 0) of this pixel; only taps in [lo, hi) are dereferenced.
        const T* x_pixel = x + ((n * s.H + h - pad) * s.W + w - pad) * C;
        T* yp = y + (row * s.W + w) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
          const int64_t nc = std::min(kChannelBlock, C - c0);
          Acc acc[kChannelBlock];
          for (int64_t j = 0; j < nc; ++j) acc[j] = bias ? bias[c0 + j] : Acc(0);
          if (nc == kChannelBlock) {
            accumulate_taps<kChannelBlock>(acc, x_pixel + c0, taps + c0, nc, ky_lo, ky_hi, kx_lo,
                                           kx_hi, s.k, row_stride, C);
          } else {
            accumulate_taps<0>(acc, x_pixel + c0, taps + c0, nc, ky_lo, ky_hi, kx_lo, kx_hi, s.k,
                               row_stride, C);
          }
          for (int64_t j = 0; j < nc; ++j) yp[c0 + j] = static_cast<T>(acc[j]);
        }
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
void dwconv_backward_weight(const T* g, const T* x, Acc* grad_taps, Acc* grad_bias, DwconvShape s,
                            ParallelFor parallel_for) {
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
