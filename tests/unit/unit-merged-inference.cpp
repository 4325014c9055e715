// Tests of merged adapter inference (adapter_inference::merged): an adapted
// layer whose frozen layer is linear in its weights (digital, or crossbars
// with an ideal periphery) runs one kernel on the merged weights. Checked: the
// same output as the factorised form for DoRA, LoRA and VeRA on conv and
// linear layers (to float rounding), the fused ReLU, the merged weights
// following the chip's drift and the adapter's parameters however they were
// changed (VeRA+'s level switch included), the factorised fallback on a
// non-ideal periphery, adapters without a merged form refused by name, and
// concurrent forwards.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/affine_adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include "test_adapters.hpp"
#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <thread>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_merged_inference {

using namespace rimc;

namespace {

/// Largest |a - b| over the largest |b| (a relative error for the whole tensor).
double relative_error(const Tensor& a, const Tensor& b) {
  const Tensor x = a.rank() == 4 ? a.to_layout(layout::nchw) : a;
  const Tensor y = b.rank() == 4 ? b.to_layout(layout::nchw) : b;
  REQUIRE(x.shape() == y.shape());
  double diff = 0, scale = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(x[i]) - y[i]));
    scale = std::max(scale, std::abs(static_cast<double>(y[i])));
  }
  return diff / scale;
}

/// The drifted small conv net with an adapter of type A (random parameters) on c1, c2 and fc.
template <class A, class Make>
network adapted_chip(Make&& make) {
  network net = test::drifted_small_conv_net(11);
  std::uint64_t seed = 40;
  for (const char* name : {"c1", "c2", "fc"}) {
    auto l = attach_adapter(net, name, make(net.layer(name)));
    test::randomise_adapter(l->adapter(), *l->base(), seed += 10);
    l->parameters_changed();
  }
  return net;
}

dora_adapter make_dora(const layer& base) { return dora_adapter(base, {.rank = 2, .alpha = 4.0}); }
lora_adapter make_lora(const layer& base) { return lora_adapter(base, {.rank = 3, .alpha = 6.0}); }
vera_adapter make_vera(const layer& base) {
  const auto O = base.effective_weights().dim(0), K = base.effective_weights().numel() / O;
  return vera_adapter(base, {.projections = std::make_shared<const vera_projections>(4, K, O, 3)});
}

template <class A, class Make>
void check_merged_matches_factorised(Make&& make) {
  network net = adapted_chip<A>(make);
  const Tensor x = test::random_tensor(Shape{3, 2, 10, 10}, 5);
  const Tensor factorised = net.forward(x);
  set_adapter_inference(net, adapter_inference::merged);
  for (const auto& [name, l] : adapted_layers(net)) {
    CAPTURE(name);
    CHECK(l->inference() == adapter_inference::merged);
    CHECK(l->runs_merged());
  }
  const Tensor merged = net.forward(x);
  CHECK(relative_error(merged, factorised) < 2e-6);
  CHECK(relative_error(merged, factorised) > 0);  // a different computation, not the factorised one again
  // Back to factorised: bitwise what it gave before.
  set_adapter_inference(net, adapter_inference::factorised);
  CHECK(net.forward(x) == factorised);
}

}  // namespace

TEST_SUITE("merged adapter inference") {
  TEST_CASE("merged equals factorised to float rounding for DoRA, LoRA and VeRA on conv and linear layers") {
    SUBCASE("dora") { check_merged_matches_factorised<dora_adapter>(make_dora); }
    SUBCASE("lora") { check_merged_matches_factorised<lora_adapter>(make_lora); }
    SUBCASE("vera") { check_merged_matches_factorised<vera_adapter>(make_vera); }
  }

  TEST_CASE("one adapted conv: forward and the fused ReLU against the factorised form") {
    network net = adapted_chip<dora_adapter>(make_dora);
    const auto l = adapter_at<dora_adapter>(net, "c2");
    const Tensor x = test::random_tensor(Shape{2, 8, 10, 10}, 9);
    Tensor f, fr, m, mr;
    l->forward(x, f);
    l->forward_relu(x, fr);
    l->set_inference(adapter_inference::merged);
    CHECK(l->fuses_relu());
    l->forward(x, m);
    l->forward_relu(x, mr);
    CHECK(relative_error(m, f) < 2e-6);
    Tensor relu_m;
    relu(m, relu_m);
    CHECK(mr.to_layout(layout::nchw) == relu_m.to_layout(layout::nchw));  // the kernel's ReLU is exact
    CHECK(relative_error(mr, fr) < 2e-6);
    // The merged kernel is the frozen kernel on gamma ⊙ (W0 + s B A) with the frozen bias.
    conv2d_params p = *l->base()->conv_params();
    const conv2d by_hand(l->adapter().merged_weights(*l->base()), *l->base()->bias(), p);
    CHECK(by_hand.forward(x).to_layout(layout::nchw) == m.to_layout(layout::nchw));
  }

  TEST_CASE("the merged weights follow the chip's drift and the adapter's parameters") {
    network net = test::small_conv_net(11);
    auto chip = deploy_analog(net, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.1}, 4);
    auto l = attach_adapter(net, "c2", make_dora(net.layer("c2")));
    test::randomise_adapter(l->adapter(), *l->base(), 70);
    l->parameters_changed();
    const Tensor x = test::random_tensor(Shape{2, 2, 10, 10}, 6);
    const auto both = [&] {
      l->set_inference(adapter_inference::factorised);
      const Tensor f = net.forward(x);
      l->set_inference(adapter_inference::merged);
      return std::pair{f, net.forward(x)};
    };
    const auto [f0, m0] = both();
    CHECK(relative_error(m0, f0) < 2e-6);
    SUBCASE("more drift") {
      chip.drift_to(relative_drift{}, drift_level{0.3}, 8);
      const Tensor m1 = net.forward(x);  // merged, right after the drift
      CHECK(relative_error(m1, m0) > 1e-3);
      const auto [f1, m1again] = both();
      CHECK(relative_error(m1, f1) < 2e-6);
      CHECK(m1 == m1again);
    }
    SUBCASE("parameters changed through the optimizer's interface") {
      for (Tensor* p : l->trainable_parameters()) p->matrix(1, p->numel()) *= 1.5f;
      l->parameters_changed();
      const Tensor m1 = net.forward(x);
      CHECK(relative_error(m1, m0) > 1e-3);
      CHECK(relative_error(m1, both().first) < 2e-6);
    }
    SUBCASE("parameters set on the adapter itself, without parameters_changed") {
      Tensor b = l->adapter().lora_B();
      fill_uniform(b, counter_rng(99), -1.0f, 1.0f);
      l->adapter().set_parameters(*l->base(), l->adapter().magnitude(), l->adapter().lora_A(), b);
      const Tensor m1 = net.forward(x);
      CHECK(relative_error(m1, m0) > 1e-3);
      CHECK(relative_error(m1, both().first) < 2e-6);
    }
  }

  TEST_CASE("VeRA+: switching the drift level is seen by the merged weights") {
    network net = test::drifted_small_conv_net(11);
    const layer& base = net.layer("c2");
    const auto O = base.effective_weights().dim(0), K = base.effective_weights().numel() / O;
    auto l = attach_adapter(
        net, "c2",
        vera_adapter(base, {.projections = std::make_shared<const vera_projections>(4, K, O, 3), .levels = 2}));
    for (int level : {1, 0}) {  // different values in each level's vectors
      l->adapter().select(level);
      test::randomise_adapter(l->adapter(), *l->base(), 80 + static_cast<std::uint64_t>(level));
      l->parameters_changed();
    }
    const Tensor x = test::random_tensor(Shape{2, 2, 10, 10}, 6);
    const Tensor f0 = net.forward(x);
    l->adapter().select(1);
    const Tensor f1 = net.forward(x);
    l->set_inference(adapter_inference::merged);
    const Tensor m1 = net.forward(x);
    l->adapter().select(0);  // on the adapter itself, no parameters_changed()
    const Tensor m0 = net.forward(x);
    CHECK(relative_error(f1, f0) > 1e-3);
    CHECK(relative_error(m1, f1) < 2e-6);
    CHECK(relative_error(m0, f0) < 2e-6);
  }

  TEST_CASE("a non-ideal periphery runs factorised, bitwise, whatever the setting") {
    network net = test::small_conv_net(11);
    analog_options opt;
    opt.periphery.dac = dac_config{8, dac_scaling::per_vector_absmax, 1.0};
    auto chip = deploy_analog(net, opt);
    chip.drift_to(relative_drift{}, drift_level{0.2}, 4);
    auto l = attach_adapter(net, "c2", make_dora(net.layer("c2")));
    test::randomise_adapter(l->adapter(), *l->base(), 70);
    l->parameters_changed();
    const Tensor x = test::random_tensor(Shape{2, 2, 10, 10}, 6);
    const Tensor f = net.forward(x);
    l->set_inference(adapter_inference::merged);
    CHECK(l->inference() == adapter_inference::merged);
    CHECK_FALSE(l->base()->linear_forward());
    CHECK_FALSE(l->runs_merged());
    CHECK(net.forward(x) == f);
  }

  TEST_CASE("the frozen layers say whether their forward is linear in their weights") {
    network net = test::small_conv_net(3);
    CHECK(net.layer("c1").linear_forward());
    CHECK(net.layer("fc").linear_forward());
    CHECK_FALSE(digital_conv2d(test::random_tensor(Shape{4, 2, 3, 3}, 1), std::nullopt,
                               conv2d_params{{1, 1}, {1, 1}, {1, 1}, 1, true})
                    .linear_forward());  // a fused ReLU
    CHECK_FALSE(digital_linear(test::random_tensor(Shape{4, 6}, 1), std::nullopt, true).linear_forward());
    network chip = test::small_conv_net(3);
    (void)deploy_analog(chip, analog_options{});
    CHECK(chip.layer("c1").linear_forward());
    network quantised = test::small_conv_net(3);
    (void)deploy_analog(quantised, analog_options{.periphery = periphery_config::quantised(8, 8)});
    CHECK_FALSE(quantised.layer("c1").linear_forward());
  }

  TEST_CASE("adapters without a merged form are refused by name, and nothing changes") {
    network net = test::drifted_small_conv_net(11);
    auto d = attach_adapter(net, "c1", make_dora(net.layer("c1")));
    auto a = attach_adapter(net, "c2", affine_adapter(net.layer("c2")));
    CHECK_FALSE(a->can_merge());
    CHECK(d->can_merge());
    CHECK_THROWS_WITH_AS(a->set_inference(adapter_inference::merged),
                         "[rimc.value_error] adapted_layer::set_inference: a affine adapter has no merged form (it "
                         "runs factorised only)",
                         value_error);
    CHECK_THROWS_WITH_AS(set_adapter_inference(net, adapter_inference::merged),
                         "[rimc.value_error] set_adapter_inference: node 'c2' has a affine adapter, which has no "
                         "merged form",
                         value_error);
    CHECK(d->inference() == adapter_inference::factorised);
    CHECK(a->inference() == adapter_inference::factorised);
    set_adapter_inference(net, adapter_inference::factorised);  // always possible
  }

  TEST_CASE("the training kernel is set on every low-rank adapter of a network, and inference stays bitwise") {
    network net = test::drifted_small_conv_net(11);
    auto d = attach_adapter(net, "c1", make_dora(net.layer("c1")));
    auto a = attach_adapter(net, "c2", affine_adapter(net.layer("c2")));
    const Tensor x = test::random_tensor(Shape{3, 2, 10, 10}, 4);
    const Tensor before = net.forward(x);
    CHECK(d->adapter().training_kernel() == low_rank_kernel::shift_add);
    CHECK(set_adapter_training_kernel(net, low_rank_kernel::direct) == 1);  // the affine adapter has no low-rank path
    CHECK(d->adapter().training_kernel() == low_rank_kernel::direct);
    CHECK_FALSE(a->set_training_kernel(low_rank_kernel::direct));
    CHECK(net.forward(x) == before);  // inference runs the shift-add form either way
    CHECK(set_adapter_training_kernel(net, low_rank_kernel::shift_add) == 1);
    CHECK(d->adapter().training_kernel() == low_rank_kernel::shift_add);
  }

  TEST_CASE("merged forwards from two threads at once agree with one thread") {
    network net = adapted_chip<dora_adapter>(make_dora);
    set_adapter_inference(net, adapter_inference::merged);
    const Tensor x1 = test::random_tensor(Shape{4, 2, 10, 10}, 21), x2 = test::random_tensor(Shape{3, 2, 10, 10}, 22);
    Tensor y1, y2;
    // The first forwards after the switch build the merged weights, concurrently.
    std::thread t1([&] { y1 = net.forward(x1); });
    std::thread t2([&] { y2 = net.forward(x2); });
    t1.join();
    t2.join();
    CHECK(y1 == net.forward(x1));
    CHECK(y2 == net.forward(x2));
  }

  TEST_CASE("conv2d::forward_relu is the forward then ReLU, in one kernel") {
    const Tensor w = test::random_tensor(Shape{5, 3, 3, 3}, 2), b = test::random_tensor(Shape{5}, 3);
    const Tensor x = test::random_tensor(Shape{2, 3, 7, 7}, 4);
    const conv2d plain(w, b, conv2d_params{{1, 1}, {1, 1}});
    const conv2d fused(w, b, conv2d_params{{1, 1}, {1, 1}, {1, 1}, 1, true});
    Tensor y, yr, expected;
    plain.forward(x, y);
    plain.forward_relu(x, yr);
    relu(y, expected);
    CHECK(yr.to_layout(layout::nchw) == expected.to_layout(layout::nchw));
    CHECK(fused.forward(x).to_layout(layout::nchw) == expected.to_layout(layout::nchw));
    CHECK(std::any_of(y.data(), y.data() + y.numel(), [](float v) { return v < 0; }));
  }
}

}  // namespace unit_merged_inference
