#pragma once
/// \file
/// VeRA and VeRA+ adapters to and from files in rimc's own layout: one
/// safetensors file for any network of vera_adapter (linear and conv2d
/// layers, any number of drift levels). PEFT's VeRA format, which holds
/// one-level adapters on linear layers only, is adapt/peft_files.hpp's
/// (save_peft_vera); this header also has the checks both share.
///
/// The file holds the shared projections once, "vera_A" [r, max_in] and
/// "vera_B" [max_out, r], and per adapted layer `<layer>.<key>` for each
/// tensor of vera_adapter::tensors() ("fc.vera_lambda_d" for one level,
/// "fc.levels.2.vera_lambda_b" for several). Its safetensors metadata has
/// "format": "pt" and, under "rimc.vera_config", the JSON config:
///
///     {"format": "rimc.vera", "version": 1, "r": 4, "levels": 3,
///      "d_initial": 0.1, "projection_seed": 7,
///      "layers": [{"name": "conv1", "kind": "conv2d", "fan_in": 27,
///                  "out_features": 8}, ...]}
///
/// projection_seed is the seed the projections were drawn from (null when
/// they were loaded from tensors, or drawn from seed 0); the tensors are
/// what counts, the seed is kept so that attaching gives projections with
/// that seed() again. The layers are listed in network order with their
/// geometry (fan_in K: C kh kw for a conv2d).
///
/// save_vera replaces the file atomically. load_vera (into the VeRA
/// adapters a network has) and attach_vera (to a network without adapters)
/// check the whole file against the network first: a failure leaves the
/// adapters, or the network, as they were.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/graph.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// The name in the "format" field of rimc's VeRA file config.
inline constexpr std::string_view vera_file_format = "rimc.vera";
/// The version of rimc's VeRA file layout that save_vera writes (and the newest load_vera reads).
inline constexpr int vera_file_version = 1;
/// The safetensors metadata key of the JSON config.
inline constexpr std::string_view vera_config_key = "rimc.vera_config";

/// One adapted layer in a VeRA file's config.
struct vera_file_layer {
  std::string name;              ///< the network node
  bool conv = false;             ///< a conv2d (else a linear layer)
  std::int64_t fan_in = 0;       ///< K: C kh kw for a conv2d, in_features for a linear layer
  std::int64_t out_features = 0; ///< O
};

/// The config of a rimc VeRA file (see the file comment).
struct vera_file_config {
  int version = vera_file_version;  ///< the layout's version
  std::int64_t r = 0;               ///< the projections' rank
  int levels = 1;                   ///< parameter sets per layer (1: plain VeRA)
  double d_initial = 0.1;           ///< λ_d's initial value
  /// The seed the projections were drawn from (none when loaded from tensors).
  std::optional<std::uint64_t> projection_seed;
  std::vector<vera_file_layer> layers;  ///< in network order
};

namespace detail {

/// A VeRA-adapted node: its name and layer.
using vera_node = std::pair<std::string, std::shared_ptr<adapted_layer<vera_adapter>>>;

/// The VeRA-adapted nodes of `net`, in network order. A value_error
/// (starting with `who`) when there are none or a node has an adapter of
/// another kind.
[[nodiscard]] inline std::vector<vera_node> vera_nodes(const graph& net, std::string_view who) {
  std::vector<vera_node> out;
  for (const auto& n : net.nodes()) {
    const auto l = std::dynamic_pointer_cast<adapted_layer_base>(n.layer);
    if (!l) continue;
    auto v = std::dynamic_pointer_cast<adapted_layer<vera_adapter>>(l);
    if (!v) {
      throw value_error(concat(who, ": node '", n.name, "' has a ", l->adapter_kind(),
                               " adapter; VeRA files hold VeRA adapters only"));
    }
    out.emplace_back(n.name, std::move(v));
  }
  if (out.empty()) throw value_error(concat(who, ": the network has no VeRA adapters"));
  return out;
}

/// What one VeRA file holds once for all its layers.
struct vera_shared {
  std::shared_ptr<const vera_projections> projections;
  int levels = 1;
  double d_initial = 0.1;
};

/// Whether two projection pairs are the same (one object, or equal matrices).
[[nodiscard]] inline bool same_projections(const vera_projections& a, const vera_projections& b) {
  return &a == &b || (a.A() == b.A() && a.B() == b.B());
}

/// The projections, levels and d_initial every adapter of `nodes` shares; a
/// value_error naming the first layer that differs from the first one.
[[nodiscard]] inline vera_shared shared_vera_settings(const std::vector<vera_node>& nodes, std::string_view who) {
  const auto& [first_name, first] = nodes.front();
  const vera_config& f = first->adapter().config();
  for (const auto& [name, l] : nodes) {
    const vera_config& c = l->adapter().config();
    if (!same_projections(*c.projections, *f.projections)) {
      throw value_error(concat(who, ": layer '", name, "' uses other projections than layer '", first_name,
                               "'; a VeRA file holds one shared pair (make every adapter with one vera_projections)"));
    }
    if (c.levels != f.levels || c.d_initial != f.d_initial) {
      throw value_error(concat(who, ": layer '", name, "' has levels ", c.levels, " and d_initial ", c.d_initial,
                               ", layer '", first_name, "' ", f.levels, " and ", f.d_initial,
                               "; a VeRA file holds one setting for all layers"));
    }
  }
  return {f.projections, f.levels, f.d_initial};
}

/// Checks a file's projections `A` [r, >= K] and `B` [>= O, r] (keys
/// `a_key` and `b_key` of file `file_source`) against what layer `name`'s
/// adapter uses, its blocks A[:, :K] and B[:O, :]: a shape_error when they
/// are too small, a value_error when the blocks differ (the adapter's λ
/// vectors would then scale other projections). `source` names the file in
/// the value_error.
inline void check_projection_blocks(const Tensor& A, const Tensor& B, const std::string& a_key,
                                    const std::string& b_key, const std::string& file_source,
                                    const std::string& name, const vera_adapter& a, const std::string& source) {
  const std::int64_t r = a.rank(), K = a.fan_in(), O = a.out_features();
  if (A.rank() != 2 || A.dim(0) != r || A.dim(1) < K) {
    throw shape_error(concat(file_source, ": tensor '", a_key, "' has shape ", A.shape().to_string(), " but layer '",
                             name, "' needs [", r, ", max_in] with max_in >= ", K));
  }
  if (B.rank() != 2 || B.dim(1) != r || B.dim(0) < O) {
    throw shape_error(concat(file_source, ": tensor '", b_key, "' has shape ", B.shape().to_string(), " but layer '",
                             name, "' needs [max_out, ", r, "] with max_out >= ", O));
  }
  const vera_projections& p = *a.config().projections;
  const bool same = A.matrix(r, A.dim(1)).leftCols(K) == p.A().matrix(r, p.max_in()).leftCols(K) &&
                    B.matrix(B.dim(0), r).topRows(O) == p.B().matrix(p.max_out(), r).topRows(O);
  if (!same) {
    throw value_error(concat(source, ": layer '", name, "' uses other projections than the file's (", a_key, "[:, :",
                             K, "] or ", b_key, "[:", O, ", :] differ); attach the file to a network without "
                             "adapters to use its projections"));
  }
}

/// Adapter `a`'s tensors read from `file` under keys `prefix` + name (as
/// vera_adapter::tensors() names them): each present and floating point
/// (io_error), of the adapter's shape (shape_error) and finite (value_error).
[[nodiscard]] inline std::map<std::string, Tensor> staged_vera_tensors(const safetensors_file& file,
                                                                       const std::string& prefix,
                                                                       const vera_adapter& a) {
  std::map<std::string, Tensor> out;
  for (const auto& [what, want] : a.tensors()) {
    const std::string key = prefix + what;
    Tensor t = adapter_file_tensor(file, key);
    if (!(t.shape() == want.shape())) {
      throw shape_error(concat(file.source(), ": tensor '", key, "' has shape ", t.shape().to_string(),
                               " but the adapter expects ", want.shape().to_string()));
    }
    out.emplace(what, std::move(t));
  }
  return out;
}

/// Loads every staged set into its layer (all checked beforehand).
inline void commit_vera_loads(std::vector<std::pair<std::shared_ptr<adapted_layer<vera_adapter>>,
                                                    std::map<std::string, Tensor>>>& staged) {
  for (auto& [l, tensors] : staged) {
    l->adapter().load(*l->base(), tensors);
    l->parameters_changed();
  }
}

/// Projections from a file's tensors; with `seed`, the ones drawn from it
/// when they reproduce the tensors bitwise (so seed() survives a round trip).
[[nodiscard]] inline std::shared_ptr<const vera_projections> projections_from(const Tensor& A, const Tensor& B,
                                                                              std::optional<std::uint64_t> seed) {
  auto loaded = std::make_shared<const vera_projections>(A, B);
  if (seed) {
    auto drawn =
        std::make_shared<const vera_projections>(loaded->rank(), loaded->max_in(), loaded->max_out(), *seed);
    if (same_projections(*drawn, *loaded)) return drawn;
  }
  return loaded;
}

}  // namespace detail

/// Parses and validates the JSON text of a VeRA file config (`source` names
/// the file in errors): a missing field, or one of the wrong type or range,
/// is an io_error naming the field and the value.
[[nodiscard]] inline vera_file_config parse_vera_config(std::string_view text, const std::string& source = "<memory>") {
  using json = nlohmann::ordered_json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw io_error(detail::concat(source, ": '", vera_config_key, "' is not valid JSON: ", e.what()));
  }
  auto fail = [&](const std::string& what) {
    return io_error(detail::concat(source, ": '", vera_config_key, "' ", what));
  };
  if (!j.is_object()) throw fail("is not a JSON object");
  auto field = [&](const json& o, const char* name, const std::string& where) -> const json& {
    const auto it = o.find(name);
    if (it == o.end()) throw fail(detail::concat("has no '", name, "'", where));
    return *it;
  };
  auto integer = [&](const json& v, const std::string& what, std::int64_t lo, std::int64_t hi) {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT64_MAX}) ||
        v.get<std::int64_t>() < lo || v.get<std::int64_t>() > hi) {
      throw fail(detail::concat(what, " must be an integer in [", lo, ", ", hi, "], got ", v.dump()));
    }
    return v.get<std::int64_t>();
  };
  constexpr std::int64_t big = INT64_MAX;
  const json& format = field(j, "format", "");
  if (format != vera_file_format) {
    throw fail(detail::concat("'format' must be \"", vera_file_format, "\", got ", format.dump()));
  }
  vera_file_config c;
  const std::int64_t version = integer(field(j, "version", ""), "'version'", 1, big);
  if (version > vera_file_version) {
    throw fail(detail::concat("has version ", version, "; this rimc reads versions up to ", vera_file_version));
  }
  c.version = static_cast<int>(version);
  c.r = integer(field(j, "r", ""), "'r'", 1, big);
  c.levels = static_cast<int>(integer(field(j, "levels", ""), "'levels'", 1, vera_adapter::max_levels));
  const json& d = field(j, "d_initial", "");
  if (!d.is_number() || !std::isfinite(d.get<double>())) {
    throw fail(detail::concat("'d_initial' must be a finite number, got ", d.dump()));
  }
  c.d_initial = d.get<double>();
  if (const auto it = j.find("projection_seed"); it != j.end() && !it->is_null()) {
    if (!it->is_number_unsigned()) {
      throw fail(detail::concat("'projection_seed' must be a non-negative integer or null, got ", it->dump()));
    }
    c.projection_seed = it->get<std::uint64_t>();
  }
  const json& layers = field(j, "layers", "");
  if (!layers.is_array() || layers.empty()) {
    throw fail(detail::concat("'layers' must be a non-empty list, got ", layers.dump()));
  }
  std::set<std::string> seen;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const json& l = layers[i];
    const std::string where = detail::concat(" in layer ", i);
    if (!l.is_object()) throw fail(detail::concat("layer ", i, " must be an object, got ", l.dump()));
    const json& name = field(l, "name", where);
    if (!name.is_string() || name.get<std::string>().empty()) {
      throw fail(detail::concat("layer ", i, ": 'name' must be a non-empty string, got ", name.dump()));
    }
    vera_file_layer fl;
    fl.name = name.get<std::string>();
    if (!seen.insert(fl.name).second) throw fail(detail::concat("lists layer '", fl.name, "' twice"));
    const json& kind = field(l, "kind", where);
    if (kind != "conv2d" && kind != "linear") {
      throw fail(detail::concat("layer '", fl.name, "': 'kind' must be \"conv2d\" or \"linear\", got ", kind.dump()));
    }
    fl.conv = kind == "conv2d";
    fl.fan_in = integer(field(l, "fan_in", where), detail::concat("layer '", fl.name, "': 'fan_in'"), 1, big);
    fl.out_features =
        integer(field(l, "out_features", where), detail::concat("layer '", fl.name, "': 'out_features'"), 1, big);
    c.layers.push_back(std::move(fl));
  }
  return c;
}

/// The config of VeRA file `file` (from its metadata); an io_error when it
/// has none (not a rimc VeRA file) or a bad one.
[[nodiscard]] inline vera_file_config read_vera_config(const safetensors_file& file) {
  const auto it = file.metadata().find(std::string(vera_config_key));
  if (it == file.metadata().end()) {
    throw io_error(detail::concat(file.source(), ": no '", vera_config_key,
                                  "' metadata: not a rimc VeRA file (PEFT adapter directories load with "
                                  "load_peft_adapter)"));
  }
  return parse_vera_config(it->second, file.source());
}

/// Writes the VeRA adapters attached to `net` (linear and conv2d, any number
/// of levels; all with one pair of projections, one level count and one
/// d_initial) to `path` in rimc's VeRA layout (see the file comment),
/// atomically: a failure leaves the previous file. The parent folder is
/// created if missing.
inline void save_vera(const std::filesystem::path& path, const graph& net) {
  const auto nodes = detail::vera_nodes(net, "save_vera");
  const auto shared = detail::shared_vera_settings(nodes, "save_vera");
  const vera_projections& p = *shared.projections;
  std::map<std::string, Tensor> tensors{{"vera_A", p.A()}, {"vera_B", p.B()}};
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& [name, l] : nodes) {
    const vera_adapter& a = l->adapter();
    for (const auto& [what, t] : a.tensors()) tensors.emplace(name + "." + what, t);
    layers.push_back({{"name", name},
                      {"kind", a.is_conv() ? "conv2d" : "linear"},
                      {"fan_in", a.fan_in()},
                      {"out_features", a.out_features()}});
  }
  const nlohmann::ordered_json cfg = {
      {"format", vera_file_format},
      {"version", vera_file_version},
      {"r", p.rank()},
      {"levels", shared.levels},
      {"d_initial", shared.d_initial},
      {"projection_seed", p.seed() != 0 ? nlohmann::ordered_json(p.seed()) : nlohmann::ordered_json(nullptr)},
      {"layers", layers},
  };
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {std::string(vera_config_key), cfg.dump()}};
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  save_safetensors(path, tensors, metadata);
}

/// Loads a parsed VeRA file into the VeRA adapters attached to `net`: the
/// file must hold exactly the network's VeRA-adapted layers, each with the
/// adapter's kind, geometry, rank r and level count, the projections the
/// adapter uses (vera_A[:, :K] and vera_B[:O, :] bitwise), every vector
/// present with the adapter's shape and finite values, and no other tensor.
/// Nothing changes unless every layer loads; the selected levels stay.
inline void load_vera(const safetensors_file& file, graph& net) {
  const vera_file_config cfg = read_vera_config(file);
  const std::string& source = file.source();
  const auto nodes = detail::vera_nodes(net, source);
  std::map<std::string, const vera_file_layer*> listed;
  for (const auto& l : cfg.layers) listed.emplace(l.name, &l);
  for (const auto& l : cfg.layers) {
    if (std::none_of(nodes.begin(), nodes.end(), [&](const auto& n) { return n.first == l.name; })) {
      throw value_error(
          detail::concat(source, ": the file holds layer '", l.name, "' but the network has no VeRA adapter there"));
    }
  }
  const Tensor A = adapter_file_tensor(file, "vera_A"), B = adapter_file_tensor(file, "vera_B");
  std::set<std::string> expected{"vera_A", "vera_B"};
  std::vector<std::pair<std::shared_ptr<adapted_layer<vera_adapter>>, std::map<std::string, Tensor>>> staged;
  for (const auto& [name, l] : nodes) {
    const auto it = listed.find(name);
    if (it == listed.end()) {
      throw value_error(detail::concat(source, ": node '", name, "' has a VeRA adapter but the file holds no layer '",
                                       name, "'"));
    }
    const vera_file_layer& fl = *it->second;
    const vera_adapter& a = l->adapter();
    if (fl.conv != a.is_conv() || fl.fan_in != a.fan_in() || fl.out_features != a.out_features()) {
      throw value_error(detail::concat(source, ": layer '", name, "' is a ", fl.conv ? "conv2d" : "linear",
                                       " layer with fan_in ", fl.fan_in, " and out_features ", fl.out_features,
                                       " in the file but a ", a.is_conv() ? "conv2d" : "linear", " layer with ",
                                       a.fan_in(), " and ", a.out_features(), " in the network"));
    }
    if (cfg.r != a.rank() || cfg.levels != a.levels()) {
      throw value_error(detail::concat(source, ": the file has r ", cfg.r, " and levels ", cfg.levels, " but layer '",
                                       name, "' has a VeRA adapter of rank ", a.rank(), " with ", a.levels(),
                                       " levels"));
    }
    detail::check_projection_blocks(A, B, "vera_A", "vera_B", source, name, a, source);
    staged.emplace_back(l, detail::staged_vera_tensors(file, name + ".", a));
    for (const auto& [what, t] : a.tensors()) expected.insert(name + "." + what);
  }
  for (const auto& info : file.tensors()) {
    if (!expected.contains(info.name)) {
      throw io_error(detail::concat(source, ": unexpected tensor '", info.name,
                                    "'; a VeRA file holds vera_A, vera_B and the vectors of the layers it lists"));
    }
  }
  detail::commit_vera_loads(staged);
}

/// Loads the VeRA file `path` into the VeRA adapters attached to `net`, as the overload above.
inline void load_vera(const std::filesystem::path& path, graph& net) { load_vera(safetensors_file::load(path), net); }

/// Attaches the VeRA file `path` to `net`: every layer the file lists gets a
/// VeRA adapter with the file's projections (one vera_projections shared by
/// all), level count and d_initial, loaded from the file (level 0 selected).
/// The nodes must exist, be of the listed kind and geometry and have no
/// adapter; nothing is attached unless every layer loads. Returns the
/// adapted node names, in network order.
inline std::vector<std::string> attach_vera(graph& net, const std::filesystem::path& path) {
  const auto file = safetensors_file::load(path);
  const vera_file_config cfg = read_vera_config(file);
  const std::string& source = file.source();
  for (const auto& l : cfg.layers) {
    if (!net.contains(l.name)) {
      throw value_error(
          detail::concat(source, ": the file holds layer '", l.name, "', which the network does not have"));
    }
  }
  const Tensor A = adapter_file_tensor(file, "vera_A"), B = adapter_file_tensor(file, "vera_B");
  if (A.rank() != 2 || A.dim(0) != cfg.r || B.rank() != 2 || B.dim(1) != cfg.r) {
    throw shape_error(detail::concat(source, ": the file has r ", cfg.r, " but its tensors 'vera_A' and 'vera_B' have "
                                     "shapes ", A.shape().to_string(), " and ", B.shape().to_string(),
                                     "; they must be [r, max_in] and [max_out, r]"));
  }
  std::shared_ptr<const vera_projections> projections;
  try {
    projections = detail::projections_from(A, B, cfg.projection_seed);
  } catch (const error&) {
    detail::rethrow_in(source);
  }
  std::set<std::string> expected{"vera_A", "vera_B"};
  std::vector<std::string> names;
  std::vector<std::shared_ptr<layer>> made;
  for (const auto& n : net.nodes()) {
    const auto it = std::find_if(cfg.layers.begin(), cfg.layers.end(), [&](const auto& l) { return l.name == n.name; });
    if (it == cfg.layers.end()) continue;
    const bool conv = n.kind == op_kind::conv2d;
    if (!n.has_layer() || conv != it->conv) {
      throw value_error(detail::concat(source, ": the file holds a ", it->conv ? "conv2d" : "linear", " layer '",
                                       n.name, "' but the network's node is a ", to_string(n.kind)));
    }
    detail::check_adaptable(n, source);
    try {
      vera_adapter a(*n.layer, {.projections = projections, .levels = cfg.levels, .d_initial = cfg.d_initial});
      if (a.fan_in() != it->fan_in || a.out_features() != it->out_features) {
        throw value_error(detail::concat("the file has fan_in ", it->fan_in, " and out_features ", it->out_features,
                                         ", the network's layer ", a.fan_in(), " and ", a.out_features()));
      }
      a.load(*n.layer, detail::staged_vera_tensors(file, n.name + ".", a));
      for (const auto& [what, t] : a.tensors()) expected.insert(n.name + "." + what);
      made.push_back(std::make_shared<adapted_layer<vera_adapter>>(n.layer, std::move(a)));
    } catch (const error&) {
      detail::rethrow_in(detail::concat("attach_vera: layer '", n.name, "'"));
    }
    names.push_back(n.name);
  }
  for (const auto& info : file.tensors()) {
    if (!expected.contains(info.name)) {
      throw io_error(detail::concat(source, ": unexpected tensor '", info.name,
                                    "'; a VeRA file holds vera_A, vera_B and the vectors of the layers it lists"));
    }
  }
  for (std::size_t i = 0; i < names.size(); ++i) net.set_layer(names[i], made[i]);
  return names;
}

}  // namespace rimc
