#pragma once
/// \file
/// Strong types for the two things a drift model can be asked for: a time
/// since programming (`seconds`) or a dimensionless drift level such as the
/// paper's relative drift rho (`drift_level`). A model declares which one it
/// takes (`argument_type`), so asking a time-based model for a level, or the
/// other way round, does not compile.

#include <compare>
#include <ostream>

namespace rimc {

/// A time since programming, in seconds.
struct seconds {
  double value = 0;  ///< s
  constexpr seconds() = default;
  /// `s` seconds.
  constexpr explicit seconds(double s) noexcept : value(s) {}
  /// Ordered by value.
  friend constexpr auto operator<=>(const seconds&, const seconds&) = default;
  /// Writes "<value> s".
  friend std::ostream& operator<<(std::ostream& os, seconds s) { return os << s.value << " s"; }
};

/// A dimensionless drift level (e.g. relative drift rho: sigma / G).
struct drift_level {
  double value = 0;  ///< dimensionless
  constexpr drift_level() = default;
  /// Level `v` (dimensionless).
  constexpr explicit drift_level(double v) noexcept : value(v) {}
  /// Ordered by value.
  friend constexpr auto operator<=>(const drift_level&, const drift_level&) = default;
  /// Writes "level <value>".
  friend std::ostream& operator<<(std::ostream& os, drift_level l) { return os << "level " << l.value; }
};

namespace literals {
/// 3600_s: a time in seconds.
constexpr seconds operator""_s(long double s) noexcept { return seconds{static_cast<double>(s)}; }
/// 3600_s with an integer literal: a time in seconds.
constexpr seconds operator""_s(unsigned long long s) noexcept { return seconds{static_cast<double>(s)}; }
}  // namespace literals

}  // namespace rimc
