// CPU glue of dwconv_layer_norm, the depthwise conv and the LayerNorm over C fused: the conv's row
// driver (dwconv_driver.h) hands each output row, still in cache, to the LayerNorm's row kernels
// (layer_norm_rows, layer_norm.cpp).
#include <torch/extension.h>

#include "../dwconv_args.h"
#include "../layer_norm_args.h"
#include "accumulate.h"
#include "dwconv_driver.h"
#include "dwconv_plain.h"
#include "layer_norm_kernels.h"
#include "output_pool.h"
#include "parallel.h"

namespace {

using ck::cpu::kernel_ptr;
using ck::cpu::kernel_t;
using ck::cpu::layer_norm_rows;
using ck::cpu::LayerNormRows;

// (y, conv, mean, rstd): y = layer_norm_2d(conv), conv = dwconv2d(x) kept for the backward
// (keep_conv), as the CUDA op. fp32, fp16, bf16: one pass; each output row of the conv, fp32 in
// the thread's scratch (dwconv_simd.h) or, fp32 and kept, in conv itself, is stored as conv where
// kept and then normalised where it lies, so the LayerNorm does not read the conv back from
// memory (and in fp16/bf16 normalises it unrounded, as the CUDA kernel does); without keep_conv
// the conv never leaves the thread's scratch. float64: the plain conv kernel, then the LayerNorm.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_layer_norm_cpu(
    const at::Tensor& x, const at::Tensor& dw_weight, const std::optional<at::Tensor>& dw_bias,
    const at::Tensor& ln_weight, const at::Tensor& ln_bias, double eps, bool keep_conv) {
  const int64_t k = ck::check_dwconv_args(x, dw_weight, dw_bias);
  ck::check_layer_norm_args(x, ln_weight, ln_bias, eps);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "dwconv_layer_norm (cpu): x must be on the CPU");
  const auto acc_type = ck::cpu::acc_type(x);
  // float64 runs the conv into its buffer, then the LayerNorm
  ck::DwconvLayerNormOutputs out(x, keep_conv, /*conv_buffer=*/acc_type != at::kFloat);
  if (x.numel() == 0) return out.finish();
  const at::Tensor x_nhwc = ck::as_nhwc(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (acc_type == at::kFloat) {
    const at::Tensor w = dw_weight.contiguous();
    const at::Tensor b = dw_bias.has_value() ? dw_bias->contiguous() : at::Tensor();
    const at::Tensor ln_w = ln_weight.to(at::kFloat).contiguous();
    const at::Tensor ln_b = ln_bias.to(at::kFloat).contiguous();
    const float* ln_w_ptr = ln_w.const_data_ptr<float>();
    const float* ln_b_ptr = ln_b.const_data_ptr<float>();
    float* mean_ptr = out.mean.mutable_data_ptr<float>();
    float* rstd_ptr = out.rstd.mutable_data_ptr<float>();
    const LayerNormRows<float, float> norm = layer_norm_rows<float>();
    const float eps_f = static_cast<float>(eps);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv_layer_norm_cpu", [&] {
          using K = kernel_t<scalar_t>;
          const ck::cpu::simd::RowKernels& kernels = ck::cpu::simd::this_cpu_row_kernels();
          K* conv_ptr =
              keep_conv ? kernel_ptr(out.conv_nhwc.mutable_data_ptr<scalar_t>()) : nullptr;
          K* y_ptr = kernel_ptr(out.y_nhwc.mutable_data_ptr<scalar_t>());
          // fp32: each conv row is computed where it is kept (null: in scratch, then stored
          // where kept)
          float* conv_f32 =
              std::is_same_v<scalar_t, float> ? reinterpret_cast<float*>(conv_ptr) : nullptr;
          ck::cpu::simd::dwconv_forward_rows(
              kernel_ptr(x_nhwc.const_data_ptr<scalar_t>()),
              kernel_ptr(w.const_data_ptr<scalar_t>()),
              b.defined() ? kernel_ptr(b.const_data_ptr<scalar_t>()) : nullptr, N, H, W, C, k,
              kernels, ck::cpu::aten_parallel_for(), conv_f32,
              [&](int64_t pixel, float* row, int64_t Cp) {
                if (conv_ptr && row != conv_f32 + pixel * C) {
                  ck::cpu::simd::store_row(row, conv_ptr + pixel * C, W, C, Cp, kernels);
                }
                float* v = ck::cpu::simd::thread_scratch(ck::cpu::simd::kNorm,
                                                         ck::cpu::layer_norm_scratch(C));
                // Pixels C apart as in y (Cp == C): the whole row at once, fp32 straight into y;
                // else in place (the row kernel reads a pixel into v first), then stored as T.
                if (Cp == C) {
                  float* dst = std::is_same_v<scalar_t, float>
                                   ? reinterpret_cast<float*>(y_ptr) + pixel * C
                                   : row;
                  norm.forward(row, ln_w_ptr, ln_b_ptr, dst, mean_ptr + pixel, rstd_ptr + pixel, 0,
                               W, C, eps_f, v);
                  if (dst != row) return;
                } else {
                  for (int64_t p = 0; p < W; ++p) {
                    norm.forward(row + p * Cp, ln_w_ptr, ln_b_ptr, row + p * Cp,
                                 mean_ptr + pixel + p, rstd_ptr + pixel + p, 0, 1, C, eps_f, v);
                  }
                }
                ck::cpu::simd::store_row(row, y_ptr + pixel * C, W, C, Cp, kernels);
              });
        });
  } else {  // float64 (the tests' reference precision): the plain kernels one after the other
    ck::cpu::dwconv_forward_plain(x_nhwc, dw_weight, dw_bias, out.conv_nhwc);
    const at::Tensor ln_w = ln_weight.contiguous(), ln_b = ln_bias.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv_layer_norm_cpu", [&] {
      using Acc = ck::cpu::acc_t<scalar_t>;
      ck::cpu::layer_norm_forward<scalar_t, Acc>(
          out.conv_nhwc.const_data_ptr<scalar_t>(), ln_w.const_data_ptr<scalar_t>(),
          ln_b.const_data_ptr<scalar_t>(), out.y_nhwc.mutable_data_ptr<scalar_t>(),
          out.mean.mutable_data_ptr<Acc>(), out.rstd.mutable_data_ptr<Acc>(), out.mean.numel(), C,
          static_cast<Acc>(eps), layer_norm_rows<scalar_t>(), ck::cpu::aten_parallel_for());
    });
  }
  return out.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(convnext_kernels, CPU, m) {
  m.impl("dwconv_layer_norm", &dwconv_layer_norm_cpu);
}
