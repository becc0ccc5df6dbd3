// LayerNorm over the C contiguous channels of each pixel (row) of an N,H,W,C buffer, for the CPU.
// Torch-free; see dwconv_plain_kernels.h for the conventions (T storage, Acc accumulation,
// parallel_for(begin, end, fn[, grain])). The row kernels are written once (`omp simd` loops, built
// with -fopenmp: without them the compiler may not reorder a float sum and runs it serially) and
// compiled once per instruction set (layer_norm.cpp, isa.h); the drivers below take the set's
// instantiation as LayerNormRows.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "convert.h"
#include "grain.h"

namespace ck::cpu {

// The row kernels are bound by latency, not arithmetic: a row's statistics are a chain (sum,
// mean, squared deviations, their sum, rstd) before its output can be written, and ConvNeXt's
// rows are short (96-768 channels). Hence:
// - Row sums run in kSumLanes independent partial sums, added together at the end: with one
//   running sum every vector add waits for the one before (4 cycles on current x86 cores).
// - Rows go in groups of kRowGroup, each pass over all of a group's rows before the next pass,
//   so that the rows' chains overlap instead of following each other (groups of 8 were no
//   better).
constexpr int64_t kSumLanes = 32;
constexpr int64_t kRowGroup = 4;

// The Acc scratch the row kernels need per buffer (forward: v; backward: xhat and gh).
inline int64_t layer_norm_scratch(int64_t C) { return kRowGroup * C; }

// A row group's loads come in bursts (its sums), then its outputs are computed and stored with
// no load asking memory for the next rows; the hardware prefetchers, which follow the loads, do
// not run far enough ahead to cover that. So each chunk of loads from x (and, in the backward,
// from grad_y) also asks for the lines kPrefetchBytes further on: the next rows, whichever
// group or thread chunk they fall in (a prefetch past the buffer's end is harmless: it never
// faults; in dwconv_layer_norm the rows are in cache already and it costs a few instructions).
// 2 KB ahead: 2, 4 or 8 rows and 4 or 8 KB were no better, a whole row group ahead at once was
// slower at ConvNeXt's late stages.
constexpr int64_t kPrefetchBytes = 2048;

template <typename T>
__attribute__((always_inline)) inline void prefetch_chunk_ahead(const T* chunk) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(chunk) + kPrefetchBytes;
  for (int64_t i = 0; i < kSumLanes * int64_t(sizeof(T)); i += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + i), 0, 3);
  }
}

template <typename Acc>
__attribute__((always_inline)) inline Acc sum_lanes(const Acc* part) {
  Acc sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < kSumLanes; ++j) sum += part[j];
  return sum;
}

// chunk(c0, n) over [0, C) in lane-sized chunks: n == kSumLanes (a constant once inlined, so
// the chunk's loop is unrolled into whole vectors), then the rest.
template <typename F>
__attribute__((always_inline)) inline void in_lane_chunks(int64_t C, const F& chunk) {
  int64_t c0 = 0;
  for (; c0 + kSumLanes <= C; c0 += kSumLanes) chunk(c0, kSumLanes);
  chunk(c0, C - c0);
}

// part[j % kSumLanes] += f(j) for j in [0, C), f vectorised; before_chunk(c0) before each chunk
// (e.g. a prefetch; by default nothing).
struct NoChunkHook {
  void operator()(int64_t) const {}
};
template <typename Acc, typename F, typename G = NoChunkHook>
__attribute__((always_inline)) inline void add_lanes(Acc* part, int64_t C, const F& f,
                                                     const G& before_chunk = {}) {
  in_lane_chunks(C, [&](int64_t c0, int64_t n) __attribute__((always_inline)) {
    before_chunk(c0);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) part[j] += f(c0 + j);
  });
}

// Rows [begin, end): y = (x - mean) * rstd * w + b; mean and rstd (two-pass variance) saved.
// w, b: the affine parameters in Acc; v: layer_norm_scratch(C) Acc of scratch (x may be y: a
// group's rows are all read into v before any is written).
template <typename T, typename Acc>
__attribute__((always_inline)) inline void layer_norm_forward_rows(const T* x, const Acc* w,
                                                                   const Acc* b, T* y,
                                                                   Acc* mean_out, Acc* rstd_out,
                                                                   int64_t begin, int64_t end,
                                                                   int64_t C, Acc eps, Acc* v) {
  for (int64_t row0 = begin; row0 < end; row0 += kRowGroup) {
    const int64_t rows = std::min(kRowGroup, end - row0);
    Acc mean[kRowGroup], rstd[kRowGroup];
    for (int64_t i = 0; i < rows; ++i) {
      const T* xr = x + (row0 + i) * C;
      Acc* vr = v + i * C;
      alignas(64) Acc part[kSumLanes] = {};
      add_lanes(
          part, C,
          [&](int64_t c) __attribute__((always_inline)) {
            vr[c] = to_acc<Acc>(xr[c]);
            return vr[c];
          },
          [&](int64_t c0) __attribute__((always_inline)) { prefetch_chunk_ahead(xr + c0); });
      mean[i] = sum_lanes(part) / C;
    }
    for (int64_t i = 0; i < rows; ++i) {
      const Acc* vr = v + i * C;
      const Acc m = mean[i];
      alignas(64) Acc part[kSumLanes] = {};
      add_lanes(part, C, [&](int64_t c) __attribute__((always_inline)) {
        return (vr[c] - m) * (vr[c] - m);
      });
      rstd[i] = Acc(1) / std::sqrt(sum_lanes(part) / C + eps);
    }
    for (int64_t i = 0; i < rows; ++i) {
      const Acc* vr = v + i * C;
      const Acc m = mean[i], r = rstd[i];
      T* yr = y + (row0 + i) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = from_acc<T>((vr[c] - m) * r * w[c] + b[c]);
      mean_out[row0 + i] = m;
      rstd_out[row0 + i] = r;
    }
  }
}

// Rows [begin, end) of the backward, with xhat = (x - mean) * rstd and gh = g * w:
// grad_x = rstd * (gh - mean_c(gh) - xhat * mean_c(gh * xhat)); part_w += g * xhat and
// part_b += g (this chunk's partial weight and bias gradients). xhat, gh: layer_norm_scratch(C)
// Acc of scratch each.
template <typename T, typename Acc>
__attribute__((always_inline)) inline void layer_norm_backward_rows(
    const T* g, const T* x, const Acc* w, const Acc* mean, const Acc* rstd, T* grad_x, Acc* part_w,
    Acc* part_b, int64_t begin, int64_t end, int64_t C, Acc* xhat, Acc* gh) {
  for (int64_t row0 = begin; row0 < end; row0 += kRowGroup) {
    const int64_t rows = std::min(kRowGroup, end - row0);
    Acc mean_gh[kRowGroup], mean_gh_xhat[kRowGroup];
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = row0 + i;
      const T* gr = g + row * C;
      const T* xr = x + row * C;
      Acc* xh = xhat + i * C;
      Acc* ghr = gh + i * C;
      const Acc row_mean = mean[row], row_rstd = rstd[row];
      alignas(64) Acc part_gh[kSumLanes] = {};
      alignas(64) Acc part_gh_xhat[kSumLanes] = {};
      // xhat, gh, their sums, the chunk's partial weight and bias gradients, in one pass.
      in_lane_chunks(C, [&](int64_t c0, int64_t n) __attribute__((always_inline)) {
        prefetch_chunk_ahead(gr + c0);
        prefetch_chunk_ahead(xr + c0);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const int64_t c = c0 + j;
          const Acc gv = to_acc<Acc>(gr[c]);
          xh[c] = (to_acc<Acc>(xr[c]) - row_mean) * row_rstd;
          ghr[c] = gv * w[c];
          part_gh[j] += ghr[c];
          part_gh_xhat[j] += ghr[c] * xh[c];
          part_w[c] += gv * xh[c];
          part_b[c] += gv;
        }
      });
      mean_gh[i] = sum_lanes(part_gh) / C;
      mean_gh_xhat[i] = sum_lanes(part_gh_xhat) / C;
    }
    for (int64_t i = 0; i < rows; ++i) {
      const Acc* xh = xhat + i * C;
      const Acc* ghr = gh + i * C;
      const Acc row_rstd = rstd[row0 + i], mg = mean_gh[i], mgx = mean_gh_xhat[i];
      T* gxr = grad_x + (row0 + i) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) gxr[c] = from_acc<T>(row_rstd * (ghr[c] - mg - xh[c] * mgx));
    }
  }
}

// The row kernels above, compiled for one instruction set.
template <typename T, typename Acc>
struct LayerNormRows {
  void (*forward)(const T*, const Acc*, const Acc*, T*, Acc*, Acc*, int64_t, int64_t, int64_t, Acc,
                  Acc*);
  void (*backward)(const T*, const T*, const Acc*, const Acc*, const Acc*, T*, Acc*, Acc*, int64_t,
                   int64_t, int64_t, Acc*, Acc*);
};

// The row kernels of this CPU's instruction set for T (isa.h; float64: the portable ones), defined
// in layer_norm.cpp for every type its op takes and for float and double, which the fused
// dwconv_layer_norm (dwconv_layer_norm.cpp) takes.
template <typename T, typename Acc = acc_t<T>>
LayerNormRows<T, Acc> layer_norm_rows();

template <typename T, typename Acc>
std::vector<Acc> as_acc(const T* values, int64_t n) {
  std::vector<Acc> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = to_acc<Acc>(values[i]);
  return out;
}

template <typename T, typename Acc, typename ParallelFor>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, Acc* mean_out,
                        Acc* rstd_out, int64_t rows, int64_t C, Acc eps,
                        const LayerNormRows<T, Acc>& kernels, ParallelFor parallel_for) {
  const std::vector<Acc> w = as_acc<T, Acc>(weight, C), b = as_acc<T, Acc>(bias, C);
  parallel_for(
      0, rows,
      [&](int64_t begin, int64_t end) {
        std::vector<Acc> v(layer_norm_scratch(C));
        kernels.forward(x, w.data(), b.data(), y, mean_out, rstd_out, begin, end, C, eps, v.data());
      },
      rows_per_task(C));
}

// Rows cut into chunks from the shape alone; each chunk sums partial (grad_weight, grad_bias)
// [2][C], added in chunk order afterwards: bitwise reproducible for any thread count. A chunk
// has at least kMinRows rows: with one or two rows each (T4, batch 8: 392 rows of 768) adding
// the partials cost as much as the rows themselves.
inline int64_t layer_norm_grad_chunks(int64_t rows, int64_t C) {
  constexpr int64_t kPartialBudget = int64_t(1) << 22;  // elements of all partials together
  constexpr int64_t kMinRows = 32;
  return std::max<int64_t>(1, std::min<int64_t>({rows / kMinRows, 256, kPartialBudget / (2 * C)}));
}

// grad_x, and grad_weight = sum_rows g * xhat, grad_bias = sum_rows g (Acc).
template <typename T, typename Acc, typename ParallelFor>
void layer_norm_backward(const T* g, const T* x, const T* weight, const Acc* mean, const Acc* rstd,
                         T* grad_x, Acc* grad_weight, Acc* grad_bias, int64_t rows, int64_t C,
                         const LayerNormRows<T, Acc>& kernels, ParallelFor parallel_for) {
  const int64_t chunks = layer_norm_grad_chunks(rows, C);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  const std::vector<Acc> w = as_acc<T, Acc>(weight, C);
  std::vector<Acc> partial(chunks * 2 * C, Acc(0));
  parallel_for(0, chunks, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<Acc> xhat(layer_norm_scratch(C)), gh(layer_norm_scratch(C));
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      Acc* part_w = partial.data() + chunk * 2 * C;
      kernels.backward(g, x, w.data(), mean, rstd, grad_x, part_w, part_w + C,
                       chunk * rows_per_chunk, std::min(rows, (chunk + 1) * rows_per_chunk), C,
                       xhat.data(), gh.data());
    }
  });
  parallel_for(
      0, 2 * C,
      [&](int64_t begin, int64_t end) {  // [grad_weight; grad_bias] columns
        std::vector<Acc> sums(end - begin, Acc(0));
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          const Acc* part = partial.data() + chunk * 2 * C + begin;
          for (int64_t j = 0; j < end - begin; ++j) sums[j] += part[j];
        }
        for (int64_t j = begin; j < end; ++j)
          (j < C ? grad_weight[j] : grad_bias[j - C]) = sums[j - begin];
      },
      rows_per_task(chunks));
}

}  // namespace ck::cpu
