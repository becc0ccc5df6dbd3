// CPU glue of the ConvNeXt MLP (rows [M, C]: fc1 -> GELU [-> GRN] -> fc2 [* gamma]
// [* drop_scale per sample] [+ residual]): ATen GEMMs, with every elementwise step between them
// one fused pass (GELU: gelu_kernels.h; the others: mlp_kernels.h), compiled per instruction
// set; without GRN the forward runs in row tiles that keep the hidden in cache (tile_rows). The
// backward recomputes fc1's pre-activation unless the forward kept it. Argument checks with
// messages for users are in Python (ck.mlp); these guard the op's own contract.
#include <torch/extension.h>

#include "accumulate.h"
#include "gelu_kernels.h"
#include "grain.h"
#include "grn_stats.h"
#include "isa.h"
#include "mlp_kernels.h"
#include "output_pool.h"
#include "parallel.h"

namespace {

using ck::cpu::kernel_ptr;
using ck::cpu::kernel_t;
using OptTensor = std::optional<at::Tensor>;

template <typename T>
const T* ptr_or_null(const OptTensor& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

template <typename T>
const kernel_t<T>* kernel_ptr_or_null(const OptTensor& t) {
  return t.has_value() ? kernel_ptr(t->const_data_ptr<T>()) : nullptr;
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

// The row passes of one instruction set (fp32 math; fp16/bf16 converted in the loops): GELU
// with fc1's bias, its backward (with GRN's), fc2's output with bias, scales and residual.
template <typename T>
struct MlpRows {
  using Acc = ck::cpu::acc_t<T>;
  void (*bias_gelu)(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);
  void (*gelu_backward)(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);
  void (*grn_gelu_backward)(T*, const T*, T*, const Acc*, const Acc*, const T*, int64_t, int64_t,
                            int64_t, int64_t);
  void (*output)(const T*, const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t,
                 int64_t, int64_t, int64_t);
};

#define CK_MLP_ROWS(SUFFIX, TARGET, LANES)                                                       \
  template <typename T>                                                                          \
  TARGET void bias_gelu_##SUFFIX(const T* h, const T* bias, T* pre, T* act, int64_t begin,       \
                                 int64_t end, int64_t H) {                                       \
    ck::cpu::bias_gelu_rows<T>(h, bias, pre, act, begin, end, H);                                \
  }                                                                                              \
  template <typename T>                                                                          \
  TARGET void gelu_backward_##SUFFIX(const T* grad_act, const T* pre, T* grad_pre, T* act,       \
                                     int64_t begin, int64_t end, int64_t H) {                    \
    ck::cpu::gelu_backward_rows<T>(grad_act, pre, grad_pre, act, begin, end, H);                 \
  }                                                                                              \
  template <typename T>                                                                          \
  TARGET void grn_gelu_backward_##SUFFIX(                                                        \
      T* grad, const T* pre, T* act, const ck::cpu::acc_t<T>* scale,                             \
      const ck::cpu::acc_t<T>* coef, const T* bias, int64_t begin, int64_t end, int64_t H,       \
      int64_t rows_per_sample) {                                                                 \
    ck::cpu::grn_gelu_backward_rows<T>(grad, pre, act, scale, coef, bias, begin, end, H,         \
                                       rows_per_sample);                                         \
  }                                                                                              \
  template <typename T>                                                                          \
  TARGET void output_##SUFFIX(const T* y, const T* bias, const T* col_scale, const T* row_scale, \
                              const T* residual, T* y_out, T* out, int64_t begin, int64_t end,   \
                              int64_t C, int64_t rows_per_sample, int64_t first_row) {           \
    ck::cpu::output_rows<T>(y, bias, col_scale, row_scale, residual, y_out, out, begin, end, C,  \
                            rows_per_sample, first_row);                                         \
  }                                                                                              \
  template <typename T>                                                                          \
  MlpRows<T> mlp_rows_##SUFFIX() {                                                               \
    return {bias_gelu_##SUFFIX<T>, gelu_backward_##SUFFIX<T>, grn_gelu_backward_##SUFFIX<T>,     \
            output_##SUFFIX<T>};                                                                 \
  }
CK_FOR_EACH_ISA(CK_MLP_ROWS)
#undef CK_MLP_ROWS

// This CPU's row passes for T (float64, the tests' reference precision: portable).
template <typename T>
MlpRows<T> mlp_rows() {
  if constexpr (std::is_same_v<ck::cpu::acc_t<T>, float>) {
    return CK_PICK_BY_ISA(ck::cpu::cpu_isa(), mlp_rows, <T>)();
  } else {
    return mlp_rows_portable<T>();
  }
}

// out <- x w^T, and the bias still to add (std::nullopt when added). In fp32 and fp64 the bias is
// left to the row pass that follows: ATen's addmm copies the bias into its output before the
// GEMM, a pass over [M, N] of its own (a few % of ConvNeXt-T's CPU inference). In
// fp16/bf16 the GEMM's output is rounded, so addmm adds the bias before that rounding, as eager
// does.
OptTensor linear_into(at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                      const at::Tensor& b) {
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) {
    at::mm_out(out, x, w.t());
    return b;
  }
  at::addmm_out(out, b, x, w.t());
  return std::nullopt;
}

// linear_into a new [M, N] tensor.
std::pair<at::Tensor, OptTensor> linear_leaving_bias(const at::Tensor& x, const at::Tensor& w,
                                                     const at::Tensor& b) {
  at::Tensor out = ck::cpu::pooled_empty({x.size(0), w.size(0)}, x.options());
  OptTensor bias_left = linear_into(out, x, w, b);
  return {out, bias_left};
}

// act = gelu(h [+ bias]); with keep_pre, h itself becomes h + bias (the backward's
// pre-activation). act may be h when keep_pre is false.
void bias_gelu(at::Tensor& h, const OptTensor& bias, at::Tensor& act, bool keep_pre) {
  const int64_t H = h.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gelu_cpu", [&] {
    using K = kernel_t<scalar_t>;
    const MlpRows<K> rows = mlp_rows<K>();
    const K* hp = kernel_ptr(h.const_data_ptr<scalar_t>());
    const K* bp = kernel_ptr_or_null<scalar_t>(bias);
    K* pre = keep_pre ? kernel_ptr(h.mutable_data_ptr<scalar_t>()) : nullptr;
    K* ap = kernel_ptr(act.mutable_data_ptr<scalar_t>());
    ck::cpu::aten_parallel_for()(
        0, h.size(0), [&](int64_t b, int64_t e) { rows.bias_gelu(hp, bp, pre, ap, b, e, H); },
        ck::cpu::rows_per_task(H));
  });
}

// grad_act * gelu'(pre) into grad_act; also act = gelu(pre) when act is given.
void gelu_backward(at::Tensor& grad_act, const at::Tensor& pre, at::Tensor* act) {
  const int64_t H = pre.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "gelu_bwd", [&] {
    using K = kernel_t<scalar_t>;
    const MlpRows<K> rows = mlp_rows<K>();
    K* g = kernel_ptr(grad_act.mutable_data_ptr<scalar_t>());
    const K* p = kernel_ptr(pre.const_data_ptr<scalar_t>());
    K* a = act ? kernel_ptr(act->mutable_data_ptr<scalar_t>()) : nullptr;
    ck::cpu::aten_parallel_for()(
        0, pre.size(0), [&](int64_t b, int64_t e) { rows.gelu_backward(g, p, g, a, b, e, H); },
        ck::cpu::rows_per_task(H));
  });
}

// The GRN MLP's backward through GRN and GELU in one pass (ck::cpu::grn_gelu_backward_rows):
// grad (the gradient of GRN's output) becomes the gradient of fc1's pre-activation, act (GELU's
// output) becomes GRN's output.
void grn_gelu_backward(at::Tensor& grad, const at::Tensor& pre, at::Tensor& act,
                       const at::Tensor& scale, const at::Tensor& coef, const OptTensor& bias,
                       int64_t rows_per_sample) {
  const int64_t H = pre.size(1);
  const at::Tensor sc = scale.contiguous(), cc = coef.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "grn_gelu_bwd", [&] {
    using K = kernel_t<scalar_t>;
    using Acc = ck::cpu::acc_t<scalar_t>;
    const MlpRows<K> rows = mlp_rows<K>();
    K* g = kernel_ptr(grad.mutable_data_ptr<scalar_t>());
    const K* p = kernel_ptr(pre.const_data_ptr<scalar_t>());
    K* a = kernel_ptr(act.mutable_data_ptr<scalar_t>());
    const Acc *s = sc.const_data_ptr<Acc>(), *c = cc.const_data_ptr<Acc>();
    const K* b = kernel_ptr_or_null<scalar_t>(bias);
    ck::cpu::aten_parallel_for()(
        0, pre.size(0),
        [&](int64_t begin, int64_t end) {
          rows.grn_gelu_backward(g, p, a, s, c, b, begin, end, H, rows_per_sample);
        },
        ck::cpu::rows_per_task(H));
  });
}

// out = the output pass over y's rows (output below); rows [0, y.size(0)) are the op's rows
// first_row.. (row_scale's sample index; residual is already those rows).
void output_into(at::Tensor& out, at::Tensor& y, const OptTensor& bias, const OptTensor& col_scale,
                 const OptTensor& row_scale, const OptTensor& residual, int64_t rows_per_sample,
                 bool keep_y, int64_t first_row) {
  const OptTensor res = residual ? OptTensor(residual->contiguous()) : std::nullopt;
  const int64_t C = y.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mlp_out", [&] {
    using K = kernel_t<scalar_t>;
    const MlpRows<K> rows = mlp_rows<K>();
    const K* yp = kernel_ptr(y.const_data_ptr<scalar_t>());
    const K *bp = kernel_ptr_or_null<scalar_t>(bias), *cs = kernel_ptr_or_null<scalar_t>(col_scale),
            *rs = kernel_ptr_or_null<scalar_t>(row_scale), *rp = kernel_ptr_or_null<scalar_t>(res);
    K* y_out = keep_y ? kernel_ptr(y.mutable_data_ptr<scalar_t>()) : nullptr;
    K* op = kernel_ptr(out.mutable_data_ptr<scalar_t>());
    ck::cpu::aten_parallel_for()(
        0, y.size(0),
        [&](int64_t b, int64_t e) {
          rows.output(yp, bp, cs, rs, rp, y_out, op, b, e, C, rows_per_sample, first_row);
        },
        ck::cpu::rows_per_task(C));
  });
}

// [residual +] [row_scale *] [col_scale *] (y [+ bias]) (row_scale per sample), or y itself
// when there is nothing to apply; with keep_y, y itself becomes y + bias.
at::Tensor output(at::Tensor& y, const OptTensor& bias, const OptTensor& col_scale,
                  const OptTensor& row_scale, const OptTensor& residual, int64_t rows_per_sample,
                  bool keep_y) {
  if (!bias && !col_scale && !row_scale && !residual) return keep_y ? y.clone() : y;
  at::Tensor out = ck::cpu::pooled_empty_like(y);
  output_into(out, y, bias, col_scale, row_scale, residual, rows_per_sample, keep_y, 0);
  return out;
}

// Per-sample column sums of u*v (and of u into u_sum when given), [samples, H] accumulators.
at::Tensor per_sample_sums(const at::Tensor& u, const at::Tensor& v, at::Tensor* u_sum,
                           int64_t rows_per_sample) {
  const int64_t samples = u.size(0) / rows_per_sample, H = u.size(1);
  at::Tensor uv = ck::cpu::pooled_empty({samples, H}, u.options().dtype(ck::cpu::acc_type(u)));
  if (u_sum) *u_sum = ck::cpu::pooled_empty_like(uv);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "grn_sums", [&] {
    using Acc = ck::cpu::acc_t<scalar_t>;
    ck::cpu::per_sample_column_sums<scalar_t, Acc>(
        u.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), uv.mutable_data_ptr<Acc>(),
        u_sum ? u_sum->mutable_data_ptr<Acc>() : nullptr, samples, rows_per_sample, H,
        ck::cpu::aten_parallel_for());
  });
  return uv;
}

// Rows per tile of the forward without GRN: fc1, GELU, fc2 and the output pass run tile by tile,
// so that the [tile, H] hidden is still in cache when GELU and fc2 read it (tiles of 1M hidden
// elements beat 4M and untiled at batch 32 on a 32 MB L3). Small GEMMs lose efficiency, so a
// hidden of up to 4M elements (batch 4 from stage 2 on) is one tile, and tiles are equal; and
// every tile reads both weights again, so weights of more than two tiles' elements (stage 4) are
// not tiled (tiled, they were slower than eager).
int64_t tile_rows(int64_t M, int64_t C, int64_t H) {
  constexpr int64_t kTileElements = int64_t(1) << 20, kUntiledElements = int64_t(1) << 22;
  if (M * H <= kUntiledElements || 2 * C * H > 2 * kTileElements) return std::max<int64_t>(M, 1);
  const int64_t tiles = (M * H + kTileElements - 1) / kTileElements;
  return (M + tiles - 1) / tiles;
}

// (out, the kept pre-activation or empty, y2 or empty), the forward without GRN over row tiles.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_tiled(
    const at::Tensor& x, const at::Tensor& fc1_w, const at::Tensor& fc1_b, const at::Tensor& fc2_w,
    const at::Tensor& fc2_b, const OptTensor& gamma, const OptTensor& residual,
    const OptTensor& drop_scale, int64_t rows_per_sample, bool keep_hidden, bool save_y2) {
  const int64_t M = x.size(0), C = x.size(1), H = fc1_w.size(0);
  const int64_t tile = tile_rows(M, C, H);
  at::Tensor out = ck::cpu::pooled_empty_like(x);
  at::Tensor hidden = keep_hidden ? ck::cpu::pooled_empty({M, H}, x.options()) : x.new_empty({0});
  at::Tensor y2 = save_y2 ? ck::cpu::pooled_empty_like(x) : x.new_empty({0});
  at::Tensor act_buf = ck::cpu::pooled_empty({tile, H}, x.options());
  // fc2's output per tile: into y2 where it is saved, else into a tile buffer
  at::Tensor y_buf = save_y2 ? at::Tensor() : ck::cpu::pooled_empty({tile, C}, x.options());
  const OptTensor res = residual ? OptTensor(residual->contiguous()) : std::nullopt;
  for (int64_t r0 = 0; r0 < M; r0 += tile) {
    const int64_t n = std::min(tile, M - r0);
    at::Tensor act = act_buf.narrow(0, 0, n);
    at::Tensor h = keep_hidden ? hidden.narrow(0, r0, n) : act;
    const OptTensor fc1_bias_left = linear_into(h, x.narrow(0, r0, n), fc1_w, fc1_b);
    bias_gelu(h, fc1_bias_left, act, keep_hidden);
    at::Tensor y = save_y2 ? y2.narrow(0, r0, n) : y_buf.narrow(0, 0, n);
    const OptTensor fc2_bias_left = linear_into(y, act, fc2_w, fc2_b);
    at::Tensor out_rows = out.narrow(0, r0, n);
    const OptTensor res_rows = res ? OptTensor(res->narrow(0, r0, n)) : std::nullopt;
    output_into(out_rows, y, fc2_bias_left, gamma, drop_scale, res_rows, rows_per_sample, save_y2,
                r0);
  }
  return {out, hidden, y2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_cpu(
    const at::Tensor& x, const at::Tensor& fc1_w, const at::Tensor& fc1_b, const at::Tensor& fc2_w,
    const at::Tensor& fc2_b, const OptTensor& gamma, const OptTensor& residual,
    const OptTensor& drop_scale, const OptTensor& grn_weight, const OptTensor& grn_bias,
    int64_t rows_per_sample, double eps, bool keep_hidden, bool save_y2) {
  check_mlp_args(x, fc1_w, fc2_w, rows_per_sample);
  const at::Tensor xc = x.contiguous();
  at::Tensor norm = ck::cpu::pooled_empty({0}, x.options().dtype(ck::cpu::acc_type(x)));
  at::Tensor nx = ck::cpu::pooled_empty_like(norm);
  if (!grn_weight) {
    auto [out, hidden, y2] = mlp_tiled(xc, fc1_w, fc1_b, fc2_w, fc2_b, flat(gamma), residual,
                                       flat(drop_scale), rows_per_sample, keep_hidden, save_y2);
    return {out, hidden, y2, norm, nx};
  }
  // GRN: its per-sample statistics need every row's GELU output before fc2
  auto [h, fc1_bias_left] = linear_leaving_bias(xc, fc1_w, fc1_b);
  at::Tensor act = keep_hidden ? ck::cpu::pooled_empty_like(h) : h;
  bias_gelu(h, fc1_bias_left, act, keep_hidden);
  const auto stats =
      ck::cpu::grn_stats(per_sample_sums(act, act, nullptr, rows_per_sample), *grn_weight, eps);
  norm = stats.norm;
  nx = stats.nx;
  ck::cpu::grn_output(act, stats.scale, flat(grn_bias), act, rows_per_sample);
  auto [y2, fc2_bias_left] = linear_leaving_bias(act, fc2_w, fc2_b);
  at::Tensor out =
      output(y2, fc2_bias_left, flat(gamma), flat(drop_scale), residual, rows_per_sample, save_y2);
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
  const at::Tensor xc = x.contiguous();
  at::Tensor g = grad_out.contiguous();  // output() may return it as g_scaled
  // The pre-activation (fc1's output with its bias), saved or recomputed; GELU of it is fc2's
  // input, made in the recomputing pass, else in GELU's backward pass (no GRN) or alone (GRN:
  // its sums need fc2's input before the gradient goes through GELU).
  at::Tensor pre = hidden, fc2_input;
  if (hidden.numel() == 0) {
    OptTensor fc1_bias_left;
    std::tie(pre, fc1_bias_left) = linear_leaving_bias(xc, fc1_w, fc1_b);
    fc2_input = ck::cpu::pooled_empty_like(pre);
    bias_gelu(pre, fc1_bias_left, fc2_input, true);
  } else if (grn_weight) {
    fc2_input = ck::cpu::pooled_empty_like(pre);
    bias_gelu(pre, std::nullopt, fc2_input, false);
  }
  const OptTensor gamma_f = flat(gamma), drop_f = flat(drop_scale);
  const at::Tensor g_scaled =
      output(g, std::nullopt, gamma_f, drop_f, std::nullopt, rows_per_sample, false);
  at::Tensor grad_hidden = ck::cpu::pooled_empty({g_scaled.size(0), fc2_w.size(1)}, x.options());
  at::mm_out(grad_hidden, g_scaled, fc2_w);
  at::Tensor grad_grn_weight = x.new_empty({0}), grad_grn_bias = x.new_empty({0});
  if (grn_weight) {
    at::Tensor grad_sum;
    const at::Tensor grad_dot_act =
        per_sample_sums(grad_hidden, fc2_input, &grad_sum, rows_per_sample);
    const at::Tensor scale = ck::cpu::grn_scale(nx, *grn_weight);
    const at::Tensor coef = ck::cpu::grn_input_grad_coef(norm, nx, *grn_weight, grad_dot_act, eps);
    grn_gelu_backward(grad_hidden, pre, fc2_input, scale, coef, flat(grn_bias), rows_per_sample);
    grad_grn_weight =
        (nx * grad_dot_act).sum(0).to(grn_weight->scalar_type()).reshape(grn_weight->sizes());
    grad_grn_bias = grad_sum.sum(0).to(grn_weight->scalar_type()).reshape(grn_bias->sizes());
  } else if (fc2_input.defined()) {
    gelu_backward(grad_hidden, pre, nullptr);
  } else {
    fc2_input = ck::cpu::pooled_empty_like(pre);
    gelu_backward(grad_hidden, pre, &fc2_input);
  }
  const auto acc = ck::cpu::acc_type(x);
  at::Tensor grad_fc2_w = at::mm(g_scaled.t(), fc2_input);
  at::Tensor grad_fc2_b = g_scaled.sum(0, false, acc).to(x.scalar_type());
  at::Tensor grad_fc1_w = at::mm(grad_hidden.t(), xc);
  at::Tensor grad_fc1_b = grad_hidden.sum(0, false, acc).to(x.scalar_type());
  at::Tensor grad_x = ck::cpu::pooled_empty({grad_hidden.size(0), fc1_w.size(1)}, x.options());
  at::mm_out(grad_x, grad_hidden, fc1_w);
  at::Tensor grad_gamma = x.new_empty({0});
  if (gamma && y2.dim() == 2) {  // y2 [M, C] is saved only when gamma needs its gradient
    at::Tensor sums = ck::cpu::pooled_empty({x.size(1)}, x.options().dtype(acc));
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
