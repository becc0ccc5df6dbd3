// The plain depthwise conv forward (dwconv_plain_kernels.h) with its glue: the float64 path (the
// tests' reference precision) of the CPU dwconv2d and dwconv_layer_norm, whose fp32, fp16 and bf16
// take the SIMD kernels (dwconv_driver.h). x_nhwc and y_nhwc are N,C,H,W in channels_last memory.
#pragma once
#include <torch/extension.h>

#include <optional>

#include "../dwconv_args.h"
#include "accumulate.h"
#include "dwconv_plain_kernels.h"
#include "parallel.h"

namespace ck::cpu {

// The kernels' shape of N,C,H,W x and a k x k filter.
inline DwconvShape dwconv_shape(const at::Tensor& x, int64_t k) {
  return {x.size(0), x.size(2), x.size(3), x.size(1), k};
}

inline void dwconv_forward_plain(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::Tensor& y_nhwc) {
  const auto acc = acc_type(x_nhwc);
  const at::Tensor taps = ck::taps_by_channel(weight, acc);
  const at::Tensor bias_acc = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x_nhwc.scalar_type(), "dwconv_forward_plain", [&] {
    using Acc = acc_t<scalar_t>;
    dwconv_forward<scalar_t, Acc>(x_nhwc.const_data_ptr<scalar_t>(), taps.const_data_ptr<Acc>(),
                                  bias_acc.defined() ? bias_acc.const_data_ptr<Acc>() : nullptr,
                                  y_nhwc.mutable_data_ptr<scalar_t>(),
                                  dwconv_shape(x_nhwc, weight.size(2)), aten_parallel_for());
  });
}

}  // namespace ck::cpu
