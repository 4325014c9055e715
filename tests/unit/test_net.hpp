#pragma once
// Network helpers for rimc's unit tests: filling parameters in place, and a small
// conv net the adapter tests calibrate (digital, and deployed and drifted).

#include <rimc/adapt/backprop.hpp>
#include <rimc/core/random.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include <doctest/doctest.h>

#include <cstdint>

#include <string>

namespace rimc::test {

/// Calls f(node, key, tensor&) on a copy of every parameter of `net` and
/// stores the result back with set_parameter (nodes without a deployed or
/// adapted layer only, as set_parameter allows).
template <class F>
void for_each_parameter(graph& net, F&& f) {
  for (const auto& n : net.nodes()) {
    for (const auto& [key, value] : n.params) {
      Tensor t = value;
      f(n, key, t);
      net.set_parameter(n.name, key, std::move(t));
    }
  }
}

/// Two 3x3 convolutions with bias (8 and 12 channels, the second stride 2), ReLUs,
/// global average pooling and a linear layer to 4 classes, on 2x10x10 inputs;
/// parameters uniform in [-0.4, 0.4] from `seed` on.
inline network small_conv_net(std::uint64_t seed) {
  network net;
  int x = net.input(Shape{2, 10, 10});
  x = net.conv2d("c1", x, 8, 3, conv2d_params{{1, 1}, {1, 1}}, true);
  x = net.relu("r1", x);
  x = net.conv2d("c2", x, 12, 3, conv2d_params{{2, 2}, {1, 1}}, true);
  x = net.relu("r2", x);
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 4);
  for_each_parameter(net, [&](const network_node&, const std::string&, Tensor& t) {
    fill_uniform(t, counter_rng(seed++), -0.4f, 0.4f);
  });
  return net;
}

/// small_conv_net(seed) deployed on crossbars (default analog options) and
/// drifted by 20% relative drift (drift seed 7): a student to calibrate.
inline network drifted_small_conv_net(std::uint64_t seed) {
  network net = small_conv_net(seed);
  auto chip = deploy_analog(net, analog_options{});
  chip.drift_to(relative_drift{}, drift_level{0.2}, 7);
  return net;
}

/// Backprop calibration (30 joint steps, KL only) of drifted_small_conv_net(1)
/// against `teacher` on `images` with adapters from `make`: the first report's
/// loss goes down and all three layers get an adapter.
template <class Factory>
void check_backprop_trains(const network& teacher, const Tensor& images, Factory make) {
  network student = drifted_small_conv_net(1);
  backprop_config cfg;
  cfg.steps = 30;
  cfg.kl_weight = 1.0;
  cfg.ce_weight = 0.0;
  const auto b = calibrate_backprop(teacher, student, images, {0, 1, 2, 3, 0, 1}, cfg, make);
  CHECK(b.layers[0].mse_after < b.layers[0].mse_before);
  CHECK(b.adapters.size() == 3);
}

}  // namespace rimc::test
