// The dwconv row kernels (dwconv_forward_rows.h, dwconv_wgrad_rows.h) of every instruction set,
// instantiated here once: dwconv.cpp and dwconv_layer_norm.cpp reach them through RowKernels'
// function pointers, so neither compiles them.
#include "dwconv_driver.h"
#include "dwconv_forward_rows.h"
#include "dwconv_wgrad_rows.h"

namespace ck::cpu::simd {
namespace {

// n fp32 values (a multiple of V) stored as T: store_lanes, V at a time.
template <int V, typename T>
__attribute__((always_inline)) inline void store_converted(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += V) store_lanes<V>(dst + i, load<V>(src + i));
}

// The row kernels of one instruction set, and its RowKernels: every type read in place (fp16
// not in the portable set, which has no conversion instruction for it).
#define CK_DWCONV_ROW_KERNELS(SUFFIX, TARGET, LANES)                                               \
  template <typename T>                                                                            \
  TARGET void conv_row_##SUFFIX(const RowWindow<T>& win, const float* taps, const float* bias,     \
                                float* out, int64_t Cp, int64_t k) {                               \
    conv_row_any_k<LANES, void>(win, taps, bias, out, Cp, k);                                      \
  }                                                                                                \
  template <typename T>                                                                            \
  TARGET void wgrad_row_##SUFFIX(const RowWindow<T>& win, const float* g, float* part, int64_t Cp, \
                                 int64_t k) {                                                      \
    wgrad_row_any_k<LANES>(win, g, part, Cp, k);                                                   \
  }                                                                                                \
  template <typename T>                                                                            \
  TARGET void store_##SUFFIX(const float* src, T* dst, int64_t n) {                                \
    store_converted<LANES>(src, dst, n);                                                           \
  }                                                                                                \
  template <typename T>                                                                            \
  RowFns<T> row_fns_##SUFFIX() {                                                                   \
    if constexpr (std::is_same_v<T, float>) {                                                      \
      return {conv_row_##SUFFIX<T>, wgrad_row_##SUFFIX<T>, nullptr};                               \
    } else {                                                                                       \
      return {conv_row_##SUFFIX<T>, wgrad_row_##SUFFIX<T>, store_##SUFFIX<T>};                     \
    }                                                                                              \
  }                                                                                                \
  template <int kLanes = LANES>                                                                    \
  RowKernels row_kernels_##SUFFIX() {                                                              \
    if constexpr (kLanes > 4) {                                                                    \
      using Half = std::conditional_t<(kLanes > 4), F16Bits, void>; /* (dependent: not built) */   \
      return {kLanes, row_fns_##SUFFIX<float>(), row_fns_##SUFFIX<Bf16Bits>(),                     \
              row_fns_##SUFFIX<Half>()};                                                           \
    } else {                                                                                       \
      return {kLanes, row_fns_##SUFFIX<float>(), row_fns_##SUFFIX<Bf16Bits>(), {}};                \
    }                                                                                              \
  }
CK_FOR_EACH_ISA(CK_DWCONV_ROW_KERNELS)
#undef CK_DWCONV_ROW_KERNELS

#if CK_CPU_X86
// The bf16 forward rows of the AVX512-BF16 sets: the bf16 dot product, native or emulated.
CK_TARGET_AVX512 void conv_row_avx512_bf16(const RowWindow<Bf16Bits>& win, const float* taps,
                                           const float* bias, float* out, int64_t Cp, int64_t k) {
  conv_row_any_k<16, NativeBf16Dot>(win, taps, bias, out, Cp, k);
}
CK_TARGET_AVX512 void conv_row_avx512_bf16_emulated(const RowWindow<Bf16Bits>& win,
                                                    const float* taps, const float* bias,
                                                    float* out, int64_t Cp, int64_t k) {
  conv_row_any_k<16, EmulatedBf16Dot>(win, taps, bias, out, Cp, k);
}
#endif

}  // namespace

RowKernels row_kernels(Isa isa) {
  RowKernels kernels = CK_PICK_BY_ISA(isa, row_kernels, <>)();
#if CK_CPU_X86
  if (isa == Isa::kAvx512Bf16) kernels.bf16.row = conv_row_avx512_bf16;
  if (isa == Isa::kAvx512Bf16Emulated) kernels.bf16.row = conv_row_avx512_bf16_emulated;
#endif
  return kernels;
}

const RowKernels& this_cpu_row_kernels() {
  static const RowKernels kernels = row_kernels(cpu_isa());
  return kernels;
}

}  // namespace ck::cpu::simd
