#pragma once
/// \file
/// Conductance drift models and per-MVM read noise. Every drift model is a
/// pure function of (programmed conductance, time or level, seed, cell
/// index): the state at time t is always re-derived from the programmed
/// state, never accumulated, so the same seed gives the same chip at any t
/// and times can be queried in any order. Results are in uS and not yet
/// clamped; the crossbar clamps them to the device's drift bounds
/// (device_config::bounds). A model takes
/// either a time (`seconds`) or a drift level (`drift_level`), declared as
/// its argument_type, so the two cannot be confused (docs/formulas.md, sec. 4).

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/units.hpp>
#include <rimc/device/device_config.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <string_view>

namespace rimc {

/// A drift model: `m(g_prog_us, when, seed, cell)` returns the drifted
/// conductance in uS, `when` being a `seconds` or a `drift_level` as the
/// model's argument_type says; `m.validate(when)` throws value_error for an
/// invalid time or level (and invalid model parameters).
template <class M>
concept drift_model = requires(const M& m, double g, typename M::argument_type when, std::uint64_t seed,
                               std::uint64_t cell) {
  requires std::same_as<typename M::argument_type, seconds> || std::same_as<typename M::argument_type, drift_level>;
  { m(g, when, seed, cell) } -> std::same_as<double>;
  m.validate(when);
  { M::name } -> std::convertible_to<std::string_view>;
};

namespace detail {
[[nodiscard]] inline double drift_normal(std::uint64_t seed, std::uint64_t cell) noexcept {
  return counter_rng(seed, static_cast<std::uint64_t>(rng_stream::drift)).normal(cell);
}
}  // namespace detail

/// The paper's model (Dong et al. 2025, Fig. 2): G' = G + N(0, (rho G)^2),
/// with the level rho the relative drift (0.2 = "20% relative drift").
struct relative_drift {
  /// The model's id, also the prefix of its error messages.
  static constexpr std::string_view name = "relative_drift";
  using argument_type = drift_level;  ///< rho

  /// Throws value_error unless rho >= 0 and finite.
  void validate(drift_level rho) const { detail::check_non_negative(name, "rho", rho.value); }
  /// Expected drifted conductance, uS.
  [[nodiscard]] double mean_us(double g_us, drift_level /*rho*/) const noexcept { return g_us; }
  /// Standard deviation of the drifted conductance, uS.
  [[nodiscard]] double stddev_us(double g_us, drift_level rho) const noexcept { return rho.value * std::abs(g_us); }
  /// Drifted conductance of `cell` programmed at g_us, uS.
  [[nodiscard]] double operator()(double g_us, drift_level rho, std::uint64_t seed, std::uint64_t cell) const noexcept {
    return g_us + rho.value * g_us * detail::drift_normal(seed, cell);
  }
};

/// Log-time relaxation (HfOx/CMO ReRAM, Falcone et al. 2025, as in aihwkit's
/// ReRAM CMO model): G(t) = G + mean_slope ln t + (sigma_slope ln t +
/// sigma_offset) xi, t in s, held at its value at t_min_s for earlier times.
struct log_time_drift {
  /// The model's id, also the prefix of its error messages.
  static constexpr std::string_view name = "log_time_drift";
  /// Queried at a time since programming.
  using argument_type = seconds;
  double mean_slope_us = -0.0890;  ///< mean shift per unit ln t, uS
  double sigma_slope_us = 0.0420;  ///< sigma growth per unit ln t, uS
  double sigma_offset_us = 0.4118; ///< sigma at t = 1 s, uS
  double t_min_s = 1.0;            ///< earliest time of the fit, s

  /// Throws value_error for a negative or non-finite t, a non-finite slope or offset, or t_min_s not > 0.
  void validate(seconds t) const {
    detail::check_non_negative(name, "t_s", t.value);
    detail::check_finite_value(name, "mean_slope_us", mean_slope_us);
    detail::check_finite_value(name, "sigma_slope_us", sigma_slope_us);
    detail::check_finite_value(name, "sigma_offset_us", sigma_offset_us);
    if (!(t_min_s > 0) || !std::isfinite(t_min_s)) {
      throw value_error(detail::concat("log_time_drift: t_min_s must be > 0 and finite, got ", t_min_s));
    }
  }
  /// Expected drifted conductance, uS.
  [[nodiscard]] double mean_us(double g_us, seconds t) const noexcept { return g_us + mean_slope_us * log_t(t.value); }
  /// Standard deviation of the drifted conductance, uS.
  [[nodiscard]] double stddev_us(double /*g_us*/, seconds t) const noexcept {
    return std::max(0.0, sigma_slope_us * log_t(t.value) + sigma_offset_us);
  }
  /// Conductance of `cell` programmed at g_us after time t, uS.
  [[nodiscard]] double operator()(double g_us, seconds t, std::uint64_t seed, std::uint64_t cell) const noexcept {
    return mean_us(g_us, t) + stddev_us(g_us, t) * detail::drift_normal(seed, cell);
  }

 private:
  [[nodiscard]] double log_t(double t_s) const noexcept { return std::log(std::max(t_s, t_min_s)); }
};

/// Power-law drift (PCM-like; Nandakumar et al. 2019, as in aihwkit's PCM
/// model), x = G / g_max: G(t) = G (t / t0)^-nu for t > t0 (G otherwise),
/// with a per-cell exponent nu = |mu_nu(x) + sigma_nu(x) xi|,
/// mu_nu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1),
/// sigma_nu = clip(-0.0125 ln x - 0.0059, 0.008, 0.045). xi is drawn from
/// rng_stream::drift_exponent, so a cell keeps its exponent at every t.
struct power_law_drift {
  /// The model's id, also the prefix of its error messages.
  static constexpr std::string_view name = "power_law_drift";
  /// Queried at a time since programming.
  using argument_type = seconds;
  double t0_s = 20.0;      ///< reference time, s
  double g_max_us = 25.0;  ///< conductance that x = G / g_max is normalised by, uS

  /// Throws value_error for a negative or non-finite t, or t0_s or g_max_us not > 0 and finite.
  void validate(seconds t) const {
    detail::check_non_negative(name, "t_s", t.value);
    if (!(t0_s > 0) || !std::isfinite(t0_s)) {
      throw value_error(detail::concat("power_law_drift: t0_s must be > 0 and finite, got ", t0_s));
    }
    if (!(g_max_us > 0) || !std::isfinite(g_max_us)) {
      throw value_error(detail::concat("power_law_drift: g_max_us must be > 0 and finite, got ", g_max_us));
    }
  }
  /// Mean of the (unfolded) exponent at conductance g.
  [[nodiscard]] double mu_nu(double g_us) const noexcept {
    return std::clamp(-0.0155 * std::log(g_us / g_max_us) + 0.0244, 0.049, 0.1);
  }
  /// Standard deviation of the (unfolded) exponent at conductance g.
  [[nodiscard]] double sigma_nu(double g_us) const noexcept {
    return std::clamp(-0.0125 * std::log(g_us / g_max_us) - 0.0059, 0.008, 0.045);
  }
  /// The drift exponent of `cell` programmed at g.
  [[nodiscard]] double nu(double g_us, std::uint64_t seed, std::uint64_t cell) const noexcept {
    const counter_rng rng(seed, static_cast<std::uint64_t>(rng_stream::drift_exponent));
    return std::abs(mu_nu(g_us) + sigma_nu(g_us) * rng.normal(cell));
  }
  /// Conductance of `cell` programmed at g_us after time t, uS.
  [[nodiscard]] double operator()(double g_us, seconds t, std::uint64_t seed, std::uint64_t cell) const noexcept {
    if (t.value <= t0_s || g_us <= 0) return g_us;
    return g_us * std::pow(t.value / t0_s, -nu(g_us, seed, cell));
  }
};

/// NeuRRAM's measured relaxation (Wan et al., Nature 2022): G' = G + N(0,
/// sigma(x, t)^2), x = G / g_max, with sigma polynomials in x fitted at
/// g_max = 40 uS at t = 1 s, 1 day and 2 days. Between fitted times sigma is
/// interpolated linearly in ln t; before 1 s and after 2 days it is held. For
/// another g_max the fitted sigma scales by g_max / 40.
struct neurram_drift {
  /// The model's id, also the prefix of its error messages.
  static constexpr std::string_view name = "neurram_drift";
  /// Queried at a time since programming.
  using argument_type = seconds;
  /// Fitted times, s.
  static constexpr std::array<double, 3> fit_times_s{1.0, 86400.0, 172800.0};
  /// sigma(x) = c0 + c1 x + c2 x^2 + c3 x^3 + c4 x^4 (uS at g_max = 40 uS), one row per fitted time.
  static constexpr std::array<std::array<double, 5>, 3> coefficients{{
      {0.348, 16.030, -43.853, 45.393, -16.815},
      {0.701, 22.086, -50.773, 47.095, -16.458},
      {0.782, 20.274, -43.507, 37.062, -11.934},
  }};
  double g_max_us = 40.0;  ///< device g_max the polynomials are normalised by, uS

  /// Throws value_error for a negative or non-finite t, or g_max_us not > 0 and finite.
  void validate(seconds t) const {
    detail::check_non_negative(name, "t_s", t.value);
    if (!(g_max_us > 0) || !std::isfinite(g_max_us)) {
      throw value_error(detail::concat("neurram_drift: g_max_us must be > 0 and finite, got ", g_max_us));
    }
  }
  /// The fitted polynomial of fitted time `i` (0, 1, 2) at x, uS at g_max = 40 uS.
  [[nodiscard]] static double fitted_sigma_us(std::size_t i, double x) noexcept {
    const auto& c = coefficients[i];
    return c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * c[4])));
  }
  /// sigma(G, t) in uS (interpolated in ln t, never negative).
  [[nodiscard]] double sigma_us(double g_us, seconds t) const noexcept {
    const double x = g_us / g_max_us;
    const double lt = std::log(std::clamp(t.value, fit_times_s[0], fit_times_s[2]));
    const std::size_t i = lt <= std::log(fit_times_s[1]) ? 0 : 1;
    const double l0 = std::log(fit_times_s[i]), l1 = std::log(fit_times_s[i + 1]);
    const double w = (lt - l0) / (l1 - l0);
    const double s = (1 - w) * fitted_sigma_us(i, x) + w * fitted_sigma_us(i + 1, x);
    return std::max(0.0, s * g_max_us / 40.0);
  }
  /// Expected drifted conductance, uS.
  [[nodiscard]] double mean_us(double g_us, seconds /*t*/) const noexcept { return g_us; }
  /// Standard deviation of the drifted conductance, uS.
  [[nodiscard]] double stddev_us(double g_us, seconds t) const noexcept { return sigma_us(g_us, t); }
  /// Conductance of `cell` programmed at g_us after time t, uS.
  [[nodiscard]] double operator()(double g_us, seconds t, std::uint64_t seed, std::uint64_t cell) const noexcept {
    return g_us + sigma_us(g_us, t) * detail::drift_normal(seed, cell);
  }
};

static_assert(drift_model<relative_drift>);
static_assert(drift_model<log_time_drift>);
static_assert(drift_model<power_law_drift>);
static_assert(drift_model<neurram_drift>);

/// Read noise per MVM: each read of a cell of conductance G sees
/// G + N(0, sigma(G)^2), independently per cell and per input vector.
struct read_noise {
  /// The form of sigma(G).
  enum class kind : std::uint8_t {
    none,          ///< no read noise
    constant,      ///< sigma = value (uS)
    proportional,  ///< sigma = value * G
    cmo_reram,     ///< sigma = 0.0277 log10(G) sqrt(ln((t + 1e-6) / 2e-6)), t = value (s) (Falcone et al. 2025)
  };
  kind form = kind::none;  ///< which formula
  double value = 0.0;      ///< sigma (uS), ratio, or time since programming (s), by `form`

  /// No read noise.
  [[nodiscard]] static constexpr read_noise none() noexcept { return {}; }
  /// sigma = sigma_us, uS.
  [[nodiscard]] static constexpr read_noise constant(double sigma_us) noexcept { return {kind::constant, sigma_us}; }
  /// sigma = ratio * G.
  [[nodiscard]] static constexpr read_noise proportional(double ratio) noexcept { return {kind::proportional, ratio}; }
  /// The CMO ReRAM form at time t since programming.
  [[nodiscard]] static constexpr read_noise cmo_reram(seconds t) noexcept { return {kind::cmo_reram, t.value}; }

  /// Whether every read is exact (form none, or value 0).
  [[nodiscard]] constexpr bool is_none() const noexcept { return form == kind::none || value == 0.0; }

  /// Throws value_error for a negative or non-finite value, or a cmo_reram time below 1e-6 s.
  void validate() const {
    switch (form) {
      case kind::none: return;
      case kind::constant: detail::check_non_negative("read_noise", "sigma_us", value); return;
      case kind::proportional: detail::check_non_negative("read_noise", "ratio", value); return;
      case kind::cmo_reram:
        detail::check_finite_value("read_noise", "t_s", value);
        if (value < 1e-6) throw value_error(detail::concat("read_noise: t_s must be >= 1e-06, got ", value));
        return;
    }
  }

  /// sigma of one read of a cell of conductance g, uS (never negative).
  [[nodiscard]] double sigma_us(double g_us) const noexcept {
    switch (form) {
      case kind::none: return 0.0;
      case kind::constant: return value;
      case kind::proportional: return value * std::abs(g_us);
      case kind::cmo_reram:
        return g_us <= 0 ? 0.0
                         : std::max(0.0, 0.0277 * std::log10(g_us) * std::sqrt(std::log((value + 1e-6) / 2e-6)));
    }
    return 0.0;
  }
};

}  // namespace rimc
