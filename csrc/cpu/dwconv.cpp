// CPU glue of dwconv2d: checks, layout and dtype plumbing around the SIMD kernels
// (dwconv_driver.h: fp32, fp16, bf16) and the plain ones (dwconv_plain_kernels.h: float64).
#include <torch/extension.h>

#include "accumulate.h"
#include "../dwconv_args.h"
#include "dwconv_plain_kernels.h"
#include "dwconv_plain.h"
#include "dwconv_driver.h"
#include "isa.h"
#include "output_pool.h"
#include "parallel.h"

namespace {

at::Tensor dwconv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias) {
  const int64_t k = ck::check_dwconv_args(x, weight, bias);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "dwconv2d (cpu): x must be on the CPU");
  at::Tensor out = ck::cpu::pooled_empty_like(x);
  if (x.numel() == 0) return out;
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  at::Tensor y_nhwc = ck::is_nhwc(out) ? out : ck::cpu::pooled_empty_like(x_nhwc);
  const auto acc_type = ck::cpu::acc_type(x);
  if (acc_type == at::kFloat) {  // fp32, fp16, bf16: the SIMD kernel
    const at::Tensor w = weight.contiguous();
    const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_cpu", [&] {
      using ck::cpu::kernel_ptr;
      ck::cpu::simd::dwconv_forward(
          kernel_ptr(x_nhwc.const_data_ptr<scalar_t>()), kernel_ptr(w.const_data_ptr<scalar_t>()),
          b.defined() ? kernel_ptr(b.const_data_ptr<scalar_t>()) : nullptr,
          kernel_ptr(y_nhwc.mutable_data_ptr<scalar_t>()), x.size(0), x.size(2), x.size(3),
          x.size(1), k, ck::cpu::simd::this_cpu_row_kernels(), ck::cpu::aten_parallel_for());
    });
  } else {  // float64: the plain kernel (the tests' reference precision)
    ck::cpu::dwconv_forward_plain(x_nhwc, weight, bias, y_nhwc);
  }
  if (!y_nhwc.is_same(out)) out.copy_(y_nhwc);
  return out;
}

std::tuple<at::Tensor, at::Tensor> dwconv2d_backward_weight_cpu(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight) {
  const int64_t k = ck::check_dwconv_args(x, weight, std::nullopt);
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
                    "dwconv2d_backward_weight: grad_out must match x in shape and dtype");
  const int64_t C = x.size(1);
  const auto acc_type = ck::cpu::acc_type(x);
  at::Tensor sums = at::zeros({k * k + 1, C}, x.options().dtype(acc_type));
  if (x.numel() != 0) {
    const at::Tensor x_nhwc = ck::as_nhwc(x);
    const at::Tensor g_nhwc = ck::as_nhwc(grad_out);
    if (acc_type == at::kFloat) {  // fp32, fp16, bf16: the SIMD kernel
      float* sums_ptr = sums.mutable_data_ptr<float>();
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_backward_weight_cpu", [&] {
            using ck::cpu::kernel_ptr;
            ck::cpu::simd::dwconv_backward_weight(
                kernel_ptr(g_nhwc.const_data_ptr<scalar_t>()),
                kernel_ptr(x_nhwc.const_data_ptr<scalar_t>()), sums_ptr, sums_ptr + k * k * C,
                x.size(0), x.size(2), x.size(3), C, k, ck::cpu::simd::this_cpu_row_kernels(),
                ck::cpu::aten_parallel_for());
          });
    } else {  // float64: the plain kernel
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv2d_backward_weight_cpu", [&] {
        using Acc = ck::cpu::acc_t<scalar_t>;
        Acc* sums_ptr = sums.mutable_data_ptr<Acc>();
        ck::cpu::dwconv_backward_weight<scalar_t, Acc>(
            g_nhwc.const_data_ptr<scalar_t>(), x_nhwc.const_data_ptr<scalar_t>(), sums_ptr,
            sums_ptr + k * k * C, ck::cpu::dwconv_shape(x, k), ck::cpu::aten_parallel_for());
      });
    }
  }
  return ck::split_weight_grad_sums(sums, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CPU, m) {
  m.impl("dwconv2d", &dwconv2d_cpu);
  m.impl("dwconv2d_backward_weight", &dwconv2d_backward_weight_cpu);
}
