// Tests of layer-wise feature-distillation calibration on a drifted toy network.

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_calibration {

using namespace rimc;

namespace {

network toy(std::uint64_t seed, bool fold = true) {
  network net;
  int x = net.input(Shape{2, 10, 10});
  x = net.conv2d("c1", x, 8, 3, conv2d_params{{1, 1}, {1, 1}});
  x = net.batch_norm("b1", x);
  x = net.relu("r1", x);
  int y = net.conv2d("c2", x, 8, 3, conv2d_params{{1, 1}, {1, 1}});
  y = net.batch_norm("b2", y);
  x = net.add("add", y, x);
  x = net.relu("r2", x);
  x = net.conv2d("c3", x, 12, 3, conv2d_params{{2, 2}, {1, 1}}, true);
  x = net.relu("r3", x);
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 4);
  test::for_each_parameter(net, [&](const network_node&, const std::string& p, Tensor& t) {
    if (p == "num_batches_tracked") return;
    fill_uniform(t, counter_rng(seed++), p == "running_var" ? 0.5f : -0.4f, p == "running_var" ? 1.5f : 0.4f);
  });
  if (fold) net.fold_batch_norm();
  return net;
}

}  // namespace

TEST_SUITE("calibration") {
  TEST_CASE("feature-KD calibration reduces every layer's feature MSE and writes no RRAM cell") {
    const network teacher = toy(1);
    network student = toy(1);
    analog_options opt;
    opt.device.g_min_us = 0.0;
    auto chip = deploy_analog(student, opt);
    const auto programmed = chip.rram_writes();
    CHECK(programmed > 0);
    chip.drift_to(relative_drift{}, drift_level{0.2}, 7);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    const Tensor drifted = student.forward(images);
    calibration_config cfg;
    cfg.rank = 2;
    cfg.steps = 40;
    cfg.lr = 0.02;
    const calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
    REQUIRE(r.layers.size() == 4);
    for (const auto& l : r.layers) {
      INFO(l.name, ": ", l.mse_before, " -> ", l.mse_after);
      CHECK(l.mse_after < l.mse_before);
      CHECK(l.divergences == 0);
    }
    CHECK(r.rram_writes == 0);
    CHECK(chip.rram_writes() == programmed);
    // The calibrated network is closer to the teacher than the drifted one.
    const Tensor ideal = teacher.forward(images), calibrated = student.forward(images);
    double e_drift = 0, e_cal = 0;
    for (std::int64_t i = 0; i < ideal.numel(); ++i) {
      e_drift += std::pow(drifted[i] - ideal[i], 2);
      e_cal += std::pow(calibrated[i] - ideal[i], 2);
    }
    CHECK(e_cal < e_drift);
    CHECK(r.footprint.parameters > 0);
    CHECK(r.footprint.share_percent() > 0);
  }

  TEST_CASE("the merged deploy form of a calibrated network gives the training form's logits") {
    const network teacher = toy(5);
    network student = toy(5);
    auto chip = deploy_analog(student, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.1}, 3);
    const Tensor images = test::random_tensor(Shape{4, 2, 10, 10}, 4);
    calibration_config cfg;
    cfg.steps = 20;
    const calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
    // A digital network whose weights are the adapters' merged W' = gamma (W0 + s B A).
    network merged = toy(5);
    for (const auto& [name, a] : r.adapters) merged.set_parameter(name, "weight", a->adapter().merged_weights(*a->base()));
    test::check_close(merged.forward(images), student.forward(images), 1e-4, 1e-4);
  }

  TEST_CASE("invalid calibration settings are rejected up front, before any adapter is attached") {
    const network teacher = toy(1);
    network student = toy(1);
    const Tensor images = test::random_tensor(Shape{2, 2, 10, 10}, 1);
    calibration_config cfg;
    auto error = [&](const network& t, network& s, const Tensor& x) {
      std::string what;
      try {
        (void)calibrate_feature_kd(t, s, x, cfg);
      } catch (const value_error& e) {
        what = e.what();
      }
      return what;
    };
    cfg.rank = 0;
    CHECK(error(teacher, student, images) == "[rimc.value_error] calibration_config: rank must be >= 1, got 0");
    cfg.rank = 2;
    cfg.lr = -1;
    CHECK(error(teacher, student, images) == "[rimc.value_error] calibration_config: lr must be positive, got -1");
    cfg.lr = 0.01;
    cfg.rank = 9;  // c1: O = 8, K = 2 x 3 x 3
    CHECK(error(teacher, student, images) ==
          "[rimc.value_error] calibrate_feature_kd: layer 'c1': dora_config: rank must be in [1, min(64, O = 8, K = 18)], got 9");
    cfg.rank = 5;  // fits c1..c3 but not fc (O = 4)
    CHECK(error(teacher, student, images) ==
          "[rimc.value_error] calibrate_feature_kd: layer 'fc': dora_config: rank must be in [1, min(64, O = 4, K = 12)], got 5");
    cfg.rank = 2;
    CHECK(error(teacher, student, Tensor(Shape{0, 2, 10, 10})) ==
          "[rimc.value_error] calibrate_feature_kd: need at least one calibration image, got [0, 2, 10, 10]");
    Tensor nan_images = images;
    nan_images[5] = std::numeric_limits<float>::quiet_NaN();
    CHECK(error(teacher, student, nan_images) == "[rimc.value_error] calibrate_feature_kd: the calibration images are not finite");
    network broken = toy(1);
    Tensor huge = broken.node("c2").params.at("weight");
    huge.fill(3e38f);  // finite weights whose output overflows
    broken.set_parameter("c2", "weight", huge);
    CHECK(error(broken, student, images) ==
          "[rimc.value_error] calibrate_feature_kd: the teacher's output of layer 'c2' is not finite");
    cfg.targets = {"r1"};
    CHECK(error(teacher, student, images) ==
          "[rimc.value_error] calibrate_feature_kd: target 'r1' is not a conv2d or linear layer");
    cfg.targets = {};
    CHECK(adapted_layers(student).empty());
    network unfolded = toy(1, false);
    CHECK(error(unfolded, student, images) ==
          "[rimc.value_error] calibrate_feature_kd: batch norm 'b1' is not folded in the teacher but folded in the "
          "student; fold both or neither");
    network fused = toy(1);
    fused.fuse_relu();
    CHECK(error(teacher, fused, images) ==
          "[rimc.value_error] calibrate_feature_kd: student node 'c1' has a fused ReLU; its pre-activation output is "
          "needed (do not call fuse_relu())");
  }

  TEST_CASE("divergence from an enormous step size is caught: parameters restored, lr halved, reported") {
    const network teacher = toy(1);
    network student = toy(1);
    auto chip = deploy_analog(student, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.2}, 7);
    const Tensor images = test::random_tensor(Shape{4, 2, 10, 10}, 3);
    calibration_config cfg;
    cfg.steps = 12;
    cfg.lr = 1e4;
    const calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
    REQUIRE(r.layers.size() == 4);
    for (const auto& l : r.layers) {
      INFO(l.name, ": ", l.divergences, " divergences, lr ", l.lr, ", mse ", l.mse_before, " -> ", l.mse_after);
      CHECK(l.divergences > 0);
      CHECK(l.lr == cfg.lr / std::pow(2.0, l.divergences));
      CHECK(std::isfinite(l.mse_after));
      CHECK(l.mse_after <= l.mse_before);
      const auto& a = r.adapters.at(l.name)->adapter();
      for (const Tensor* t : {&a.magnitude(), &a.lora_A(), &a.lora_B()})
        for (std::int64_t i = 0; i < t->numel(); ++i) REQUIRE(std::isfinite((*t)[i]));
    }
    const Tensor out = student.forward(images);
    for (std::int64_t i = 0; i < out.numel(); ++i) REQUIRE(std::isfinite(out[i]));
  }
}

}  // namespace unit_calibration
