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
#include <tuple>
#include <string_view>

namespace rimc {

/// The code space a mapping gives a device: the largest |code| a weight
/// becomes (q_max) and the offset taken off on readback (q_off), for per-device
/// unsigned codes 0..u_max.
struct mapping_codes {
  double q_max = 0;  ///< largest |code| (the weight max |w| of a column maps to it)
  double q_off = 0;  ///< code offset removed on readback (nonzero for offset mappings)
};

/// Differential-pair mapping: w -> G+ - G- (proportional to w); the device of
/// the pair that does not carry the weight stays at g_min.
struct differential_mapping {
  static constexpr int devices = 2;  ///< cells per slice: G+ (device 0) and G- (device 1)
  /// The policy's id, "differential".
  static constexpr std::string_view name = "differential";
  /// Readback weight of each device's code: code = u+ - u-.
  static constexpr std::array<double, devices> coefficients{1.0, -1.0};
  /// Codes 0..u_max on each device: |code| up to u_max.
  [[nodiscard]] static constexpr mapping_codes codes(double u_max, bool /*discrete*/) noexcept { return {u_max, 0.0}; }
  /// x = w / scale in [-1, 1] -> per-device codes: |quantise(x q_max)| on G+ or G-.
  template <class Quantise>
  static void split(double x, const mapping_codes& c, Quantise&& quantise, std::span<double, devices> u) {
    const double q = quantise(x * c.q_max);
    u[0] = q > 0 ? std::abs(q) : 0.0;
    u[1] = q > 0 ? 0.0 : std::abs(q);
  }
};

/// Offset mapping: one cell per slice, zero weight at mid-range; the offset
/// is removed digitally (sum of the inputs times the offset conductance).
struct offset_mapping {
  static constexpr int devices = 1;  ///< cells per slice
  /// The policy's id, "offset".
  static constexpr std::string_view name = "offset";
  /// Readback weight of the one device's code: code = u - q_off.
  static constexpr std::array<double, devices> coefficients{1.0};
  /// Half the code range each side of the offset: (u_max - 1) / 2 levels (u_max / 2 for continuous cells).
  [[nodiscard]] static mapping_codes codes(double u_max, bool discrete) {
    if (!discrete) return {u_max / 2, u_max / 2};
    if (u_max < 3) {
      throw value_error(detail::concat("offset_mapping: needs at least 4 levels per weight (bits_per_cell * slices >= 2), got ",
                                       u_max + 1));
    }
    const double q = (u_max + 1) / 2 - 1;
    return {q, q};
  }
  /// x -> quantise(x q_max) + q_off on the single device.
  template <class Quantise>
  static void split(double x, const mapping_codes& c, Quantise&& quantise, std::span<double, devices> u) {
    u[0] = quantise(x * c.q_max) + c.q_off;
  }
};

/// A weight-to-conductance mapping policy (docs/formulas.md, sec. 5): how
/// many devices a unit cell has, how a normalised weight x = w / scale in
/// [-1, 1] splits into per-device unsigned codes (quantised through the cell's
/// quantiser), and the coefficients of the linear readback
/// code = sum_d coefficients[d] u_d - q_off, which the array also computes in
/// analog (sum_d coefficients[d] G_d per unit input). TiledArray and
/// CrossbarTile only call these.
template <class M>
concept mapping_policy = requires(double x, const mapping_codes& c, std::span<double, M::devices> u) {
  { M::devices } -> std::convertible_to<int>;
  { M::name } -> std::convertible_to<std::string_view>;
  { M::coefficients[0] } -> std::convertible_to<double>;
  { M::codes(1.0, true) } -> std::same_as<mapping_codes>;
  M::split(x, c, [](double v) { return v; }, u);
} && (M::devices >= 1 && M::devices <= 8) && (std::tuple_size_v<decltype(M::coefficients)> == M::devices);

/// Programs each cell to the nearest of its 2^bits_per_cell levels.
struct nearest_level {
  /// Codes are whole levels.
  static constexpr bool discrete = true;
  /// The policy's id, "nearest_level".
  static constexpr std::string_view name = "nearest_level";
  /// The integer code nearest to `v` (ties away from zero).
  [[nodiscard]] static double quantise(double v) noexcept { return std::round(v); }
};

/// An idealised analog cell with a continuum of levels (no level
/// quantisation; `bits_per_cell` is ignored and `slices` must be 1).
struct continuous_levels {
  /// Codes are not rounded to levels.
  static constexpr bool discrete = false;
  /// The policy's id, "continuous_levels".
  static constexpr std::string_view name = "continuous_levels";
  /// `v` unchanged.
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
  double coefficient_sum = 0;  ///< sum of the mapping's readback coefficients
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
  /// Whether the array's analog product needs a digital offset correction
  /// (g_min and q_off do not cancel across the devices of a cell).
  [[nodiscard]] bool has_digital_offset() const noexcept { return coefficient_sum != 0 || q_off != 0; }

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
  for (const double c : M::coefficients) g.coefficient_sum += c;
  double u_max = 1;
  if constexpr (Q::discrete) {
    g.radix = std::ldexp(1.0, dev.bits_per_cell);
    g.lm1 = g.radix - 1;
    u_max = std::pow(g.radix, dev.slices) - 1;
  } else {
    if (dev.slices != 1) {
      throw value_error(detail::concat("continuous_levels: slices must be 1, got ", dev.slices));
    }
    g.radix = 1;
    g.lm1 = 1;
  }
  const mapping_codes c = M::codes(u_max, Q::discrete);
  g.q_max = c.q_max;
  g.q_off = c.q_off;
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
