// The dwconv row kernels (dwconv_simd.h) of every instruction set, instantiated here once:
// dwconv.cpp and layer_norm.cpp (the fused dwconv + LayerNorm) reach them through RowKernels'
// function pointers, so neither compiles them.
#include "dwconv_simd.h"

namespace ck::cpu::simd {
namespace {

// n fp32 values (a multiple of V) stored as T: store_lanes, V at a time.
template <int V, typename T>
__attribute__((always_inline)) inline void store_converted(const float* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += V) store_lanes<V>(dst + i, load<V>(src + i));
}

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
  }

#if CK_CPU_X86
CK_DWCONV_ROW_KERNELS(avx512, CK_TARGET_AVX512, 16)
CK_DWCONV_ROW_KERNELS(avx2, CK_TARGET_AVX2, 8)

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
CK_DWCONV_ROW_KERNELS(portable, , 4)
#undef CK_DWCONV_ROW_KERNELS

}  // namespace

RowKernels row_kernels(Isa isa) {
#if CK_CPU_X86
  if (isa >= Isa::kAvx512) {
    RowKernels kernels{16, row_fns_avx512<float>(), row_fns_avx512<Bf16Bits>(),
                       row_fns_avx512<F16Bits>()};
    if (isa == Isa::kAvx512Bf16) kernels.bf16.row = conv_row_avx512_bf16;
    if (isa == Isa::kAvx512Bf16Emulated) kernels.bf16.row = conv_row_avx512_bf16_emulated;
    return kernels;
  }
  if (isa == Isa::kAvx2) {
    return {8, row_fns_avx2<float>(), row_fns_avx2<Bf16Bits>(), row_fns_avx2<F16Bits>()};
  }
#endif
  return {4, row_fns_portable<float>(), row_fns_portable<Bf16Bits>(), {}};
}

const RowKernels& this_cpu_row_kernels() {
  static const RowKernels kernels = row_kernels(cpu_isa());
  return kernels;
}

}  // namespace ck::cpu::simd
