// Runs the CUDA thread bodies (csrc/cuda/*_kernels.cuh) on the CPU, one thread index (or warp
// lane) at a time, over the same launch plans as the glue in csrc/cuda/. This checks the
// indexing, vector paths and reductions of the GPU kernels on a machine without a GPU; only the
// warp shuffles and the block barrier, a few lines, are left to the GPU run.
#include <torch/extension.h>

#include "../csrc/cuda/dwconv_kernels.cuh"
#include "../csrc/cuda/layer_norm_kernels.cuh"

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
        at::Tensor partial =
            at::full({plan.chunks, k * k + 1, s.C}, NAN, x_nhwc.options().dtype(at::kFloat));
        for (int64_t idx = 0; idx < plan.threads; ++idx)
          ck::cuda::dwconv_wgrad_partial_thread<T, VEC, K>(
              gp, xp, partial.mutable_data_ptr<float>(), s, plan.rows_per_chunk, idx);
        const int64_t per_chunk = (k * k + 1) * s.C;
        for (int64_t idx = 0; idx < per_chunk; ++idx)
          ck::cuda::sum_partials_thread(partial.const_data_ptr<float>(),
                                        sums.mutable_data_ptr<float>(), plan.chunks, per_chunk,
                                        idx);
      });
    });
  });
  return sums;
}

using ck::cuda::kWarp;

// What layer_norm_row does with warp shuffles: the lanes' parts summed, then written per lane.
template <typename T, int VEC>
void layer_norm_row(const T* x, const T* weight, const T* bias, T* y, float* mean, float* rstd,
                    int64_t row, int64_t C, float eps) {
  const T* xr = x + row * C;
  float sum = 0.f, sq = 0.f;
  for (int lane = 0; lane < kWarp; ++lane) sum += ck::cuda::ln_lane_sum<T, VEC>(xr, C, lane);
  const float m = sum / C;
  for (int lane = 0; lane < kWarp; ++lane)
    sq += ck::cuda::ln_lane_squared_deviation<T, VEC>(xr, C, lane, m);
  const float r = 1.f / std::sqrt(sq / C + eps);
  for (int lane = 0; lane < kWarp; ++lane)
    ck::cuda::ln_lane_write<T, VEC>(xr, weight, bias, y + row * C, C, lane, m, r);
  mean[row] = m;
  rstd[row] = r;
}

// x [rows, C] contiguous -> (y, mean, rstd).
std::vector<at::Tensor> layer_norm_forward(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& bias, double eps, bool force_scalar) {
  const int64_t rows = x.size(0), C = x.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({rows}, x.options().dtype(at::kFloat)), rstd = at::empty_like(mean);
  dispatch_dtype(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    ck::cuda::dispatch_vec<T>(force_scalar ? 1 : C, {}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      for (int64_t row = 0; row < rows; ++row)
        layer_norm_row<T, VEC>(x.const_data_ptr<T>(), weight.const_data_ptr<T>(),
                               bias.const_data_ptr<T>(), y.mutable_data_ptr<T>(),
                               mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(), row,
                               C, static_cast<float>(eps));
    });
  });
  return {y, mean, rstd};
}

// (grad_x [rows, C], sums [2, C] = (grad_weight, grad_bias) in fp32).
std::vector<at::Tensor> layer_norm_backward(const at::Tensor& g, const at::Tensor& x,
                                            const at::Tensor& weight, const at::Tensor& mean,
                                            const at::Tensor& rstd, bool force_scalar) {
  const int64_t rows = x.size(0), C = x.size(1);
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor sums = at::empty({2, C}, x.options().dtype(at::kFloat));
  dispatch_dtype(x.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T *gp = g.const_data_ptr<T>(), *xp = x.const_data_ptr<T>(),
            *wp = weight.const_data_ptr<T>();
    const float *mp = mean.const_data_ptr<float>(), *rp = rstd.const_data_ptr<float>();
    ck::cuda::dispatch_vec<T>(force_scalar ? 1 : C, {}, [&](auto vec) {
      constexpr int VEC = decltype(vec)::value;
      for (int64_t row = 0; row < rows; ++row) {
        float sum_gw = 0.f, sum_gw_xhat = 0.f;
        for (int lane = 0; lane < kWarp; ++lane) {
          float a, b;
          ck::cuda::ln_lane_backward_sums<T, VEC>(gp + row * C, xp + row * C, wp, C, lane, mp[row],
                                                  rp[row], a, b);
          sum_gw += a;
          sum_gw_xhat += b;
        }
        for (int lane = 0; lane < kWarp; ++lane)
          ck::cuda::ln_lane_backward_write<T, VEC>(gp + row * C, xp + row * C, wp,
                                                   grad_x.mutable_data_ptr<T>() + row * C, C, lane,
                                                   mp[row], rp[row], sum_gw / C, sum_gw_xhat / C);
      }
      const ck::cuda::LayerNormWgradPlan plan = ck::cuda::layer_norm_wgrad_plan<VEC>(rows, C);
      at::Tensor partial = at::full({plan.chunks, 2, C}, NAN, x.options().dtype(at::kFloat));
      for (int64_t idx = 0; idx < plan.threads; ++idx)
        ck::cuda::ln_wgrad_partial_thread<T, VEC>(gp, xp, mp, rp, partial.mutable_data_ptr<float>(),
                                                  rows, C, plan.rows_per_chunk, idx);
      for (int64_t idx = 0; idx < 2 * C; ++idx)
        ck::cuda::sum_partials_thread(partial.const_data_ptr<float>(),
                                      sums.mutable_data_ptr<float>(), plan.chunks, 2 * C, idx);
    });
  });
  return {grad_x, sums};
}

// The fused kernel, block by block: phase 1 over its threads, then phase 2 over its pixels.
// x_nhwc [N,H,W,C]; returns (y, conv, mean, rstd).
std::vector<at::Tensor> dwconv_layer_norm_forward(const at::Tensor& x_nhwc, const at::Tensor& taps,
                                                  const std::optional<at::Tensor>& dw_bias,
                                                  const at::Tensor& ln_weight,
                                                  const at::Tensor& ln_bias, int64_t k, double eps,
                                                  bool force_scalar) {
  const DwconvShape s{x_nhwc.size(0), x_nhwc.size(1), x_nhwc.size(2), x_nhwc.size(3),
                      static_cast<int>(k)};
  at::Tensor y = at::empty_like(x_nhwc), conv = at::empty_like(x_nhwc);
  at::Tensor mean = at::empty({s.N * s.H * s.W}, x_nhwc.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  const float* bp = dw_bias.has_value() ? dw_bias->const_data_ptr<float>() : nullptr;
  dispatch_dtype(x_nhwc.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    ck::cuda::dispatch_vec<T>(force_scalar ? 1 : s.C, {}, [&](auto vec) {
      ck::cuda::dispatch_k(k, [&](auto k_const) {
        constexpr int VEC = decltype(vec)::value;
        constexpr int K = decltype(k_const)::value;
        constexpr int TW = ck::cuda::strip_width<VEC, K>();
        const ck::cuda::FusedPlan plan = ck::cuda::fused_plan<VEC, K>(s);
        const int64_t groups = s.C / VEC;
        for (int64_t block = 0; block < s.N * s.H * plan.blocks_per_row; ++block) {
          const int64_t row = block / plan.blocks_per_row;
          const int64_t strip0 = (block % plan.blocks_per_row) * plan.strips_per_block;
          for (int64_t t = 0; t < plan.strips_per_block * groups; ++t) {
            const int64_t strip = strip0 + t / groups;
            if (strip < plan.strips_per_row)
              ck::cuda::dwconv_forward_thread<T, VEC, K, TW>(
                  x_nhwc.const_data_ptr<T>(), taps.const_data_ptr<float>(), bp,
                  conv.mutable_data_ptr<T>(), s,
                  (row * plan.strips_per_row + strip) * groups + t % groups);
          }
          const int64_t w_end = std::min(s.W, (strip0 + plan.strips_per_block) * TW);
          for (int64_t w = strip0 * TW; w < w_end; ++w)
            layer_norm_row<T, VEC>(conv.const_data_ptr<T>(), ln_weight.const_data_ptr<T>(),
                                   ln_bias.const_data_ptr<T>(), y.mutable_data_ptr<T>(),
                                   mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(),
                                   row * s.W + w, s.C, static_cast<float>(eps));
        }
      });
    });
  });
  return {y, conv, mean, rstd};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward_weight", &backward_weight);
  m.def("layer_norm_forward", &layer_norm_forward);
  m.def("layer_norm_backward", &layer_norm_backward);
  m.def("dwconv_layer_norm_forward", &dwconv_layer_norm_forward);
}
