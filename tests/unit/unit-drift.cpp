// Tests of the drift and read-noise models: sample moments over 1e5 cells
// against each formula (tolerance 5 standard errors), the NeuRRAM table
// interpolation, parameter checks, and reproducibility of drifted arrays
// (same seed -> bitwise the same chip at any thread count and query order).

#include <rimc/core/parallel.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_drift {

using namespace rimc;

namespace {

constexpr std::int64_t n_cells = 100000;
constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

struct moments {
  double mean = 0, sd = 0;
};
template <class F>
moments sample(F&& f) {
  double s = 0, s2 = 0;
  for (std::int64_t i = 0; i < n_cells; ++i) {
    const double v = f(static_cast<std::uint64_t>(i));
    s += v;
    s2 += v * v;
  }
  const double m = s / n_cells;
  return {m, std::sqrt(std::max(0.0, s2 / n_cells - m * m))};
}

/// Sample mean and sd against (mean, sd) within 5 standard errors (normal data).
void check_moments(const moments& got, double mean, double sd) {
  INFO("expected mean ", mean, " sd ", sd, ", got mean ", got.mean, " sd ", got.sd);
  CHECK(std::abs(got.mean - mean) <= 5 * sd / std::sqrt(double(n_cells)) + 1e-12);
  CHECK(std::abs(got.sd - sd) <= 5 * sd / std::sqrt(2.0 * n_cells) + 1e-12);
}

/// Every current conductance of an array, in tile / cell order.
template <class A>
std::vector<double> conductances(const A& a) {
  std::vector<double> out;
  for (const auto& t : a.tiles())
    for (std::int64_t r = 0; r < t.rows(); ++r)
      for (std::int64_t c = 0; c < t.cols(); ++c)
        for (int s = 0; s < t.slices(); ++s)
          for (int d = 0; d < A::tile_type::devices; ++d) out.push_back(t.conductance_us(r, c, s, d));
  return out;
}

}  // namespace

TEST_SUITE("drift") {
  TEST_CASE("relative drift has mean G and standard deviation rho G") {
    const relative_drift m;
    for (double rho : {0.05, 0.2}) {
      for (double g : {5.0, 20.0, 38.0}) {
        CAPTURE(rho);
        CAPTURE(g);
        check_moments(sample([&](std::uint64_t i) { return m(g, drift_level{rho}, 42, i); }), g, rho * g);
        CHECK(m.stddev_us(g, drift_level{rho}) == rho * g);
      }
    }
    CHECK(m(17.0, drift_level{0.0}, 1, 2) == 17.0);
  }

  TEST_CASE("log-time relaxation shifts the mean and widens sigma linearly in ln t") {
    const auto m = presets::cmo_reram_drift();
    for (double t : {1.0, 60.0, 3600.0, 86400.0, 1e7}) {
      for (double g : {15.0, 50.0, 80.0}) {
        CAPTURE(t);
        CAPTURE(g);
        const double lt = std::log(t);
        check_moments(sample([&](std::uint64_t i) { return m(g, seconds{t}, 9, i); }), g - 0.0890 * lt, 0.0420 * lt + 0.4118);
      }
    }
    // Times before the fit's first second are held at 1 s.
    CHECK(m(30.0, seconds{0.001}, 3, 5) == m(30.0, seconds{1.0}, 3, 5));
  }

  TEST_CASE("power-law drift draws a folded-normal exponent per cell") {
    const auto m = presets::pcm_drift();
    const double t = 1e5, t0 = 20.0;
    for (double g : {1.0, 5.0, 12.0, 24.0}) {
      CAPTURE(g);
      const double x = g / 25.0;
      const double mu = std::clamp(-0.0155 * std::log(x) + 0.0244, 0.049, 0.1);
      const double s = std::clamp(-0.0125 * std::log(x) - 0.0059, 0.008, 0.045);
      CHECK(m.mu_nu(g) == doctest::Approx(mu).epsilon(1e-14));
      CHECK(m.sigma_nu(g) == doctest::Approx(s).epsilon(1e-14));
      // |N(mu, s^2)|: mean and standard deviation of the folded normal.
      const double phi = 0.5 * std::erfc(mu / s / std::numbers::sqrt2);  // P(N < 0)
      const double fmean = s * std::sqrt(2 / std::numbers::pi) * std::exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * phi);
      const double fsd = std::sqrt(mu * mu + s * s - fmean * fmean);
      const auto nu = sample([&](std::uint64_t i) { return -std::log(m(g, seconds{t}, 4, i) / g) / std::log(t / t0); });
      // The folded normal is close to normal here (mu > 3 s), so the normal standard errors apply.
      check_moments(nu, fmean, fsd);
      // One exponent per cell: the same nu explains every later time.
      const double nu7 = -std::log(m(g, seconds{1e7}, 4, 77) / g) / std::log(1e7 / t0);
      CHECK(nu7 == doctest::Approx(-std::log(m(g, seconds{t}, 4, 77) / g) / std::log(t / t0)).epsilon(1e-9));
    }
    CHECK(m(10.0, seconds{20.0}, 4, 1) == 10.0);
    CHECK(m(10.0, seconds{5.0}, 4, 1) == 10.0);
  }

  TEST_CASE("NeuRRAM sigma equals the fitted polynomials at the fitted times") {
    const neurram_drift m;
    auto poly = [](double x, double c0, double c1, double c2, double c3, double c4) {
      return c0 + c1 * x + c2 * x * x + c3 * x * x * x + c4 * x * x * x * x;
    };
    for (double x : {0.0, 0.1, 0.37, 0.5, 0.8, 1.0}) {
      const double g = 40.0 * x;
      CAPTURE(x);
      CHECK(m.sigma_us(g, seconds{1.0}) == doctest::Approx(poly(x, 0.348, 16.030, -43.853, 45.393, -16.815)).epsilon(1e-12));
      CHECK(m.sigma_us(g, seconds{86400.0}) ==
            doctest::Approx(poly(x, 0.701, 22.086, -50.773, 47.095, -16.458)).epsilon(1e-12));
      CHECK(m.sigma_us(g, seconds{172800.0}) ==
            doctest::Approx(poly(x, 0.782, 20.274, -43.507, 37.062, -11.934)).epsilon(1e-12));
    }
  }

  TEST_CASE("NeuRRAM sigma is interpolated in log time and held outside the fitted times") {
    const neurram_drift m;
    for (double g : {4.0, 20.0, 36.0}) {
      const double s1 = m.sigma_us(g, seconds{1.0}), s2 = m.sigma_us(g, seconds{86400.0}), s3 = m.sigma_us(g, seconds{172800.0});
      CHECK(m.sigma_us(g, seconds{std::sqrt(86400.0)}) == doctest::Approx(0.5 * (s1 + s2)).epsilon(1e-12));
      const double t = 86400.0 * std::pow(2.0, 0.25);  // a quarter of the way from 1 day to 2 days in ln t
      CHECK(m.sigma_us(g, seconds{t}) == doctest::Approx(0.75 * s2 + 0.25 * s3).epsilon(1e-12));
      CHECK(m.sigma_us(g, seconds{0.01}) == s1);
      CHECK(m.sigma_us(g, seconds{1e8}) == s3);
    }
    // Another g_max scales the fitted sigma by g_max / 40 at the same x.
    neurram_drift m80;
    m80.g_max_us = 80.0;
    CHECK(m80.sigma_us(40.0, seconds{3600.0}) == doctest::Approx(2 * m.sigma_us(20.0, seconds{3600.0})).epsilon(1e-12));
  }

  TEST_CASE("NeuRRAM drift samples have mean G and standard deviation sigma(x, t)") {
    const auto m = presets::neurram_relaxation();
    for (double t : {1.0, 3600.0, 86400.0, 129600.0, 172800.0}) {
      for (double g : {4.0, 20.0, 36.0}) {
        CAPTURE(t);
        CAPTURE(g);
        check_moments(sample([&](std::uint64_t i) { return m(g, seconds{t}, 21, i); }), g, m.sigma_us(g, seconds{t}));
      }
    }
  }

  TEST_CASE("read noise sigma follows its formula") {
    CHECK(read_noise::none().sigma_us(10.0) == 0.0);
    CHECK(read_noise::constant(0.2).sigma_us(10.0) == 0.2);
    CHECK(read_noise::proportional(0.01).sigma_us(30.0) == doctest::Approx(0.3));
    const auto r = presets::cmo_reram_read_noise(seconds{3600.0});
    CHECK(r.sigma_us(50.0) ==
          doctest::Approx(0.0277 * std::log10(50.0) * std::sqrt(std::log((3600.0 + 1e-6) / 2e-6))).epsilon(1e-12));
    CHECK(r.sigma_us(0.5) == 0.0);
    CHECK(read_noise::none().is_none());
    CHECK(read_noise::constant(0.0).is_none());
    CHECK_FALSE(r.is_none());
  }

  TEST_CASE("drift and read-noise models reject invalid times and levels with a message naming the field") {
    CHECK_THROWS_WITH_AS(relative_drift{}.validate(drift_level{-0.1}), "[rimc.value_error] relative_drift: rho must be >= 0, got -0.1",
                         value_error);
    CHECK_THROWS_WITH(relative_drift{}.validate(drift_level{nan_v}), "[rimc.value_error] relative_drift: rho must be finite, got nan");
    CHECK_THROWS_WITH(log_time_drift{}.validate(seconds{-1.0}), "[rimc.value_error] log_time_drift: t_s must be >= 0, got -1");
    log_time_drift bad;
    bad.sigma_offset_us = nan_v;
    CHECK_THROWS_WITH(bad.validate(seconds{1.0}),
                      "[rimc.value_error] log_time_drift: sigma_offset_us must be finite, got nan");
    CHECK_THROWS_WITH(power_law_drift{}.validate(seconds{nan_v}), "[rimc.value_error] power_law_drift: t_s must be finite, got nan");
    power_law_drift p;
    p.t0_s = 0;
    CHECK_THROWS_WITH(p.validate(seconds{1.0}), "[rimc.value_error] power_law_drift: t0_s must be > 0 and finite, got 0");
    CHECK_THROWS_WITH(neurram_drift{}.validate(seconds{-5.0}), "[rimc.value_error] neurram_drift: t_s must be >= 0, got -5");
    neurram_drift nr;
    nr.g_max_us = -1;
    CHECK_THROWS_WITH(nr.validate(seconds{1.0}), "[rimc.value_error] neurram_drift: g_max_us must be > 0 and finite, got -1");
    CHECK_THROWS_WITH(read_noise::constant(-0.1).validate(),
                      "[rimc.value_error] read_noise: sigma_us must be >= 0, got -0.1");
    CHECK_THROWS_WITH(read_noise::cmo_reram(seconds{1e-7}).validate(),
                      "[rimc.value_error] read_noise: t_s must be >= 1e-06, got 1e-07");
    // The array checks before touching any cell.
    TiledArray<> a(test::random_tensor(Shape{8, 4}, 1), device_config{});
    const auto before = conductances(a);
    CHECK_THROWS_AS(a.drift_to(relative_drift{}, drift_level{-0.2}, 1), value_error);
    CHECK(conductances(a) == before);
  }

  TEST_CASE("drifted conductances are bitwise identical for any thread count and differ between seeds") {
    const Tensor w = test::random_tensor(Shape{300, 70}, 3);
    device_config d;
    d.slices = 2;
    d.bits_per_cell = 4;
    d.noise = programming_noise::proportional(0.02);
    using array = TiledArray<CrossbarTile<float, 128, 64>>;
    auto drifted = [&](int threads, std::uint64_t seed) {
      const thread_count_guard guard(threads);
      array a(w, d, 7);
      a.drift_to(presets::pcm_drift(40.0), seconds{86400.0}, seed);
      return conductances(a);
    };
    const auto one = drifted(1, 5);
    CHECK(one == drifted(2, 5));
    CHECK(one == drifted(3, 5));
    const auto other = drifted(2, 6);
    REQUIRE(other.size() == one.size());
    // Cells above g_min (the used device of each pair) must differ between seeds;
    // unused devices decay below g_min and are clamped back to it under either seed.
    std::size_t used = 0, differ = 0;
    for (std::size_t i = 0; i < one.size(); ++i) {
      if (one[i] > d.g_min_us || other[i] > d.g_min_us) {
        ++used;
        differ += one[i] != other[i];
      }
    }
    CHECK(used > one.size() / 3);
    CHECK(differ == used);
  }

  TEST_CASE("drift is re-derived from the programmed state, so any time can be queried in any order") {
    const Tensor w = test::random_tensor(Shape{50, 30}, 8);
    TiledArray<CrossbarTile<double, 32, 32>> a(w, presets::cmo_reram_device(), 2);
    const auto programmed = conductances(a);
    const auto m = presets::cmo_reram_drift();
    a.drift_to(m, seconds{86400.0}, 9);
    const auto day = conductances(a);
    a.drift_to(m, seconds{1.0}, 9);
    const auto second = conductances(a);
    a.drift_to(m, seconds{86400.0}, 9);
    CHECK(conductances(a) == day);
    CHECK(second != day);
    CHECK(second != programmed);
    a.reset_drift();
    CHECK(conductances(a) == programmed);
    // Drift never writes a cell.
    CHECK(a.rram_writes() == static_cast<std::uint64_t>(50 * 30 * 2));
  }

  TEST_CASE("with the programming-window bound, drifted conductances are clamped to the device range") {
    const Tensor w = test::random_tensor(Shape{64, 64}, 12);
    device_config d;
    d.bounds = drift_bounds::programming_window;
    TiledArray<> a(w, d, 1);
    a.drift_to(relative_drift{}, drift_level{3.0}, 4);
    const auto g = conductances(a);
    int lo = 0, hi = 0;
    for (double v : g) {
      REQUIRE(v >= d.g_min_us);
      REQUIRE(v <= d.g_max_us);
      lo += v == d.g_min_us;
      hi += v == d.g_max_us;
    }
    CHECK(lo > 0);
    CHECK(hi > 0);
  }

  TEST_CASE("relative drift on an array scales each conductance by 1 + rho xi") {
    // Through the tiles, with the same (seed, cell) as the model itself, under the physical
    // bound (G >= 0, the default). Weights in [0.1, 0.5] of the layer scale (per-layer scale 1):
    // G <= 20 uS, so the floor at 0 needs a 5-sigma draw and is negligible.
    Tensor w = test::random_tensor(Shape{200, 250}, 6, layout::nchw, 0.1f, 0.5f);
    w[0] = 1.0f;
    device_config d;
    d.g_min_us = 0.0;
    d.scale = weight_scale::per_layer;
    TiledArray<CrossbarTile<double, 256, 256>> a(w, d, 1);
    a.drift_to(relative_drift{}, drift_level{0.2}, 33);
    const auto& t = a.tile(0, 0);
    double s = 0, s2 = 0;
    std::int64_t n = 0;
    for (std::int64_t r = 0; r < t.rows(); ++r)
      for (std::int64_t c = 0; c < t.cols(); ++c) {
        const double g0 = t.programmed_us(r, c, 0, 0);
        const double g1 = t.conductance_us(r, c, 0, 0);
        REQUIRE(g1 == std::max(relative_drift{}(g0, drift_level{0.2}, 33, t.global_cell(r, c, 0, 0)), 0.0));
        const double z = (g1 / g0 - 1) / 0.2;
        s += z;
        s2 += z * z;
        ++n;
      }
    CHECK(n >= 50000);
    const double mean = s / double(n), sd = std::sqrt(s2 / double(n) - mean * mean);
    CHECK(std::abs(mean) < 5 / std::sqrt(double(n)));
    CHECK(std::abs(sd - 1) < 5 / std::sqrt(2.0 * double(n)));
  }
}

}  // namespace unit_drift
