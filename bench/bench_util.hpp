#pragma once
// Helpers the benchmark programs share.

#include <rimc/core/random.hpp>
#include <rimc/nn/network.hpp>

#include <cmath>

namespace rimc::bench {

/// Fills every parameter with U(-bound, bound) (running_var with 1): a network without a trained file.
inline void randomise(network& net, float bound = 0.05f) {
  std::uint64_t seed = 1;
  for (const auto& n : net.nodes())
    for (const auto& [p, value] : n.params) {
      Tensor t = value;
      if (p == "running_var") {
        t.fill(1.0f);
      } else if (p != "num_batches_tracked") {
        fill_uniform(t, counter_rng(seed++), -bound, bound);
      }
      net.set_parameter(n.name, p, std::move(t));
    }
}

/// torchvision's initialisation of a ResNet (torchvision.models.resnet): conv weights normal with
/// std sqrt(2 / (O kh kw)) (kaiming_normal_, fan_out, relu), batch norm weight 1, bias 0, running
/// mean 0, var 1, and the fc layer's weight and bias uniform in +-1 / sqrt(in) (nn.Linear's default).
inline void torchvision_init(network& net, std::uint64_t seed = 1) {
  for (const auto& n : net.nodes())
    for (const auto& [p, value] : n.params) {
      Tensor t = value;
      if (n.kind == op_kind::conv2d && p == "weight") {
        const double fan_out = static_cast<double>(t.dim(0) * t.dim(2) * t.dim(3));
        fill_normal(t, counter_rng(seed++), 0.0f, static_cast<float>(std::sqrt(2.0 / fan_out)));
      } else if (n.kind == op_kind::linear) {
        const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n.params.at("weight").dim(1))));
        fill_uniform(t, counter_rng(seed++), -bound, bound);
      } else if (p == "weight" || p == "running_var") {
        t.fill(1.0f);
      } else if (p != "num_batches_tracked") {
        t.fill(0.0f);
      }
      net.set_parameter(n.name, p, std::move(t));
    }
}

}  // namespace rimc::bench
