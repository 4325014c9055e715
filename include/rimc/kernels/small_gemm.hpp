#pragma once
/// \file
/// A few rows times a matrix: out [r, N] = a [r, K] b [K, N], for r small
/// (an adapter's rank) and b up to a few thousand square. This is the
/// per-step product of the statistics-based feature-KD calibration
/// (adapt/feature_statistics.hpp): oneDNN's matmul costs more in call
/// overhead and in padding M = r to its block size than the product itself.
///
/// Every output element is a fused multiply-add chain over k = 0 .. K-1 from
/// zero, so every ISA tier (kernels/arch/) gives the same bits, and the result
/// does not depend on the thread count (threads split the columns).

#include <rimc/kernels/arch/dispatch.hpp>

#include <algorithm>
#include <cstdint>

namespace rimc::detail {

/// Columns per strip of rows_times_matrix (the unit of work of one thread).
inline constexpr std::int64_t rows_times_matrix_strip = 64;

/// out [r, N] (row stride ldo) = a [r, K] b [K, N], columns split over
/// threads in strips of 64 when the product is large enough to pay for it.
inline void rows_times_matrix(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t N, float* out,
                              std::int64_t ldo) {
  constexpr std::int64_t strip = rows_times_matrix_strip;
  const std::int64_t strips = (N + strip - 1) / strip;
  const isa_tier tier = active_isa();  // outside the parallel region (it may throw)
#pragma omp parallel for schedule(static) if (strips > 1 && r * K * N > 262144)
  for (std::int64_t t = 0; t < strips; ++t) {
    const std::int64_t c0 = t * strip, c1 = std::min(N, c0 + strip);
    rows_times_matrix_cols(a, r, K, b, c0, c1, out, ldo, tier);
  }
}

}  // namespace rimc::detail
