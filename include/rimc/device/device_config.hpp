#pragma once
/// \file
/// rimc::device_config: the physical description of one RRAM cell type
/// (conductance range, levels per cell, bit slicing, weight-scale
/// granularity, programming noise, stuck-at faults), its validation, and the
/// random-stream ids every stochastic device effect draws from.

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>

namespace rimc {

/// The independent random streams of the device and periphery effects. Each
/// effect draws `counter_rng(seed, stream).normal(cell)`, so effects never
/// share random numbers and results do not depend on thread count or order.
enum class rng_stream : std::uint64_t {
  programming = 0x5052'4f47,     ///< programming (write-verify) noise
  drift = 0x4452'4946,           ///< drift / relaxation noise
  drift_exponent = 0x4e55'0000,  ///< per-cell power-law drift exponent
  read_noise = 0x5245'4144,      ///< per-MVM read noise
  output_noise = 0x4f55'5450,    ///< per-MVM output (ADC input) noise
  stuck_at = 0x5354'5543,        ///< stuck-at fault map (one uniform draw per cell)
};

namespace detail {

/// SplitMix64 finaliser: a bijective 64-bit mix.
[[nodiscard]] constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A seed derived from `seed` and a second key (a layer id, a call counter).
[[nodiscard]] constexpr std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t key) noexcept {
  return splitmix64(seed ^ splitmix64(key + 0x6A09E667F3BCC909ull));
}

/// Throws value_error "<what>: <field> must be finite, got <v>" for NaN / infinity.
inline void check_finite_value(std::string_view what, std::string_view field, double v) {
  if (!std::isfinite(v)) throw value_error(concat(what, ": ", field, " must be finite, got ", v));
}

/// Throws value_error unless v is finite and >= 0.
inline void check_non_negative(std::string_view what, std::string_view field, double v) {
  check_finite_value(what, field, v);
  if (v < 0) throw value_error(concat(what, ": ", field, " must be >= 0, got ", v));
}

/// Throws value_error unless lo <= v <= hi.
inline void check_int_range(std::string_view what, std::string_view field, int v, int lo, int hi) {
  if (v < lo || v > hi) {
    throw value_error(concat(what, ": ", field, " must be in [", lo, ", ", hi, "], got ", v));
  }
}

}  // namespace detail

/// Programming (write-verify) noise: the programmed conductance is the
/// target level plus N(0, sigma(G)^2) with sigma(G) = c0 + c1 G + c2 G^2 in
/// uS (G in uS, the target conductance), clamped at 0. This one form covers
/// none, constant sigma, sigma proportional to G, and the presets of
/// docs/formulas.md, sec. 4 (HfOx/CMO ReRAM affine fits, the PCM quadratic fit).
struct programming_noise {
  double c0_us = 0.0;  ///< constant term of sigma, uS
  double c1 = 0.0;     ///< linear term of sigma (per uS of G), dimensionless
  double c2_per_us = 0.0;  ///< quadratic term of sigma, 1/uS

  /// No programming noise.
  [[nodiscard]] static constexpr programming_noise none() noexcept { return {}; }
  /// sigma = sigma_us for every level.
  [[nodiscard]] static constexpr programming_noise constant(double sigma_us) noexcept { return {sigma_us, 0, 0}; }
  /// sigma = ratio * G.
  [[nodiscard]] static constexpr programming_noise proportional(double ratio) noexcept { return {0, ratio, 0}; }
  /// sigma = c0_us + c1 G + c2_per_us G^2.
  [[nodiscard]] static constexpr programming_noise polynomial(double c0_us, double c1, double c2_per_us) noexcept {
    return {c0_us, c1, c2_per_us};
  }

  /// True when sigma is identically zero.
  [[nodiscard]] constexpr bool is_none() const noexcept { return c0_us == 0 && c1 == 0 && c2_per_us == 0; }

  /// sigma in uS at target conductance g_us (never negative).
  [[nodiscard]] double sigma_us(double g_us) const noexcept {
    return std::max(0.0, c0_us + (c1 + c2_per_us * g_us) * g_us);
  }

  /// Throws value_error naming the coefficient that is NaN or infinite.
  void validate() const {
    detail::check_finite_value("programming_noise", "c0_us", c0_us);
    detail::check_finite_value("programming_noise", "c1", c1);
    detail::check_finite_value("programming_noise", "c2_per_us", c2_per_us);
  }
};

/// What a cell is stuck at, if anything.
enum class cell_fault : std::uint8_t {
  none = 0,  ///< a working cell
  sa0 = 1,   ///< stuck at g_min (high-resistance state)
  sa1 = 2,   ///< stuck at g_max (low-resistance state)
};

/// Cells stuck at g_min (SA0) and at g_max (SA1).
struct fault_count {
  std::uint64_t sa0 = 0;  ///< cells stuck at g_min
  std::uint64_t sa1 = 0;  ///< cells stuck at g_max

  /// Stuck cells of either kind.
  [[nodiscard]] constexpr std::uint64_t total() const noexcept { return sa0 + sa1; }
  /// Adds another count.
  constexpr fault_count& operator+=(const fault_count& o) noexcept {
    sa0 += o.sa0;
    sa1 += o.sa1;
    return *this;
  }
};

/// Stuck-at faults: a fraction `sa0` of the cells is stuck at g_min and a
/// fraction `sa1` at g_max, whatever is written to them and however long
/// they sit (docs/formulas.md, sec. 4). Cell i's fault is a pure function of
/// (seed, i): u = counter_rng(seed, rng_stream::stuck_at).uniform(i) makes it
/// SA0 if u < sa0, SA1 if sa0 <= u < sa0 + sa1, so each fraction is exact in
/// expectation and a cell's fault does not depend on the tile size or thread count.
struct stuck_at_faults {
  double sa0 = 0.0;  ///< fraction of cells stuck at g_min, [0, 1]
  double sa1 = 0.0;  ///< fraction of cells stuck at g_max, [0, 1]

  /// No faults.
  [[nodiscard]] static constexpr stuck_at_faults none() noexcept { return {}; }
  /// Whether any cell can be stuck.
  [[nodiscard]] constexpr bool any() const noexcept { return sa0 > 0 || sa1 > 0; }

  /// Throws value_error naming the fraction that is NaN, outside [0, 1], or when sa0 + sa1 > 1.
  void validate() const {
    constexpr std::string_view what = "stuck_at_faults";
    for (const auto& [field, v] : {std::pair<std::string_view, double>{"sa0", sa0}, {"sa1", sa1}}) {
      detail::check_finite_value(what, field, v);
      if (v < 0 || v > 1) throw value_error(detail::concat(what, ": ", field, " must be in [0, 1], got ", v));
    }
    if (sa0 + sa1 > 1) {
      throw value_error(detail::concat(what, ": sa0 + sa1 must be <= 1, got ", sa0, " + ", sa1));
    }
  }

  /// The fault of cell `cell` of a chip whose fault map is keyed by `seed`.
  [[nodiscard]] constexpr cell_fault fault(std::uint64_t seed, std::uint64_t cell) const noexcept {
    if (!any()) return cell_fault::none;
    const double u = counter_rng(seed, static_cast<std::uint64_t>(rng_stream::stuck_at)).uniform(cell);
    if (u < sa0) return cell_fault::sa0;
    return u < sa0 + sa1 ? cell_fault::sa1 : cell_fault::none;
  }
};

/// Where drift may take a conductance (docs/formulas.md, sec. 4). Programming
/// always lands in [g_min, g_max]; drift is a different process.
enum class drift_bounds : std::uint8_t {
  physical,            ///< G >= 0 only (the default): devices relax outside the window they were programmed in
  floor_at_g_min,      ///< G >= g_min, no ceiling (as aihwkit's CMO-ReRAM noise model clamps)
  programming_window,  ///< G in [g_min, g_max]: the idle device of a pair at g_min can then only drift up
};

/// The bound's name as the examples' flags spell it: "physical", "floor-g-min", "window".
[[nodiscard]] constexpr std::string_view to_string(drift_bounds b) noexcept {
  switch (b) {
    case drift_bounds::physical: return "physical";
    case drift_bounds::floor_at_g_min: return "floor-g-min";
    case drift_bounds::programming_window: return "window";
  }
  return "?";
}

/// How finely the weight-to-conductance scale is chosen.
enum class weight_scale : std::uint8_t {
  per_layer,   ///< one scale (max |w|) for the whole matrix
  per_column,  ///< one scale per output column (per output channel)
};

/// One RRAM cell type and how weights are written onto it.
///
/// A weight w of a column with scale s is quantised to an integer code
/// q = round(w / s * q_max) (see `level_grid`), the code is split into
/// `slices` base-2^bits_per_cell digits, and each digit d is written to a
/// cell as g_min_us + d / (2^bits_per_cell - 1) * (g_max_us - g_min_us).
struct device_config {
  double g_min_us = 1.0;    ///< lowest programmable conductance (the unused device of a pair), uS
  double g_max_us = 40.0;   ///< highest programmable conductance, uS
  int bits_per_cell = 8;    ///< multi-level cell: 2^bits_per_cell levels, 1..8
  int slices = 1;           ///< cells per weight (bit slicing, shift-and-add in digital), 1..4
  weight_scale scale = weight_scale::per_column;  ///< weight-scale granularity
  programming_noise noise{};                      ///< programming noise model
  stuck_at_faults faults{};                       ///< stuck-at faults (none by default)
  drift_bounds bounds = drift_bounds::physical;   ///< where drift may take a conductance
  /// Fault-aware programming: the writer knows the fault map (e.g. from a
  /// test read after forming) and retargets the working devices of a cell
  /// with a stuck one, so the cell's analog value is as close to its target
  /// as the levels allow (docs/formulas.md, sec. 4). Off: stuck cells are
  /// simply wrong.
  bool fault_aware_programming = false;
  /// Fault-aware row order: with the fault map known, each tile places its
  /// weight rows on its word lines (the inputs are routed to match) by the
  /// minimum-cost assignment, the cost of a row on a word line being the
  /// squared weight error the line's stuck devices leave in it (with
  /// fault_aware_programming's compensation when that is on). Chosen at a
  /// tile's first programming and kept (docs/formulas.md, sec. 4). Off: rows
  /// sit on word lines in order.
  bool fault_aware_row_order = false;

  /// Lowest conductance drift may reach under `bounds`, uS.
  [[nodiscard]] constexpr double drift_floor_us() const noexcept {
    return bounds == drift_bounds::physical ? 0.0 : g_min_us;
  }
  /// Highest conductance drift may reach under `bounds`, uS (infinity without a ceiling).
  [[nodiscard]] constexpr double drift_ceiling_us() const noexcept {
    return bounds == drift_bounds::programming_window ? g_max_us : std::numeric_limits<double>::infinity();
  }

  /// Conductance span g_max_us - g_min_us, uS.
  [[nodiscard]] constexpr double range_us() const noexcept { return g_max_us - g_min_us; }

  /// Throws value_error naming the first invalid field.
  void validate() const {
    constexpr std::string_view what = "device_config";
    detail::check_non_negative(what, "g_min_us", g_min_us);
    detail::check_finite_value(what, "g_max_us", g_max_us);
    if (!(g_min_us < g_max_us)) {
      throw value_error(detail::concat("device_config: g_min_us (", g_min_us, ") must be < g_max_us (", g_max_us,
                                       ")"));
    }
    detail::check_int_range(what, "bits_per_cell", bits_per_cell, 1, 8);
    detail::check_int_range(what, "slices", slices, 1, 4);
    if (bits_per_cell * slices > 16) {
      throw value_error(detail::concat("device_config: bits_per_cell * slices must be <= 16, got ", bits_per_cell,
                                       " * ", slices));
    }
    noise.validate();
    faults.validate();
  }
};

}  // namespace rimc
