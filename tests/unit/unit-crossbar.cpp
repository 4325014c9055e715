// Tests of the tile-exact crossbar product (TiledArray::mvm): ideal periphery
// against the effective weights (double-precision reference and oneDNN),
// DAC and ADC quantisation against their bounds, ADC calibration, output and
// read noise statistics, reproducibility, and parameter checks.

#include <rimc/core/parallel.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>
#include <rimc/kernels/linear.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_crossbar {

using namespace rimc;

namespace {

constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();

/// y [N, O] = x [N, K] w [K, O] in double precision.
Tensor reference_product(const Tensor& x, const Tensor& w) {
  const auto N = x.dim(0), K = x.dim(1), O = w.dim(1);
  Tensor y(Shape{N, O});
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      double acc = 0;
      for (std::int64_t k = 0; k < K; ++k) acc += double(x[n * K + k]) * double(w[k * O + o]);
      y[n * O + o] = static_cast<float>(acc);
    }
  return y;
}

/// Relative comparison with an absolute floor of rtol * max |expected|.
void check_relative(const Tensor& got, const Tensor& expected, double rtol) {
  const double scale = std::max(1e-30, double(expected.vector().cwiseAbs().maxCoeff()));
  test::check_close(got, expected, rtol, rtol * scale);
}

template <class A>
A drifted_array(const Tensor& w, const device_config& d) {
  A a(w, d, 3);
  a.drift_to(presets::neurram_relaxation(), seconds{3600.0}, 4);
  return a;
}

/// Largest ADC rounding error of each output column: sum over the tiles and
/// slices feeding it of factor_o * place(s) * range / (2 steps).
template <class A>
std::vector<double> adc_bound(const A& a, int bits) {
  const double steps = std::ldexp(1.0, bits - 1) - 1;
  std::vector<double> bound(static_cast<std::size_t>(a.cols()), 0.0);
  const auto& g = a.grid();
  const auto S = static_cast<std::size_t>(g.slices);
  for (std::size_t ti = 0; ti < a.tiles().size(); ++ti) {
    const auto& t = a.tiles()[ti];
    for (std::size_t s = 0; s < S; ++s) {
      for (std::int64_t c = 0; c < t.cols(); ++c) {
        const double r = a.adc_range(ti, static_cast<int>(s), c);
        const auto o = static_cast<std::size_t>(t.col0() + c);
        bound[o] += a.scales()[o] * g.lm1 / g.q_max * g.place(static_cast<int>(s)) * r / (2 * steps);
      }
    }
  }
  return bound;
}

}  // namespace

TEST_SUITE("crossbar") {
  TEST_CASE_TEMPLATE("tile-exact product with ideal periphery equals the effective weights for ragged tilings", Tile,
                     CrossbarTile<float, 128, 64, differential_mapping>, CrossbarTile<float, 128, 64, offset_mapping>,
                     CrossbarTile<double, 16, 8, differential_mapping>) {
    for (int slices : {1, 2}) {
      CAPTURE(slices);
      device_config d;
      d.bits_per_cell = 4;
      d.slices = slices;
      d.noise = programming_noise::proportional(0.01);
      const Tensor w = test::random_tensor(Shape{300, 70}, 1);
      const auto a = drifted_array<TiledArray<Tile>>(w, d);
      CHECK(a.tile_grid_rows() == (300 + Tile::max_rows - 1) / Tile::max_rows);
      CHECK(a.tile_grid_cols() == (70 + Tile::max_cols - 1) / Tile::max_cols);
      const Tensor x = test::random_tensor(Shape{33, 300}, 2);
      const Tensor eff = a.effective_weights();
      const Tensor y = a.mvm(x);
      check_relative(y, reference_product(x, eff), 1e-5);
      check_relative(y, matmul(x, eff), 1e-5);
    }
  }

  TEST_CASE("tiles hold the conductances of their block whatever the tile size") {
    const Tensor w = test::random_tensor(Shape{200, 90}, 5);
    device_config d;
    d.noise = programming_noise::constant(0.5);
    const auto small = drifted_array<TiledArray<CrossbarTile<float, 32, 16>>>(w, d);
    const auto large = drifted_array<TiledArray<CrossbarTile<float, 256, 256>>>(w, d);
    CHECK(small.effective_weights() == large.effective_weights());
    const auto& t = small.tile(3, 2);  // rows 96..127, cols 32..47
    CHECK(t.conductance_us(5, 7, 0, 1) == large.tile(0, 0).conductance_us(101, 39, 0, 1));
  }

  TEST_CASE("an 8-bit ADC calibrated at the maximum current stays within half a step per tile and slice") {
    for (int slices : {1, 2}) {
      CAPTURE(slices);
      device_config d;
      d.bits_per_cell = slices == 1 ? 8 : 4;
      d.slices = slices;
      const Tensor w = test::random_tensor(Shape{300, 70}, 6);
      auto a = drifted_array<TiledArray<CrossbarTile<float, 128, 64>>>(w, d);
      const Tensor x = test::random_tensor(Shape{40, 300}, 7);
      const Tensor ideal = a.mvm(x);
      periphery_config p;
      p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 100.0};
      a.set_periphery(p);
      a.calibrate_adc(x);
      const Tensor y = a.mvm(x);
      const auto bound = adc_bound(a, 8);
      double worst = 0, total = 0;
      for (std::int64_t n = 0; n < 40; ++n)
        for (std::int64_t o = 0; o < 70; ++o) {
          const double err = std::abs(double(y[n * 70 + o]) - double(ideal[n * 70 + o]));
          const double allowed = bound[static_cast<std::size_t>(o)] + 1e-5 * std::abs(double(ideal[n * 70 + o]));
          worst = std::max(worst, err / allowed);
          total += err;
        }
      INFO("worst error / bound = ", worst);
      CHECK(worst <= 1.0);
      CHECK(total > 0);  // the ADC did quantise
    }
  }

  TEST_CASE("a per-column ADC takes each column's own range and beats one range per tile on uneven columns") {
    device_config d;
    d.scale = weight_scale::per_layer;  // columns with small weights carry small currents
    Tensor w = test::random_tensor(Shape{300, 70}, 6);
    for (std::int64_t k = 0; k < 300; ++k)
      for (std::int64_t o = 0; o < 70; ++o) w[k * 70 + o] *= static_cast<float>(std::pow(0.9, o % 35));
    using array_t = TiledArray<CrossbarTile<float, 128, 64>>;
    auto tile_adc = drifted_array<array_t>(w, d);
    auto col_adc = drifted_array<array_t>(w, d);
    const Tensor x = test::random_tensor(Shape{40, 300}, 7);
    const Tensor ideal = col_adc.mvm(x);
    periphery_config p;
    p.adc = adc_config{6, adc_range_mode::percentile, 0.0, 100.0};
    tile_adc.set_periphery(p);
    tile_adc.calibrate_adc(x);
    p.adc->per_column = true;
    col_adc.set_periphery(p);
    REQUIRE_THROWS_AS((void)col_adc.mvm(x), value_error);  // not calibrated yet
    col_adc.calibrate_adc(x);
    // One range per column of every (tile, slice): 3 x 2 tiles, 64 + 6 columns per tile row.
    CHECK(col_adc.adc_ranges().size() == 3 * 70);
    // Each column's range is the largest |current| of that column (percentile 100).
    const auto& t = col_adc.tile(1, 0);
    const Tensor xin = [&] {
      Tensor b(Shape{40, t.rows()});
      for (std::int64_t n = 0; n < 40; ++n)
        for (std::int64_t r = 0; r < t.rows(); ++r) b[n * t.rows() + r] = x[n * 300 + t.row0() + r];
      return b;
    }();
    const Tensor cur = matmul(xin, t.analog_matrix(0));
    for (std::int64_t j = 0; j < t.cols(); ++j) {
      double m = 0;
      for (std::int64_t n = 0; n < 40; ++n) m = std::max(m, std::abs(double(cur[n * t.cols() + j])));
      CHECK(col_adc.adc_range(2, 0, j) == doctest::Approx(m).epsilon(1e-5));
    }
    // Within half a step of each column's own range, and closer to the ideal product than per tile.
    const Tensor yc = col_adc.mvm(x), yt = tile_adc.mvm(x);
    const auto bound = adc_bound(col_adc, 6);
    double err_col = 0, err_tile = 0, worst = 0;
    for (std::int64_t n = 0; n < 40; ++n)
      for (std::int64_t o = 0; o < 70; ++o) {
        const double ref = ideal[n * 70 + o];
        const double ec = std::abs(double(yc[n * 70 + o]) - ref), et = std::abs(double(yt[n * 70 + o]) - ref);
        worst = std::max(worst, ec / (bound[static_cast<std::size_t>(o)] + 1e-5 * std::abs(ref)));
        err_col += ec;
        err_tile += et;
      }
    INFO("worst error / bound = ", worst, ", total error per column ADC ", err_col, ", per tile ", err_tile);
    CHECK(worst <= 1.0);
    CHECK(err_col < 0.5 * err_tile);
  }

  TEST_CASE("a fixed ADC range saturates currents beyond it") {
    device_config d;
    const Tensor w = test::random_tensor(Shape{64, 10}, 8);
    TiledArray<> a(w, d);
    const Tensor x = test::random_tensor(Shape{50, 64}, 9);
    const Tensor ideal = a.mvm(x);
    const double range = 0.5, steps = 127;
    periphery_config p;
    p.adc = adc_config{8, adc_range_mode::fixed, range, 100.0};
    a.set_periphery(p);
    const Tensor y = a.mvm(x);
    int saturated = 0;
    for (std::int64_t n = 0; n < 50; ++n)
      for (std::int64_t o = 0; o < 10; ++o) {
        const double f = a.scales()[static_cast<std::size_t>(o)] * a.grid().lm1 / a.grid().q_max;
        const double c = double(ideal[n * 10 + o]) / f;  // the ideal column current
        saturated += std::abs(c) > range;
        CHECK(std::abs(double(y[n * 10 + o]) - f * std::clamp(c, -range, range)) <= f * range / (2 * steps) + 1e-5);
      }
    CHECK(saturated > 0);
  }

  TEST_CASE("the DAC quantises each input vector's row block to its abs-max scale") {
    device_config d;
    const Tensor w = test::random_tensor(Shape{100, 12}, 10);
    TiledArray<CrossbarTile<float, 64, 64>> a(w, d);
    periphery_config p;
    p.dac = dac_config{6, dac_scaling::per_vector_absmax, 1.0};
    a.set_periphery(p);
    const Tensor x = test::random_tensor(Shape{20, 100}, 11);
    Tensor xq = x;
    for (std::int64_t n = 0; n < 20; ++n)
      for (std::int64_t k0 : {0, 64}) {
        const std::int64_t k1 = std::min<std::int64_t>(k0 + 64, 100);
        double s = 0;
        for (std::int64_t k = k0; k < k1; ++k) s = std::max(s, std::abs(double(x[n * 100 + k])));
        for (std::int64_t k = k0; k < k1; ++k) xq[n * 100 + k] = static_cast<float>(std::nearbyint(x[n * 100 + k] / s * 31) / 31 * s);
      }
    check_relative(a.mvm(x), reference_product(xq, a.effective_weights()), 1e-5);
    // A fixed DAC range clips inputs beyond it.
    p.dac = dac_config{16, dac_scaling::fixed, 0.5};
    a.set_periphery(p);
    Tensor xc = x;
    for (auto& v : xc.values()) v = std::clamp(v, -0.5f, 0.5f);
    check_relative(a.mvm(x), reference_product(xc, a.effective_weights()), 1e-4);
  }

  TEST_CASE("ADC calibration sets each tile's range to the percentile of its currents") {
    device_config d;
    const Tensor w = test::random_tensor(Shape{50, 30}, 12);
    TiledArray<CrossbarTile<float, 64, 16>> a(w, d);
    periphery_config p;
    p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 50.0};
    a.set_periphery(p);
    const Tensor x = test::random_tensor(Shape{41, 50}, 13);
    CHECK_THROWS_WITH_AS((void)a.mvm(x),
                         "[rimc.value_error] TiledArray: the ADC range is not calibrated "
                         "(adc_range_mode::percentile): call calibrate_adc first",
                         value_error);
    a.calibrate_adc(x);
    REQUIRE(a.adc_ranges().size() == 2);
    for (std::size_t ti = 0; ti < 2; ++ti) {
      const Tensor c = reference_product(x, a.tiles()[ti].analog_matrix(0));
      std::vector<float> v(c.values().begin(), c.values().end());
      for (auto& e : v) e = std::abs(e);
      std::sort(v.begin(), v.end());
      const auto idx = static_cast<std::size_t>(std::ceil(0.5 * double(v.size()))) - 1;
      CHECK(a.adc_ranges()[ti] == doctest::Approx(v[idx]).epsilon(1e-5));
    }
    CHECK_NOTHROW((void)a.mvm(x));
  }

  TEST_CASE("periphery parameters are checked with a message naming the field") {
    periphery_config p;
    p.dac = dac_config{0, dac_scaling::per_vector_absmax, 1.0};
    CHECK_THROWS_WITH_AS(p.validate(), "[rimc.value_error] dac_config: bits must be in [2, 16], got 0", value_error);
    p.dac->bits = 17;
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] dac_config: bits must be in [2, 16], got 17");
    p.dac = dac_config{8, dac_scaling::fixed, nan_v};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] dac_config: range must be finite, got nan");
    p.dac = dac_config{8, dac_scaling::fixed, -1.0};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] dac_config: range must be > 0, got -1");
    p.dac.reset();
    p.adc = adc_config{0, adc_range_mode::percentile, 0.0, 99.0};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] adc_config: bits must be in [2, 16], got 0");
    p.adc = adc_config{20, adc_range_mode::percentile, 0.0, 99.0};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] adc_config: bits must be in [2, 16], got 20");
    p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 0.0};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] adc_config: percentile must be in (0, 100], got 0");
    p.adc = adc_config{8, adc_range_mode::percentile, 0.0, nan_v};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] adc_config: percentile must be finite, got nan");
    p.adc = adc_config{8, adc_range_mode::fixed, 0.0, 99.0};
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] adc_config: range must be > 0, got 0");
    p.adc.reset();
    p.output_noise = -0.5;
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] periphery_config: output_noise must be >= 0, got -0.5");
    p.output_noise = nan_v;
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] periphery_config: output_noise must be finite, got nan");
    p.output_noise = 0;
    p.read = read_noise::proportional(-1);
    CHECK_THROWS_WITH(p.validate(), "[rimc.value_error] read_noise: ratio must be >= 0, got -1");
    // Arrays refuse them too, and check input shapes.
    TiledArray<> a(test::random_tensor(Shape{8, 4}, 1), device_config{});
    CHECK_THROWS_AS(a.set_periphery(p), value_error);
    CHECK_THROWS_WITH_AS((void)a.mvm(Tensor(Shape{2, 9})), "[rimc.shape_error] TiledArray: x must be [N, 8], got [2, 9]",
                         shape_error);
    CHECK_THROWS_WITH(a.calibrate_adc(Tensor(Shape{2, 8})),
                      "[rimc.value_error] TiledArray::calibrate_adc: the periphery has no ADC and no calibrated DAC");
    using small_array = TiledArray<CrossbarTile<float, 32, 32>>;
    CHECK_THROWS_WITH_AS(small_array(Tensor(Shape{98, 4}), device_config{}, 0, periphery_config::ideal(), 49),
                         "[rimc.shape_error] TiledArray: a row group of 49 rows must divide K = 98 and fit a tile of 32 rows",
                         shape_error);
    CHECK_THROWS_AS(TiledArray<>(Tensor(Shape{10, 4}), device_config{}, 0, periphery_config::ideal(), 4), shape_error);
    CHECK(periphery_config::ideal().is_ideal());
    CHECK_FALSE(periphery_config::quantised(8, 8).is_ideal());
  }

  TEST_CASE("output noise adds N(0, sigma^2) to every column current") {
    device_config d;
    d.scale = weight_scale::per_layer;
    const Tensor w = test::random_tensor(Shape{50, 100}, 14);
    TiledArray<> a(w, d);
    const Tensor x = test::random_tensor(Shape{1000, 50}, 15);
    const Tensor clean = a.mvm(x);
    periphery_config p;
    p.output_noise = 0.05;
    p.noise_seed = 3;
    a.set_periphery(p);
    const Tensor y = a.mvm(x);
    const double f = a.scales()[0] * a.grid().lm1 / a.grid().q_max;
    double s = 0, s2 = 0;
    const auto n = y.numel();
    for (std::int64_t i = 0; i < n; ++i) {
      const double z = (double(y[i]) - double(clean[i])) / f;
      s += z;
      s2 += z * z;
    }
    const double mean = s / double(n), sd = std::sqrt(s2 / double(n) - mean * mean);
    CHECK(n >= 100000);
    CHECK(std::abs(mean) <= 5 * 0.05 / std::sqrt(double(n)));
    CHECK(std::abs(sd - 0.05) <= 5 * 0.05 / std::sqrt(2.0 * double(n)) + 1e-6);
  }

  TEST_CASE("read noise per MVM adds variance sum_k x_k^2 sigma(G_k)^2 to every column") {
    device_config d;
    d.scale = weight_scale::per_layer;
    const Tensor w = test::random_tensor(Shape{20, 100}, 16);
    TiledArray<> a(w, d);
    // Every input vector reads rows 0 and 1 at 1 and -0.5: one read of four cells per column.
    Tensor x(Shape{1000, 20});
    for (std::int64_t n = 0; n < 1000; ++n) {
      x[n * 20 + 0] = 1.0f;
      x[n * 20 + 1] = -0.5f;
    }
    const Tensor clean = a.mvm(x);
    periphery_config p;
    p.read = read_noise::proportional(0.03);
    p.noise_seed = 4;
    a.set_periphery(p);
    const Tensor y = a.mvm(x);
    const auto& t = a.tile(0, 0);
    const double f = a.scales()[0] * a.grid().lm1 / a.grid().q_max, range = d.range_us();
    double s = 0, s2 = 0;
    for (std::int64_t n = 0; n < 1000; ++n)
      for (std::int64_t o = 0; o < 100; ++o) {
        double var = 0;
        for (int k : {0, 1})
          for (int dv : {0, 1}) {
            const double sg = 0.03 * t.conductance_us(k, o, 0, dv) / range;
            var += (k == 0 ? 1.0 : 0.25) * sg * sg;
          }
        const double z = (double(y[n * 100 + o]) - double(clean[n * 100 + o])) / (f * std::sqrt(var));
        s += z;
        s2 += z * z;
      }
    const double N = 1e5, mean = s / N, sd = std::sqrt(s2 / N - mean * mean);
    CHECK(std::abs(mean) <= 5 / std::sqrt(N));
    CHECK(std::abs(sd - 1) <= 5 / std::sqrt(2 * N) + 1e-4);
  }

  TEST_CASE("noisy products are reproducible for any thread count and differ between calls") {
    device_config d;
    const Tensor w = test::random_tensor(Shape{150, 40}, 17);
    periphery_config p = periphery_config::quantised(8, 8);
    p.output_noise = 0.02;
    p.read = read_noise::constant(0.1);
    p.noise_seed = 9;
    const Tensor x = test::random_tensor(Shape{30, 150}, 18);
    auto run = [&](int threads) {
      const thread_count_guard g(threads);
      TiledArray<CrossbarTile<float, 64, 32>> a(w, d, 1, p);
      a.calibrate_adc(x);
      std::vector<Tensor> ys;
      for (int i = 0; i < 3; ++i) ys.push_back(a.mvm(x));
      return ys;
    };
    const auto one = run(1), two = run(2);
    for (std::size_t i = 0; i < 3; ++i) CHECK(one[i] == two[i]);
    CHECK_FALSE(one[0] == one[1]);
  }

  TEST_CASE("the noisy read-out draws by element index: any split of the rows gives the same bits") {
    // The tile path calls accumulate() on chunks of rows that depend on the kernel (GEMM chunks,
    // per-tile convolution groups); element (row r, column j) must draw normal number r * C + j of
    // its (tile, slice) stream whatever the chunks. One call over 300 rows of a 37-column tile
    // must equal one call per row (whose draws start at odd indices), with and without the ADC.
    device_config d;
    const Tensor w = test::random_tensor(Shape{50, 37}, 21);
    const std::int64_t M = 300, C = 37, r0 = 11;
    Tensor current(Shape{M, C}), variance(Shape{M, C});
    fill_uniform(current, counter_rng(22), -1.0f, 1.0f);
    fill_uniform(variance, counter_rng(23), 0.0f, 0.01f);
    for (const bool adc : {false, true}) {
      CAPTURE(adc);
      periphery_config p = adc ? periphery_config::quantised(8, 8, 99.99, true) : periphery_config{};
      p.read = read_noise::constant(0.1);
      p.output_noise = adc ? 0.01 : 0.0;
      p.noise_seed = 24;
      TiledArray<CrossbarTile<float, 64, 64>> a(w, d, 1, p);
      if (adc) a.calibrate_adc(test::random_tensor(Shape{30, 50}, 25));
      const auto plan = a.begin_call();
      Tensor whole(Shape{M, C}), rows(Shape{M, C});
      a.accumulate(plan, 0, 0, r0, M, current.data(), variance.data(), nullptr, 1.0f, whole.data(), true);
      for (std::int64_t m = 0; m < M; ++m)
        a.accumulate(plan, 0, 0, r0 + m, 1, current.data() + m * C, variance.data() + m * C, nullptr, 1.0f,
                     rows.data() + m * C, true);
      CHECK(whole == rows);
      // The noise is there: another call's draws differ.
      Tensor other(Shape{M, C});
      a.accumulate(a.begin_call(), 0, 0, r0, M, current.data(), variance.data(), nullptr, 1.0f, other.data(), true);
      CHECK_FALSE(whole == other);
    }
  }

  TEST_CASE("programming, reads and drift are counted as RRAM writes only when cells are written") {
    device_config d;
    d.slices = 2;
    d.bits_per_cell = 4;
    const Tensor w = test::random_tensor(Shape{70, 30}, 19);
    TiledArray<CrossbarTile<float, 32, 32, offset_mapping>> a(w, d);
    const std::uint64_t cells = 70 * 30 * 2;
    CHECK(a.rram_writes() == cells);
    a.drift_to(relative_drift{}, drift_level{0.1}, 1);
    (void)a.mvm(test::random_tensor(Shape{3, 70}, 20));
    a.set_periphery(periphery_config::quantised(8, 8));
    a.calibrate_adc(test::random_tensor(Shape{3, 70}, 21));
    CHECK(a.rram_writes() == cells);
    a.reprogram(w, 2);
    CHECK(a.rram_writes() == 2 * cells);
  }
}

}  // namespace unit_crossbar
