// Depthwise k×k convolution forward (stride 1, padding k/2) on N,H,W,C buffers for the CPU with
// SIMD, fp32 math, the instruction set chosen at run time (AVX-512, AVX2+FMA, or portable).
//
// Torch-free. The input rows a band of output rows needs are first copied, converted to fp32,
// into a zero-padded buffer [rows + k - 1][W + k - 1][xs] (strides_for: channels rounded up to
// the vector width, pixels spread over the cache's sets), so the inner loops have no bounds
// checks and fp16/bf16 are converted once per element, not once per tap. A row of output pixels
// is then computed one channel vector at a time: TW pixels × one vector of accumulators stay in
// registers while all k*k taps are added, each tap vector loaded once for the TW pixels
// (register blocking).
//
// The vector code is GCC/Clang vector extensions, compiled once per instruction set (isa.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "isa.h"

// The vector helpers are always inlined into the target-attributed row functions; GCC still
// warns that their out-of-line forms would pass AVX vectors under the default ABI.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

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

// TW output pixels of one channel vector: x at the window's top-left tap of the first pixel
// (padded image, pixels xs floats apart), taps [k*k][Cp] at the vector's channels; out at the
// first pixel.
template <int V, int TW, int K>
__attribute__((always_inline)) inline void conv_pixels(const float* x, const float* taps,
                                                       const Vec<V>& bias, float* out, int64_t k,
                                                       int64_t Cp, int64_t xs, int64_t row_stride) {
  const int64_t kk = K > 0 ? K : k;
  Vec<V> acc[TW];
  for (int p = 0; p < TW; ++p) acc[p] = bias;
  for (int64_t ky = 0; ky < kk; ++ky) {
    const float* x_row = x + ky * row_stride;
    const float* t_row = taps + ky * kk * Cp;
    for (int64_t kx = 0; kx < kk; ++kx) {
      const Vec<V> t = load<V>(t_row + kx * Cp);
      for (int p = 0; p < TW; ++p) acc[p] += load<V>(x_row + (p + kx) * xs) * t;
    }
  }
  for (int p = 0; p < TW; ++p) store<V>(out + p * Cp, acc[p]);
}

// One output row of W pixels, all Cp channels, into out [W][Cp]; x at (row, 0) of the padded
// image (the top of the window). Pixels go 8 at a time, the rest in one block.
template <int V, int K>
__attribute__((always_inline)) inline void conv_row_impl(const float* x, const float* taps,
                                                         const float* bias, float* out, int64_t W,
                                                         int64_t Cp, int64_t xs, int64_t k) {
  const int64_t row_stride = (W + k - 1) * xs;
  for (int64_t c = 0; c < Cp; c += V) {
    const Vec<V> b = bias ? load<V>(bias + c) : Vec<V>{};
    const float* xc = x + c;
    const float* tc = taps + c;
    float* oc = out + c;
    int64_t w = 0;
    for (; w + 8 <= W; w += 8) {
      conv_pixels<V, 8, K>(xc + w * xs, tc, b, oc + w * Cp, k, Cp, xs, row_stride);
    }
    const float* xw = xc + w * xs;
    float* ow = oc + w * Cp;
    switch (W - w) {  // the rest in one block (ConvNeXt's 7-pixel rows: one block of 7)
      case 7: conv_pixels<V, 7, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 6: conv_pixels<V, 6, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 5: conv_pixels<V, 5, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 4: conv_pixels<V, 4, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 3: conv_pixels<V, 3, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 2: conv_pixels<V, 2, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      case 1: conv_pixels<V, 1, K>(xw, tc, b, ow, k, Cp, xs, row_stride); break;
      default: break;
    }
  }
}

template <int V>
__attribute__((always_inline)) inline void conv_row_any_k(const float* x, const float* taps,
                                                          const float* bias, float* out, int64_t W,
                                                          int64_t Cp, int64_t xs, int64_t k) {
  if (k == 7) return conv_row_impl<V, 7>(x, taps, bias, out, W, Cp, xs, k);  // ConvNeXt's
  if (k == 3) return conv_row_impl<V, 3>(x, taps, bias, out, W, Cp, xs, k);
  conv_row_impl<V, 0>(x, taps, bias, out, W, Cp, xs, k);
}

// The weight gradient of one output row, added to part [k*k + 1][Cp] (taps, then bias):
// part[ky*k + kx][c] += sum_w g[w][c] * x[ky][w + kx][c], part[k*k][c] += sum_w g[w][c]; x at
// (row, 0) of the padded image, g [W][Cp] fp32. Per channel vector and tap row, the k tap
// accumulators stay in registers over the whole row, each g vector loaded once for k taps.
template <int V, int K>
__attribute__((always_inline)) inline void wgrad_row_impl(const float* x, const float* g,
                                                          float* part, int64_t W, int64_t Cp,
                                                          int64_t xs, int64_t k) {
  const int64_t row_stride = (W + k - 1) * xs;
  float* part_bias = part + k * k * Cp;
  for (int64_t c = 0; c < Cp; c += V) {
    Vec<V> bias_acc = load<V>(part_bias + c);
    for (int64_t w = 0; w < W; ++w) bias_acc += load<V>(g + w * Cp + c);
    store<V>(part_bias + c, bias_acc);
    for (int64_t ky = 0; ky < k; ++ky) {
      const float* x_row = x + ky * row_stride + c;
      float* p_row = part + ky * k * Cp + c;
      if constexpr (K > 0) {
        Vec<V> acc[K];
        for (int kx = 0; kx < K; ++kx) acc[kx] = load<V>(p_row + kx * Cp);
        for (int64_t w = 0; w < W; ++w) {
          const Vec<V> gv = load<V>(g + w * Cp + c);
          for (int kx = 0; kx < K; ++kx) acc[kx] += gv * load<V>(x_row + (w + kx) * xs);
        }
        for (int kx = 0; kx < K; ++kx) store<V>(p_row + kx * Cp, acc[kx]);
      } else {
        for (int64_t kx = 0; kx < k; ++kx) {
          Vec<V> acc = load<V>(p_row + kx * Cp);
          for (int64_t w = 0; w < W; ++w) {
            acc += load<V>(g + w * Cp + c) * load<V>(x_row + (w + kx) * xs);
          }
          store<V>(p_row + kx * Cp, acc);
        }
      }
    }
  }
}

template <int V>
__attribute__((always_inline)) inline void wgrad_row_any_k(const float* x, const float* g,
                                                           float* part, int64_t W, int64_t Cp,
                                                           int64_t xs, int64_t k) {
  if (k == 7) return wgrad_row_impl<V, 7>(x, g, part, W, Cp, xs, k);
  if (k == 3) return wgrad_row_impl<V, 3>(x, g, part, W, Cp, xs, k);
  wgrad_row_impl<V, 0>(x, g, part, W, Cp, xs, k);
}

// Row kernels of one instruction set: (x, taps, bias, out, W, Cp, xs, k) and
// (x, g, part, W, Cp, xs, k) as conv_row_impl and wgrad_row_impl.
using RowFn = void (*)(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                       int64_t);
using WgradRowFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t);

struct RowKernels {
  int lanes;  // floats per vector: Cp is a multiple of it
  RowFn row;
  WgradRowFn wgrad_row;
};

#define CK_DWCONV_ROW_KERNELS(SUFFIX, TARGET, LANES)                                               \
  TARGET inline void conv_row_##SUFFIX(const float* x, const float* taps, const float* bias,       \
                                       float* out, int64_t W, int64_t Cp, int64_t xs, int64_t k) { \
    conv_row_any_k<LANES>(x, taps, bias, out, W, Cp, xs, k);                                       \
  }                                                                                                \
  TARGET inline void wgrad_row_##SUFFIX(const float* x, const float* g, float* part, int64_t W,    \
                                        int64_t Cp, int64_t xs, int64_t k) {                       \
    wgrad_row_any_k<LANES>(x, g, part, W, Cp, xs, k);                                              \
  }

#if CK_CPU_X86
CK_DWCONV_ROW_KERNELS(avx512, CK_TARGET_AVX512, 16)
CK_DWCONV_ROW_KERNELS(avx2, CK_TARGET_AVX2, 8)
#endif
CK_DWCONV_ROW_KERNELS(portable, , 4)
#undef CK_DWCONV_ROW_KERNELS

inline RowKernels row_kernels(Isa isa) {
#if CK_CPU_X86
  if (isa == Isa::kAvx512) return {16, conv_row_avx512, wgrad_row_avx512};
  if (isa == Isa::kAvx2) return {8, conv_row_avx2, wgrad_row_avx2};
#endif
  return {4, conv_row_portable, wgrad_row_portable};
}

// The row kernels of this CPU's instruction set (isa.h), chosen once per process.
inline const RowKernels& this_cpu_row_kernels() {
  static const RowKernels kernels = row_kernels(cpu_isa());
  return kernels;
}

// Channel strides: Cp (taps, outputs) is C rounded up to the vector width; xs, the pixel stride
// of the padded input, is Cp plus one cache line where Cp spans an even number of lines, so
// that neighbouring pixels (768 channels: 3072 bytes apart) do not all fall into the same few
// L1 sets. Added because 7×7×768 ran at 2/3 of the rate of the other widths; in the same-run
// harness it did not measurably close that gap, which remains open.
struct Strides {
  int64_t Cp, xs;
};

inline Strides strides_for(int64_t C, const RowKernels& kernels) {
  const int64_t Cp = (C + kernels.lanes - 1) / kernels.lanes * kernels.lanes;
  constexpr int64_t kLine = 16;  // floats per 64-byte cache line
  const bool even_lines = Cp % kLine == 0 && (Cp / kLine) % 2 == 0;
  return {Cp, even_lines ? Cp + kLine : Cp};
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

// Copies rows [h_begin, h_end) of the padded image of x_image ([H][W][C] of T) into band (row 0:
// padded row h_begin; pixels xs floats apart), converted to fp32; the rest of band is zero.
template <typename T>
void fill_padded_rows(const T* x_image, float* band, int64_t h_begin, int64_t h_end, int64_t H,
                      int64_t W, int64_t C, int64_t k, int64_t xs) {
  const int64_t pad = k / 2, Wp = W + k - 1;
  std::fill(band, band + (h_end - h_begin) * Wp * xs, 0.0f);
  for (int64_t hp = std::max(h_begin, pad); hp < std::min(h_end, H + pad); ++hp) {
    const T* src = x_image + (hp - pad) * W * C;
    float* dst = band + ((hp - h_begin) * Wp + pad) * xs;
    for (int64_t w = 0; w < W; ++w) {
      for (int64_t c = 0; c < C; ++c) dst[w * xs + c] = static_cast<float>(src[w * C + c]);
    }
  }
}

// weight [C][k*k] and bias [C] (or null) of T -> taps [k*k][Cp] and bias [Cp] fp32, zero
// beyond C.
template <typename T>
void prepare_taps(const T* weight, const T* bias, int64_t C, int64_t k, int64_t Cp,
                  std::vector<float>& taps, std::vector<float>& bias_p) {
  taps.assign(k * k * Cp, 0.0f);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < k * k; ++t)
      taps[t * Cp + c] = static_cast<float>(weight[c * k * k + t]);
  }
  bias_p.assign(bias ? Cp : 0, 0.0f);
  for (int64_t c = 0; bias && c < C; ++c) bias_p[c] = static_cast<float>(bias[c]);
}

// Stores one output row [W][Cp] fp32 as W pixels of C channels of T at dst.
template <typename T>
void store_row(const float* row, T* dst, int64_t W, int64_t C, int64_t Cp) {
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t c = 0; c < C; ++c) dst[w * C + c] = static_cast<T>(row[w * Cp + c]);
  }
}

// dwconv(x, weight, bias) row by row: x [N][H][W][C], weight [C][k*k], bias [C] or null, all of
// T; fp32 math. Each output row is computed into the calling thread's scratch and handed to
// emit_row(first pixel (n*H + h)*W, row [W][Cp] fp32 (which emit_row may overwrite), Cp), in the
// thread that computed it. parallel_for(begin, end, fn) runs fn(b, e) over a partition of
// [begin, end). The work items are bands of up to kBandRows output rows of one image, each
// padding its own input rows (k - 1 more than it has): batch 1 still spreads over the threads,
// and a larger batch needs no per-image synchronisation.
template <typename T, typename ParallelFor, typename EmitRow>
void dwconv_forward_rows(const T* x, const T* weight, const T* bias, int64_t N, int64_t H,
                         int64_t W, int64_t C, int64_t k, const RowKernels& kernels,
                         ParallelFor parallel_for, EmitRow emit_row) {
  constexpr int64_t kBandRows = 8;
  const auto [Cp, xs] = strides_for(C, kernels);
  const int64_t Wp = W + k - 1;
  const int64_t band_rows = std::min(H, kBandRows);
  const int64_t bands = (H + band_rows - 1) / band_rows;  // per image
  std::vector<float> taps, bias_p;
  prepare_taps(weight, bias, C, k, Cp, taps, bias_p);
  const float* bias_ptr = bias ? bias_p.data() : nullptr;
  parallel_for(0, N * bands, [&](int64_t item_begin, int64_t item_end) {
    float* band = thread_scratch(kBand, (band_rows + k - 1) * Wp * xs);
    float* row = thread_scratch(kRow, W * Cp);
    for (int64_t item = item_begin; item < item_end; ++item) {
      const int64_t n = item / bands, h_begin = item % bands * band_rows;
      const int64_t h_end = std::min(H, h_begin + band_rows);
      fill_padded_rows(x + n * H * W * C, band, h_begin, h_end + k - 1, H, W, C, k, xs);
      for (int64_t h = h_begin; h < h_end; ++h) {
        kernels.row(band + (h - h_begin) * Wp * xs, taps.data(), bias_ptr, row, W, Cp, xs, k);
        emit_row((n * H + h) * W, row, Cp);
      }
    }
  });
}

// y = dwconv(x, weight, bias), y [N][H][W][C] of T.
template <typename T, typename ParallelFor>
void dwconv_forward(const T* x, const T* weight, const T* bias, T* y, int64_t N, int64_t H,
                    int64_t W, int64_t C, int64_t k, const RowKernels& kernels,
                    ParallelFor parallel_for) {
  dwconv_forward_rows(x, weight, bias, N, H, W, C, k, kernels, parallel_for,
                      [&](int64_t pixel, const float* row, int64_t Cp) {
                        store_row(row, y + pixel * C, W, C, Cp);
                      });
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
  const auto [Cp, xs] = strides_for(C, kernels);
  const int64_t Wp = W + k - 1, taps = k * k, rows = N * H;
  const int64_t rows_per_chunk = wgrad_rows_per_chunk(N, H, C, k);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  float* partial = thread_scratch(kPartial, chunks * (taps + 1) * Cp);
  std::fill(partial, partial + chunks * (taps + 1) * Cp, 0.0f);
  parallel_for(0, chunks, [&](int64_t chunk_begin, int64_t chunk_end) {
    float* band = thread_scratch(kBand, (rows_per_chunk + k - 1) * Wp * xs);
    float* g_row = thread_scratch(kRow, W * Cp);
    std::fill(g_row, g_row + W * Cp, 0.0f);  // channels >= C stay zero
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      float* part = partial + chunk * (taps + 1) * Cp;
      const int64_t row_end = std::min(rows, (chunk + 1) * rows_per_chunk);
      for (int64_t row = chunk * rows_per_chunk; row < row_end;) {
        const int64_t n = row / H, h_begin = row % H;
        const int64_t h_end = std::min(H, h_begin + (row_end - row));
        fill_padded_rows(x + n * H * W * C, band, h_begin, h_end + k - 1, H, W, C, k, xs);
        for (int64_t h = h_begin; h < h_end; ++h) {
          const T* g_src = g + (n * H + h) * W * C;
          for (int64_t w = 0; w < W; ++w) {
            for (int64_t c = 0; c < C; ++c)
              g_row[w * Cp + c] = static_cast<float>(g_src[w * C + c]);
          }
          kernels.wgrad_row(band + (h - h_begin) * Wp * xs, g_row, part, W, Cp, xs, k);
        }
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

#pragma GCC diagnostic pop
