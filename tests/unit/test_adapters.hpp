#pragma once
// A small network with adapters for the PEFT file tests: a conv node
// "layer1.0.conv1" (3 -> 8 channels, 3x3, stride 2 on 4x4 inputs) and a
// linear "fc" (32 -> 10), each with an adapter whose parameters are random.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/core/random.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

namespace rimc::test {

/// The two-layer network, weights drawn from `seed`.
inline network two_layer_network(std::uint64_t seed = 1) {
  network net;
  int x = net.input(Shape{3, 4, 4});
  x = net.conv2d("layer1.0.conv1", x, 8, 3, conv2d_params{{2, 2}, {1, 1}});
  x = net.relu("layer1.0.relu", x);
  x = net.flatten("flatten", x);
  net.linear("fc", x, 10);
  for_each_parameter(net, [&](const network_node&, const std::string&, Tensor& t) {
    fill_uniform(t, counter_rng(seed++), -0.5f, 0.5f);
  });
  return net;
}

/// Random values for an adapter's parameters (magnitudes in [0.5, 1.5)).
template <class A>
void randomise_adapter(A& a, const layer& base, std::uint64_t seed) {
  const auto p = a.parameters();
  for (std::size_t k = 0; k < p.size(); ++k) {
    const bool magnitude = A::kind == dora_adapter::kind && k == 0;
    fill_uniform(*p[k], counter_rng(seed + k), magnitude ? 0.5f : -1.0f, magnitude ? 1.5f : 1.0f);
  }
  a.refresh(base);
}

/// The two-layer network with an adapter of type A on each layer (ranks conv_rank and fc_rank,
/// alpha 4), parameters drawn from `seed`.
template <class A = dora_adapter>
struct adapted_pair {
  network net = two_layer_network();
  std::shared_ptr<adapted_layer<A>> conv, fc;

  explicit adapted_pair(std::uint64_t seed, std::int64_t conv_rank = 2, std::int64_t fc_rank = 4) {
    using config = std::remove_cvref_t<decltype(std::declval<A&>().config())>;
    config cc{}, fc_cfg{};
    cc.rank = conv_rank;
    cc.alpha = 4.0;
    fc_cfg.rank = fc_rank;
    fc_cfg.alpha = 4.0;
    conv = attach_adapter(net, "layer1.0.conv1", A(net.layer("layer1.0.conv1"), cc));
    fc = attach_adapter(net, "fc", A(net.layer("fc"), fc_cfg));
    randomise_adapter(conv->adapter(), *conv->base(), seed);
    randomise_adapter(fc->adapter(), *fc->base(), seed + 10);
    conv->parameters_changed();
    fc->parameters_changed();
  }
};

/// Whether two adapted pairs hold the same parameters bitwise.
template <class A>
bool same_parameters(const adapted_pair<A>& x, const adapted_pair<A>& y) {
  for (const auto& [a, b] : {std::pair{x.conv, y.conv}, std::pair{x.fc, y.fc}}) {
    const auto pa = a->parameters(), pb = b->parameters();
    for (std::size_t k = 0; k < pa.size(); ++k)
      if (!(*pa[k] == *pb[k])) return false;
  }
  return true;
}

}  // namespace rimc::test
