// Conversions between a kernel's storage type T and its accumulation type Acc, written so that
// the compiler vectorises them in `omp simd` loops. bf16 is Bf16Bits (the layout of
// c10::BFloat16: its 16 bits), converted by shifts with c10's rounding (to nearest even, NaN to
// the quiet NaN 0x7FC0), bit for bit (c10::BFloat16's own conversions do not vectorise: the
// LayerNorm loops through them ran several times slower in bf16 than in fp32). Other types:
// static_cast.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ck::cpu {

// The accumulation type for storage type T: double for double, float otherwise.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct Bf16Bits {
  uint16_t bits;
};

// IEEE binary16 (fp16) as its 16 bits, for kernels that convert it with the CPU's instructions
// (simd_vectors.h). The scalar loops keep the glue's own fp16 type: kIeeeHalf<T> says that a T is
// laid out as one of these (the torch glue says so of c10::Half, accumulate.h), so that the
// kernels stay torch-free.
struct F16Bits {
  uint16_t bits;
};
template <typename T>
inline constexpr bool kIeeeHalf = false;

template <typename Acc, typename T>
__attribute__((always_inline)) inline Acc to_acc(T v) {
  return static_cast<Acc>(v);
}

template <typename T, typename Acc>
__attribute__((always_inline)) inline T from_acc(Acc v) {
  return static_cast<T>(v);
}

template <>
__attribute__((always_inline)) inline float to_acc<float, Bf16Bits>(Bf16Bits v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <>
__attribute__((always_inline)) inline Bf16Bits from_acc<Bf16Bits, float>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return {static_cast<uint16_t>(f != f ? 0x7FC0u : rounded)};
}

}  // namespace ck::cpu
