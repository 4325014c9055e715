// Tests of drift-aware schedules (adapt/schedule.hpp) and of the ensemble
// calibration that fills them offline (calibrate_feature_kd_ensemble): level
// times and selection, applying a set all or nothing, files, the
// accuracy-bound placement, and the ensemble against the one-student
// calibration it generalises.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/schedule.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_schedule {

using namespace rimc;

namespace {

/// small_conv_net(1) on crossbars drifted by relative drift `rho` with drift seed `seed`.
network chip(std::uint64_t seed, double rho = 0.2) {
  network net = test::small_conv_net(1);
  auto dep = deploy_analog(net, analog_options{});
  dep.drift_to(relative_drift{}, drift_level{rho}, seed);
  return net;
}

/// Every layer of `net` with a LoRA adapter whose parameters are drawn from `seed`.
void attach_lora(network& net, std::uint64_t seed) {
  for (const auto& name : net.layer_names()) {
    lora_adapter a(net.layer(name), lora_config{2, 2.0, false, seed});
    const Tensor A = a.lora_A(), B = test::random_tensor(a.lora_B().shape(), seed + 100);
    a.set_parameters(net.layer(name), A, B);
    attach_adapter(net, name, std::move(a));
  }
}

std::map<std::string, std::vector<Tensor>> parameters_of(const network& net) {
  std::map<std::string, std::vector<Tensor>> out;
  for (const auto& [name, l] : adapted_layers(net))
    for (auto& [key, t] : l->adapter_tensors()) out[name].push_back(t);
  return out;
}

}  // namespace

TEST_SUITE("schedule") {
  TEST_CASE("log-spaced level times and the nearest-in-log-time boundaries") {
    const auto t = log_spaced_times(1, 1e8, 5);
    REQUIRE(t.size() == 5);
    CHECK(t[0] == 1);
    CHECK(t[1] == doctest::Approx(100));
    CHECK(t[2] == doctest::Approx(1e4));
    CHECK(t[4] == 1e8);
    const auto from = nearest_in_log_time(t);
    CHECK(from[0] == 0);
    CHECK(from[1] == doctest::Approx(10));
    CHECK(from[4] == doctest::Approx(1e7));
    CHECK(log_spaced_times(5, 5, 1) == std::vector<double>{5});
    CHECK_THROWS_WITH_AS(log_spaced_times(0, 10, 3),
                         "[rimc.value_error] log_spaced_times: need 0 < first_s <= last_s, finite, got first_s = 0 and "
                         "last_s = 10",
                         value_error);
    CHECK_THROWS_WITH_AS(log_spaced_times(1, 10, 0), "[rimc.value_error] log_spaced_times: n must be >= 1, got 0",
                         value_error);
    const std::vector<double> bad{1, 1};
    CHECK_THROWS_WITH_AS(nearest_in_log_time(bad),
                         "[rimc.value_error] nearest_in_log_time: times must be > 0 and increasing, got 1 then 1",
                         value_error);
  }

  TEST_CASE("a schedule selects the level in force by elapsed time and loads its set into the attached adapters") {
    network net = chip(7);
    drift_schedule s("lora");
    std::vector<adapter_set> sets;
    for (std::uint64_t k = 0; k < 3; ++k) {
      network donor = chip(7);
      attach_lora(donor, 10 * k + 1);
      sets.push_back(capture_adapters(donor, "lora"));
    }
    s.add(0, 1, sets[0]);
    s.add(10, 100, sets[1]);
    s.add(1e4, 1e5, sets[2]);
    CHECK(s.size() == 3);
    CHECK(s.level_at(seconds{0}) == 0);
    CHECK(s.level_at(seconds{9.99}) == 0);
    CHECK(s.level_at(seconds{10}) == 1);
    CHECK(s.level_at(seconds{5e3}) == 1);
    CHECK(s.level_at(seconds{1e9}) == 2);
    CHECK(s.parameters() == 3 * (2 * (18 + 8) + 2 * (72 + 12) + 2 * (12 + 4)));
    attach_lora(net, 99);
    const Tensor x = test::random_tensor(Shape{3, 2, 10, 10}, 5);
    CHECK(s.apply_at(net, seconds{50}) == 1);
    for (const auto& [name, tensors] : capture_adapters(net, "lora"))
      for (const auto& [key, t] : tensors) CHECK(t == sets[1].at(name).at(key));
    // The output equals the donor's, whose adapters hold the same set.
    network donor = chip(7);
    attach_lora(donor, 11);
    CHECK(net.forward(x) == donor.forward(x));

    CHECK_THROWS_WITH_AS(s.add(5, 1, sets[0]),
                         "[rimc.value_error] drift_schedule::add: from_s must be finite, >= 0 and after the last "
                         "level's 10000 s, got 5",
                         value_error);
    adapter_set fewer = sets[0];
    fewer.erase("fc");
    CHECK_THROWS_WITH_AS(s.add(1e6, 1e6, fewer),
                         "[rimc.value_error] drift_schedule::add: the set holds 2 layers, the first level 3", value_error);
    CHECK_THROWS_WITH_AS(drift_schedule("dora").apply(net, 0),
                         "[rimc.value_error] drift_schedule::apply: level 0 of a schedule with 0 levels", value_error);
    CHECK_THROWS_WITH_AS((void)s.level_at(seconds{-1}),
                         "[rimc.value_error] drift_schedule::level_at: t must be >= 0 and finite, got -1", value_error);
  }

  TEST_CASE("loading a set is all or nothing: a bad tensor in a later layer puts the earlier layers back") {
    network net = chip(7);
    attach_lora(net, 3);
    const auto before = parameters_of(net);
    network donor = chip(7);
    attach_lora(donor, 4);
    adapter_set set = capture_adapters(donor, "lora");
    set.at("fc").at("lora_B.weight")[1] = std::nanf("");  // "fc" loads after "c1" and "c2"
    CHECK_THROWS_AS(load_adapters(net, "lora", set), value_error);
    CHECK(parameters_of(net) == before);
    CHECK_THROWS_WITH_AS(load_adapters(net, "dora", capture_adapters(donor, "lora")),
                         "[rimc.value_error] load_adapters: layer 'c1' has a lora adapter, the set is for dora adapters",
                         value_error);
    CHECK_THROWS_WITH_AS(capture_adapters(chip(7), "lora"),
                         "[rimc.value_error] capture_adapters: the network has no lora adapter attached", value_error);
  }

  TEST_CASE("a schedule file round-trips bitwise, and malformed files name the field") {
    const auto dir = test::temp_dir("schedule");
    drift_schedule s("lora");
    for (std::uint64_t k = 0; k < 2; ++k) {
      network donor = chip(7);
      attach_lora(donor, k + 1);
      s.add(k == 0 ? 0.0 : 3600.0, k == 0 ? 60.0 : 86400.0, capture_adapters(donor, "lora"));
    }
    const auto path = dir / "schedule.safetensors";
    s.save(path);
    const drift_schedule r = drift_schedule::load(path);
    CHECK(r.kind() == "lora");
    REQUIRE(r.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK(r.level(i).from_s == s.level(i).from_s);
      CHECK(r.level(i).time_s == s.level(i).time_s);
      CHECK(r.level(i).set.size() == s.level(i).set.size());
      for (const auto& [name, tensors] : s.level(i).set)
        for (const auto& [key, t] : tensors) CHECK(r.level(i).set.at(name).at(key) == t);
    }
    // Malformed files: each names the field; the saved file stays as it was.
    const auto write = [&](const std::map<std::string, Tensor>& t, const std::map<std::string, std::string>& md) {
      const auto p = dir / "bad.safetensors";
      save_safetensors(p, t, md);
      return p;
    };
    const std::map<std::string, std::string> good{{"format", "rimc.drift_schedule"}, {"version", "1"}, {"kind", "lora"},
                                                  {"from_s", "[0]"}, {"time_s", "[1]"}};
    const std::map<std::string, Tensor> one{{"level.0/c1/lora_A.weight", Tensor(Shape{2, 2})}};
    const std::string bad_path = "[rimc.io_error] " + (dir / "bad.safetensors").string();
    auto md = good;
    md["format"] = "peft";
    CHECK_THROWS_WITH_AS(drift_schedule::load(write(one, md)),
                         (bad_path + ": metadata 'format' must be 'rimc.drift_schedule', got 'peft'").c_str(),
                         io_error);
    md = good;
    md.erase("kind");
    CHECK_THROWS_WITH_AS(drift_schedule::load(write(one, md)), (bad_path + ": metadata has no 'kind'").c_str(),
                         io_error);
    md = good;
    md["time_s"] = "[1, 2]";
    CHECK_THROWS_AS(drift_schedule::load(write(one, md)), io_error);
    CHECK_THROWS_WITH_AS(drift_schedule::load(write({{"level.3/c1/x", Tensor(Shape{1})}}, good)),
                         (bad_path + ": tensor 'level.3/c1/x' is not 'level.i/layer/key' with i below 1").c_str(),
                         io_error);
    CHECK_THROWS_AS(drift_schedule::load(write({{"c1.x", Tensor(Shape{1})}}, good)), io_error);
    CHECK_THROWS_WITH_AS(drift_schedule("lora").save(dir / "empty.safetensors"),
                         "[rimc.value_error] drift_schedule::save: the schedule has no level", value_error);
    CHECK_FALSE(std::filesystem::exists(dir / "empty.safetensors"));
    CHECK(drift_schedule::load(path).size() == 2);
  }

  TEST_CASE("level placement by an accuracy-loss bound starts a level where the current one first exceeds it") {
    std::vector<double> grid;
    for (int e = 0; e <= 8; ++e) grid.push_back(std::pow(10.0, e));
    std::vector<double> fitted;
    const auto starts = place_levels_by_bound(
        grid, 2.0,
        [&](double t) {
          fitted.push_back(t);
          return t;
        },
        [](double level_t, double t) { return std::log10(t / level_t); });
    CHECK(starts == std::vector<std::size_t>{0, 3, 6});
    CHECK(fitted == std::vector<double>{1, 1e3, 1e6});
    const auto fit = [](double t) { return t; };
    const auto loss = [](double, double) { return 0.0; };
    CHECK(place_levels_by_bound(grid, 0.0, fit, loss) == std::vector<std::size_t>{0});
    CHECK_THROWS_WITH_AS(place_levels_by_bound(std::vector<double>{}, 1.0, fit, loss),
                         "[rimc.value_error] place_levels_by_bound: the grid of candidate times is empty", value_error);
    CHECK_THROWS_WITH_AS(place_levels_by_bound(grid, -1.0, fit, loss),
                         "[rimc.value_error] place_levels_by_bound: bound must be >= 0 and finite, got -1", value_error);
  }

  TEST_CASE("ensemble calibration: one student, or two identical ones, give the one-student calibration bitwise") {
    const network teacher = test::small_conv_net(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    calibration_config cfg;
    cfg.steps = 30;
    network alone = chip(7);
    (void)calibrate_feature_kd(teacher, alone, images, cfg);
    network one = chip(7);
    network* const ones[] = {&one};
    (void)calibrate_feature_kd_ensemble(teacher, ones, images, cfg, dora_factory::from(cfg));
    CHECK(parameters_of(one) == parameters_of(alone));
    network a = chip(7), b = chip(7);
    network* const twins[] = {&a, &b};
    const auto r = calibrate_feature_kd_ensemble(teacher, twins, images, cfg, dora_factory::from(cfg));
    CHECK(parameters_of(a) == parameters_of(alone));
    CHECK(parameters_of(b) == parameters_of(alone));
    CHECK(r.adapters.size() == 3);
  }

  TEST_CASE("ensemble calibration on different chips: one shared set, lower mean feature MSE, guarded inputs") {
    const network teacher = test::small_conv_net(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    calibration_config cfg;
    cfg.steps = 30;
    network a = chip(7), b = chip(8), c = chip(9);
    network* const sims[] = {&a, &b, &c};
    const auto r = calibrate_feature_kd_ensemble(teacher, sims, images, cfg, dora_factory::from(cfg));
    REQUIRE(r.layers.size() == 3);
    for (const auto& l : r.layers) {
      CAPTURE(l.name);
      CHECK(l.mse_after < l.mse_before);
    }
    CHECK(parameters_of(a) == parameters_of(b));
    CHECK(parameters_of(a) == parameters_of(c));
    CHECK(r.rram_writes == 0);
    // The shared set on an unseen chip of the same drift: loaded through a schedule, it changes the output.
    drift_schedule s("dora");
    s.add(0, 0, capture_adapters(a, "dora"));
    network unseen = chip(10);
    (void)calibrate_feature_kd(teacher, unseen, images, [] {
      calibration_config z;
      z.steps = 0;
      return z;
    }());
    const Tensor bare = unseen.forward(images);
    s.apply(unseen, 0);
    CHECK_FALSE(unseen.forward(images) == bare);

    network d = chip(11);
    network* const dup[] = {&d, &d};
    CHECK_THROWS_WITH_AS(calibrate_feature_kd_ensemble(teacher, dup, images, cfg, dora_factory::from(cfg)),
                         "[rimc.value_error] calibrate_feature_kd_ensemble: students 0 and 1 are the same network",
                         value_error);
    CHECK_THROWS_WITH_AS(
        calibrate_feature_kd_ensemble(teacher, std::span<network* const>(), images, cfg, dora_factory::from(cfg)),
        "[rimc.value_error] calibrate_feature_kd_ensemble: no student given", value_error);
    CHECK(adapted_layers(d).empty());
  }
}

}  // namespace unit_schedule
