#pragma once
/// \file
/// A network's parameters in safetensors files, by state_dict name
/// ("<node>.<param>"), as PyTorch exports them.

#include <rimc/core/error.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/graph.hpp>

#include <filesystem>
#include <map>
#include <string>

namespace rimc {

/// Loads every parameter of `g` from `file` by name. With `strict`, a missing
/// or extra key is an error; a shape mismatch always is. Nothing changes
/// unless everything loads; a layer deployed or adapted already is an error
/// (its crossbars would not see the new weights): load before deploying.
inline void load_parameters(graph& g, const safetensors_file& file, bool strict = true) {
  std::map<std::string, Tensor> staged;
  for (const auto& n : g.nodes()) {
    for (const auto& [p, t] : n.params) {
      const std::string key = n.name + "." + p;
      if (!file.contains(key)) {
        if (strict) throw io_error(detail::concat(file.source(), ": missing tensor '", key, "'"));
        continue;
      }
      Tensor v = file.tensor(key);
      if (!(v.shape() == t.shape())) {
        throw shape_error(detail::concat(file.source(), ": tensor '", key, "' has shape ", v.shape().to_string(),
                                         " but the network expects ", t.shape().to_string()));
      }
      if (n.has_layer() && !n.own_layer()) {
        throw value_error(detail::concat("network::load: node '", n.name,
                                         "' runs a deployed or adapted layer; load weights before deploying"));
      }
      staged.emplace(key, std::move(v));
    }
  }
  if (strict) {
    for (const auto& i : file.tensors()) {
      if (!staged.contains(i.name)) {
        throw io_error(detail::concat(file.source(), ": tensor '", i.name, "' matches no network parameter"));
      }
    }
  }
  for (auto& n : detail::graph_access::nodes(g)) {
    bool changed = false;
    for (auto& [p, t] : n.params) {
      auto it = staged.find(n.name + "." + p);
      if (it == staged.end()) continue;
      t = std::move(it->second);
      changed = true;
    }
    if (changed && n.has_layer()) detail::graph_access::rebuild_layer(g, n);
  }
}

/// Writes every parameter of `g` to `path` (atomically), with `metadata`.
inline void save_parameters(const graph& g, const std::filesystem::path& path,
                            const std::map<std::string, std::string>& metadata = {}) {
  std::map<std::string, Tensor> all;
  for (const auto& n : g.nodes())
    for (const auto& [p, t] : n.params) all.emplace(n.name + "." + p, t);
  save_safetensors(path, all, metadata);
}

}  // namespace rimc
