#pragma once
/// \file
/// rimc::layer_geometry: the shape of the work one crossbar layer does (O
/// outputs, K inputs, output positions per image), derived from a network
/// without running it, and the adapter sizes that follow from a DoRA rank.
/// The cost model (calibration_cost.hpp) works from these lists only.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/error.hpp>
#include <rimc/nn/network.hpp>

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

/// Every conv2d and linear node of `net`, in network order (K = weight.numel() / O).
[[nodiscard]] inline std::vector<layer_geometry> layer_geometries(const network& net) {
  std::vector<layer_geometry> out;
  for (const auto& n : net.nodes()) {
    if (n.kind != op_kind::conv2d && n.kind != op_kind::linear) continue;
    const auto it = n.params.find("weight");
    if (it == n.params.end()) {
      throw value_error(detail::concat("layer_geometries: node '", n.name, "' has no weight"));
    }
    const Tensor& w = it->second;
    const std::int64_t O = w.dim(0);
    const std::int64_t P = n.kind == op_kind::conv2d ? n.shape[1] * n.shape[2] : 1;
    out.push_back({n.name, O, w.numel() / O, P});
  }
  return out;
}

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

/// The layers a calibration adapted (those in `result.layers`), checking that
/// each layer's adapter size matches `rank` (O + r K + O r).
[[nodiscard]] inline std::vector<layer_geometry> calibrated_layers(const std::vector<layer_geometry>& all,
                                                                   const calibration_result& result,
                                                                   std::int64_t rank) {
  std::vector<std::string> names;
  for (const auto& l : result.layers) names.push_back(l.name);
  auto out = select_layers(all, names);
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto& g = out[i];
    const auto expected = g.out_features + rank * g.fan_in + g.out_features * rank;
    const auto got = result.layers[i].footprint.parameters;
    if (got != 0 && got != expected) {
      throw value_error(detail::concat("calibrated_layers: layer '", g.name, "' has ", got,
                                       " adapter parameters, rank ", rank, " gives ", expected));
    }
  }
  return out;
}

/// Adapter values of one layer at rank r: m O + A r K + B O r (as dora_adapter::parameter_count()).
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

/// Bits per adapter value as stored in SRAM (int8: the values, scales excluded), bits.
[[nodiscard]] constexpr int sram_value_bits(sram_precision precision) noexcept {
  switch (precision) {
    case sram_precision::fp32: return 32;
    case sram_precision::fp16: return 16;
    case sram_precision::int8: return 8;
  }
  return 32;
}

}  // namespace rimc
