// CUDA glue of dwconv2d: checks, layout, dtype and kernel-size dispatch around dwconv_kernels.cuh.
#include "../dwconv_args.h"
#include "cuda_glue.h"
#include "dwconv_kernels.cuh"

namespace ck::cuda_glue {

ck::cuda::DwconvShape dwconv_shape(const at::Tensor& x, int64_t k) {
  return {x.size(0), x.size(2), x.size(3), x.size(1), static_cast<int>(k)};
}

void launch_sum_partials(const at::Tensor& partial, at::Tensor& out, cudaStream_t stream,
                         const char* op) {
  const int64_t chunks = partial.size(0), per_chunk = partial.numel() / chunks;
  constexpr int kBlock = ck::cuda::kSumPartialsThreads;
  ck::cuda::sum_partials_kernel<float><<<blocks_for(per_chunk, kBlock, op), kBlock, 0, stream>>>(
      partial.const_data_ptr<float>(), out.mutable_data_ptr<float>(), chunks, per_chunk);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ck::cuda_glue

namespace {

using namespace ck::cuda_glue;
using ck::cuda::dispatch_k;
using ck::cuda::dispatch_vec;
using ck::cuda::DwconvShape;

at::Tensor dwconv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  const int64_t k = ck::check_dwconv_args(x, weight, bias);
  check_cuda_tensor(x, "dwconv2d");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  at::Tensor y_nhwc = ck::is_nhwc(out) ? out : at::empty_like(x_nhwc);
  const at::Tensor taps = ck::taps_by_channel(weight, at::kFloat);
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const DwconvShape s = dwconv_shape(x, k);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), "dwconv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = ptr<T>(x_nhwc);
    T* yp = mutable_ptr<T>(y_nhwc);
    const float* bp = bias_f.defined() ? bias_f.const_data_ptr<float>() : nullptr;
    dispatch_vec<T>(s.C, {xp, yp, taps.const_data_ptr(), bp}, [&](auto vec) {
      dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        constexpr int kBlock = ck::cuda::kForwardThreads;
        const int64_t threads = ck::cuda::forward_threads<VEC, K>(s);
        ck::cuda::dwconv_forward_kernel<T, VEC, K, ck::cuda::strip_width<VEC, K>()>
            <<<blocks_for(threads, kBlock, "dwconv2d"), kBlock, 0, stream>>>(
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
  constexpr const char* kOp = "dwconv2d_backward_weight";
  const int64_t k = ck::check_dwconv_args(x, weight, std::nullopt);
  check_cuda_tensor(x, kOp);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type() &&
                        grad_out.device() == x.device(),
                    kOp, ": grad_out must match x in shape, dtype and device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t C = x.size(1), taps = k * k;
  at::Tensor sums = at::zeros({taps + 1, C}, x.options().dtype(at::kFloat));
  if (x.numel() != 0) {
    const at::Tensor x_nhwc = ck::as_nhwc(x);
    const at::Tensor g_nhwc = ck::as_nhwc(grad_out);
    const DwconvShape s = dwconv_shape(x, k);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_dtype(x.scalar_type(), kOp, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* xp = ptr<T>(x_nhwc);
      const T* gp = ptr<T>(g_nhwc);
      dispatch_vec<T>(C, {xp, gp}, [&](auto vec) {
        dispatch_k(k, [&](auto k_const) {
          constexpr int VEC = decltype(vec)::value;
          constexpr int K = decltype(k_const)::value;
          const ck::cuda::WgradPlan plan = ck::cuda::wgrad_plan<VEC, K>(s);
          // Every partial slot is written by exactly one thread, so no zero-fill is needed.
          at::Tensor partial = at::empty({plan.chunks, taps + 1, C}, x.options().dtype(at::kFloat));
          constexpr int kBlock = ck::cuda::kWgradThreads;
          ck::cuda::dwconv_wgrad_partial_kernel<T, VEC, K>
              <<<blocks_for(plan.threads, kBlock, kOp), kBlock, 0, stream>>>(
                  gp, xp, partial.mutable_data_ptr<float>(), s, plan.rows_per_chunk, plan.threads);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          launch_sum_partials(partial, sums, stream, kOp);
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
