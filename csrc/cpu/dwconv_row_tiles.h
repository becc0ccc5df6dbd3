// What the depthwise conv's row kernels (dwconv_forward_rows.h, dwconv_wgrad_rows.h) share: the
// window of input rows one output row reads, the columns of an input row as vectors (zero in the
// padding), and how a row is cut into register tiles of pixels.
#pragma once
#include <cstdint>

#include "simd_vectors.h"

namespace ck::cpu::simd {

// Pixels per register tile for a kernel width K known at compile time: the tile's TW vectors
// (accumulators in the forward, g in the weight gradient), K more (taps, or tap accumulators)
// and one input vector fit the registers without spilling; at most 16.
template <int V, int K>
constexpr int max_tile_width() {
  constexpr int free = vector_registers<V>() - K - 1;
  return free < 16 ? free : 16;
}

// The input vector at column col of an input row (pixels xs elements apart, W of them), zero
// outside the row (the convolution's padding) where the tile reaches an edge.
template <int V, bool kEdge, typename T>
__attribute__((always_inline)) inline Vec<V> load_column(const T* x_row, int64_t col, int64_t W,
                                                         int64_t xs) {
  return !kEdge || (col >= 0 && col < W) ? load_lanes<V>(x_row + col * xs) : Vec<V>{};
}

// Where one output row's taps read: x (fp32, or bf16 read in place) at input row
// h - pad + ky_begin, column 0, of the first channel vector, rows row_stride and pixels xs
// elements apart; the tap rows [ky_begin, ky_end) that fall inside the image (the rest of the
// padding adds nothing and is skipped).
template <typename T>
struct RowWindow {
  const T* x;
  int64_t ky_begin, ky_end, W, xs, row_stride;
};

// Pixel blocks of a row: the fewest blocks of at most kTile pixels, of (nearly) equal widths
// (block_width), so that ConvNeXt's 56/28/14/7-pixel rows go in blocks of 14 or 7 (AVX-512) and
// 8 or 7 (AVX2), none narrow. (Loops, not a helper taking a lambda: a lambda would be compiled
// without the row function's instruction set.)
template <int kTile>
constexpr int64_t block_count(int64_t W) {
  return (W + kTile - 1) / kTile;
}

// The width of the block that starts at pixel w, the block-th of blocks.
inline int64_t block_width(int64_t W, int64_t w, int64_t blocks, int64_t block) {
  return (W - w) / (blocks - block);
}

// Whether the window of pixels [w, w + tw) reaches the padding.
inline bool block_at_edge(int64_t W, int64_t w, int64_t tw, int64_t pad) {
  return w < pad || w + tw + pad > W;
}

}  // namespace ck::cpu::simd
