// The CPU's vector instruction set for the SIMD kernels (the dwconv rows, layer_norm_kernels.h),
// chosen once at run time from the CPU's features, so that one build runs on any x86-64 (and
// builds on other architectures, portable code only). Each kernel is compiled once per set under
// a target attribute (CK_TARGET_AVX2 / CK_TARGET_AVX512) and picked by cpu_isa(). Instructions
// the compiler is not asked to emit (fp16 conversion, the bf16 dot product) are asm statements in
// the kernels, so the targets need not name them; select_isa checks that the CPU has them.
#pragma once
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#define CK_CPU_X86 1
#define CK_TARGET_AVX512 __attribute__((target("avx512f")))
#define CK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace ck::cpu {

// From narrowest to widest. kAvx512Bf16: AVX-512 with the bf16 dot product (vdpbf16ps) in the
// bf16 dwconv. kAvx512Bf16Emulated: the same kernels with that instruction emulated by two
// AVX-512F FMAs (the same sums, bit for bit, but for subnormals), so that the tests run them on
// CPUs without it; only ever chosen on request.
enum class Isa { kPortable, kAvx2, kAvx512, kAvx512Bf16, kAvx512Bf16Emulated };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16Emulated: return "avx512_bf16_emulated";
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

// The set whose vectors a kernel without a bf16 dot product uses: AVX-512 for the bf16 sets.
inline Isa vector_isa(Isa isa) { return isa >= Isa::kAvx512 ? Isa::kAvx512 : isa; }

// The widest set this CPU has, but for the bf16 dot product, which is the default only on AMD
// CPUs: it is the one kernel kAvx512Bf16 changes (the bf16 dwconv forward), and it measured
// faster than widening bf16 to fp32 for FMAs on an AMD EPYC but slower on an Intel Xeon with
// AVX512-BF16, where the shuffles that pair the tap rows likely compete with the FMAs for the
// same port (docs/PERFORMANCE.md). A request
// (CK_CPU_ISA=avx512_bf16|avx512|avx2|portable) picks a set the CPU has, so that the tests run
// every path the machine can; avx512_bf16_emulated asks for the emulated dot product where the
// CPU has AVX-512F.
inline Isa select_isa(const char* request) {
  const std::string want = request ? request : "";
#if CK_CPU_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool avx512_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  // F16C: the fp16 loads of the AVX2 kernels (every AVX2 CPU has it; AVX-512F includes it)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (want == "avx512_bf16_emulated" && avx512) return Isa::kAvx512Bf16Emulated;
  const bool dot_product_by_default = want.empty() && __builtin_cpu_is("amd");
  if (avx512_bf16 && (want == "avx512_bf16" || dot_product_by_default)) return Isa::kAvx512Bf16;
  const bool up_to_avx512 = want.empty() || want == "avx512_bf16" || want == "avx512";
  if (avx512 && up_to_avx512) return Isa::kAvx512;
  if (avx2 && (up_to_avx512 || want == "avx2")) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

// select_isa(CK_CPU_ISA), once per process (csrc/cpu/isa.cpp).
Isa cpu_isa();

// The one way a kernel file compiles its functions once per instruction set and picks one at run
// time (dwconv_rows.cpp, layer_norm.cpp, mlp.cpp): CK_FOR_EACH_ISA(DEFINE) expands
// DEFINE(SUFFIX, TARGET, LANES) for every set this build compiles (SUFFIX names the functions,
// TARGET is the target attribute, LANES the fp32 lanes of a vector), and
// CK_PICK_BY_ISA(isa, fn, <template arguments>) names fn_SUFFIX<...> for the vector set `isa`
// (vector_isa: the bf16 sets use AVX-512's vectors).
#if CK_CPU_X86
#define CK_FOR_EACH_ISA(DEFINE)        \
  DEFINE(avx512, CK_TARGET_AVX512, 16) \
  DEFINE(avx2, CK_TARGET_AVX2, 8)      \
  DEFINE(portable, , 4)
#define CK_PICK_BY_ISA(isa, fn, ...)                                               \
  (::ck::cpu::vector_isa(isa) == ::ck::cpu::Isa::kAvx512 ? fn##_avx512 __VA_ARGS__ \
   : ::ck::cpu::vector_isa(isa) == ::ck::cpu::Isa::kAvx2 ? fn##_avx2 __VA_ARGS__   \
                                                         : fn##_portable __VA_ARGS__)
#else
#define CK_FOR_EACH_ISA(DEFINE) DEFINE(portable, , 4)
#define CK_PICK_BY_ISA(isa, fn, ...) (fn##_portable __VA_ARGS__)
#endif

}  // namespace ck::cpu
