#pragma once
/// \file
/// The one entry point to rimc's vector kernels: each function here runs
/// the form of its kernel for active_isa() (portable, AVX2 + FMA or
/// AVX-512; see isa.hpp), and every form gives the same bits. Nothing
/// outside kernels/arch/ includes the per-tier files or calls a tier's
/// function directly; kernels/combine.hpp, mse.hpp, small_gemm.hpp and
/// adapt/optim.hpp build on these.

#include <rimc/kernels/arch/isa.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

namespace rimc::detail {

/// A row-major matrix view: element (i, j) at data[i * ld + j].
struct matrix_ref {
  const float* data = nullptr;
  std::int64_t ld = 0;
};

/// The constants of one Adam step (see rimc::adam::step).
struct adam_step_consts {
  float b1, b2, omb1, omb2;  ///< beta1, beta2, 1 - beta1, 1 - beta2 (float)
  double c1, c2, lr, eps;    ///< bias corrections 1 - beta^t, step size, epsilon
};

/// How a crossbar's column currents become outputs (adc_rows): per column j
/// of a row, code = min(max(c_j to_j, -steps), steps) rounded half to even,
/// y_j += (xs f_j) (code lsb_j) with the ADC (to_j, lsb_j per column, or the
/// tile's to_all, lsb_all), y_j += (xs f_j) c_j without; after the last
/// partial sum (gain set) y_j = y_j gain_j + bias_j (+ 0 without bias), then
/// max(y_j, 0) with relu. Every product and sum rounded on its own.
struct adc_readout {
  const float* factor = nullptr;    ///< [C] column factors f
  float steps = 0;                  ///< ADC steps per side; 0: no ADC
  const float* to_steps = nullptr;  ///< [C] per-column current-to-steps factors, or null: to_all
  const float* lsb = nullptr;       ///< [C] per-column step sizes, or null: lsb_all
  float to_all = 1, lsb_all = 1;    ///< the tile's ADC factors
  const float* gain = nullptr;      ///< [C] epilogue gain, or null: no epilogue
  const float* bias = nullptr;      ///< [C] epilogue bias, or null
  bool relu = false;                ///< ReLU after the epilogue
};

/// A thin convolution's geometry for the direct kernels: input channels-last
/// [N, H, W, C], output [N, OH, OW, r], a KH x KW window with stride,
/// padding and dilation (h, w); Cp is C rounded up to a multiple of 16.
struct thin_conv_geometry {
  std::int64_t N = 0, H = 0, W = 0, C = 0, Cp = 0, OH = 0, OW = 0, KH = 0, KW = 0, r = 0;
  std::int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
};

/// A thin convolution in bf16 pairs (pair_conv; analog_conv2d's read-variance
/// estimate below 8 input channels per tile): the input is bf16 channels-last
/// with its padding written out (pair_conv_input: Hp padded rows of `row`
/// values per image), so that one kernel row of a window, KW pixels of C
/// channels, is KW C consecutive values, taken two at a time (`pairs` =
/// ceil(KW C / 2) dot products of two per kernel row; the odd one out meets
/// a zero weight). Output pixel (n, oh, ow), kernel row kh, reads from
/// (n Hp + oh sh + kh dh) row + ow sw C; the output is [N, OH, OW, cols] f32.
struct pair_conv_geometry {
  std::int64_t N = 0, Hp = 0, row = 0, C = 0, OH = 0, OW = 0, KH = 0, KW = 0, pairs = 0, sh = 1, sw = 1, dh = 1,
               cols = 0;
};

/// A thin convolution in f32, each output one FMA chain over its image taps
/// in the order of conv_chain_values (chain_conv; analog_conv2d's column
/// currents below 8 input channels per tile): images of H x W x C, padded by
/// ph rows and pw pixels; the input is f32 channels-last with that padding
/// written out (chain_conv_input: Hp = H + 2ph padded rows of `row` = (W +
/// 2pw) C values per image), so that one kernel row of a window is `taps` =
/// KW C consecutive values. Output pixel (n, oh, ow), kernel row kh, reads
/// from (n Hp + oh sh + kh dh) row + ow sw C; the output is [N, OH, OW, cols].
struct chain_conv_geometry {
  std::int64_t N = 0, H = 0, W = 0, C = 0, ph = 0, pw = 0, Hp = 0, row = 0, KH = 0, KW = 0, taps = 0, OH = 0, OW = 0;
  std::int64_t sh = 1, sw = 1, dh = 1, cols = 0;
};

/// The taps of output pixel (oh, ow) that read the image, not its padding: kernel rows [kh0,
/// kh1) and columns [kw0, kw1) (chain_conv skips the others, as oneDNN's f32 convolution does).
struct chain_conv_taps {
  std::int64_t kh0, kh1, kw0, kw1;
  chain_conv_taps(const chain_conv_geometry& g, std::int64_t oh, std::int64_t ow) noexcept {
    // padded row oh sh + kh dh is image row oh sh + kh dh - ph; padded column ow sw + kw is ow sw + kw - pw
    const std::int64_t top = g.ph - oh * g.sh, bottom = g.H + g.ph - oh * g.sh;  // kh dh must lie in [top, bottom)
    kh0 = top <= 0 ? 0 : (top + g.dh - 1) / g.dh;
    kh1 = bottom <= 0 ? 0 : std::min(g.KH, (bottom + g.dh - 1) / g.dh);
    kw0 = std::max<std::int64_t>(0, g.pw - ow * g.sw);
    kw1 = std::min(g.KW, g.W + g.pw - ow * g.sw);
  }
};

/// chain_conv's loop on any tier: per output, acc = fma(x, w, acc) from +0
/// over the kernel rows, then the row's KW C values in order (kw, then
/// channel c), skipping the taps in the padding (conv_chain_values' order;
/// skipping matters only where acc is -0). w is chain_conv_weights' packing.
template <class Fma>
[[gnu::always_inline]] inline void chain_conv_body(const chain_conv_geometry& g, const float* x, const float* w,
                                                   float* out, Fma fma) {
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t oh = 0; oh < g.OH; ++oh)
      for (std::int64_t ow = 0; ow < g.OW; ++ow) {
        const chain_conv_taps t(g, oh, ow);
        const float* xw = x + (n * g.Hp + oh * g.sh) * g.row + ow * g.sw * g.C;
        float* o = out + ((n * g.OH + oh) * g.OW + ow) * g.cols;
        for (std::int64_t j = 0; j < g.cols; ++j) {
          float acc = 0.0f;
          for (std::int64_t kh = t.kh0; kh < t.kh1; ++kh) {
            const float* xr = xw + kh * g.dh * g.row;
            const float* wr = w + ((j / 16) * g.KH + kh) * g.taps * 16 + j % 16;
            for (std::int64_t e = t.kw0 * g.C; e < t.kw1 * g.C; ++e) acc = fma(xr[e], wr[16 * e], acc);
          }
          o[j] = acc;
        }
      }
}

/// The (n, oh, ow) of output pixel p, stepped to p + 1 by next() without divisions.
struct thin_conv_pixel {
  std::int64_t n = 0, oh = 0, ow = 0;
  thin_conv_pixel(const thin_conv_geometry& g, std::int64_t p)
      : n(p / (g.OH * g.OW)), oh(p % (g.OH * g.OW) / g.OW), ow(p % g.OW) {}
  void next(const thin_conv_geometry& g) noexcept {
    if (++ow == g.OW) {
      ow = 0;
      if (++oh == g.OH) {
        oh = 0;
        ++n;
      }
    }
  }
};

/// Where tap (kh, kw) of output pixel `at` reads the channels-last input x,
/// or null when the tap falls in the padding (the column is not checked when
/// the caller knows it is in bounds: thin_conv_walk's wide runs).
inline const float* thin_conv_tap(const thin_conv_geometry& g, const float* x, const thin_conv_pixel& at,
                                  std::int64_t kh, std::int64_t kw, bool column_in_bounds = false) noexcept {
  const std::int64_t ih = at.oh * g.sh - g.ph + kh * g.dh, iw = at.ow * g.sw - g.pw + kw * g.dw;
  if (ih < 0 || ih >= g.H || (!column_in_bounds && (iw < 0 || iw >= g.W))) return nullptr;
  return x + ((at.n * g.H + ih) * g.W + iw) * g.C;
}

/// Walks output pixels [p0, p1) in order: run(at, p, true) for Q pixels of one
/// output row whose every tap reads an in-bounds column (the vector forms
/// then keep Q pixels' accumulators in flight), run(at, p, false) for one
/// pixel elsewhere.
template <int Q, class F>
inline void thin_conv_walk(const thin_conv_geometry& g, std::int64_t p0, std::int64_t p1, F&& run) {
  thin_conv_pixel at(g, p0);
  for (std::int64_t p = p0; p < p1;) {
    const bool wide = Q > 1 && p + Q <= p1 && at.ow + Q <= g.OW && at.ow * g.sw - g.pw >= 0 &&
                      (at.ow + Q - 1) * g.sw - g.pw + (g.KW - 1) * g.dw < g.W;
    run(at, p, wide);
    const int q = wide ? Q : 1;
    for (int i = 0; i < q; ++i) at.next(g);
    p += q;
  }
}

/// Approximate read variances for noisy_for_adc. Each given variance va
/// stands for an exact one v with |sqrt(v + FLT_MIN) - sqrt(va + FLT_MIN)| <=
/// rel sqrt(va + FLT_MIN) + abs; `exact(idx, count, out)` writes the exact
/// variances of the `count` listed currents (indices m C + j) to out.
struct variance_bound {
  float rel = 0;  ///< the relative part of the bound on the root
  float abs = 0;  ///< its absolute part
  std::function<void(const std::uint32_t*, std::int64_t, float*)> exact;  ///< the exact variances of listed currents
};

/// The last step of a tier's noisy_for_adc: the exact normal (the tier's
/// normals_at) and exact noisy value (its add_read_noise) of each of the
/// `count` undecided currents (indices into current, variance and noisy);
/// with approximate variances, from their exact variances (approx->exact).
template <auto normals_at_fn, auto add_read_noise_fn>
inline void exact_undecided(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const float* current,
                            const float* variance, const std::uint32_t* undecided, std::int64_t count, float* noisy,
                            const variance_bound* approx = nullptr) {
  thread_local std::vector<float> exact;
  if (approx && count > 0) {
    exact.resize(static_cast<std::size_t>(count));
    approx->exact(undecided, count, exact.data());
  }
  for (std::int64_t i = 0; i < count; i += 16) {
    const auto len = std::min<std::int64_t>(16, count - i);
    alignas(64) float zz[16], cc[16], vv[16];
    normals_at_fn(seed, stream, first, undecided + i, len, zz);
    for (std::int64_t l = 0; l < len; ++l) {
      cc[l] = current[undecided[i + l]];
      vv[l] = approx ? exact[static_cast<std::size_t>(i + l)] : variance[undecided[i + l]];
    }
    add_read_noise_fn(cc, vv, zz, len, cc);
    for (std::int64_t l = 0; l < len; ++l) noisy[undecided[i + l]] = cc[l];
  }
}

/// The exact variances of all n currents (approx.exact over indices 0..n-1, written to idx, n
/// of scratch), in a buffer of this thread's that the next call reuses.
inline const float* all_exact_variances(const variance_bound& approx, std::int64_t n, std::uint32_t* idx) {
  thread_local std::vector<float> exact;
  exact.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) idx[i] = static_cast<std::uint32_t>(i);
  approx.exact(idx, n, exact.data());
  return exact.data();
}

/// conv_chain_values' loop: for each listed output (index p r + o: pixel p
/// of g's output, channel o), one chain acc = fma(x, w, acc) from +0 over the
/// taps (kh, kw) in row-major order and, within a tap, the input channels in
/// order; w is output-major [r][KH][KW][C]. Taps in the padding read zeros,
/// which leave a chain of non-negative terms as it was. Eight chains in
/// flight: first those whose windows lie inside the image (each tap at a
/// fixed offset from the window's corner, no bounds to check), then the
/// others; each output's chain is the same either way.
template <class Fma>
[[gnu::always_inline]] inline void conv_chain_values_body(const thin_conv_geometry& g, const float* x, const float* w,
                                   const std::uint32_t* idx, std::int64_t count, float* out, Fma fma) {
  constexpr int L = 8;
  const std::int64_t K = g.KH * g.KW * g.C, taps = g.KH * g.KW;
  const std::int64_t span_h = (g.KH - 1) * g.dh, span_w = (g.KW - 1) * g.dw;
  thread_local std::vector<float> zeros;
  if (static_cast<std::int64_t>(zeros.size()) < g.C) zeros.assign(static_cast<std::size_t>(g.C), 0.0f);
  thread_local std::vector<std::int64_t> tap_offset, corner;  // per tap; per listed output (its window's corner)
  thread_local std::vector<std::uint32_t> inside, border;      // positions in idx
  tap_offset.resize(static_cast<std::size_t>(taps));
  for (std::int64_t kh = 0; kh < g.KH; ++kh)
    for (std::int64_t kw = 0; kw < g.KW; ++kw)
      tap_offset[static_cast<std::size_t>(kh * g.KW + kw)] = (kh * g.dh * g.W + kw * g.dw) * g.C;
  // Where each listed output's window starts: (n, ih0, iw0) of output pixel p = id / r.
  const auto window = [&g](std::uint32_t id, std::int64_t& n, std::int64_t& ih0, std::int64_t& iw0) {
    const std::int64_t p = id / g.r, pix = p % (g.OH * g.OW);
    n = p / (g.OH * g.OW);
    ih0 = pix / g.OW * g.sh - g.ph;
    iw0 = pix % g.OW * g.sw - g.pw;
  };
  corner.resize(static_cast<std::size_t>(count));
  inside.clear();
  border.clear();
  for (std::int64_t i = 0; i < count; ++i) {
    std::int64_t n = 0, ih0 = 0, iw0 = 0;
    window(idx[i], n, ih0, iw0);
    const bool in = ih0 >= 0 && ih0 + span_h < g.H && iw0 >= 0 && iw0 + span_w < g.W;
    corner[static_cast<std::size_t>(i)] = ((n * g.H + ih0) * g.W + iw0) * g.C;  // used only when `in`
    (in ? inside : border).push_back(static_cast<std::uint32_t>(i));
  }
  for (std::size_t i = 0; i < inside.size(); i += L) {
    const auto len = static_cast<int>(std::min<std::size_t>(L, inside.size() - i));
    std::int64_t c0[L];
    const float* wrow[L];
    float acc[L];
    for (int l = 0; l < L; ++l) {
      const std::uint32_t q = inside[i + static_cast<std::size_t>(std::min(l, len - 1))];
      c0[l] = corner[q];
      wrow[l] = w + idx[q] % g.r * K;
      acc[l] = 0.0f;
    }
    for (std::int64_t t = 0; t < taps; ++t) {
      const std::int64_t xo = tap_offset[static_cast<std::size_t>(t)], wo = t * g.C;
      for (std::int64_t c = 0; c < g.C; ++c)
        for (int l = 0; l < L; ++l) acc[l] = fma(x[c0[l] + xo + c], wrow[l][wo + c], acc[l]);
    }
    for (int l = 0; l < len; ++l) out[inside[i + static_cast<std::size_t>(l)]] = acc[l];
  }
  for (std::size_t i = 0; i < border.size(); i += L) {
    const auto len = static_cast<int>(std::min<std::size_t>(L, border.size() - i));
    std::int64_t n[L], ih0[L], iw0[L];
    const float* wrow[L];
    float acc[L];
    for (int l = 0; l < L; ++l) {
      const std::uint32_t id = idx[border[i + static_cast<std::size_t>(std::min(l, len - 1))]];
      window(id, n[l], ih0[l], iw0[l]);
      wrow[l] = w + id % g.r * K;
      acc[l] = 0.0f;
    }
    for (std::int64_t kh = 0; kh < g.KH; ++kh)
      for (std::int64_t kw = 0; kw < g.KW; ++kw) {
        const float* xp[L];
        const float* wp[L];
        for (int l = 0; l < L; ++l) {
          const std::int64_t ih = ih0[l] + kh * g.dh, iw = iw0[l] + kw * g.dw;
          xp[l] = ih < 0 || ih >= g.H || iw < 0 || iw >= g.W ? zeros.data() : x + ((n[l] * g.H + ih) * g.W + iw) * g.C;
          wp[l] = wrow[l] + (kh * g.KW + kw) * g.C;
        }
        for (std::int64_t c = 0; c < g.C; ++c)
          for (int l = 0; l < L; ++l) acc[l] = fma(xp[l][c], wp[l][c], acc[l]);
      }
    for (int l = 0; l < len; ++l) out[border[i + static_cast<std::size_t>(l)]] = acc[l];
  }
}

/// bf16_round's loop: out[i] = the bf16 bit pattern nearest x[i] (ties to
/// even; a NaN may become infinity or -0, a value that rounds past the largest bf16
/// becomes infinity); returns the largest x[i] >= +0 (as bits: NaN counts
/// as larger than infinity), +0 when there is none.
[[gnu::always_inline]] inline float bf16_round_body(const float* x, std::int64_t n, std::uint16_t* out) noexcept {
  std::int32_t top = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto b = std::bit_cast<std::uint32_t>(x[i]);
    out[i] = static_cast<std::uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    top = std::max(top, static_cast<std::int32_t>(b));
  }
  return std::bit_cast<float>(top);
}

}  // namespace rimc::detail

/// Defined only while this header includes the per-tier files, which refuse to compile anywhere else.
#define RIMC_ARCH_INTERNAL 1
#include <rimc/kernels/arch/portable.hpp>
#include <rimc/kernels/arch/avx2.hpp>
#include <rimc/kernels/arch/avx512.hpp>
#undef RIMC_ARCH_INTERNAL

namespace rimc::detail {

/// Calls the form of a kernel for `tier`: `RIMC_ISA_CALL(tier, combine_rows, args...)`.
#if RIMC_HAVE_X86_DISPATCH
#define RIMC_ISA_CALL(tier, kernel, ...)                                 \
  (((tier) == ::rimc::isa_tier::avx512) ? ::rimc::detail::avx512::kernel(__VA_ARGS__) \
   : ((tier) == ::rimc::isa_tier::avx2) ? ::rimc::detail::avx2::kernel(__VA_ARGS__)   \
                                        : ::rimc::detail::portable::kernel(__VA_ARGS__))
#else
#define RIMC_ISA_CALL(tier, kernel, ...) ((void)(tier), ::rimc::detail::portable::kernel(__VA_ARGS__))
#endif

/// Rows [p0, p1) of an adapter's combination y = ((u sbt) + z) ⊙ gamma +
/// shift (z = z0, or z0 - unbias when unbias is given; then max(y, 0) with
/// `relu`); u [P, r], sbt [r, O], z0 [P, O] row-major; y points at row p0.
/// Per element an FMA chain over j from zero, then each epilogue step rounded.
///
/// Each kernel also has a form that takes the tier: callers that run blocks
/// inside an OpenMP region read active_isa() once before it, so that a bad
/// RIMC_MAX_ISA is reported as a value_error instead of escaping a parallel
/// region (which would terminate the process).
inline void combine_rows_block(const float* u, const float* sbt, const float* z0, const float* unbias,
                               const float* gamma, const float* shift, std::int64_t r, std::int64_t O, std::int64_t p0,
                               std::int64_t p1, float* y, bool relu, isa_tier tier) {
  RIMC_ISA_CALL(tier, combine_rows, u, sbt, z0, unbias, gamma, shift, r, O, p0, p1, y, relu);
}
/// The same on the active tier.
inline void combine_rows_block(const float* u, const float* sbt, const float* z0, const float* unbias,
                               const float* gamma, const float* shift, std::int64_t r, std::int64_t O, std::int64_t p0,
                               std::int64_t p1, float* y, bool relu) {
  combine_rows_block(u, sbt, z0, unbias, gamma, shift, r, O, p0, p1, y, relu, active_isa());
}

/// Sum of (y - t)^2 over [0, len) in double (8 lanes, fixed order); with g, g = float(2 (y - t) / n).
[[nodiscard]] inline double mse_block(const float* y, const float* t, float* g, std::int64_t len, double n,
                                      isa_tier tier) {
  return RIMC_ISA_CALL(tier, mse_block, y, t, g, len, n);
}
/// The same on the active tier.
[[nodiscard]] inline double mse_block(const float* y, const float* t, float* g, std::int64_t len, double n) {
  return mse_block(y, t, g, len, n, active_isa());
}

/// Columns [c0, c1) of out [r, N] = a [r, K] b [K, N]: per element an FMA chain over k from zero.
inline void rows_times_matrix_cols(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t c0,
                                   std::int64_t c1, float* out, std::int64_t ldo, isa_tier tier) {
  RIMC_ISA_CALL(tier, rows_times_matrix, a, r, K, b, c0, c1, out, ldo);
}
/// The same on the active tier.
inline void rows_times_matrix_cols(matrix_ref a, std::int64_t r, std::int64_t K, matrix_ref b, std::int64_t c0,
                                   std::int64_t c1, float* out, std::int64_t ldo) {
  rows_times_matrix_cols(a, r, K, b, c0, c1, out, ldo, active_isa());
}

/// out[i * r + j] = sum_k x[i, k] a[j, k] in double (8 lanes, fixed order).
inline void row_dots_f64(matrix_ref x, std::int64_t n, matrix_ref a, std::int64_t r, std::int64_t K, double* out) {
  RIMC_ISA_CALL(active_isa(), row_dots_f64, x, n, a, r, K, out);
}

/// Output pixels [p0, p1) (flattened over n, oh, ow) of u [N OH OW, r] = conv(x, A)
/// with x channels-last and A packed as [KH KW][r][Cp] (zero beyond C). Per
/// output value, lane l of 16 accumulates the channels c = 16 b + l by one FMA
/// chain over the in-bounds taps in row-major order and, within a tap, over
/// the blocks b; the 16 lanes are then added as l + (l + 8), + 4, + 2, + 1.
inline void thin_conv_rows(const thin_conv_geometry& g, const float* x, const float* a, std::int64_t p0,
                           std::int64_t p1, float* u, isa_tier tier) {
  RIMC_ISA_CALL(tier, thin_conv_rows, g, x, a, p0, p1, u);
}

/// Adds the weight gradient of output pixels [p0, p1) to acc [KH KW][r][Cp]:
/// acc[t][j][c] = fma(du[p, j], x at tap t of p [c], acc[t][j][c]) for p in
/// order (lanes c >= C get products with 0).
inline void thin_conv_weight_rows(const thin_conv_geometry& g, const float* x, const float* du, std::int64_t p0,
                                  std::int64_t p1, float* acc, isa_tier tier) {
  RIMC_ISA_CALL(tier, thin_conv_weight_rows, g, x, du, p0, p1, acc);
}

/// Rows [p0, p1) of DoRA's backward pass over G = dL/dy [P, O] (row-major):
/// c[o] += double(G[p, o] z[p, o]) (z = z0, or z0 - bias when given; float
/// product), gtu[j O + o] = fma(G[p, o], u[p, j], gtu[j O + o]) for p in
/// order, and ghb[p r + j] = the sum over o of G[p, o] w_t[j O + o], lane
/// o mod 16 an FMA chain (zero beyond O), the lanes added as lane_tree16.
inline void dora_backward_rows(const float* g, const float* z, const float* bias, const float* u, const float* w_t,
                               std::int64_t O, std::int64_t r, std::int64_t p0, std::int64_t p1, double* c, float* gtu,
                               float* ghb, isa_tier tier) {
  RIMC_ISA_CALL(tier, dora_backward_rows, g, z, bias, u, w_t, O, r, p0, p1, c, gtu, ghb);
}

/// Adam's update of n elements without weight decay (float moments, double step).
inline void adam_update(float* p, const float* g, float* m, float* v, std::int64_t n, const adam_step_consts& c) {
  RIMC_ISA_CALL(active_isa(), adam_update, p, g, m, v, n, c);
}

/// out[i] = current[i] + sqrt_positive(max(variance[i], 0) + FLT_MIN) z[i]
/// for i in [0, n): the noisy column currents (variance's negative rounding
/// clamped to +0; the least normal float keeps the root finite at 0).
inline void add_read_noise(const float* current, const float* variance, const float* z, std::int64_t n, float* out,
                           isa_tier tier) {
  RIMC_ISA_CALL(tier, add_read_noise, current, variance, z, n, out);
}

/// out[k] = normal number first + offsets[k] of (seed, stream), k in [0, n):
/// the value normal_fill gives that index, for scattered indices; the same
/// bits on every tier.
inline void normals_at(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const std::uint32_t* offsets,
                       std::int64_t n, float* out, isa_tier tier) {
  RIMC_ISA_CALL(tier, normals_at, seed, stream, first, offsets, n, out);
}

/// Noisy column currents for an ADC: noisy [M, C] (row-major, as current and
/// variance) such that adc_rows with `a` (which must have an ADC) reads from
/// them, bit for bit, the codes it reads from the exact noisy currents
/// add_read_noise(current, variance, z) with z = normal_fill(seed, stream,
/// first, M C). The values may differ by tier, the codes do not: the
/// portable form computes the exact currents; the AVX2 and AVX-512 forms find
/// most codes from a cheaper approximate quantile and a bound on its error,
/// drawing exact normals only for the currents near a code's boundary (see
/// avx512::noisy_for_adc and docs/formulas.md, sec. 5). z and undecided are
/// scratch of M C elements.
///
/// With `approx`, the variances are approximate (see variance_bound): the
/// AVX2 and AVX-512 forms widen each current's bound by what the variance's
/// error can move it and ask approx->exact for the undecided currents' exact
/// variances; the portable form asks for every current's.
inline void noisy_for_adc(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, const adc_readout& a,
                          const float* current, const float* variance, std::int64_t M, std::int64_t C, float* noisy,
                          float* z, std::uint32_t* undecided, isa_tier tier, const variance_bound* approx = nullptr) {
  RIMC_ISA_CALL(tier, noisy_for_adc, seed, stream, first, a, current, variance, M, C, noisy, z, undecided, approx);
}

/// x [n] rounded to bf16 (bit patterns into out; see bf16_round_body);
/// returns the largest x[i] (NaN above infinity). The same bits on every tier.
inline float bf16_round(const float* x, std::int64_t n, std::uint16_t* out, isa_tier tier) {
  return RIMC_ISA_CALL(tier, bf16_round, x, n, out);
}

/// Whether pair_conv runs here: the AVX-512 tier on a CPU with AVX-512 BF16
/// dot products (the only form: what it computes is an estimate within a
/// stated bound, never a result, so it has no portable twin to agree with).
[[nodiscard]] inline bool pair_conv_available(isa_tier tier) noexcept {
#if RIMC_HAVE_X86_DISPATCH
  static const bool cpu = __builtin_cpu_supports("avx512bf16");
  return tier == isa_tier::avx512 && cpu;
#else
  (void)tier;
  return false;
#endif
}

/// The geometry of pair_conv for a channels-last source of N images H x W x C, an output of
/// OH x OW pixels and `cols` channels, a KH x KW window, stride (sh, sw), padding (ph, pw) and
/// dilation dh along the height (the width's must be 1).
[[nodiscard]] inline pair_conv_geometry pair_geometry(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                                                      std::int64_t OH, std::int64_t OW, std::int64_t cols,
                                                      std::int64_t KH, std::int64_t KW, std::int64_t sh,
                                                      std::int64_t sw, std::int64_t ph, std::int64_t pw,
                                                      std::int64_t dh) {
  return {.N = N, .Hp = H + 2 * ph, .row = (W + 2 * pw) * C + 2, .C = C, .OH = OH, .OW = OW, .KH = KH, .KW = KW,
          .pairs = (KW * C + 1) / 2, .sh = sh, .sw = sw, .dh = dh, .cols = cols};
}

/// pair_conv's input: x [N, H, W, C] (channels-last f32, non-negative: squared inputs) rounded to
/// bf16 (bf16_round's bits) inside zero padding of ph rows and pw pixels, in `out`; two more zeros
/// end each row (a last pair may read one value past its window). Returns bf16_round's largest x.
inline float pair_conv_input(const pair_conv_geometry& g, const float* x, std::int64_t H, std::int64_t W,
                             std::int64_t ph, std::int64_t pw, std::vector<std::uint16_t>& out, isa_tier tier) {
  out.assign(static_cast<std::size_t>(g.N * g.Hp * g.row), 0);
  float top = 0.0f;
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t h = 0; h < H; ++h) {
      const float m = RIMC_ISA_CALL(tier, bf16_round, x + (n * H + h) * W * g.C, W * g.C,
                                    out.data() + (n * g.Hp + h + ph) * g.row + pw * g.C);
      if (!std::isnan(top) && !(m <= top)) top = m;  // a NaN, once met, stays
    }
  return top;
}

/// pair_conv's weights from a [R, cols] matrix m (row r = channel KH KW + kh KW + kw, the
/// tile's rows), rounded to bf16: per block of 16 columns, kernel row and pair, 16 lanes of two
/// bf16 (the pair's first value in the low half); columns past `cols` and the odd one out are 0.
[[nodiscard]] inline std::vector<std::uint32_t> pair_conv_weights(const float* m, std::int64_t cols, std::int64_t C,
                                                                   std::int64_t KH, std::int64_t KW) {
  const std::int64_t pairs = (KW * C + 1) / 2, blocks = (cols + 15) / 16;
  std::vector<std::uint32_t> w(static_cast<std::size_t>(blocks * KH * pairs * 16), 0u);
  const auto half = [&](std::int64_t kh, std::int64_t e, std::int64_t j) -> std::uint32_t {
    if (e >= KW * C) return 0u;
    const float v = m[((e % C) * KH * KW + kh * KW + e / C) * cols + j];
    std::uint16_t b = 0;
    bf16_round_body(&v, 1, &b);
    return b;
  };
  for (std::int64_t cb = 0; cb < blocks; ++cb)
    for (std::int64_t kh = 0; kh < KH; ++kh)
      for (std::int64_t p = 0; p < pairs; ++p)
        for (std::int64_t l = 0; l < 16 && cb * 16 + l < cols; ++l)
          w[static_cast<std::size_t>(((cb * KH + kh) * pairs + p) * 16 + l)] =
              half(kh, 2 * p, cb * 16 + l) | half(kh, 2 * p + 1, cb * 16 + l) << 16;
  return w;
}

/// The convolution of pair_conv_input's x with pair_conv_weights' w into out [N, OH, OW, cols]:
/// bf16 products, exact in f32, summed in f32 by AVX-512 BF16 dot products (VDPBF16PS: inputs
/// below 2^-126 read as zero, sums below it flushed to zero), in an order of its own. An estimate:
/// for non-negative x and w it lies within bf16_variance_bound's terms of the f32 convolution of
/// the unrounded values (docs/formulas.md, sec. 5). Only where pair_conv_available(tier).
inline void pair_conv(const pair_conv_geometry& g, const std::uint16_t* x, const std::uint32_t* w, float* out,
                      isa_tier tier) {
  if (!pair_conv_available(tier)) throw value_error("pair_conv: this CPU or tier has no AVX-512 BF16 dot products");
#if RIMC_HAVE_X86_DISPATCH
  avx512::pair_conv(g, x, w, out);
#else
  (void)g, (void)x, (void)w, (void)out;
#endif
}

/// Whether chain_conv is faster than oneDNN's f32 convolution here: the
/// AVX-512 tier (the other tiers' forms are plain loops, for the tests).
[[nodiscard]] inline bool chain_conv_fast(isa_tier tier) noexcept { return tier == isa_tier::avx512; }

/// The geometry of chain_conv for a channels-last source of N images H x W x C, an output of
/// OH x OW pixels of `cols` columns, a KH x KW window, strides, padding and height dilation.
[[nodiscard]] inline chain_conv_geometry chain_conv_shape(std::int64_t N, std::int64_t C, std::int64_t H,
                                                          std::int64_t W, std::int64_t OH, std::int64_t OW,
                                                          std::int64_t cols, std::int64_t KH, std::int64_t KW,
                                                          std::int64_t sh, std::int64_t sw, std::int64_t ph,
                                                          std::int64_t pw, std::int64_t dh) {
  return {.N = N, .H = H, .W = W, .C = C, .ph = ph, .pw = pw, .Hp = H + 2 * ph, .row = (W + 2 * pw) * C, .KH = KH,
          .KW = KW, .taps = KW * C, .OH = OH, .OW = OW, .sh = sh, .sw = sw, .dh = dh, .cols = cols};
}

/// chain_conv's input: x [N, H, W, C] (channels-last f32) inside zero padding of ph rows and pw
/// pixels, in `out`.
inline void chain_conv_input(const chain_conv_geometry& g, const float* x, std::vector<float>& out) {
  out.assign(static_cast<std::size_t>(g.N * g.Hp * g.row), 0.0f);
  for (std::int64_t n = 0; n < g.N; ++n)
    for (std::int64_t h = 0; h < g.H; ++h)
      std::copy_n(x + (n * g.H + h) * g.W * g.C, g.W * g.C, out.data() + (n * g.Hp + h + g.ph) * g.row + g.pw * g.C);
}

/// chain_conv's weights from convolution weights w [cols, C, KH, KW]: per block of 16 columns,
/// kernel row and tap e = kw C + c, the 16 columns' weights (0 past `cols`).
[[nodiscard]] inline std::vector<float> chain_conv_weights(const float* w, std::int64_t cols, std::int64_t C,
                                                           std::int64_t KH, std::int64_t KW) {
  const std::int64_t taps = KW * C, blocks = (cols + 15) / 16;
  std::vector<float> p(static_cast<std::size_t>(blocks * KH * taps * 16), 0.0f);
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t kh = 0; kh < KH; ++kh)
        for (std::int64_t kw = 0; kw < KW; ++kw)
          p[static_cast<std::size_t>((((j / 16) * KH + kh) * taps + kw * C + c) * 16 + j % 16)] =
              w[((j * C + c) * KH + kh) * KW + kw];
  return p;
}

/// The convolution of chain_conv_input's x with chain_conv_weights' w (finite) into out [N, OH,
/// OW, cols], each output the FMA chain of chain_conv_body (the same bits on every tier): where
/// oneDNN's f32 convolution was seen to sum in that order (analog_conv2d's probe), its outputs.
inline void chain_conv(const chain_conv_geometry& g, const float* x, const float* w, float* out, isa_tier tier) {
  RIMC_ISA_CALL(tier, chain_conv, g, x, w, out);
}

/// The exact chain values of listed outputs of a convolution (channels-last
/// input x, output-major weights w [r][KH][KW][C]; see
/// conv_chain_values_body): oneDNN's f32 direct convolution computes each
/// output as this one chain (analog_conv2d checks that per shape before it
/// relies on it). The same bits on every tier (an FMA rounds once).
inline void conv_chain_values(const thin_conv_geometry& g, const float* x, const float* w, const std::uint32_t* idx,
                              std::int64_t count, float* out, isa_tier tier) {
  RIMC_ISA_CALL(tier, conv_chain_values, g, x, w, idx, count, out);
}

/// dst[i] = quantise_unit(src[i], inv_scale, steps) for i in [0, n): the DAC
/// code round_half_even(clamp(src inv_scale, -1, 1) steps) / steps; with
/// `squares`, squares[i] = dst[i] dst[i] too (the read-noise variance's input).
/// src may be dst (quantised in place).
inline void dac_codes(const float* src, std::int64_t n, float inv_scale, float steps, float* dst, float* squares,
                      isa_tier tier) {
  RIMC_ISA_CALL(tier, dac_codes, src, n, inv_scale, steps, dst, squares);
}

/// Rows [0, M) of C column currents (row-major, `current`) read out by `a`
/// into y [M, ldy] (y points at the block's first column); row m's input
/// scale is (xscale ? xscale[m] : xscale_all) place. With `overwrite` each
/// row's columns start from +0 instead of their values.
inline void adc_rows(const adc_readout& a, const float* current, std::int64_t M, std::int64_t C, const float* xscale,
                     float xscale_all, float place, float* y, std::int64_t ldy, bool overwrite, isa_tier tier) {
  RIMC_ISA_CALL(tier, adc_rows, a, current, M, C, xscale, xscale_all, place, y, ldy, overwrite);
}

/// Standard normals (float) for indices [first, first + n) of (seed, stream)
/// into out (normal_fill_body in core/random.hpp: Philox4x32-10, four normals
/// per block, inverse CDF), on `tier`; the same bits on every tier.
inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, std::int64_t n, float* out,
                        isa_tier tier) {
  RIMC_ISA_CALL(tier, normal_fill, seed, stream, first, n, out);
}
/// The same on the active tier.
inline void normal_fill(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, std::int64_t n, float* out) {
  normal_fill(seed, stream, first, n, out, active_isa());
}

}  // namespace rimc::detail
