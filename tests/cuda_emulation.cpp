// Runs the CUDA dwconv thread bodies (csrc/cuda/dwconv_kernels.cuh) on the CPU, one thread index
// at a time, over the same launch plan as csrc/cuda/dwconv.cu. This checks the indexing,
// vector paths and reductions of the GPU kernels on a machine without a GPU.
#include <torch/extension.h>

#include "../csrc/cuda/dwconv_kernels.cuh"

namespace {

using ck::cuda::DwconvShape;

template <typename F>
void dispatch_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(c10::Half{});
    case at::kBFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, "unsupported dtype ", dtype);
  }
}

// x_nhwc [N,H,W,C] contiguous; taps [k*k, C] fp32; force_scalar takes the VEC = 1 path.
at::Tensor forward(const at::Tensor& x_nhwc, const at::Tensor& taps,
                   const std::optional<at::Tensor>& bias, int64_t k, bool force_scalar) {
  at::Tensor y = at::empty_like(x_nhwc);
  const DwconvShape s{x_nhwc.size(0), x_nhwc.size(1), x_nhwc.size(2), x_nhwc.size(3),
                      static_cast<int>(k)};
  const float* bp = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
  dispatch_dtype(x_nhwc.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x_nhwc.const_data_ptr<T>();
    T* yp = y.mutable_data_ptr<T>();
    const int64_t C = force_scalar ? 1 : s.C;  // C = 1 makes dispatch_vec pick VEC = 1
    ck::cuda::dispatch_vec<T>(C, {xp, yp, taps.const_data_ptr(), bp}, [&](auto vec) {
      ck::cuda::dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        TORCH_CHECK(s.C % VEC == 0);
        const int64_t threads = ck::cuda::forward_threads<VEC, K>(s);
        for (int64_t idx = 0; idx < threads; ++idx)
          ck::cuda::dwconv_forward_thread<T, VEC, K, ck::cuda::strip_width<VEC, K>()>(
              xp, taps.const_data_ptr<float>(), bp, yp, s, idx);
      });
    });
  });
  return y;
}

// Returns the [k*k + 1, C] fp32 sums (taps, then bias) of stage 1 + stage 2.
at::Tensor backward_weight(const at::Tensor& g_nhwc, const at::Tensor& x_nhwc, int64_t k,
                           bool force_scalar) {
  const DwconvShape s{x_nhwc.size(0), x_nhwc.size(1), x_nhwc.size(2), x_nhwc.size(3),
                      static_cast<int>(k)};
  at::Tensor sums = at::empty({k * k + 1, s.C}, x_nhwc.options().dtype(at::kFloat));
  dispatch_dtype(x_nhwc.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x_nhwc.const_data_ptr<T>();
    const T* gp = g_nhwc.const_data_ptr<T>();
    const int64_t C = force_scalar ? 1 : s.C;
    ck::cuda::dispatch_vec<T>(C, {xp, gp}, [&](auto vec) {
      ck::cuda::dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        const ck::cuda::WgradPlan plan = ck::cuda::wgrad_plan<VEC, K>(s);
        at::Tensor partial = at::full({plan.chunks, k * k + 1, s.C}, NAN,
                                      x_nhwc.options().dtype(at::kFloat));
        for (int64_t idx = 0; idx < plan.threads; ++idx)
          ck::cuda::dwconv_wgrad_partial_thread<T, VEC, K>(
              gp, xp, partial.mutable_data_ptr<float>(), s, plan.rows_per_chunk, idx);
        const int64_t per_chunk = (k * k + 1) * s.C;
        for (int64_t idx = 0; idx < per_chunk; ++idx)
          ck::cuda::dwconv_wgrad_reduce_thread(partial.const_data_ptr<float>(),
                                               sums.mutable_data_ptr<float>(), plan.chunks,
                                               per_chunk, idx);
      });
    });
  });
  return sums;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward_weight", &backward_weight);
}
