#pragma once
/// \file
/// The layer geometry of a network (cost/layer_geometry.hpp) read from its
/// nodes without running it, and the cost comparison for a whole network.

#include <rimc/core/error.hpp>
#include <rimc/cost/calibration_cost.hpp>
#include <rimc/cost/layer_geometry.hpp>
#include <rimc/nn/graph.hpp>

#include <cstdint>
#include <vector>

namespace rimc {

/// Every conv2d and linear node of `net`, in network order (K = weight.numel() / O).
[[nodiscard]] inline std::vector<layer_geometry> layer_geometries(const graph& net) {
  std::vector<layer_geometry> out;
  for (const auto& n : net.nodes()) {
    if (!n.has_layer()) continue;
    const Tensor& w = n.params.at("weight");
    const std::int64_t O = w.dim(0);
    const std::int64_t P = n.kind == op_kind::conv2d ? n.shape[1] * n.shape[2] : 1;
    out.push_back({n.name, O, w.numel() / O, P});
  }
  return out;
}

/// Every recovery strategy for `net` with every conv2d / linear layer adapted.
[[nodiscard]] inline calibration_cost_report compare_calibration_costs(const graph& net, const device_config& dev,
                                                                       const cost_model& m,
                                                                       const calibration_workload& w) {
  const auto layers = layer_geometries(net);
  return compare_calibration_costs(layers, layers, dev, m, w);
}

}  // namespace rimc
