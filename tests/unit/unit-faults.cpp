// Tests of stuck-at faults (device_config::faults): the fractions over 1e6
// cells against their binomial standard errors, stuck cells that never move
// (programming noise, rewriting, every drift model), a fault map independent
// of the tile size, the counts through the layers and the deployment, and
// the messages for invalid fractions.

#include <rimc/crossbar/assignment.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace unit_faults {

using namespace rimc;

namespace {

/// |count - n f| <= 5 standard errors of a binomial(n, f) count.
void check_fraction(std::uint64_t count, std::uint64_t n, double f) {
  const double nd = static_cast<double>(n);
  const double se = std::sqrt(nd * f * (1 - f));
  CAPTURE(count);
  CAPTURE(n);
  CAPTURE(f);
  CHECK(std::abs(static_cast<double>(count) - nd * f) <= 5 * se);
}

device_config faulty_device(stuck_at_faults f) {
  device_config d;
  d.g_min_us = 2.0;
  d.g_max_us = 40.0;
  d.noise = programming_noise::proportional(0.02);
  d.faults = f;
  return d;
}

/// Every cell of every tile: stuck cells sit exactly at their stuck value, working cells are
/// counted in `moved` when their conductance differs from `reference` (the same array before).
template <class A>
void check_stuck_cells(const A& a, const A* reference, std::uint64_t& moved, std::uint64_t& stuck) {
  const auto& g = a.grid();
  const float lo = static_cast<float>(g.g_min_us), hi = static_cast<float>(g.g_min_us + g.range_us);
  for (std::size_t ti = 0; ti < a.tiles().size(); ++ti) {
    const auto& t = a.tiles()[ti];
    for (std::int64_t r = 0; r < t.rows(); ++r)
      for (std::int64_t c = 0; c < t.cols(); ++c)
        for (int d = 0; d < 2; ++d) {
          const auto f = t.fault(r, c, 0, d);
          const float now = t.conductance_us(r, c, 0, d);
          if (f == cell_fault::none) {
            if (reference && now != reference->tiles()[ti].conductance_us(r, c, 0, d)) ++moved;
            continue;
          }
          ++stuck;
          REQUIRE(now == (f == cell_fault::sa0 ? lo : hi));
          REQUIRE(t.programmed_us(r, c, 0, d) == now);
        }
  }
}

}  // namespace

TEST_CASE("stuck-at fractions over 1e6 cells are within 5 standard errors of the preset's") {
  const stuck_at_faults f = presets::hfox_stuck_at();
  CHECK(f.sa0 == 0.0175);
  CHECK(f.sa1 == 0.0904);
  // The draw itself, over 1e6 cell indices.
  std::uint64_t sa0 = 0, sa1 = 0;
  constexpr std::uint64_t n = 1'000'000;
  for (std::uint64_t i = 0; i < n; ++i) {
    const auto k = f.fault(77, i);
    sa0 += k == cell_fault::sa0;
    sa1 += k == cell_fault::sa1;
  }
  check_fraction(sa0, n, f.sa0);
  check_fraction(sa1, n, f.sa1);
  // Through an array of 1000 x 500 differential weights (1e6 cells), as counted by the tiles.
  const TiledArray<> a(test::random_tensor(Shape{1000, 500}, 3), faulty_device(f), 11);
  const fault_count c = a.stuck_cells();
  check_fraction(c.sa0, n, f.sa0);
  check_fraction(c.sa1, n, f.sa1);
  CHECK(c.total() == c.sa0 + c.sa1);
  std::uint64_t moved = 0, stuck = 0;
  check_stuck_cells(a, static_cast<const TiledArray<>*>(nullptr), moved, stuck);
  CHECK(stuck == c.total());
  // Another chip (seed) has another map with the same statistics; no faults, no map.
  const TiledArray<> b(test::random_tensor(Shape{1000, 500}, 3), faulty_device(f), 12);
  CHECK(b.stuck_cells().sa1 != c.sa1);
  check_fraction(b.stuck_cells().sa1, n, f.sa1);
  CHECK(TiledArray<>(test::random_tensor(Shape{100, 50}, 3), faulty_device({}), 11).stuck_cells().total() == 0);
}

TEST_CASE("stuck cells never change: not by programming noise, rewriting, or any drift model") {
  const Tensor w = test::random_tensor(Shape{300, 80}, 5);
  TiledArray<CrossbarTile<float, 128, 64>> a(w, faulty_device({0.05, 0.1}), 21);
  const TiledArray<CrossbarTile<float, 128, 64>> fresh(w, faulty_device({0.05, 0.1}), 21);
  const fault_count before = a.stuck_cells();
  REQUIRE(before.sa0 > 0);
  REQUIRE(before.sa1 > 0);
  std::uint64_t moved = 0, stuck = 0;
  a.drift_to(relative_drift{}, drift_level{0.3}, 4);
  check_stuck_cells(a, &fresh, moved, stuck);
  CHECK(moved > 0);  // the working cells did drift
  CHECK(stuck == before.total());
  moved = stuck = 0;
  a.drift_to(presets::cmo_reram_drift(), seconds{3.0e7}, 5);
  check_stuck_cells(a, &fresh, moved, stuck);
  CHECK(moved > 0);
  a.drift_to(presets::pcm_drift(40.0), seconds{3.0e7}, 6);
  a.drift_to(presets::neurram_relaxation(), seconds{86400.0}, 7);
  moved = stuck = 0;
  check_stuck_cells(a, &fresh, moved, stuck);
  CHECK(moved > 0);
  // Rewriting other weights with another seed keeps the chip's fault map.
  a.reprogram(test::random_tensor(Shape{300, 80}, 6), 99);
  CHECK(a.stuck_cells().sa0 == before.sa0);
  CHECK(a.stuck_cells().sa1 == before.sa1);
  for (std::size_t ti = 0; ti < a.tiles().size(); ++ti)
    for (std::int64_t r = 0; r < a.tiles()[ti].rows(); ++r)
      for (std::int64_t c = 0; c < a.tiles()[ti].cols(); ++c)
        for (int d = 0; d < 2; ++d) REQUIRE(a.tiles()[ti].fault(r, c, 0, d) == fresh.tiles()[ti].fault(r, c, 0, d));
  moved = stuck = 0;
  check_stuck_cells(a, static_cast<const decltype(a)*>(nullptr), moved, stuck);
  CHECK(stuck == before.total());
}

TEST_CASE("a cell's fault depends on its global index, not on the tile size") {
  const Tensor w = test::random_tensor(Shape{200, 90}, 7);
  const device_config d = faulty_device({0.1, 0.1});
  const TiledArray<CrossbarTile<float, 32, 16>> small(w, d, 3);
  const TiledArray<CrossbarTile<float, 256, 256>> large(w, d, 3);
  CHECK(small.stuck_cells().sa0 == large.stuck_cells().sa0);
  CHECK(small.stuck_cells().sa1 == large.stuck_cells().sa1);
  CHECK(small.effective_weights() == large.effective_weights());
  const auto& t = small.tile(3, 2);  // rows 96..127, cols 32..47
  for (std::int64_t r = 0; r < t.rows(); ++r)
    for (std::int64_t c = 0; c < t.cols(); ++c)
      for (int dv = 0; dv < 2; ++dv) REQUIRE(t.fault(r, c, 0, dv) == large.tile(0, 0).fault(96 + r, 32 + c, 0, dv));
}

TEST_CASE("stuck cells are counted per layer and over the deployment, and change the weights") {
  network net = test::small_conv_net(1);
  const Tensor w_before = net.node(net.layer_names().front()).params.at("weight");
  analog_options opt;
  opt.device = faulty_device(presets::hfox_stuck_at());
  opt.program_seed = 5;
  auto d = deploy_analog(net, opt);
  fault_count sum;
  std::int64_t cells = 0;
  d.for_each([&](const std::string&, const auto& a) {
    sum += a.stuck_cells();
    cells += 2 * a.effective_weights().numel();
  });
  CHECK(d.stuck_cells().sa0 == sum.sa0);
  CHECK(d.stuck_cells().sa1 == sum.sa1);
  CHECK(sum.sa1 > sum.sa0);
  check_fraction(sum.total(), static_cast<std::uint64_t>(cells), 0.0175 + 0.0904);
  // An SA1 cell on G+ or G- pushes its weight towards +/- the column scale.
  network clean = test::small_conv_net(1);
  analog_options ok = opt;
  ok.device.faults = {};
  auto e = deploy_analog(clean, ok);
  CHECK(e.stuck_cells().total() == 0);
  const auto name = d.names().front();
  double diff = 0;
  d.for_each([&](const std::string& n, const auto& a) {
    if (n != name) return;
    e.for_each([&](const std::string& m, const auto& b) {
      if (m == name) diff = (a.effective_weights().vector() - b.effective_weights().vector()).cwiseAbs().maxCoeff();
    });
  });
  CHECK(diff > 0.1 * w_before.vector().cwiseAbs().maxCoeff());
}

TEST_CASE("fault-aware programming retargets the partner of a stuck device as far as the levels allow") {
  const Tensor w = test::random_tensor(Shape{200, 60}, 8);
  device_config d = faulty_device({0.05, 0.1});
  d.noise = programming_noise::none();
  device_config clean = d;
  clean.faults = {};
  const TiledArray<> ideal(w, clean, 3);
  const TiledArray<> plain(w, d, 3);
  d.fault_aware_programming = true;
  const TiledArray<> aware(w, d, 3);
  CHECK(aware.stuck_cells().total() == plain.stuck_cells().total());
  const Tensor wi = ideal.effective_weights(), wp = plain.effective_weights(), wa = aware.effective_weights();
  const auto& t = aware.tile(0, 0);
  const auto& g = aware.grid();
  const double col_lsb = 1.0 / g.q_max;  // one level, as a fraction of the column scale
  double err_plain = 0, err_aware = 0;
  int exact = 0, zeroed = 0;
  for (std::int64_t k = 0; k < 200; ++k)
    for (std::int64_t o = 0; o < 60; ++o) {
      const double s = aware.scales()[static_cast<std::size_t>(o)];
      const double ei = wi[k * 60 + o], ep = wp[k * 60 + o], ea = wa[k * 60 + o];
      err_plain += std::abs(ep - ei);
      err_aware += std::abs(ea - ei);
      REQUIRE(std::abs(ea - ei) <= std::abs(ep - ei) + 1e-6 * s);  // never worse than leaving it
      const auto fp = t.fault(k, o, 0, 0), fm = t.fault(k, o, 0, 1);
      if (fp == cell_fault::none && fm == cell_fault::none) {
        REQUIRE(ea == ei);  // working cells are untouched
        continue;
      }
      // One device stuck on the side that carries the weight: the partner compensates exactly.
      if (fm == cell_fault::none && fp == cell_fault::sa1 && ei >= 0) {
        CHECK(std::abs(ea - ei) <= 1e-5 * s);
        ++exact;
      }
      // G+ stuck at g_max under a negative weight: G- can at best match it, the weight reads 0.
      if (fm == cell_fault::none && fp == cell_fault::sa1 && ei < -col_lsb * s) {
        CHECK(std::abs(ea) <= 1e-5 * s);
        ++zeroed;
      }
    }
  CHECK(exact > 0);
  CHECK(zeroed > 0);
  MESSAGE("mean |weight error|: stuck ", err_plain / 12000, ", fault-aware ", err_aware / 12000);
  CHECK(err_aware < 0.5 * err_plain);
}

TEST_CASE("the minimum-cost assignment is the best of all permutations, and bad costs are errors naming them") {
  for (std::int64_t n = 1; n <= 6; ++n)
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
      CAPTURE(n);
      CAPTURE(seed);
      std::vector<double> cost(static_cast<std::size_t>(n * n));
      const counter_rng rng(seed, 77);
      for (std::size_t k = 0; k < cost.size(); ++k)
        cost[k] = seed % 3 == 0 ? std::floor(rng.uniform(k, 0.0, 4.0)) : rng.uniform(k, -1.0, 10.0);  // ties too
      const auto p = detail::min_cost_assignment(cost, n);
      std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
      std::iota(perm.begin(), perm.end(), 0);
      REQUIRE(std::is_permutation(p.begin(), p.end(), perm.begin()));
      const auto total = [&](const std::vector<std::int64_t>& q) {
        double t = 0;
        for (std::int64_t i = 0; i < n; ++i) t += cost[static_cast<std::size_t>(i * n + q[static_cast<std::size_t>(i)])];
        return t;
      };
      double best = std::numeric_limits<double>::infinity();
      do {
        best = std::min(best, total(perm));
      } while (std::next_permutation(perm.begin(), perm.end()));
      CHECK(total(p) == doctest::Approx(best).epsilon(1e-12));
    }
  CHECK(detail::min_cost_assignment({}, 0).empty());
  CHECK_THROWS_WITH_AS(detail::min_cost_assignment({1.0, 2.0, 3.0}, 2),
                       "[rimc.shape_error] min_cost_assignment: cost must hold n * n = 4 entries, got 3", shape_error);
  CHECK_THROWS_WITH_AS(detail::min_cost_assignment({1.0, 2.0, std::numeric_limits<double>::quiet_NaN(), 3.0}, 2),
                       "[rimc.value_error] min_cost_assignment: cost(1, 0) must be finite, got nan", value_error);
}

TEST_CASE("fault-aware row order moves rows, not faults, and never leaves more error than rows in order") {
  const Tensor w = test::random_tensor(Shape{150, 40}, 9);
  device_config d = faulty_device(presets::hfox_stuck_at());
  d.noise = programming_noise::none();
  device_config clean = d;
  clean.faults = {};
  const TiledArray<> ideal(w, clean, 4);
  for (const bool aware : {false, true}) {
    CAPTURE(aware);
    d.fault_aware_programming = aware;
    d.fault_aware_row_order = false;
    const TiledArray<> in_order(w, d, 4);
    d.fault_aware_row_order = true;
    const TiledArray<> ordered(w, d, 4);
    const auto& t0 = in_order.tile(0, 0);
    const auto& t1 = ordered.tile(0, 0);
    CHECK(t0.word_lines().empty());
    const auto& line = t1.word_lines();
    REQUIRE(line.size() == 150);
    std::vector<std::int64_t> sorted(line);
    std::sort(sorted.begin(), sorted.end());
    for (std::int64_t r = 0; r < 150; ++r) REQUIRE(sorted[static_cast<std::size_t>(r)] == r);
    // The same faults on the same word lines: row r now sits on word line line[r].
    CHECK(ordered.stuck_cells().sa0 == in_order.stuck_cells().sa0);
    CHECK(ordered.stuck_cells().sa1 == in_order.stuck_cells().sa1);
    std::int64_t moved = 0;
    for (std::int64_t r = 0; r < 150; ++r) {
      moved += line[static_cast<std::size_t>(r)] != r ? 1 : 0;
      for (std::int64_t c = 0; c < 40; ++c)
        for (int dv = 0; dv < 2; ++dv) REQUIRE(t1.fault(r, c, 0, dv) == t0.fault(line[static_cast<std::size_t>(r)], c, 0, dv));
    }
    CHECK(moved > 100);
    const Tensor wi = ideal.effective_weights(), w0 = in_order.effective_weights(), w1 = ordered.effective_weights();
    double e0 = 0, e1 = 0;
    for (std::int64_t i = 0; i < wi.numel(); ++i) {
      e0 += (double(w0[i]) - wi[i]) * (double(w0[i]) - wi[i]);
      e1 += (double(w1[i]) - wi[i]) * (double(w1[i]) - wi[i]);
    }
    MESSAGE("squared weight error, rows in order ", e0, ", fault-aware row order ", e1);
    CHECK(e1 <= e0 * (1 + 1e-9));
    CHECK(e1 < (aware ? 0.5 : 0.8) * e0);
    // Rewriting (other weights) keeps the order, and the faults with it.
    TiledArray<> again(w, d, 4);
    again.reprogram(test::random_tensor(Shape{150, 40}, 19), 5);
    CHECK(again.tile(0, 0).word_lines() == line);
    CHECK(again.stuck_cells().total() == ordered.stuck_cells().total());
  }
}

TEST_CASE("with fault-aware row order, IR drop follows the rows' physical word lines") {
  const Tensor w = test::random_tensor(Shape{30, 6}, 10);
  device_config d = faulty_device({0.05, 0.1});
  d.fault_aware_programming = true;
  d.fault_aware_row_order = true;
  TiledArray<> a(w, d, 6);
  periphery_config p;
  p.wires = wire_config{5.0, ir_drop_model::exact};
  a.set_periphery(p);
  const auto& t = a.tile(0, 0);
  const auto& line = t.word_lines();
  REQUIRE(line.size() == 30);
  // The physical crossbar: word line line[r] carries row r; bit line (c * S + s) * 2 + dv.
  const std::int64_t P = 6 * 2;
  std::vector<double> g(static_cast<std::size_t>(30 * P));
  for (std::int64_t r = 0; r < 30; ++r)
    for (std::int64_t c = 0; c < 6; ++c)
      for (int dv = 0; dv < 2; ++dv)
        g[static_cast<std::size_t>(line[static_cast<std::size_t>(r)] * P + c * 2 + dv)] = t.conductance_us(r, c, 0, dv);
  const std::vector<double> ge = ir_drop_effective(t.wires(), g, 30, P);
  for (std::int64_t r = 0; r < 30; ++r)
    for (std::int64_t c = 0; c < 6; ++c)
      for (int dv = 0; dv < 2; ++dv)
        CHECK(t.effective_us(r, c, 0, dv) ==
              doctest::Approx(ge[static_cast<std::size_t>(line[static_cast<std::size_t>(r)] * P + c * 2 + dv)]).epsilon(1e-6));
}

TEST_CASE("stuck-at fractions are checked with a message naming the field and the value") {
  const double nan_v = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS((stuck_at_faults{-0.1, 0}.validate()),
                       "[rimc.value_error] stuck_at_faults: sa0 must be in [0, 1], got -0.1", value_error);
  CHECK_THROWS_WITH_AS((stuck_at_faults{0, 1.5}.validate()),
                       "[rimc.value_error] stuck_at_faults: sa1 must be in [0, 1], got 1.5", value_error);
  CHECK_THROWS_WITH_AS((stuck_at_faults{nan_v, 0}.validate()),
                       "[rimc.value_error] stuck_at_faults: sa0 must be finite, got nan", value_error);
  CHECK_THROWS_WITH_AS((stuck_at_faults{0.6, 0.5}.validate()),
                       "[rimc.value_error] stuck_at_faults: sa0 + sa1 must be <= 1, got 0.6 + 0.5", value_error);
  device_config d;
  d.faults.sa1 = 2;
  CHECK_THROWS_WITH_AS(d.validate(), "[rimc.value_error] stuck_at_faults: sa1 must be in [0, 1], got 2",
                       value_error);
  CHECK_THROWS_AS(TiledArray<>(test::random_tensor(Shape{4, 4}, 1), d, 1), value_error);
  // All cells stuck is legal (a dead array).
  const TiledArray<> dead(test::random_tensor(Shape{8, 8}, 1), faulty_device({0.0, 1.0}), 1);
  CHECK(dead.stuck_cells().sa1 == 128);
}

}  // namespace unit_faults
