#pragma once
/// \file
/// The portable forms of rimc's vector kernels: plain C++ that any compiler
/// and CPU run, and the reference the AVX2 and AVX-512 forms match bitwise.
/// Each loop spells out the rounding it means: std::fma where the vector
/// forms fuse, RIMC_NO_CONTRACT where they do not (so a compiler allowed to
/// contract, e.g. with -march=native, cannot fuse a product into a sum).
/// Internal: include <rimc/kernels/arch/dispatch.hpp>.

#ifndef RIMC_ARCH_INTERNAL
#error "rimc/kernels/arch/portable.hpp is internal: include <rimc/kernels/arch/dispatch.hpp>"
#endif

#include <rimc/core/random.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace rimc::detail {

/// dispatch.hpp's add_read_noise, written so that GCC vectorises it (integer
/// clamp, sqrt_positive instead of a libm call); the AVX2 form compiles it
/// for AVX2 (no FMA in that target, so nothing fuses).
#if defined(__GNUC__) || defined(__clang__)
[[gnu::always_inline]]
#endif
inline void add_read_noise_body(const float* current, const float* variance, const float* z, std::int64_t n,
                                float* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    auto vb = std::bit_cast<std::uint32_t>(variance[i]);
    vb &= ~static_cast<std::uint32_t>(static_cast<std::int32_t>(vb) >> 31);
    out[i] = current[i] + sqrt_positive(std::bit_cast<float>(vb) + std::numeric_limits<float>::min()) * z[i];
  }
}

/// dispatch.hpp's dac_codes (std::clamp, the rounding and a division: all vectorise).
#if defined(__GNUC__) || defined(__clang__)
[[gnu::always_inline]]
#endif
inline void dac_codes_body(const float* src, std::int64_t n, float inv_scale, float steps, float* dst,
                           float* squares) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = quantise_unit(src[i], inv_scale, steps);
  if (squares)
    for (std::int64_t i = 0; i < n; ++i) squares[i] = dst[i] * dst[i];
}

/// dispatch.hpp's adc_rows, branch-free per element so that it vectorises.
#if defined(__GNUC__) || defined(__clang__)
[[gnu::always_inline]]
#endif
inline void adc_rows_body(const adc_readout& a, const float* current, std::int64_t M, std::int64_t C,
                          const float* xscale, float xscale_all, float place, float* y, std::int64_t ldy,
                          bool overwrite) {
  const float* f = a.factor;
  const float steps = a.steps;
  for (std::int64_t m = 0; m < M; ++m) {
    const float xs = (xscale ? xscale[m] : xscale_all) * place;
    const float* cm = current + m * C;
    float* ym = y + m * ldy;
    if (overwrite) std::fill_n(ym, C, 0.0f);
    if (steps > 0 && a.to_steps) {
      const float* to = a.to_steps;
      const float* lsb = a.lsb;
      for (std::int64_t j = 0; j < C; ++j) {
        const float code = std::min(std::max(cm[j] * to[j], -steps), steps);
        ym[j] += xs * f[j] * (round_half_even(code) * lsb[j]);
      }
    } else if (steps > 0) {
      const float to = a.to_all, lsb = a.lsb_all;
      for (std::int64_t j = 0; j < C; ++j) {
        const float code = std::min(std::max(cm[j] * to, -steps), steps);
        ym[j] += xs * f[j] * (round_half_even(code) * lsb);
      }
    } else {
      for (std::int64_t j = 0; j < C; ++j) ym[j] += xs * f[j] * cm[j];
    }
    if (a.gain) {
      if (a.bias) {
        for (std::int64_t j = 0; j < C; ++j) ym[j] = ym[j] * a.gain[j] + a.bias[j];
      } else {
        for (std::int64_t j = 0; j < C; ++j) ym[j] = ym[j] * a.gain[j] + 0.0f;
      }
      if (a.relu)
        for (std::int64_t j = 0; j < C; ++j) ym[j] = std::max(ym[j], 0.0f);
    }
  }
}

}  // namespace rimc::detail

namespace rimc::detail::portable {

/// Rows [p0, p1) of y = ((u sbt) + z) ⊙ gamma + shift, z = z0 (- unbias when
/// given), u [P, r], sbt [r, O], z0 [P, O] row-major, y pointing at row p0:
/// per element an FMA chain over j from zero, then each epilogue step
/// rounded on its own; with `relu`, max(y, 0) as MAXPS computes it (NaN and
/// -0 give +0).
inline void combine_rows(const float* u, const float* sbt, const float* z0, const float* unbias, const float* gamma,
                         const float* shift, std::int64_t r, std::int64_t O, std::int64_t p0, std::int64_t p1, float* y,
                         bool relu) {
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* up = u + p * r;
    const float* zp = z0 + p * O;
    float* yp = y + (p - p0) * O;
    for (std::int64_t o = 0; o < O; ++o) {
      float acc = std::fma(up[0], sbt[o], 0.0f);
      for (std::int64_t j = 1; j < r; ++j) acc = std::fma(up[j], sbt[j * O + o], acc);
      const float z = unbias ? zp[o] - unbias[o] : zp[o];
      acc = acc + z;
      acc = acc * gamma[o];
      RIMC_NO_CONTRACT(acc);
      acc = acc + shift[o];
      if (relu) acc = acc > 0.0f ? acc : 0.0f;
      yp[o] = acc;
    }
  }
}

/// Sum of (y - t)^2 over [0, len) in double, element i in lane i mod 8, the
/// lanes added as ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)); with g, also
/// g = float(2 (y - t) / n).
inline double mse_block(const float* y, const float* t, float* g, std::int64_t len, double n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::int64_t i = 0; i < len; ++i) {
    const double d = double(y[i]) - double(t[i]);
    double dd = d * d;
    RIMC_NO_CONTRACT(dd);
    lane[i & 7] += dd;
    if (g) g[i] = static_cast<float>(2.0 * d / n);
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/// Columns [c0, c1) of out [r, N] = a [r, K] b [K, N] (row strides in the
/// refs, ldo for out): each element an FMA chain over k from zero. b is read
/// row by row, a strip of columns at a time.
inline void rows_times_matrix(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t c0,
                              std::int64_t c1, float* out, std::int64_t ldo) {
  constexpr std::int64_t strip = 64;
  float acc[strip];
  for (std::int64_t c = c0; c < c1; c += strip) {
    const std::int64_t w = std::min(strip, c1 - c);
    for (std::int64_t j = 0; j < r; ++j) {
      std::fill_n(acc, w, 0.0f);
      const float* aj = a.data + j * a.ld;
      for (std::int64_t k = 0; k < K; ++k) {
        const float s = aj[k];
        const float* bk = b.data + k * b.ld + c;
        for (std::int64_t q = 0; q < w; ++q) acc[q] = std::fma(s, bk[q], acc[q]);
      }
      std::copy_n(acc, w, out + j * ldo + c);
    }
  }
}

/// out[i * r + j] = sum_k x[i, k] a[j, k] in double, term k in lane k mod 8,
/// the lanes added as in mse_block. A product of two floats is exact in
/// double, so fusing it into the sum changes nothing.
inline void row_dots_f64(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r, std::int64_t K, double* out) {
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < r; ++j) {
      double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* xi = x.data + i * x.ld;
      const float* aj = a.data + j * a.ld;
      for (std::int64_t k = 0; k < K; ++k) lane[k & 7] += static_cast<double>(xi[k]) * static_cast<double>(aj[k]);
      out[i * r + j] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    }
}

/// Adam's update of n elements without weight decay (float moments, double step).
inline void adam_update(float* p, const float* g, float* m, float* v, std::int64_t n, const adam_step_consts& c) {
  for (std::int64_t k = 0; k < n; ++k) {
    const double gk = g[k];
    float m1 = c.b1 * m[k], m2 = c.omb1 * static_cast<float>(gk);
    RIMC_NO_CONTRACT(m1);
    RIMC_NO_CONTRACT(m2);
    m[k] = m1 + m2;
    float v1 = c.b2 * v[k], v2 = c.omb2 * static_cast<float>(gk * gk);
    RIMC_NO_CONTRACT(v1);
    RIMC_NO_CONTRACT(v2);
    v[k] = v1 + v2;
    const double mhat = m[k] / c.c1, vhat = v[k] / c.c2;
    p[k] = static_cast<float>(p[k] - c.lr * mhat / (std::sqrt(vhat) + c.eps));
  }
}

/// Lanes l + (l + 8), then + 4, + 2, + 1 of 16: the AVX-512 and AVX2 forms' horizontal sum.
inline float lane_tree16(const float* v) {
  float s8[8], s4[4];
  for (int l = 0; l < 8; ++l) s8[l] = v[l] + v[l + 8];
  for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
  const float s2a = s4[0] + s4[2], s2b = s4[1] + s4[3];
  return s2a + s2b;
}

/// Output pixels [p0, p1) of u = conv(x, A) (see dispatch.hpp's thin_conv_rows).
inline void thin_conv_rows(const thin_conv_geometry& g, const float* x, const float* a, std::int64_t p0,
                           std::int64_t p1, float* u) {
  for (std::int64_t j0 = 0; j0 < g.r; j0 += 4) {
    const std::int64_t jn = std::min<std::int64_t>(4, g.r - j0);
    thin_conv_pixel at(g, p0);
    for (std::int64_t p = p0; p < p1; ++p, at.next(g)) {
      float acc[4][16] = {};
      for (std::int64_t kh = 0; kh < g.KH; ++kh) {
        for (std::int64_t kw = 0; kw < g.KW; ++kw) {
          const float* xp = thin_conv_tap(g, x, at, kh, kw);
          if (!xp) continue;
          const float* ap = a + ((kh * g.KW + kw) * g.r + j0) * g.Cp;
          for (std::int64_t b = 0; b < g.Cp; b += 16)
            for (std::int64_t l = 0; l < 16; ++l) {
              const float xv = b + l < g.C ? xp[b + l] : 0.0f;
              for (std::int64_t j = 0; j < jn; ++j) acc[j][l] = std::fma(xv, ap[j * g.Cp + b + l], acc[j][l]);
            }
        }
      }
      for (std::int64_t j = 0; j < jn; ++j) u[p * g.r + j0 + j] = lane_tree16(acc[j]);
    }
  }
}

/// Adds output pixels [p0, p1)'s weight gradient to acc (see dispatch.hpp's thin_conv_weight_rows).
inline void thin_conv_weight_rows(const thin_conv_geometry& g, const float* x, const float* du, std::int64_t p0,
                                  std::int64_t p1, float* acc) {
  thin_conv_pixel at(g, p0);
  for (std::int64_t p = p0; p < p1; ++p, at.next(g)) {
    for (std::int64_t kh = 0; kh < g.KH; ++kh) {
      for (std::int64_t kw = 0; kw < g.KW; ++kw) {
        const float* xp = thin_conv_tap(g, x, at, kh, kw);
        if (!xp) continue;
        float* gp = acc + (kh * g.KW + kw) * g.r * g.Cp;
        for (std::int64_t j = 0; j < g.r; ++j) {
          const float d = du[p * g.r + j];
          for (std::int64_t c = 0; c < g.Cp; ++c) {
            const float xv = c < g.C ? xp[c] : 0.0f;
            gp[j * g.Cp + c] = std::fma(d, xv, gp[j * g.Cp + c]);
          }
        }
      }
    }
  }
}

/// Rows [p0, p1) of DoRA's backward pass (see dispatch.hpp's dora_backward_rows).
inline void dora_backward_rows(const float* g, const float* z, const float* bias, const float* u, const float* w_t,
                               std::int64_t O, std::int64_t r, std::int64_t p0, std::int64_t p1, double* c, float* gtu,
                               float* ghb) {
  const std::int64_t O16 = (O + 15) / 16 * 16;
  for (std::int64_t p = p0; p < p1; ++p) {
    const float* gr = g + p * O;
    const float* zr = z + p * O;
    for (std::int64_t o = 0; o < O; ++o) {
      const float zo = bias ? zr[o] - bias[o] : zr[o];
      float prod = gr[o] * zo;
      RIMC_NO_CONTRACT(prod);
      c[o] += static_cast<double>(prod);
    }
    for (std::int64_t j = 0; j < r; ++j) {
      const float uj = u[p * r + j];
      float* tj = gtu + j * O;
      const float* wj = w_t + j * O;
      float lane[16] = {};
      for (std::int64_t o = 0; o < O16; ++o) {
        const float go = o < O ? gr[o] : 0.0f, wo = o < O ? wj[o] : 0.0f;
        if (o < O) tj[o] = std::fma(go, uj, tj[o]);
        lane[o & 15] = std::fma(go, wo, lane[o & 15]);
      }
      ghb[p * r + j] = lane_tree16(lane);
    }
  }
}

/// dispatch.hpp's add_read_noise.
inline void add_read_noise(const float* current, const float* variance, const float* z, std::int64_t n, float* out) {
  add_read_noise_body(current, variance, z, n, out);
}

/// dispatch.hpp's dac_codes.
inline void dac_codes(const float* src, std::int64_t n, float inv_scale, float steps, float* dst, float* squares) {
  dac_codes_body(src, n, inv_scale, steps, dst, squares);
}

/// dispatch.hpp's normals_at: normal_from_bits of word i % 4 of Philox block
/// i / 4 for each index i, one at a time.
inline void normals_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const std::uint32_t* offsets,
                       std::int64_t n, float* out) {
  const counter_rng rng(seed, stream);
  for (std::int64_t k = 0; k < n; ++k) {
    const std::uint64_t i = first + offsets[k];
    out[k] = normal_from_bits(rng.bits(i / 4)[i % 4]);
  }
}

/// dispatch.hpp's adc_rows.
inline void adc_rows(const adc_readout& a, const float* current, std::int64_t M, std::int64_t C, const float* xscale,
                     float xscale_all, float place, float* y, std::int64_t ldy, bool overwrite) {
  adc_rows_body(a, current, M, C, xscale, xscale_all, place, y, ldy, overwrite);
}

/// Standard normals for indices [first, first + n) of (seed, stream) (rimc::detail::normal_fill_body).
inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, std::int64_t n, float* out) {
  normal_fill_body(seed, stream, first, n, out);
}

/// dispatch.hpp's noisy_for_adc: every current's exact noisy value (with
/// approximate variances, every current's exact variance first).
inline void noisy_for_adc(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const adc_readout& /*a*/,
                          const float* current, const float* variance, std::int64_t M, std::int64_t C, float* noisy,
                          float* z, std::uint32_t* undecided, const variance_bound* approx) {
  if (approx) variance = all_exact_variances(*approx, M * C, undecided);
  normal_fill(seed, stream, first, M * C, z);
  add_read_noise(current, variance, z, M * C, noisy);
}

/// dispatch.hpp's bf16_round.
inline float bf16_round(const float* x, std::int64_t n, std::uint16_t* out) { return bf16_round_body(x, n, out); }

/// dispatch.hpp's conv_chain_values (std::fma: one rounding, in software where the CPU has no FMA).
inline void conv_chain_values(const thin_conv_geometry& g, const float* x, const float* w, const std::uint32_t* idx,
                              std::int64_t count, float* out) {
  conv_chain_values_body(g, x, w, idx, count, out, [](float a, float b, float c) { return std::fma(a, b, c); });
}

/// dispatch.hpp's chain_conv (std::fma: one rounding).
inline void chain_conv(const chain_conv_geometry& g, const float* x, const float* w, float* out) {
  chain_conv_body(g, x, w, out, [](float a, float b, float c) { return std::fma(a, b, c); });
}

}  // namespace rimc::detail::portable
