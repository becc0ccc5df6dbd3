// Schemas of every C++/CUDA op. The CPU and CUDA implementations register under these in
// cpu/*.cpp and cuda/*.cu; Python (convnext_kernels/ops) adds fake impls and the autograd of
// every op but layer_norm_2d and dwconv_layer_norm, whose autograd is C++ (autograd.cpp: the
// per-call cost of Python's).
#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/output_pool.h"

TORCH_LIBRARY(convnext_kernels, m) {
  // y = depthwise conv of x (N,C,H,W; any memory format) with weight [C,1,k,k], stride 1,
  // padding k//2. The output has x's strides.
  m.def("dwconv2d(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_weight [C,1,k,k], grad_bias [C]) of dwconv2d, in the weight's dtype, fp32-accumulated.
  m.def("dwconv2d_backward_weight(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  // LayerNorm over C of N,C,H,W x: (y with x's strides, mean [N,H,W] fp32, rstd [N,H,W] fp32).
  m.def(
      "layer_norm_2d(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of layer_norm_2d from its saved mean and rstd.
  m.def(
      "layer_norm_2d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd) "
      "-> (Tensor, Tensor, Tensor)");
  // dwconv2d then layer_norm_2d in one pass (CPU, CUDA): (y, conv output, mean, rstd); the conv
  // output is kept for the backward, and returned empty without keep_conv (inference: on the
  // CPU it is then never written).
  m.def(
      "dwconv_layer_norm(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor ln_weight, "
      "Tensor ln_bias, float eps, bool keep_conv=True) -> (Tensor, Tensor, Tensor, Tensor)");
  // ConvNeXt MLP on rows x [M, C]: out = [residual +] [drop_scale[row / rows_per_sample] *]
  // [gamma *] fc2(GRN?(gelu(fc1(x)))). Returns (out, fc1's pre-activation [M, H] if keep_hidden,
  // fc2's output before the scales [M, C] if save_y2, GRN's norm and nx [samples, H] fp32 with
  // GRN); absent outputs are empty. rows_per_sample groups rows into samples (drop path, GRN).
  m.def(
      "mlp(Tensor x, Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, Tensor fc2_b, Tensor? gamma, "
      "Tensor? residual, Tensor? drop_scale, Tensor? grn_weight, Tensor? grn_bias, "
      "int rows_per_sample, float eps, bool keep_hidden, bool save_y2) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // (grad_x, grad_fc1_w, grad_fc1_b, grad_fc2_w, grad_fc2_b, grad_gamma, grad_grn_weight,
  // grad_grn_bias) of mlp from its saved outputs (empty hidden: recomputed); absent ones empty.
  m.def(
      "mlp_backward(Tensor grad_out, Tensor x, Tensor fc1_w, Tensor fc1_b, Tensor fc2_w, "
      "Tensor? gamma, Tensor? drop_scale, Tensor? grn_weight, Tensor? grn_bias, Tensor hidden, "
      "Tensor y2, Tensor grn_norm, Tensor grn_nx, int rows_per_sample, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // GRN of N,H,W,C x: (y, norm [N, C], nx [N, C]) with fp32 (float64) statistics.
  m.def("grn(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "grn_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor norm, Tensor nx, float eps) "
      "-> (Tensor, Tensor, Tensor)");
}

namespace {
const char* cpu_isa_name() { return ck::cpu::isa_name(ck::cpu::cpu_isa()); }

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("built_with_cuda", &built_with_cuda, "whether the CUDA kernels were compiled into _C");
  m.def("cpu_pool_stats", &ck::cpu::pool_stats,
        "(bytes, blocks) of freed CPU op outputs the pool holds for reuse, and the blocks it has "
        "served again (cpu/output_pool.h)");
  m.def("release_cpu_pool", &ck::cpu::release_pool,
        "frees the blocks the CPU output pool holds; returns the bytes freed");
  m.def("cpu_isa", &cpu_isa_name,
        "the instruction set of the SIMD CPU kernels on this CPU: avx512, avx2 or portable");
}
