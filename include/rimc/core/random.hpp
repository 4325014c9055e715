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

#include <array>
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
