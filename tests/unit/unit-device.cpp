// Tests of the device layer: configuration checks, the weight-to-conductance
// mapping (differential and offset, levels, bit slicing, continuous cells),
// quantisation bounds, programming noise statistics and presets.

#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_device {

using namespace rimc;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

/// Mean and standard deviation of n values.
struct moments {
  double mean = 0, sd = 0;
};
template <class F>
moments sample(std::int64_t n, F&& f) {
  double s = 0, s2 = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = f(static_cast<std::uint64_t>(i));
    s += v;
    s2 += v * v;
  }
  const double m = s / static_cast<double>(n);
  return {m, std::sqrt(std::max(0.0, s2 / static_cast<double>(n) - m * m))};
}

/// Checks sample moments against (mean, sd) within 5 standard errors.
void check_moments(const moments& got, double mean, double sd, std::int64_t n) {
  const double rn = std::sqrt(static_cast<double>(n));
  INFO("expected mean ", mean, " sd ", sd, ", got mean ", got.mean, " sd ", got.sd);
  CHECK(std::abs(got.mean - mean) <= 5 * sd / rn + 1e-12);
  CHECK(std::abs(got.sd - sd) <= 5 * sd / std::sqrt(2.0 * static_cast<double>(n)) + 1e-12);
}

/// Weights [K, O] on the code grid: w = s_o q / q_max with q integer, |q| = q_max in row 0
/// (one s for all columns when `per_layer`).
Tensor grid_weights(std::int64_t K, std::int64_t O, const level_grid& g, std::uint64_t seed, bool per_layer) {
  Tensor w(Shape{K, O});
  const counter_rng rng(seed, 3);
  for (std::int64_t o = 0; o < O; ++o) {
    const double s = per_layer ? 0.75 : static_cast<float>(0.25 + rng.uniform(static_cast<std::uint64_t>(o)));
    for (std::int64_t k = 0; k < K; ++k) {
      double q = std::floor(rng.uniform(static_cast<std::uint64_t>(1000 + k * O + o)) * (2 * g.q_max + 1)) - g.q_max;
      if (k == 0) q = (o % 2 ? -g.q_max : g.q_max);
      w[k * O + o] = static_cast<float>(s * q / g.q_max);
    }
  }
  return w;
}

template <class Tile>
void check_round_trip_exact(const device_config& dev) {
  const auto g = make_level_grid<typename Tile::mapping_type, typename Tile::quantiser_type>(dev);
  const Tensor w = grid_weights(37, 11, g, 5, dev.scale == weight_scale::per_layer);
  const TiledArray<Tile> a(w, dev, 1);
  const Tensor e = a.effective_weights();
  for (std::int64_t i = 0; i < w.numel(); ++i) {
    INFO("element ", i, ": ", w[i], " read back as ", e[i]);
    REQUIRE(e[i] == w[i]);
  }
}

template <class Tile>
void check_half_level_bound(const device_config& dev) {
  const Tensor w = test::random_tensor(Shape{70, 23}, 9);
  const TiledArray<Tile> a(w, dev, 1);
  const Tensor e = a.effective_weights();
  const auto& g = a.grid();
  double worst = 0;
  for (std::int64_t k = 0; k < 70; ++k)
    for (std::int64_t o = 0; o < 23; ++o) {
      const double half_level = a.scales()[static_cast<std::size_t>(o)] / (2 * g.q_max);
      worst = std::max(worst, std::abs(double(e[k * 23 + o]) - double(w[k * 23 + o])) / half_level);
    }
  INFO("worst error in half levels: ", worst);
  CHECK(worst <= 1.0 + 1e-4);
  CHECK(worst > 0.5);  // the grid is coarse enough that rounding shows
}

}  // namespace

TEST_SUITE("device") {
  TEST_CASE("device_config rejects invalid fields with a message naming them") {
    device_config d;
    CHECK_NOTHROW(d.validate());
    d.g_min_us = 50;
    CHECK_THROWS_WITH_AS(d.validate(), "[rimc.value_error] device_config: g_min_us (50) must be < g_max_us (40)",
                         value_error);
    d.g_min_us = 40;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: g_min_us (40) must be < g_max_us (40)");
    d.g_min_us = -1;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: g_min_us must be >= 0, got -1");
    d.g_min_us = nan_v;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: g_min_us must be finite, got nan");
    d = {};
    d.g_max_us = nan_v;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: g_max_us must be finite, got nan");
    d = {};
    d.bits_per_cell = 0;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: bits_per_cell must be in [1, 8], got 0");
    d.bits_per_cell = 17;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: bits_per_cell must be in [1, 8], got 17");
    d = {};
    d.slices = 0;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: slices must be in [1, 4], got 0");
    d.slices = 3;
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] device_config: bits_per_cell * slices must be <= 16, got 8 * 3");
    d = {};
    d.noise = programming_noise::constant(nan_v);
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] programming_noise: c0_us must be finite, got nan");
    d.noise = programming_noise::proportional(std::numeric_limits<double>::infinity());
    CHECK_THROWS_WITH(d.validate(), "[rimc.value_error] programming_noise: c1 must be finite, got inf");
    // The array validates its device before programming.
    d = {};
    d.g_max_us = 0.5;
    CHECK_THROWS_WITH(TiledArray<>(Tensor(Shape{2, 2}), d),
                      "[rimc.value_error] device_config: g_min_us (1) must be < g_max_us (0.5)");
  }

  TEST_CASE("level grids reject mappings that cannot represent signed weights") {
    device_config d;
    d.bits_per_cell = 1;
    CHECK_THROWS_WITH((void)(make_level_grid<offset_mapping, nearest_level>(d)),
                      "[rimc.value_error] offset_mapping: needs at least 4 levels per weight (bits_per_cell * slices >= 2), got 2");
    CHECK_NOTHROW((void)(make_level_grid<differential_mapping, nearest_level>(d)));
    d.slices = 2;
    CHECK_THROWS_WITH((void)(make_level_grid<differential_mapping, continuous_levels>(d)),
                      "[rimc.value_error] continuous_levels: slices must be 1, got 2");
  }

  TEST_CASE("level grids have the documented code ranges") {
    device_config d;
    d.bits_per_cell = 3;
    d.slices = 2;
    const auto diff = make_level_grid<differential_mapping, nearest_level>(d);
    CHECK(diff.radix == 8);
    CHECK(diff.lm1 == 7);
    CHECK(diff.q_max == 63);
    CHECK(diff.q_off == 0);
    const auto off = make_level_grid<offset_mapping, nearest_level>(d);
    CHECK(off.q_max == 31);
    CHECK(off.q_off == 31);
    std::array<double, 2> digits{};
    diff.split(45, digits);
    CHECK(digits[0] == 5);
    CHECK(digits[1] == 5);
    diff.split(62, digits);
    CHECK(digits[0] == 6);
    CHECK(digits[1] == 7);
    CHECK(diff.conductance_us(7) == doctest::Approx(d.g_max_us));
    CHECK(diff.conductance_us(0) == d.g_min_us);
    CHECK(diff.digit(diff.conductance_us(3)) == doctest::Approx(3.0));
  }

  TEST_CASE("mapping round trip is exact with no noise for weights on the level grid") {
    for (int bits : {1, 2, 4, 8}) {
      for (int slices : {1, 2}) {
        device_config d;
        d.bits_per_cell = bits;
        d.slices = slices;
        CAPTURE(bits);
        CAPTURE(slices);
        check_round_trip_exact<CrossbarTile<double, 16, 8, differential_mapping>>(d);
        if (bits * slices >= 2) check_round_trip_exact<CrossbarTile<double, 16, 8, offset_mapping>>(d);
        d.scale = weight_scale::per_layer;
        check_round_trip_exact<CrossbarTile<double, 256, 256, differential_mapping>>(d);
      }
    }
  }

  TEST_CASE("quantisation error is bounded by half a level") {
    for (int bits : {2, 3, 5}) {
      for (int slices : {1, 2}) {
        for (auto scale : {weight_scale::per_column, weight_scale::per_layer}) {
          device_config d;
          d.bits_per_cell = bits;
          d.slices = slices;
          d.scale = scale;
          CAPTURE(bits);
          CAPTURE(slices);
          check_half_level_bound<CrossbarTile<double, 32, 16, differential_mapping>>(d);
          check_half_level_bound<CrossbarTile<float, 32, 16, offset_mapping>>(d);
        }
      }
    }
  }

  TEST_CASE("continuous cells map weights without level quantisation") {
    const Tensor w = test::random_tensor(Shape{40, 9}, 4);
    const TiledArray<CrossbarTile<double, 16, 4, differential_mapping, continuous_levels>> a(w, device_config{});
    const TiledArray<CrossbarTile<double, 16, 4, offset_mapping, continuous_levels>> b(w, device_config{});
    test::check_close(a.effective_weights(), w, 1e-6, 1e-6);
    test::check_close(b.effective_weights(), w, 1e-6, 1e-6);
  }

  TEST_CASE("differential pairs keep the unused device at g_min and bit slices hold base-2^bits digits") {
    device_config d;
    d.bits_per_cell = 2;
    d.slices = 3;
    d.scale = weight_scale::per_layer;
    // Codes in [-63, 63]: +63 = digits (3, 3, 3), -45 = (1, 3, 2), 0 = (0, 0, 0).
    const Tensor w = Tensor::from(Shape{3, 1}, {1.0f, -45.0f / 63.0f, 0.0f});
    const TiledArray<CrossbarTile<double, 4, 4>> a(w, d);
    const auto& t = a.tile(0, 0);
    const auto g = [&](double digit) { return d.g_min_us + digit / 3.0 * (d.g_max_us - d.g_min_us); };
    for (int s = 0; s < 3; ++s) {
      CHECK(t.programmed_us(0, 0, s, 0) == doctest::Approx(g(3)));
      CHECK(t.programmed_us(0, 0, s, 1) == d.g_min_us);
      CHECK(t.programmed_us(1, 0, s, 0) == d.g_min_us);
      CHECK(t.programmed_us(2, 0, s, 0) == d.g_min_us);
      CHECK(t.programmed_us(2, 0, s, 1) == d.g_min_us);
    }
    CHECK(t.programmed_us(1, 0, 0, 1) == doctest::Approx(g(1)));
    CHECK(t.programmed_us(1, 0, 1, 1) == doctest::Approx(g(3)));
    CHECK(t.programmed_us(1, 0, 2, 1) == doctest::Approx(g(2)));
    CHECK(a.rram_writes() == 3u * 3u * 2u);
  }

  TEST_CASE("offset mapping puts zero at mid-range") {
    device_config d;
    d.bits_per_cell = 4;
    const Tensor w = Tensor::from(Shape{3, 1}, {0.5f, 0.0f, -0.5f});
    const TiledArray<CrossbarTile<double, 4, 4, offset_mapping>> a(w, d);
    const auto& g = a.grid();  // q_max = q_off = 7: codes 14, 7, 0
    CHECK(a.tile(0, 0).programmed_us(0, 0, 0, 0) == doctest::Approx(g.conductance_us(14)));
    CHECK(a.tile(0, 0).programmed_us(1, 0, 0, 0) == doctest::Approx(g.conductance_us(7)));
    CHECK(a.tile(0, 0).programmed_us(2, 0, 0, 0) == d.g_min_us);
    CHECK(a.effective_weights()[1] == 0.0f);
  }

  TEST_CASE("weight scales are per column or per layer") {
    const Tensor w = Tensor::from(Shape{2, 3}, {0.5f, -2.0f, 0.0f, -0.25f, 1.0f, 0.0f});
    device_config d;
    const TiledArray<> col(w, d);
    CHECK(col.scales() == std::vector<float>{0.5f, 2.0f, 0.0f});
    test::check_close(col.effective_weights(), w, 0, 2.0 / 510 + 1e-6);  // half a level of the 8-bit grid
    d.scale = weight_scale::per_layer;
    const TiledArray<> layer(w, d);
    CHECK(layer.scales() == std::vector<float>{2.0f, 2.0f, 2.0f});
  }

  TEST_CASE("programming noise has the configured mean and standard deviation") {
    constexpr std::int64_t n = 100000;
    struct noise_case {
      const char* name;
      device_config dev;
      std::function<double(double)> sigma;
    };
    device_config constant, proportional;
    constant.noise = programming_noise::constant(0.3);
    proportional.noise = programming_noise::proportional(0.05);
    const double pcm_gmax = 25.0;
    const std::vector<noise_case> cases{
        {"constant", constant, [](double) { return 0.3; }},
        {"proportional", proportional, [](double g) { return 0.05 * g; }},
        {"CMO 0.2%", presets::cmo_reram_device(presets::cmo_acceptance::tight),
         [](double g) { return 8.11e-4 + 1.069e-3 * g; }},
        {"CMO 2%", presets::cmo_reram_device(presets::cmo_acceptance::loose),
         [](double g) { return 1.122e-2 + 1.129e-2 * g; }},
        {"PCM", presets::pcm_device(pcm_gmax),
         [=](double g) {
           const double x = g / pcm_gmax;
           return (0.26348 + 1.9650 * x - 1.1731 * x * x) * (pcm_gmax / 25.0);
         }},
    };
    for (const auto& c : cases) {
      SUBCASE(c.name) {
        const double lo = c.dev.g_min_us, hi = c.dev.g_max_us;
        for (double frac : {0.3, 0.5, 0.7}) {
          const double target = lo + frac * (hi - lo);
          CAPTURE(target);
          CHECK(c.dev.noise.sigma_us(target) == doctest::Approx(c.sigma(target)).epsilon(1e-12));
          const auto m = sample(n, [&](std::uint64_t i) { return program_cell(target, c.dev, 11, i); });
          check_moments(m, target, c.sigma(target), n);
        }
      }
    }
    SUBCASE("none") {
      const device_config d;
      CHECK(program_cell(12.5, d, 3, 7) == 12.5);
    }
  }

  TEST_CASE("programmed conductances are clamped to the device range") {
    device_config d;
    d.noise = programming_noise::constant(30.0);
    const Tensor w = test::random_tensor(Shape{64, 32}, 2);
    const TiledArray<CrossbarTile<float, 32, 32>> a(w, d, 5);
    int at_lo = 0, at_hi = 0;
    for (const auto& t : a.tiles())
      for (std::int64_t r = 0; r < t.rows(); ++r)
        for (std::int64_t c = 0; c < t.cols(); ++c)
          for (int dv = 0; dv < 2; ++dv) {
            const double g = t.programmed_us(r, c, 0, dv);
            REQUIRE(g >= d.g_min_us);
            REQUIRE(g <= d.g_max_us);
            at_lo += g == d.g_min_us;
            at_hi += g == static_cast<float>(d.g_max_us);
          }
    CHECK(at_lo > 0);
    CHECK(at_hi > 0);
  }

  TEST_CASE("presets carry the constants of the public models") {
    const auto cmo = presets::cmo_reram_device();
    CHECK(cmo.g_min_us == 9.0);
    CHECK(cmo.g_max_us == 88.0);
    const auto rel = presets::cmo_reram_drift();
    CHECK(rel.mean_slope_us == -0.0890);
    CHECK(rel.sigma_slope_us == 0.0420);
    CHECK(rel.sigma_offset_us == 0.4118);
    const auto pcm = presets::pcm_drift();
    CHECK(pcm.t0_s == 20.0);
    CHECK(pcm.g_max_us == 25.0);
    CHECK(presets::neurram_device().g_max_us == 40.0);
    CHECK(presets::neurram_relaxation().g_max_us == 40.0);
    CHECK(presets::pcm_device().g_min_us == 0.0);
    CHECK_NOTHROW(presets::paper_device().validate());
    CHECK(presets::cmo_reram_read_noise(seconds{100.0}).form == read_noise::kind::cmo_reram);
  }
}

}  // namespace unit_device
