#pragma once
// Helpers the benchmark programs share.

#include <rimc/core/random.hpp>
#include <rimc/nn/network.hpp>

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

}  // namespace rimc::bench
