// The CPU's vector instruction set for the SIMD kernels (dwconv_simd.h, layer_norm_kernels.h),
// chosen once at run time from the CPU's features, so that one build runs on any x86-64 (and
// builds on other architectures, portable code only). Each kernel is compiled once per set under
// a target attribute (CK_TARGET_AVX2 / CK_TARGET_AVX512) and picked by cpu_isa().
#pragma once
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#define CK_CPU_X86 1
#define CK_TARGET_AVX512 __attribute__((target("avx512f")))
#define CK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace ck::cpu {

enum class Isa { kPortable, kAvx2, kAvx512 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

// The widest set this CPU has; request (CK_CPU_ISA=avx2|portable) narrows it, so that the tests
// run every path the machine can.
inline Isa select_isa(const char* request) {
  const std::string want = request ? request : "";
#if CK_CPU_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512 && (want.empty() || want == "avx512")) return Isa::kAvx512;
  if (avx2 && (want.empty() || want == "avx512" || want == "avx2")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

// select_isa(CK_CPU_ISA), once per process (csrc/cpu/isa.cpp).
Isa cpu_isa();

}  // namespace ck::cpu
