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
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

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

/// thin_conv_weight_rows for 16 channels and a 3 x 3 kernel, ranks [j0, j0 + R)
/// (R <= 3): their 9 R accumulators stay in registers over all the rows' pixels
/// (loaded from acc first, stored back last) and each pixel loads a tap's
/// inputs once for the R ranks. The same FMAs on each element in the same
/// pixel order as thin_conv_weight_pixels, so the same bits.
template <int R>
__attribute__((target("avx512f"))) inline void thin_conv_weight_rows_c16k3(const thin_conv_geometry& g,
                                                                            const float* x, const float* du,
                                                                            std::int64_t j0, std::int64_t p0,
                                                                            std::int64_t p1, float* acc) {
  __m512 a[9 * R];
  RIMC_UNROLL
  for (int t = 0; t < 9; ++t) {
    RIMC_UNROLL
    for (int j = 0; j < R; ++j) a[t * R + j] = _mm512_loadu_ps(acc + (t * g.r + j0 + j) * g.Cp);
  }
  thin_conv_pixel at(g, p0);
  for (std::int64_t p = p0; p < p1; ++p) {
    __m512 d[R];
    RIMC_UNROLL
    for (int j = 0; j < R; ++j) d[j] = _mm512_set1_ps(du[p * g.r + j0 + j]);
    RIMC_UNROLL
    for (int t = 0; t < 9; ++t) {
      const float* xp = thin_conv_tap(g, x, at, t / 3, t % 3);
      if (!xp) continue;
      const __m512 xv = _mm512_loadu_ps(xp);
      RIMC_UNROLL
      for (int j = 0; j < R; ++j) a[t * R + j] = _mm512_fmadd_ps(d[j], xv, a[t * R + j]);
    }
    at.next(g);
  }
  RIMC_UNROLL
  for (int t = 0; t < 9; ++t) {
    RIMC_UNROLL
    for (int j = 0; j < R; ++j) _mm512_storeu_ps(acc + (t * g.r + j0 + j) * g.Cp, a[t * R + j]);
  }
}

/// portable::thin_conv_weight_rows, 16 channels a step, four pixels at a time where it can
/// (16-channel 3 x 3 layers: every pixel, up to three ranks' accumulators in registers at a time).
__attribute__((target("avx512f"))) inline void thin_conv_weight_rows(const thin_conv_geometry& g, const float* x,
                                                                      const float* du, std::int64_t p0,
                                                                      std::int64_t p1, float* acc) {
  if (g.C == 16 && g.KH == 3 && g.KW == 3) {
    for (std::int64_t j0 = 0; j0 < g.r; j0 += 3) {
      switch (std::min<std::int64_t>(3, g.r - j0)) {
        case 1: thin_conv_weight_rows_c16k3<1>(g, x, du, j0, p0, p1, acc); break;
        case 2: thin_conv_weight_rows_c16k3<2>(g, x, du, j0, p0, p1, acc); break;
        default: thin_conv_weight_rows_c16k3<3>(g, x, du, j0, p0, p1, acc); break;
      }
    }
    return;
  }
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

/// Philox4x32-10 on 16 G counters, one per lane (philox16_portable::run):
/// word w of block 16 g + l in lane l of register x[g][w]. The G groups'
/// rounds interleave, so their multiply latencies overlap. (Rounds other
/// than 10 only for bench_kernels' candidate generators.)
template <int G, int Rounds = 10>
__attribute__((target("avx512f"))) inline void philox16_zmm(__m512i (&x)[G][4], std::uint32_t k0, std::uint32_t k1) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
  constexpr __mmask16 odd = 0xAAAA, even = 0x5555;
  constexpr auto swap = _MM_PERM_CDAB;  // the two words of each 64-bit lane exchanged
  for (int round = 0; round < Rounds; ++round) {
    const __m512i key0 = _mm512_set1_epi32(static_cast<int>(k0)), key1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      // lo / hi words of m0 * x0 and m1 * x2, lane by lane: even lanes from one VPMULUDQ, odd from
      // another; each product's word moved to its lane by a masked in-lane swap (one instruction)
      const __m512i e0 = _mm512_mul_epu32(x[g][0], m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(x[g][0], 32), m0);
      const __m512i e2 = _mm512_mul_epu32(x[g][2], m1), o2 = _mm512_mul_epu32(_mm512_srli_epi64(x[g][2], 32), m1);
      const __m512i lo0 = _mm512_mask_shuffle_epi32(e0, odd, o0, swap);
      const __m512i hi0 = _mm512_mask_shuffle_epi32(o0, even, e0, swap);
      const __m512i lo2 = _mm512_mask_shuffle_epi32(e2, odd, o2, swap);
      const __m512i hi2 = _mm512_mask_shuffle_epi32(o2, even, e2, swap);
      const __m512i n0 = _mm512_ternarylogic_epi32(hi2, x[g][1], key0, 0x96);  // hi2 ^ x1 ^ key0
      const __m512i n2 = _mm512_ternarylogic_epi32(hi0, x[g][3], key1, 0x96);
      x[g][1] = lo2;
      x[g][3] = lo0;
      x[g][0] = n0;
      x[g][2] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/// x[w] (word w of blocks 0-15) to output order: x[k] then holds words 0-3 of
/// blocks 4k .. 4k + 3, i.e. the normals of indices 16k .. 16k + 15.
__attribute__((target("avx512f"))) inline void blocks_to_output_order(__m512i (&x)[4]) {
  const __m512i t0 = _mm512_unpacklo_epi32(x[0], x[1]), t1 = _mm512_unpackhi_epi32(x[0], x[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(x[2], x[3]), t3 = _mm512_unpackhi_epi32(x[2], x[3]);
  // 128-bit lane q of u_j: the four words of block 4q + j
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  // transpose the 4 x 4 grid of 128-bit lanes
  const __m512i a0 = _mm512_shuffle_i32x4(u0, u1, 0x44), a1 = _mm512_shuffle_i32x4(u0, u1, 0xEE);
  const __m512i a2 = _mm512_shuffle_i32x4(u2, u3, 0x44), a3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  x[0] = _mm512_shuffle_i32x4(a0, a2, 0x88);
  x[1] = _mm512_shuffle_i32x4(a0, a2, 0xDD);
  x[2] = _mm512_shuffle_i32x4(a1, a3, 0x88);
  x[3] = _mm512_shuffle_i32x4(a1, a3, 0xDD);
}

/// p = c[0], then p = p t + c[i] for i = 1 .. 8, the product and the sum
/// each rounded (the scalar forms' Horner steps, written either way round),
/// in Q registers at once so that their latencies overlap.
template <int Q>
__attribute__((target("avx512f"))) inline void horner(const __m512 (&t)[Q], const float (&c)[9], __m512 (&p)[Q]) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  for (int q = 0; q < Q; ++q) p[q] = _mm512_set1_ps(c[0]);
  for (int i = 1; i < 9; ++i) {
    const __m512 ci = _mm512_set1_ps(c[i]);
    for (int q = 0; q < Q; ++q) p[q] = _mm512_add_round_ps(_mm512_mul_round_ps(p[q], t[q], cur), ci, cur);
  }
}

/// rimc::detail::fast_logf on Q registers, every step rounded as there.
template <int Q>
__attribute__((target("avx512f"))) inline void fast_logf(__m512 (&x)[Q]) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  __m512 m[Q], z[Q], fe[Q], y[Q];
  for (int q = 0; q < Q; ++q) {
    const __m512i b = _mm512_castps_si512(x[q]);
    const __m512i mant = _mm512_and_si512(b, _mm512_set1_epi32(0x007fffff));
    const __mmask16 low = _mm512_cmplt_epu32_mask(mant, _mm512_set1_epi32(0x003504f3));
    const __m512i e = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(0xff)),
                                       _mm512_set1_epi32(126));
    fe[q] = _mm512_cvtepi32_ps(_mm512_mask_sub_epi32(e, low, e, _mm512_set1_epi32(1)));  // |e| < 2^24: exact
    const __m512i expo = _mm512_mask_blend_epi32(low, _mm512_set1_epi32(0x7e << 23), _mm512_set1_epi32(0x7f << 23));
    m[q] = _mm512_sub_round_ps(_mm512_castsi512_ps(_mm512_or_si512(mant, expo)), _mm512_set1_ps(1.0f), cur);
    z[q] = _mm512_mul_round_ps(m[q], m[q], cur);
  }
  static constexpr float c[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  horner(m, c, y);
  for (int q = 0; q < Q; ++q) {
    __m512 v = _mm512_mul_round_ps(_mm512_mul_round_ps(y[q], m[q], cur), z[q], cur);
    v = _mm512_add_round_ps(v, _mm512_mul_round_ps(_mm512_set1_ps(-2.12194440e-4f), fe[q], cur), cur);
    v = _mm512_add_round_ps(v, _mm512_mul_round_ps(_mm512_set1_ps(-0.5f), z[q], cur), cur);
    x[q] = _mm512_add_round_ps(_mm512_add_round_ps(m[q], v, cur),
                               _mm512_mul_round_ps(_mm512_set1_ps(0.693359375f), fe[q], cur), cur);
  }
}

/// rimc::detail::normal_from_bits on Q registers (normal_central, and
/// normal_tail in the lanes where w >= 5), every step rounded as there.
template <int Q>
__attribute__((target("avx512f"))) inline void normal_from_bits(const __m512i (&bits)[Q], __m512 (&z)[Q]) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const __m512 scale = _mm512_set1_ps(0x1p-23f), half = _mm512_set1_ps(0.5f), sqrt2 = _mm512_set1_ps(1.41421356237309505f);
  __m512 w[Q], x[Q], t[Q], p[Q];
  for (int q = 0; q < Q; ++q) {
    const __m512 k = _mm512_cvtepi32_ps(_mm512_srli_epi32(bits[q], 9));  // < 2^23: exact
    const __m512 u = _mm512_mul_round_ps(_mm512_add_round_ps(k, half, cur), scale, cur);
    const __m512 v = _mm512_mul_round_ps(
        _mm512_sub_round_ps(_mm512_sub_round_ps(_mm512_set1_ps(8388608.0f), k, cur), half, cur), scale, cur);
    w[q] = _mm512_mul_round_ps(_mm512_mul_round_ps(_mm512_set1_ps(4.0f), u, cur), v, cur);
    x[q] = _mm512_sub_round_ps(u, v, cur);
  }
  fast_logf(w);
  __mmask16 any = 0;
  for (int q = 0; q < Q; ++q) {
    w[q] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(w[q]), _mm512_set1_epi32(INT32_MIN)));  // -ln
    t[q] = _mm512_sub_round_ps(w[q], _mm512_set1_ps(2.5f), cur);
    any |= _mm512_cmp_ps_mask(w[q], _mm512_set1_ps(5.0f), _CMP_GE_OQ);
  }
  static constexpr float central[] = {2.81022636e-08f,  3.43273939e-07f, -3.5233877e-06f,
                                      -4.39150654e-06f, 0.00021858087f,  -0.00125372503f,
                                      -0.00417768164f,  0.246640727f,    1.50140941f};
  horner(t, central, p);
  for (int q = 0; q < Q; ++q) z[q] = _mm512_mul_round_ps(_mm512_mul_round_ps(sqrt2, p[q], cur), x[q], cur);
  if (any == 0) return;  // the tail (about 0.3% of draws) touches about a third of 128-lane steps
  static constexpr float outer[] = {-0.000200214257f, 0.000100950558f, 0.00134934322f,
                                    -0.00367342844f,  0.00573950773f,  -0.0076224613f,
                                    0.00943887047f,   1.00167406f,     2.83297682f};
  for (int q = 0; q < Q; ++q) {
    const __mmask16 tail = _mm512_cmp_ps_mask(w[q], _mm512_set1_ps(5.0f), _CMP_GE_OQ);
    if (tail == 0) continue;
    const __m512 wt[1] = {_mm512_sub_round_ps(_mm512_sqrt_round_ps(w[q], cur), _mm512_set1_ps(3.0f), cur)};
    __m512 pt[1];
    horner(wt, outer, pt);
    z[q] = _mm512_mask_mul_round_ps(z[q], tail, _mm512_mul_round_ps(sqrt2, pt[0], cur), x[q], cur);
  }
}

/// rimc::detail::approx_quantile_coef in registers: power i's octaves 0-15 in lo[i], 16-31 in hi[i].
__attribute__((target("avx512f"))) inline void load_approx_quantile(__m512 (&lo)[5], __m512 (&hi)[5]) {
  for (int i = 0; i < 5; ++i) {
    lo[i] = _mm512_load_ps(approx_quantile_coef[i]);
    hi[i] = _mm512_load_ps(approx_quantile_coef[i] + 16);
  }
}

/// The approximate quantile (random.hpp: approx_quantile_coef) of 16 words:
/// the octave from the exponent of q, each coefficient picked from the
/// tables by a two-register permute, Horner's steps fused.
__attribute__((target("avx512f"))) inline __m512 approx_quantile(__m512i bits, const __m512 (&lo)[5],
                                                                 const __m512 (&hi)[5]) {
  const __m512i upper = _mm512_srai_epi32(bits, 31);  // k >= 2^22: u > 1/2, a positive normal
  const __m512i k = _mm512_and_si512(_mm512_xor_si512(_mm512_srli_epi32(bits, 9), _mm512_srli_epi32(upper, 9)),
                                     _mm512_set1_epi32(0x3FFFFF));  // min(k, 2^23 - 1 - k)
  const __m512 q = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_or_si512(_mm512_slli_epi32(k, 1), _mm512_set1_epi32(1))),
                                 _mm512_set1_ps(0x1p-24f));  // (2k + 1) 2^-24, exact
  const __m512i j = _mm512_sub_epi32(_mm512_set1_epi32(-2), _mm512_cvttps_epi32(_mm512_getexp_ps(q)));
  const __m512 t = _mm512_sub_ps(_mm512_getmant_ps(q, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero), _mm512_set1_ps(1.5f));
  __m512 p = _mm512_permutex2var_ps(lo[4], j, hi[4]);
  for (int i = 3; i >= 0; --i) p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(lo[i], j, hi[i]));
  const __m512i sign = _mm512_andnot_si512(upper, _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(p), sign));
}

/// The approximate quantile of n words (for the tests' check of approx_normal_error).
__attribute__((target("avx512f"))) inline void approx_normals(const std::uint32_t* bits, std::int64_t n, float* out) {
  __m512 lo[5], hi[5];
  load_approx_quantile(lo, hi);
  for (std::int64_t i = 0; i < n; i += 16) {
    const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(out + i, m, approx_quantile(_mm512_maskz_loadu_epi32(m, bits + i), lo, hi));
  }
}

/// normal_fill's Philox inputs: counters block + 16 g + l (lane l of group
/// g) as the low and high words of 16 64-bit numbers, the stream's two words.
struct philox16_counters {
  __m512i s0, s1, lane, idx_lo, idx_hi;
  __attribute__((target("avx512f"))) explicit philox16_counters(std::uint64_t stream)
      : s0(_mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream)))),
        s1(_mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream >> 32)))),
        lane(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7)),
        idx_lo(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)),
        idx_hi(_mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)) {}
  template <int G>
  __attribute__((target("avx512f"))) void load(std::uint64_t block, __m512i (&x)[G][4]) const {
    for (int g = 0; g < G; ++g) {
      const __m512i b0 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(block + 16 * g)), lane);
      const __m512i b1 = _mm512_add_epi64(b0, _mm512_set1_epi64(8));
      x[g][0] = _mm512_permutex2var_epi32(b0, idx_lo, b1);
      x[g][1] = _mm512_permutex2var_epi32(b0, idx_hi, b1);
      x[g][2] = s0;
      x[g][3] = s1;
    }
  }
};

/// portable::normal_fill, 64 G normals per step from 16 G Philox blocks
/// (G = 4 groups of four registers, their rounds interleaved), turned into
/// output order before the quantile so that whole steps store straight into
/// `out`; every float step is a _round_ intrinsic, so nothing is fused and
/// the bits are the portable form's.
/// With `approximate`, the quantile is approx_quantile's instead (noisy_for_adc).
template <bool approximate = false>
__attribute__((target("avx512f"))) inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first,
                                                           std::int64_t n, float* out) {
  constexpr int G = 4, step = 64 * G;
  if (n <= 0) return;
  __m512 table_lo[5], table_hi[5];  // approx_quantile's tables
  if constexpr (approximate) load_approx_quantile(table_lo, table_hi);
  const auto k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  const philox16_counters counters(stream);
  const std::uint64_t end = first + static_cast<std::uint64_t>(n);
  alignas(64) float part[step];
  for (std::uint64_t block = first / 4; block * 4 < end; block += 16 * G) {
    __m512i x[G][4];
    counters.load<G>(block, x);
    philox16_zmm<G>(x, k0, k1);
    __m512i bits[4 * G];
    for (int g = 0; g < G; ++g) {
      blocks_to_output_order(x[g]);
      for (int q = 0; q < 4; ++q) bits[4 * g + q] = x[g][q];
    }
    __m512 z[4 * G];
    if constexpr (approximate) {
      for (int q = 0; q < 4 * G; ++q) z[q] = approx_quantile(bits[q], table_lo, table_hi);
    } else {
      normal_from_bits(bits, z);
    }
    const std::uint64_t base = block * 4;
    if (base >= first && base + step <= end) {
      float* o = out + (base - first);
      for (int q = 0; q < 4 * G; ++q) _mm512_storeu_ps(o + 16 * q, z[q]);
    } else {  // the first or last step: only [first, end) of it
      for (int q = 0; q < 4 * G; ++q) _mm512_store_ps(part + 16 * q, z[q]);
      const std::uint64_t lo = std::max(base, first), hi = std::min(base + step, end);
      std::copy(part + (lo - base), part + (hi - base), out + (lo - first));
    }
  }
}

/// portable::normals_at, 16 indices a step (masked tail): lane l runs the
/// Philox block of its index and keeps the index's word for the quantile.
__attribute__((target("avx512f"))) inline void normals_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t first,
                                                          const std::uint32_t* offsets, std::int64_t n, float* out) {
  const auto k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  const __m512i s0 = _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream)));
  const __m512i s1 = _mm512_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream >> 32)));
  for (std::int64_t i = 0; i < n; i += 16) {
    const int len = static_cast<int>(std::min<std::int64_t>(16, n - i));
    alignas(64) std::uint32_t lo[16] = {}, hi[16] = {}, word[16] = {};
    for (int l = 0; l < len; ++l) {
      const std::uint64_t idx = first + offsets[i + l], block = idx / 4;
      lo[l] = static_cast<std::uint32_t>(block);
      hi[l] = static_cast<std::uint32_t>(block >> 32);
      word[l] = static_cast<std::uint32_t>(idx % 4);
    }
    __m512i x[1][4] = {{_mm512_load_si512(lo), _mm512_load_si512(hi), s0, s1}};
    philox16_zmm<1>(x, k0, k1);
    const __m512i w = _mm512_load_si512(word);
    __m512i bits[1] = {x[0][0]};
    for (int q = 1; q < 4; ++q)
      bits[0] = _mm512_mask_mov_epi32(bits[0], _mm512_cmpeq_epi32_mask(w, _mm512_set1_epi32(q)), x[0][q]);
    __m512 z[1];
    normal_from_bits(bits, z);
    _mm512_mask_storeu_ps(out + i, static_cast<__mmask16>((1u << len) - 1u), z[0]);
  }
}

/// portable::add_read_noise, 16 elements a step (masked tail).
__attribute__((target("avx512f"))) inline void add_read_noise(const float* current, const float* variance,
                                                              const float* z, std::int64_t n, float* out) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const __m512 tiny = _mm512_set1_ps(std::numeric_limits<float>::min());
  const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
  const __m512i magic = _mm512_set1_epi32(0x5f3759df);
  for (std::int64_t i = 0; i < n; i += 16) {
    const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    __m512i vb = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, variance + i));
    vb = _mm512_andnot_si512(_mm512_srai_epi32(vb, 31), vb);  // negative -> +0
    const __m512 w = _mm512_add_round_ps(_mm512_castsi512_ps(vb), tiny, cur);
    // sqrt_positive: the reciprocal-square-root estimate, three Newton steps, times w
    __m512 y = _mm512_castsi512_ps(_mm512_sub_epi32(magic, _mm512_srli_epi32(_mm512_castps_si512(w), 1)));
    for (int k = 0; k < 3; ++k) {
      const __m512 t = _mm512_mul_round_ps(_mm512_mul_round_ps(_mm512_mul_round_ps(half, w, cur), y, cur), y, cur);
      y = _mm512_mul_round_ps(y, _mm512_sub_round_ps(three_halves, t, cur), cur);
    }
    const __m512 root = _mm512_mul_round_ps(w, y, cur);
    const __m512 noisy = _mm512_add_round_ps(_mm512_maskz_loadu_ps(m, current + i),
                                             _mm512_mul_round_ps(root, _mm512_maskz_loadu_ps(m, z + i), cur), cur);
    _mm512_mask_storeu_ps(out + i, m, noisy);
  }
}

/// noisy_for_adc's pass over the currents, given the approximate normals za
/// (approx_quantile, within approx_normal_error of the exact ones): t =
/// (c + s za) to, s = w rsqrt14(w) the root of w = v + FLT_MIN (within
/// 2^-13 of add_read_noise's). The exact t lies within d = |to| s
/// (approx_normal_error + 2^-11) + |t| 2^-20 of t: 2^-11 covers the roots'
/// difference times |z| <= 5.3 and the roundings of the noisy sum, 2^-20
/// those of the products. Where the clipped t is farther than d from the
/// nearest rounding boundary, rounding and clipping (both monotone) give the
/// exact current's code too, so c + s za, whose product with to is t, is
/// stored: adc_rows reads that code. The others are listed in `undecided`
/// (NaN, infinite or negative inputs among them); returns their count. With
/// V > 0 (C <= 16 V) the per-column constants stay in registers across rows.
/// With approximate variances (var_rel, var_abs: variance_bound's), d grows
/// by |to| (|za| + approx_normal_error) (s var_rel + var_abs), what the
/// variance's error can move t by (docs/formulas.md, sec. 5).
template <int V>
__attribute__((target("avx512f"))) inline std::int64_t noisy_codes_rows(const adc_readout& a, const float* current,
                                                                        const float* variance, const float* z,
                                                                        std::int64_t M, std::int64_t C, float* noisy,
                                                                        std::uint32_t* undecided, float var_rel,
                                                                        float var_abs) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  constexpr int R = V > 0 ? V : 1;
  const __m512 hi = _mm512_set1_ps(a.steps), lo = _mm512_set1_ps(-a.steps), magic = _mm512_set1_ps(12582912.0f);
  const __m512 tiny = _mm512_set1_ps(std::numeric_limits<float>::min()), half = _mm512_set1_ps(0.5f);
  const __m512 noise_k = _mm512_set1_ps(approx_normal_error + 0x1p-11f), rel = _mm512_set1_ps(0x1p-20f);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512 vrel = _mm512_set1_ps(var_rel), vabs = _mm512_set1_ps(var_abs), zerr = _mm512_set1_ps(approx_normal_error);
  const bool approx = var_rel != 0.0f || var_abs != 0.0f;
  const bool per_col = a.to_steps != nullptr;
  __mmask16 kr[R];
  __m512 tor[R], ktor[R];  // to and |to| (approx_normal_error + 2^-11) per column
  for (int v = 0; v < R; ++v) {
    const std::int64_t j = 16 * v;
    kr[v] = static_cast<__mmask16>(C - j >= 16 ? 0xFFFFu : C > j ? (1u << (C - j)) - 1u : 0u);
    tor[v] = per_col ? _mm512_maskz_loadu_ps(kr[v], a.to_steps + j) : _mm512_set1_ps(a.to_all);
    ktor[v] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(tor[v]), abs_mask)), noise_k);
  }
  std::int64_t count = 0;
  for (std::int64_t m = 0; m < M; ++m) {
    const std::int64_t row = m * C;
    for (std::int64_t j = 0, v = 0; j < C; j += 16, ++v) {
      __mmask16 k;
      __m512 to, kto;
      if constexpr (V > 0) {
        k = kr[v];
        to = tor[v];
        kto = ktor[v];
      } else {
        k = static_cast<__mmask16>(C - j >= 16 ? 0xFFFFu : (1u << (C - j)) - 1u);
        to = per_col ? _mm512_maskz_loadu_ps(k, a.to_steps + j) : tor[0];
        kto = per_col ? _mm512_mul_ps(_mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(to), abs_mask)), noise_k)
                      : ktor[0];
      }
      const __m512 c = _mm512_maskz_loadu_ps(k, current + row + j);
      const __m512 w = _mm512_add_ps(_mm512_maskz_loadu_ps(k, variance + row + j), tiny);
      const __m512 root = _mm512_mul_ps(w, _mm512_rsqrt14_ps(w));
      const __m512 za = _mm512_maskz_loadu_ps(k, z + row + j);
      const __m512 nz = _mm512_fmadd_ps(root, za, c);
      const __m512 t = _mm512_mul_round_ps(nz, to, cur);  // as adc_rows computes it from nz
      const __m512 abs_t = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(t), abs_mask));
      __m512 d = _mm512_fmadd_ps(kto, root, _mm512_mul_ps(abs_t, rel));
      if (approx) {  // what the variance's error can move t by
        const __m512 abs_za = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(za), abs_mask));
        const __m512 abs_to = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(to), abs_mask));
        d = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_add_ps(abs_za, zerr), abs_to), _mm512_fmadd_ps(root, vrel, vabs), d);
      }
      // the distance of the clipped t from the nearest rounding boundary (exact; NaN stays NaN)
      const __m512 tc = _mm512_min_ps(hi, _mm512_max_ps(lo, t));
      const __m512 q = _mm512_sub_round_ps(_mm512_add_round_ps(tc, magic, cur), magic, cur);
      const __m512 off = _mm512_sub_ps(tc, q);
      const __m512 dist = _mm512_sub_ps(half, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(off), abs_mask)));
      const __mmask16 decided = _mm512_cmp_ps_mask(dist, d, _CMP_GT_OQ);
      _mm512_mask_storeu_ps(noisy + row + j, k, nz);
      for (unsigned open = static_cast<unsigned>(k & ~decided); open != 0; open &= open - 1)
        undecided[count++] = static_cast<std::uint32_t>(row + j + std::countr_zero(open));
    }
  }
  return count;
}

/// portable::noisy_for_adc without most of the exact normals: the
/// approximate normals (normal_fill<true>), noisy_codes_rows, and for the
/// undecided currents (about four in ten thousand at a quarter of a step of
/// noise) their exact normal (normals_at) and add_read_noise's value.
__attribute__((target("avx512f"))) inline void noisy_for_adc(std::uint64_t seed, std::uint64_t stream,
                                                             std::uint64_t first, const adc_readout& a,
                                                             const float* current, const float* variance,
                                                             std::int64_t M, std::int64_t C, float* noisy, float* z,
                                                             std::uint32_t* undecided, const variance_bound* approx) {
  normal_fill<true>(seed, stream, first, M * C, z);
  const float vr = approx ? approx->rel : 0.0f, va = approx ? approx->abs : 0.0f;
  const std::int64_t count =
      C <= 16   ? noisy_codes_rows<1>(a, current, variance, z, M, C, noisy, undecided, vr, va)
      : C <= 32 ? noisy_codes_rows<2>(a, current, variance, z, M, C, noisy, undecided, vr, va)
      : C <= 64 ? noisy_codes_rows<4>(a, current, variance, z, M, C, noisy, undecided, vr, va)
                : noisy_codes_rows<0>(a, current, variance, z, M, C, noisy, undecided, vr, va);
  exact_undecided<normals_at, add_read_noise>(seed, stream, first, current, variance, undecided, count, noisy, approx);
}

/// portable::bf16_round compiled for AVX-512.
__attribute__((target("avx512f"))) inline float bf16_round(const float* x, std::int64_t n, std::uint16_t* out) {
  return bf16_round_body(x, n, out);
}

/// pair_conv for NP output pixels (NP <= 8) of one image row and one block of 16 columns (mask
/// k): NP accumulators, each kernel row's pairs of weights loaded once for all of them, each
/// pixel's pair of bf16 inputs broadcast to every lane. `x` is the first pixel's window start,
/// `step` the inputs between neighbouring pixels (sw C), `w` the block's weights.
template <int NP>
__attribute__((target("avx512f,avx512bf16"))) inline void pair_conv_pixels(const pair_conv_geometry& g,
                                                                            const std::uint16_t* x, std::int64_t step,
                                                                            const std::uint32_t* w, __mmask16 k,
                                                                            float* out) {
  __m512 acc[NP];
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) acc[i] = _mm512_setzero_ps();
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    const std::uint16_t* xr = x + kh * g.dh * g.row;
    const std::uint32_t* wr = w + kh * g.pairs * 16;
    for (std::int64_t p = 0; p < g.pairs; ++p) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + 16 * p);
      RIMC_UNROLL
      for (int i = 0; i < NP; ++i) {
        std::int32_t pair;
        std::memcpy(&pair, xr + i * step + 2 * p, sizeof pair);
        acc[i] = _mm512_dpbf16_ps(acc[i], wv, (__m512bh)_mm512_set1_epi32(pair));
      }
    }
  }
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) _mm512_mask_storeu_ps(out + i * g.cols, k, acc[i]);
}

/// pair_conv_pixels<left> for 0 < left <= NP (the end of an output row).
template <int NP>
__attribute__((target("avx512f,avx512bf16"))) inline void pair_conv_rest(std::int64_t left, const pair_conv_geometry& g,
                                                                          const std::uint16_t* x, std::int64_t step,
                                                                          const std::uint32_t* w, __mmask16 k,
                                                                          float* out) {
  if (left == NP) {
    pair_conv_pixels<NP>(g, x, step, w, k, out);
  } else if constexpr (NP > 1) {
    pair_conv_rest<NP - 1>(left, g, x, step, w, k, out);
  }
}

/// pair_conv for NP output pixels of one row at stride 1 with C channels and KW taps per kernel
/// row known (P = ceil(KW C / 2) pairs), one block of 16 columns (mask k): the kernel row's P
/// pairs of weights in registers, and each pair of inputs the NP windows read broadcast once
/// and taken into every accumulator that reads it (pixel i's pair p starts at input i C + 2p;
/// pixels C apart share pairs), in increasing input order: each pixel still sums its pairs in
/// pair_conv_pixels' order, so the outputs are the same bits, with about a third fewer loads.
template <int C, int KW, int NP>
__attribute__((target("avx512f,avx512bf16"))) inline void pair_conv_row_block(const pair_conv_geometry& g,
                                                                               const std::uint16_t* x,
                                                                               const std::uint32_t* w, __mmask16 k,
                                                                               float* out) {
  constexpr int P = (KW * C + 1) / 2;
  // whether pixel (a - 2p) / C reads the pair at input a as its pair p
  constexpr auto reads = [](int a, int p) { return a >= 2 * p && (a - 2 * p) % C == 0 && (a - 2 * p) / C < NP; };
  __m512 acc[NP];
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) acc[i] = _mm512_setzero_ps();
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    const std::uint16_t* xr = x + kh * g.dh * g.row;
    const std::uint32_t* wr = w + kh * P * 16;
    __m512bh wv[P];
    RIMC_UNROLL
    for (int p = 0; p < P; ++p) wv[p] = (__m512bh)_mm512_loadu_si512(wr + 16 * p);
    RIMC_UNROLL
    for (int u = 0; u < NP + KW; ++u) {  // input a = u C + c (two loops: each within RIMC_UNROLL's count)
      RIMC_UNROLL
      for (int c = 0; c < C; ++c) {
        const int a = u * C + c;
        bool any = false;
        RIMC_UNROLL
        for (int p = 0; p < P; ++p) any = any || reads(a, p);
        if (!any) continue;
        std::int32_t pair;
        std::memcpy(&pair, xr + a, sizeof pair);
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
        RIMC_UNROLL
        for (int p = 0; p < P; ++p)
          if (reads(a, p)) acc[(a - 2 * p) / C] = _mm512_dpbf16_ps(acc[(a - 2 * p) / C], wv[p], xv);
      }
    }
  }
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) _mm512_mask_storeu_ps(out + i * g.cols, k, acc[i]);
}

/// pair_conv_row_block<C, KW, np> for 8 <= np <= NP.
template <int C, int KW, int NP>
__attribute__((target("avx512f,avx512bf16"))) inline void pair_conv_row_run(std::int64_t np,
                                                                             const pair_conv_geometry& g,
                                                                             const std::uint16_t* x,
                                                                             const std::uint32_t* w, __mmask16 k,
                                                                             float* out) {
  if (np == NP) {
    pair_conv_row_block<C, KW, NP>(g, x, w, k, out);
  } else if constexpr (NP > 8) {
    pair_conv_row_run<C, KW, NP - 1>(np, g, x, w, k, out);
  }
}

/// dispatch.hpp's pair_conv, every block of 16 columns of each output row: at stride 1 with 3
/// taps per kernel row and 1-3 channels, rows of at least 8 pixels in near-equal runs of 8-16
/// by pair_conv_row_block (a row of 28 as two of 14); elsewhere eight pixels at a time, then
/// the rest.
__attribute__((target("avx512f,avx512bf16"))) inline void pair_conv(const pair_conv_geometry& g,
                                                                     const std::uint16_t* x, const std::uint32_t* w,
                                                                     float* out) {
  using run_fn = void (*)(std::int64_t, const pair_conv_geometry&, const std::uint16_t*, const std::uint32_t*,
                          __mmask16, float*);
  run_fn run = nullptr;
  if (g.sw == 1 && g.KW == 3 && g.OW >= 8) {
    run = g.C == 1 ? pair_conv_row_run<1, 3, 16> : g.C == 2 ? pair_conv_row_run<2, 3, 16>
        : g.C == 3 ? pair_conv_row_run<3, 3, 16> : nullptr;
  }
  const std::int64_t step = g.sw * g.C, wblock = g.KH * g.pairs * 16, runs = (g.OW + 15) / 16;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t oh = 0; oh < g.OH; ++oh) {
      const std::uint16_t* xrow = x + (n * g.Hp + oh * g.sh) * g.row;
      float* orow = out + (n * g.OH + oh) * g.OW * g.cols;
      for (std::int64_t cb = 0; cb * 16 < g.cols; ++cb) {
        const auto k = static_cast<__mmask16>(g.cols - cb * 16 >= 16 ? 0xFFFFu : (1u << (g.cols - cb * 16)) - 1u);
        const std::uint32_t* wb = w + cb * wblock;
        if (run) {
          for (std::int64_t r = 0; r < runs; ++r) {
            const std::int64_t o0 = r * g.OW / runs, o1 = (r + 1) * g.OW / runs;
            run(o1 - o0, g, xrow + o0 * step, wb, k, orow + o0 * g.cols + cb * 16);
          }
          continue;
        }
        std::int64_t ow = 0;
        for (; ow + 8 <= g.OW; ow += 8) pair_conv_pixels<8>(g, xrow + ow * step, step, wb, k, orow + ow * g.cols + cb * 16);
        if (ow < g.OW) pair_conv_rest<7>(g.OW - ow, g, xrow + ow * step, step, wb, k, orow + ow * g.cols + cb * 16);
      }
    }
}

/// chain_conv for NP output pixels (NP <= 8) of one image row and one block of 16 columns (mask
/// k), any stride, over kernel rows [kh0, kh1) and taps [e0, e1) of each: NP accumulators, each
/// tap's 16 weights loaded once for all of them, each pixel's input broadcast; acc = x w + acc,
/// one rounding (chain_conv_body's chain). `x` is the first pixel's window start, `step` the
/// inputs between neighbouring pixels (sw C).
template <int NP>
__attribute__((target("avx512f"))) inline void chain_conv_pixels(const chain_conv_geometry& g, const float* x,
                                                                 std::int64_t step, const float* w, __mmask16 k,
                                                                 float* out, std::int64_t kh0, std::int64_t kh1,
                                                                 std::int64_t e0, std::int64_t e1) {
  __m512 acc[NP];
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) acc[i] = _mm512_setzero_ps();
  for (std::int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xr = x + kh * g.dh * g.row;
    const float* wr = w + kh * g.taps * 16;
    for (std::int64_t e = e0; e < e1; ++e) {
      const __m512 wv = _mm512_loadu_ps(wr + 16 * e);
      RIMC_UNROLL
      for (int i = 0; i < NP; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(xr[i * step + e]), wv, acc[i]);
    }
  }
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) _mm512_mask_storeu_ps(out + i * g.cols, k, acc[i]);
}

/// chain_conv_pixels<left> over every tap of kernel rows [kh0, kh1), for 0 < left <= NP.
template <int NP>
__attribute__((target("avx512f"))) inline void chain_conv_rest(std::int64_t left, const chain_conv_geometry& g,
                                                               const float* x, std::int64_t step, const float* w,
                                                               __mmask16 k, float* out, std::int64_t kh0,
                                                               std::int64_t kh1) {
  if (left == NP) {
    chain_conv_pixels<NP>(g, x, step, w, k, out, kh0, kh1, 0, g.taps);
  } else if constexpr (NP > 1) {
    chain_conv_rest<NP - 1>(left, g, x, step, w, k, out, kh0, kh1);
  }
}

/// chain_conv for NP output pixels of one row at stride 1 with C channels and KW taps per kernel
/// row known, every tap of kernel rows [kh0, kh1): the row's KW C weights in registers, each
/// input of the NP + KW - 1 pixels the window row spans broadcast once and multiplied into every
/// accumulator whose window reads it (output i takes input pixel u at tap u - i), in increasing u
/// and c: each output's chain still runs over its taps in order (about 1.6 times oneDNN 2.7's
/// speed for 3 channels, 3 x 3).
template <int C, int KW, int NP>
__attribute__((target("avx512f"))) inline void chain_conv_row_block(const chain_conv_geometry& g, const float* x,
                                                                    const float* w, __mmask16 k, float* out,
                                                                    std::int64_t kh0, std::int64_t kh1) {
  __m512 acc[NP];
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) acc[i] = _mm512_setzero_ps();
  for (std::int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xr = x + kh * g.dh * g.row;
    const float* wr = w + kh * KW * C * 16;
    __m512 wv[KW * C];
    RIMC_UNROLL
    for (int e = 0; e < KW * C; ++e) wv[e] = _mm512_loadu_ps(wr + 16 * e);
    RIMC_UNROLL
    for (int u = 0; u < NP + KW - 1; ++u) {
      RIMC_UNROLL
      for (int c = 0; c < C; ++c) {
        const __m512 xv = _mm512_set1_ps(xr[u * C + c]);
        RIMC_UNROLL
        for (int kw = 0; kw < KW; ++kw) {
          const int i = u - kw;
          if (i >= 0 && i < NP) acc[i] = _mm512_fmadd_ps(xv, wv[kw * C + c], acc[i]);
        }
      }
    }
  }
  RIMC_UNROLL
  for (int i = 0; i < NP; ++i) _mm512_mask_storeu_ps(out + i * g.cols, k, acc[i]);
}

/// `count` output pixels of one row whose windows read no padding column, one block of 16
/// columns, kernel rows [kh0, kh1): chain_conv_row_block's NP pixels at a time where it applies
/// (Block), then chain_conv_pixels' eight, then the rest.
template <int C, int KW, bool Block>
__attribute__((target("avx512f"))) inline void chain_conv_run(const chain_conv_geometry& g, const float* x,
                                                              const float* w, __mmask16 k, float* out,
                                                              std::int64_t count, std::int64_t kh0, std::int64_t kh1) {
  constexpr int NP = KW * C <= 9 ? 16 : 12;  // accumulators, weights and a broadcast within 32 registers
  const std::int64_t step = g.sw * g.C;
  std::int64_t i = 0;
  if constexpr (Block)
    for (; i + NP <= count; i += NP) chain_conv_row_block<C, KW, NP>(g, x + i * step, w, k, out + i * g.cols, kh0, kh1);
  for (; i + 8 <= count; i += 8) chain_conv_pixels<8>(g, x + i * step, step, w, k, out + i * g.cols, kh0, kh1, 0, g.taps);
  if (i < count) chain_conv_rest<7>(count - i, g, x + i * step, step, w, k, out + i * g.cols, kh0, kh1);
}

/// dispatch.hpp's chain_conv: per output row and block of 16 columns, every pixel by
/// chain_conv_run (register-blocked for stride 1 and 1-3 channels with 3 or 5 taps per kernel
/// row), kernel rows in the top or bottom padding skipped, the left and right padding's zeros
/// multiplied in. With finite weights (conductances) a zero tap changes acc only where acc is -0
/// (to +0, with a weight >= +0), and the chains then agree again at the first nonzero product:
/// only an output of +0 can differ from chain_conv_body's, which skips those taps. So the pixels
/// whose windows reach into that padding and have a +0 output are done again over their image
/// taps alone.
__attribute__((target("avx512f"))) inline void chain_conv(const chain_conv_geometry& g, const float* x,
                                                          const float* w, float* out) {
  using run_fn = void (*)(const chain_conv_geometry&, const float*, const float*, __mmask16, float*, std::int64_t,
                          std::int64_t, std::int64_t);
  run_fn run = chain_conv_run<1, 1, false>;
  if (g.sw == 1 && g.KW == 3) {
    run = g.C == 1 ? chain_conv_run<1, 3, true> : g.C == 2 ? chain_conv_run<2, 3, true>
        : g.C == 3 ? chain_conv_run<3, 3, true> : run;
  } else if (g.sw == 1 && g.KW == 5) {
    run = g.C == 1 ? chain_conv_run<1, 5, true> : g.C == 2 ? chain_conv_run<2, 5, true>
        : g.C == 3 ? chain_conv_run<3, 5, true> : run;
  }
  // The output columns whose windows read only image columns: [lo, hi).
  const std::int64_t lo = std::min(g.OW, (g.pw + g.sw - 1) / g.sw);
  const std::int64_t hi = std::max(lo, std::min(g.OW, g.W + g.pw - g.KW < 0 ? 0 : (g.W + g.pw - g.KW) / g.sw + 1));
  const std::int64_t step = g.sw * g.C, wblock = g.KH * g.taps * 16;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t oh = 0; oh < g.OH; ++oh) {
      const float* xrow = x + (n * g.Hp + oh * g.sh) * g.row;
      float* orow = out + (n * g.OH + oh) * g.OW * g.cols;
      const chain_conv_taps rows(g, oh, lo);
      for (std::int64_t cb = 0; cb * 16 < g.cols; ++cb) {
        const auto k = static_cast<__mmask16>(g.cols - cb * 16 >= 16 ? 0xFFFFu : (1u << (g.cols - cb * 16)) - 1u);
        const float* wb = w + cb * wblock;
        run(g, xrow, wb, k, orow + cb * 16, g.OW, rows.kh0, rows.kh1);
        for (const auto& [first, last] : {std::pair{std::int64_t{0}, lo}, std::pair{hi, g.OW}})  // the border pixels
          for (std::int64_t ow = first; ow < last; ++ow) {
            float* o = orow + ow * g.cols + cb * 16;
            if (_mm512_mask_cmpeq_epi32_mask(k, _mm512_maskz_loadu_epi32(k, o), _mm512_setzero_si512()) == 0) continue;
            const chain_conv_taps t(g, oh, ow);
            chain_conv_pixels<1>(g, xrow + ow * step, step, wb, k, o, t.kh0, t.kh1, t.kw0 * g.C, t.kw1 * g.C);
          }
      }
    }
}

/// The AVX2 form (hardware FMA, one rounding: the same bits). A form with a pixel's 16 columns
/// in one register was no faster: the exact variances asked for are scattered, one per pixel.
inline void conv_chain_values(const thin_conv_geometry& g, const float* x, const float* w, const std::uint32_t* idx,
                              std::int64_t count, float* out) {
  avx2::conv_chain_values(g, x, w, idx, count, out);
}

/// portable::dac_codes, 16 elements a step (masked tail). std::clamp(v, -1,
/// 1) is _mm512_min_ps(1, _mm512_max_ps(-1, v)): the same for NaN and +-0.
__attribute__((target("avx512f"))) inline void dac_codes(const float* src, std::int64_t n, float inv_scale,
                                                         float steps, float* dst, float* squares) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const __m512 inv = _mm512_set1_ps(inv_scale), st = _mm512_set1_ps(steps), magic = _mm512_set1_ps(12582912.0f);
  const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
  for (std::int64_t i = 0; i < n; i += 16) {
    const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xFFFFu : (1u << (n - i)) - 1u);
    const __m512 u = _mm512_min_ps(one, _mm512_max_ps(minus_one, _mm512_mul_round_ps(_mm512_maskz_loadu_ps(m, src + i), inv, cur)));
    const __m512 q = _mm512_sub_round_ps(_mm512_add_round_ps(_mm512_mul_round_ps(u, st, cur), magic, cur), magic, cur);
    const __m512 d = _mm512_div_round_ps(q, st, cur);
    _mm512_mask_storeu_ps(dst + i, m, d);
    if (squares) _mm512_mask_storeu_ps(squares + i, m, _mm512_mul_round_ps(d, d, cur));
  }
}

/// adc_rows for rows of V * 16 columns or fewer (C <= 16 V) with one input
/// scale for every row: the per-column constants (xs f, the ADC factors,
/// gain and bias) are loaded once into registers instead of once per row;
/// the same operations on the same values as the general loop below.
template <int V>
__attribute__((target("avx512f"))) inline void adc_rows_fixed_scale(const adc_readout& a, const float* current,
                                                                    std::int64_t M, std::int64_t C, float xs_all,
                                                                    float* y, std::int64_t ldy, bool overwrite) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const bool adc = a.steps > 0, per_col = adc && a.to_steps;
  const __m512 hi = _mm512_set1_ps(a.steps), lo = _mm512_set1_ps(-a.steps), magic = _mm512_set1_ps(12582912.0f);
  const __m512 zero = _mm512_setzero_ps(), xs = _mm512_set1_ps(xs_all);
  __mmask16 k[V];
  __m512 xf[V], to[V], lsb[V], gain[V], bias[V];
  for (int v = 0; v < V; ++v) {
    const std::int64_t j = 16 * v;
    k[v] = static_cast<__mmask16>(C - j >= 16 ? 0xFFFFu : C > j ? (1u << (C - j)) - 1u : 0u);
    xf[v] = _mm512_mul_round_ps(xs, _mm512_maskz_loadu_ps(k[v], a.factor + j), cur);
    to[v] = per_col ? _mm512_maskz_loadu_ps(k[v], a.to_steps + j) : _mm512_set1_ps(a.to_all);
    lsb[v] = per_col ? _mm512_maskz_loadu_ps(k[v], a.lsb + j) : _mm512_set1_ps(a.lsb_all);
    gain[v] = a.gain ? _mm512_maskz_loadu_ps(k[v], a.gain + j) : zero;
    bias[v] = a.bias ? _mm512_maskz_loadu_ps(k[v], a.bias + j) : zero;
  }
  for (std::int64_t m = 0; m < M; ++m) {
    const float* cm = current + m * C;
    float* ym = y + m * ldy;
    for (int v = 0; v < V; ++v) {
      const __m512 c = _mm512_maskz_loadu_ps(k[v], cm + 16 * v);
      __m512 t;
      if (adc) {
        const __m512 code = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_round_ps(c, to[v], cur)));
        const __m512 q = _mm512_sub_round_ps(_mm512_add_round_ps(code, magic, cur), magic, cur);
        t = _mm512_mul_round_ps(xf[v], _mm512_mul_round_ps(q, lsb[v], cur), cur);
      } else {
        t = _mm512_mul_round_ps(xf[v], c, cur);
      }
      __m512 u = _mm512_add_round_ps(overwrite ? zero : _mm512_maskz_loadu_ps(k[v], ym + 16 * v), t, cur);
      if (a.gain) {
        u = _mm512_add_round_ps(_mm512_mul_round_ps(u, gain[v], cur), bias[v], cur);
        if (a.relu) u = _mm512_max_ps(zero, u);
      }
      _mm512_mask_storeu_ps(ym + 16 * v, k[v], u);
    }
  }
}

/// portable::adc_rows, 16 columns a step (masked tail), the epilogue applied
/// in the same pass. std::max(v, lo) is _mm512_max_ps(lo, v) and
/// std::min(v, hi) _mm512_min_ps(hi, v): the same result for NaN and +-0.
__attribute__((target("avx512f"))) inline void adc_rows(const adc_readout& a, const float* current, std::int64_t M,
                                                        std::int64_t C, const float* xscale, float xscale_all,
                                                        float place, float* y, std::int64_t ldy, bool overwrite) {
  if (!xscale && C <= 16) return adc_rows_fixed_scale<1>(a, current, M, C, xscale_all * place, y, ldy, overwrite);
  if (!xscale && C <= 32) return adc_rows_fixed_scale<2>(a, current, M, C, xscale_all * place, y, ldy, overwrite);
  if (!xscale && C <= 64) return adc_rows_fixed_scale<4>(a, current, M, C, xscale_all * place, y, ldy, overwrite);
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  const bool adc = a.steps > 0, per_col = adc && a.to_steps;
  const __m512 hi = _mm512_set1_ps(a.steps), lo = _mm512_set1_ps(-a.steps), magic = _mm512_set1_ps(12582912.0f);
  const __m512 to_all = _mm512_set1_ps(a.to_all), lsb_all = _mm512_set1_ps(a.lsb_all), zero = _mm512_setzero_ps();
  for (std::int64_t m = 0; m < M; ++m) {
    const __m512 xs = _mm512_set1_ps((xscale ? xscale[m] : xscale_all) * place);
    const float* cm = current + m * C;
    float* ym = y + m * ldy;
    for (std::int64_t j = 0; j < C; j += 16) {
      const auto k = static_cast<__mmask16>(C - j >= 16 ? 0xFFFFu : (1u << (C - j)) - 1u);
      const __m512 c = _mm512_maskz_loadu_ps(k, cm + j);
      const __m512 xf = _mm512_mul_round_ps(xs, _mm512_maskz_loadu_ps(k, a.factor + j), cur);
      __m512 t;
      if (adc) {
        const __m512 to = per_col ? _mm512_maskz_loadu_ps(k, a.to_steps + j) : to_all;
        const __m512 lsb = per_col ? _mm512_maskz_loadu_ps(k, a.lsb + j) : lsb_all;
        const __m512 code = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_round_ps(c, to, cur)));
        const __m512 q = _mm512_sub_round_ps(_mm512_add_round_ps(code, magic, cur), magic, cur);
        t = _mm512_mul_round_ps(xf, _mm512_mul_round_ps(q, lsb, cur), cur);
      } else {
        t = _mm512_mul_round_ps(xf, c, cur);
      }
      __m512 v = _mm512_add_round_ps(overwrite ? zero : _mm512_maskz_loadu_ps(k, ym + j), t, cur);
      if (a.gain) {
        const __m512 b = a.bias ? _mm512_maskz_loadu_ps(k, a.bias + j) : zero;
        v = _mm512_add_round_ps(_mm512_mul_round_ps(v, _mm512_maskz_loadu_ps(k, a.gain + j), cur), b, cur);
        if (a.relu) v = _mm512_max_ps(zero, v);
      }
      _mm512_mask_storeu_ps(ym + j, k, v);
    }
  }
}

RIMC_SIMD_WARNINGS_ON

}  // namespace rimc::detail::avx512
#endif
