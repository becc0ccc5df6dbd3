// Run-time flags as template arguments, for loops that must vectorise: a test of an optional
// operand inside a loop is control flow (the compiler cannot load through a pointer that may be
// null), so each combination of present operands gets its own loop.
#pragma once

namespace ck::cpu {

// Kernel::run<has[0], ..., has[N-1]>(args...), always inlined (so that it is compiled for the
// caller's instruction-set target).
template <int N, typename Kernel, bool... kFlags, typename... Args>
__attribute__((always_inline)) inline void with_flags(const bool* has, Args... args) {
  if constexpr (sizeof...(kFlags) == N) {
    Kernel::template run<kFlags...>(args...);
  } else if (has[sizeof...(kFlags)]) {
    with_flags<N, Kernel, kFlags..., true>(has, args...);
  } else {
    with_flags<N, Kernel, kFlags..., false>(has, args...);
  }
}

}  // namespace ck::cpu
