#pragma once
/// \file
/// The combination step of an adapter's output, y = ((u s B^T) + z0) ⊙ gamma
/// + shift (optionally then ReLU), over all rows in blocks over threads. The
/// per-row kernel is in kernels/arch/ (portable, AVX2, AVX-512; the same bits
/// on every tier). It is also bitwise what oneDNN's matmul with the add / mul
/// / add epilogue computes on AVX-512 (tests/unit/unit-isa.cpp compares them).

#include <rimc/kernels/arch/dispatch.hpp>

#include <algorithm>
#include <cstdint>

namespace rimc::detail {

/// Rows per block of the combination (fixed: results do not depend on the thread count).
inline constexpr std::int64_t combine_block_rows = 256;

/// All P rows of y = ((u sbt) + z) ⊙ gamma + shift (see combine_rows_block),
/// in blocks of combine_block_rows rows over threads.
inline void combine_rows(const float* u, const float* sbt, const float* z0, const float* unbias, const float* gamma,
                         const float* shift, std::int64_t r, std::int64_t O, std::int64_t P, float* y,
                         bool relu = false) {
  const std::int64_t blocks = (P + combine_block_rows - 1) / combine_block_rows;
  const isa_tier tier = active_isa();  // outside the parallel region (it may throw)
#pragma omp parallel for schedule(static) if (P * O > 65536)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t p0 = b * combine_block_rows, p1 = std::min(P, p0 + combine_block_rows);
    combine_rows_block(u, sbt, z0, unbias, gamma, shift, r, O, p0, p1, y + p0 * O, relu, tier);
  }
}

}  // namespace rimc::detail
