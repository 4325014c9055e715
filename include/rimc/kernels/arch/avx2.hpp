#pragma once
/// \file
/// The AVX2 + FMA forms of rimc's vector kernels (target attributes: no
/// -march flag needed), for the many CPUs without AVX-512 (Zen 2/3, most
/// Intel client parts). Each computes bitwise what its portable form
/// computes: explicit FMAs where the portable form calls std::fma, and
/// RIMC_NO_CONTRACT on every product the portable form rounds on its own
/// (AVX2 has no _round_ intrinsics; the barrier keeps the compiler from
/// fusing after inlining). Internal: include <rimc/kernels/arch/dispatch.hpp>.

#ifndef RIMC_ARCH_INTERNAL
#error "rimc/kernels/arch/avx2.hpp is internal: include <rimc/kernels/arch/dispatch.hpp>"
#endif

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

#if RIMC_HAVE_X86_DISPATCH
namespace rimc::detail::avx2 {

RIMC_SIMD_WARNINGS_OFF

/// A load / store mask enabling the first `n` of 8 float lanes (all of them when n >= 8).
__attribute__((target("avx2"))) inline __m256i lanes(std::int64_t n) {
  const int k = static_cast<int>(std::min<std::int64_t>(n, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// Loads 8 floats, or the lanes of `m` (zero elsewhere) when Masked.
template <bool Masked>
__attribute__((target("avx2"))) inline __m256 load8(const float* p, __m256i m) {
  if constexpr (Masked) return _mm256_maskload_ps(p, m);
  return _mm256_loadu_ps(p);
}
/// Stores 8 floats, or the lanes of `m` when Masked.
template <bool Masked>
__attribute__((target("avx2"))) inline void store8(float* p, __m256i m, __m256 v) {
  if constexpr (Masked) {
    _mm256_maskstore_ps(p, m, v);
  } else {
    _mm256_storeu_ps(p, v);
  }
}

/// Outputs [o, o + 8) (the lanes of m when Masked) of one row of the combination.
template <bool Masked>
__attribute__((target("avx2,fma"))) inline void combine8(const float* up, const float* sbt, const float* zp,
                                                           const float* unbias, const float* gamma, const float* shift,
                                                           std::int64_t r, std::int64_t O, std::int64_t o, float* yp,
                                                           bool relu, __m256i m) {
  __m256 acc = _mm256_fmadd_ps(_mm256_set1_ps(up[0]), load8<Masked>(sbt + o, m), _mm256_setzero_ps());
  for (std::int64_t j = 1; j < r; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(up[j]), load8<Masked>(sbt + j * O + o, m), acc);
  __m256 z = load8<Masked>(zp + o, m);
  if (unbias) z = _mm256_sub_ps(z, load8<Masked>(unbias + o, m));
  acc = _mm256_add_ps(acc, z);
  acc = _mm256_mul_ps(acc, load8<Masked>(gamma + o, m));
  RIMC_NO_CONTRACT(acc);
  acc = _mm256_add_ps(acc, load8<Masked>(shift + o, m));
  if (relu) acc = _mm256_max_ps(acc, _mm256_setzero_ps());
  store8<Masked>(yp + o, m, acc);
}

/// portable::combine_rows, 8 outputs at a time (masked tail).
__attribute__((target("avx2,fma"))) inline void combine_rows(const float* u, const float* sbt, const float* z0,
                                                               const float* unbias, const float* gamma,
                                                               const float* shift, std::int64_t r, std::int64_t O,
                                                               std::int64_t p0, std::int64_t p1, float* y, bool relu) {
  const __m256i all = lanes(8), tail = lanes(O % 8);
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* up = u + p * r;
    const float* zp = z0 + p * O;
    float* yp = y + (p - p0) * O;
    std::int64_t o = 0;
    for (; o + 8 <= O; o += 8) combine8<false>(up, sbt, zp, unbias, gamma, shift, r, O, o, yp, relu, all);
    if (o < O) combine8<true>(up, sbt, zp, unbias, gamma, shift, r, O, o, yp, relu, tail);
  }
}

/// portable::mse_block, 8 doubles a step in two registers (lanes 0-3, 4-7).
__attribute__((target("avx2"))) inline double mse_block(const float* y, const float* t, float* g, std::int64_t len,
                                                          double n) {
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  const __m256d two = _mm256_set1_pd(2.0), nn = _mm256_set1_pd(n);
  for (std::int64_t i = 0; i < len; i += 8) {
    const bool full = i + 8 <= len;
    const __m256i m = lanes(len - i);
    const __m256 yv = full ? _mm256_loadu_ps(y + i) : _mm256_maskload_ps(y + i, m);
    const __m256 tv = full ? _mm256_loadu_ps(t + i) : _mm256_maskload_ps(t + i, m);
    const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(yv)),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(tv)));
    const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(yv, 1)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(tv, 1)));
    __m256d s0 = _mm256_mul_pd(d0, d0), s1 = _mm256_mul_pd(d1, d1);
    RIMC_NO_CONTRACT(s0);
    RIMC_NO_CONTRACT(s1);
    acc0 = _mm256_add_pd(acc0, s0);
    acc1 = _mm256_add_pd(acc1, s1);
    if (g) {
      __m256d q0 = _mm256_mul_pd(two, d0), q1 = _mm256_mul_pd(two, d1);
      RIMC_NO_CONTRACT(q0);
      RIMC_NO_CONTRACT(q1);
      const __m128 g0 = _mm256_cvtpd_ps(_mm256_div_pd(q0, nn)), g1 = _mm256_cvtpd_ps(_mm256_div_pd(q1, nn));
      if (full) {
        _mm256_storeu_ps(g + i, _mm256_set_m128(g1, g0));
      } else {
        _mm256_maskstore_ps(g + i, m, _mm256_set_m128(g1, g0));
      }
    }
  }
  alignas(32) double lane[8];
  _mm256_store_pd(lane, acc0);
  _mm256_store_pd(lane + 4, acc1);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/// JR rows of a times the 16 columns from c (fewer at c1) of b: 2 x JR accumulators.
template <int JR>
__attribute__((target("avx2,fma"))) inline void rows_times_strip(const float* a, std::int64_t lda, std::int64_t K,
                                                                   matrix_ref b, std::int64_t c, std::int64_t c1,
                                                                   float* out, std::int64_t ldo) {
  const __m256i m0 = lanes(c1 - c), m1 = lanes(c1 - c - 8);
  __m256 acc[JR][2];
  for (int jj = 0; jj < JR; ++jj) acc[jj][0] = acc[jj][1] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < K; ++k) {
    const float* bk = b.data + k * b.ld + c;
    const __m256 v0 = _mm256_maskload_ps(bk, m0), v1 = _mm256_maskload_ps(bk + 8, m1);
    for (int jj = 0; jj < JR; ++jj) {
      const __m256 s = _mm256_set1_ps(a[jj * lda + k]);
      acc[jj][0] = _mm256_fmadd_ps(s, v0, acc[jj][0]);
      acc[jj][1] = _mm256_fmadd_ps(s, v1, acc[jj][1]);
    }
  }
  for (int jj = 0; jj < JR; ++jj) {
    _mm256_maskstore_ps(out + jj * ldo + c, m0, acc[jj][0]);
    _mm256_maskstore_ps(out + jj * ldo + c + 8, m1, acc[jj][1]);
  }
}

/// portable::rows_times_matrix, rows four at a time, 16 columns at a time.
__attribute__((target("avx2,fma"))) inline void rows_times_matrix(matrix_ref a, std::int64_t r, std::int64_t K,
                                                                    matrix_ref b, std::int64_t c0, std::int64_t c1,
                                                                    float* out, std::int64_t ldo) {
  for (std::int64_t c = c0; c < c1; c += 16) {
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

/// Row xi against JN rows of a from aj: lanes 0-3 and 4-7 of each in two registers.
template <int JN>
__attribute__((target("avx2,fma"))) inline void row_dots_f64_block(const float* xi, const float* aj, std::int64_t lda,
                                                                     std::int64_t K, double* out) {
  __m256d acc[JN][2];
  for (int jj = 0; jj < JN; ++jj) acc[jj][0] = acc[jj][1] = _mm256_setzero_pd();
  for (std::int64_t k = 0; k < K; k += 8) {
    const __m256i m = lanes(K - k);
    const __m256 xv = _mm256_maskload_ps(xi + k, m);
    const __m256d x0 = _mm256_cvtps_pd(_mm256_castps256_ps128(xv)), x1 = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));
    for (int jj = 0; jj < JN; ++jj) {
      const __m256 av = _mm256_maskload_ps(aj + jj * lda + k, m);
      acc[jj][0] = _mm256_fmadd_pd(x0, _mm256_cvtps_pd(_mm256_castps256_ps128(av)), acc[jj][0]);
      acc[jj][1] = _mm256_fmadd_pd(x1, _mm256_cvtps_pd(_mm256_extractf128_ps(av, 1)), acc[jj][1]);
    }
  }
  for (int jj = 0; jj < JN; ++jj) {
    alignas(32) double lane[8];
    _mm256_store_pd(lane, acc[jj][0]);
    _mm256_store_pd(lane + 4, acc[jj][1]);
    out[jj] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
}

/// portable::row_dots_f64 (the products are exact, so the FMA rounds as the plain add does).
__attribute__((target("avx2,fma"))) inline void row_dots_f64(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r,
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

/// portable::adam_update, 8 elements a step (float moments in one register,
/// the double step in two).
__attribute__((target("avx2"))) inline void adam_update(float* p, const float* g, float* m, float* v, std::int64_t n,
                                                          const adam_step_consts& c) {
  const __m256 b1 = _mm256_set1_ps(c.b1), b2 = _mm256_set1_ps(c.b2), omb1 = _mm256_set1_ps(c.omb1),
               omb2 = _mm256_set1_ps(c.omb2);
  const __m256d c1 = _mm256_set1_pd(c.c1), c2 = _mm256_set1_pd(c.c2), lr = _mm256_set1_pd(c.lr),
                eps = _mm256_set1_pd(c.eps);
  for (std::int64_t k = 0; k < n; k += 8) {
    const __m256i mask = lanes(n - k);
    const __m256 gf = _mm256_maskload_ps(g + k, mask);
    const __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(gf)), g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(gf, 1));
    const __m256 gg = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_mul_pd(g1, g1)), _mm256_cvtpd_ps(_mm256_mul_pd(g0, g0)));
    __m256 m1 = _mm256_mul_ps(b1, _mm256_maskload_ps(m + k, mask)), m2 = _mm256_mul_ps(omb1, gf);
    __m256 v1 = _mm256_mul_ps(b2, _mm256_maskload_ps(v + k, mask)), v2 = _mm256_mul_ps(omb2, gg);
    RIMC_NO_CONTRACT(m1);
    RIMC_NO_CONTRACT(m2);
    RIMC_NO_CONTRACT(v1);
    RIMC_NO_CONTRACT(v2);
    const __m256 mk = _mm256_add_ps(m1, m2), vk = _mm256_add_ps(v1, v2);
    _mm256_maskstore_ps(m + k, mask, mk);
    _mm256_maskstore_ps(v + k, mask, vk);
    const __m256 pf = _mm256_maskload_ps(p + k, mask);
    __m128 half[2];
    for (int h = 0; h < 2; ++h) {
      const __m128 mh = h ? _mm256_extractf128_ps(mk, 1) : _mm256_castps256_ps128(mk);
      const __m128 vh = h ? _mm256_extractf128_ps(vk, 1) : _mm256_castps256_ps128(vk);
      const __m128 ph = h ? _mm256_extractf128_ps(pf, 1) : _mm256_castps256_ps128(pf);
      const __m256d mhat = _mm256_div_pd(_mm256_cvtps_pd(mh), c1);
      const __m256d vhat = _mm256_div_pd(_mm256_cvtps_pd(vh), c2);
      const __m256d den = _mm256_add_pd(_mm256_sqrt_pd(vhat), eps);
      __m256d num = _mm256_mul_pd(lr, mhat);
      RIMC_NO_CONTRACT(num);
      const __m256d upd = _mm256_div_pd(num, den);
      half[h] = _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_cvtps_pd(ph), upd));
    }
    _mm256_maskstore_ps(p + k, mask, _mm256_set_m128(half[1], half[0]));
  }
}

/// portable::lane_tree16 of lanes 0-7 in `lo` and 8-15 in `hi`.
__attribute__((target("avx2"))) inline float lane_tree16(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/// avx512::thin_conv_pixels with each 16-lane block as two registers.
template <int J, int Q>
__attribute__((target("avx2,fma"))) inline void thin_conv_pixels(const thin_conv_geometry& g, const float* x,
                                                                  const float* a, std::int64_t j0,
                                                                  const thin_conv_pixel& at, float* u) {
  const std::int64_t full = g.C / 16 * 16, tail = g.C - full, step = g.sw * g.C;
  const __m256i m_lo = lanes(tail), m_hi = lanes(tail - 8);
  __m256 lo[Q][J], hi[Q][J];
  RIMC_UNROLL
  for (int q = 0; q < Q; ++q)
    RIMC_UNROLL
    for (int j = 0; j < J; ++j) lo[q][j] = hi[q][j] = _mm256_setzero_ps();
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    for (std::int64_t kw = 0; kw < g.KW; ++kw) {
      const float* xp = thin_conv_tap(g, x, at, kh, kw, Q > 1);
      if (!xp) continue;
      const float* ap = a + ((kh * g.KW + kw) * g.r + j0) * g.Cp;
      for (std::int64_t b = 0; b < full; b += 16)
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) {
          const __m256 xl = _mm256_loadu_ps(xp + q * step + b), xh = _mm256_loadu_ps(xp + q * step + b + 8);
          RIMC_UNROLL
          for (int j = 0; j < J; ++j) {
            lo[q][j] = _mm256_fmadd_ps(xl, _mm256_loadu_ps(ap + j * g.Cp + b), lo[q][j]);
            hi[q][j] = _mm256_fmadd_ps(xh, _mm256_loadu_ps(ap + j * g.Cp + b + 8), hi[q][j]);
          }
        }
      if (tail)
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) {
          const __m256 xl = _mm256_maskload_ps(xp + q * step + full, m_lo),
                       xh = _mm256_maskload_ps(xp + q * step + full + 8, m_hi);
          RIMC_UNROLL
          for (int j = 0; j < J; ++j) {
            lo[q][j] = _mm256_fmadd_ps(xl, _mm256_loadu_ps(ap + j * g.Cp + full), lo[q][j]);
            hi[q][j] = _mm256_fmadd_ps(xh, _mm256_loadu_ps(ap + j * g.Cp + full + 8), hi[q][j]);
          }
        }
    }
  }
  RIMC_UNROLL
  for (int q = 0; q < Q; ++q)
    RIMC_UNROLL
    for (int j = 0; j < J; ++j) u[q * g.r + j0 + j] = lane_tree16(lo[q][j], hi[q][j]);
}

/// portable::thin_conv_rows for output channels [j0, j0 + J), two pixels at a time where it can.
template <int J>
__attribute__((target("avx2,fma"))) inline void thin_conv_rows_j(const thin_conv_geometry& g, const float* x,
                                                                  const float* a, std::int64_t j0, std::int64_t p0,
                                                                  std::int64_t p1, float* u) {
  thin_conv_walk<2>(g, p0, p1, [&](const thin_conv_pixel& at, std::int64_t p, bool wide) {
    if (wide) {
      thin_conv_pixels<J, 2>(g, x, a, j0, at, u + p * g.r);
    } else {
      thin_conv_pixels<J, 1>(g, x, a, j0, at, u + p * g.r);
    }
  });
}

/// portable::thin_conv_rows, 16 channels a step as two 8-lane halves.
__attribute__((target("avx2,fma"))) inline void thin_conv_rows(const thin_conv_geometry& g, const float* x,
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

/// avx512::thin_conv_weight_pixels, 8 channels a step.
template <int Q>
__attribute__((target("avx2,fma"))) inline void thin_conv_weight_pixels(const thin_conv_geometry& g, const float* x,
                                                                         const float* du, const thin_conv_pixel& at,
                                                                         float* acc) {
  const std::int64_t full = g.C / 8 * 8, tail = g.C - full, step = g.sw * g.C;
  const __m256i m = lanes(tail);
  for (std::int64_t kh = 0; kh < g.KH; ++kh) {
    for (std::int64_t kw = 0; kw < g.KW; ++kw) {
      const float* xp = thin_conv_tap(g, x, at, kh, kw, Q > 1);
      if (!xp) continue;
      float* gp = acc + (kh * g.KW + kw) * g.r * g.Cp;
      for (std::int64_t j = 0; j < g.r; ++j) {
        __m256 d[Q];
        RIMC_UNROLL
        for (int q = 0; q < Q; ++q) d[q] = _mm256_set1_ps(du[q * g.r + j]);
        float* gj = gp + j * g.Cp;
        for (std::int64_t b = 0; b < full; b += 8) {
          __m256 v = _mm256_loadu_ps(gj + b);
          RIMC_UNROLL
          for (int q = 0; q < Q; ++q) v = _mm256_fmadd_ps(d[q], _mm256_loadu_ps(xp + q * step + b), v);
          _mm256_storeu_ps(gj + b, v);
        }
        if (tail) {
          __m256 v = _mm256_loadu_ps(gj + full);
          RIMC_UNROLL
          for (int q = 0; q < Q; ++q) v = _mm256_fmadd_ps(d[q], _mm256_maskload_ps(xp + q * step + full, m), v);
          _mm256_storeu_ps(gj + full, v);
        }
      }
    }
  }
}

/// Where a block of thin_conv_weight_rows_c16k3's pixels reads its inputs:
/// pixel i's top-left tap at corner[i] when all its taps are in bounds (tap
/// (kh, kw) then at corner[i] + kh row + kw col), else corner[i] is null and
/// tap[i][t] holds each tap's address (null in the padding).
struct c16k3_block {
  static constexpr std::int64_t size = 64;
  const float* corner[size];
  const float* tap[size][9];
  std::int64_t row = 0, col = 0;
};

/// thin_conv_weight_rows for 16 channels and a 3 x 3 kernel, rank j and
/// channels [h, h + 8) of a block's n pixels: the 9 accumulators stay in
/// registers over the pixels (loaded from acc first, stored back last). The
/// same FMAs on each element in the same pixel order as
/// thin_conv_weight_pixels, so the same bits.
__attribute__((target("avx2,fma"))) inline void thin_conv_weight_block_c16k3(const c16k3_block& b, const float* du,
                                                                              std::int64_t r, std::int64_t Cp,
                                                                              std::int64_t j, std::int64_t h,
                                                                              std::int64_t n, float* acc) {
  __m256 a[9];
  RIMC_UNROLL
  for (int t = 0; t < 9; ++t) a[t] = _mm256_loadu_ps(acc + (t * r + j) * Cp + h);
  for (std::int64_t i = 0; i < n; ++i) {
    const __m256 d = _mm256_set1_ps(du[i * r + j]);
    if (const float* x0 = b.corner[i]) {
      RIMC_UNROLL
      for (int kh = 0; kh < 3; ++kh) {
        const float* xr = x0 + kh * b.row + h;
        RIMC_UNROLL
        for (int kw = 0; kw < 3; ++kw) a[kh * 3 + kw] = _mm256_fmadd_ps(d, _mm256_loadu_ps(xr + kw * b.col), a[kh * 3 + kw]);
      }
    } else {
      RIMC_UNROLL
      for (int t = 0; t < 9; ++t) {
        if (b.tap[i][t]) a[t] = _mm256_fmadd_ps(d, _mm256_loadu_ps(b.tap[i][t] + h), a[t]);
      }
    }
  }
  RIMC_UNROLL
  for (int t = 0; t < 9; ++t) _mm256_storeu_ps(acc + (t * r + j) * Cp + h, a[t]);
}

/// thin_conv_weight_rows for 16 channels and a 3 x 3 kernel: blocks of 64
/// pixels, whose tap addresses are found once, then one pass over the block
/// per rank and half of the channels (16 registers hold 9 accumulators of
/// 8 lanes; avx512::thin_conv_weight_rows_c16k3 holds three ranks' 16).
__attribute__((target("avx2,fma"))) inline void thin_conv_weight_rows_c16k3(const thin_conv_geometry& g,
                                                                             const float* x, const float* du,
                                                                             std::int64_t p0, std::int64_t p1,
                                                                             float* acc) {
  c16k3_block b;
  b.row = g.dh * g.W * g.C;
  b.col = g.dw * g.C;
  thin_conv_pixel at(g, p0);
  for (std::int64_t p = p0; p < p1; p += c16k3_block::size) {
    const std::int64_t n = std::min(c16k3_block::size, p1 - p);
    for (std::int64_t i = 0; i < n; ++i, at.next(g)) {
      const std::int64_t ih = at.oh * g.sh - g.ph, iw = at.ow * g.sw - g.pw;
      const bool inside = ih >= 0 && ih + 2 * g.dh < g.H && iw >= 0 && iw + 2 * g.dw < g.W;
      b.corner[i] = inside ? thin_conv_tap(g, x, at, 0, 0, true) : nullptr;
      if (!inside)
        for (int t = 0; t < 9; ++t) b.tap[i][t] = thin_conv_tap(g, x, at, t / 3, t % 3);
    }
    for (std::int64_t j = 0; j < g.r; ++j)
      for (std::int64_t h = 0; h < 16; h += 8) thin_conv_weight_block_c16k3(b, du + p * g.r, g.r, g.Cp, j, h, n, acc);
  }
}

/// portable::thin_conv_weight_rows, 8 channels a step, four pixels at a time where it can
/// (16-channel 3 x 3 layers: every pixel, one rank's half of the channels in registers at a time).
__attribute__((target("avx2,fma"))) inline void thin_conv_weight_rows(const thin_conv_geometry& g, const float* x,
                                                                       const float* du, std::int64_t p0,
                                                                       std::int64_t p1, float* acc) {
  if (g.C == 16 && g.KH == 3 && g.KW == 3) {
    thin_conv_weight_rows_c16k3(g, x, du, p0, p1, acc);
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

/// portable::dora_backward_rows, 8 columns a step (masked tail; ghb's 16 lanes as two registers).
__attribute__((target("avx2,fma"))) inline void dora_backward_rows(const float* g, const float* z, const float* bias,
                                                                    const float* u, const float* w_t, std::int64_t O,
                                                                    std::int64_t r, std::int64_t p0, std::int64_t p1,
                                                                    double* c, float* gtu, float* ghb) {
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* gr = g + p * O;
    const float* zr = z + p * O;
    for (std::int64_t o = 0; o < O; o += 8) {
      const std::int64_t n = O - o;
      const __m256i m = lanes(n);
      __m256 zv = _mm256_maskload_ps(zr + o, m);
      if (bias) zv = _mm256_sub_ps(zv, _mm256_maskload_ps(bias + o, m));
      __m256 prod = _mm256_mul_ps(_mm256_maskload_ps(gr + o, m), zv);
      RIMC_NO_CONTRACT(prod);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(prod)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(prod, 1));
      const __m256i m_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)),
                    m_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1));
      _mm256_maskstore_pd(c + o, m_lo, _mm256_add_pd(_mm256_maskload_pd(c + o, m_lo), lo));
      if (n > 4) _mm256_maskstore_pd(c + o + 4, m_hi, _mm256_add_pd(_mm256_maskload_pd(c + o + 4, m_hi), hi));
    }
    for (std::int64_t j = 0; j < r; ++j) {
      const __m256 uj = _mm256_set1_ps(u[p * r + j]);
      float* tj = gtu + j * O;
      const float* wj = w_t + j * O;
      __m256 lane[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      for (std::int64_t o = 0; o < O; o += 16)
        for (int h = 0; h < 2; ++h) {  // both halves of every 16-lane block, as the portable form
          const __m256i m = lanes(O - o - 8 * h);
          const __m256 gv = _mm256_maskload_ps(gr + o + 8 * h, m);
          _mm256_maskstore_ps(tj + o + 8 * h, m, _mm256_fmadd_ps(gv, uj, _mm256_maskload_ps(tj + o + 8 * h, m)));
          lane[h] = _mm256_fmadd_ps(gv, _mm256_maskload_ps(wj + o + 8 * h, m), lane[h]);
        }
      ghb[p * r + j] = lane_tree16(lane[0], lane[1]);
    }
  }
}

/// Philox4x32-10 on 8 G counters, one per lane (philox16_portable::run):
/// word w of block 8 g + l in lane l of register x[g][w], the G groups'
/// rounds interleaved.
template <int G>
__attribute__((target("avx2"))) inline void philox8_ymm(__m256i (&x)[G][4], std::uint32_t k0, std::uint32_t k1) {
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53), m1 = _mm256_set1_epi64x(0xCD9E8D57);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      const __m256i e0 = _mm256_mul_epu32(x[g][0], m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(x[g][0], 32), m0);
      const __m256i e2 = _mm256_mul_epu32(x[g][2], m1), o2 = _mm256_mul_epu32(_mm256_srli_epi64(x[g][2], 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
      const __m256i lo2 = _mm256_blend_epi32(e2, _mm256_slli_epi64(o2, 32), 0xAA);
      const __m256i hi2 = _mm256_blend_epi32(_mm256_srli_epi64(e2, 32), o2, 0xAA);
      const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi2, x[g][1]), key0);
      const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x[g][3]), key1);
      x[g][1] = lo2;
      x[g][3] = lo0;
      x[g][0] = n0;
      x[g][2] = n2;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/// x[w] (word w of blocks 0-7) to output order: x[k] then holds words 0-3
/// of blocks 2k and 2k + 1, the normals of indices 8k .. 8k + 7.
__attribute__((target("avx2"))) inline void blocks_to_output_order(__m256i (&x)[4]) {
  const __m256i t0 = _mm256_unpacklo_epi32(x[0], x[1]), t1 = _mm256_unpackhi_epi32(x[0], x[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(x[2], x[3]), t3 = _mm256_unpackhi_epi32(x[2], x[3]);
  // 128-bit lane q of u_j: the four words of block 4q + j
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  x[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
  x[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
  x[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
  x[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

/// p = c[0], then p = p t + c[i] (product and sum rounded on their own: the
/// target has no FMA), in Q registers at once.
template <int Q>
__attribute__((target("avx2"))) inline void horner(const __m256 (&t)[Q], const float (&c)[9], __m256 (&p)[Q]) {
  for (int q = 0; q < Q; ++q) p[q] = _mm256_set1_ps(c[0]);
  for (int i = 1; i < 9; ++i) {
    const __m256 ci = _mm256_set1_ps(c[i]);
    for (int q = 0; q < Q; ++q) p[q] = _mm256_add_ps(_mm256_mul_ps(p[q], t[q]), ci);
  }
}

/// rimc::detail::fast_logf on Q registers, every step rounded as there.
template <int Q>
__attribute__((target("avx2"))) inline void fast_logf(__m256 (&x)[Q]) {
  __m256 m[Q], z[Q], fe[Q], y[Q];
  for (int q = 0; q < Q; ++q) {
    const __m256i b = _mm256_castps_si256(x[q]);
    const __m256i mant = _mm256_and_si256(b, _mm256_set1_epi32(0x007fffff));
    const __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x003504f3), mant);  // -1 where m < sqrt(1/2)
    const __m256i e = _mm256_add_epi32(
        _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(0xff)), _mm256_set1_epi32(126)),
        low);
    fe[q] = _mm256_cvtepi32_ps(e);  // |e| < 2^24: exact
    const __m256i expo = _mm256_add_epi32(_mm256_set1_epi32(0x7e << 23), _mm256_and_si256(low, _mm256_set1_epi32(1 << 23)));
    m[q] = _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(mant, expo)), _mm256_set1_ps(1.0f));
    z[q] = _mm256_mul_ps(m[q], m[q]);
  }
  static constexpr float c[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  horner(m, c, y);
  for (int q = 0; q < Q; ++q) {
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(y[q], m[q]), z[q]);
    v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(-2.12194440e-4f), fe[q]));
    v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(-0.5f), z[q]));
    x[q] = _mm256_add_ps(_mm256_add_ps(m[q], v), _mm256_mul_ps(_mm256_set1_ps(0.693359375f), fe[q]));
  }
}

/// rimc::detail::normal_from_bits on Q registers, every step rounded as there.
template <int Q>
__attribute__((target("avx2"))) inline void normal_from_bits(const __m256i (&bits)[Q], __m256 (&z)[Q]) {
  const __m256 scale = _mm256_set1_ps(0x1p-23f), half = _mm256_set1_ps(0.5f), sqrt2 = _mm256_set1_ps(1.41421356237309505f);
  __m256 w[Q], x[Q], t[Q], p[Q];
  for (int q = 0; q < Q; ++q) {
    const __m256 k = _mm256_cvtepi32_ps(_mm256_srli_epi32(bits[q], 9));  // < 2^23: exact
    const __m256 u = _mm256_mul_ps(_mm256_add_ps(k, half), scale);
    const __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_set1_ps(8388608.0f), k), half), scale);
    w[q] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(4.0f), u), v);
    x[q] = _mm256_sub_ps(u, v);
  }
  fast_logf(w);
  int any = 0;
  for (int q = 0; q < Q; ++q) {
    w[q] = _mm256_xor_ps(w[q], _mm256_set1_ps(-0.0f));  // -ln
    t[q] = _mm256_sub_ps(w[q], _mm256_set1_ps(2.5f));
    any |= _mm256_movemask_ps(_mm256_cmp_ps(w[q], _mm256_set1_ps(5.0f), _CMP_GE_OQ));
  }
  static constexpr float central[] = {2.81022636e-08f,  3.43273939e-07f, -3.5233877e-06f,
                                      -4.39150654e-06f, 0.00021858087f,  -0.00125372503f,
                                      -0.00417768164f,  0.246640727f,    1.50140941f};
  horner(t, central, p);
  for (int q = 0; q < Q; ++q) z[q] = _mm256_mul_ps(_mm256_mul_ps(sqrt2, p[q]), x[q]);
  if (any == 0) return;
  static constexpr float outer[] = {-0.000200214257f, 0.000100950558f, 0.00134934322f,
                                    -0.00367342844f,  0.00573950773f,  -0.0076224613f,
                                    0.00943887047f,   1.00167406f,     2.83297682f};
  for (int q = 0; q < Q; ++q) {
    const __m256 tail = _mm256_cmp_ps(w[q], _mm256_set1_ps(5.0f), _CMP_GE_OQ);
    if (_mm256_movemask_ps(tail) == 0) continue;
    const __m256 wt[1] = {_mm256_sub_ps(_mm256_sqrt_ps(w[q]), _mm256_set1_ps(3.0f))};
    __m256 pt[1];
    horner(wt, outer, pt);
    z[q] = _mm256_blendv_ps(z[q], _mm256_mul_ps(_mm256_mul_ps(sqrt2, pt[0]), x[q]), tail);
  }
}

/// The Philox key (the seed's words) and the stream's words in every lane.
struct philox8_keys {
  std::uint32_t k0, k1;
  __m256i s0, s1;
  __attribute__((target("avx2"))) philox8_keys(std::uint64_t seed, std::uint64_t stream)
      : k0(static_cast<std::uint32_t>(seed)),
        k1(static_cast<std::uint32_t>(seed >> 32)),
        s0(_mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream)))),
        s1(_mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(stream >> 32)))) {}
};

/// One step of normal_fill: the Philox words of blocks block .. block + 8 G
/// - 1, in output order (bits[k] holds the words of indices 8 k .. 8 k + 7
/// of the step).
template <int G>
__attribute__((target("avx2"))) inline void philox_step_bits(std::uint64_t block, const philox8_keys& keys,
                                                             __m256i (&bits)[4 * G]) {
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
  __m256i x[G][4];
  for (int g = 0; g < G; ++g) {  // counters block + 8 g + l (64-bit): low and high words
    const __m256i b0 = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(block + 8 * g)), _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256i b1 = _mm256_add_epi64(b0, _mm256_set1_epi64x(4));
    x[g][0] = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(b0, even), _mm256_permutevar8x32_epi32(b1, even), 0xF0);
    x[g][1] = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(b0, odd), _mm256_permutevar8x32_epi32(b1, odd), 0xF0);
    x[g][2] = keys.s0;
    x[g][3] = keys.s1;
  }
  philox8_ymm<G>(x, keys.k0, keys.k1);
  for (int g = 0; g < G; ++g) {
    blocks_to_output_order(x[g]);
    for (int q = 0; q < 4; ++q) bits[4 * g + q] = x[g][q];
  }
}

/// Stores a step's Q = 4 G registers of normals (indices base .. base + 8 Q
/// - 1) into out, which holds indices [first, end).
template <int Q>
__attribute__((target("avx2"))) inline void store_normal_step(const __m256 (&z)[Q], std::uint64_t base,
                                                              std::uint64_t first, std::uint64_t end, float* out) {
  constexpr std::uint64_t step = 8 * Q;
  if (base >= first && base + step <= end) {
    float* o = out + (base - first);
    for (int q = 0; q < Q; ++q) _mm256_storeu_ps(o + 8 * q, z[q]);
  } else {  // the first or last step: only [first, end) of it
    alignas(32) float part[step];
    for (int q = 0; q < Q; ++q) _mm256_store_ps(part + 8 * q, z[q]);
    const std::uint64_t l0 = std::max(base, first), l1 = std::min(base + step, end);
    std::copy(part + (l0 - base), part + (l1 - base), out + (l0 - first));
  }
}

/// portable::normal_fill, 32 G normals per step from 8 G Philox blocks
/// (G = 3 groups of four registers), turned into output order before the
/// quantile so that whole steps store straight into `out`. The float steps
/// are plain AVX intrinsics: the target has no FMA (built without -march
/// flags, as rimc's presets are), so nothing fuses and every step rounds as
/// in the portable form (unit-isa checks the bits).
__attribute__((target("avx2"))) inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first,
                                                        std::int64_t n, float* out) {
  constexpr int G = 3;
  if (n <= 0) return;
  const philox8_keys keys(seed, stream);
  const std::uint64_t end = first + static_cast<std::uint64_t>(n);
  for (std::uint64_t block = first / 4; block * 4 < end; block += 8 * G) {
    __m256i bits[4 * G];
    philox_step_bits<G>(block, keys, bits);
    __m256 z[4 * G];
    normal_from_bits(bits, z);
    store_normal_step(z, block * 4, first, end, out);
  }
}

/// avx512::approx_quantile on 8 words for the octaves 0-15 of the tail
/// probability (down to 2^-17), whose coefficients two registers per power
/// hold (tab[i][0]: octaves 0-7, tab[i][1]: 8-15; two permutes and a blend
/// pick them); the same operations, so the same values there. The lanes of
/// octaves 16-22 (128 of the 2^23 inputs) get NaN: noisy_codes_rows leaves
/// them undecided, so they draw their exact normal.
__attribute__((target("avx2,fma"))) inline __m256 approx_quantile(__m256i bits, const __m256 (&tab)[5][2]) {
  const __m256i upper = _mm256_srai_epi32(bits, 31);  // k >= 2^22: u > 1/2, a positive normal
  const __m256i k = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi32(bits, 9), _mm256_srli_epi32(upper, 9)),
                                     _mm256_set1_epi32(0x3FFFFF));  // min(k, 2^23 - 1 - k)
  const __m256i qb = _mm256_castps_si256(
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(k, 1), _mm256_set1_epi32(1))),
                    _mm256_set1_ps(0x1p-24f)));  // q = (2k + 1) 2^-24 in [2^-24, 1/2), exact and normal
  // j = -2 - getexp(q) = 125 - the biased exponent; t = getmant(q) - 1.5 with the mantissa in [1, 2)
  const __m256i j = _mm256_sub_epi32(_mm256_set1_epi32(125), _mm256_srli_epi32(qb, 23));
  const __m256 t = _mm256_sub_ps(
      _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(qb, _mm256_set1_epi32(0x7FFFFF)), _mm256_set1_epi32(0x3F800000))),
      _mm256_set1_ps(1.5f));
  const __m256 second = _mm256_castsi256_ps(_mm256_slli_epi32(j, 28));  // bit 3 of j: octaves 8-15
  __m256 p = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tab[4][0], j), _mm256_permutevar8x32_ps(tab[4][1], j), second);
  for (int i = 3; i >= 0; --i) {
    const __m256 c = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tab[i][0], j), _mm256_permutevar8x32_ps(tab[i][1], j), second);
    p = _mm256_fmadd_ps(p, t, c);
  }
  const __m256i sign = _mm256_andnot_si256(upper, _mm256_set1_epi32(INT32_MIN));
  p = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(p), sign));
  const __m256 far = _mm256_castsi256_ps(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(15)));
  return _mm256_blendv_ps(p, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), far);
}

/// approx_quantile's table in registers (see there).
__attribute__((target("avx2"))) inline void load_approx_quantile(__m256 (&tab)[5][2]) {
  for (int i = 0; i < 5; ++i) {
    tab[i][0] = _mm256_load_ps(approx_quantile_coef[i]);
    tab[i][1] = _mm256_load_ps(approx_quantile_coef[i] + 8);
  }
}

/// The approximate quantile of n words (for the tests' check of approx_normal_error).
__attribute__((target("avx2,fma"))) inline void approx_normals(const std::uint32_t* bits, std::int64_t n, float* out) {
  __m256 tab[5][2];
  load_approx_quantile(tab);
  for (std::int64_t i = 0; i < n; i += 8) {
    const __m256i m = lanes(n - i);
    _mm256_maskstore_ps(out + i, m, approx_quantile(_mm256_maskload_epi32(reinterpret_cast<const int*>(bits + i), m), tab));
  }
}

/// normal_fill with approx_quantile's values instead of the exact quantile
/// (NaN for the farthest tails): noisy_for_adc's approximate normals.
__attribute__((target("avx2,fma"))) inline void approx_normal_fill(std::uint64_t seed, std::uint64_t stream,
                                                                    std::uint64_t first, std::int64_t n, float* out) {
  constexpr int G = 3;
  if (n <= 0) return;
  const philox8_keys keys(seed, stream);
  const std::uint64_t end = first + static_cast<std::uint64_t>(n);
  __m256 tab[5][2];
  load_approx_quantile(tab);
  for (std::uint64_t block = first / 4; block * 4 < end; block += 8 * G) {
    __m256i bits[4 * G];
    philox_step_bits<G>(block, keys, bits);
    __m256 z[4 * G];
    for (int q = 0; q < 4 * G; ++q) z[q] = approx_quantile(bits[q], tab);
    store_normal_step(z, block * 4, first, end, out);
  }
}

/// portable::add_read_noise compiled for AVX2 (no FMA in the target: nothing fuses).
__attribute__((target("avx2"))) inline void add_read_noise(const float* current, const float* variance, const float* z,
                                                           std::int64_t n, float* out) {
  add_read_noise_body(current, variance, z, n, out);
}

/// portable::normals_at compiled for AVX2 (no FMA in the target: nothing fuses).
__attribute__((target("avx2"))) inline void normals_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t first,
                                                       const std::uint32_t* offsets, std::int64_t n, float* out) {
  portable::normals_at(seed, stream, first, offsets, n, out);
}

/// avx512::noisy_codes_rows, 8 currents a step, the root by VSQRTPS
/// (correctly rounded, so within a few ulp of add_read_noise's and well
/// inside the bound's 2^-11). NaN normals (approx_quantile's farthest
/// tails) leave their currents undecided. t is rounded on its own, as
/// adc_rows rounds it; d is a bound with room to spare, fused or not. With
/// approximate variances (var_rel, var_abs: variance_bound's), d grows by
/// |to| (|za| + approx_normal_error) (s var_rel + var_abs).
__attribute__((target("avx2,fma"))) inline std::int64_t noisy_codes_rows(const adc_readout& a, const float* current,
                                                                         const float* variance, const float* z,
                                                                         std::int64_t M, std::int64_t C, float* noisy,
                                                                         std::uint32_t* undecided, float var_rel,
                                                                         float var_abs) {
  const __m256 hi = _mm256_set1_ps(a.steps), lo = _mm256_set1_ps(-a.steps), magic = _mm256_set1_ps(12582912.0f);
  const __m256 tiny = _mm256_set1_ps(std::numeric_limits<float>::min()), half = _mm256_set1_ps(0.5f);
  const __m256 noise_k = _mm256_set1_ps(approx_normal_error + 0x1p-11f), rel = _mm256_set1_ps(0x1p-20f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const bool per_col = a.to_steps != nullptr;
  const __m256 to_all = _mm256_set1_ps(a.to_all), kto_all = _mm256_mul_ps(_mm256_and_ps(to_all, abs_mask), noise_k);
  const __m256 vrel = _mm256_set1_ps(var_rel), vabs = _mm256_set1_ps(var_abs);
  const __m256 zerr = _mm256_set1_ps(approx_normal_error);
  const bool approx = var_rel != 0.0f || var_abs != 0.0f;
  std::int64_t count = 0;
  for (std::int64_t m = 0; m < M; ++m) {
    const std::int64_t row = m * C;
    for (std::int64_t j = 0; j < C; j += 8) {
      const __m256i k = lanes(C - j);
      const __m256 to = per_col ? _mm256_maskload_ps(a.to_steps + j, k) : to_all;
      const __m256 kto = per_col ? _mm256_mul_ps(_mm256_and_ps(to, abs_mask), noise_k) : kto_all;
      const __m256 c = _mm256_maskload_ps(current + row + j, k);
      const __m256 root = _mm256_sqrt_ps(_mm256_add_ps(_mm256_maskload_ps(variance + row + j, k), tiny));
      const __m256 za = _mm256_maskload_ps(z + row + j, k);
      const __m256 nz = _mm256_fmadd_ps(root, za, c);
      __m256 t = _mm256_mul_ps(nz, to);  // as adc_rows computes it from nz
      RIMC_NO_CONTRACT(t);
      __m256 d = _mm256_fmadd_ps(kto, root, _mm256_mul_ps(_mm256_and_ps(t, abs_mask), rel));
      if (approx) {  // what the variance's error can move t by
        const __m256 zt = _mm256_mul_ps(_mm256_add_ps(_mm256_and_ps(za, abs_mask), zerr), _mm256_and_ps(to, abs_mask));
        d = _mm256_fmadd_ps(zt, _mm256_fmadd_ps(root, vrel, vabs), d);
      }
      // the distance of the clipped t from the nearest rounding boundary (exact; NaN stays NaN)
      const __m256 tc = _mm256_min_ps(hi, _mm256_max_ps(lo, t));
      const __m256 q = _mm256_sub_ps(_mm256_add_ps(tc, magic), magic);
      const __m256 dist = _mm256_sub_ps(half, _mm256_and_ps(_mm256_sub_ps(tc, q), abs_mask));
      const int decided = _mm256_movemask_ps(_mm256_cmp_ps(dist, d, _CMP_GT_OQ));
      _mm256_maskstore_ps(noisy + row + j, k, nz);
      for (unsigned open = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(k)) & ~decided); open != 0;
           open &= open - 1)
        undecided[count++] = static_cast<std::uint32_t>(row + j + std::countr_zero(open));
    }
  }
  return count;
}

/// avx512::noisy_for_adc on this tier: approx_normal_fill, noisy_codes_rows,
/// and for the undecided currents their exact normal and noisy value.
inline void noisy_for_adc(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const adc_readout& a,
                          const float* current, const float* variance, std::int64_t M, std::int64_t C, float* noisy,
                          float* z, std::uint32_t* undecided, const variance_bound* approx) {
  approx_normal_fill(seed, stream, first, M * C, z);
  const std::int64_t count = noisy_codes_rows(a, current, variance, z, M, C, noisy, undecided,
                                              approx ? approx->rel : 0.0f, approx ? approx->abs : 0.0f);
  exact_undecided<normals_at, add_read_noise>(seed, stream, first, current, variance, undecided, count, noisy, approx);
}

/// portable::bf16_round compiled for AVX2.
__attribute__((target("avx2"))) inline float bf16_round(const float* x, std::int64_t n, std::uint16_t* out) {
  return bf16_round_body(x, n, out);
}

/// portable::conv_chain_values with the hardware's FMA (also the AVX-512 tier's).
__attribute__((target("avx2,fma"))) inline void conv_chain_values(const thin_conv_geometry& g, const float* x,
                                                                  const float* w, const std::uint32_t* idx,
                                                                  std::int64_t count, float* out) {
  struct fused {
    float operator()(float a, float b, float c) const { return __builtin_fmaf(a, b, c); }
  };
  conv_chain_values_body(g, x, w, idx, count, out, fused{});
}

/// portable::chain_conv with the hardware's FMA.
__attribute__((target("avx2,fma"))) inline void chain_conv(const chain_conv_geometry& g, const float* x,
                                                           const float* w, float* out) {
  struct fused {
    float operator()(float a, float b, float c) const { return __builtin_fmaf(a, b, c); }
  };
  chain_conv_body(g, x, w, out, fused{});
}

/// portable::dac_codes compiled for AVX2 (no FMA in the target: nothing fuses).
__attribute__((target("avx2"))) inline void dac_codes(const float* src, std::int64_t n, float inv_scale, float steps,
                                                      float* dst, float* squares) {
  dac_codes_body(src, n, inv_scale, steps, dst, squares);
}

/// portable::adc_rows compiled for AVX2 (no FMA in the target: nothing fuses).
__attribute__((target("avx2"))) inline void adc_rows(const adc_readout& a, const float* current, std::int64_t M,
                                                     std::int64_t C, const float* xscale, float xscale_all, float place,
                                                     float* y, std::int64_t ldy, bool overwrite) {
  adc_rows_body(a, current, M, C, xscale, xscale_all, place, y, ldy, overwrite);
}

RIMC_SIMD_WARNINGS_ON

}  // namespace rimc::detail::avx2
#endif
