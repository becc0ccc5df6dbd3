// Argument checks shared by the CPU and CUDA glue of layer_norm_2d and dwconv_layer_norm.
#pragma once
#include <torch/extension.h>

namespace ck {

inline void check_layer_norm_args(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias, double eps) {
  TORCH_CHECK_VALUE(x.dim() == 4, "layer_norm_2d: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "layer_norm_2d: x must be a floating tensor, got ", x.scalar_type());
  const int64_t C = x.size(1);
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"weight", weight}, {"bias", bias}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "layer_norm_2d: ", name, " dtype ",
                     t.scalar_type(), " differs from x dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == C, "layer_norm_2d: ", name, " must have shape [",
                      C, "], got ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == x.device(), "layer_norm_2d: ", name, " is on ", t.device(),
                      ", x on ", x.device());
  }
  TORCH_CHECK_VALUE(eps > 0, "layer_norm_2d: eps must be > 0, got ", eps);
}

// Per-pixel statistics: fp32 [N, H, W] (float64 for float64 x).
inline at::Tensor new_row_stats(const at::Tensor& x) {
  const auto dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty({x.size(0), x.size(2), x.size(3)}, x.options().dtype(dtype));
}

}  // namespace ck
