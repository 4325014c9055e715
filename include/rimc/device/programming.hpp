#pragma once
/// \file
/// Writing weights as conductances: the mapping policies (differential pair,
/// offset), the quantiser policies (nearest level, continuous), the level
/// grid they define for a device, and the programming step (target level
/// plus programming noise, clamped to the device range).

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>
#include <rimc/device/device_config.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

namespace rimc {

/// Differential-pair mapping: w -> G+ - G- (proportional to w); the device of
/// the pair that does not carry the weight stays at g_min.
struct differential_mapping {
  static constexpr int devices = 2;  ///< cells per slice: G+ (device 0) and G- (device 1)
  static constexpr std::string_view name = "differential";
};

/// Offset mapping: one cell per slice, zero weight at mid-range; the offset
/// is removed digitally (sum of the inputs times the offset conductance).
struct offset_mapping {
  static constexpr int devices = 1;  ///< cells per slice
  static constexpr std::string_view name = "offset";
};

/// A weight-to-conductance mapping policy.
template <class M>
concept mapping_policy = requires {
  { M::devices } -> std::convertible_to<int>;
  { M::name } -> std::convertible_to<std::string_view>;
} && (M::devices == 1 || M::devices == 2);

/// Programs each cell to the nearest of its 2^bits_per_cell levels.
struct nearest_level {
  static constexpr bool discrete = true;
  static constexpr std::string_view name = "nearest_level";
  /// The integer code nearest to `v` (ties away from zero).
  [[nodiscard]] static double quantise(double v) noexcept { return std::round(v); }
};

/// An idealised analog cell with a continuum of levels (no level
/// quantisation; `bits_per_cell` is ignored and `slices` must be 1).
struct continuous_levels {
  static constexpr bool discrete = false;
  static constexpr std::string_view name = "continuous_levels";
  [[nodiscard]] static double quantise(double v) noexcept { return v; }
};

/// A cell-level quantiser policy.
template <class Q>
concept quantiser_policy = requires(double v) {
  { Q::discrete } -> std::convertible_to<bool>;
  { Q::quantise(v) } -> std::convertible_to<double>;
};

/// The code space a (mapping, quantiser, device) triple defines.
///
/// A weight w with column scale s becomes the code q = quantise(w / s * q_max)
/// in [-q_max, q_max]. Differential: |q| is written on G+ (q > 0) or G- (q < 0).
/// Offset: u = q + q_off >= 0 is written on the single cell. A non-negative
/// code u is split into `slices` digits u = sum_s radix^s d_s, 0 <= d_s <= lm1,
/// and digit d is the conductance g_min + d / lm1 * range. Reading back,
/// d = (G - g_min) / range * lm1 (real-valued once the cell has drifted).
struct level_grid {
  int slices = 1;        ///< cells per weight and device
  int devices = 2;       ///< cells per slice (2 differential, 1 offset)
  double radix = 256;    ///< levels per cell (place value base of the slices)
  double lm1 = 255;      ///< levels per cell - 1 (largest digit)
  double q_max = 255;    ///< largest |code|
  double q_off = 0;      ///< code offset (offset mapping)
  double g_min_us = 0;   ///< conductance of digit 0, uS
  double range_us = 1;   ///< conductance span, uS
  std::array<double, 4> places{1, 256, 65536, 16777216};  ///< radix^s for s = 0..3

  /// Conductance of digit d, uS.
  [[nodiscard]] double conductance_us(double digit) const noexcept { return g_min_us + digit / lm1 * range_us; }
  /// Digit value of conductance g (real-valued), the inverse of conductance_us.
  [[nodiscard]] double digit(double g_us) const noexcept { return (g_us - g_min_us) / range_us * lm1; }
  /// Place value radix^s of slice s.
  [[nodiscard]] double place(int s) const noexcept { return places[static_cast<std::size_t>(s)]; }

  /// Splits a non-negative code u into `out.size()` == slices digits, least significant first.
  void split(double u, std::span<double> out) const noexcept {
    if (slices == 1) {
      out[0] = u;
      return;
    }
    auto v = static_cast<std::int64_t>(u);
    const auto r = static_cast<std::int64_t>(radix);
    for (auto& d : out) {
      d = static_cast<double>(v % r);
      v /= r;
    }
  }
};

/// The level grid of `dev` under mapping M and quantiser Q; validates `dev`.
template <mapping_policy M, quantiser_policy Q>
[[nodiscard]] level_grid make_level_grid(const device_config& dev) {
  dev.validate();
  level_grid g;
  g.slices = dev.slices;
  g.devices = M::devices;
  g.g_min_us = dev.g_min_us;
  g.range_us = dev.range_us();
  if constexpr (Q::discrete) {
    g.radix = std::ldexp(1.0, dev.bits_per_cell);
    g.lm1 = g.radix - 1;
    const double total = std::pow(g.radix, dev.slices);
    if constexpr (M::devices == 2) {
      g.q_max = total - 1;
      g.q_off = 0;
    } else {
      if (total < 4) {
        throw value_error(detail::concat("offset_mapping: needs bits_per_cell * slices >= 2, got ",
                                         dev.bits_per_cell, " * ", dev.slices));
      }
      g.q_max = total / 2 - 1;
      g.q_off = g.q_max;
    }
  } else {
    if (dev.slices != 1) {
      throw value_error(detail::concat("continuous_levels: slices must be 1, got ", dev.slices));
    }
    g.radix = 1;
    g.lm1 = 1;
    g.q_max = M::devices == 2 ? 1.0 : 0.5;
    g.q_off = M::devices == 2 ? 0.0 : 0.5;
  }
  for (std::size_t s = 0; s < g.places.size(); ++s) g.places[s] = std::pow(g.radix, static_cast<double>(s));
  return g;
}

/// The programmed conductance of one cell: the target plus programming noise
/// drawn from (seed, rng_stream::programming, cell), clamped to [g_min, g_max].
[[nodiscard]] inline double program_cell(double target_us, const device_config& dev, std::uint64_t seed,
                                         std::uint64_t cell) noexcept {
  double g = target_us;
  if (!dev.noise.is_none()) {
    const counter_rng rng(seed, static_cast<std::uint64_t>(rng_stream::programming));
    g += dev.noise.sigma_us(target_us) * rng.normal(cell);
  }
  return std::clamp(g, dev.g_min_us, dev.g_max_us);
}

}  // namespace rimc
