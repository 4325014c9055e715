#pragma once
/// \file
/// Counter-based random numbers: every value is a pure function of
/// (seed, stream, index), so a result never depends on the thread count or
/// on the order in which values are drawn.
///
/// The generator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel
/// random numbers: as easy as 1, 2, 3", SC'11), the generator of Random123,
/// cuRAND and JAX. The 64-bit seed is the key; (stream, index) is the
/// 128-bit counter.

#include <rimc/core/tensor.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numbers>

namespace rimc {

/// Philox4x32-10: maps a 128-bit counter and a 64-bit key to 128 random bits.
[[nodiscard]] constexpr std::array<std::uint32_t, 4> philox4x32(std::array<std::uint32_t, 4> ctr,
                                                                 std::array<std::uint32_t, 2> key) noexcept {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(m0) * ctr[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(m1) * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += w0;
    key[1] += w1;
  }
  return ctr;
}

/// A keyed, counter-based random source: `bits(i)`, `uniform(i)`, `normal(i)`
/// are pure functions of (seed, stream, i).
///
/// Use one stream per independent effect (e.g. one per tile and effect kind)
/// and the element index as `i`.
class counter_rng {
 public:
  /// The source keyed by `seed`, on stream `stream`.
  constexpr counter_rng(std::uint64_t seed, std::uint64_t stream = 0) noexcept : seed_(seed), stream_(stream) {}

  /// The key.
  [[nodiscard]] constexpr std::uint64_t seed() const noexcept { return seed_; }
  /// The stream id.
  [[nodiscard]] constexpr std::uint64_t stream() const noexcept { return stream_; }

  /// The same seed with another stream.
  [[nodiscard]] constexpr counter_rng substream(std::uint64_t stream) const noexcept { return {seed_, stream}; }

  /// 128 random bits for index i.
  [[nodiscard]] constexpr std::array<std::uint32_t, 4> bits(std::uint64_t i) const noexcept {
    return philox4x32({static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(i >> 32),
                       static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)},
                      {static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32)});
  }

  /// Uniform double in [0, 1) with 53 random bits.
  [[nodiscard]] constexpr double uniform(std::uint64_t i) const noexcept { return to_unit(bits(i), 0); }

  /// Uniform double in [lo, hi).
  [[nodiscard]] constexpr double uniform(std::uint64_t i, double lo, double hi) const noexcept {
    return lo + (hi - lo) * uniform(i);
  }

  /// Standard normal N(0, 1) by the Box-Muller transform of one 128-bit block.
  [[nodiscard]] double normal(std::uint64_t i) const noexcept {
    const auto b = bits(i);
    const double u1 = 1.0 - to_unit(b, 0);  // (0, 1]: log is finite
    const double u2 = to_unit(b, 2);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  static constexpr double to_unit(const std::array<std::uint32_t, 4>& b, int k) noexcept {
    const std::uint64_t hi = b[static_cast<std::size_t>(k)] >> 5;      // 27 bits
    const std::uint64_t lo = b[static_cast<std::size_t>(k) + 1] >> 6;  // 26 bits
    return static_cast<double>((hi << 26) | lo) * 0x1.0p-53;
  }

  std::uint64_t seed_;
  std::uint64_t stream_;
};

namespace detail {

/// ln(x) for a positive normal float x, branch-free so that loops over it
/// vectorise: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then Cephes' logf
/// polynomial log(1 + f) = f - f^2 / 2 + f^3 P(f) (S. L. Moshier, Cephes
/// Math Library 2.2; peak relative error 7.1e-8 on [sqrt(1/2), sqrt(2)]).
[[nodiscard]] inline float fast_logf(float x) noexcept {
  // Integer operations only before the polynomial (a float compare-and-select stops GCC's
  // vectoriser under the default -ftrapping-math): m < sqrt(1/2) exactly when the
  // mantissa bits are below those of sqrt(2) (0x3504f3); then m is doubled.
  const auto b = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t mant = b & 0x007fffffu;
  const std::uint32_t low = mant < 0x003504f3u ? 1u : 0u;
  const int e = static_cast<int>((b >> 23) & 0xffu) - 126 - static_cast<int>(low);  // x = m 2^e
  const float m = std::bit_cast<float>(mant | ((0x7eu + low) << 23)) - 1.0f;        // f: log(1 + f) = log(m)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const auto fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

/// The high 32 bits of a * b from 16-bit halves, in 32-bit arithmetic (a
/// 64-bit product does not vectorise).
[[nodiscard]] constexpr std::uint32_t mulhi32(std::uint32_t a, std::uint32_t b) noexcept {
  const std::uint32_t al = a & 0xffffu, ah = a >> 16, bl = b & 0xffffu, bh = b >> 16;
  const std::uint32_t t = al * bl;
  const std::uint32_t u = ah * bl + (t >> 16);  // < 2^32: no carry lost
  const std::uint32_t v = al * bh + (u & 0xffffu);
  return ah * bh + (u >> 16) + (v >> 16);
}

/// sqrt(w) for w > 0 without a library call (which may set errno, so loops
/// around std::sqrt do not vectorise): w times 1 / sqrt(w) from the classic
/// reciprocal-square-root estimate and three Newton steps (relative error
/// below 3e-7).
[[nodiscard]] inline float sqrt_positive(float w) noexcept {
  float y = std::bit_cast<float>(0x5f3759dfu - (std::bit_cast<std::uint32_t>(w) >> 1));
  for (int i = 0; i < 3; ++i) y = y * (1.5f - 0.5f * w * y * y);
  return w * y;
}

/// Rounds |v| < 2^22 to the nearest integer, ties to even (as std::nearbyint in
/// the default rounding mode), without a library call, so loops vectorise.
[[nodiscard]] inline float round_half_even(float v) noexcept {
  // (v + 1.5 * 2^23) - 1.5 * 2^23: IEEE addition rounds to the nearest integer at that
  // magnitude; compilers do not fold it without -ffast-math (which rimc never uses).
  constexpr float magic = 12582912.0f;
  return (v + magic) - magic;
}

/// Quantises v / scale (clipped to [-1, 1]) to `steps` levels per side; returns the code in [-1, 1].
[[nodiscard]] inline float quantise_unit(float v, float inv_scale, float steps) noexcept {
  const float u = std::clamp(v * inv_scale, -1.0f, 1.0f);
  return round_half_even(u * steps) / steps;
}

/// The standard normal quantile from 32 random bits, in two parts so that
/// loops vectorise: u = (k + 1/2) 2^-23 for the top 23 bits k (so |z| <=
/// 5.3) and z = sqrt(2) erfinv(2u - 1) by M. Giles' single-precision erfinv
/// ("Approximating the erfinv function", GPU Computing Gems Jade, 2011), with
/// w = -ln((1 - x)(1 + x)) = -ln(4 u (1 - u)) formed from u and 1 - u, both
/// exact. normal_central computes w, x = 2u - 1 and the central polynomial
/// (right where w < 5: all but about 0.3% of draws), normal_tail the tail one.
[[nodiscard]] inline float normal_central(std::uint32_t bits, float& w_out, float& x_out) noexcept {
  const auto k = static_cast<float>(static_cast<std::int32_t>(bits >> 9));  // via int32: vectorises
  const float u = (k + 0.5f) * 0x1p-23f;
  const float v = (8388608.0f - k - 0.5f) * 0x1p-23f;  // 1 - u
  const float w = -fast_logf(4.0f * u * v);
  const float wc = w - 2.5f;
  float p = 2.81022636e-08f;
  p = 3.43273939e-07f + p * wc;
  p = -3.5233877e-06f + p * wc;
  p = -4.39150654e-06f + p * wc;
  p = 0.00021858087f + p * wc;
  p = -0.00125372503f + p * wc;
  p = -0.00417768164f + p * wc;
  p = 0.246640727f + p * wc;
  p = 1.50140941f + p * wc;
  w_out = w;
  x_out = u - v;  // 2u - 1, exact
  return 1.41421356237309505f * p * x_out;
}
/// The tail part of the quantile (w >= 5) from normal_central's w and x.
[[nodiscard]] inline float normal_tail(float w, float x) noexcept {
  const float wt = std::sqrt(w) - 3.0f;
  float p = -0.000200214257f;
  p = 0.000100950558f + p * wt;
  p = 0.00134934322f + p * wt;
  p = -0.00367342844f + p * wt;
  p = 0.00573950773f + p * wt;
  p = -0.0076224613f + p * wt;
  p = 0.00943887047f + p * wt;
  p = 1.00167406f + p * wt;
  p = 2.83297682f + p * wt;
  return 1.41421356237309505f * p * x;
}
/// A standard normal from 32 random bits (normal_central, or normal_tail where w >= 5).
[[nodiscard]] inline float normal_from_bits(std::uint32_t bits) noexcept {
  float w = 0, x = 0;
  const float z = normal_central(bits, w, x);
  return w < 5.0f ? z : normal_tail(w, x);
}
/// A bound on |normal_from_bits(bits)| over every input: the extreme uniforms
/// (k = 0 and 2^23 - 1) give -+5.29470444, and the tests check all 2^23 of them.
inline constexpr float normal_bound = 5.3f;

/// The approximate quantile of the ADC read-out's shortcut (noisy_for_adc in
/// kernels/arch/dispatch.hpp): from the bits normal_from_bits reads, the tail
/// probability q = (min(k, 2^23 - 1 - k) + 1/2) 2^-23 in [2^-24, 1/2), its
/// octave j (q in [2^-(j+2), 2^-(j+1))) and t = mantissa(q) - 3/2 give
/// -+(c_0[j] + c_1[j] t + ... + c_4[j] t^4) (sign + where k >= 2^22). Row i
/// holds c_i for the 23 octaves (padded to 32 for the vector tables), made by
/// tools/make_quantile_table.py (interpolation at Chebyshev nodes).
alignas(64) inline constexpr float approx_quantile_coef[5][32] = {
    {0.318639368f, 0.887146533f, 1.31801093f, 1.67593968f, 1.98742783f, 2.26622677f, 2.52050233f, 2.75554895f, 2.97502065f, 3.18155956f, 3.37714601f, 3.56330776f, 3.74125242f, 3.91195297f, 4.07620668f, 4.23467541f, 4.387918f, 4.53640795f, 4.68055296f, 4.82070589f, 4.95717478f, 5.09023094f, 5.22011328f, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {-0.659025729f, -0.464184225f, -0.373203784f, -0.318855584f, -0.282055169f, -0.255158603f, -0.234461293f, -0.217932492f, -0.204358041f, -0.19296357f, -0.183229759f, -0.174794167f, -0.167395398f, -0.160839722f, -0.154980183f, -0.149703145f, -0.144919142f, -0.140556723f, -0.136558026f, -0.132875711f, -0.129470512f, -0.126309678f, -0.123365588f, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {0.0691231266f, 0.0955455005f, 0.0917756706f, 0.0851929262f, 0.0790572166f, 0.0737773106f, 0.0692852587f, 0.0654444769f, 0.0621300749f, 0.0592413768f, 0.0566997677f, 0.0544441044f, 0.0524265468f, 0.0506093167f, 0.0489622578f, 0.0474610366f, 0.0460858196f, 0.0448202677f, 0.0436508246f, 0.0425661243f, 0.0415565632f, 0.0406139903f, 0.0397314094f, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {-0.0616270564f, -0.0465062559f, -0.0420891978f, -0.0388550684f, -0.0361931734f, -0.0339543633f, -0.0320477895f, -0.0304056499f, -0.0289761871f, -0.0277196988f, -0.0266055204f, -0.0256097298f, -0.0247134622f, -0.0239016712f, -0.023162229f, -0.0224852487f, -0.0218626019f, -0.0212875362f, -0.0207543988f, -0.0202584211f, -0.0197955463f, -0.0193623099f, -0.0189557206f, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {0.0210843608f, 0.0220792312f, 0.020383399f, 0.0189196896f, 0.0176906902f, 0.0166495033f, 0.015757503f, 0.0149849011f, 0.0143088764f, 0.0137118772f, 0.0131802782f, 0.0127033945f, 0.0122727463f, 0.0118815331f, 0.0115242377f, 0.0111963432f, 0.010894116f, 0.010614438f, 0.0103546921f, 0.0101126591f, 0.00988644548f, 0.00967442617f, 0.00947519951f, 0, 0, 0, 0, 0, 0, 0, 0, 0},
};
/// A bound on |approximate quantile - normal_from_bits| over every input (the
/// largest is 3.6e-5; the tests check all 2^23 inputs on the tier that uses it).
inline constexpr float approx_normal_error = 4e-5f;

/// Philox4x32-10 on 16 counters at once (four words of each in c0..c3), key
/// (k0, k1): philox4x32 lane by lane, in 32-bit operations only so the loop
/// vectorises (the portable tier's normal_fill_body; kernels/arch/avx2.hpp
/// and avx512.hpp run the same rounds in registers, 8 and 16 lanes wide).
struct philox16_portable {
  /// Counters in, random words out.
  static void run(std::uint32_t* c0, std::uint32_t* c1, std::uint32_t* c2, std::uint32_t* c3, std::uint32_t k0,
                  std::uint32_t k1) noexcept {
    for (int round = 0; round < 10; ++round) {
      for (int l = 0; l < 16; ++l) {
        const std::uint32_t n0 = mulhi32(0xCD9E8D57u, c2[l]) ^ c1[l] ^ k0;
        const std::uint32_t n2 = mulhi32(0xD2511F53u, c0[l]) ^ c3[l] ^ k1;
        c1[l] = 0xCD9E8D57u * c2[l];
        c3[l] = 0xD2511F53u * c0[l];
        c0[l] = n0;
        c2[l] = n2;
      }
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
  }
};

/// Standard normals (float) for indices [first, first + n) of (seed, stream)
/// into out[0, n): index i is normal_from_bits of 32-bit word i % 4 of
/// counter_rng(seed, stream).bits(i / 4), so four normals come from one
/// Philox block (philox16_portable runs 16 blocks at a time).
/// A pure function of (seed, stream, i), like counter_rng; the fast source of
/// per-read noise (counter_rng::normal draws one double per block). Integer
/// operations and separately rounded float +, -, *, so every instruction set
/// gives the same bits; kernels/arch/dispatch.hpp runs the best tier's form
/// (rimc::detail::normal_fill: this body on the portable tier, the AVX2 and
/// AVX-512 forms in output order with every step in registers).
inline void normal_fill_body(std::uint64_t seed, std::uint64_t stream, std::uint64_t first, std::int64_t n, float* out) {
  constexpr int lanes = 16;
  const auto k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  const auto s0 = static_cast<std::uint32_t>(stream), s1 = static_cast<std::uint32_t>(stream >> 32);
  std::uint64_t block = first / 4;
  const std::uint64_t end = first + static_cast<std::uint64_t>(std::max<std::int64_t>(n, 0));
  alignas(64) std::uint32_t c[4][lanes];  // c[w][l]: word w of block l
  alignas(64) float z[4 * lanes], w[4 * lanes], x[4 * lanes];
  const std::uint32_t* words = &c[0][0];
  while (block * 4 < end) {
    for (int l = 0; l < lanes; ++l) {
      const std::uint64_t b = block + static_cast<std::uint64_t>(l);
      c[0][l] = static_cast<std::uint32_t>(b);
      c[1][l] = static_cast<std::uint32_t>(b >> 32);
      c[2][l] = s0;
      c[3][l] = s1;
    }
    philox16_portable::run(c[0], c[1], c[2], c[3], k0, k1);
    for (int j = 0; j < 4 * lanes; ++j) z[j] = normal_central(words[j], w[j], x[j]);  // vectorises
    // Copy the part of [block * 4, block * 4 + 4 lanes) that lies in [first, end): index i is word
    // i % 4 of block i / 4; the rare tail draws are finished here.
    const std::uint64_t lo = std::max(block * 4, first), hi = std::min(block * 4 + 4 * lanes, end);
    for (std::uint64_t i = lo; i < hi; ++i) {
      const auto j = static_cast<std::size_t>((i - block * 4) % 4 * lanes + (i - block * 4) / 4);
      out[i - first] = w[j] < 5.0f ? z[j] : normal_tail(w[j], x[j]);
    }
    block += lanes;
  }
}

}  // namespace detail

/// Fills `t` (in storage order) with U[lo, hi) drawn from (seed, stream, index).
inline void fill_uniform(Tensor& t, counter_rng rng, float lo, float hi) {
  float* p = t.data();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    p[i] = static_cast<float>(rng.uniform(static_cast<std::uint64_t>(i), lo, hi));
}

/// Fills `t` (in storage order) with N(mean, stddev^2) drawn from (seed, stream, index).
inline void fill_normal(Tensor& t, counter_rng rng, float mean = 0.0f, float stddev = 1.0f) {
  float* p = t.data();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    p[i] = static_cast<float>(mean + stddev * rng.normal(static_cast<std::uint64_t>(i)));
}

}  // namespace rimc
