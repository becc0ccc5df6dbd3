// Pieces shared by the CUDA kernels: host/device qualifiers, fp32 conversions, aligned vector
// accesses, and the fixed-order sum of per-chunk partials. Torch-free.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define CK_HD __host__ __device__ __forceinline__
#define CK_HOST_DEVICE __host__ __device__
#else
#define CK_HD inline
#define CK_HOST_DEVICE
#endif

namespace ck::cuda {

CK_HD float to_float(float v) { return v; }
#if defined(__CUDACC__)
CK_HD float to_float(__half v) { return __half2float(v); }
CK_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

template <typename T>
struct FromFloat {
  static CK_HD T cast(float v) { return static_cast<T>(v); }
};
#if defined(__CUDACC__)
template <>
struct FromFloat<__half> {
  static CK_HD __half cast(float v) { return __float2half_rn(v); }
};
template <>
struct FromFloat<__nv_bfloat16> {
  static CK_HD __nv_bfloat16 cast(float v) { return __float2bfloat16_rn(v); }
};
#endif

// VEC elements moved as one aligned access (LDG/STG.128 for 16 bytes).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
CK_HD Vec<T, VEC> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <typename T, int VEC>
CK_HD void store_vec(T* p, const Vec<T, VEC>& v) {
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

template <typename T, int VEC>
CK_HD Vec<T, VEC> zero_vec() {
  Vec<T, VEC> z;
#pragma unroll
  for (int i = 0; i < VEC; ++i) z.v[i] = FromFloat<T>::cast(0.f);
  return z;
}

// VEC fp32 values, read 16 bytes at a time when VEC allows.
template <int VEC>
CK_HD void load_floats(const float* p, float (&out)[VEC]) {
  constexpr int kStep = VEC % 4 == 0 ? 4 : 1;
#pragma unroll
  for (int i = 0; i < VEC; i += kStep) {
    const Vec<float, kStep> part = load_vec<float, kStep>(p + i);
#pragma unroll
    for (int j = 0; j < kStep; ++j) out[i + j] = part.v[j];
  }
}

template <int VEC>
CK_HD void store_floats(float* p, const float (&in)[VEC]) {
  constexpr int kStep = VEC % 4 == 0 ? 4 : 1;
#pragma unroll
  for (int i = 0; i < VEC; i += kStep) {
    Vec<float, kStep> part;
#pragma unroll
    for (int j = 0; j < kStep; ++j) part.v[j] = in[i + j];
    store_vec<float, kStep>(p + i, part);
  }
}

// out[i] = sum over chunks, in chunk order, of partial[chunk][i]: the second stage of every
// weight-gradient reduction; deterministic. Threads: per_chunk.
CK_HD void sum_partials_thread(const float* __restrict__ partial, float* __restrict__ out,
                               const int64_t chunks, const int64_t per_chunk, const int64_t idx) {
  float sum = 0.f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * per_chunk + idx];
  out[idx] = sum;
}

constexpr int kSumPartialsThreads = 256;

#if defined(__CUDACC__)
// A template so that every file including this header shares one definition.
template <typename Acc = float>
__global__ void __launch_bounds__(kSumPartialsThreads)
    sum_partials_kernel(const Acc* partial, Acc* out, int64_t chunks, int64_t per_chunk) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < per_chunk) sum_partials_thread(partial, out, chunks, per_chunk, idx);
}
#endif

}  // namespace ck::cuda
