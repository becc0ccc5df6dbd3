// Instantiates every CUDA kernel the glue can launch, so that the kernel report can compile this
// file alone (no torch headers) and read each kernel's registers, spills and SASS.
#include "../csrc/cuda/dwconv_kernels.cuh"
#include "../csrc/cuda/layer_norm_kernels.cuh"

void instantiate_every_kernel() {
  const auto keep = [](const void*, int, const char*) {};
  ck::cuda::for_each_dwconv_kernel<float>(keep);
  ck::cuda::for_each_dwconv_kernel<__half>(keep);
  ck::cuda::for_each_dwconv_kernel<__nv_bfloat16>(keep);
  ck::cuda::for_each_layer_norm_kernel<float>(keep);
  ck::cuda::for_each_layer_norm_kernel<__half>(keep);
  ck::cuda::for_each_layer_norm_kernel<__nv_bfloat16>(keep);
}
