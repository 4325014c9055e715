#pragma once
/// \file
/// The instruction-set tiers of rimc's own vector kernels and the one switch
/// that chooses between them. Every hand-vectorised loop of rimc (the feature
/// MSE, the adapter combination, the small GEMMs, the double row dots, Adam)
/// exists in three forms: portable C++, AVX2 + FMA, and AVX-512. The forms
/// compute bitwise the same results (tests/unit/unit-isa.cpp checks every
/// kernel at every tier against the portable form), so the tier changes speed,
/// never numbers.
///
/// The tier used is the best one the CPU runs, capped by the environment
/// variable `RIMC_MAX_ISA` (`avx512`, `avx2` or `scalar`, read once; any
/// other value is an error naming it) and by set_max_isa() at run time. The
/// cap only concerns rimc's kernels: oneDNN has its own,
/// `ONEDNN_MAX_CPU_ISA` (e.g. `AVX2`), which tools/test.sh sets beside
/// `RIMC_MAX_ISA=avx2` to run the suite as an AVX2-only machine would.

#include <rimc/core/error.hpp>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/// 1 where the AVX2 and AVX-512 forms are compiled (x86-64 with GCC or Clang).
#define RIMC_HAVE_X86_DISPATCH 1
#include <immintrin.h>
#else
/// 0 where only the portable forms are compiled (not x86-64, or neither GCC nor Clang).
#define RIMC_HAVE_X86_DISPATCH 0
#endif

/// Keeps the compiler from fusing a rounded product with a later sum (an FMA
/// the plain form does not have): the value must exist, rounded, in a register.
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define RIMC_NO_CONTRACT(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define RIMC_NO_CONTRACT(v) __asm__("" : "+w"(v))
#else
#define RIMC_NO_CONTRACT(v) ((void)0)
#endif

/// Around intrinsic code: GCC 12 warns (-Wmaybe-uninitialized) on the
/// _mm512_undefined_* its own avx512fintrin.h uses.
#if defined(__GNUC__) && !defined(__clang__)
#define RIMC_SIMD_WARNINGS_OFF                                  \
  _Pragma("GCC diagnostic push")                                \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
/// Ends a RIMC_SIMD_WARNINGS_OFF region.
#define RIMC_SIMD_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define RIMC_SIMD_WARNINGS_OFF
/// Ends a RIMC_SIMD_WARNINGS_OFF region (empty where nothing is silenced).
#define RIMC_SIMD_WARNINGS_ON
#endif

/// Before a loop with a small constant trip count (up to 32) whose body keeps
/// vector registers in arrays: unrolled fully, the arrays stay in registers.
#if defined(__clang__)
#define RIMC_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define RIMC_UNROLL _Pragma("GCC unroll 32")
#else
#define RIMC_UNROLL
#endif

namespace rimc {

/// An instruction-set tier of rimc's vector kernels, lowest first.
enum class isa_tier : std::uint8_t {
  scalar,  ///< portable C++ (any CPU)
  avx2,    ///< AVX2 + FMA (x86-64, Haswell / Zen and later)
  avx512,  ///< AVX-512F (x86-64, Skylake-SP / Zen 4 and later)
};

/// "scalar", "avx2" or "avx512".
[[nodiscard]] constexpr std::string_view to_string(isa_tier t) noexcept {
  switch (t) {
    case isa_tier::scalar: return "scalar";
    case isa_tier::avx2: return "avx2";
    case isa_tier::avx512: return "avx512";
  }
  return "?";
}

/// The tier named `name` ("scalar", "avx2", "avx512"); `what` names the source in the error.
[[nodiscard]] inline isa_tier parse_isa_tier(std::string_view name, std::string_view what = "isa tier") {
  for (const isa_tier t : {isa_tier::scalar, isa_tier::avx2, isa_tier::avx512})
    if (name == to_string(t)) return t;
  throw value_error(detail::concat(what, " must be avx512, avx2 or scalar, got '", name, "'"));
}

/// The best tier this CPU runs (checked once).
[[nodiscard]] inline isa_tier detected_isa() noexcept {
#if RIMC_HAVE_X86_DISPATCH
  static const isa_tier best = __builtin_cpu_supports("avx512f")                                        ? isa_tier::avx512
                               : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? isa_tier::avx2
                                                                                                    : isa_tier::scalar;
  return best;
#else
  return isa_tier::scalar;
#endif
}

namespace detail {
/// The cap from RIMC_MAX_ISA (avx512 when unset), parsed on first use.
[[nodiscard]] inline isa_tier environment_isa_cap() {
  static const isa_tier cap = [] {
    const char* v = std::getenv("RIMC_MAX_ISA");
    return v && *v ? parse_isa_tier(v, "RIMC_MAX_ISA") : isa_tier::avx512;
  }();
  return cap;
}
/// The cap set by set_max_isa (avx512: none).
inline std::atomic<isa_tier>& runtime_isa_cap() noexcept {
  static std::atomic<isa_tier> cap{isa_tier::avx512};
  return cap;
}
[[nodiscard]] constexpr isa_tier lower(isa_tier a, isa_tier b) noexcept { return a < b ? a : b; }
}  // namespace detail

/// The tier rimc's kernels run on now: the CPU's best, capped by RIMC_MAX_ISA and set_max_isa().
[[nodiscard]] inline isa_tier active_isa() {
  return detail::lower(detail::lower(detected_isa(), detail::environment_isa_cap()),
                       detail::runtime_isa_cap().load(std::memory_order_relaxed));
}

/// Caps the tier for the whole process (benchmarks and tests compare tiers in
/// one run); returns the previous cap. RIMC_MAX_ISA still applies below it.
inline isa_tier set_max_isa(isa_tier cap) noexcept { return detail::runtime_isa_cap().exchange(cap); }

/// Caps the tier for its lifetime and restores the previous cap after.
class isa_guard {
 public:
  /// Caps the tier at `cap` until destruction.
  explicit isa_guard(isa_tier cap) noexcept : previous_(set_max_isa(cap)) {}
  isa_guard(const isa_guard&) = delete;
  isa_guard& operator=(const isa_guard&) = delete;
  ~isa_guard() { set_max_isa(previous_); }

 private:
  isa_tier previous_;
};

}  // namespace rimc
