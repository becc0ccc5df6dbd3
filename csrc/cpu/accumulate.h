// The accumulation type of the CPU kernels: double for double storage, float otherwise (fp32
// accumulation for fp32, fp16 and bf16), as a C++ type and as an ATen dtype.
#pragma once
#include <torch/extension.h>

#include <type_traits>

namespace ck::cpu {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline at::ScalarType acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ck::cpu
