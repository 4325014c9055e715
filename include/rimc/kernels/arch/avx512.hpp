#pragma once
/// \file
/// The AVX-512 forms of rimc's vector kernels (target attributes: no -march
/// flag needed). Each computes bitwise what its portable form computes: FMAs
/// where the portable form calls std::fma, and the _round_ intrinsics
/// elsewhere, which keep every product and sum separately rounded whatever
/// -ffp-contract says. Internal: include <rimc/kernels/arch/dispatch.hpp>.

#ifndef RIMC_ARCH_INTERNAL
#error "rimc/kernels/arch/avx512.hpp is internal: include <rimc/kernels/arch/dispatch.hpp>"
#endif

#include <algorithm>
#include <cstdint>

#if RIMC_HAVE_X86_DISPATCH
namespace rimc::detail::avx512 {

RIMC_SIMD_WARNINGS_OFF

/// portable::combine_rows, 16 outputs at a time (masked tail).
__attribute__((target("avx512f"))) inline void combine_rows(const float* u, const float* sbt, const float* z0,
                                                              const float* unbias, const float* gamma,
                                                              const float* shift, std::int64_t r, std::int64_t O,
                                                              std::int64_t p0, std::int64_t p1, float* y, bool relu) {
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

/// portable::lane_tree16 of a register's 16 lanes.
__attribute__((target("avx512f"))) inline float lane_tree16(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/// Output channels [j0, j0 + J) of Q pixels of one output row (at, at + 1, ...;
/// u points at the first one's row): portable::thin_conv_rows' sums with the
/// Q J chains interleaved. With Q > 1 every tap's column is in bounds.
template <int J, int Q>
__attribute__((target("avx512f"))) inline void thin_conv_pixels(const thin_conv_geometry& g, const float* x,
                                                                 const float* a, std::int64_t j0,
                                                                 const thin_conv_pixel& at, float* u) {
  const std::int64_t full = g.C / 16 * 16, tail = g.C - full, step = g.sw * g.C;
  const auto tm = static_cast<__mmask16>((1u << tail) - 1u);
  __m512 acc[Q][J];
  RIMC_UNROLL
  for (int q = 0; q < Q; ++q)
    RIMC_UNROLL
    for (int j = 0; j < J; ++j) acc[q][j] = _mm512_setzero_ps();
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    for (std::int64_t kw = 0; kw < g.KW; ++kw) {
      const float* xp = thin_conv_tap(g, x, at, kh, kw, Q > 1);
      if (!xp) continue;
      const float* ap = a + ((kh * g.KW + kw) * g.r + j0) * g.Cp;
      for (std::int64_t b = 0; b < full; b += 16) {
        __m512 av[J];
        RIMC_UNROLL
        for (int j = 0; j < J; ++j) av[j] = _mm512_loadu_ps(ap + j * g.Cp + b);
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) {
          const __m512 xv = _mm512_loadu_ps(xp + q * step + b);
          RIMC_UNROLL
          for (int j = 0; j < J; ++j) acc[q][j] = _mm512_fmadd_ps(xv, av[j], acc[q][j]);
        }
      }
      if (tail) {
        __m512 av[J];
        RIMC_UNROLL
        for (int j = 0; j < J; ++j) av[j] = _mm512_loadu_ps(ap + j * g.Cp + full);
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) {
          const __m512 xv = _mm512_maskz_loadu_ps(tm, xp + q * step + full);
          RIMC_UNROLL
          for (int j = 0; j < J; ++j) acc[q][j] = _mm512_fmadd_ps(xv, av[j], acc[q][j]);
        }
      }
    }
  }
  RIMC_UNROLL
  for (int q = 0; q < Q; ++q)
    RIMC_UNROLL
    for (int j = 0; j < J; ++j) u[q * g.r + j0 + j] = lane_tree16(acc[q][j]);
}

/// portable::thin_conv_rows for output channels [j0, j0 + J), four pixels at a time where it can.
template <int J>
__attribute__((target("avx512f"))) inline void thin_conv_rows_j(const thin_conv_geometry& g, const float* x,
                                                                 const float* a, std::int64_t j0, std::int64_t p0,
                                                                 std::int64_t p1, float* u) {
  constexpr int Q = 4;
  thin_conv_walk<Q>(g, p0, p1, [&](const thin_conv_pixel& at, std::int64_t p, bool wide) {
    if (wide) {
      thin_conv_pixels<J, Q>(g, x, a, j0, at, u + p * g.r);
    } else {
      thin_conv_pixels<J, 1>(g, x, a, j0, at, u + p * g.r);
    }
  });
}

/// portable::thin_conv_rows, 16 channels a step.
__attribute__((target("avx512f"))) inline void thin_conv_rows(const thin_conv_geometry& g, const float* x,
                                                               const float* a, std::int64_t p0, std::int64_t p1,
                                                               float* u) {
  for (std::int64_t j0 = 0; j0 < g.r; j0 += 4) {
    switch (std::min<std::int64_t>(4, g.r - j0)) {
      case 1: thin_conv_rows_j<1>(g, x, a, j0, p0, p1, u); break;
      case 2: thin_conv_rows_j<2>(g, x, a, j0, p0, p1, u); break;
      case 3: thin_conv_rows_j<3>(g, x, a, j0, p0, p1, u); break;
      default: thin_conv_rows_j<4>(g, x, a, j0, p0, p1, u); break;
    }
  }
}

/// Adds Q pixels' weight gradient (one output row; du points at the first
/// one's row) to acc, the pixels' FMAs on an element in pixel order. With
/// Q > 1 every tap's column is in bounds.
template <int Q>
__attribute__((target("avx512f"))) inline void thin_conv_weight_pixels(const thin_conv_geometry& g, const float* x,
                                                                        const float* du, const thin_conv_pixel& at,
                                                                        float* acc) {
  const std::int64_t full = g.C / 16 * 16, tail = g.C - full, step = g.sw * g.C;
  const auto tm = static_cast<__mmask16>((1u << tail) - 1u);
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    for (std::int64_t kw = 0; kw < g.KW; ++kw) {
      const float* xp = thin_conv_tap(g, x, at, kh, kw, Q > 1);
      if (!xp) continue;
      float* gp = acc + (kh * g.KW + kw) * g.r * g.Cp;
      for (std::int64_t j = 0; j < g.r; ++j) {
        __m512 d[Q];
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) d[q] = _mm512_set1_ps(du[q * g.r + j]);
        float* gj = gp + j * g.Cp;
        for (std::int64_t b = 0; b < full; b += 16) {
          __m512 v = _mm512_loadu_ps(gj + b);
          RIMC_UNROLL
          for (int q = 0; q < Q; ++q) v = _mm512_fmadd_ps(d[q], _mm512_loadu_ps(xp + q * step + b), v);
          _mm512_storeu_ps(gj + b, v);
        }
        if (tail) {
          __m512 v = _mm512_loadu_ps(gj + full);
          RIMC_UNROLL
          for (int q = 0; q < Q; ++q) v = _mm512_fmadd_ps(d[q], _mm512_maskz_loadu_ps(tm, xp + q * step + full), v);
          _mm512_storeu_ps(gj + full, v);
        }
      }
    }
  }
}

/// portable::thin_conv_weight_rows, 16 channels a step, four pixels at a time where it can.
__attribute__((target("avx512f"))) inline void thin_conv_weight_rows(const thin_conv_geometry& g, const float* x,
                                                                      const float* du, std::int64_t p0,
                                                                      std::int64_t p1, float* acc) {
  thin_conv_walk<4>(g, p0, p1, [&](const thin_conv_pixel& at, std::int64_t p, bool wide) {
    if (wide) {
      thin_conv_weight_pixels<4>(g, x, du + p * g.r, at, acc);
    } else {
      thin_conv_weight_pixels<1>(g, x, du + p * g.r, at, acc);
    }
  });
}

/// portable::dora_backward_rows, 16 columns a step (masked tail).
__attribute__((target("avx512f"))) inline void dora_backward_rows(const float* g, const float* z, const float* bias,
                                                                   const float* u, const float* w_t, std::int64_t O,
                                                                   std::int64_t r, std::int64_t p0, std::int64_t p1,
                                                                   double* c, float* gtu, float* ghb) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* gr = g + p * O;
    const float* zr = z + p * O;
    for (std::int64_t o = 0; o < O; o += 16) {
      const std::int64_t n = std::min<std::int64_t>(16, O - o);
      const auto m = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
      __m512 zv = _mm512_maskz_loadu_ps(m, zr + o);
      if (bias) zv = _mm512_sub_round_ps(zv, _mm512_maskz_loadu_ps(m, bias + o), cur);
      const __m512 prod = _mm512_mul_round_ps(_mm512_maskz_loadu_ps(m, gr + o), zv, cur);
      const auto m_lo = static_cast<__mmask8>(m & 0xFFu), m_hi = static_cast<__mmask8>(m >> 8);
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(prod));
      const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(prod), 1)));
      _mm512_mask_storeu_pd(c + o, m_lo, _mm512_add_round_pd(_mm512_maskz_loadu_pd(m_lo, c + o), lo, cur));
      if (m_hi) _mm512_mask_storeu_pd(c + o + 8, m_hi, _mm512_add_round_pd(_mm512_maskz_loadu_pd(m_hi, c + o + 8), hi, cur));
    }
    for (std::int64_t j = 0; j < r; ++j) {
      const __m512 uj = _mm512_set1_ps(u[p * r + j]);
      float* tj = gtu + j * O;
      const float* wj = w_t + j * O;
      __m512 lane = _mm512_setzero_ps();
      for (std::int64_t o = 0; o < O; o += 16) {
        const std::int64_t n = std::min<std::int64_t>(16, O - o);
        const auto m = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
        const __m512 gv = _mm512_maskz_loadu_ps(m, gr + o);
        _mm512_mask_storeu_ps(tj + o, m, _mm512_fmadd_ps(gv, uj, _mm512_maskz_loadu_ps(m, tj + o)));
        lane = _mm512_fmadd_ps(gv, _mm512_maskz_loadu_ps(m, wj + o), lane);
      }
      ghb[p * r + j] = lane_tree16(lane);
    }
  }
}

/// portable::mse_block, 8 doubles a step.
__attribute__((target("avx512f"))) inline double mse_block(const float* y, const float* t, float* g, std::int64_t len,
                                                             double n) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  __m512d acc = _mm512_setzero_pd();
  const __m512d two = _mm512_set1_pd(2.0), nn = _mm512_set1_pd(n);
  std::int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m512d d =
        _mm512_sub_round_pd(_mm512_cvtps_pd(_mm256_loadu_ps(y + i)), _mm512_cvtps_pd(_mm256_loadu_ps(t + i)), cur);
    acc = _mm512_add_round_pd(acc, _mm512_mul_round_pd(d, d, cur), cur);
    if (g) _mm256_storeu_ps(g + i, _mm512_cvtpd_ps(_mm512_div_round_pd(_mm512_mul_round_pd(two, d, cur), nn, cur)));
  }
  if (i < len) {  // the tail: element j of it in lane j
    const auto m = static_cast<__mmask16>((1u << (len - i)) - 1u);
    const __m512d d = _mm512_sub_round_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, y + i))),
                                          _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, t + i))), cur);
    acc = _mm512_add_round_pd(acc, _mm512_mul_round_pd(d, d, cur), cur);
    if (g) {
      const __m256 q = _mm512_cvtpd_ps(_mm512_div_round_pd(_mm512_mul_round_pd(two, d, cur), nn, cur));
      _mm512_mask_storeu_ps(g + i, m, _mm512_castps256_ps512(q));
    }
  }
  alignas(64) double lane[8];
  _mm512_store_pd(lane, acc);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/// JR rows of a times the 64 columns from c (fewer at c1) of b: 4 x JR accumulators.
template <int JR>
__attribute__((target("avx512f"))) inline void rows_times_strip(const float* a, std::int64_t lda, std::int64_t K,
                                                                  matrix_ref b, std::int64_t c, std::int64_t c1,
                                                                  float* out, std::int64_t ldo) {
  __mmask16 m[4];
  for (int q = 0; q < 4; ++q) {
    const std::int64_t left = c1 - c - 16 * q;
    m[q] = left >= 16 ? static_cast<__mmask16>(0xFFFFu) : static_cast<__mmask16>(left <= 0 ? 0u : (1u << left) - 1u);
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

/// portable::rows_times_matrix, rows four at a time, 64 columns at a time.
__attribute__((target("avx512f"))) inline void rows_times_matrix(matrix_ref a, std::int64_t r, std::int64_t K,
                                                                   matrix_ref b, std::int64_t c0, std::int64_t c1,
                                                                   float* out, std::int64_t ldo) {
  for (std::int64_t c = c0; c < c1; c += 64) {
    for (std::int64_t j = 0; j < r; j += 4) {
      const float* aj = a.data + j * a.ld;
      float* oj = out + j * ldo;
      switch (std::min<std::int64_t>(4, r - j)) {
        case 1: rows_times_strip<1>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        case 2: rows_times_strip<2>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        case 3: rows_times_strip<3>(aj, a.ld, K, b, c, c1, oj, ldo); break;
        default: rows_times_strip<4>(aj, a.ld, K, b, c, c1, oj, ldo); break;
      }
    }
  }
}

/// Row xi against JN rows of a from aj: JN accumulators kept in registers.
template <int JN>
__attribute__((target("avx512f"))) inline void row_dots_f64_block(const float* xi, const float* aj, std::int64_t lda,
                                                                    std::int64_t K, double* out) {
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

/// portable::row_dots_f64 (the products are exact, so the FMA rounds as the plain add does).
__attribute__((target("avx512f"))) inline void row_dots_f64(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r,
                                                              std::int64_t K, double* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float* xi = x.data + i * x.ld;
    for (std::int64_t j = 0; j < r; j += 4) {
      const float* aj = a.data + j * a.ld;
      double* oj = out + i * r + j;
      switch (std::min<std::int64_t>(4, r - j)) {
        case 1: row_dots_f64_block<1>(xi, aj, a.ld, K, oj); break;
        case 2: row_dots_f64_block<2>(xi, aj, a.ld, K, oj); break;
        case 3: row_dots_f64_block<3>(xi, aj, a.ld, K, oj); break;
        default: row_dots_f64_block<4>(xi, aj, a.ld, K, oj); break;
      }
    }
  }
}

/// portable::adam_update, 8 elements a step (division and square root are
/// correctly rounded on both forms, so the bits agree). The tail is masked
/// rather than left to a scalar loop, which inlined here could be contracted.
__attribute__((target("avx512f"))) inline void adam_update(float* p, const float* g, float* m, float* v, std::int64_t n,
                                                             const adam_step_consts& c) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const __m512 b1 = _mm512_set1_ps(c.b1), b2 = _mm512_set1_ps(c.b2), omb1 = _mm512_set1_ps(c.omb1),
               omb2 = _mm512_set1_ps(c.omb2);
  const __m512d c1 = _mm512_set1_pd(c.c1), c2 = _mm512_set1_pd(c.c2), lr = _mm512_set1_pd(c.lr),
                eps = _mm512_set1_pd(c.eps);
  for (std::int64_t k = 0; k < n; k += 8) {
    const auto mask = static_cast<__mmask16>(n - k >= 8 ? 0xFFu : (1u << (n - k)) - 1u);
    const __m512 gf = _mm512_maskz_loadu_ps(mask, g + k);  // lanes 8..15 are never stored
    const __m512d gd = _mm512_cvtps_pd(_mm512_castps512_ps256(gf));
    const __m512 gg = _mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_mul_round_pd(gd, gd, cur)));
    const __m512 mk = _mm512_add_round_ps(_mm512_mul_round_ps(b1, _mm512_maskz_loadu_ps(mask, m + k), cur),
                                          _mm512_mul_round_ps(omb1, gf, cur), cur);
    const __m512 vk = _mm512_add_round_ps(_mm512_mul_round_ps(b2, _mm512_maskz_loadu_ps(mask, v + k), cur),
                                          _mm512_mul_round_ps(omb2, gg, cur), cur);
    _mm512_mask_storeu_ps(m + k, mask, mk);
    _mm512_mask_storeu_ps(v + k, mask, vk);
    const __m256 m8 = _mm512_castps512_ps256(mk), v8 = _mm512_castps512_ps256(vk);
    const __m512d mhat = _mm512_div_round_pd(_mm512_cvtps_pd(m8), c1, cur);
    const __m512d vhat = _mm512_div_round_pd(_mm512_cvtps_pd(v8), c2, cur);
    const __m512d den = _mm512_add_round_pd(_mm512_sqrt_round_pd(vhat, cur), eps, cur);
    const __m512d upd = _mm512_div_round_pd(_mm512_mul_round_pd(lr, mhat, cur), den, cur);
    const __m512d pk = _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(mask, p + k)));
    _mm512_mask_storeu_ps(p + k, mask, _mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_sub_round_pd(pk, upd, cur))));
  }
}

/// The AVX2 form: an AVX-512 target would allow FMAs the portable form does not have.
inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, std::int64_t n, float* out) {
  avx2::normal_fill(seed, stream, first, n, out);
}

RIMC_SIMD_WARNINGS_ON

}  // namespace rimc::detail::avx512
#endif
