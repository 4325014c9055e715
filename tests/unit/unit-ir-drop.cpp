// Tests of IR drop (crossbar/ir_drop.hpp): the exact nodal analysis against
// closed forms and its own linearity, the fast model against the exact solve
// (first-order agreement, and the stated bound over wire resistances, tile
// sizes and input densities), and the wires on the tile path: the layout of
// the physical crossbar, the tile-exact product against the nodal solve, the
// effective weights, the analog layers, and the parameter checks.

#include <rimc/core/random.hpp>
#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/crossbar/ir_drop.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace unit_ir_drop {

using namespace rimc;

namespace {

/// R x P conductances uniform in [lo, hi] uS.
std::vector<double> random_conductances(std::int64_t R, std::int64_t P, std::uint64_t seed, double lo = 1.0,
                                        double hi = 40.0) {
  const counter_rng rng(seed);
  std::vector<double> g(static_cast<std::size_t>(R * P));
  for (std::size_t k = 0; k < g.size(); ++k) g[k] = rng.uniform(k, lo, hi);
  return g;
}

/// Column outputs sum_i m_ip v_i.
std::vector<double> apply(const std::vector<double>& m, std::int64_t R, std::int64_t P, const std::vector<double>& v) {
  std::vector<double> y(static_cast<std::size_t>(P), 0.0);
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t p = 0; p < P; ++p)
      y[static_cast<std::size_t>(p)] += m[static_cast<std::size_t>(i * P + p)] * v[static_cast<std::size_t>(i)];
  return y;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t k = 0; k < a.size(); ++k) m = std::max(m, std::abs(a[k] - b[k]));
  return m;
}

}  // namespace

TEST_CASE("the nodal analysis matches closed forms: one cell, and one row in series") {
  // One cell between one row segment and one column segment: I = v / (1 / g + 2 r).
  for (const double r : {0.5, 10.0, 1000.0}) {
    CAPTURE(r);
    const std::vector<double> g{25.0};  // uS
    const auto I = crossbar_nodal_currents(g, 1, 1, r, std::vector<double>{0.3});
    CHECK(I[0] == doctest::Approx(0.3 / (1.0 / 25e-6 + 2 * r) * 1e6).epsilon(1e-12));
    CHECK(ir_drop_exact(g, 1, 1, r)[0] == doctest::Approx(25.0 / (1 + 2 * r * 25e-6)).epsilon(1e-12));
    // A lone cell is exactly a conductance in series with its two segments: the fast form is exact.
    CHECK(ir_drop_fast(g, 1, 1, r)[0] == doctest::Approx(25.0 / (1 + 2 * r * 25e-6)).epsilon(1e-12));
  }
  // One column of R cells with only the top row driven: the current crosses all R column segments,
  // and the other cells (at 0 V row voltage) shunt part of it back: the solve stays below the lone-cell value.
  const auto g = random_conductances(8, 1, 3);
  std::vector<double> v(8, 0.0);
  v[0] = 1.0;
  const double lone = 1.0 / (1.0 / (g[0] * 1e-6) + (1 + 8) * 100.0) * 1e6;
  const auto I = crossbar_nodal_currents(g, 8, 1, 100.0, v);
  CHECK(I[0] < g[0]);
  CHECK(I[0] < lone * 1.0000001);
  CHECK(I[0] > 0);
}

TEST_CASE("the exact effective conductances reproduce the nodal solve for any input (the network is linear)") {
  const std::int64_t R = 12, P = 20;
  const auto g = random_conductances(R, P, 5);
  const auto m = ir_drop_exact(g, R, P, 2.0);
  const counter_rng rng(9);
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<double> v(static_cast<std::size_t>(R));
    for (std::int64_t i = 0; i < R; ++i) v[static_cast<std::size_t>(i)] = rng.uniform(trial * 100 + i, -1.0, 1.0);
    const auto direct = crossbar_nodal_currents(g, R, P, 2.0, v);
    const auto via = apply(m, R, P, v);
    for (std::int64_t p = 0; p < P; ++p) CHECK(via[p] == doctest::Approx(direct[p]).epsilon(1e-9));
  }
  // Ideal wires: geff = g, and the currents are g^T v.
  CHECK(ir_drop_exact(g, R, P, 0.0) == g);
  CHECK(ir_drop_fast(g, R, P, 0.0) == g);
  // Every effective conductance is below its cell's (wires only ever lose voltage) and positive.
  for (std::size_t k = 0; k < g.size(); ++k) {
    REQUIRE(m[k] < g[k]);
    REQUIRE(m[k] > 0);
  }
}

TEST_CASE("the fast model agrees with the exact solve to first order in the wire resistance") {
  const std::int64_t R = 32, P = 48;
  const auto g = random_conductances(R, P, 7);
  const std::vector<double> v(static_cast<std::size_t>(R), 1.0);
  const auto ideal = apply(g, R, P, v);
  // The model error over the IR drop shrinks linearly with r: ratio(r) / ratio(10 r) ~ 1/10.
  double prev = 0;
  for (const double r : {1e-3, 1e-2, 1e-1}) {
    const auto ex = apply(ir_drop_exact(g, R, P, r), R, P, v);
    const auto fa = apply(ir_drop_fast(g, R, P, r), R, P, v);
    const double ratio = max_abs_diff(fa, ex) / max_abs_diff(ideal, ex);
    CAPTURE(r);
    CAPTURE(ratio);
    CHECK(ratio < 50 * r);
    if (prev > 0) CHECK(ratio > 3 * prev);
    prev = ratio;
  }
}

TEST_CASE("the fast model reproduces the exact IR drop within 10% over resistances, sizes and input densities") {
  // The stated bound (ir_drop_fast's documentation): for every input, the largest column error of the
  // fast model is at most a tenth of the largest column IR drop of the exact solve. The grid reaches
  // drops of a third of the ideal output (64 x 128 cells at 2.5 ohm per segment).
  double worst = 0, largest_drop = 0;
  for (const std::int64_t R : {16, 64})
    for (const std::int64_t P : {16, 128})
      for (const double r : {0.1, 1.0, 2.5}) {
        const auto g = random_conductances(R, P, static_cast<std::uint64_t>(R * 1000 + P));
        const auto ex = ir_drop_exact(g, R, P, r);
        const auto fa = ir_drop_fast(g, R, P, r);
        const counter_rng rng(static_cast<std::uint64_t>(R + P));
        for (const double density : {1.0, 0.5, 0.1})
          for (const bool is_signed : {false, true}) {
            std::vector<double> v(static_cast<std::size_t>(R), 0.0);
            for (std::int64_t i = 0; i < R; ++i) {
              if (rng.uniform(2 * i) >= density) continue;
              v[static_cast<std::size_t>(i)] = rng.uniform(2 * i + 1, is_signed ? -1.0 : 0.0, 1.0);
            }
            const auto yi = apply(g, R, P, v), ye = apply(ex, R, P, v), yf = apply(fa, R, P, v);
            const double drop = max_abs_diff(yi, ye);
            if (drop == 0) continue;  // no active row
            double out = 0;
            for (const double y : yi) out = std::max(out, std::abs(y));
            const double ratio = max_abs_diff(yf, ye) / drop;
            CAPTURE(R);
            CAPTURE(P);
            CAPTURE(r);
            CAPTURE(density);
            CAPTURE(is_signed);
            CHECK(ratio <= 0.10);
            worst = std::max(worst, ratio);
            largest_drop = std::max(largest_drop, drop / out);
          }
      }
  MESSAGE("fast model: worst error / IR drop = ", worst, ", largest drop / output = ", largest_drop);
  CHECK(largest_drop > 0.3);  // the grid does reach large drops
}

TEST_CASE("wires on a tile: the tile-exact product equals the nodal solve of its physical crossbar") {
  // One 16 x 8 differential tile: 16 word lines, 16 bit lines (G+ and G- of each column side by side).
  device_config d;
  d.g_min_us = 2.0;
  d.g_max_us = 40.0;
  const Tensor w = test::random_tensor(Shape{16, 8}, 3);
  periphery_config p;
  p.wires = {5.0, ir_drop_model::exact};
  using tile16 = CrossbarTile<double, 16, 8>;
  TiledArray<tile16> a(w, d, 1, p);
  a.drift_to(relative_drift{}, drift_level{0.1}, 2);
  const auto& t = a.tile(0, 0);
  std::vector<double> g(16 * 16);
  for (std::int64_t r = 0; r < 16; ++r)
    for (std::int64_t c = 0; c < 8; ++c)
      for (int dv = 0; dv < 2; ++dv) g[static_cast<std::size_t>(r * 16 + 2 * c + dv)] = t.conductance_us(r, c, 0, dv);
  const Tensor x = test::random_tensor(Shape{3, 16}, 4);
  const Tensor y = a.mvm(x);
  const auto& grid = a.grid();
  for (std::int64_t n = 0; n < 3; ++n) {
    std::vector<double> v(16);
    for (std::int64_t k = 0; k < 16; ++k) v[static_cast<std::size_t>(k)] = x[n * 16 + k];
    const auto I = crossbar_nodal_currents(g, 16, 16, 5.0, v);
    for (std::int64_t o = 0; o < 8; ++o) {
      const double code = (I[static_cast<std::size_t>(2 * o)] - I[static_cast<std::size_t>(2 * o + 1)]) /
                          grid.range_us * grid.lm1;
      const double expected = a.scales()[static_cast<std::size_t>(o)] * code / grid.q_max;
      CHECK(y[n * 8 + o] == doctest::Approx(expected).epsilon(1e-5).scale(1e-3));
    }
  }
  // The effective weights carry the same IR drop: the ideal periphery's fast path stays exact.
  test::check_close(matmul(x, a.effective_weights()), y, 1e-5, 1e-6);
  CHECK(t.effective_us(0, 0, 0, 0) < t.conductance_us(0, 0, 0, 0));
}

TEST_CASE("wires change the effective weights and the analog layers' outputs, and ideal wires restore them") {
  device_config d;
  d.g_min_us = 4.0;
  d.g_max_us = 40.0;
  const Tensor w = test::random_tensor(Shape{10, 200}, 6);  // [O, K]: 200 rows on one 256 x 256 tile
  analog_options opt;
  opt.device = d;
  basic_analog_linear<> lin(w, std::nullopt, opt);
  const Tensor before = lin.effective_weights();
  const auto v0 = lin.weights_version();
  periphery_config p;
  p.wires.segment_ohm = 1.0;
  lin.set_periphery(p);
  CHECK(lin.weights_version() > v0);
  const Tensor wired = lin.effective_weights();
  // IR drop shrinks the weights (both devices of a pair lose current, the larger one more).
  CHECK(wired.vector().cwiseAbs().sum() < before.vector().cwiseAbs().sum());
  const Tensor x = test::random_tensor(Shape{4, 200}, 7);
  Tensor y;
  lin.forward(x, y);
  Tensor ref(Shape{4, 10});
  for (std::int64_t n = 0; n < 4; ++n)
    for (std::int64_t o = 0; o < 10; ++o) {
      double acc = 0;
      for (std::int64_t k = 0; k < 200; ++k) acc += double(x[n * 200 + k]) * double(wired[o * 200 + k]);
      ref[n * 10 + o] = static_cast<float>(acc);
    }
  test::check_close(y, ref, 1e-5, 1e-5);
  // The same periphery again changes nothing; ideal wires give the programmed weights back bitwise.
  const auto v1 = lin.weights_version();
  lin.set_periphery(p);
  CHECK(lin.weights_version() == v1);
  lin.set_periphery(periphery_config::ideal());
  CHECK(lin.effective_weights() == before);
  // Drift is recomputed through the wires: the same drift with and without wires differs by the IR drop only.
  lin.set_periphery(p);
  lin.drift_to(relative_drift{}, drift_level{0.2}, 3);
  const Tensor drifted_wired = lin.effective_weights();
  lin.set_periphery(periphery_config::ideal());
  CHECK(!(lin.effective_weights() == drifted_wired));
}

TEST_CASE("wire parameters are checked with a message naming the field and the value") {
  const double nan_v = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS((wire_config{-1.0}.validate()), "[rimc.value_error] wire_config: segment_ohm must be >= 0, got -1",
                       value_error);
  CHECK_THROWS_WITH_AS((wire_config{nan_v}.validate()),
                       "[rimc.value_error] wire_config: segment_ohm must be finite, got nan", value_error);
  periphery_config p;
  p.wires.segment_ohm = -2;
  CHECK_THROWS_WITH_AS(p.validate(), "[rimc.value_error] wire_config: segment_ohm must be >= 0, got -2", value_error);
  const std::vector<double> g{1.0, 2.0, 3.0};
  CHECK_THROWS_WITH_AS((void)ir_drop_fast(g, 1, 2, 1.0),
                       "[rimc.shape_error] ir_drop_fast: conductances must be R x P = 1 x 2 values, got 3", shape_error);
  const std::vector<double> bad{1.0, -2.0, 3.0, 4.0};
  CHECK_THROWS_WITH_AS((void)ir_drop_exact(bad, 2, 2, 1.0),
                       "[rimc.value_error] ir_drop_exact: conductance 1 must be finite and >= 0, got -2", value_error);
  CHECK_THROWS_WITH_AS((void)crossbar_nodal_currents(g, 1, 3, 1.0, std::vector<double>{1.0, 2.0}),
                       "[rimc.shape_error] crossbar_nodal_currents: 2 voltages given for 1 rows", shape_error);
}

}  // namespace unit_ir_drop
