// Schemas of every C++/CUDA op. The CPU and CUDA implementations register under these in
// cpu/*.cpp and cuda/*.cu; Python (convnext_kernels/ops) adds fake impls and autograd.
#include <torch/extension.h>

TORCH_LIBRARY(convnext_kernels, m) {
  // y = depthwise conv of x (N,C,H,W; any memory format) with weight [C,1,k,k], stride 1,
  // padding k//2. The output has x's strides.
  m.def("dwconv2d(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_weight [C,1,k,k], grad_bias [C]) of dwconv2d, in the weight's dtype, fp32-accumulated.
  m.def("dwconv2d_backward_weight(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor)");
  // LayerNorm over C of N,C,H,W x: (y with x's strides, mean [N,H,W] fp32, rstd [N,H,W] fp32).
  m.def("layer_norm_2d(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  // (grad_x, grad_weight, grad_bias) of layer_norm_2d from its saved mean and rstd.
  m.def("layer_norm_2d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd) "
        "-> (Tensor, Tensor, Tensor)");
  // dwconv2d then layer_norm_2d in one kernel (CUDA): (y, conv output, mean, rstd); the conv
  // output is kept for the backward.
  m.def("dwconv_layer_norm(Tensor x, Tensor dw_weight, Tensor? dw_bias, Tensor ln_weight, "
        "Tensor ln_bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {
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
}
