#pragma once
/// \file
/// rimc::layer_geometry: the shape of the work one crossbar layer does (O
/// outputs, K inputs, output positions per image) and the adapter sizes that
/// follow from a DoRA rank. The cost model (calibration_cost.hpp) works from
/// these lists only; nn/geometry.hpp derives them from a network.

#include <rimc/core/error.hpp>
#include <rimc/cost/sram.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace rimc {

/// One conv2d or linear layer mapped on crossbars, as a matrix [O, K] applied at `positions` places per image.
struct layer_geometry {
  std::string name;            ///< the network node's name
  std::int64_t out_features;   ///< O: output channels / features
  std::int64_t fan_in;         ///< K: inputs per output (C kh kw for a conv)
  std::int64_t positions = 1;  ///< output positions per image: OH OW for a conv, 1 for linear

  /// Weights on the crossbars: O K.
  [[nodiscard]] std::int64_t weights() const noexcept { return out_features * fan_in; }
  /// Crossbar MACs per image: O K positions.
  [[nodiscard]] std::int64_t macs_per_image() const noexcept { return weights() * positions; }

  /// Throws value_error unless O, K and positions are >= 1.
  void validate() const {
    if (out_features < 1 || fan_in < 1 || positions < 1) {
      throw value_error(detail::concat("layer_geometry '", name, "': O, K and positions must be >= 1, got ",
                                       out_features, ", ", fan_in, ", ", positions));
    }
  }
};

/// The layers of `all` named in `names`, in the order of `names` (value_error for an unknown name).
[[nodiscard]] inline std::vector<layer_geometry> select_layers(const std::vector<layer_geometry>& all,
                                                               const std::vector<std::string>& names) {
  std::vector<layer_geometry> out;
  for (const auto& name : names) {
    const auto it = std::find_if(all.begin(), all.end(), [&](const layer_geometry& g) { return g.name == name; });
    if (it == all.end()) throw value_error(detail::concat("select_layers: no conv2d/linear layer named '", name, "'"));
    out.push_back(*it);
  }
  return out;
}

/// Adapter values of one DoRA adapter at rank r: m O + A r K + B O r (as dora_adapter::parameter_count()).
[[nodiscard]] inline std::int64_t adapter_parameters(const layer_geometry& g, std::int64_t rank) noexcept {
  return g.out_features + rank * g.fan_in + g.out_features * rank;
}

/// SRAM bits of one layer's adapter at rank r and `precision` (as dora_adapter::footprint(), times 8).
[[nodiscard]] inline std::int64_t adapter_sram_bits(const layer_geometry& g, std::int64_t rank,
                                                    sram_precision precision) noexcept {
  const auto O = g.out_features, K = g.fan_in, r = rank;
  switch (precision) {
    case sram_precision::fp32: return 32 * (O + r * K + O * r);
    case sram_precision::fp16: return 16 * (O + r * K + O * r);
    case sram_precision::int8: return 8 * ((r * K + O * r) + 2 * (O + r + O));
  }
  return 0;
}

}  // namespace rimc
