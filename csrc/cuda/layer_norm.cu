// CUDA glue of layer_norm_2d and dwconv_layer_norm around layer_norm_kernels.cuh.
#include "../dwconv_args.h"
#include "../layer_norm_args.h"
#include "cuda_glue.h"
#include "layer_norm_kernels.cuh"

namespace {

using namespace ck::cuda_glue;
using ck::cuda::dispatch_k;
using ck::cuda::dispatch_vec;

constexpr int kRowsPerBlock = ck::cuda::kLayerNormThreads / ck::cuda::kWarp;

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_2d_cuda(const at::Tensor& x,
                                                                  const at::Tensor& weight,
                                                                  const at::Tensor& bias,
                                                                  double eps) {
  constexpr const char* kOp = "layer_norm_2d";
  ck::check_layer_norm_args(x, weight, bias, eps);
  check_cuda_tensor(x, kOp);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  at::Tensor mean = ck::new_row_stats(x), rstd = ck::new_row_stats(x);
  if (x.numel() == 0) return {out, mean, rstd};
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  at::Tensor y_nhwc = ck::is_nhwc(out) ? out : at::empty_like(x_nhwc);
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  const int64_t rows = mean.numel(), C = x.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *xp = ptr<T>(x_nhwc), *wp = ptr<T>(w), *bp = ptr<T>(b);
    T* yp = mutable_ptr<T>(y_nhwc);
    dispatch_vec<T>(C, {xp, wp, bp, yp}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      ck::cuda::layer_norm_forward_kernel<T, VEC>
          <<<blocks_for(rows, kRowsPerBlock, kOp), ck::cuda::kLayerNormThreads, 0, stream>>>(
              xp, wp, bp, yp, mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(), rows,
              C, static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (!y_nhwc.is_same(out)) out.copy_(y_nhwc);
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_2d_backward_cuda(const at::Tensor& grad_y,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  constexpr const char* kOp = "layer_norm_2d_backward";
  ck::check_layer_norm_args(x, weight, weight, 1.0);
  check_cuda_tensor(x, kOp);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() &&
                        grad_y.device() == x.device(),
                    kOp, ": grad_y must match x in shape, dtype and device");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t C = x.size(1);
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor sums = at::zeros({2, C}, x.options().dtype(at::kFloat));
  if (x.numel() != 0) {
    const at::Tensor x_nhwc = ck::as_nhwc(x), g_nhwc = ck::as_nhwc(grad_y);
    at::Tensor gx_nhwc = ck::is_nhwc(grad_x) ? grad_x : at::empty_like(x_nhwc);
    const at::Tensor w = weight.contiguous(), m = mean.contiguous(), r = rstd.contiguous();
    const int64_t rows = m.numel();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    dispatch_dtype(x.scalar_type(), kOp, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T *gp = ptr<T>(g_nhwc), *xp = ptr<T>(x_nhwc), *wp = ptr<T>(w);
      T* gxp = mutable_ptr<T>(gx_nhwc);
      dispatch_vec<T>(C, {gp, xp, wp, gxp}, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        ck::cuda::layer_norm_backward_kernel<T, VEC>
            <<<blocks_for(rows, kRowsPerBlock, kOp), ck::cuda::kLayerNormThreads, 0, stream>>>(
                gp, xp, wp, m.const_data_ptr<float>(), r.const_data_ptr<float>(), gxp, rows, C);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const ck::cuda::LayerNormWgradPlan plan = ck::cuda::layer_norm_wgrad_plan<VEC>(rows, C);
        // Every partial slot is written by exactly one thread, so no zero-fill is needed.
        at::Tensor partial = at::empty({plan.chunks, 2, C}, x.options().dtype(at::kFloat));
        constexpr int kBlock = ck::cuda::kLayerNormWgradThreads;
        ck::cuda::layer_norm_wgrad_partial_kernel<T, VEC>
            <<<blocks_for(plan.threads, kBlock, kOp), kBlock, 0, stream>>>(
                gp, xp, m.const_data_ptr<float>(), r.const_data_ptr<float>(),
                partial.mutable_data_ptr<float>(), rows, C, plan.rows_per_chunk, plan.threads);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launch_sum_partials(partial, sums, stream, kOp);
      });
    });
    if (!gx_nhwc.is_same(grad_x)) grad_x.copy_(gx_nhwc);
  }
  return {grad_x, sums[0].to(weight.scalar_type(), false, true),
          sums[1].to(weight.scalar_type(), false, true)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_layer_norm_cuda(
    const at::Tensor& x, const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_bias,
    const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps, bool keep_conv) {
  constexpr const char* kOp = "dwconv_layer_norm";
  const int64_t k = ck::check_dwconv_args(x, dw_weight, dw_bias);
  ck::check_layer_norm_args(x, ln_weight, ln_bias, eps);
  check_cuda_tensor(x, kOp);
  const c10::cuda::CUDAGuard guard(x.device());
  // The kernel normalises the conv rows it wrote to memory: without keep_conv they still go
  // to a buffer, dropped after the launch.
  ck::DwconvLayerNormOutputs out(x, keep_conv, /*conv_buffer=*/true);
  if (x.numel() == 0) return out.finish();
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  const at::Tensor taps = ck::taps_by_channel(dw_weight, at::kFloat);
  const at::Tensor dw_bias_f =
      dw_bias.has_value() ? dw_bias->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor lw = ln_weight.contiguous(), lb = ln_bias.contiguous();
  const ck::cuda::DwconvShape s = dwconv_shape(x, k);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_dtype(x.scalar_type(), kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *xp = ptr<T>(x_nhwc), *lwp = ptr<T>(lw), *lbp = ptr<T>(lb);
    T *yp = mutable_ptr<T>(out.y_nhwc), *cp = mutable_ptr<T>(out.conv_nhwc);
    const float* bp = dw_bias_f.defined() ? dw_bias_f.const_data_ptr<float>() : nullptr;
    dispatch_vec<T>(s.C, {xp, lwp, lbp, yp, cp, taps.const_data_ptr(), bp}, [&](auto vec) {
      dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        const ck::cuda::FusedPlan plan = ck::cuda::fused_plan<VEC, K>(s);
        ck::cuda::dwconv_layer_norm_kernel<T, VEC, K>
            <<<blocks_for(s.N * s.H * plan.blocks_per_row, 1, kOp), ck::cuda::kFusedThreads, 0,
               stream>>>(xp, taps.const_data_ptr<float>(), bp, lwp, lbp, yp, cp,
                         out.mean.mutable_data_ptr<float>(), out.rstd.mutable_data_ptr<float>(), s,
                         plan, static_cast<float>(eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CUDA, m) {
  m.impl("layer_norm_2d", &layer_norm_2d_cuda);
  m.impl("layer_norm_2d_backward", &layer_norm_2d_backward_cuda);
  m.impl("dwconv_layer_norm", &dwconv_layer_norm_cuda);
}
