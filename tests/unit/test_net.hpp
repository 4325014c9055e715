#pragma once
// Network helpers for rimc's unit tests: filling parameters in place.

#include <rimc/nn/graph.hpp>

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

}  // namespace rimc::test
