// Tests of the drift bounds (device_config::bounds): where each bound lets a
// drifted conductance go, the systematic weight shrink the programming
// window causes with g_min > 0 and its absence under the physical default,
// and the presets' choices.

#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace unit_drift_bounds {

using namespace rimc;

namespace {

device_config device_with(drift_bounds b) {
  device_config d;
  d.g_min_us = 4.0;  // g_max / 10: the realistic mapping
  d.g_max_us = 40.0;
  d.bounds = b;
  return d;
}

struct extremes {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
};

template <class A>
extremes conductance_extremes(const A& a) {
  extremes e;
  for (const auto& t : a.tiles())
    for (std::int64_t r = 0; r < t.rows(); ++r)
      for (std::int64_t c = 0; c < t.cols(); ++c)
        for (int d = 0; d < 2; ++d) {
          const double g = t.conductance_us(r, c, 0, d);
          e.lo = std::min(e.lo, g);
          e.hi = std::max(e.hi, g);
        }
  return e;
}

/// Least-squares slope of the drifted weights on the programmed ones: sum(w' w) / sum(w w).
double slope(const Tensor& now, const Tensor& programmed) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < now.numel(); ++i) {
    num += double(now[i]) * double(programmed[i]);
    den += double(programmed[i]) * double(programmed[i]);
  }
  return num / den;
}

}  // namespace

TEST_CASE("each drift bound keeps conductances where it says, and programming stays in the window") {
  const Tensor w = test::random_tensor(Shape{256, 128}, 3);
  for (const drift_bounds b : {drift_bounds::physical, drift_bounds::floor_at_g_min, drift_bounds::programming_window}) {
    CAPTURE(to_string(b));
    TiledArray<> a(w, device_with(b), 1);
    const extremes p = conductance_extremes(a);
    CHECK(p.lo >= 4.0);
    CHECK(p.hi <= 40.0);
    a.drift_to(relative_drift{}, drift_level{0.3}, 2);
    const extremes e = conductance_extremes(a);
    CHECK(e.lo >= (b == drift_bounds::physical ? 0.0 : 4.0));
    CHECK(e.hi <= (b == drift_bounds::programming_window ? 40.0 : std::numeric_limits<double>::infinity()));
    if (b == drift_bounds::physical) CHECK(e.lo < 3.0);  // idle devices relax below g_min
    if (b != drift_bounds::programming_window) CHECK(e.hi > 45.0);  // and large ones above g_max
    // A large drift reaches the physical floor: G >= 0 always holds.
    a.drift_to(relative_drift{}, drift_level{2.0}, 3);
    CHECK(conductance_extremes(a).lo >= 0.0);
    if (b == drift_bounds::physical) CHECK(conductance_extremes(a).lo == 0.0);
  }
}

TEST_CASE("the programming window shrinks every weight under relative drift, the physical bound does not") {
  // 65,536 weights at rho = 0.3 with g_min = g_max / 10 (the issue measured w'/w mean 0.93 over ResNet-20).
  const Tensor w = test::random_tensor(Shape{256, 256}, 5);
  TiledArray<> window(w, device_with(drift_bounds::programming_window), 1);
  TiledArray<> physical(w, device_with(drift_bounds::physical), 1);
  const Tensor programmed = physical.effective_weights();
  CHECK(window.effective_weights() == programmed);  // the bounds only act on drift
  window.drift_to(relative_drift{}, drift_level{0.3}, 7);
  physical.drift_to(relative_drift{}, drift_level{0.3}, 7);
  const double s_window = slope(window.effective_weights(), programmed);
  const double s_physical = slope(physical.effective_weights(), programmed);
  MESSAGE("slope of drifted on programmed weights: window ", s_window, ", physical ", s_physical);
  CHECK(s_window < 0.95);
  // E[G'] = G under relative drift: the slope is 1 up to sampling noise (its standard error is about
  // rho * rms(G) / (range * rms(x) * sqrt(n)), well below 0.005 here).
  CHECK(std::abs(s_physical - 1.0) < 0.01);
}

TEST_CASE("drift bounds: defaults, the presets' choices, and the floor and ceiling of each") {
  CHECK(device_config{}.bounds == drift_bounds::physical);
  for (const device_config& d : {presets::paper_device(), presets::cmo_reram_device(), presets::neurram_device(),
                                 presets::pcm_device()})
    CHECK(d.bounds == drift_bounds::physical);
  device_config d = device_with(drift_bounds::physical);
  CHECK(d.drift_floor_us() == 0.0);
  CHECK(d.drift_ceiling_us() == std::numeric_limits<double>::infinity());
  d.bounds = drift_bounds::floor_at_g_min;
  CHECK(d.drift_floor_us() == 4.0);
  CHECK(d.drift_ceiling_us() == std::numeric_limits<double>::infinity());
  d.bounds = drift_bounds::programming_window;
  CHECK(d.drift_floor_us() == 4.0);
  CHECK(d.drift_ceiling_us() == 40.0);
  CHECK(to_string(drift_bounds::physical) == "physical");
  CHECK(to_string(drift_bounds::floor_at_g_min) == "floor-g-min");
  CHECK(to_string(drift_bounds::programming_window) == "window");
  // PCM drift only lowers conductances and its g_min is 0: every bound gives the same chip.
  const Tensor w = test::random_tensor(Shape{64, 32}, 9);
  device_config pcm = presets::pcm_device();
  TiledArray<> a(w, pcm, 1);
  pcm.bounds = drift_bounds::programming_window;
  TiledArray<> b(w, pcm, 1);
  a.drift_to(presets::pcm_drift(), seconds{3.0e8}, 2);
  b.drift_to(presets::pcm_drift(), seconds{3.0e8}, 2);
  CHECK(a.effective_weights() == b.effective_weights());
}

}  // namespace unit_drift_bounds
