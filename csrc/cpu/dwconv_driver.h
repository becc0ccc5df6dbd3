// The depthwise conv on whole N,H,W,C tensors, from the row kernels (dwconv_forward_rows.h,
// dwconv_wgrad_rows.h): the row kernels of this CPU's instruction set (RowKernels, compiled in
// dwconv_rows.cpp alone), the taps transposed to [k*k][C], inputs the kernels cannot read in place
// converted once per band of rows, per-thread scratch, and the drivers that spread bands of rows
// over the threads: the forward (handing each output row to the caller: the fused dwconv +
// LayerNorm normalises it there) and the weight gradient (fixed-order partial sums). Torch-free.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "dwconv_row_tiles.h"
#include "grain.h"
#include "isa.h"

namespace ck::cpu::simd {

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
// does not map, fault in and unmap its band buffers (hundreds of KB) each time.
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
