#pragma once
// Helpers shared by rimc's unit tests: random tensors, tolerant comparison,
// a central-difference gradient check in double precision, and (from
// tests/common/file_bytes.hpp) hand-made file bytes for reader tests.

#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>

#include "../common/file_bytes.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace rimc::test {

/// A tensor of U[-1, 1) values drawn from `seed`, in layout `l` (values are
/// assigned by logical index, so the same seed gives the same logical tensor
/// in either layout).
inline Tensor random_tensor(const Shape& s, std::uint64_t seed, layout l = layout::nchw, float lo = -1.0f,
                            float hi = 1.0f) {
  Tensor t(s);
  fill_uniform(t, counter_rng(seed), lo, hi);
  return t.to_layout(l);
}

/// Tensor t (any layout) as a row-major [rows, numel / rows] matrix of
/// doubles in logical (NCHW) order, for the double-precision references.
inline Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> to_dmat(const Tensor& t,
                                                                                     std::int64_t rows) {
  const Tensor p = t.to_layout(layout::nchw);
  return p.matrix(rows, p.numel() / rows).cast<double>();
}

/// A new empty directory under the system's temporary directory, unique to
/// `name` and this process.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("rimc-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

/// Random doubles in [-1, 1).
inline std::vector<double> random_doubles(std::int64_t n, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(n));
  const counter_rng rng(seed, 7);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = rng.uniform(i, -1.0, 1.0);
  return v;
}

/// Checks |actual - expected| <= atol + rtol |expected| element-wise over
/// logical elements (layouts may differ), reporting the worst element.
inline void check_close(const Tensor& actual, const Tensor& expected, double rtol = 1e-4, double atol = 1e-4) {
  REQUIRE(actual.shape() == expected.shape());
  const Tensor a = actual.to_layout(layout::nchw);
  const Tensor e = expected.to_layout(layout::nchw);
  double worst = 0.0;
  std::int64_t worst_i = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const double err = std::abs(double(a[i]) - double(e[i]));
    const double allowed = atol + rtol * std::abs(double(e[i]));
    const double excess = err == 0.0 ? 0.0 : (allowed > 0.0 && !std::isnan(err) ? err / allowed : INFINITY);
    if (excess > worst) {
      worst = excess;
      worst_i = i;
    }
  }
  INFO("worst element ", worst_i, ": actual ", (a.numel() ? a[worst_i] : 0.0f), " expected ",
       (e.numel() ? e[worst_i] : 0.0f));
  CHECK(worst <= 1.0);
}

/// Central-difference check of a hand-written gradient in double precision.
///
/// `f` maps x to y; `grad` maps (x, dy) to dL/dx for L = <dy, f(x)>. The
/// check draws dy at random and compares grad with (L(x + h e_i) - L(x - h e_i)) / 2h
/// for every i (or `max_points` evenly spread ones).
inline void check_gradient(const std::function<std::vector<double>(const std::vector<double>&)>& f,
                           const std::function<std::vector<double>(const std::vector<double>&,
                                                                   const std::vector<double>&)>& grad,
                           const std::vector<double>& x, std::uint64_t seed, std::int64_t max_points = 400,
                           double h = 1e-6, double tol = 1e-7) {
  const auto y = f(x);
  const auto dy = random_doubles(static_cast<std::int64_t>(y.size()), seed);
  const auto g = grad(x, dy);
  REQUIRE(g.size() == x.size());
  auto loss = [&](const std::vector<double>& xx) {
    const auto yy = f(xx);
    double l = 0.0;
    for (std::size_t i = 0; i < yy.size(); ++i) l += dy[i] * yy[i];
    return l;
  };
  // Rounding in the sum L = <dy, y> over many terms perturbs each difference
  // by about sqrt(terms) * eps * max|dy_i y_i|; allow for it on top of `tol`.
  double term_max = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) term_max = std::max(term_max, std::abs(dy[i] * y[i]));
  const double roundoff = 8.0 * std::sqrt(static_cast<double>(y.size())) * 2.2e-16 * term_max / h;
  const auto n = static_cast<std::int64_t>(x.size());
  const std::int64_t step = std::max<std::int64_t>(1, n / max_points);
  double worst = 0.0;
  for (std::int64_t i = 0; i < n; i += step) {
    auto xp = x, xm = x;
    xp[static_cast<std::size_t>(i)] += h;
    xm[static_cast<std::size_t>(i)] -= h;
    const double fd = (loss(xp) - loss(xm)) / (2 * h);
    const double err = std::abs(fd - g[static_cast<std::size_t>(i)]) / (1.0 + std::abs(fd) + roundoff / tol);
    worst = std::max(worst, err);
  }
  CHECK(worst < tol);
}

/// Sum of a[i] * b[i] over the logical elements of two same-shaped tensors.
inline double dot(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to_layout(layout::nchw), y = b.to_layout(layout::nchw);
  double s = 0.0;
  for (std::int64_t i = 0; i < x.numel(); ++i) s += double(x[i]) * double(y[i]);
  return s;
}

}  // namespace rimc::test
