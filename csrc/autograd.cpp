// Autograd of the C++ LayerNorm ops (layer_norm_2d, dwconv_layer_norm) in C++, so that neither
// the forward nor the backward goes through Python: torch.library's Python autograd, which the
// triton ops and the other C++ ops use, cost about as much per call as the LayerNorm kernels
// themselves at ConvNeXt's last stage on a CPU. The formulas are the Python ones:
// ops/layer_norm.py's, and for dwconv_layer_norm the one definition in
// ops/dwconv_layer_norm.py (backward), which tests/test_layer_norm.py holds equal to this one bit
// for bit.
#include <torch/autograd.h>
#include <torch/extension.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The op `convnext_kernels::name`, typed as the helper that calls it (Sig).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string("convnext_kernels::") + name).c_str(), "")
      .typed<Sig>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_layer_norm_2d(const at::Tensor& x,
                                                                  const at::Tensor& weight,
                                                                  const at::Tensor& bias,
                                                                  double eps) {
  static const auto op = find_op<decltype(call_layer_norm_2d)>("layer_norm_2d");
  return op.call(x, weight, bias, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_layer_norm_2d_backward(const at::Tensor& grad_y,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& weight,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  static const auto op = find_op<decltype(call_layer_norm_2d_backward)>("layer_norm_2d_backward");
  return op.call(grad_y, x, weight, mean, rstd);
}

at::Tensor call_dwconv2d(const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  static const auto op = find_op<decltype(call_dwconv2d)>("dwconv2d");
  return op.call(x, weight, bias);
}

std::tuple<at::Tensor, at::Tensor> call_dwconv2d_backward_weight(const at::Tensor& grad_out,
                                                                 const at::Tensor& x,
                                                                 const at::Tensor& weight) {
  static const auto op =
      find_op<decltype(call_dwconv2d_backward_weight)>("dwconv2d_backward_weight");
  return op.call(grad_out, x, weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_dwconv_layer_norm(
    const at::Tensor& x, const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_bias,
    const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps, bool keep_conv) {
  static const auto op = find_op<decltype(call_dwconv_layer_norm)>("dwconv_layer_norm");
  return op.call(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, keep_conv);
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

// (y, conv, mean, rstd) differentiable in x, the conv's weight and bias and the norm's weight and
// bias through y. The backward is the LayerNorm backward on the conv output (recomputed where the
// op kept none) followed by the dwconv backward: grad_x is the conv of grad_conv with the
// flipped weight, and one op gives the conv's weight and bias gradients.
struct DwconvLayerNorm : public torch::autograd::Function<DwconvLayerNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& dw_weight,
                               const std::optional<at::Tensor>& dw_bias,
                               const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps,
                               bool keep_conv) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, conv, mean, rstd] =
        call_dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, keep_conv);
    // Without keep_conv the conv is returned empty and the backward recomputes it.
    ctx->save_for_backward({x, dw_weight, dw_bias.value_or(at::Tensor()), ln_weight,
                            keep_conv ? conv : at::Tensor(), mean, rstd});
    ctx->mark_non_differentiable({conv, mean, rstd});
    ctx->set_materialize_grads(false);
    return {y, conv, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(7);
    if (!grads[0].defined()) return out;  // y did not reach the loss
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &dw_weight = saved[1], &dw_bias = saved[2];
    const bool has_dw_bias = dw_bias.defined();
    at::Tensor conv = saved[4];
    if (!conv.defined()) {
      conv = call_dwconv2d(x, dw_weight,
                           has_dw_bias ? std::optional<at::Tensor>(dw_bias) : std::nullopt);
    }
    auto [grad_conv, grad_ln_weight, grad_ln_bias] =
        call_layer_norm_2d_backward(grads[0], conv, saved[3], saved[5], saved[6]);
    if (ctx->needs_input_grad(0)) {
      out[0] = call_dwconv2d(grad_conv, dw_weight.flip({-2, -1}), std::nullopt);
    }
    if (ctx->needs_input_grad(1) || (has_dw_bias && ctx->needs_input_grad(2))) {
      auto [grad_dw_weight, grad_dw_bias] = call_dwconv2d_backward_weight(grad_conv, x, dw_weight);
      out[1] = grad_dw_weight;
      if (has_dw_bias) out[2] = grad_dw_bias;
    }
    out[3] = grad_ln_weight;
    out[4] = grad_ln_bias;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_layer_norm_autograd(
    const at::Tensor& x, const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_bias,
    const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps, bool keep_conv) {
  const variable_list out =
      DwconvLayerNorm::apply(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, keep_conv);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, Autograd, m) {
  m.impl("layer_norm_2d", &layer_norm_2d_autograd);
  m.impl("dwconv_layer_norm", &dwconv_layer_norm_autograd);
}
