#pragma once
/// \file
/// Graph passes: folding batch norms into the convolutions they follow, and
/// fusing ReLUs into their producers (a oneDNN post-op). Both keep node names,
/// so weights, adapters and files still address the same nodes.

#include <rimc/core/error.hpp>
#include <rimc/nn/graph.hpp>

#include <cmath>
#include <cstdint>

namespace rimc {

/// Folds each batch norm into the conv2d it directly follows (when the conv
/// feeds nothing else): w' = w gamma / sqrt(var + eps), b' = (b - mean) gamma
/// / sqrt(var + eps) + beta. The batch-norm node becomes an identity marked
/// `folded`; the conv keeps its name. A conv already deployed or adapted is
/// an error: fold first (the crossbars must hold the folded weights).
inline void fold_batch_norm(graph& g) {
  auto& nodes = detail::graph_access::nodes(g);
  auto foldable = [&](const network_node& bn) {
    if (bn.kind != op_kind::batch_norm || bn.bypass) return false;
    const network_node& conv = nodes[static_cast<std::size_t>(bn.inputs[0])];
    return conv.kind == op_kind::conv2d && g.consumers(bn.inputs[0]) == 1 && !conv.conv.relu;
  };
  // Every conv is checked before any weight changes: an error leaves the network as it was.
  for (const auto& bn : nodes) {
    if (!foldable(bn)) continue;
    const network_node& conv = nodes[static_cast<std::size_t>(bn.inputs[0])];
    if (!conv.own_layer()) {
      throw value_error(detail::concat("network::fold_batch_norm: '", conv.name,
                                       "' already runs a deployed or adapted layer; fold batch norm before deploying"));
    }
  }
  for (auto& bn : nodes) {
    if (!foldable(bn)) continue;
    network_node& conv = nodes[static_cast<std::size_t>(bn.inputs[0])];
    const auto O = conv.shape[0];
    Tensor& w = conv.params["weight"];
    if (!conv.params.contains("bias")) conv.params["bias"] = Tensor(Shape{O});
    Tensor& b = conv.params["bias"];
    const auto K = w.numel() / O;
    for (std::int64_t o = 0; o < O; ++o) {
      const double scale =
          bn.params["weight"][o] / std::sqrt(static_cast<double>(bn.params["running_var"][o]) + bn.bn_eps);
      for (std::int64_t k = 0; k < K; ++k) w[o * K + k] = static_cast<float>(w[o * K + k] * scale);
      b[o] = static_cast<float>((b[o] - bn.params["running_mean"][o]) * scale + bn.params["bias"][o]);
    }
    bn.bypass = true;
    bn.folded = true;
    bn.params.clear();
    detail::graph_access::rebuild_layer(g, conv);
  }
}

/// Fuses each ReLU into the conv2d / linear / add it follows when that
/// producer feeds nothing else; the relu node becomes an identity. Only
/// digital layers take a fused ReLU (analog and adapted layers keep their
/// epilogue; the executor fuses ReLUs into adapted layers at run time).
inline void fuse_relu(graph& g) {
  auto& nodes = detail::graph_access::nodes(g);
  for (auto& r : nodes) {
    if (r.kind != op_kind::relu || r.bypass) continue;
    const int src = g.resolve(r.inputs[0]);
    network_node& p = nodes[static_cast<std::size_t>(src)];
    // Counted through folded batch norms: conv -> bn (folded) -> {relu, add} must keep the add's input linear.
    if (g.value_consumers(src) != 1 || (p.has_layer() && !p.own_layer())) continue;
    if (p.kind == op_kind::conv2d && !p.conv.relu) {
      p.conv.relu = true;
    } else if ((p.kind == op_kind::linear || p.kind == op_kind::add) && !p.relu_after) {
      p.relu_after = true;
    } else {
      continue;
    }
    if (p.has_layer()) detail::graph_access::rebuild_layer(g, p);
    r.bypass = true;
  }
}

}  // namespace rimc
