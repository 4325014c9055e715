#pragma once
/// \file
/// A few rows times a matrix: out [r, N] = a [r, K] b [K, N], for r small
/// (an adapter's rank) and b up to a few thousand square. This is the
/// per-step product of the statistics-based feature-KD calibration
/// (adapt/feature_statistics.hpp): oneDNN's matmul costs more in call
/// overhead and in padding M = r to its block size than the product itself.
///
/// Every output element is a fused multiply-add chain over k = 0 .. K-1 from
/// zero, so the AVX-512 form and the plain C++ form (std::fma) are bitwise
/// the same, and the result does not depend on the thread count (threads
/// split the columns).

#include <rimc/kernels/simd.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace rimc::detail {

/// A row-major matrix view: element (i, j) at data[i * ld + j].
struct matrix_ref {
  const float* data = nullptr;
  std::int64_t ld = 0;
};

/// Columns [c0, c1) of out = a b (plain C++).
inline void rows_times_matrix_scalar(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t c0,
                                     std::int64_t c1, float* out, std::int64_t ldo) {
  for (std::int64_t j = 0; j < r; ++j) {
    for (std::int64_t c = c0; c < c1; ++c) {
      float acc = 0.0f;
      for (std::int64_t k = 0; k < K; ++k) acc = std::fma(a.data[j * a.ld + k], b.data[k * b.ld + c], acc);
      out[j * ldo + c] = acc;
    }
  }
}

#if RIMC_HAVE_X86_DISPATCH
RIMC_AVX512_WARNINGS_OFF
/// JR rows of a times the 64 columns from c (fewer at c1) of b: 4 x JR accumulators.
template <int JR>
__attribute__((target("avx512f"))) inline void rows_times_strip_avx512(const float* a, std::int64_t lda, std::int64_t K,
                                                                        matrix_ref b, std::int64_t c, std::int64_t c1,
                                                                        float* out, std::int64_t ldo) {
  __mmask16 m[4];
  for (int q = 0; q < 4; ++q) {
    const std::int64_t left = c1 - c - 16 * q;
    m[q] = left >= 16 ? static_cast<__mmask16>(0xFFFFu)
                      : static_cast<__mmask16>(left <= 0 ? 0u : (1u << left) - 1u);
  }
  __m512 acc[JR][4];
  for (int jj = 0; jj < JR; ++jj)
    for (int q = 0; q < 4; ++q) acc[jj][q] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const float* bk = b.data + k * b.ld + c;
    __m512 v[4];
    for (int q = 0; q < 4; ++q) v[q] = _mm512_maskz_loadu_ps(m[q], bk + 16 * q);
    for (int jj = 0; jj < JR; ++jj) {
      const __m512 s = _mm512_set1_ps(a[jj * lda + k]);
      for (int q = 0; q < 4; ++q) acc[jj][q] = _mm512_fmadd_ps(s, v[q], acc[jj][q]);
    }
  }
  for (int jj = 0; jj < JR; ++jj)
    for (int q = 0; q < 4; ++q) _mm512_mask_storeu_ps(out + jj * ldo + c + 16 * q, m[q], acc[jj][q]);
}

/// Columns [c0, c1) of out = a b, rows four at a time.
__attribute__((target("avx512f"))) inline void rows_times_matrix_avx512(matrix_ref a, std::int64_t r, std::int64_t K,
                                                                         matrix_ref b, std::int64_t c0, std::int64_t c1,
                                                                         float* out, std::int64_t ldo) {
  for (std::int64_t c = c0; c < c1; c += 64) {
    for (std::int64_t j = 0; j < r; j += 4) {
      const float* aj = a.data + j * a.ld;
      float* oj = out + j * ldo;
      switch (std::min<std::int64_t>(4, r - j)) {
        case 1: rows_times_strip_avx512<1>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        case 2: rows_times_strip_avx512<2>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        case 3: rows_times_strip_avx512<3>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        default: rows_times_strip_avx512<4>(aj, a.ld, K, b, c, c1, oj, ldo); break;
      }
    }
  }
}
RIMC_AVX512_WARNINGS_ON
#endif

/// out[i * r + j] = sum_k x[i, k] a[j, k] in double for x [n, K] and a [r, K]
/// (row-major, row strides ldx and lda): term k goes to lane k mod 8 and the
/// lanes are added as ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)). A product
/// of two floats is exact in double, so the AVX-512 form's fused multiply-add
/// rounds as this plain form's add does: both give the same bits.
inline void row_dots_f64_scalar(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r, std::int64_t K,
                                double* out) {
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < r; ++j) {
      double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* xi = x.data + i * x.ld;
      const float* aj = a.data + j * a.ld;
      for (std::int64_t k = 0; k < K; ++k) lane[k & 7] += static_cast<double>(xi[k]) * static_cast<double>(aj[k]);
      out[i * r + j] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
}

#if RIMC_HAVE_X86_DISPATCH
RIMC_AVX512_WARNINGS_OFF
/// Row xi against JN rows of a from aj: JN accumulators kept in registers.
template <int JN>
__attribute__((target("avx512f"))) inline void row_dots_f64_block_avx512(const float* xi, const float* aj,
                                                                          std::int64_t lda, std::int64_t K,
                                                                          double* out) {
  __m512d acc[JN];
  for (int jj = 0; jj < JN; ++jj) acc[jj] = _mm512_setzero_pd();
  std::int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m512d xv = _mm512_cvtps_pd(_mm256_loadu_ps(xi + k));
    for (int jj = 0; jj < JN; ++jj)
      acc[jj] = _mm512_fmadd_pd(xv, _mm512_cvtps_pd(_mm256_loadu_ps(aj + jj * lda + k)), acc[jj]);
  }
  if (k < K) {
    const auto m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    const __m512d xv = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, xi + k)));
    for (int jj = 0; jj < JN; ++jj) {
      const __m512d av = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, aj + jj * lda + k)));
      acc[jj] = _mm512_fmadd_pd(xv, av, acc[jj]);
    }
  }
  for (int jj = 0; jj < JN; ++jj) {
    alignas(64) double lane[8];
    _mm512_store_pd(lane, acc[jj]);
    out[jj] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
}

__attribute__((target("avx512f"))) inline void row_dots_f64_avx512(matrix_ref x, std::int64_t n, matrix_ref a,
                                                                    std::int64_t r, std::int64_t K, double* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float* xi = x.data + i * x.ld;
    for (std::int64_t j = 0; j < r; j += 4) {
      const float* aj = a.data + j * a.ld;
      double* oj = out + i * r + j;
      switch (std::min<std::int64_t>(4, r - j)) {
        case 1: row_dots_f64_block_avx512<1>(xi, aj, a.ld, K, oj); break;
        case 2: row_dots_f64_block_avx512<2>(xi, aj, a.ld, K, oj); break;
        case 3: row_dots_f64_block_avx512<3>(xi, aj, a.ld, K, oj); break;
        default: row_dots_f64_block_avx512<4>(xi, aj, a.ld, K, oj); break;
      }
    }
  }
}
RIMC_AVX512_WARNINGS_ON
#endif

/// row_dots_f64 on the fastest path this CPU has.
inline void row_dots_f64(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r, std::int64_t K, double* out) {
#if RIMC_HAVE_X86_DISPATCH
  if (has_avx512f()) {
    row_dots_f64_avx512(x, n, a, r, K, out);
    return;
  }
#endif
  row_dots_f64_scalar(x, n, a, r, K, out);
}

/// out [r, N] (row stride ldo) = a [r, K] b [K, N], columns split over
/// threads in strips of 64 when the product is large enough to pay for it.
inline void rows_times_matrix(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t N, float* out,
                              std::int64_t ldo) {
  constexpr std::int64_t strip = 64;
  const std::int64_t strips = (N + strip - 1) / strip;
#pragma omp parallel for schedule(static) if (strips > 1 && r * K * N > 262144)
  for (std::int64_t t = 0; t < strips; ++t) {
    const std::int64_t c0 = t * strip, c1 = std::min(N, c0 + strip);
#if RIMC_HAVE_X86_DISPATCH
    if (has_avx512f()) {
      rows_times_matrix_avx512(a, r, K, b, c0, c1, out, ldo);
      continue;
    }
#endif
    rows_times_matrix_scalar(a, r, K, b, c0, c1, out, ldo);
  }
}

}  // namespace rimc::detail
