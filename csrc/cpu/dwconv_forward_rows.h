// One output row of the depthwise k×k convolution (stride 1, padding k/2) on N,H,W,C data, fp32
// math, for one instruction set (isa.h). A row of output pixels is computed in blocks of up to 16
// pixels × one channel vector whose accumulators stay in registers while all k*k taps are added;
// per tap row, each input vector is loaded once for every pixel it reaches (register blocking,
// sliding window). fp32, bf16 and fp16 inputs are read in place where the channels are a whole
// number of vectors (simd_vectors.h: load_lanes); with AVX512-BF16, bf16 inputs are not widened:
// one bf16 dot product adds the taps of two tap rows (conv_pixels_bf16_dot). The padding is
// never stored: tap rows outside the image are skipped, and the pixel blocks at a row's ends skip
// the columns outside it. Torch-free.
#pragma once
#include <cstdint>
#include <type_traits>

#include "dwconv_row_tiles.h"

namespace ck::cpu::simd {

// TW output pixels of one channel vector, from column col0 + pad on (the window's left column
// is col0), K known at compile time; taps [K*K][Cp] at the vector's channels; out at the first
// pixel. Per tap row, the K taps sit in registers and each of the TW + K - 1 input vectors the
// row needs is loaded once and added to every pixel it reaches (sliding window): TW + 2K - 1
// loads for TW*K FMAs, where one load per FMA made the loads the bottleneck. Each pixel still
// sums its taps in (ky, kx) order.
template <int V, int TW, int K, bool kEdge, typename T>
__attribute__((always_inline)) inline void conv_pixels(const RowWindow<T>& win, int64_t col0,
                                                       const float* taps, const Vec<V>& bias,
                                                       float* out, int64_t Cp) {
  static_assert(TW + K + 1 <= vector_registers<V>(), "the tile would spill");
  Vec<V> acc[TW];
  for (int p = 0; p < TW; ++p) acc[p] = bias;
  for (int64_t ky = win.ky_begin; ky < win.ky_end; ++ky) {
    const T* x_row = win.x + (ky - win.ky_begin) * win.row_stride;
    const float* t_row = taps + ky * K * Cp;
    Vec<V> t[K];
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) t[kx] = load<V>(t_row + kx * Cp);
#pragma GCC unroll 32
    for (int j = 0; j < TW + K - 1; ++j) {
      if (kEdge && (col0 + j < 0 || col0 + j >= win.W)) continue;  // padding: adds nothing
      const Vec<V> xv = load_lanes<V>(x_row + (col0 + j) * win.xs);
#pragma GCC unroll 16
      for (int kx = 0; kx < K; ++kx) {
        const int p = j - kx;
        if (p >= 0 && p < TW) acc[p] += xv * t[kx];
      }
    }
  }
  for (int p = 0; p < TW; ++p) store<V>(out + p * Cp, acc[p]);
}

// The same for a kernel width k known only at run time: TW accumulators, each tap vector loaded
// once for the TW pixels.
template <int V, int TW, bool kEdge, typename T>
__attribute__((always_inline)) inline void conv_pixels_any_k(const RowWindow<T>& win, int64_t col0,
                                                             const float* taps, const Vec<V>& bias,
                                                             float* out, int64_t k, int64_t Cp) {
  Vec<V> acc[TW];
  for (int p = 0; p < TW; ++p) acc[p] = bias;
  for (int64_t ky = win.ky_begin; ky < win.ky_end; ++ky) {
    const T* x_row = win.x + (ky - win.ky_begin) * win.row_stride;
    const float* t_row = taps + ky * k * Cp;
    for (int64_t kx = 0; kx < k; ++kx) {
      const Vec<V> t = load<V>(t_row + kx * Cp);
      for (int p = 0; p < TW; ++p) {
        acc[p] += load_column<V, kEdge>(x_row, col0 + p + kx, win.W, win.xs) * t;
      }
    }
  }
  for (int p = 0; p < TW; ++p) store<V>(out + p * Cp, acc[p]);
}

// bf16 dot products for 16 lanes: acc[i] += a.hi[i] * b.hi[i], then acc[i] += a.lo[i] * b.lo[i],
// each 32-bit lane of a and b holding two bf16 (lo: bits 0-15, hi: bits 16-31). Products of two
// bf16 are exact in fp32, so each step rounds once, as an FMA does.
using Bf16Pairs = BitsOf<16>::u32;

#if CK_CPU_X86
// vdpbf16ps (AVX512-BF16; it also flushes subnormals to zero). An asm statement, as fp16's load.
struct NativeBf16Dot {
  __attribute__((always_inline)) static void add(Vec<16>& acc, const Bf16Pairs& a,
                                                 const Bf16Pairs& b) {
    asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  }
};
#endif

// The same sums as two FMAs on the halves widened to fp32: the emulation the tests run on CPUs
// without AVX512-BF16 (isa.h).
struct EmulatedBf16Dot {
  __attribute__((always_inline)) static void add(Vec<16>& acc, const Bf16Pairs& a,
                                                 const Bf16Pairs& b) {
    constexpr uint32_t kHigh = 0xFFFF0000u;
    acc += as_floats<16>(a & kHigh) * as_floats<16>(b & kHigh);
    acc += as_floats<16>(a << 16) * as_floats<16>(b << 16);
  }
};

// One tap row (kPair: two, ky and ky + 1) of conv_pixels for bf16 inputs with a bf16 dot
// product: lane i of each column's input holds the pixel's channel i from the lower row (lo) and
// the upper row (hi), each tap vector the two rows' taps, so that one dot product adds two taps
// (on two rows: the interleaving of each column is then shared by all K taps of the pair, where
// pairs along a row would need it once per tap). taps_lo/taps_hi: fp32 taps [K][Cp] of the rows,
// bf16 values (the weights are bf16), whose upper 16 bits are the bf16 bits.
template <int TW, int K, bool kEdge, bool kPair, typename Dot>
__attribute__((always_inline)) inline void add_tap_row_pair(Vec<16>* acc, const Bf16Bits* x_lo,
                                                            const Bf16Bits* x_hi,
                                                            const float* taps_lo,
                                                            const float* taps_hi, int64_t col0,
                                                            int64_t W, int64_t xs, int64_t Cp) {
  Bf16Pairs t[K];
#pragma GCC unroll 16
  for (int kx = 0; kx < K; ++kx) {
    t[kx] = as_bits<16>(load<16>(taps_lo + kx * Cp)) >> 16;
    if constexpr (kPair) t[kx] |= as_bits<16>(load<16>(taps_hi + kx * Cp));
  }
#pragma GCC unroll 32
  for (int j = 0; j < TW + K - 1; ++j) {
    if (kEdge && (col0 + j < 0 || col0 + j >= W)) continue;  // padding: adds nothing
    Bf16Pairs xv = load_widened<16>(x_lo + (col0 + j) * xs);
    if constexpr (kPair) xv |= load_widened<16>(x_hi + (col0 + j) * xs) << 16;
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) {
      const int p = j - kx;
      if (p >= 0 && p < TW) Dot::add(acc[p], xv, t[kx]);
    }
  }
}

// conv_pixels for bf16 inputs and 16 lanes through the bf16 dot product Dot, tap rows in pairs
// (an odd one alone, its upper halves zero). The sums per pixel are those of conv_pixels in
// another order: (ky pair, kx, upper row first).
template <int TW, int K, bool kEdge, typename Dot>
__attribute__((always_inline)) inline void conv_pixels_bf16_dot(const RowWindow<Bf16Bits>& win,
                                                                int64_t col0, const float* taps,
                                                                const Vec<16>& bias, float* out,
                                                                int64_t Cp) {
  static_assert(TW + K + 2 <= vector_registers<16>(), "the tile would spill");
  Vec<16> acc[TW];
  for (int p = 0; p < TW; ++p) acc[p] = bias;
  int64_t ky = win.ky_begin;
  for (; ky + 1 < win.ky_end; ky += 2) {
    const Bf16Bits* x_lo = win.x + (ky - win.ky_begin) * win.row_stride;
    add_tap_row_pair<TW, K, kEdge, true, Dot>(acc, x_lo, x_lo + win.row_stride, taps + ky * K * Cp,
                                              taps + (ky + 1) * K * Cp, col0, win.W, win.xs, Cp);
  }
  if (ky < win.ky_end) {
    const Bf16Bits* x_lo = win.x + (ky - win.ky_begin) * win.row_stride;
    add_tap_row_pair<TW, K, kEdge, false, Dot>(acc, x_lo, nullptr, taps + ky * K * Cp, nullptr,
                                               col0, win.W, win.xs, Cp);
  }
  for (int p = 0; p < TW; ++p) store<16>(out + p * Cp, acc[p]);
}

// A block of tw (1..TW) pixels: the instantiation for tw, found at run time. Dot: the bf16 dot
// product for bf16 inputs (void: fp32 FMAs).
template <int V, int K, int TW, bool kEdge, typename Dot, typename T>
__attribute__((always_inline)) inline void conv_block(int64_t tw, const RowWindow<T>& win,
                                                      int64_t col0, const float* taps,
                                                      const Vec<V>& bias, float* out, int64_t k,
                                                      int64_t Cp) {
  if constexpr (TW >= 1) {
    if (tw < TW) return conv_block<V, K, TW - 1, kEdge, Dot>(tw, win, col0, taps, bias, out, k, Cp);
    if constexpr (!std::is_void_v<Dot>) {
      static_assert(V == 16 && K > 0 && std::is_same_v<T, Bf16Bits>);
      conv_pixels_bf16_dot<TW, K, kEdge, Dot>(win, col0, taps, bias, out, Cp);
    } else if constexpr (K > 0) {
      conv_pixels<V, TW, K, kEdge>(win, col0, taps, bias, out, Cp);
    } else {
      conv_pixels_any_k<V, TW, kEdge>(win, col0, taps, bias, out, k, Cp);
    }
  }
}

// One output row of W pixels, all Cp channels, into out [W][Cp] (pixels Cp floats apart). Pixel
// blocks outside, channel vectors inside: a block reads its window's pixels whole, line after
// line (faster than the channel vectors outside, which read each pixel's lines apart).
template <int V, int K, typename Dot, typename T>
__attribute__((always_inline)) inline void conv_row_impl(const RowWindow<T>& win, const float* taps,
                                                         const float* bias, float* out, int64_t Cp,
                                                         int64_t k) {
  constexpr int kTile = K > 0 ? max_tile_width<V, K>() : 8;
  const int64_t pad = k / 2;
  const int64_t blocks = block_count<kTile>(win.W);
  for (int64_t block = 0, w = 0, tw; block < blocks; ++block, w += tw) {
    tw = block_width(win.W, w, blocks, block);
    const bool edge = block_at_edge(win.W, w, tw, pad);
    for (int64_t c = 0; c < Cp; c += V) {
      const Vec<V> b = bias ? load<V>(bias + c) : Vec<V>{};
      RowWindow<T> win_c = win;
      win_c.x += c;
      if (edge) {
        conv_block<V, K, kTile, true, Dot>(tw, win_c, w - pad, taps + c, b, out + c + w * Cp, k,
                                           Cp);
      } else {
        conv_block<V, K, kTile, false, Dot>(tw, win_c, w - pad, taps + c, b, out + c + w * Cp, k,
                                            Cp);
      }
    }
  }
}

// (Dot: as conv_block's, for k known at compile time; the others take fp32 FMAs.)
template <int V, typename Dot, typename T>
__attribute__((always_inline)) inline void conv_row_any_k(const RowWindow<T>& win,
                                                          const float* taps, const float* bias,
                                                          float* out, int64_t Cp, int64_t k) {
  if (k == 7) return conv_row_impl<V, 7, Dot>(win, taps, bias, out, Cp, k);  // ConvNeXt's
  if (k == 3) return conv_row_impl<V, 3, Dot>(win, taps, bias, out, Cp, k);
  conv_row_impl<V, 0, void>(win, taps, bias, out, Cp, k);
}

}  // namespace ck::cpu::simd
