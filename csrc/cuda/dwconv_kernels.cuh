// Depthwise k×k convolution (stride 1, padding k/2) on N,H,W,C-contiguous buffers, for CUDA.
//
// Torch-free. Each kernel is a per-thread body `*_thread(..., idx)` plus a thin __global__
// wrapper at the end of this file. The bodies are __host__ __device__ so that tests can run them on
// the CPU, thread by thread, and check the indexing of the GPU kernels on a machine without a GPU.
//
// Layout: a thread owns VEC consecutive channels (16 bytes of storage when VEC > 1) and, in the
// forward, TW consecutive output pixels of one row; consecutive threads take consecutive channel
// groups, so every warp access is coalesced. Taps are fp32 [k*k, C] (see dwconv_args.h).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common.cuh"

namespace ck::cuda {

struct DwconvShape {
  int64_t N, H, W, C;
  int k;
};

// ---------------------------------------------------------------------------------------------
// Forward: y[n,h,w,c] = bias[c] + sum_{ky,kx} x[n, h+ky-k/2, w+kx-k/2, c] * taps[ky*k+kx][c].
// Thread idx -> (channel group, strip of TW pixels, row n*H+h). K > 0: k fixed at compile time;
// the TW + K - 1 input pixels of a row are held in registers and reused by all K taps.
// K == 0: any odd k at run time, every tap read from cache.
// Threads: N*H * ceil(W/TW) * C/VEC.
template <typename T, int VEC, int K, int TW>
CK_HD void dwconv_forward_thread(const T* __restrict__ x, const float* __restrict__ taps,
                                 const float* __restrict__ bias, T* __restrict__ y,
                                 const DwconvShape s, const int64_t idx) {
  static_assert(K == 0 || K % 2 == 1, "odd kernel sizes only");
  const int k = K > 0 ? K : s.k;
  const int pad = k / 2;
  const int64_t groups = s.C / VEC;
  const int64_t strips = (s.W + TW - 1) / TW;
  const int64_t c0 = (idx % groups) * VEC;
  const int64_t w0 = ((idx / groups) % strips) * TW;
  const int64_t row = idx / (groups * strips);
  const int64_t h = row % s.H;
  const int64_t image_row0 = row - h;  // n*H

  float acc[TW][VEC];
  float b[VEC];
  if (bias != nullptr) {
    load_floats<VEC>(bias + c0, b);
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) b[v] = 0.f;
  }
#pragma unroll
  for (int t = 0; t < TW; ++t)
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[t][v] = b[v];

  for (int ky = 0; ky < k; ++ky) {
    const int64_t ih = h + ky - pad;
    if (ih < 0 || ih >= s.H) continue;
    const T* x_row = x + (image_row0 + ih) * s.W * s.C + c0;
    const float* tap_row = taps + int64_t(ky) * k * s.C + c0;
    if constexpr (K > 0) {
      Vec<T, VEC> window[TW + K - 1];
#pragma unroll
      for (int i = 0; i < TW + K - 1; ++i) {
        const int64_t iw = w0 + i - pad;
        if (iw >= 0 && iw < s.W)
          window[i] = load_vec<T, VEC>(x_row + iw * s.C);
        else
          window[i] = zero_vec<T, VEC>();
      }
#pragma unroll
      for (int kx = 0; kx < K; ++kx) {
        float wt[VEC];
        load_floats<VEC>(tap_row + int64_t(kx) * s.C, wt);
#pragma unroll
        for (int t = 0; t < TW; ++t)
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[t][v] += to_float(window[t + kx].v[v]) * wt[v];
      }
    } else {
      for (int kx = 0; kx < k; ++kx) {
        float wt[VEC];
        load_floats<VEC>(tap_row + int64_t(kx) * s.C, wt);
#pragma unroll
        for (int t = 0; t < TW; ++t) {
          const int64_t iw = w0 + t + kx - pad;
          if (iw < 0 || iw >= s.W) continue;
          const Vec<T, VEC> xv = load_vec<T, VEC>(x_row + iw * s.C);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[t][v] += to_float(xv.v[v]) * wt[v];
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TW; ++t) {
    if (w0 + t >= s.W) break;
    Vec<T, VEC> out;
#pragma unroll
    for (int v = 0; v < VEC; ++v) out.v[v] = FromFloat<T>::cast(acc[t][v]);
    store_vec<T, VEC>(y + (row * s.W + w0 + t) * s.C + c0, out);
  }
}

// ---------------------------------------------------------------------------------------------
// Weight gradient, stage 1. Rows n*H+h are cut into chunks of rows_per_chunk; each thread sums,
// over one chunk and VEC channels, g[n,h,w,c] * x[n, h+ky-k/2, w+kx-k/2, c] for
//   K > 0:  one row of taps ky (all kx), sliding a K-pixel window of x along w in registers;
//   K == 0: one tap (ky, kx).
// The thread of the first unit (ky = 0, or tap 0) also sums g for the bias gradient.
// partial: [chunks][k*k + 1][C] fp32, row k*k holding the bias sums.
// Threads: chunks * units * C/VEC, units = k (K > 0) or k*k (K == 0).
template <int K>
CK_HD int wgrad_units(int k) {
  return K > 0 ? k : k * k;
}

// The output gradient at one pixel as fp32, added to bias_acc by the thread that sums the bias.
template <typename T, int VEC>
CK_HD void load_grad(const T* g, bool sums_bias, float (&gf)[VEC], float (&bias_acc)[VEC]) {
  const Vec<T, VEC> gv = load_vec<T, VEC>(g);
#pragma unroll
  for (int v = 0; v < VEC; ++v) gf[v] = to_float(gv.v[v]);
  if (sums_bias) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) bias_acc[v] += gf[v];
  }
}

template <typename T, int VEC, int K>
CK_HD void dwconv_wgrad_partial_thread(const T* __restrict__ g, const T* __restrict__ x,
                                       float* __restrict__ partial, const DwconvShape s,
                                       const int64_t rows_per_chunk, const int64_t idx) {
  const int k = K > 0 ? K : s.k;
  const int pad = k / 2;
  const int64_t groups = s.C / VEC;
  const int units = wgrad_units<K>(k);
  const int64_t c0 = (idx % groups) * VEC;
  const int unit = int((idx / groups) % units);
  const int64_t chunk = idx / (groups * units);
  const int ky = K > 0 ? unit : unit / k;
  const int kx_only = K > 0 ? 0 : unit % k;
  const bool sums_bias = unit == 0;
  constexpr int kAccs = K > 0 ? K : 1;

  float acc[kAccs][VEC];
  float bias_acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    bias_acc[v] = 0.f;
#pragma unroll
    for (int j = 0; j < kAccs; ++j) acc[j][v] = 0.f;
  }

  const int64_t rows = s.N * s.H;
  const int64_t row_begin = chunk * rows_per_chunk;
  const int64_t row_end = row_begin + rows_per_chunk < rows ? row_begin + rows_per_chunk : rows;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t h = row % s.H;
    const int64_t ih = h + ky - pad;
    const bool row_in = ih >= 0 && ih < s.H;
    if (!row_in && !sums_bias) continue;
    const T* g_row = g + row * s.W * s.C + c0;
    const T* x_row = x + (row - h + ih) * s.W * s.C + c0;
    if constexpr (K > 0) {
      // window[kx] = x[ih, w + kx - pad]; preloaded so that the shift at w = 0 lines it up.
      Vec<T, VEC> window[K];
#pragma unroll
      for (int j = 1; j < K; ++j) {
        const int64_t iw = j - 1 - pad;
        window[j] = (row_in && iw >= 0 && iw < s.W) ? load_vec<T, VEC>(x_row + iw * s.C)
                                                    : zero_vec<T, VEC>();
      }
      for (int64_t w = 0; w < s.W; ++w) {
#pragma unroll
        for (int j = 0; j + 1 < K; ++j) window[j] = window[j + 1];
        const int64_t iw_new = w + K - 1 - pad;
        window[K - 1] =
            (row_in && iw_new < s.W) ? load_vec<T, VEC>(x_row + iw_new * s.C) : zero_vec<T, VEC>();
        float gf[VEC];
        load_grad<T, VEC>(g_row + w * s.C, sums_bias, gf, bias_acc);
#pragma unroll
        for (int kx = 0; kx < K; ++kx)
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[kx][v] += gf[v] * to_float(window[kx].v[v]);
      }
    } else {
      for (int64_t w = 0; w < s.W; ++w) {
        float gf[VEC];
        load_grad<T, VEC>(g_row + w * s.C, sums_bias, gf, bias_acc);
        const int64_t iw = w + kx_only - pad;
        if (row_in && iw >= 0 && iw < s.W) {
          const Vec<T, VEC> xv = load_vec<T, VEC>(x_row + iw * s.C);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[0][v] += gf[v] * to_float(xv.v[v]);
        }
      }
    }
  }

  float* part = partial + chunk * (int64_t(k) * k + 1) * s.C + c0;
#pragma unroll
  for (int j = 0; j < kAccs; ++j) {
    const int tap = K > 0 ? ky * k + j : ky * k + kx_only;
    store_floats<VEC>(part + int64_t(tap) * s.C, acc[j]);
  }
  if (sums_bias) store_floats<VEC>(part + int64_t(k) * k * s.C, bias_acc);
}

// ---------------------------------------------------------------------------------------------
// Launch plan: which instantiation serves a call and how many threads it takes. Host code,
// shared by the CUDA glue (dwconv.cu) and the thread-by-thread CPU emulation in the tests.

// Threads per block. The weight-gradient thread keeps K*VEC fp32 sums and a K-pixel window in
// registers (~150 at K = 7, VEC = 8): 128-thread blocks fit three to an SM where 256 fit one.
constexpr int kForwardThreads = 256;
constexpr int kWgradThreads = 128;
// Stage 1 of the weight gradient aims at this many threads: enough loads in flight to cover HBM
// latency, few enough chunks that the fp32 partials stay small next to x and grad.
constexpr int64_t kWgradTargetThreads = int64_t(1) << 16;

// Forward output pixels per thread when k is a template argument: the register window holds
// TW + K - 1 vectors; with 8-wide (bf16/fp16) vectors TW = 2 keeps a thread at 80 registers
// instead of 144 (kernel report), with 4-wide fp32 vectors TW = 4 stays at 110.
template <int VEC, int K>
CK_HOST_DEVICE constexpr int strip_width() {
  return K == 0 ? 1 : (VEC >= 8 ? 2 : 4);
}

template <int VEC, int K>
int64_t forward_threads(const DwconvShape& s) {
  constexpr int TW = strip_width<VEC, K>();
  return s.N * s.H * ((s.W + TW - 1) / TW) * (s.C / VEC);
}

struct WgradPlan {
  int64_t rows_per_chunk, chunks, threads;
};

template <int VEC, int K>
WgradPlan wgrad_plan(const DwconvShape& s) {
  const int64_t rows = s.N * s.H;
  const int64_t threads_per_chunk = (s.C / VEC) * wgrad_units<K>(s.k);
  const int64_t wanted = (kWgradTargetThreads + threads_per_chunk - 1) / threads_per_chunk;
  const int64_t target_chunks = wanted < 1 ? 1 : (wanted < rows ? wanted : rows);
  const int64_t rows_per_chunk = (rows + target_chunks - 1) / target_chunks;
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  return {rows_per_chunk, chunks, chunks * threads_per_chunk};
}

// k = 3, 5, 7 get kernels specialised on k; other odd k run the generic kernel (K = 0).
template <typename F>
void dispatch_k(int64_t k, F&& f) {
  switch (k) {
    case 3: return f(std::integral_constant<int, 3>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// 16-byte accesses need C to be a multiple of the vector width and 16-byte aligned buffers;
// anything else takes the one-element path.
template <typename T, typename F>
void dispatch_vec(int64_t C, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int kVec = 16 / sizeof(T);
  bool aligned = C % kVec == 0;
  for (const void* p : ptrs) aligned = aligned && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if (aligned) return f(std::integral_constant<int, kVec>{});
  return f(std::integral_constant<int, 1>{});
}

#if defined(__CUDACC__)
// The kernels: one thread per body call, 1-D grids.
template <typename T, int VEC, int K, int TW>
__global__ void __launch_bounds__(kForwardThreads)
    dwconv_forward_kernel(const T* x, const float* taps, const float* bias, T* y, DwconvShape s,
                          int64_t threads) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < threads) dwconv_forward_thread<T, VEC, K, TW>(x, taps, bias, y, s, idx);
}

template <typename T, int VEC, int K>
__global__ void __launch_bounds__(kWgradThreads)
    dwconv_wgrad_partial_kernel(const T* g, const T* x, float* partial, DwconvShape s,
                                int64_t rows_per_chunk, int64_t threads) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < threads) dwconv_wgrad_partial_thread<T, VEC, K>(g, x, partial, s, rows_per_chunk, idx);
}

// Every instantiation the glue can launch for storage type T, each passed to
// visit(kernel pointer, threads per block, name): the kernel report compiles them all.
template <typename T, typename Visit>
void for_each_dwconv_kernel(Visit&& visit) {
  for (const int64_t C : {int64_t(16), int64_t(1)}) {  // 16-byte vectors, then the scalar path
    for (const int64_t k : {3, 5, 7, 9}) {             // 9: the generic kernel
      dispatch_vec<T>(C, {}, [&](auto vec) {
        dispatch_k(k, [&](auto k_const) {
          constexpr int VEC = decltype(vec)::value;
          constexpr int K = decltype(k_const)::value;
          visit(reinterpret_cast<const void*>(
                    &dwconv_forward_kernel<T, VEC, K, strip_width<VEC, K>()>),
                kForwardThreads, "dwconv_forward");
          visit(reinterpret_cast<const void*>(&dwconv_wgrad_partial_kernel<T, VEC, K>),
                kWgradThreads, "dwconv_wgrad_partial");
        });
      });
    }
  }
  visit(reinterpret_cast<const void*>(&sum_partials_kernel<float>), kSumPartialsThreads,
        "sum_partials");
}
#endif

}  // namespace ck::cuda
