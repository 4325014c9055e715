#pragma once
/// \file
/// Runtime CPU dispatch for rimc's few hand-vectorised loops: each has a
/// plain C++ form and an AVX-512 form (compiled with a target attribute, so
/// no -march flag is needed) that computes bitwise the same, chosen at run
/// time. RIMC_HAVE_X86_DISPATCH is 1 where such forms are compiled.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RIMC_HAVE_X86_DISPATCH 1
#include <immintrin.h>
#else
#define RIMC_HAVE_X86_DISPATCH 0
#endif

/// Around AVX-512 intrinsic code: GCC 12 warns (-Wmaybe-uninitialized) on
/// the _mm512_undefined_* its own avx512fintrin.h uses.
#if defined(__GNUC__) && !defined(__clang__)
#define RIMC_AVX512_WARNINGS_OFF                                  \
  _Pragma("GCC diagnostic push")                                  \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")   \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define RIMC_AVX512_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define RIMC_AVX512_WARNINGS_OFF
#define RIMC_AVX512_WARNINGS_ON
#endif

namespace rimc::detail {

/// True when the CPU runs AVX-512F instructions (checked once).
[[nodiscard]] inline bool has_avx512f() noexcept {
#if RIMC_HAVE_X86_DISPATCH
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

}  // namespace rimc::detail
