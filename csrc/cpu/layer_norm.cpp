// CPU glue of layer_norm_2d: checks, memory format and dtype plumbing around
// cpu/layer_norm_kernels.h, and the row kernels per instruction set (layer_norm_rows), which the
// fused dwconv_layer_norm (dwconv_layer_norm.cpp) takes too.
#include <torch/extension.h>

#include "../layer_norm_args.h"
#include "accumulate.h"
#include "isa.h"
#include "layer_norm_kernels.h"
#include "output_pool.h"
#include "parallel.h"

namespace ck::cpu {
namespace {

// The row kernels compiled for each instruction set (fp32 math; fp16/bf16 converted in the
// loops).
#define CK_LAYER_NORM_ROWS(SUFFIX, TARGET, LANES)                                                 \
  template <typename T, typename Acc>                                                             \
  TARGET void forward_rows_##SUFFIX(const T* x, const Acc* w, const Acc* b, T* y, Acc* mean,      \
                                    Acc* rstd, int64_t begin, int64_t end, int64_t C, Acc eps,    \
                                    Acc* v) {                                                     \
    layer_norm_forward_rows<T, Acc>(x, w, b, y, mean, rstd, begin, end, C, eps, v);               \
  }                                                                                               \
  template <typename T, typename Acc>                                                             \
  TARGET void backward_rows_##SUFFIX(const T* g, const T* x, const Acc* w, const Acc* mean,       \
                                     const Acc* rstd, T* grad_x, Acc* part_w, Acc* part_b,        \
                                     int64_t begin, int64_t end, int64_t C, Acc* xhat, Acc* gh) { \
    layer_norm_backward_rows<T, Acc>(g, x, w, mean, rstd, grad_x, part_w, part_b, begin, end, C,  \
                                     xhat, gh);                                                   \
  }                                                                                               \
  template <typename T, typename Acc>                                                             \
  LayerNormRows<T, Acc> rows_##SUFFIX() {                                                         \
    return {forward_rows_##SUFFIX<T, Acc>, backward_rows_##SUFFIX<T, Acc>};                       \
  }
CK_FOR_EACH_ISA(CK_LAYER_NORM_ROWS)
#undef CK_LAYER_NORM_ROWS

}  // namespace

template <typename T, typename Acc>
LayerNormRows<T, Acc> layer_norm_rows() {
  if constexpr (std::is_same_v<Acc, float>) {
    return CK_PICK_BY_ISA(cpu_isa(), rows, <T, Acc>)();
  } else {
    return rows_portable<T, Acc>();
  }
}
template LayerNormRows<float, float> layer_norm_rows<float, float>();
template LayerNormRows<double, double> layer_norm_rows<double, double>();

}  // namespace ck::cpu

namespace {

using ck::cpu::kernel_ptr;
using ck::cpu::kernel_t;
using ck::cpu::layer_norm_rows;

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_2d_cpu(const at::Tensor& x,
                                                                 const at::Tensor& weight,
                                                                 const at::Tensor& bias,
                                                                 double eps) {
  ck::check_layer_norm_args(x, weight, bias, eps);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "layer_norm_2d (cpu): x must be on the CPU");
  at::Tensor out = ck::cpu::pooled_empty_like(x);
  at::Tensor mean = ck::new_row_stats(x), rstd = ck::new_row_stats(x);
  if (x.numel() == 0) return {out, mean, rstd};
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  at::Tensor y_nhwc = ck::is_nhwc(out) ? out : ck::cpu::pooled_empty_like(x_nhwc);
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_2d_cpu", [&] {
        using Acc = ck::cpu::acc_t<scalar_t>;
        using K = kernel_t<scalar_t>;
        ck::cpu::layer_norm_forward<K, Acc>(
            kernel_ptr(x_nhwc.const_data_ptr<scalar_t>()), kernel_ptr(w.const_data_ptr<scalar_t>()),
            kernel_ptr(b.const_data_ptr<scalar_t>()),
            kernel_ptr(y_nhwc.mutable_data_ptr<scalar_t>()), mean.mutable_data_ptr<Acc>(),
            rstd.mutable_data_ptr<Acc>(), mean.numel(), x.size(1), static_cast<Acc>(eps),
            layer_norm_rows<K>(), ck::cpu::aten_parallel_for());
      });
  if (!y_nhwc.is_same(out)) out.copy_(y_nhwc);
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_2d_backward_cpu(const at::Tensor& grad_y,
                                                                          const at::Tensor& x,
                                                                          const at::Tensor& weight,
                                                                          const at::Tensor& mean,
                                                                          const at::Tensor& rstd) {
  ck::check_layer_norm_args(x, weight, weight, 1.0);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
                    "layer_norm_2d_backward: grad_y must match x in shape and dtype");
  const int64_t C = x.size(1);
  const auto acc_type = ck::cpu::acc_type(x);
  at::Tensor grad_x = ck::cpu::pooled_empty_like(x);
  // The kernel writes every column of grad_weight and grad_bias in Acc: straight into the
  // outputs where the weight's dtype is Acc, else into a buffer converted afterwards (fp16/bf16).
  const auto new_sums = [&] {
    const auto options = weight.options().dtype(acc_type);
    return x.numel() == 0 ? at::zeros({C}, options) : at::empty({C}, options);
  };
  at::Tensor grad_weight = new_sums(), grad_bias = new_sums();
  if (x.numel() != 0) {
    const at::Tensor x_nhwc = ck::as_nhwc(x), g_nhwc = ck::as_nhwc(grad_y);
    at::Tensor gx_nhwc = ck::is_nhwc(grad_x) ? grad_x : ck::cpu::pooled_empty_like(x_nhwc);
    const at::Tensor w = weight.contiguous(), m = mean.contiguous(), r = rstd.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "layer_norm_2d_backward_cpu", [&] {
          using Acc = ck::cpu::acc_t<scalar_t>;
          using K = kernel_t<scalar_t>;
          ck::cpu::layer_norm_backward<K, Acc>(
              kernel_ptr(g_nhwc.const_data_ptr<scalar_t>()),
              kernel_ptr(x_nhwc.const_data_ptr<scalar_t>()),
              kernel_ptr(w.const_data_ptr<scalar_t>()), m.const_data_ptr<Acc>(),
              r.const_data_ptr<Acc>(), kernel_ptr(gx_nhwc.mutable_data_ptr<scalar_t>()),
              grad_weight.mutable_data_ptr<Acc>(), grad_bias.mutable_data_ptr<Acc>(), m.numel(), C,
              layer_norm_rows<K>(), ck::cpu::aten_parallel_for());
        });
    if (!gx_nhwc.is_same(grad_x)) grad_x.copy_(gx_nhwc);
  }
  if (weight.scalar_type() != acc_type) {
    grad_weight = grad_weight.to(weight.scalar_type());
    grad_bias = grad_bias.to(weight.scalar_type());
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CPU, m) {
  m.impl("layer_norm_2d", &layer_norm_2d_cpu);
  m.impl("layer_norm_2d_backward", &layer_norm_2d_backward_cpu);
}
