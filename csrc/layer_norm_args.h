// Argument checks and outputs shared by the CPU and CUDA glue of layer_norm_2d and
// dwconv_layer_norm.
#pragma once
#include <torch/extension.h>

#include "cpu/output_pool.h"
#include "dwconv_args.h"

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
  return ck::cpu::pooled_empty({x.size(0), x.size(2), x.size(3)}, x.options().dtype(dtype));
}

// dwconv_layer_norm's outputs (y and the kept conv output in x's memory format, the per-pixel
// statistics), with the N,H,W,C buffers its kernels write: the outputs themselves where x is
// channels_last, else copied into them by finish(). Without keep_conv the conv output is
// returned empty; conv_nhwc is then undefined unless the kernels need it as a buffer
// (conv_buffer: the CUDA kernel normalises the conv rows it wrote to memory).
struct DwconvLayerNormOutputs {
  at::Tensor y, conv, mean, rstd, y_nhwc, conv_nhwc;

  DwconvLayerNormOutputs(const at::Tensor& x, bool keep_conv, bool conv_buffer = false)
      : y(ck::cpu::pooled_empty_like(x)),
        conv(keep_conv ? ck::cpu::pooled_empty_like(x) : x.new_empty({0})),
        mean(new_row_stats(x)),
        rstd(new_row_stats(x)),
        y_nhwc(is_nhwc(y) ? y : ck::cpu::pooled_empty_like(y, at::MemoryFormat::ChannelsLast)) {
    if (keep_conv) {
      conv_nhwc =
          is_nhwc(conv) ? conv : ck::cpu::pooled_empty_like(conv, at::MemoryFormat::ChannelsLast);
    } else if (conv_buffer) {
      conv_nhwc = ck::cpu::pooled_empty_like(x, at::MemoryFormat::ChannelsLast);
    }
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish() {
    if (!y_nhwc.is_same(y)) y.copy_(y_nhwc);
    if (conv.numel() != 0 && !conv_nhwc.is_same(conv)) conv.copy_(conv_nhwc);
    return {y, conv, mean, rstd};
  }
};

}  // namespace ck
