// The exact (erf) GELU of the CPU MLP and its derivative, row passes fused with what surrounds
// them (fc1's bias before, the gradient after). Torch-free; T is the storage type, its
// accumulation type acc_t<T> (float, or double for double); conversions as convert.h.
//
// In fp32 the math is branch- and call-free so that `omp simd` loops vectorise it under each
// instruction set's target (mlp.cpp compiles the row passes per set, as layer_norm.cpp does), and
// short: the loops are throughput-bound (single thread, a C++ loop and, in another run, ATen:
// an erfc through exp, ~60 operations, took 1.6 ns per element, ATen's GELU 0.9, this 0.57). Phi(x)
// = (1 + erf(x / sqrt2)) / 2 as ATen computes it, erf(z) = z P(z^2) / Q(z^2) on |z| <= 4 (the
// rational fit of tests/gelu_fit.py, error 2e-8; erf(4) rounds to 1), ~20 operations: Phi's error
// over the floats 1.95e-7 absolute, measured against float64 (ATen's, the same way: 2.3e-7). The
// derivative's Gaussian density uses an exp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "convert.h"
#include "flags.h"

#define CK_INLINE __attribute__((always_inline)) inline

namespace ck::cpu {

namespace gelu_detail {

constexpr float kErfNumerator[] = {1.128379f,    0.19624916f,    0.053467505f,
                                   0.004003655f, 0.00028804192f, 0.0000019748315f};
constexpr float kErfDenominator[] = {1.f,          0.50725245f,   0.116476506f,
                                     0.015444439f, 0.0012163628f, 0.000037480906f};
constexpr float kErfMaxArg = 4.0f;
constexpr float kGaussianMaxArg = 9.0f;  // exp(-81): the derivative's terms stay normal floats
constexpr float kSqrtHalf = 0.70710678f;
constexpr float kInvSqrt2Pi = 0.39894228f;

// exp(y) for -87 <= y <= 0 to ~1 ulp: y = n ln2 + r (Cody-Waite, ln2's high part exact in n *
// it), exp(r) by its degree-7 Taylor polynomial (|r| <= ln2/2: truncation 5e-9), 2^n by the
// exponent bits.
CK_INLINE float exp_nonpositive(float y) {
  // round to nearest by the 1.5 * 2^23 trick: plain arithmetic, vectorises on any x86-64
  const float n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;
  float r = y - n * 0.693145752f;  // ln2's high part: 16 bits, so n * it is exact
  r = r - n * 1.42860677e-6f;      // ln2 - the high part
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Phi(x), the standard normal CDF.
CK_INLINE float normal_cdf(float x) {
  float z = x * kSqrtHalf;
  z = z > kErfMaxArg ? kErfMaxArg : z;
  z = z < -kErfMaxArg ? -kErfMaxArg : z;
  const float t = z * z;
  const float* P = kErfNumerator;
  const float* Q = kErfDenominator;
  const float p = ((((P[5] * t + P[4]) * t + P[3]) * t + P[2]) * t + P[1]) * t + P[0];
  const float q = ((((Q[5] * t + Q[4]) * t + Q[3]) * t + Q[2]) * t + Q[1]) * t + Q[0];
  return 0.5f + 0.5f * (z * p / q);
}

// phi(x) = exp(-x^2 / 2) / sqrt(2 pi), 0 where |x| / sqrt2 > kGaussianMaxArg.
CK_INLINE float normal_pdf(float x) {
  const float half_square = 0.5f * x * x;
  constexpr float kMax = kGaussianMaxArg * kGaussianMaxArg;
  return half_square > kMax ? 0.0f : kInvSqrt2Pi * exp_nonpositive(-half_square);
}

}  // namespace gelu_detail

// x * Phi(x)
CK_INLINE float gelu(float x) { return x * gelu_detail::normal_cdf(x); }
CK_INLINE double gelu(double x) { return 0.5 * x * std::erfc(-x * M_SQRT1_2); }

// d gelu / dx = Phi(x) + x * phi(x)
CK_INLINE float gelu_derivative(float x) {
  return gelu_detail::normal_cdf(x) + x * gelu_detail::normal_pdf(x);
}
CK_INLINE double gelu_derivative(double x) {
  return 0.5 * std::erfc(-x * M_SQRT1_2) +
         x * std::exp(-0.5 * x * x) * 0.5 * M_2_SQRTPI * M_SQRT1_2;
}

// Rows [begin, end) of [rows, H]: v = h [+ bias]; pre = v (when kPre; may be h); act = gelu(v)
// (may be h when not kPre). The optional operands are template flags (flags.h): a test on a
// pointer inside the loop is control flow, which stops vectorisation.
struct BiasGeluRows {
  template <bool kBias, bool kPre, typename T>
  CK_INLINE static void run(const T* h, const T* bias, T* pre, T* act, int64_t begin, int64_t end,
                            int64_t H) {
    using Acc = acc_t<T>;
    for (int64_t r = begin; r < end; ++r) {
      const T* hr = h + r * H;
      T* ar = act + r * H;
      T* pr = pre + (kPre ? r * H : 0);
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) {
        Acc v = to_acc<Acc>(hr[c]);
        if constexpr (kBias) v += to_acc<Acc>(bias[c]);
        if constexpr (kPre) pr[c] = from_acc<T>(v);
        ar[c] = from_acc<T>(gelu(v));
      }
    }
  }
};

template <typename T>
CK_INLINE void bias_gelu_rows(const T* h, const T* bias, T* pre, T* act, int64_t begin, int64_t end,
                              int64_t H) {
  const bool has[] = {bias != nullptr, pre != nullptr};
  with_flags<2, BiasGeluRows>(has, h, bias, pre, act, begin, end, H);
}

// Rows [begin, end): grad_pre = grad_act * gelu'(pre) (may be grad_act); act = gelu(pre) when
// act is not null (the backward's fc2 input, from the same pass over pre).
template <typename T>
CK_INLINE void gelu_backward_rows(const T* grad_act, const T* pre, T* grad_pre, T* act,
                                  int64_t begin, int64_t end, int64_t H) {
  using Acc = acc_t<T>;
  for (int64_t r = begin; r < end; ++r) {
    const T* gr = grad_act + r * H;
    const T* pr = pre + r * H;
    T* out = grad_pre + r * H;
    if (act) {
      T* ar = act + r * H;
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) {
        const Acc v = to_acc<Acc>(pr[c]);
        ar[c] = from_acc<T>(gelu(v));
        out[c] = from_acc<T>(to_acc<Acc>(gr[c]) * gelu_derivative(v));
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < H; ++c)
        out[c] = from_acc<T>(to_acc<Acc>(gr[c]) * gelu_derivative(to_acc<Acc>(pr[c])));
    }
  }
}

// GRN's and GELU's backward in one pass over rows [begin, end) of the GRN MLP (sample s = row /
// rows_per_sample; scale = 1 + w * nx and coef per [sample, H] in Acc, grn_stats.h), with the
// gradient through GRN kept in Acc instead of rounded to T between the two steps:
//   grad_pre = (grad_y * scale + act * coef) * gelu'(pre)  (into grad_y's storage)
//   act      = act * scale [+ bias]                        (GRN's output, fc2's input, in place)
// where act enters as gelu(pre), GRN's input.
struct GrnGeluBackwardRows {
  template <bool kBias, typename T, typename Acc>
  CK_INLINE static void run(T* grad, const T* pre, T* act, const Acc* scale, const Acc* coef,
                            const T* bias, int64_t begin, int64_t end, int64_t H,
                            int64_t rows_per_sample) {
    for (int64_t r = begin; r < end; ++r) {
      const Acc* sr = scale + (r / rows_per_sample) * H;
      const Acc* cr = coef + (r / rows_per_sample) * H;
      T* gr = grad + r * H;
      const T* pr = pre + r * H;
      T* ar = act + r * H;
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) {
        const Acc a = to_acc<Acc>(ar[c]);
        const Acc grad_act = to_acc<Acc>(gr[c]) * sr[c] + a * cr[c];
        gr[c] = from_acc<T>(grad_act * gelu_derivative(to_acc<Acc>(pr[c])));
        Acc y = a * sr[c];
        if constexpr (kBias) y += to_acc<Acc>(bias[c]);
        ar[c] = from_acc<T>(y);
      }
    }
  }
};

template <typename T>
CK_INLINE void grn_gelu_backward_rows(T* grad, const T* pre, T* act, const acc_t<T>* scale,
                                      const acc_t<T>* coef, const T* bias, int64_t begin,
                                      int64_t end, int64_t H, int64_t rows_per_sample) {
  const bool has[] = {bias != nullptr};
  with_flags<1, GrnGeluBackwardRows>(has, grad, pre, act, scale, coef, bias, begin, end, H,
                                     rows_per_sample);
}

}  // namespace ck::cpu

#undef CK_INLINE
