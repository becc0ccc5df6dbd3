// CUDA glue of dwconv2d: checks, layout, dtype and kernel-size dispatch around dwconv_kernels.cuh.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "../dwconv_args.h"
#include "dwconv_kernels.cuh"

namespace {

using ck::cuda::dispatch_k;
using ck::cuda::dispatch_vec;
using ck::cuda::DwconvShape;

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(Tag<float>{});
    case at::kHalf: return f(Tag<__half>{});
    case at::kBFloat16: return f(Tag<__nv_bfloat16>{});
    default:
      TORCH_CHECK_TYPE(false, "dwconv2d (cuda): dtype must be float32, float16 or bfloat16, got ",
                       dtype);
  }
}

unsigned int blocks_for(int64_t threads, int block) {
  const int64_t blocks = (threads + block - 1) / block;
  TORCH_CHECK_VALUE(blocks < (int64_t(1) << 31), "dwconv2d (cuda): tensor too large, ", threads,
                    " threads");
  return static_cast<unsigned int>(blocks);
}

DwconvShape shape_of(const at::Tensor& x, int64_t k) {
  return {x.size(0), x.size(2), x.size(3), x.size(1), static_cast<int>(k)};
}

void check_cuda_args(const at::Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, " (cuda): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                       x.scalar_type() == at::kBFloat16,
                   op, " (cuda): dtype must be float32, float16 or bfloat16, got ",
                   x.scalar_type());
}

at::Tensor dwconv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  const int64_t k = ck::check_dwconv_args(x, weight, bias);
  check_cuda_args(x, "dwconv2d");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  at::Tensor y_nhwc = ck::is_nhwc(out) ? out : at::empty_like(x_nhwc);
  const at::Tensor taps = ck::taps_by_channel(weight, at::kFloat);
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const DwconvShape s = shape_of(x, k);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = reinterpret_cast<const T*>(x_nhwc.const_data_ptr());
    T* yp = reinterpret_cast<T*>(y_nhwc.mutable_data_ptr());
    const float* bp = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
    dispatch_vec<T>(s.C, {xp, yp, taps.const_data_ptr(), bp},
                    [&](auto vec) {
      dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        constexpr int TW = ck::cuda::strip_width<VEC, K>();
        constexpr int kBlock = ck::cuda::kForwardThreads;
        const int64_t threads = ck::cuda::forward_threads<VEC, K>(s);
        ck::cuda::dwconv_forward_kernel<T, VEC, K, TW><<<blocks_for(threads, kBlock), kBlock, 0, stream>>>(
            xp, taps.const_data_ptr<float>(), bp, yp, s, threads);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  if (!y_nhwc.is_same(out)) out.copy_(y_nhwc);
  return out;
}

std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_weight_cuda(const at::Tensor& grad_out,
                                                                 const at::Tensor& x,
                                                                 const at::Tensor& weight) {
  const int64_t k = ck::check_dwconv_args(x, weight, std::nullopt);
  check_cuda_args(x, "dwconv2d_backward_weight");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type() &&
                        grad_out.device() == x.device(),
                    "dwconv2d_backward_weight: grad_out must match x in shape, dtype and device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t C = x.size(1), taps = k * k;
  at::Tensor sums = at::zeros({taps + 1, C}, x.options().dtype(at::kFloat));
  if (x.numel() != 0) {
    const at::Tensor x_nhwc = ck::as_nhwc(x);
    const at::Tensor g_nhwc = ck::as_nhwc(grad_out);
    const DwconvShape s = shape_of(x, k);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* xp = reinterpret_cast<const T*>(x_nhwc.const_data_ptr());
      const T* gp = reinterpret_cast<const T*>(g_nhwc.const_data_ptr());
      dispatch_vec<T>(C, {xp, gp}, [&](auto vec) {
        dispatch_k(k, [&](auto k_const) {
          constexpr int VEC = decltype(vec)::value;
          constexpr int K = decltype(k_const)::value;
          const ck::cuda::WgradPlan plan = ck::cuda::wgrad_plan<VEC, K>(s);
          // Every partial slot is written by exactly one thread, so no zero-fill is needed.
          at::Tensor partial =
              at::empty({plan.chunks, taps + 1, C}, x.options().dtype(at::kFloat));
          constexpr int kBlock = ck::cuda::kWgradThreads;
          ck::cuda::dwconv_wgrad_partial_kernel<T, VEC, K>
              <<<blocks_for(plan.threads, kBlock), kBlock, 0, stream>>>(
              gp, xp, partial.mutable_data_ptr<float>(), s, plan.rows_per_chunk, plan.threads);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          const int64_t per_chunk = (taps + 1) * C;
          constexpr int kReduceBlock = ck::cuda::kReduceThreads;
          ck::cuda::dwconv_wgrad_reduce_kernel<<<blocks_for(per_chunk, kReduceBlock), kReduceBlock,
                                                 0, stream>>>(
              partial.const_data_ptr<float>(), sums.mutable_data_ptr<float>(), plan.chunks,
              per_chunk);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  return ck::split_weight_grad_sums(sums, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CUDA, m) {
  m.impl("dwconv2d", &dwconv2d_cuda);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cuda);
}
