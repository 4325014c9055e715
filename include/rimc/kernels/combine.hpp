#pragma once
/// \file
/// The combination step of a DoRA adapter's output, y = ((u s B^T) + z0) ⊙
/// gamma + shift (optionally ReLU), row by row on AVX-512: bitwise what
/// oneDNN's matmul with the add / mul / add epilogue computes
/// (tests/unit/unit-fastpaths.cpp compares them). adapt/dora_adapter.hpp
/// falls back to that matmul where AVX-512 is missing.

#include <rimc/core/error.hpp>
#include <rimc/kernels/simd.hpp>

#include <algorithm>
#include <cstdint>

namespace rimc::detail {

#if RIMC_HAVE_X86_DISPATCH
RIMC_AVX512_WARNINGS_OFF
/// Rows [p0, p1) of an adapter's output y = ((u sbt) + z) ⊙ gamma + shift
/// with z = z0, or z = z0 - unbias when unbias is given (a layer output that
/// still holds the bias), u [P, r], sbt = s B^T [r, O], z0 [P, O], all
/// row-major, into y (row p0 first): per element a fused multiply-add chain
/// over j = 0 .. r-1 from zero, then the epilogue steps each rounded. That
/// is bitwise what subtracting the bias and then oneDNN's matmul with the
/// add / mul / add epilogue compute on AVX-512 for r <= 64, and with `relu`
/// then max(y, 0), which is bitwise oneDNN's ReLU (tests/unit/unit-fastpaths.cpp
/// compares them).
__attribute__((target("avx512f"))) inline void combine_rows_avx512(const float* u, const float* sbt, const float* z0,
                                                                     const float* unbias, const float* gamma,
                                                                     const float* shift, std::int64_t r, std::int64_t O,
                                                                     std::int64_t p0, std::int64_t p1, float* y,
                                                                     bool relu = false) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* up = u + p * r;
    const float* zp = z0 + p * O;
    float* yp = y + (p - p0) * O;
    for (std::int64_t o = 0; o < O; o += 16) {
      const auto m = static_cast<__mmask16>(O - o >= 16 ? 0xFFFFu : (1u << (O - o)) - 1u);
      __m512 acc = _mm512_fmadd_ps(_mm512_set1_ps(up[0]), _mm512_maskz_loadu_ps(m, sbt + o), _mm512_setzero_ps());
      for (std::int64_t j = 1; j < r; ++j)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(up[j]), _mm512_maskz_loadu_ps(m, sbt + j * O + o), acc);
      __m512 z = _mm512_maskz_loadu_ps(m, zp + o);
      if (unbias) z = _mm512_sub_round_ps(z, _mm512_maskz_loadu_ps(m, unbias + o), cur);
      acc = _mm512_add_round_ps(acc, z, cur);
      acc = _mm512_mul_round_ps(acc, _mm512_maskz_loadu_ps(m, gamma + o), cur);
      acc = _mm512_add_round_ps(acc, _mm512_maskz_loadu_ps(m, shift + o), cur);
      if (relu) acc = _mm512_max_ps(acc, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(yp + o, m, acc);
    }
  }
}
RIMC_AVX512_WARNINGS_ON
#endif

/// Largest rank whose AVX-512 combination is checked against oneDNN's matmul.
inline constexpr std::int64_t combine_fast_max_rank = 64;

/// Whether combine_rows_avx512 stands in for oneDNN's matmul (bitwise the same).
[[nodiscard]] inline bool combine_fast(std::int64_t r) noexcept {
  return has_avx512f() && r >= 1 && r <= combine_fast_max_rank;
}

/// All P rows of the combination (see combine_rows_avx512) in blocks of 256 rows over threads.
inline void combine_rows(const float* u, const float* sbt, const float* z0, const float* unbias, const float* gamma,
                         const float* shift, std::int64_t r, std::int64_t O, std::int64_t P, float* y,
                         bool relu = false) {
#if RIMC_HAVE_X86_DISPATCH
  const std::int64_t blocks = (P + 255) / 256;
#pragma omp parallel for schedule(static) if (P * O > 65536)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t p0 = b * 256, p1 = std::min(P, p0 + 256);
    combine_rows_avx512(u, sbt, z0, unbias, gamma, shift, r, O, p0, p1, y + p0 * O, relu);
  }
#else
  (void)u, (void)sbt, (void)z0, (void)unbias, (void)gamma, (void)shift, (void)r, (void)O, (void)P, (void)y, (void)relu;
  throw backend_error("combine_rows: built without AVX-512 dispatch");
#endif
}

}  // namespace rimc::detail
