// GRN's per-(sample, channel) statistics, [samples, C] tensors in the accumulation dtype, and its
// output pass, shared by the CPU GRN and the GRN variant of the CPU MLP (the Triton path computes
// the same in convnext_kernels/triton/grn.py). The statistics are tiny next to the passes over
// the data, so plain ATen.
//   G = sqrt(sum of squares), nx = G / (mean_c G + eps), scale = 1 + w * nx
//   grad_x = grad_y * scale + x * coef, coef from grad_dot_x = per-sample sums of grad_y * x.
#pragma once
#include <torch/extension.h>

#include <limits>
#include <optional>

#include "accumulate.h"
#include "mlp_kernels.h"
#include "parallel.h"

namespace ck::cpu {

struct GrnStats {
  at::Tensor norm, nx, scale;
};

inline GrnStats grn_stats(const at::Tensor& sumsq, const at::Tensor& weight, double eps) {
  at::Tensor norm = sumsq.sqrt();
  at::Tensor nx = norm / (norm.mean(-1, true) + eps);
  return {norm, nx, 1 + weight.reshape(-1).to(sumsq.scalar_type()) * nx};
}

inline at::Tensor grn_scale(const at::Tensor& nx, const at::Tensor& weight) {
  return 1 + weight.reshape(-1).to(nx.scalar_type()) * nx;
}

// G = 0 (an all-zero channel) passes no gradient through the norm, as vector_norm's backward.
inline at::Tensor grn_input_grad_coef(const at::Tensor& norm, const at::Tensor& nx,
                                      const at::Tensor& weight, const at::Tensor& grad_dot_x,
                                      double eps) {
  const int64_t C = norm.size(-1);
  at::Tensor denom = norm.mean(-1, true) + eps;
  at::Tensor grad_nx = weight.reshape(-1).to(norm.scalar_type()) * grad_dot_x;
  at::Tensor grad_norm = grad_nx / denom - (grad_nx * nx).sum(-1, true) / (denom * C);
  // The floor is the smallest normal of the statistics' dtype, as in triton/grn.py (pinned by
  // tests/test_grn.py::test_cpu_and_triton_statistics_agree).
  const double floor = norm.scalar_type() == at::kDouble ? std::numeric_limits<double>::min()
                                                         : std::numeric_limits<float>::min();
  return at::where(norm > 0, grad_norm / norm.clamp_min(floor), at::zeros_like(norm));
}

// GRN's output: out = x * scale[sample] [+ bias] over contiguous [rows, C] x and out (out may be
// x), scale [samples, C] in the accumulation dtype, bias [C] in x's dtype.
inline void grn_output(const at::Tensor& x, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias, at::Tensor& out,
                       int64_t rows_per_sample) {
  const at::Tensor sc = scale.contiguous();
  const int64_t C = x.size(-1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_output", [&] {
    using Acc = acc_t<scalar_t>;
    scaled_sum<scalar_t, Acc>(x.const_data_ptr<scalar_t>(), sc.const_data_ptr<Acc>(), nullptr,
                              nullptr, bias ? bias->const_data_ptr<scalar_t>() : nullptr,
                              out.mutable_data_ptr<scalar_t>(), x.numel() / C, C, rows_per_sample,
                              aten_parallel_for());
  });
}

}  // namespace ck::cpu
