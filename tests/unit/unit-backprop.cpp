// Tests of back-propagation through a network (input gradients through frozen
// layers, adapter gradients) and of the backprop calibration baseline.

#include <rimc/adapt/backprop.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_backprop {

using namespace rimc;

namespace {

network toy(std::uint64_t seed) {
  network net;
  int x = net.input(Shape{2, 9, 9});
  x = net.conv2d("c1", x, 6, 3, conv2d_params{{1, 1}, {1, 1}});
  x = net.batch_norm("b1", x);
  x = net.relu("r1", x);
  int y = net.conv2d("c2", x, 6, 3, conv2d_params{{1, 1}, {1, 1}}, true);
  x = net.add("add", y, x, true);
  x = net.max_pool("pool", x, pool2d_params{pool_kind::max, {3, 3}, {2, 2}, {1, 1}});
  x = net.conv2d("c3", x, 8, 3, conv2d_params{{2, 2}, {1, 1}}, true);
  x = net.relu("r3", x);
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 5);
  test::for_each_parameter(net, [&](const network_node&, const std::string& p, Tensor& t) {
    if (p == "num_batches_tracked") return;
    fill_uniform(t, counter_rng(seed++), p == "running_var" ? 0.5f : -0.5f, p == "running_var" ? 1.5f : 0.5f);
  });
  return net;
}

double dot_double(const Tensor& a, const Tensor& r) { return test::dot(a, r); }

}  // namespace

TEST_SUITE("backprop") {
  TEST_CASE("network backward matches finite differences for the input and the adapters' magnitudes") {
    network net = toy(1);
    std::vector<std::shared_ptr<adapted_layer<dora_adapter>>> adapters;
    for (const char* name : {"c2", "fc"}) {
      dora_config dc;
      dc.rank = 2;
      dora_adapter a(net.layer(name), dc);
      a.set_parameters(net.layer(name), test::random_tensor(a.magnitude().shape(), 3, layout::nchw, 0.5f, 1.5f),
                       a.lora_A(), test::random_tensor(a.lora_B().shape(), 4, layout::nchw, -0.3f, 0.3f));
      adapters.push_back(attach_adapter(net, name, std::move(a)));
    }
    const Tensor x = test::random_tensor(Shape{3, 2, 9, 9}, 5);
    network_tape tape;
    const Tensor y = net.forward_train(x, tape);
    test::check_close(y, net.forward(x), 1e-6, 1e-6);  // the training forward computes the same output
    const Tensor r = test::random_tensor(y.shape(), 6);
    parameter_gradients grads;
    const Tensor dx = net.backward(tape, r, grads).to_layout(layout::nchw);
    // L = <r, y> is piecewise linear in x and linear in m (norms detached): central differences are exact up to rounding.
    auto loss_at = [&](const Tensor& xx) { return dot_double(net.forward(xx), r); };
    Tensor xp = x;
    for (std::int64_t i : {0, 17, 100, 333, 485}) {
      const float h = 1e-2f;
      Tensor a = xp, b = xp;
      a[i] += h;
      b[i] -= h;
      const double fd = (loss_at(a) - loss_at(b)) / (2 * h);
      CHECK(dx[i] == doctest::Approx(fd).epsilon(2e-2).scale(1.0));
    }
    for (std::size_t k = 0; k < adapters.size(); ++k) {
      auto& a = adapters[k]->adapter();
      const layer& base = *adapters[k]->base();
      const std::string name = k == 0 ? "c2" : "fc";
      for (std::int64_t o : {0, 3}) {
        const Tensor m0 = a.magnitude();
        auto at = [&](float delta) {
          Tensor m = m0;
          m[o] += delta;
          a.set_parameters(base, m, a.lora_A(), a.lora_B());
          const double l = loss_at(x);
          a.set_parameters(base, m0, a.lora_A(), a.lora_B());
          return l;
        };
        const double fd = (at(1e-2f) - at(-1e-2f)) / 2e-2;
        CHECK(grads.at(name)[dora_adapter::grad_index_m][o] == doctest::Approx(fd).epsilon(2e-2).scale(1.0));
      }
    }
  }

  TEST_CASE("the distillation loss gradient matches finite differences") {
    const Tensor logits = test::random_tensor(Shape{4, 6}, 1, layout::nchw, -3, 3);
    const Tensor teacher = test::random_tensor(Shape{4, 6}, 2, layout::nchw, -3, 3);
    const std::vector<std::int32_t> labels{0, 5, 2, 2};
    backprop_config cfg;
    cfg.kl_weight = 0.5;
    cfg.temperature = 2.0;
    Tensor g, unused;
    (void)distillation_loss(logits, labels, &teacher, cfg, g);
    for (std::int64_t i = 0; i < logits.numel(); ++i) {
      Tensor a = logits, b = logits;
      a[i] += 1e-3f;
      b[i] -= 1e-3f;
      const double fd = (distillation_loss(a, labels, &teacher, cfg, unused) - distillation_loss(b, labels, &teacher, cfg, unused)) / 2e-3;
      CHECK(g[i] == doctest::Approx(fd).epsilon(1e-3).scale(1.0));
    }
  }

  TEST_CASE("backprop calibration lowers the loss and writes no RRAM cell") {
    network teacher = toy(7);
    network student = toy(7);
    analog_options opt;
    opt.device.g_min_us = 0.0;
    auto chip = deploy_analog(student, opt);
    chip.drift_to(relative_drift{}, drift_level{0.2}, 3);
    const Tensor images = test::random_tensor(Shape{8, 2, 9, 9}, 8);
    std::vector<std::int32_t> labels;
    const Tensor t = teacher.forward(images);
    for (std::int64_t i = 0; i < 8; ++i) {
      std::int32_t best = 0;
      for (std::int32_t k = 1; k < 5; ++k)
        if (t[i * 5 + k] > t[i * 5 + best]) best = k;
      labels.push_back(best);
    }
    backprop_config cfg;
    cfg.steps = 40;
    cfg.kl_weight = 1.0;
    const calibration_result r = calibrate_backprop(teacher, student, images, labels, cfg);
    REQUIRE(r.layers.size() == 1);
    CHECK(r.layers[0].mse_after < r.layers[0].mse_before);
    CHECK(r.rram_writes == 0);
    CHECK(r.adapters.size() == 4);
    cfg.ce_weight = 0;
    cfg.kl_weight = 0;
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, labels, cfg),
                      "[rimc.value_error] backprop_config: ce_weight (0) and kl_weight (0) must be >= 0 and not both 0");
  }

  TEST_CASE("backprop divergence from an enormous step size is caught: parameters restored, lr halved, reported") {
    const network teacher = toy(7);
    network student = toy(7);
    auto chip = deploy_analog(student, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.2}, 3);
    const Tensor images = test::random_tensor(Shape{6, 2, 9, 9}, 5);
    const std::vector<std::int32_t> labels{0, 1, 2, 3, 4, 0};
    backprop_config cfg;
    cfg.steps = 12;
    cfg.lr = 1e4;
    cfg.kl_weight = 1.0;
    const calibration_result r = calibrate_backprop(teacher, student, images, labels, cfg);
    REQUIRE(r.layers.size() == 1);
    const auto& l = r.layers[0];
    INFO(l.divergences, " divergences, lr ", l.lr, ", loss ", l.mse_before, " -> ", l.mse_after, ", ", l.steps, " steps");
    CHECK(l.divergences > 0);
    // Every iteration is a step or a restore, except a final good evaluation.
    CHECK(l.steps + l.divergences >= cfg.steps);
    CHECK(l.steps + l.divergences <= cfg.steps + 1);
    CHECK(l.lr == cfg.lr / std::pow(2.0, l.divergences));
    CHECK(std::isfinite(l.mse_after));
    CHECK(l.mse_after <= 1e3 * l.mse_before);
    for (const auto& [name, a] : r.adapters)
      for (const Tensor* t : a->parameters())
        for (std::int64_t i = 0; i < t->numel(); ++i) REQUIRE(std::isfinite((*t)[i]));
    const Tensor out = student.forward(images);
    for (std::int64_t i = 0; i < out.numel(); ++i) REQUIRE(std::isfinite(out[i]));
  }

  TEST_CASE("invalid backprop calibration settings are rejected up front, before any adapter is attached") {
    const network teacher = toy(7);
    network student = toy(7);
    const Tensor images = test::random_tensor(Shape{2, 2, 9, 9}, 8);
    const std::vector<std::int32_t> labels{1, 4};
    backprop_config cfg;
    cfg.rank = 7;  // c1: O = 6, K = 2 x 3 x 3
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, labels, cfg),
                      "[rimc.value_error] calibrate_backprop: layer 'c1': dora_config: rank must be in [1, min(64, O = 6, "
                      "K = 18)], got 7");
    cfg.rank = 2;
    cfg.lr = -0.5;
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, labels, cfg),
                      "[rimc.value_error] backprop_config: lr must be positive, got -0.5");
    cfg.lr = 0.01;
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, Tensor(Shape{0, 2, 9, 9}), {}, cfg),
                      "[rimc.value_error] calibrate_backprop: need at least one calibration image, got [0, 2, 9, 9]");
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, {1}, cfg),
                      "[rimc.value_error] calibrate_backprop: 2 images but 1 labels");
    CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, {1, 5}, cfg),
                      "[rimc.value_error] calibrate_backprop: label 5 of image 1 is outside [0, 5)");
    CHECK(adapted_layers(student).empty());
  }
}

}  // namespace unit_backprop
