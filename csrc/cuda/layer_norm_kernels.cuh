// LayerNorm over the C contiguous channels of each pixel (row) of an N,H,W,C buffer, and the
// depthwise conv with that LayerNorm fused, for CUDA. Torch-free.
//
// A row is normalised by one warp: lane l owns the vectors j = l, l + 32, ... (channels
// [j*VEC, j*VEC + VEC)). The per-lane parts are __host__ __device__ functions (`ln_lane_*`); the
// kernels combine them with warp shuffles, and the tests combine them with plain sums on the
// CPU, so the lane indexing is checked without a GPU. Statistics are fp32, the variance is
// two-pass (the row is re-read from L1, not kept in registers, so any C works).
#pragma once
#include <cstdint>

#include "common.cuh"
#include "dwconv_kernels.cuh"

namespace ck::cuda {

constexpr int kWarp = 32;
constexpr int kLayerNormThreads = 256;  // 8 rows (warps) per block
constexpr int kLayerNormWgradThreads = 256;
// The fused kernel's threads hold a dwconv thread's registers (up to ~140): 128-thread blocks
// fit three to an SM where 256-thread blocks fit one.
constexpr int kFusedThreads = 128;
constexpr int64_t kLayerNormWgradTargetThreads = int64_t(1) << 16;

template <typename T, int VEC>
CK_HD float ln_lane_sum(const T* __restrict__ row, int64_t C, int lane) {
  float sum = 0.f;
  for (int64_t j = lane; j * VEC < C; j += kWarp) {
    const Vec<T, VEC> v = load_vec<T, VEC>(row + j * VEC);
#pragma unroll
    for (int i = 0; i < VEC; ++i) sum += to_float(v.v[i]);
  }
  return sum;
}

template <typename T, int VEC>
CK_HD float ln_lane_squared_deviation(const T* __restrict__ row, int64_t C, int lane, float mean) {
  float sum = 0.f;
  for (int64_t j = lane; j * VEC < C; j += kWarp) {
    const Vec<T, VEC> v = load_vec<T, VEC>(row + j * VEC);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float d = to_float(v.v[i]) - mean;
      sum += d * d;
    }
  }
  return sum;
}

template <typename T, int VEC>
CK_HD void ln_lane_write(const T* __restrict__ row, const T* __restrict__ weight,
                         const T* __restrict__ bias, T* __restrict__ out, int64_t C, int lane,
                         float mean, float rstd) {
  for (int64_t j = lane; j * VEC < C; j += kWarp) {
    const Vec<T, VEC> v = load_vec<T, VEC>(row + j * VEC);
    const Vec<T, VEC> w = load_vec<T, VEC>(weight + j * VEC);
    const Vec<T, VEC> b = load_vec<T, VEC>(bias + j * VEC);
    Vec<T, VEC> y;
#pragma unroll
    for (int i = 0; i < VEC; ++i)
      y.v[i] = FromFloat<T>::cast((to_float(v.v[i]) - mean) * rstd * to_float(w.v[i]) +
                                  to_float(b.v[i]));
    store_vec<T, VEC>(out + j * VEC, y);
  }
}

// Backward of one row, per lane: the two row sums the input gradient needs,
// sum_c g*w and sum_c g*w*xhat ...
template <typename T, int VEC>
CK_HD void ln_lane_backward_sums(const T* __restrict__ g, const T* __restrict__ x,
                                 const T* __restrict__ weight, int64_t C, int lane, float mean,
                                 float rstd, float& sum_gw, float& sum_gw_xhat) {
  sum_gw = sum_gw_xhat = 0.f;
  for (int64_t j = lane; j * VEC < C; j += kWarp) {
    const Vec<T, VEC> gv = load_vec<T, VEC>(g + j * VEC);
    const Vec<T, VEC> xv = load_vec<T, VEC>(x + j * VEC);
    const Vec<T, VEC> wv = load_vec<T, VEC>(weight + j * VEC);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float gw = to_float(gv.v[i]) * to_float(wv.v[i]);
      sum_gw += gw;
      sum_gw_xhat += gw * (to_float(xv.v[i]) - mean) * rstd;
    }
  }
}

// ... then grad_x = rstd * (g*w - mean_c(g*w) - xhat * mean_c(g*w*xhat)).
template <typename T, int VEC>
CK_HD void ln_lane_backward_write(const T* __restrict__ g, const T* __restrict__ x,
                                  const T* __restrict__ weight, T* __restrict__ grad_x, int64_t C,
                                  int lane, float mean, float rstd, float mean_gw,
                                  float mean_gw_xhat) {
  for (int64_t j = lane; j * VEC < C; j += kWarp) {
    const Vec<T, VEC> gv = load_vec<T, VEC>(g + j * VEC);
    const Vec<T, VEC> xv = load_vec<T, VEC>(x + j * VEC);
    const Vec<T, VEC> wv = load_vec<T, VEC>(weight + j * VEC);
    Vec<T, VEC> out;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float xhat = (to_float(xv.v[i]) - mean) * rstd;
      const float gw = to_float(gv.v[i]) * to_float(wv.v[i]);
      out.v[i] = FromFloat<T>::cast(rstd * (gw - mean_gw - xhat * mean_gw_xhat));
    }
    store_vec<T, VEC>(grad_x + j * VEC, out);
  }
}

// Weight and bias gradients, stage 1: thread idx -> (channel group, chunk of rows); sums
// g * xhat and g over its rows into partial [chunks][2][C]. Consecutive threads take consecutive
// channel groups of the same rows, so reads are coalesced. Threads: chunks * C/VEC.
template <typename T, int VEC>
CK_HD void ln_wgrad_partial_thread(const T* __restrict__ g, const T* __restrict__ x,
                                   const float* __restrict__ mean, const float* __restrict__ rstd,
                                   float* __restrict__ partial, int64_t rows, int64_t C,
                                   int64_t rows_per_chunk, int64_t idx) {
  const int64_t groups = C / VEC;
  const int64_t c0 = (idx % groups) * VEC;
  const int64_t chunk = idx / groups;
  float sum_gx[VEC], sum_g[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) sum_gx[i] = sum_g[i] = 0.f;
  const int64_t row_end = (chunk + 1) * rows_per_chunk < rows ? (chunk + 1) * rows_per_chunk : rows;
  for (int64_t row = chunk * rows_per_chunk; row < row_end; ++row) {
    const Vec<T, VEC> gv = load_vec<T, VEC>(g + row * C + c0);
    const Vec<T, VEC> xv = load_vec<T, VEC>(x + row * C + c0);
    const float m = mean[row], r = rstd[row];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float gf = to_float(gv.v[i]);
      sum_gx[i] += gf * (to_float(xv.v[i]) - m) * r;
      sum_g[i] += gf;
    }
  }
  store_floats<VEC>(partial + chunk * 2 * C + c0, sum_gx);
  store_floats<VEC>(partial + chunk * 2 * C + C + c0, sum_g);
}

struct LayerNormWgradPlan {
  int64_t rows_per_chunk, chunks, threads;
};

template <int VEC>
LayerNormWgradPlan layer_norm_wgrad_plan(int64_t rows, int64_t C) {
  const int64_t groups = C / VEC;
  const int64_t wanted = (kLayerNormWgradTargetThreads + groups - 1) / groups;
  const int64_t target = wanted < 1 ? 1 : (wanted < rows ? wanted : rows);
  const int64_t rows_per_chunk = (rows + target - 1) / target;
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  return {rows_per_chunk, chunks, chunks * groups};
}

// Fused dwconv + LayerNorm forward (the launch bounds state 1 block/SM: without that ptxas caps
// some instantiations at 80 registers and spills). A block owns `strips` strips of TW output pixels
// of one image row (n*H + h). Phase 1: its threads run the dwconv thread body over (strip, channel
// group), writing the conv output (kept for the backward). Phase 2, after a block barrier: each
// warp normalises whole pixels of the block from that output, still hot in L1/L2.
struct FusedPlan {
  int64_t strips_per_row, strips_per_block, blocks_per_row;
};

template <int VEC, int K>
FusedPlan fused_plan(const DwconvShape& s) {
  constexpr int TW = strip_width<VEC, K>();
  const int64_t groups = s.C / VEC;
  const int64_t strips_per_row = (s.W + TW - 1) / TW;
  int64_t per_block = kFusedThreads / groups;
  per_block = per_block < 1 ? 1 : (per_block < strips_per_row ? per_block : strips_per_row);
  return {strips_per_row, per_block, (strips_per_row + per_block - 1) / per_block};
}

#if defined(__CUDACC__)
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One warp normalises row `row` of x into y, saving its statistics.
template <typename T, int VEC>
__device__ __forceinline__ void layer_norm_row(const T* x, const T* weight, const T* bias, T* y,
                                               float* mean_out, float* rstd_out, int64_t row,
                                               int64_t C, float eps, int lane) {
  const T* xr = x + row * C;
  const float mean = warp_sum(ln_lane_sum<T, VEC>(xr, C, lane)) / C;
  const float var = warp_sum(ln_lane_squared_deviation<T, VEC>(xr, C, lane, mean)) / C;
  const float rstd = rsqrtf(var + eps);
  ln_lane_write<T, VEC>(xr, weight, bias, y + row * C, C, lane, mean, rstd);
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kLayerNormThreads)
    layer_norm_forward_kernel(const T* x, const T* weight, const T* bias, T* y, float* mean,
                              float* rstd, int64_t rows, int64_t C, float eps) {
  const int64_t row = int64_t(blockIdx.x) * (kLayerNormThreads / kWarp) + threadIdx.x / kWarp;
  if (row < rows)
    layer_norm_row<T, VEC>(x, weight, bias, y, mean, rstd, row, C, eps, threadIdx.x % kWarp);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kLayerNormThreads)
    layer_norm_backward_kernel(const T* g, const T* x, const T* weight, const float* mean,
                               const float* rstd, T* grad_x, int64_t rows, int64_t C) {
  const int64_t row = int64_t(blockIdx.x) * (kLayerNormThreads / kWarp) + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarp;
  float sum_gw, sum_gw_xhat;
  ln_lane_backward_sums<T, VEC>(g + row * C, x + row * C, weight, C, lane, mean[row], rstd[row],
                                sum_gw, sum_gw_xhat);
  sum_gw = warp_sum(sum_gw);
  sum_gw_xhat = warp_sum(sum_gw_xhat);
  ln_lane_backward_write<T, VEC>(g + row * C, x + row * C, weight, grad_x + row * C, C, lane,
                                 mean[row], rstd[row], sum_gw / C, sum_gw_xhat / C);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kLayerNormWgradThreads)
    layer_norm_wgrad_partial_kernel(const T* g, const T* x, const float* mean, const float* rstd,
                                    float* partial, int64_t rows, int64_t C, int64_t rows_per_chunk,
                                    int64_t threads) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < threads)
    ln_wgrad_partial_thread<T, VEC>(g, x, mean, rstd, partial, rows, C, rows_per_chunk, idx);
}

template <typename T, int VEC, int K>
__global__ void __launch_bounds__(kFusedThreads, 1)
    dwconv_layer_norm_kernel(const T* x, const float* taps, const float* dw_bias,
                             const T* ln_weight, const T* ln_bias, T* y, T* conv, float* mean,
                             float* rstd, DwconvShape s, FusedPlan plan, float eps) {
  constexpr int TW = strip_width<VEC, K>();
  const int64_t row = blockIdx.x / plan.blocks_per_row;
  const int64_t strip0 = (blockIdx.x % plan.blocks_per_row) * plan.strips_per_block;
  const int64_t groups = s.C / VEC;
#pragma unroll 1
  for (int64_t t = threadIdx.x; t < plan.strips_per_block * groups; t += blockDim.x) {
    const int64_t strip = strip0 + t / groups;
    if (strip < plan.strips_per_row)
      dwconv_forward_thread<T, VEC, K, TW>(
          x, taps, dw_bias, conv, s, (row * plan.strips_per_row + strip) * groups + t % groups);
  }
  __syncthreads();
  const int64_t w_begin = strip0 * TW;
  int64_t w_end = (strip0 + plan.strips_per_block) * TW;
  w_end = w_end < s.W ? w_end : s.W;
#pragma unroll 1
  for (int64_t w = w_begin + threadIdx.x / kWarp; w < w_end; w += blockDim.x / kWarp)
    layer_norm_row<T, VEC>(conv, ln_weight, ln_bias, y, mean, rstd, row * s.W + w, s.C, eps,
                           threadIdx.x % kWarp);
}

// Every instantiation the glue can launch for storage type T (see for_each_dwconv_kernel).
template <typename T, typename Visit>
void for_each_layer_norm_kernel(Visit&& visit) {
  for (const int64_t C : {int64_t(16), int64_t(1)}) {
    dispatch_vec<T>(C, {}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      visit(reinterpret_cast<const void*>(&layer_norm_forward_kernel<T, VEC>), kLayerNormThreads,
            "layer_norm_forward");
      visit(reinterpret_cast<const void*>(&layer_norm_backward_kernel<T, VEC>), kLayerNormThreads,
            "layer_norm_backward");
      visit(reinterpret_cast<const void*>(&layer_norm_wgrad_partial_kernel<T, VEC>),
            kLayerNormWgradThreads, "layer_norm_wgrad_partial");
      for (const int64_t k : {3, 5, 7, 9}) {
        dispatch_k(k, [&](auto k_const) {
          constexpr int K = decltype(k_const)::value;
          visit(reinterpret_cast<const void*>(&dwconv_layer_norm_kernel<T, VEC, K>), kFusedThreads,
                "dwconv_layer_norm");
        });
      }
    });
  }
}
#endif

}  // namespace ck::cuda
