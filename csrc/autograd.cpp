// Autograd of the C++ ops whose per-call fixed cost matters (small tensors, many calls): in C++,
// so that neither the forward nor the backward goes through Python. torch.library's Python
// autograd (register_autograd, which the triton ops and the rest of the C++ ops use) cost
// ~30 us in the forward and ~50 us in the backward of one call on this project's 2-core CPU
// machine, more than the LayerNorm kernels themselves at ConvNeXt's last stage (8x768x7x7: 48 us
// forward, 57 us backward).
#include <torch/autograd.h>
#include <torch/extension.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_layer_norm_2d(const at::Tensor& x,
                                                                  const at::Tensor& weight,
                                                                  const at::Tensor& bias,
                                                                  double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("convnext_kernels::layer_norm_2d", "")
                             .typed<decltype(call_layer_norm_2d)>();
  return op.call(x, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_layer_norm_2d_backward(const at::Tensor& grad_y,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("convnext_kernels::layer_norm_2d_backward", "")
                             .typed<decltype(call_layer_norm_2d_backward)>();
  return op.call(grad_y, x, weight, mean, rstd);
}

// (y, mean, rstd) differentiable in x, weight, bias through y; mean and rstd are not.
struct LayerNorm2d : public torch::autograd::Function<LayerNorm2d> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = call_layer_norm_2d(x, weight, bias, eps);
    ctx->save_for_backward({x, weight, mean, rstd});
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_x, grad_weight, grad_bias] =
        call_layer_norm_2d_backward(grads[0], saved[0], saved[1], saved[2], saved[3]);
    return {grad_x, grad_weight, grad_bias, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_2d_autograd(const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      double eps) {
  const variable_list out = LayerNorm2d::apply(x, weight, bias, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, Autograd, m) {
  m.impl("layer_norm_2d", &layer_norm_2d_autograd);
}
