// Argument checks shared by the CPU and CUDA glue of dwconv2d. The Python front end checks the
// same things first; these guard direct calls of torch.ops.convnext_kernels.*.
#pragma once
#include <torch/extension.h>

namespace ck {

inline int64_t check_dwconv_args(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, "dwconv2d: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "dwconv2d: x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "dwconv2d: weight dtype ",
                   weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 &&
                        weight.size(2) == weight.size(3),
                    "dwconv2d: weight must have shape [C, 1, k, k] with C = ", C, ", got ",
                    weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK_VALUE(k % 2 == 1, "dwconv2d: kernel size must be odd, got ", k);
  TORCH_CHECK_VALUE(weight.device() == x.device(), "dwconv2d: weight is on ", weight.device(),
                    ", x on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "dwconv2d: bias dtype ",
                     bias->scalar_type(), " differs from x dtype ", x.scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == C, "dwconv2d: bias must have shape [", C,
                      "], got ", bias->sizes());
    TORCH_CHECK_VALUE(bias->device() == x.device(), "dwconv2d: bias is on ", bias->device(),
                      ", x on ", x.device());
  }
  return k;
}

// Weight [C,1,k,k] as [k*k, C] in the accumulation dtype: the kernels read one tap for a run of
// channels at a time.
inline at::Tensor taps_by_channel(const at::Tensor& weight, at::ScalarType acc_type) {
  const int64_t C = weight.size(0), k = weight.size(2);
  return weight.reshape({C, k * k}).t().to(acc_type).contiguous();
}

// The kernels read and write N,H,W,C-contiguous buffers; other layouts are converted.
inline at::Tensor as_nhwc(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

// [k*k + 1, C] fp32 sums (taps, then bias) -> (grad_weight [C,1,k,k], grad_bias [C]): separate,
// contiguous tensors in the weight's dtype.
inline std::tuple<at::Tensor, at::Tensor> split_weight_grad_sums(const at::Tensor& sums,
                                                                 const at::Tensor& weight) {
  const int64_t C = weight.size(0), k = weight.size(2);
  const at::Tensor grad_weight = sums.narrow(0, 0, k * k).t().reshape({C, 1, k, k});
  return {grad_weight.to(weight.scalar_type(), false, true, at::MemoryFormat::Contiguous),
          sums[k * k].to(weight.scalar_type(), false, true)};
}

inline bool is_nhwc(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

}  // namespace ck
