// CPU glue of the ConvNeXt MLP (rows [M, C]: fc1 -> GELU [-> GRN] -> fc2 [* gamma]
// [* drop_scale per sample] [+ residual]): ATen GEMMs, with every elementwise step between them
// one fused pass of cpu/mlp_kernels.h. The backward recomputes fc1's pre-activation unless the
// forward kept it. Argument checks with messages for users are in Python (ck.mlp); these guard
// the op's own contract.
#include <torch/extension.h>

#include "accumulate.h"
#include "grn_stats.h"
#include "mlp_kernels.h"
#include "parallel.h"

namespace {

using OptTensor = std::optional<at::Tensor>;

template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

OptTensor flat(const OptTensor& t) {
  return t.has_value() ? OptTensor(t->reshape(-1).contiguous()) : std::nullopt;
}

void check_mlp_args(const at::Tensor& x, const at::Tensor& fc1_w, const at::Tensor& fc2_w,
                    int64_t rows_per_sample) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.device().is_cpu(), "mlp (cpu): x must be CPU rows [M, C]");
  TORCH_CHECK_VALUE(fc1_w.dim() == 2 && fc1_w.size(1) == x.size(1) && fc2_w.dim() == 2 &&
                        fc2_w.size(0) == x.size(1) && fc2_w.size(1) == fc1_w.size(0),
                    "mlp (cpu): fc1_w must be [H, C] and fc2_w [C, H]");
  TORCH_CHECK_VALUE(rows_per_sample > 0 && x.size(0) % rows_per_sample == 0,
                    "mlp (cpu): rows_per_sample must divide the rows");
}

// GELU and its backward alone run ATen's SIMD kernels: a scalar std::erf pass of ours was the
// bottleneck of the whole CPU MLP (benchmarks/results CPU run: cpp MLP 0.2-0.5x eager before).
at::Tensor gelu_of(const at::Tensor& h) { return at::gelu(h); }

// [residual +] [row_scale *] [col_scale *] y, or y itself when there is nothing to apply.
at::Tensor scaled_rows_cols(const at::Tensor& y, const OptTensor& col_scale,
                            const OptTensor& row_scale, const OptTensor& residual,
                            int64_t rows_per_sample, bool force_copy) {
  if (!col_scale && !row_scale && !residual && !force_copy) return y;
  at::Tensor out = at::empty_like(y);
  const OptTensor res = residual ? OptTensor(residual->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "scale_cpu", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::scale_rows_cols<scalar_t, Acc>(
        y.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(col_scale),
        ptr_or_null<scalar_t>(row_scale), ptr_or_null<scalar_t>(res),
        out.mutable_data_ptr<scalar_t>(), y.size(0), y.size(1), rows_per_sample,
        ck::cpu::aten_parallel_for());
  });
  return out;
}

// out = u * s_u[sample] [+ v * s_v[sample]] [+ bias]; see ck::cpu::scaled_sum.
void scaled_sum(const at::Tensor& u, const at::Tensor& s_u, const at::Tensor* v,
                const at::Tensor* s_v, const OptTensor& bias, at::Tensor& out,
                int64_t rows_per_sample) {
  const at::Tensor su = s_u.contiguous();
  const at::Tensor sv = s_v ? s_v->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "grn_cpu", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::scaled_sum<scalar_t, Acc>(
        u.const_data_ptr<scalar_t>(), su.const_data_ptr<Acc>(),
        v ? v->const_data_ptr<scalar_t>() : nullptr, s_v ? sv.const_data_ptr<Acc>() : nullptr,
        ptr_or_null<scalar_t>(bias), out.mutable_data_ptr<scalar_t>(), u.size(0), u.size(1),
        rows_per_sample, ck::cpu::aten_parallel_for());
  });
}

// Per-sample column sums of u*v (and of u into u_sum when given), [samples, H] accumulators.
at::Tensor per_sample_sums(const at::Tensor& u, const at::Tensor& v, at::Tensor* u_sum,
                           int64_t rows_per_sample) {
  const int64_t samples = u.size(0) / rows_per_sample, H = u.size(1);
  at::Tensor uv = at::empty({samples, H}, u.options().dtype(ck::cpu::acc_type(u)));
  if (u_sum) *u_sum = at::empty_like(uv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "grn_sums", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::per_sample_column_sums<scalar_t, Acc>(
        u.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), uv.mutable_data_ptr<Acc>(),
        u_sum ? u_sum->mutable_data_ptr<Acc>() : nullptr, samples, rows_per_sample, H,
        ck::cpu::aten_parallel_for());
  });
  return uv;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_cpu(
    const at::Tensor& x, const at::Tensor& fc1_w, const at::Tensor& fc1_b, const at::Tensor& fc2_w,
    const at::Tensor& fc2_b, const OptTensor& gamma, const OptTensor& residual,
    const OptTensor& drop_scale, const OptTensor& grn_weight, const OptTensor& grn_bias,
    int64_t rows_per_sample, double eps, bool keep_hidden, bool save_y2) {
  check_mlp_args(x, fc1_w, fc2_w, rows_per_sample);
  const at::Tensor xc = x.contiguous();
  const at::Tensor h = at::addmm(fc1_b, xc, fc1_w.t());
  at::Tensor act = gelu_of(h);
  at::Tensor norm = at::empty({0}, x.options().dtype(ck::cpu::acc_type(x)));
  at::Tensor nx = at::empty_like(norm);
  if (grn_weight) {
    const auto stats =
        ck::cpu::grn_stats(per_sample_sums(act, act, nullptr, rows_per_sample), *grn_weight, eps);
    norm = stats.norm;
    nx = stats.nx;
    scaled_sum(act, stats.scale, nullptr, nullptr, flat(grn_bias), act, rows_per_sample);
  }
  const at::Tensor y2 = at::addmm(fc2_b, act, fc2_w.t());
  at::Tensor out =
      scaled_rows_cols(y2, flat(gamma), flat(drop_scale), residual, rows_per_sample, save_y2);
  return {out, keep_hidden ? h : x.new_empty({0}), save_y2 ? y2 : x.new_empty({0}), norm, nx};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
mlp_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& fc1_w,
                 const at::Tensor& fc1_b, const at::Tensor& fc2_w, const OptTensor& gamma,
                 const OptTensor& drop_scale, const OptTensor& grn_weight,
                 const OptTensor& grn_bias, const at::Tensor& hidden, const at::Tensor& y2,
                 const at::Tensor& norm, const at::Tensor& nx, int64_t rows_per_sample,
                 double eps) {
  check_mlp_args(x, fc1_w, fc2_w, rows_per_sample);
  const at::Tensor xc = x.contiguous(), g = grad_out.contiguous();
  const at::Tensor h = hidden.numel() != 0 ? hidden : at::addmm(fc1_b, xc, fc1_w.t());
  const OptTensor gamma_f = flat(gamma), drop_f = flat(drop_scale);
  const at::Tensor g_scaled =
      scaled_rows_cols(g, gamma_f, drop_f, std::nullopt, rows_per_sample, false);
  at::Tensor grad_hidden = at::mm(g_scaled, fc2_w);
  at::Tensor fc2_input = gelu_of(h);
  at::Tensor grad_grn_weight = x.new_empty({0}), grad_grn_bias = x.new_empty({0});
  if (grn_weight) {
    at::Tensor grad_sum;
    const at::Tensor grad_dot_act =
        per_sample_sums(grad_hidden, fc2_input, &grad_sum, rows_per_sample);
    const at::Tensor scale = ck::cpu::grn_scale(nx, *grn_weight);
    const at::Tensor coef = ck::cpu::grn_input_grad_coef(norm, nx, *grn_weight, grad_dot_act, eps);
    // grad of GRN's input, then through GELU (ATen's SIMD GELU backward, see gelu_of).
    scaled_sum(grad_hidden, scale, &fc2_input, &coef, std::nullopt, grad_hidden, rows_per_sample);
    grad_hidden = at::gelu_backward(grad_hidden, h);
    scaled_sum(fc2_input, scale, nullptr, nullptr, flat(grn_bias), fc2_input, rows_per_sample);
    grad_grn_weight =
        (nx * grad_dot_act).sum(0).to(grn_weight->scalar_type()).reshape(grn_weight->sizes());
    grad_grn_bias = grad_sum.sum(0).to(grn_weight->scalar_type()).reshape(grn_bias->sizes());
  } else {
    grad_hidden = at::gelu_backward(grad_hidden, h);
  }
  const auto acc = ck::cpu::acc_type(x);
  at::Tensor grad_fc2_w = at::mm(g_scaled.t(), fc2_input);
  at::Tensor grad_fc2_b = g_scaled.sum(0, false, acc).to(x.scalar_type());
  at::Tensor grad_fc1_w = at::mm(grad_hidden.t(), xc);
  at::Tensor grad_fc1_b = grad_hidden.sum(0, false, acc).to(x.scalar_type());
  at::Tensor grad_x = at::mm(grad_hidden, fc1_w);
  at::Tensor grad_gamma = x.new_empty({0});
  if (gamma && y2.dim() == 2) {  // y2 [M, C] is saved only when gamma needs its gradient
    at::Tensor sums = at::empty({x.size(1)}, x.options().dtype(acc));
    const at::Tensor y2c = y2.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gamma_grad", [&] {
      using Acc = ck::cpu::acc_t<scalar_t>;
      ck::cpu::scaled_product_column_sums<scalar_t, Acc>(
          g.const_data_ptr<scalar_t>(), y2c.const_data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(drop_f), sums.mutable_data_ptr<Acc>(), x.size(0), x.size(1),
          rows_per_sample, ck::cpu::aten_parallel_for());
    });
    grad_gamma = sums.to(gamma->scalar_type()).reshape(gamma->sizes());
  }
  return {grad_x,     grad_fc1_w, grad_fc1_b,      grad_fc2_w,
          grad_fc2_b, grad_gamma, grad_grn_weight, grad_grn_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CPU, m) {
  m.impl("mlp", &mlp_cpu);
  m.impl("mlp_backward", &mlp_backward_cpu);
}
