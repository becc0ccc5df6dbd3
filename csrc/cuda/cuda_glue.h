// Helpers of the CUDA glue files: dtype dispatch to device types, launch sizes, checks.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/extension.h>

#include "dwconv_kernels.cuh"

namespace ck::cuda_glue {

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void dispatch_dtype(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(Tag<float>{});
    case at::kHalf: return f(Tag<__half>{});
    case at::kBFloat16: return f(Tag<__nv_bfloat16>{});
    default:
      TORCH_CHECK_TYPE(false, op, " (cuda): dtype must be float32, float16 or bfloat16, got ",
                       dtype);
  }
}

inline unsigned int blocks_for(int64_t threads, int block, const char* op) {
  const int64_t blocks = (threads + block - 1) / block;
  TORCH_CHECK_VALUE(blocks < (int64_t(1) << 31), op, " (cuda): tensor too large, ", threads,
                    " threads");
  return static_cast<unsigned int>(blocks);
}

inline void check_cuda_tensor(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16,
                   op, " (cuda): dtype must be float32, float16 or bfloat16, got ",
                   x.scalar_type());
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* mutable_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

// Defined in dwconv.cu.
ck::cuda::DwconvShape dwconv_shape(const at::Tensor& x, int64_t k);
// out[i] = sum over chunks of partial[chunk][i] (partial fp32 [chunks, ...]), deterministic.
void launch_sum_partials(const at::Tensor& partial, at::Tensor& out, cudaStream_t stream,
                         const char* op);

}  // namespace ck::cuda_glue
