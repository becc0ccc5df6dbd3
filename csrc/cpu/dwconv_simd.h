// Depthwise k×k convolution forward (stride 1, padding k/2) on N,H,W,C buffers for the CPU with
// SIMD, fp32 math, the instruction set chosen at run time (AVX-512 with or without AVX512-BF16,
// AVX2+FMA+F16C, or portable).
//
// Torch-free. A row of output pixels is computed in blocks of up to 16 pixels × one channel
// vector whose accumulators stay in registers while all k*k taps are added; per tap row, each
// input vector is loaded once for every pixel it reaches (register blocking, sliding window).
// Where the channels are a multiple of the vector width, fp32, bf16 and fp16 inputs are read in
// place (bf16 and fp16 converted to fp32 in registers, load_lanes; fp16 not in the portable
// set); otherwise the rows a band of output rows needs are first converted once to fp32
// ([rows][W][Cp], channels rounded up to the vector width). With AVX512-BF16, bf16 inputs are not
// widened in the forward: one bf16 dot product adds the taps of two tap rows
// (conv_pixels_bf16_dot). The padding is never stored: tap rows outside the image are skipped,
// and the pixel blocks at a row's ends skip (or read as zero) the columns outside it. Rows are
// computed in fp32, in place in an fp32 output where they can be, else in scratch and then
// stored.
//
// The vector code is GCC/Clang vector extensions, compiled once per instruction set (isa.h);
// instructions that the compiler would not emit well from them are asm statements (load_widened,
// load_lanes for fp16, NativeBf16Dot).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "grain.h"
#include "isa.h"

namespace ck::cpu::simd {

// (Spelled per width: GCC drops vector_size on an alias template of a dependent size.)
template <int V>
struct VecOf;
template <>
struct VecOf<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct VecOf<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<16> {
  typedef float type __attribute__((vector_size(64)));
};
template <int V>
using Vec = typename VecOf<V>::type;

template <int V>
__attribute__((always_inline)) inline Vec<V> load(const float* p) {
  Vec<V> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int V>
__attribute__((always_inline)) inline void store(float* p, const Vec<V>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// V 16-bit lanes (bf16 bits) and V 32-bit lanes (their fp32 widening).
template <int V>
struct BitsOf;
template <>
struct BitsOf<4> {
  typedef uint16_t u16 __attribute__((vector_size(8)));
  typedef uint32_t u32 __attribute__((vector_size(16)));
};
template <>
struct BitsOf<8> {
  typedef uint16_t u16 __attribute__((vector_size(16)));
  typedef uint32_t u32 __attribute__((vector_size(32)));
};
template <>
struct BitsOf<16> {
  typedef uint16_t u16 __attribute__((vector_size(32)));
  typedef uint32_t u32 __attribute__((vector_size(64)));
};

// V inputs as fp32 lanes: fp32 as they are; bf16 (its bits) widened in registers, a shift; fp16
// converted in registers (vcvtph2ps: F16C, AVX-512F for 16 lanes). So these inputs are read in
// place, not from a converted copy.
template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const float* p) {
  return load<V>(p);
}

// V bf16 inputs (their bits) zero-extended to 32-bit lanes: the bf16 in bits 0-15. (For 8 and 16
// lanes an asm statement, vpmovzxwd: GCC 12 builds the 16-lane conversion from 128-bit pieces
// through the stack.)
template <int V>
__attribute__((always_inline)) inline typename BitsOf<V>::u32 load_widened(const Bf16Bits* p) {
#if CK_CPU_X86
  if constexpr (V >= 8) {
    typename BitsOf<V>::u32 wide;
    asm("vpmovzxwd %1, %0"
        : "=v"(wide)
        : "m"(*reinterpret_cast<const typename BitsOf<V>::u16*>(p)));
    return wide;
  }
#endif
  typename BitsOf<V>::u16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return __builtin_convertvector(bits, typename BitsOf<V>::u32);
}

template <int V>
__attribute__((always_inline)) inline Vec<V> as_floats(const typename BitsOf<V>::u32& bits) {
  Vec<V> v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

template <int V>
__attribute__((always_inline)) inline typename BitsOf<V>::u32 as_bits(const Vec<V>& v) {
  typename BitsOf<V>::u32 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const Bf16Bits* p) {
  return as_floats<V>(load_widened<V>(p) << 16);
}

#if CK_CPU_X86
// An asm statement, not the intrinsic: these always-inline helpers carry no target (they are
// compiled into each instruction set's kernels), and GCC will not inline a target intrinsic into
// them, while its own _Float16 vector conversion goes element by element.
template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const F16Bits* p) {
  static_assert(V == 8 || V == 16, "fp16 is read in place by the AVX2 and AVX-512 kernels only");
  Vec<V> v;
  asm("vcvtph2ps %1, %0" : "=v"(v) : "m"(*reinterpret_cast<const typename BitsOf<V>::u16*>(p)));
  return v;
}
#endif

// V fp32 lanes stored as bf16 or fp16 at p, rounded to nearest even: bf16 by from_acc's rule
// (convert.h: NaN to the quiet NaN 0x7FC0) in vectors, fp16 by vcvtps2ph (F16C; an asm
// statement, as its load).
template <int V>
__attribute__((always_inline)) inline void store_lanes(Bf16Bits* p, const Vec<V>& v) {
  using U32 = typename BitsOf<V>::u32;
  const U32 u = as_bits<V>(v);
  const U32 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const U32 nan = reinterpret_cast<U32>(v != v);  // all ones where v is NaN
  const U32 bits = (nan & 0x7FC0u) | (~nan & rounded);
  const typename BitsOf<V>::u16 narrow = __builtin_convertvector(bits, typename BitsOf<V>::u16);
  std::memcpy(p, &narrow, sizeof(narrow));
}

#if CK_CPU_X86
template <int V>
__attribute__((always_inline)) inline void store_lanes(F16Bits* p, const Vec<V>& v) {
  static_assert(V == 8 || V == 16, "fp16 is stored by the AVX2 and AVX-512 kernels only");
  asm("vcvtps2ph $0, %1, %0" : "=m"(*reinterpret_cast<typename BitsOf<V>::u16*>(p)) : "v"(v));
}
#endif

// The type the row kernels read inputs of type T as, in place: fp32 and bf16 as they are, IEEE
// fp16 (convert.h) as F16Bits; void for the others, which go through a converted fp32 copy.
template <typename T>
using in_place_t = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, Bf16Bits>, T,
                                      std::conditional_t<kIeeeHalf<T>, F16Bits, void>>;

// Vector registers of each width's instruction set (AVX-512: 32; AVX2 and SSE: 16).
template <int V>
constexpr int vector_registers() {
  return V == 16 ? 32 : 16;
}

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

// One output row of W pixels, all Cp channels, into out [W][Cp] (pixels Cp floats apart). Pixel
// blocks outside, channel vectors inside: a block reads its window's pixels whole, line after
// line (measured at 56×56×96, batch 8: 1.03-1.07x oneDNN, against 0.91-1.16x with the channel
// vectors outside).
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

// The row kernels of one instruction set for data of type T: (win, taps, bias, out, Cp, k) and
// (win, g, part, Cp, k) as conv_row_impl and wgrad_row_impl, (src, dst, n) as store_converted
// (bf16 and fp16); null where the set cannot read (or store) T itself.
template <typename T>
using RowFn = void (*)(const RowWindow<T>&, const float*, const float*, float*, int64_t, int64_t);
template <typename T>
using WgradRowFn = void (*)(const RowWindow<T>&, const float*, float*, int64_t, int64_t);
template <typename T>
using StoreFn = void (*)(const float*, T*, int64_t);

template <typename T>
struct RowFns {
  RowFn<T> row = nullptr;
  WgradRowFn<T> wgrad_row = nullptr;
  StoreFn<T> store = nullptr;
};

struct RowKernels {
  int lanes;  // floats per vector: Cp is a multiple of it
  RowFns<float> f32;
  RowFns<Bf16Bits> bf16;
  RowFns<F16Bits> f16;  // null in the portable set: no fp16 conversion instruction

  // The kernels for data read (or stored) in place as T (in_place_t).
  template <typename T>
  const RowFns<T>& for_type() const {
    if constexpr (std::is_same_v<T, Bf16Bits>) {
      return bf16;
    } else if constexpr (std::is_same_v<T, F16Bits>) {
      return f16;
    } else {
      return f32;
    }
  }
};

// The row kernels of instruction set isa, and those of this CPU's (isa.h, chosen once per
// process): defined, and so instantiated, in dwconv_rows.cpp alone (in every file that included
// them they cost minutes of compiling).
RowKernels row_kernels(Isa isa);
const RowKernels& this_cpu_row_kernels();

// Channels of the taps, the outputs and the converted inputs: C rounded up to the vector width.
inline int64_t padded_channels(int64_t C, const RowKernels& kernels) {
  return (C + kernels.lanes - 1) / kernels.lanes * kernels.lanes;
}

// Scratch of the calling thread that outlives the call (grown, never shrunk), so that a call
// does not map, fault in and unmap its band buffers (hundreds of KB) each time. (The 2-threads-
// slower-than-1 timing first blamed on this was _C built without OpenMP: see setup.py.)
enum Scratch { kBand, kRow, kPartial, kNorm, kScratchKinds };

inline float* thread_scratch(Scratch kind, size_t floats) {
  thread_local std::vector<float> buffers[kScratchKinds];
  std::vector<float>& buffer = buffers[kind];
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

// pixels pixels of C channels of T (src) as fp32 into dst ([pixels][Cp], channels C..Cp zero): the
// inputs the row kernels cannot read in place (in_place_t void, or C not a multiple of the vector
// width), so that they are converted once per element, not once per tap, and the weight
// gradient's g.
template <typename T>
const float* converted_rows(const T* src, float* dst, int64_t pixels, int64_t C, int64_t Cp) {
  for (int64_t pixel = 0; pixel < pixels; ++pixel) {
    const T* s = src + pixel * C;
    float* d = dst + pixel * Cp;
    for (int64_t c = 0; c < C; ++c) d[c] = to_acc<float>(s[c]);
    std::fill(d + C, d + Cp, 0.0f);
  }
  return dst;
}

// The window of output row h: its tap rows inside the image, read from rows (input row r_begin
// first, [W][Cp] rows).
template <typename T>
RowWindow<T> row_window(const T* rows, int64_t r_begin, int64_t h, int64_t H, int64_t W, int64_t Cp,
                        int64_t k) {
  const int64_t pad = k / 2;
  const int64_t ky_begin = std::max<int64_t>(0, pad - h);
  const int64_t ky_end = std::min<int64_t>(k, H + pad - h);
  return {rows + (h - pad + ky_begin - r_begin) * W * Cp, ky_begin, ky_end, W, Cp, W * Cp};
}

// Calls fn(rows, fns) with the input rows [r_begin, r_end) of x_image as the row kernels read
// them, and the kernels (RowFns) that read them: in place where they can (in_place_t, Cp == C),
// else converted into band.
template <typename T, typename Fn>
void with_input_rows(const T* x_image, float* band, int64_t r_begin, int64_t r_end, int64_t W,
                     int64_t C, int64_t Cp, const RowKernels& kernels, Fn fn) {
  using In = in_place_t<T>;
  if constexpr (!std::is_void_v<In>) {
    const RowFns<In>& fns = kernels.for_type<In>();
    if (Cp == C && fns.row) return fn(reinterpret_cast<const In*>(x_image) + r_begin * W * C, fns);
  }
  fn(converted_rows(x_image + r_begin * W * C, band, (r_end - r_begin) * W, C, Cp), kernels.f32);
}

// weight [C][k*k] and bias [C] (or null) of T -> taps [k*k][Cp] and bias [Cp] fp32, zero
// beyond C. The transposition runs over the threads, tap rows split between them: done on the
// calling thread it was a fifth of the forward at 7×7 pixels and 768 channels, the other
// threads waiting.
template <typename T, typename ParallelFor>
void prepare_taps(const T* weight, const T* bias, int64_t C, int64_t k, int64_t Cp, float* taps,
                  float* bias_p, ParallelFor parallel_for) {
  parallel_for(
      0, k * k,
      [&](int64_t t_begin, int64_t t_end) {
        for (int64_t t = t_begin; t < t_end; ++t) {
          float* row = taps + t * Cp;
          for (int64_t c = 0; c < C; ++c) row[c] = to_acc<float>(weight[c * k * k + t]);
          std::fill(row + C, row + Cp, 0.0f);
        }
      },
      rows_per_task(C));
  if (!bias) return;
  for (int64_t c = 0; c < C; ++c) bias_p[c] = to_acc<float>(bias[c]);
  std::fill(bias_p + C, bias_p + Cp, 0.0f);
}

// Stores one output row [W][Cp] fp32 as W pixels of C channels of T at dst: converted in
// registers where the row has no channel padding and the set stores T (RowFns::store), else
// element by element.
template <typename T>
void store_row(const float* row, T* dst, int64_t W, int64_t C, int64_t Cp,
               const RowKernels& kernels) {
  using In = in_place_t<T>;
  if constexpr (!std::is_void_v<In> && !std::is_same_v<In, float>) {
    const StoreFn<In> store = kernels.for_type<In>().store;
    if (Cp == C && store) return store(row, reinterpret_cast<In*>(dst), W * C);
  }
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t c = 0; c < C; ++c) dst[w * C + c] = from_acc<T>(row[w * Cp + c]);
  }
}

// dwconv(x, weight, bias) row by row: x [N][H][W][C], weight [C][k*k], bias [C] or null, all of
// T; fp32 math. Each output row is computed into rows_f32 + (first pixel)*C where given (an fp32
// [N*H*W][C] output, usable when C is a multiple of the vector width, so that the row needs no
// copy), else into the calling thread's scratch, and handed to emit_row(first pixel (n*H + h)*W,
// row [W][Cp] fp32 (which emit_row may overwrite), Cp), in the thread that computed it.
// parallel_for(begin, end, fn) runs fn(b, e) over a partition of [begin, end). The work items
// are bands of output rows of one image, each converting its own input rows (k - 1 more than it
// has) where they are not read in place: batch 1 still spreads over the threads, and a larger
// batch needs no per-image synchronisation.
template <typename T, typename ParallelFor, typename EmitRow>
void dwconv_forward_rows(const T* x, const T* weight, const T* bias, int64_t N, int64_t H,
                         int64_t W, int64_t C, int64_t k, const RowKernels& kernels,
                         ParallelFor parallel_for, float* rows_f32, EmitRow emit_row) {
  // Bands of at most kBandRows rows, and at least kMinItems of them in all where the images have
  // rows enough: batch 1 at 7×7 pixels was one item, so one thread.
  constexpr int64_t kBandRows = 8, kMinItems = 4;
  const int64_t Cp = padded_channels(C, kernels), pad = k / 2;
  if (Cp != C) rows_f32 = nullptr;
  if (N == 0 || H == 0 || W == 0) return;
  const int64_t min_bands =
      std::min(H, std::max((H + kBandRows - 1) / kBandRows, (kMinItems + N - 1) / N));  // per image
  const int64_t band_rows = (H + min_bands - 1) / min_bands;
  const int64_t bands = (H + band_rows - 1) / band_rows;  // per image
  const std::unique_ptr<float[]> taps(new float[k * k * Cp]), bias_p(new float[Cp]);
  prepare_taps(weight, bias, C, k, Cp, taps.get(), bias_p.get(), parallel_for);
  const float* bias_ptr = bias ? bias_p.get() : nullptr;
  parallel_for(0, N * bands, [&](int64_t item_begin, int64_t item_end) {
    float* band = thread_scratch(kBand, std::min(H, band_rows + k - 1) * W * Cp);
    float* row = thread_scratch(kRow, W * Cp);
    for (int64_t item = item_begin; item < item_end; ++item) {
      const int64_t n = item / bands, h_begin = item % bands * band_rows;
      const int64_t h_end = std::min(H, h_begin + band_rows);
      const int64_t r_begin = std::max<int64_t>(0, h_begin - pad);
      const int64_t r_end = std::min(H, h_end + pad);
      with_input_rows(x + n * H * W * C, band, r_begin, r_end, W, C, Cp, kernels,
                      [&](const auto* rows, const auto& fns) {
                        for (int64_t h = h_begin; h < h_end; ++h) {
                          const int64_t pixel = (n * H + h) * W;
                          float* out = rows_f32 ? rows_f32 + pixel * C : row;
                          fns.row(row_window(rows, r_begin, h, H, W, Cp, k), taps.get(), bias_ptr,
                                  out, Cp, k);
                          emit_row(pixel, out, Cp);
                        }
                      });
    }
  });
}

// y = dwconv(x, weight, bias), y [N][H][W][C] of T.
template <typename T, typename ParallelFor>
void dwconv_forward(const T* x, const T* weight, const T* bias, T* y, int64_t N, int64_t H,
                    int64_t W, int64_t C, int64_t k, const RowKernels& kernels,
                    ParallelFor parallel_for) {
  if constexpr (std::is_same_v<T, float>) {  // each row straight into y where it can
    dwconv_forward_rows(x, weight, bias, N, H, W, C, k, kernels, parallel_for, y,
                        [&](int64_t pixel, const float* row, int64_t Cp) {
                          if (row != y + pixel * C)
                            store_row(row, y + pixel * C, W, C, Cp, kernels);
                        });
  } else {
    dwconv_forward_rows(x, weight, bias, N, H, W, C, k, kernels, parallel_for, nullptr,
                        [&](int64_t pixel, const float* row, int64_t Cp) {
                          store_row(row, y + pixel * C, W, C, Cp, kernels);
                        });
  }
}

// Rows (n, h) per weight-gradient chunk: each chunk pads its own band of rows (k - 1 more than
// it has) and sums its own fp32 partial; the chunks depend on the shape alone and their
// partials are added in chunk order, so the result is the same for any thread count.
inline int64_t wgrad_rows_per_chunk(int64_t N, int64_t H, int64_t C, int64_t k) {
  constexpr int64_t kPartialBudget = int64_t(1) << 23;  // elements of all partials together
  const int64_t rows = N * H;
  const int64_t max_chunks = std::max<int64_t>(1, kPartialBudget / ((k * k + 1) * C));
  const int64_t chunks = std::max<int64_t>(1, std::min(max_chunks, rows / 8));
  return (rows + chunks - 1) / chunks;
}

// grad_taps [k*k][C] and grad_bias [C] (fp32) of dwconv_forward, from g and x [N][H][W][C].
template <typename T, typename ParallelFor>
void dwconv_backward_weight(const T* g, const T* x, float* grad_taps, float* grad_bias, int64_t N,
                            int64_t H, int64_t W, int64_t C, int64_t k, const RowKernels& kernels,
                            ParallelFor parallel_for) {
  const int64_t Cp = padded_channels(C, kernels), pad = k / 2;
  const int64_t taps = k * k, rows = N * H;
  const int64_t rows_per_chunk = wgrad_rows_per_chunk(N, H, C, k);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  float* partial = thread_scratch(kPartial, chunks * (taps + 1) * Cp);
  std::fill(partial, partial + chunks * (taps + 1) * Cp, 0.0f);
  parallel_for(0, chunks, [&](int64_t chunk_begin, int64_t chunk_end) {
    float* band = thread_scratch(kBand, std::min(H, rows_per_chunk + k - 1) * W * Cp);
    float* g_row = thread_scratch(kRow, W * Cp);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      float* part = partial + chunk * (taps + 1) * Cp;
      const int64_t row_end = std::min(rows, (chunk + 1) * rows_per_chunk);
      for (int64_t row = chunk * rows_per_chunk; row < row_end;) {
        const int64_t n = row / H, h_begin = row % H;
        const int64_t h_end = std::min(H, h_begin + (row_end - row));
        const int64_t r_begin = std::max<int64_t>(0, h_begin - pad);
        const int64_t r_end = std::min(H, h_end + pad);
        with_input_rows(x + n * H * W * C, band, r_begin, r_end, W, C, Cp, kernels,
                        [&](const auto* x_rows, const auto& fns) {
                          for (int64_t h = h_begin; h < h_end; ++h) {
                            const T* g_src = g + (n * H + h) * W * C;
                            const float* g_fp32 = nullptr;
                            if constexpr (std::is_same_v<T, float>) {  // in place where it can
                              if (Cp == C) g_fp32 = g_src;
                            }
                            if (!g_fp32) g_fp32 = converted_rows(g_src, g_row, W, C, Cp);
                            fns.wgrad_row(row_window(x_rows, r_begin, h, H, W, Cp, k), g_fp32, part,
                                          Cp, k);
                          }
                        });
        row += h_end - h_begin;
      }
    }
  });
  parallel_for(0, taps + 1, [&](int64_t j_begin, int64_t j_end) {
    for (int64_t j = j_begin; j < j_end; ++j) {
      float* out = j < taps ? grad_taps + j * C : grad_bias;
      for (int64_t c = 0; c < C; ++c) out[c] = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const float* pp = partial + (chunk * (taps + 1) + j) * Cp;
        for (int64_t c = 0; c < C; ++c) out[c] += pp[c];
      }
    }
  });
}

}  // namespace ck::cpu::simd
