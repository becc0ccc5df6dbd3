// CPU glue of grn (ConvNeXt-V2 Global Response Normalisation on N,H,W,C): checks and dtype
// plumbing around the passes of cpu/mlp_kernels.h and the statistics of cpu/grn_stats.h.
#include <torch/extension.h>

#include "accumulate.h"
#include "grn_stats.h"
#include "mlp_kernels.h"
#include "output_pool.h"
#include "parallel.h"

namespace {

void check_grn_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                    const at::Tensor& bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, H, W, C), got ", x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, " (cpu): x must be on the CPU");
  const int64_t C = x.size(3);
  TORCH_CHECK_VALUE(weight.numel() == C && bias.numel() == C, op,
                    ": weight and bias must hold C = ", C, " values");
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(),
                   op, ": weight and bias must have x's dtype");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grn_cpu(const at::Tensor& x,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, double eps) {
  check_grn_args("grn", x, weight, bias);
  const int64_t N = x.size(0), C = x.size(3), rows_per_sample = x.size(1) * x.size(2);
  const at::Tensor xc = x.contiguous(), b = bias.reshape(-1).contiguous();
  at::Tensor y = ck::cpu::pooled_empty_like(xc);
  at::Tensor sumsq = ck::cpu::pooled_empty({N, C}, x.options().dtype(ck::cpu::acc_type(x)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_cpu", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::per_sample_column_sums<scalar_t, Acc>(
        xc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), sumsq.mutable_data_ptr<Acc>(),
        nullptr, N, rows_per_sample, C, ck::cpu::aten_parallel_for());
  });
  auto stats = ck::cpu::grn_stats(sumsq, weight, eps);
  ck::cpu::grn_output(xc, stats.scale, b, y, rows_per_sample);
  return {y, stats.norm, stats.nx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grn_backward_cpu(const at::Tensor& grad_y,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight,
                                                                const at::Tensor& norm,
                                                                const at::Tensor& nx, double eps) {
  check_grn_args("grn_backward", x, weight, weight);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grn_backward: grad_y must match x's shape");
  const int64_t N = x.size(0), C = x.size(3), rows_per_sample = x.size(1) * x.size(2);
  const at::Tensor xc = x.contiguous(), gc = grad_y.contiguous();
  at::Tensor grad_x = ck::cpu::pooled_empty_like(xc);
  at::Tensor grad_dot_x = ck::cpu::pooled_empty({N, C}, x.options().dtype(ck::cpu::acc_type(x)));
  at::Tensor grad_sum = ck::cpu::pooled_empty_like(grad_dot_x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_bwd", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::per_sample_column_sums<scalar_t, Acc>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        grad_dot_x.mutable_data_ptr<Acc>(), grad_sum.mutable_data_ptr<Acc>(), N, rows_per_sample, C,
        ck::cpu::aten_parallel_for());
  });
  const at::Tensor scale = ck::cpu::grn_scale(nx, weight).contiguous();
  const at::Tensor coef =
      ck::cpu::grn_input_grad_coef(norm, nx, weight, grad_dot_x, eps).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_bwd", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::scaled_sum<scalar_t, Acc>(gc.const_data_ptr<scalar_t>(), scale.const_data_ptr<Acc>(),
                                       xc.const_data_ptr<scalar_t>(), coef.const_data_ptr<Acc>(),
                                       nullptr, grad_x.mutable_data_ptr<scalar_t>(), xc.numel() / C,
                                       C, rows_per_sample, ck::cpu::aten_parallel_for());
  });
  return {grad_x, (nx * grad_dot_x).sum(0).to(weight.scalar_type()).reshape(weight.sizes()),
          grad_sum.sum(0).to(weight.scalar_type()).reshape(weight.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CPU, m) {
  m.impl("grn", &grn_cpu);
  m.impl("grn_backward", &grn_backward_cpu);
}
