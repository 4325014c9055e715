// Tests of the calibration cost model: hand-computed small cases (one tile,
// known levels) for every quantity, monotonicity properties, agreement with
// the library's own counts (TiledArray writes, dora_adapter sizes), layer
// geometry of the shipped models, and parameter validation messages.

#include <rimc/adapt/calibration_costs.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/cost.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/models.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_cost {

using namespace rimc;

namespace {

/// Round numbers that make the hand computations readable.
cost_model round_model() {
  cost_model m;
  m.rram_write_energy_pj_per_pulse = 2.0;
  m.rram_read_energy_pj_per_cell = 0.5;
  m.rram_write_latency_ns_per_pulse = 50.0;
  m.rram_read_latency_ns = 10.0;
  m.rram_endurance_cycles = 1e6;
  m.adc_energy_pj_per_conversion = 2.0;
  m.dac_energy_pj_per_conversion = 1.0;
  m.sram_write_energy_pj_per_bit = 1e-3;
  m.sram_read_energy_pj_per_bit = 1e-3;
  m.sram_latency_ns = 1.0;
  m.sram_word_bits = 64;
  m.mac_energy_pj_fp32 = 1.0;
  m.mac_latency_ns = 1.0;
  return m;
}

/// 2 levels-bits per cell (4 levels), one slice.
device_config two_bit_device() {
  device_config d;
  d.bits_per_cell = 2;
  d.slices = 1;
  return d;
}

/// One small layer that fits one tile: O = 2, K = 3, 4 output positions.
std::vector<layer_geometry> one_tile(std::int64_t positions = 1) { return {{"l", 2, 3, positions}}; }

constexpr double inf = std::numeric_limits<double>::infinity();

}  // namespace

TEST_SUITE("cost") {
  TEST_CASE("write-verify mean pulses follow base + per_level (L - 1) / 2, or the histogram's mean") {
    write_verify_model wv;
    CHECK(wv.mean_pulses(1) == doctest::Approx(1.5));
    CHECK(wv.mean_pulses(2) == doctest::Approx(2.5));
    CHECK(wv.mean_pulses(8) == doctest::Approx(128.5));
    wv.base_pulses = 3;
    wv.pulses_per_level = 0.5;
    CHECK(wv.mean_pulses(3) == doctest::Approx(3 + 0.5 * 7 / 2.0));
    CHECK(wv.pulses_to_move(2) == doctest::Approx(4.0));
    wv.pulse_histogram = {0.5, 0.25, 0.25};
    CHECK(wv.mean_pulses(8) == doctest::Approx(0.5 + 0.5 + 0.75));
  }

  TEST_CASE("more levels per cell need more pulses and cost more to re-program") {
    const write_verify_model wv;
    cost_model m;
    device_config d;
    double prev_pulses = 0, prev_energy = 0;
    for (int bits = 1; bits <= 8; ++bits) {
      d.bits_per_cell = bits;
      const double p = wv.mean_pulses(bits);
      const auto s = reprogram_all_cost(one_tile(), d, m);
      CHECK(p > prev_pulses);
      CHECK(s.energy_j > prev_energy);
      prev_pulses = p;
      prev_energy = s.energy_j;
    }
  }

  TEST_CASE("re-programming every cell of one tile, by hand") {
    const auto s = reprogram_all_cost(one_tile(), two_bit_device(), round_model());
    // 2 x 3 weights x 1 slice x 2 devices = 12 cells, 2.5 pulses each = 30 pulses.
    CHECK(s.rram_writes == doctest::Approx(12));
    CHECK(s.rram_pulses == doctest::Approx(30));
    CHECK(s.energy_j == doctest::Approx(30 * (2.0 + 0.5) * 1e-12));
    CHECK(s.latency_s == doctest::Approx(30 * 60e-9));
    CHECK(s.sram_bits_written == 0);
    CHECK(s.rram_cycles_per_cell == doctest::Approx(2.5));
    CHECK(s.calibrations_survivable == doctest::Approx(1e6 / 2.5));
    CHECK(s.sram_calibrations_survivable == inf);

    SUBCASE("parallel write drivers divide the time, not the energy") {
      auto m = round_model();
      m.rram_parallel_writes = 4;
      const auto p = reprogram_all_cost(one_tile(), two_bit_device(), m);
      CHECK(p.latency_s == doctest::Approx(s.latency_s / 4));
      CHECK(p.energy_j == doctest::Approx(s.energy_j));
    }
    SUBCASE("an endurance cycle per programming instead of per pulse") {
      auto m = round_model();
      m.endurance_per_pulse = false;
      CHECK(reprogram_all_cost(one_tile(), two_bit_device(), m).calibrations_survivable == doctest::Approx(1e6));
    }
    SUBCASE("offset mapping: one device per weight") {
      auto m = round_model();
      m.devices_per_weight = 1;
      CHECK(reprogram_all_cost(one_tile(), two_bit_device(), m).rram_writes == doctest::Approx(6));
    }
    SUBCASE("bit slicing multiplies the cells") {
      auto d = two_bit_device();
      d.slices = 3;
      CHECK(reprogram_all_cost(one_tile(), d, round_model()).rram_writes == doctest::Approx(36));
    }
  }

  TEST_CASE("the cells counted match what TiledArray writes when it programs the same matrix") {
    for (int slices : {1, 2}) {
      device_config d;
      d.bits_per_cell = 4;
      d.slices = slices;
      const Tensor w = test::random_tensor(Shape{300, 70}, 7);  // [K, O], two tiles of rows
      const TiledArray<> a(w, d);
      const auto s = reprogram_all_cost({{"l", 70, 300, 1}}, d, cost_model{});
      CHECK(s.rram_writes == doctest::Approx(static_cast<double>(a.rram_writes())));
    }
  }

  TEST_CASE("re-programming only the drifted cells, by hand") {
    const auto s = reprogram_drifted_cost(one_tile(), two_bit_device(), round_model(), 0.25);
    // Read all 12 cells (6 pJ, 120 ns), then program 3 cells x 2.5 pulses.
    CHECK(s.rram_writes == doctest::Approx(3));
    CHECK(s.rram_pulses == doctest::Approx(7.5));
    CHECK(s.energy_j == doctest::Approx((6 + 7.5 * 2.5) * 1e-12));
    CHECK(s.latency_s == doctest::Approx((120 + 7.5 * 60) * 1e-9));
    CHECK(s.rram_cycles_per_cell == doctest::Approx(0.625));
    CHECK(s.calibrations_survivable == doctest::Approx(1e6 / 0.625));
    CHECK(reprogram_drifted_cost(one_tile(), two_bit_device(), round_model(), 0.0).calibrations_survivable == inf);
    CHECK_THROWS_WITH((void)reprogram_drifted_cost(one_tile(), two_bit_device(), round_model(), 1.5),
                      "[rimc.value_error] reprogram_drifted_cost: drifted_fraction must be in [0, 1], got 1.5");
  }

  TEST_CASE("the drifted fraction is 2 (1 - Phi(tol / rho)) under relative Gaussian drift") {
    CHECK(drifted_cell_fraction(0.2, 0.2) == doctest::Approx(0.31731050786291415));  // |xi| > 1
    CHECK(drifted_cell_fraction(0.1, 0.2) == doctest::Approx(0.04550026389635842));  // |xi| > 2
    CHECK(drifted_cell_fraction(0.2, 0.0) == doctest::Approx(1.0));
    CHECK(drifted_cell_fraction(0.0, 0.1) == 0.0);
    double prev = 1.0;
    for (double tol = 0.01; tol < 1.0; tol += 0.05) {
      const double f = drifted_cell_fraction(0.2, tol);
      CHECK(f < prev);
      prev = f;
    }
    CHECK_THROWS_WITH((void)drifted_cell_fraction(-0.1, 0.1),
                      "[rimc.value_error] drifted_cell_fraction: relative_drift must be >= 0, got -0.1");
  }

  TEST_CASE("backprop with in-RRAM updates writes every adapted cell at every step, by hand") {
    calibration_workload w;
    w.backprop_steps = 10;
    w.levels_moved_per_update = 1;
    const auto s = backprop_in_rram_cost(one_tile(), two_bit_device(), round_model(), w);
    // 10 steps x 12 cells; a one-level move takes 1 + 1 = 2 pulses.
    CHECK(s.rram_writes == doctest::Approx(120));
    CHECK(s.rram_pulses == doctest::Approx(240));
    CHECK(s.energy_j == doctest::Approx(240 * 2.5e-12));
    CHECK(s.latency_s == doctest::Approx(240 * 60e-9));
    CHECK(s.rram_cycles_per_cell == doctest::Approx(20));
    CHECK(s.calibrations_survivable == doctest::Approx(1e6 / 20));
    w.samples = 1000;
    CHECK(backprop_in_rram_cost(one_tile(), two_bit_device(), round_model(), w).energy_j ==
          doctest::Approx(s.energy_j));
  }

  TEST_CASE("DoRA in SRAM: SRAM writes, digital compute and no RRAM write, by hand") {
    calibration_workload w;
    w.rank = 1;
    w.samples = 5;
    w.steps_per_layer = 10;
    w.optimizer_state_values = 0;
    const auto s = dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w);
    // 2 + 1 x 3 + 2 x 1 = 7 values x 32 bits x 10 steps; 3 (3 + 2) x 4 positions x 5 samples x 10 steps MACs.
    CHECK(s.sram_bits_written == doctest::Approx(2240));
    CHECK(s.digital_macs == doctest::Approx(3000));
    CHECK(s.rram_writes == 0);
    CHECK(s.rram_pulses == 0);
    CHECK(s.calibrations_survivable == inf);
    CHECK(s.sram_writes_per_bit == doctest::Approx(10));
    CHECK(s.sram_calibrations_survivable == doctest::Approx(1e15));
    // Crossbar pass per image: 12 cells x 4 positions x 0.5 pJ + 2 ADC x 4 x 2 pJ + 3 DAC x 4 x 1 pJ = 52 pJ.
    CHECK(crossbar_inference_energy_j(one_tile(4), two_bit_device(), round_model()) == doctest::Approx(52e-12));
    CHECK(s.energy_j == doctest::Approx((3000 * 1.0 + 2240 * 2e-3 + 5 * 52) * 1e-12));
    CHECK(s.latency_s == doctest::Approx((3000 + 2 * 2240 / 64.0) * 1e-9));

    SUBCASE("Adam's two fp32 moments are written with every value") {
      w.optimizer_state_values = 2;
      CHECK(dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w).sram_bits_written ==
            doctest::Approx(7 * (32 + 64) * 10));
    }
    SUBCASE("Gram statistics: K^2 + 2 K O per row once, 3 (r K^2 + O r K + O K) per step") {
      w.compute = calibration_compute::gram;
      // rows = 4 x 5 = 20: (9 + 12) x 20 = 420; 3 (9 + 6 + 6) x 10 = 630.
      CHECK(dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w).digital_macs == doctest::Approx(1050));
      w.compute = calibration_compute::cheaper;
      CHECK(dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w).digital_macs == doctest::Approx(1050));
      w.samples = 1;  // direct: 3 x 5 x 4 x 10 = 600 < gram: 21 x 4 + 630 = 714
      CHECK(dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w).digital_macs == doctest::Approx(600));
    }
    SUBCASE("fp16 values halve the parameter bits") {
      w.calibration_precision = sram_precision::fp16;
      CHECK(dora_sram_cost(one_tile(4), two_bit_device(), round_model(), w).sram_bits_written ==
            doctest::Approx(1120));
    }
  }

  TEST_CASE("DoRA inference overhead per image, by hand") {
    calibration_workload w;
    w.rank = 1;
    const auto o = dora_inference_overhead(one_tile(4), two_bit_device(), round_model(), w);
    CHECK(o.crossbar_macs == doctest::Approx(24));                // 2 x 3 x 4
    CHECK(o.adapter_macs == doctest::Approx(4 * (3 + 2 + 2)));    // (r K + O r + O) x 4
    CHECK(o.mac_share == doctest::Approx(28.0 / 24.0));
    CHECK(o.sram_bits_read == doctest::Approx(7 * 32));
    CHECK(o.crossbar_energy_j == doctest::Approx(52e-12));
    CHECK(o.adapter_energy_j == doctest::Approx((28 * 1.0 + 224 * 1e-3) * 1e-12));
    CHECK(o.energy_share == doctest::Approx(o.adapter_energy_j / o.crossbar_energy_j));
  }

  TEST_CASE("higher rank means more SRAM, more compute and more inference overhead") {
    const std::vector<layer_geometry> layers{{"a", 64, 576, 49}, {"b", 10, 64, 1}};
    calibration_workload w;
    double prev_bits = 0, prev_macs = 0, prev_share = 0;
    for (std::int64_t r = 1; r <= 8; ++r) {
      w.rank = r;
      const auto s = dora_sram_cost(layers, device_config{}, cost_model{}, w);
      const auto o = dora_inference_overhead(layers, device_config{}, cost_model{}, w);
      CHECK(s.sram_bits_written > prev_bits);
      CHECK(s.digital_macs > prev_macs);
      CHECK(o.mac_share > prev_share);
      prev_bits = s.sram_bits_written;
      prev_macs = s.digital_macs;
      prev_share = o.mac_share;
    }
    w.rank = 11;
    CHECK_THROWS_WITH((void)dora_sram_cost(layers, device_config{}, cost_model{}, w),
                      "[rimc.value_error] calibration_workload: rank 11 exceeds min(O, K) = 10 of layer 'b'");
  }

  TEST_CASE("adapter sizes match dora_adapter's parameter count and footprint") {
    dora_config cfg;
    cfg.rank = 3;
    const digital_linear base(test::random_tensor(Shape{5, 8}, 3), std::nullopt);
    const dora_adapter a(base, cfg);
    const layer_geometry g{"l", 5, 8, 1};
    CHECK(adapter_parameters(g, 3) == a.parameter_count());
    for (auto p : {sram_precision::fp32, sram_precision::fp16, sram_precision::int8}) {
      CHECK(adapter_sram_bits(g, 3, p) == static_cast<std::int64_t>(8 * a.footprint(p).sram_bytes));
    }
  }

  TEST_CASE("layer geometries of ResNet-20 on 1x28x28 and ResNet-50 on 3x224x224") {
    const auto r20 = layer_geometries(resnet20(1, 10, 28));
    REQUIRE(r20.size() == 22);  // conv1, 18 block convs, 2 projections, fc
    CHECK(r20.front().name == "conv1");
    CHECK(r20.front().out_features == 16);
    CHECK(r20.front().fan_in == 9);
    CHECK(r20.front().positions == 28 * 28);
    CHECK(r20.back().name == "fc");
    CHECK(r20.back().fan_in == 64);
    CHECK(r20.back().positions == 1);
    const auto l2 = select_layers(r20, {"layer2.0.conv1"});
    CHECK(l2[0].fan_in == 16 * 9);
    CHECK(l2[0].positions == 14 * 14);

    const auto r50 = layer_geometries(resnet50(1000, 224));
    REQUIRE(r50.size() == 54);  // conv1, 16 x 3 block convs, 4 projections, fc
    std::int64_t weights = 0, macs = 0;
    for (const auto& g : r50) {
      weights += g.weights();
      macs += g.macs_per_image();
    }
    CHECK(weights == 25502912);          // torchvision's 25,557,032 parameters minus biases and batch norms
    CHECK(macs == doctest::Approx(4.09e9).epsilon(0.01));  // the usual 4.1 GMACs
  }

  TEST_CASE("the comparison lists every strategy and accepts a calibration result") {
    const network net = resnet20(1, 10, 28);
    calibration_workload w;
    w.drifted_fraction = 0.5;
    const auto rep = compare_calibration_costs(net, device_config{}, cost_model{}, w);
    REQUIRE(rep.strategies.size() == 4);
    CHECK(rep.strategies[0].strategy == "reprogram_all");
    CHECK(rep.strategies[1].strategy == "reprogram_drifted");
    CHECK(rep.strategies[2].strategy == "backprop_in_rram");
    CHECK(rep.strategies[3].strategy == "dora_sram");
    CHECK(rep.strategies[3].rram_writes == 0);
    CHECK(rep.strategies[3].calibrations_survivable == inf);
    CHECK(rep.strategies[2].calibrations_survivable < rep.strategies[0].calibrations_survivable);
    CHECK(rep.strategies[0].calibrations_survivable < rep.strategies[1].calibrations_survivable);
    CHECK(rep.rram_cells == doctest::Approx(2.0 * static_cast<double>(rep.rram_weights)));

    calibration_result res;
    calibration_config cfg;
    cfg.rank = 2;
    cfg.steps = 50;
    const auto geoms = layer_geometries(net);
    for (const auto* name : {"conv1", "fc"}) {
      layer_calibration l;
      l.name = name;
      l.footprint.parameters = adapter_parameters(select_layers(geoms, {name})[0], 2);
      res.layers.push_back(l);
    }
    const auto two = compare_calibration_costs(net, res, cfg, 10, device_config{}, cost_model{});
    CHECK(two.adapter_parameters == res.layers[0].footprint.parameters + res.layers[1].footprint.parameters);
    CHECK(two.strategies[3].sram_writes_per_bit == doctest::Approx(50));
    CHECK(two.strategies[0].rram_writes == doctest::Approx(rep.strategies[0].rram_writes));  // all crossbars
    cfg.rank = 3;
    CHECK_THROWS_WITH((void)compare_calibration_costs(net, res, cfg, 10, device_config{}, cost_model{}),
                      "[rimc.value_error] calibrated_layers: layer 'conv1' has 66 adapter parameters, rank 3 gives 91");
  }

  TEST_CASE("invalid parameters are rejected with the field and the value") {
    cost_model m;
    m.rram_write_energy_pj_per_pulse = -1;
    CHECK_THROWS_WITH(m.validate(), "[rimc.value_error] cost_model: rram_write_energy_pj_per_pulse must be > 0, got -1");
    m = {};
    m.rram_endurance_cycles = 0;
    CHECK_THROWS_WITH(m.validate(), "[rimc.value_error] cost_model: rram_endurance_cycles must be > 0, got 0");
    m = {};
    m.sram_read_energy_pj_per_bit = std::nan("");
    CHECK_THROWS_WITH(m.validate(), "[rimc.value_error] cost_model: sram_read_energy_pj_per_bit must be > 0, got nan");
    m = {};
    m.mac_energy_pj_fp32 = std::numeric_limits<double>::infinity();
    CHECK_THROWS_WITH(m.validate(), "[rimc.value_error] cost_model: mac_energy_pj_fp32 must be > 0, got inf");
    m = {};
    m.write_verify.pulse_histogram = {0.5, 0.25};
    CHECK_THROWS_WITH(m.validate(), "[rimc.value_error] write_verify_model: pulse_histogram must sum to 1, got 0.75");
    m = {};
    CHECK_THROWS_WITH((void)reprogram_all_cost({{"bad", 0, 3, 1}}, device_config{}, m),
                      "[rimc.value_error] layer_geometry 'bad': O, K and positions must be >= 1, got 0, 3, 1");
    calibration_workload w;
    w.samples = 0;
    CHECK_THROWS_WITH(w.validate(), "[rimc.value_error] calibration_workload: samples must be >= 1, got 0");
  }
}

}  // namespace unit_cost
