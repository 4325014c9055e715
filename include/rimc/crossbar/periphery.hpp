#pragma once
/// \file
/// Crossbar periphery: the input DAC, the per-tile output ADC, output noise,
/// per-MVM read noise, and the resistance of the array's wires. An ideal
/// periphery (`is_ideal()`: no DAC, ADC or noise) lets the analog layers run
/// one oneDNN kernel on the effective weights; anything else runs tile by
/// tile. IR drop (`wires`) is linear, so it is folded into the effective
/// weights and the tiles' matrices and keeps the fast path exact.
///
/// Units: the DAC maps each input vector to codes x~ in [-1, 1]; a tile
/// column then carries the normalised current c = sum_k x~_k (G+_k - G-_k) /
/// (g_max - g_min) (differential) or sum_k x~_k G_k / (g_max - g_min)
/// (offset), i.e. currents in units of "one full-scale cell driven at full
/// input". ADC ranges and output noise are in these units.

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>  // detail::round_half_even
#include <rimc/crossbar/ir_drop.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

namespace rimc {

/// How the DAC scales an input vector before quantising it.
enum class dac_scaling : std::uint8_t {
  per_vector_absmax,  ///< each input vector (per tile row block) divided by its max |x|, scale restored digitally
  fixed,              ///< inputs divided by a fixed range and clipped to [-1, 1]
  calibrated,         ///< as `fixed`, the range being the `percentile` of |x| over reference inputs (calibrate_adc)
};

/// Input DAC: `bits` signed levels (2^(bits-1) - 1 steps each side of 0).
struct dac_config {
  int bits = 8;                                         ///< resolution, 2..16
  dac_scaling scaling = dac_scaling::per_vector_absmax;  ///< scaling mode
  double range = 1.0;                                   ///< input full scale for `fixed` scaling (input units)
  double percentile = 99.99;                            ///< for `calibrated` scaling, in (0, 100]

  /// Throws value_error unless bits is in 2..16, range > 0 and finite, and the percentile in (0, 100].
  void validate() const {
    detail::check_int_range("dac_config", "bits", bits, 2, 16);
    detail::check_finite_value("dac_config", "range", range);
    if (!(range > 0)) throw value_error(detail::concat("dac_config: range must be > 0, got ", range));
    detail::check_finite_value("dac_config", "percentile", percentile);
    if (!(percentile > 0 && percentile <= 100)) {
      throw value_error(detail::concat("dac_config: percentile must be in (0, 100], got ", percentile));
    }
  }
  /// True when every input element is quantised on its own (a fixed or calibrated range).
  [[nodiscard]] bool element_wise() const noexcept { return scaling != dac_scaling::per_vector_absmax; }
  /// Steps on each side of zero.
  [[nodiscard]] double steps() const noexcept { return std::ldexp(1.0, bits - 1) - 1; }
};

/// How the ADC range is chosen.
enum class adc_range_mode : std::uint8_t {
  fixed,       ///< `range` as given
  percentile,  ///< per tile and slice, the `percentile` of |current| over calibration data (calibrate_adc)
};

/// Output ADC per tile: `bits` signed levels over [-range, range] (normalised current units).
struct adc_config {
  int bits = 8;                                      ///< resolution, 2..16
  adc_range_mode mode = adc_range_mode::percentile;  ///< range selection
  double range = 0.0;                                ///< full scale for `fixed` mode (normalised current)
  double percentile = 99.99;                         ///< for `percentile` mode, in (0, 100]
  bool per_column = false;  ///< `percentile` mode: one range per bit line (column) instead of one per tile and slice
  /// `percentile` mode: the range is this multiple (>= 1) of the percentile, room for
  /// currents above what the reference inputs produced (a few inputs give a tight percentile)
  double headroom = 1.0;

  /// Throws value_error unless bits is in 2..16 and the fixed range or the percentile is valid.
  void validate() const {
    detail::check_int_range("adc_config", "bits", bits, 2, 16);
    if (mode == adc_range_mode::fixed) {
      detail::check_finite_value("adc_config", "range", range);
      if (!(range > 0)) throw value_error(detail::concat("adc_config: range must be > 0, got ", range));
    } else {
      detail::check_finite_value("adc_config", "percentile", percentile);
      if (!(percentile > 0 && percentile <= 100)) {
        throw value_error(detail::concat("adc_config: percentile must be in (0, 100], got ", percentile));
      }
      detail::check_finite_value("adc_config", "headroom", headroom);
      if (!(headroom >= 1)) throw value_error(detail::concat("adc_config: headroom must be >= 1, got ", headroom));
    }
  }
  /// Steps on each side of zero.
  [[nodiscard]] double steps() const noexcept { return std::ldexp(1.0, bits - 1) - 1; }
};

/// How calibrate_adc treats ranges that are already set.
enum class range_update : std::uint8_t {
  replace,  ///< every range becomes the new estimate
  widen,    ///< every range becomes the larger of itself and the new estimate (never shrinks: a few
            ///< inputs give a tight estimate; ranges set on more reference inputs keep their room)
};

/// Everything between the digital inputs/outputs and the array.
struct periphery_config {
  std::optional<dac_config> dac;  ///< input DAC (none: ideal, unquantised inputs)
  std::optional<adc_config> adc;  ///< output ADC per tile and slice (none: ideal)
  double output_noise = 0.0;      ///< sigma of Gaussian noise added to each column current, normalised units
  read_noise read{};              ///< per-MVM read noise of each cell
  std::uint64_t noise_seed = 0;   ///< seed of the output and read noise (one draw per call and element)
  wire_config wires{};            ///< word- and bit-line resistance (IR drop), ideal by default
  /// Draw every read's exact normal and compute every read's exact variance. By default, on
  /// the AVX2 and AVX-512 tiers, read noise before an ADC finds most codes from a cheaper
  /// approximate normal (and, for convolutions where oneDNN has native bf16, a bf16 estimate of
  /// the read variance) and a bound on their errors, and computes the exact normal and variance
  /// only near a code's boundary (docs/formulas.md, sec. 5): the same outputs bit for bit.
  /// This switch is for tests and benchmarks that compare the two.
  bool draw_every_read = false;

  /// The ideal periphery: no quantisation, no noise.
  [[nodiscard]] static periphery_config ideal() { return {}; }
  /// A quantised periphery: a DAC with per-vector abs-max scaling and a percentile-calibrated ADC
  /// (one range per tile and slice, or per column with `per_column`).
  [[nodiscard]] static periphery_config quantised(int dac_bits, int adc_bits, double percentile = 99.99,
                                                  bool per_column = false) {
    periphery_config p;
    p.dac = dac_config{dac_bits, dac_scaling::per_vector_absmax, 1.0};
    p.adc = adc_config{adc_bits, adc_range_mode::percentile, 0.0, percentile, per_column};
    return p;
  }

  /// True when calibrate_adc has something to set: a percentile ADC or a calibrated DAC.
  [[nodiscard]] bool needs_calibration() const noexcept {
    return (adc && adc->mode == adc_range_mode::percentile) || (dac && dac->scaling == dac_scaling::calibrated);
  }

  /// True when the array computes exactly with its effective weights (IR drop included).
  [[nodiscard]] bool is_ideal() const noexcept { return !dac && !adc && output_noise == 0.0 && read.is_none(); }

  /// Throws value_error for an invalid DAC, ADC, output noise, read noise or wire resistance.
  void validate() const {
    if (dac) dac->validate();
    if (adc) adc->validate();
    detail::check_non_negative("periphery_config", "output_noise", output_noise);
    read.validate();
    wires.validate();
  }
};

}  // namespace rimc
