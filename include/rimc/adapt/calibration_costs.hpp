#pragma once
/// \file
/// The cost model (cost/) applied to a calibration that ran: which layers it
/// adapted, and every recovery strategy's cost for that network and run.

#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/error.hpp>
#include <rimc/cost/calibration_cost.hpp>
#include <rimc/cost/layer_geometry.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/network.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace rimc {

/// The layers a calibration adapted (those in `result.layers`), checking that
/// each layer's adapter size matches a DoRA adapter of `rank` (O + r K + O r).
template <adapter A>
[[nodiscard]] std::vector<layer_geometry> calibrated_layers(const std::vector<layer_geometry>& all,
                                                            const basic_calibration_result<A>& result,
                                                            std::int64_t rank) {
  std::vector<std::string> names;
  for (const auto& l : result.layers) names.push_back(l.name);
  auto out = select_layers(all, names);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto& g = out[i];
    const auto expected = adapter_parameters(g, rank);
    const auto got = result.layers[i].footprint.parameters;
    if (got != 0 && got != expected) {
      throw value_error(detail::concat("calibrated_layers: layer '", g.name, "' has ", got,
                                       " adapter parameters, rank ", rank, " gives ", expected));
    }
  }
  return out;
}

/// Every strategy for a calibration that ran on `net` (`cfg`, `result`) with `samples` images:
/// the adapted layers are those in `result`, rank and steps come from `cfg`.
template <adapter A>
[[nodiscard]] calibration_cost_report compare_calibration_costs(const network& net,
                                                                const basic_calibration_result<A>& result,
                                                                const calibration_config& cfg, std::int64_t samples,
                                                                const device_config& dev, const cost_model& m,
                                                                calibration_workload w = {}) {
  const auto layers = layer_geometries(net);
  w.rank = cfg.rank;
  w.steps_per_layer = cfg.steps;
  w.samples = samples;
  return compare_calibration_costs(layers, calibrated_layers(layers, result, cfg.rank), dev, m, w);
}

}  // namespace rimc
