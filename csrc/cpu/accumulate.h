// The CPU kernels' types for ATen: the accumulation type (acc_t, convert.h) as an ATen dtype,
// and the storage type the torch-free kernels see for a tensor's scalar_t.
#pragma once
#include <torch/extension.h>

#include "convert.h"

namespace ck::cpu {

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The kernels' storage type for scalar_t: bf16 as its bits (convert.h: conversions that
// vectorise), the others as they are.
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = ck::cpu::Bf16Bits;
};
static_assert(sizeof(c10::BFloat16) == sizeof(ck::cpu::Bf16Bits));
// c10::Half is IEEE fp16: the SIMD dwconv reads its bits in place (convert.h).
template <>
inline constexpr bool kIeeeHalf<c10::Half> = true;
static_assert(sizeof(c10::Half) == sizeof(ck::cpu::F16Bits));

template <typename T>
using kernel_t = typename KernelType<T>::type;

template <typename T>
const kernel_t<T>* kernel_ptr(const T* p) {
  return reinterpret_cast<const kernel_t<T>*>(p);
}
template <typename T>
kernel_t<T>* kernel_ptr(T* p) {
  return reinterpret_cast<kernel_t<T>*>(p);
}

}  // namespace ck::cpu
