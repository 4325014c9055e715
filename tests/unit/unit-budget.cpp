// Tests of SRAM-budgeted adapter placement (adapt/budget.hpp): the plan
// against brute force, its greedy fallback within the budget, the
// sensitivity measurement leaving the simulated chips as it found them, and
// the generic SRAM calibration cost against the DoRA one it generalises.

#include <rimc/adapt/budget.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/cost/calibration_cost.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_budget {

using namespace rimc;

namespace {

/// `layers` random layers of 3 options each (bytes multiples of 4 up to 400, gains in [-0.2, 1)).
std::vector<layer_sensitivity> random_layers(int layers, std::uint64_t seed) {
  const counter_rng rng(seed);
  std::uint64_t k = 0;
  std::vector<layer_sensitivity> out;
  for (int i = 0; i < layers; ++i) {
    layer_sensitivity l{detail::concat("l", i), {}};
    for (std::int64_t r = 1; r <= 3; ++r) {
      const auto bytes = 4 * (1 + static_cast<std::size_t>(rng.uniform(k++) * 100));
      l.options.push_back({r, bytes, -0.2 + 1.2 * rng.uniform(k++)});
    }
    out.push_back(l);
  }
  return out;
}

/// The best summed gain within `budget` by trying every choice.
double brute_force(const std::vector<layer_sensitivity>& layers, std::size_t budget) {
  double best = 0;
  std::vector<int> c(layers.size(), -1);
  for (;;) {
    std::size_t bytes = 0;
    double gain = 0;
    for (std::size_t i = 0; i < layers.size(); ++i)
      if (c[i] >= 0) {
        bytes += layers[i].options[static_cast<std::size_t>(c[i])].bytes;
        gain += layers[i].options[static_cast<std::size_t>(c[i])].gain;
      }
    if (bytes <= budget) best = std::max(best, gain);
    std::size_t i = 0;
    while (i < c.size() && ++c[i] == 3) c[i++] = -1;
    if (i == c.size()) break;
  }
  return best;
}

network chip(std::uint64_t seed) {
  network net = test::small_conv_net(1);
  auto dep = deploy_analog(net, analog_options{});
  dep.drift_to(relative_drift{}, drift_level{0.2}, seed);
  return net;
}

}  // namespace

TEST_SUITE("budget") {
  TEST_CASE("the budgeted plan is optimal against brute force, and its greedy fallback stays within the budget") {
    for (std::uint64_t seed = 1; seed <= 20; ++seed) {
      CAPTURE(seed);
      const auto layers = random_layers(6, seed);
      for (const std::size_t budget : {0u, 120u, 500u, 2000u}) {
        CAPTURE(budget);
        const adapter_plan p = plan_adapter_budget(layers, budget);
        CHECK(p.exact);
        CHECK(p.bytes <= budget);
        CHECK(p.gain == doctest::Approx(brute_force(layers, budget)).epsilon(1e-12));
        std::size_t bytes = 0;
        double gain = 0;
        for (const auto& l : layers) {
          const auto it = p.ranks.find(l.name);
          if (it == p.ranks.end()) continue;
          const auto& o = l.options[static_cast<std::size_t>(it->second - 1)];
          CHECK(o.gain > 0);
          bytes += o.bytes;
          gain += o.gain;
        }
        CHECK(bytes == p.bytes);
        CHECK(gain == doctest::Approx(p.gain));
        const adapter_plan g = plan_adapter_budget(layers, budget, 1);  // a table too small: greedy
        CHECK_FALSE(g.exact);
        CHECK(g.bytes <= budget);
        CHECK(g.gain <= p.gain + 1e-12);
      }
    }
    std::vector<layer_sensitivity> bad{{"c1", {{1, 0, 0.5}}}};
    CHECK_THROWS_WITH_AS(plan_adapter_budget(bad, 100),
                         "[rimc.value_error] plan_adapter_budget: layer 'c1' has an option of 0 bytes", value_error);
    bad[0].options[0] = {2, 8, std::nan("")};
    CHECK_THROWS_WITH_AS(plan_adapter_budget(bad, 100),
                         "[rimc.value_error] plan_adapter_budget: layer 'c1' rank 2 has gain nan", value_error);
  }

  TEST_CASE("the sensitivity measurement leaves the simulated chips as they were and prices every option") {
    const network teacher = test::small_conv_net(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    network a = chip(7), b = chip(8);
    const Tensor ya = a.forward(images), yb = b.forward(images);
    network* const sims[] = {&a, &b};
    calibration_config cfg;
    cfg.steps = 20;
    const std::vector<std::int64_t> ranks{1, 2};
    const auto sens = measure_sensitivity(teacher, sims, images, cfg, ranks,
                                          [](const adapter_request& r, std::int64_t rank) { return dora_factory{rank}(r); });
    REQUIRE(sens.size() == 3);
    bool any_gain = false;
    for (const auto& l : sens) {
      CAPTURE(l.name);
      REQUIRE(l.options.size() == 2);
      CHECK(l.options[0].rank == 1);
      CHECK(l.options[1].bytes > l.options[0].bytes);
      CHECK(l.options[1].bytes == dora_adapter(a.layer(l.name), dora_config{2}).footprint().sram_bytes);
      any_gain = any_gain || l.options[0].gain > 0;
    }
    CHECK(any_gain);
    CHECK(adapted_layers(a).empty());
    CHECK(a.forward(images) == ya);
    CHECK(b.forward(images) == yb);
    // A plan from it calibrates only the chosen layers, at their ranks.
    const adapter_plan p = plan_adapter_budget(sens, sens[0].options[1].bytes + sens[2].options[0].bytes);
    REQUIRE_FALSE(p.ranks.empty());
    network field = chip(9);
    calibration_config c = cfg;
    c.targets = p.targets(field);
    const auto r = calibrate_feature_kd(teacher, field, images, c,
                                        [&](const adapter_request& q) { return dora_factory{p.ranks.at(q.name)}(q); });
    CHECK(r.footprint.sram_bytes == p.bytes);
    CHECK_THROWS_WITH_AS(measure_sensitivity(teacher, sims, images, cfg, std::vector<std::int64_t>{0},
                                             [](const adapter_request& q, std::int64_t rank) { return dora_factory{rank}(q); }),
                         "[rimc.value_error] measure_sensitivity: ranks must be >= 1, got 0", value_error);
  }

  TEST_CASE("the generic SRAM calibration cost reproduces the DoRA cost for DoRA-shaped layers") {
    const std::vector<layer_geometry> layers{{"a", 16, 144, 784}, {"b", 64, 576, 49}, {"fc", 10, 64, 1}};
    const device_config dev = presets::paper_device();
    const cost_model m;
    calibration_workload w;
    w.rank = 2;
    const strategy_cost d = dora_sram_cost(layers, dev, m, w);
    std::vector<sram_calibration_layer> generic;
    for (const auto& g : layers) {
      const double K = static_cast<double>(g.fan_in), O = static_cast<double>(g.out_features);
      generic.push_back({g, 2 * (K + O) + O, 3.0 * (2 * K + O * 2), 0});
    }
    const strategy_cost s = sram_calibration_cost("dora", generic, dev, m, w.samples, w.steps_per_layer);
    CHECK(s.digital_macs == doctest::Approx(d.digital_macs).epsilon(1e-12));
    CHECK(s.sram_bits_written == doctest::Approx(d.sram_bits_written).epsilon(1e-12));
    CHECK(s.energy_j == doctest::Approx(d.energy_j).epsilon(1e-12));
    CHECK(s.latency_s == doctest::Approx(d.latency_s).epsilon(1e-12));
    // A closed-form fit (no steps) writes its values once.
    const strategy_cost once = sram_calibration_cost("fit", {{layers[0], 32, 0, 48}}, dev, m, 10, 0, sram_precision::fp32, 0);
    CHECK(once.sram_bits_written == 32 * 32);
    CHECK(once.digital_macs == 784 * 10 * 48);
    CHECK_THROWS_WITH_AS(sram_calibration_cost("x", {{layers[0], -1, 0, 0}}, dev, m, 10, 0),
                         "[rimc.value_error] sram_calibration_cost: layer 'a' has a negative or non-finite count -1",
                         value_error);
  }
}

}  // namespace unit_budget
