// The vector helpers of the SIMD CPU kernels: vector types of 4, 8 and 16 fp32 lanes, loads that
// read fp32, bf16 and fp16 in place (bf16 and fp16 widened to fp32 in registers), rounding stores
// back to bf16 and fp16, and the register budget of each width.
//
// GCC/Clang vector extensions, compiled into each instruction set's kernels (isa.h);
// instructions that the compiler would not emit well from them are asm statements (load_widened,
// load_lanes and store_lanes for fp16).
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "convert.h"
#include "isa.h"

namespace ck::cpu::simd {

// (Spelled per width: GCC drops vector_size on an alias template of a dependent size.)
template <int V>
struct VecOf;
template <>
struct VecOf<4> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct VecOf<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<16> {
  typedef float type __attribute__((vector_size(64)));
};
template <int V>
using Vec = typename VecOf<V>::type;

template <int V>
__attribute__((always_inline)) inline Vec<V> load(const float* p) {
  Vec<V> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int V>
__attribute__((always_inline)) inline void store(float* p, const Vec<V>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// V 16-bit lanes (bf16 bits) and V 32-bit lanes (their fp32 widening).
template <int V>
struct BitsOf;
template <>
struct BitsOf<4> {
  typedef uint16_t u16 __attribute__((vector_size(8)));
  typedef uint32_t u32 __attribute__((vector_size(16)));
};
template <>
struct BitsOf<8> {
  typedef uint16_t u16 __attribute__((vector_size(16)));
  typedef uint32_t u32 __attribute__((vector_size(32)));
};
template <>
struct BitsOf<16> {
  typedef uint16_t u16 __attribute__((vector_size(32)));
  typedef uint32_t u32 __attribute__((vector_size(64)));
};

// V inputs as fp32 lanes: fp32 as they are; bf16 (its bits) widened in registers, a shift; fp16
// converted in registers (vcvtph2ps: F16C, AVX-512F for 16 lanes). So these inputs are read in
// place, not from a converted copy.
template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const float* p) {
  return load<V>(p);
}

// V bf16 inputs (their bits) zero-extended to 32-bit lanes: the bf16 in bits 0-15. (For 8 and 16
// lanes an asm statement, vpmovzxwd: GCC 12 builds the 16-lane conversion from 128-bit pieces
// through the stack.)
template <int V>
__attribute__((always_inline)) inline typename BitsOf<V>::u32 load_widened(const Bf16Bits* p) {
#if CK_CPU_X86
  if constexpr (V >= 8) {
    typename BitsOf<V>::u32 wide;
    asm("vpmovzxwd %1, %0"
        : "=v"(wide)
        : "m"(*reinterpret_cast<const typename BitsOf<V>::u16*>(p)));
    return wide;
  }
#endif
  typename BitsOf<V>::u16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return __builtin_convertvector(bits, typename BitsOf<V>::u32);
}

template <int V>
__attribute__((always_inline)) inline Vec<V> as_floats(const typename BitsOf<V>::u32& bits) {
  Vec<V> v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

template <int V>
__attribute__((always_inline)) inline typename BitsOf<V>::u32 as_bits(const Vec<V>& v) {
  typename BitsOf<V>::u32 bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const Bf16Bits* p) {
  return as_floats<V>(load_widened<V>(p) << 16);
}

#if CK_CPU_X86
// An asm statement, not the intrinsic: these always-inline helpers carry no target (they are
// compiled into each instruction set's kernels), and GCC will not inline a target intrinsic into
// them, while its own _Float16 vector conversion goes element by element.
template <int V>
__attribute__((always_inline)) inline Vec<V> load_lanes(const F16Bits* p) {
  static_assert(V == 8 || V == 16, "fp16 is read in place by the AVX2 and AVX-512 kernels only");
  Vec<V> v;
  asm("vcvtph2ps %1, %0" : "=v"(v) : "m"(*reinterpret_cast<const typename BitsOf<V>::u16*>(p)));
  return v;
}
#endif

// V fp32 lanes stored as bf16 or fp16 at p, rounded to nearest even: bf16 by from_acc's rule
// (convert.h: NaN to the quiet NaN 0x7FC0) in vectors, fp16 by vcvtps2ph (F16C; an asm
// statement, as its load).
template <int V>
__attribute__((always_inline)) inline void store_lanes(Bf16Bits* p, const Vec<V>& v) {
  using U32 = typename BitsOf<V>::u32;
  const U32 u = as_bits<V>(v);
  const U32 rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const U32 nan = reinterpret_cast<U32>(v != v);  // all ones where v is NaN
  const U32 bits = (nan & 0x7FC0u) | (~nan & rounded);
  const typename BitsOf<V>::u16 narrow = __builtin_convertvector(bits, typename BitsOf<V>::u16);
  std::memcpy(p, &narrow, sizeof(narrow));
}

#if CK_CPU_X86
template <int V>
__attribute__((always_inline)) inline void store_lanes(F16Bits* p, const Vec<V>& v) {
  static_assert(V == 8 || V == 16, "fp16 is stored by the AVX2 and AVX-512 kernels only");
  asm("vcvtps2ph $0, %1, %0" : "=m"(*reinterpret_cast<typename BitsOf<V>::u16*>(p)) : "v"(v));
}
#endif

// The type the row kernels read inputs of type T as, in place: fp32 and bf16 as they are, IEEE
// fp16 (convert.h) as F16Bits; void for the others, which go through a converted fp32 copy.
template <typename T>
using in_place_t = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, Bf16Bits>, T,
                                      std::conditional_t<kIeeeHalf<T>, F16Bits, void>>;

// Vector registers of each width's instruction set (AVX-512: 32; AVX2 and SSE: 16).
template <int V>
constexpr int vector_registers() {
  return V == 16 ? 32 : 16;
}

}  // namespace ck::cpu::simd
