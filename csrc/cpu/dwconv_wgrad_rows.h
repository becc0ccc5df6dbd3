// One output row's contribution to the depthwise conv's weight and bias gradients, fp32 math, for
// one instruction set (isa.h): per channel vector and tap row, the k tap accumulators stay in
// registers over the whole row. Torch-free.
#pragma once
#include <cstdint>

#include "dwconv_row_tiles.h"

namespace ck::cpu::simd {

// acc[kx] += sum_{p < TW} g[p] * x[col0 + p + kx] for the K taps of one tap row, K known at
// compile time (g pixels Cp floats apart): the TW vectors of g sit in registers and each of the
// TW + K - 1 input vectors is loaded once and multiplied into every tap it reaches (sliding
// window), 2 TW + K - 1 loads for TW*K FMAs. Each tap's terms are still added in pixel order.
template <int V, int TW, int K, bool kEdge, typename T>
__attribute__((always_inline)) inline void wgrad_pixels(const T* x_row, int64_t col0, int64_t W,
                                                        int64_t xs, const float* g, int64_t Cp,
                                                        Vec<V>* acc) {
  static_assert(TW + K + 1 <= vector_registers<V>(), "the tile would spill");
  Vec<V> gv[TW];
#pragma GCC unroll 16
  for (int p = 0; p < TW; ++p) gv[p] = load<V>(g + p * Cp);
#pragma GCC unroll 32
  for (int j = 0; j < TW + K - 1; ++j) {
    if (kEdge && (col0 + j < 0 || col0 + j >= W)) continue;  // padding: adds nothing
    const Vec<V> xv = load_lanes<V>(x_row + (col0 + j) * xs);
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) {
      const int p = j - kx;
      if (p >= 0 && p < TW) acc[kx] += gv[p] * xv;
    }
  }
}

// A block of tw (1..TW) pixels: the instantiation for tw, found at run time.
template <int V, int K, int TW, bool kEdge, typename T>
__attribute__((always_inline)) inline void wgrad_block(int64_t tw, const T* x_row, int64_t col0,
                                                       int64_t W, int64_t xs, const float* g,
                                                       int64_t Cp, Vec<V>* acc) {
  if constexpr (TW >= 1) {
    if (tw < TW) return wgrad_block<V, K, TW - 1, kEdge>(tw, x_row, col0, W, xs, g, Cp, acc);
    wgrad_pixels<V, TW, K, kEdge>(x_row, col0, W, xs, g, Cp, acc);
  }
}

// The weight gradient of one output row, added to part [k*k + 1][Cp] (taps, then bias):
// part[ky*k + kx][c] += sum_w g[w][c] * x[h - pad + ky][w - pad + kx][c] over the tap rows of
// win, part[k*k][c] += sum_w g[w][c]; g [W][Cp] fp32. Per channel vector and tap row, the k tap
// accumulators stay in registers over the whole row; with K known at compile time the row goes
// in pixel blocks through wgrad_pixels, otherwise each g vector is loaded once for k taps.
template <int V, int K, typename T>
__attribute__((always_inline)) inline void wgrad_row_impl(const RowWindow<T>& win, const float* g,
                                                          float* part, int64_t Cp, int64_t k) {
  const int64_t pad = k / 2, W = win.W, xs = win.xs;
  float* part_bias = part + k * k * Cp;
  for (int64_t c = 0; c < Cp; c += V) {
    Vec<V> bias_acc = load<V>(part_bias + c);
    for (int64_t w = 0; w < W; ++w) bias_acc += load<V>(g + w * Cp + c);
    store<V>(part_bias + c, bias_acc);
    for (int64_t ky = win.ky_begin; ky < win.ky_end; ++ky) {
      const T* x_row = win.x + (ky - win.ky_begin) * win.row_stride + c;
      float* p_row = part + ky * k * Cp + c;
      if constexpr (K > 0) {
        constexpr int kTile = max_tile_width<V, K>();
        Vec<V> acc[K];
        for (int kx = 0; kx < K; ++kx) acc[kx] = load<V>(p_row + kx * Cp);
        const int64_t blocks = block_count<kTile>(W);
        for (int64_t block = 0, w = 0, tw; block < blocks; ++block, w += tw) {
          tw = block_width(W, w, blocks, block);
          if (block_at_edge(W, w, tw, pad)) {
            wgrad_block<V, K, kTile, true>(tw, x_row, w - pad, W, xs, g + w * Cp + c, Cp, acc);
          } else {
            wgrad_block<V, K, kTile, false>(tw, x_row, w - pad, W, xs, g + w * Cp + c, Cp, acc);
          }
        }
        for (int kx = 0; kx < K; ++kx) store<V>(p_row + kx * Cp, acc[kx]);
      } else {
        for (int64_t kx = 0; kx < k; ++kx) {
          Vec<V> acc = load<V>(p_row + kx * Cp);
          for (int64_t w = 0; w < W; ++w) {
            acc += load<V>(g + w * Cp + c) * load_column<V, true>(x_row, w - pad + kx, W, xs);
          }
          store<V>(p_row + kx * Cp, acc);
        }
      }
    }
  }
}

template <int V, typename T>
__attribute__((always_inline)) inline void wgrad_row_any_k(const RowWindow<T>& win, const float* g,
                                                           float* part, int64_t Cp, int64_t k) {
  if (k == 7) return wgrad_row_impl<V, 7>(win, g, part, Cp, k);
  if (k == 3) return wgrad_row_impl<V, 3>(win, g, part, Cp, k);
  wgrad_row_impl<V, 0>(win, g, part, Cp, k);
}

}  // namespace ck::cpu::simd
