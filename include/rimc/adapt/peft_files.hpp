#pragma once
/// \file
/// Adapters to and from Hugging Face PEFT files (io/peft.hpp has the format):
/// save the adapters attached to a network, load a saved pair into them, or
/// attach a saved adapter directory to a network that has none (DoRA when the
/// config says use_dora, else LoRA; VeRA when its peft_type is "VERA").
/// Every check happens before anything changes: a failed load leaves the
/// adapters, and a failed attach the network, as they were.
///
/// VeRA (save_peft_vera, load_peft_vera, attach_peft_vera; save_peft_adapter,
/// load_peft_adapter and attach_peft_adapter dispatch to them): PEFT's VeRA
/// adapts nn.Linear modules with one pair of vectors each, so only one-level
/// VeRA adapters on linear layers go into its format. VeRA+ (several drift
/// levels) and VeRA on conv2d layers are refused with the layer named: rimc's
/// own VeRA layout (adapt/vera_files.hpp, save_vera) holds them. The file's
/// projections are the top-left blocks of the network's,
/// vera_A[:, :max_in] and vera_B[:max_out, :] with max_in and max_out the
/// largest in_features and out_features of the adapted layers: the shapes
/// PEFT's VeraModel._find_dim gives them, and all that the layers use.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/adapt/vera_files.hpp>
#include <rimc/core/error.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/graph.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace rimc {

namespace detail {

/// The PEFT settings of an adapter: its rank, alpha and rsLoRA flag (DoRA and LoRA).
template <class A>
concept peft_adapter = low_rank_adapter<A> && requires(const A& a) {
  { a.config().alpha } -> std::convertible_to<double>;
  { a.config().use_rslora } -> std::convertible_to<bool>;
};

/// The file-level checks of one module of `cfg`/`file` against adapter `a`:
/// rank and alpha as the config resolves them, and every tensor present,
/// floating point and of the adapter's shape.
template <peft_adapter A>
[[nodiscard]] std::map<std::string, Tensor> staged_tensors(const peft_config& cfg, const safetensors_file& file,
                                                           const std::string& module, const A& a,
                                                           const std::string& source) {
  if (cfg.use_dora != (A::kind == dora_adapter::kind)) {
    throw value_error(detail::concat(source, ": adapter_config.json says use_dora ", cfg.use_dora, " but module '",
                                     module, "' has a ", A::kind, " adapter"));
  }
  if (cfg.rank_of(module) != a.rank()) {
    throw value_error(detail::concat(source, ": module '", module, "' has rank ", cfg.rank_of(module),
                                     " in adapter_config.json but the adapter has rank ", a.rank()));
  }
  if (cfg.alpha_of(module) != a.config().alpha || cfg.use_rslora != a.config().use_rslora) {
    throw value_error(detail::concat(source, ": module '", module, "' has lora_alpha ", cfg.alpha_of(module),
                                     " and use_rslora ", cfg.use_rslora, " in adapter_config.json but the adapter has ",
                                     a.config().alpha, " and ", a.config().use_rslora));
  }
  std::vector<std::string> names;
  std::map<std::string, Shape> shapes;
  for (const auto& [what, t] : a.tensors()) {
    names.push_back(what);
    shapes.emplace(what, t.shape());
  }
  auto tensors = peft_module_tensors(file, module, names);
  for (auto& [what, t] : tensors) {
    const std::string key = peft_tensor_key(module, what);
    if (!(t.shape() == shapes.at(what))) {
      throw shape_error(detail::concat(file.source(), ": tensor '", key, "' has shape ", t.shape().to_string(),
                                       " but the adapter expects ", shapes.at(what).to_string()));
    }
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      if (!std::isfinite(t[i])) {
        throw value_error(detail::concat(file.source(), ": tensor '", key, "' element ", i, " is ", t[i]));
      }
    }
  }
  return tensors;
}

/// One adapted layer of a network, as PEFT files see it.
[[nodiscard]] inline peft_module module_of(const std::string& name, const adapted_layer_base& l) {
  peft_module m;
  m.name = name;
  m.tensors = l.adapter_tensors();
  if (auto d = dynamic_cast<const adapted_layer<dora_adapter>*>(&l)) {
    m.rank = d->adapter().rank();
    m.alpha = d->adapter().config().alpha;
  } else if (auto lo = dynamic_cast<const adapted_layer<lora_adapter>*>(&l)) {
    m.rank = lo->adapter().rank();
    m.alpha = lo->adapter().config().alpha;
  } else {
    throw value_error(detail::concat("save_peft_adapter: module '", name, "' has a ", l.adapter_kind(),
                                     " adapter; PEFT files hold DoRA and LoRA adapters"));
  }
  return m;
}

/// use_rslora and the norm mode of an adapted layer (DoRA / LoRA).
[[nodiscard]] inline std::pair<bool, std::string> peft_flags(const adapted_layer_base& l) {
  if (auto d = dynamic_cast<const adapted_layer<dora_adapter>*>(&l)) {
    return {d->adapter().config().use_rslora, d->adapter().config().norm == norm_mode::exact ? "exact" : "detached"};
  }
  if (auto lo = dynamic_cast<const adapted_layer<lora_adapter>*>(&l)) return {lo->adapter().config().use_rslora, ""};
  return {false, ""};
}

}  // namespace detail

namespace detail {

/// The file's projections vera_A [r, max_in] and vera_B [max_out, r] under
/// PEFT's keys, r the config's (a shape_error otherwise).
[[nodiscard]] inline std::pair<Tensor, Tensor> peft_vera_projections(const peft_vera_config& cfg,
                                                                     const safetensors_file& file) {
  Tensor A = adapter_file_tensor(file, std::string(peft_vera_A_key));
  Tensor B = adapter_file_tensor(file, std::string(peft_vera_B_key));
  if (A.rank() != 2 || A.dim(0) != cfg.r || B.rank() != 2 || B.dim(1) != cfg.r) {
    throw shape_error(concat(file.source(), ": adapter_config.json has r ", cfg.r, " but '", peft_vera_A_key,
                             "' and '", peft_vera_B_key, "' have shapes ", A.shape().to_string(), " and ",
                             B.shape().to_string(), "; they must be [r, max_in] and [max_out, r]"));
  }
  return {std::move(A), std::move(B)};
}

/// Refuses what PEFT's VeRA format cannot hold: an adapter on a conv2d layer
/// or with several levels (the message starts with `who` and names the layer).
inline void check_peft_vera_layer(const std::string& name, const vera_adapter& a, const std::string& who) {
  if (a.is_conv()) {
    throw value_error(concat(who, ": layer '", name, "' has a VeRA adapter on a conv2d layer; PEFT's VeRA adapts ",
                             "linear layers only: save it in rimc's VeRA format (save_vera)"));
  }
  if (a.levels() != 1) {
    throw value_error(concat(who, ": layer '", name, "' has a VeRA+ adapter with ", a.levels(), " levels; PEFT's ",
                             "VeRA holds one pair of vectors per module: save it in rimc's VeRA format (save_vera)"));
  }
}

/// save_peft_vera, its errors starting with `who`.
inline void save_peft_vera_as(const std::filesystem::path& dir, const graph& net,
                              const std::string& base_model_name_or_path, const std::string& who) {
  const auto nodes = vera_nodes(net, who);
  for (const auto& [name, l] : nodes) check_peft_vera_layer(name, l->adapter(), who);
  const auto shared = shared_vera_settings(nodes, who);
  const vera_projections& p = *shared.projections;
  std::int64_t max_in = 0, max_out = 0;
  peft_vera_files files;
  for (const auto& [name, l] : nodes) {
    max_in = std::max(max_in, l->adapter().fan_in());
    max_out = std::max(max_out, l->adapter().out_features());
    files.modules.push_back({name, l->adapter().tensors()});
  }
  const auto r = p.rank();
  files.vera_A = Tensor(Shape{r, max_in});
  files.vera_A.matrix(r, max_in) = p.A().matrix(r, p.max_in()).leftCols(max_in);
  files.vera_B = Tensor(Shape{max_out, r});
  files.vera_B.matrix(max_out, r) = p.B().matrix(p.max_out(), r).topRows(max_out);
  files.d_initial = shared.d_initial;
  files.base_model_name_or_path = base_model_name_or_path;
  files.metadata["rimc.adapter"] = std::string(vera_adapter::kind);
  save_peft_vera_files(dir, files);
}

/// attach_peft_vera, its errors starting with `who`.
inline std::vector<std::string> attach_peft_vera_as(graph& net, const std::filesystem::path& dir,
                                                    const std::string& who) {
  const peft_vera_config cfg = read_peft_vera_config(dir);
  const auto file = safetensors_file::load(dir / "adapter_model.safetensors");
  const std::string source = dir.string();
  const auto [A, B] = peft_vera_projections(cfg, file);
  std::shared_ptr<const vera_projections> projections;
  try {
    projections = std::make_shared<const vera_projections>(A, B);
  } catch (const error&) {
    rethrow_in(source);
  }
  std::vector<std::string> names;
  std::vector<std::shared_ptr<layer>> made;
  for (const auto& n : net.nodes()) {
    if (!cfg.targets(n.name)) continue;
    if (n.kind != op_kind::linear) {
      throw value_error(concat(source, ": adapter_config.json targets '", n.name, "', a ", to_string(n.kind),
                               "; PEFT's VeRA adapts linear layers only"));
    }
    check_adaptable(n, source);
    try {
      vera_adapter a(*n.layer, {.projections = projections, .levels = 1, .d_initial = cfg.d_initial});
      a.load(*n.layer, staged_vera_tensors(file, peft_tensor_key(n.name, ""), a));
      made.push_back(std::make_shared<adapted_layer<vera_adapter>>(n.layer, std::move(a)));
    } catch (const error&) {
      rethrow_in(concat(who, ": module '", n.name, "'"));
    }
    names.push_back(n.name);
  }
  if (names.empty()) throw value_error(concat(source, ": adapter_config.json targets no linear node of the network"));
  for (std::size_t i = 0; i < names.size(); ++i) net.set_layer(names[i], made[i]);
  return names;
}

}  // namespace detail

/// Writes the VeRA adapters attached to `net` in PEFT's VeRA format
/// (peft_type "VERA", the projections saved) into `dir`, atomically: a
/// failure leaves the previous pair. Every adapter must be a one-level VeRA
/// adapter on a linear layer, all with one pair of projections and one
/// d_initial; VeRA+ and conv2d layers are refused (save_vera holds them).
inline void save_peft_vera(const std::filesystem::path& dir, const graph& net,
                           const std::string& base_model_name_or_path = "") {
  detail::save_peft_vera_as(dir, net, base_model_name_or_path, "save_peft_vera");
}

/// Loads a parsed PEFT VeRA config and weights file into the VeRA adapters
/// attached to `net` (every VeRA-adapted node is a module of the file; all
/// one-level, on linear layers): r must be the adapters' rank, the file's
/// projections the ones the adapters use (vera_A[:, :K] and vera_B[:O, :]
/// bitwise) and every vector present with the adapter's shape and finite
/// values. Nothing changes unless every module loads. `source` names the
/// pair in errors.
inline void load_peft_vera(const peft_vera_config& cfg, const safetensors_file& file, graph& net,
                           const std::string& source = "<memory>") {
  const auto nodes = detail::vera_nodes(net, source);
  for (const auto& [name, l] : nodes) {
    detail::check_peft_vera_layer(name, l->adapter(), source);
    if (cfg.r != l->adapter().rank()) {
      throw value_error(detail::concat(source, ": adapter_config.json has r ", cfg.r, " but module '", name,
                                       "' has a VeRA adapter of rank ", l->adapter().rank()));
    }
  }
  const auto [A, B] = detail::peft_vera_projections(cfg, file);
  std::vector<std::pair<std::shared_ptr<adapted_layer<vera_adapter>>, std::map<std::string, Tensor>>> staged;
  for (const auto& [name, l] : nodes) {
    detail::check_projection_blocks(A, B, std::string(peft_vera_A_key), std::string(peft_vera_B_key), file.source(),
                                    name, l->adapter(), source);
    staged.emplace_back(l, detail::staged_vera_tensors(file, peft_tensor_key(name, ""), l->adapter()));
  }
  detail::commit_vera_loads(staged);
}

/// Loads the PEFT VeRA adapter in `dir` into the VeRA adapters attached to `net`, as the overload above.
inline void load_peft_vera(const std::filesystem::path& dir, graph& net) {
  load_peft_vera(read_peft_vera_config(dir), safetensors_file::load(dir / "adapter_model.safetensors"), net,
                 dir.string());
}

/// Attaches the PEFT VeRA adapter saved in `dir` to `net`: every linear node
/// the config targets (by PEFT's rules) gets a one-level VeRA adapter with
/// the file's projections (one vera_projections shared by all, seed 0) and
/// d_initial, loaded from the weights. A targeted node that is no linear
/// layer, or has an adapter already, is refused; nothing is attached unless
/// every module loads. Returns the adapted node names, in network order.
inline std::vector<std::string> attach_peft_vera(graph& net, const std::filesystem::path& dir) {
  return detail::attach_peft_vera_as(net, dir, "attach_peft_vera");
}

/// Writes the adapters attached to `net` (all DoRA or all LoRA, with one
/// use_rslora; or all VeRA, as save_peft_vera) as PEFT's
/// adapter_model.safetensors and adapter_config.json into `dir`,
/// atomically: a failure leaves the previous pair.
inline void save_peft_adapter(const std::filesystem::path& dir, const graph& net,
                              const std::string& base_model_name_or_path = "") {
  const auto adapted = adapted_layers(net);
  if (adapted.empty()) throw value_error("save_peft_adapter: the network has no adapters");
  for (const auto& n : net.nodes()) {  // the first adapter in network order decides the format
    const auto it = adapted.find(n.name);
    if (it == adapted.end()) continue;
    if (it->second->adapter_kind() == vera_adapter::kind) {
      detail::save_peft_vera_as(dir, net, base_model_name_or_path, "save_peft_adapter");
      return;
    }
    break;
  }
  peft_files files;
  files.base_model_name_or_path = base_model_name_or_path;
  bool first = true;
  std::string kind, norm;
  for (const auto& n : net.nodes()) {  // network order
    const auto it = adapted.find(n.name);
    if (it == adapted.end()) continue;
    const adapted_layer_base& l = *it->second;
    const auto [rslora, mode] = detail::peft_flags(l);
    if (first) {
      kind = l.adapter_kind();
      files.use_dora = kind == dora_adapter::kind;
      files.use_rslora = rslora;
      norm = mode;
      first = false;
    } else if (l.adapter_kind() != kind || rslora != files.use_rslora) {
      throw value_error(detail::concat("save_peft_adapter: module '", n.name, "' has a ", l.adapter_kind(),
                                       " adapter with use_rslora ", rslora, ", the first one a ", kind,
                                       " adapter with use_rslora ", files.use_rslora,
                                       "; PEFT keeps one kind and one use_rslora per adapter"));
    }
    files.modules.push_back(detail::module_of(n.name, l));
  }
  files.metadata["rimc.adapter"] = kind;
  if (!norm.empty()) files.metadata["rimc.norm_mode"] = norm;
  save_peft_files(dir, files);
}

/// Loads a parsed config and weights file into the adapters attached to
/// `net` (every adapted node is a module of the file): kind, rank and alpha
/// must match and every tensor be present with the adapter's shape and finite
/// values. Nothing changes unless every module loads. `source` names the pair in errors.
inline void load_peft_adapter(const peft_config& cfg, const safetensors_file& file, graph& net,
                              const std::string& source = "<memory>") {
  const auto adapted = adapted_layers(net);
  if (adapted.empty()) throw value_error(detail::concat(source, ": the network has no adapters to load into"));
  std::vector<std::pair<std::shared_ptr<adapted_layer_base>, std::map<std::string, Tensor>>> staged;
  for (const auto& [name, l] : adapted) {
    if (auto d = std::dynamic_pointer_cast<adapted_layer<dora_adapter>>(l)) {
      staged.emplace_back(l, detail::staged_tensors(cfg, file, name, d->adapter(), source));
    } else if (auto lo = std::dynamic_pointer_cast<adapted_layer<lora_adapter>>(l)) {
      staged.emplace_back(l, detail::staged_tensors(cfg, file, name, lo->adapter(), source));
    } else {
      throw value_error(detail::concat(source, ": module '", name, "' has a ", l->adapter_kind(),
                                       " adapter; PEFT files hold DoRA and LoRA adapters"));
    }
  }
  for (auto& [l, tensors] : staged) {
    if (auto d = std::dynamic_pointer_cast<adapted_layer<dora_adapter>>(l)) {
      d->adapter().load(*d->base(), tensors);
      d->parameters_changed();
    } else if (auto lo = std::dynamic_pointer_cast<adapted_layer<lora_adapter>>(l)) {
      lo->adapter().load(*lo->base(), tensors);
      lo->parameters_changed();
    }
  }
}

/// Loads `dir` (adapter_config.json and adapter_model.safetensors) into the
/// adapters attached to `net`, as the overload above (as load_peft_vera when
/// the config's peft_type is "VERA").
inline void load_peft_adapter(const std::filesystem::path& dir, graph& net) {
  const std::string text = detail::peft_config_text(dir), config = (dir / "adapter_config.json").string();
  if (peft_type_of(text) == "VERA") {
    load_peft_vera(parse_peft_vera_config(text, config), safetensors_file::load(dir / "adapter_model.safetensors"),
                   net, dir.string());
    return;
  }
  load_peft_adapter(parse_peft_config(text, config), safetensors_file::load(dir / "adapter_model.safetensors"), net,
                    dir.string());
}

/// Attaches the adapter saved in `dir` to `net`: every conv2d / linear node the
/// config targets (by PEFT's rules) gets a DoRA (use_dora) or LoRA adapter of
/// the rank and alpha the config gives it, loaded from the weights. The
/// network must have no adapters on those nodes; nothing is attached unless
/// every module loads. Returns the adapted node names, in network order. A
/// config with peft_type "VERA" attaches VeRA adapters (attach_peft_vera).
inline std::vector<std::string> attach_peft_adapter(graph& net, const std::filesystem::path& dir) {
  const std::string text = detail::peft_config_text(dir);
  if (peft_type_of(text) == "VERA") return detail::attach_peft_vera_as(net, dir, "attach_peft_adapter");
  const peft_config cfg = parse_peft_config(text, (dir / "adapter_config.json").string());
  const auto file = safetensors_file::load(dir / "adapter_model.safetensors");
  const std::string source = dir.string();
  std::vector<std::string> names;
  std::vector<std::shared_ptr<layer>> made;
  for (const auto& n : net.nodes()) {
    if (!cfg.targets(n.name)) continue;
    if (!n.has_layer()) {
      throw value_error(detail::concat(source, ": adapter_config.json targets '", n.name, "', a ", to_string(n.kind),
                                       "; only conv2d and linear nodes take adapters"));
    }
    detail::check_adaptable(n, source);
    const std::int64_t r = cfg.rank_of(n.name);
    const double alpha = cfg.alpha_of(n.name);
    try {
      if (cfg.use_dora) {
        dora_adapter a(*n.layer, dora_config{.rank = r, .alpha = alpha, .use_rslora = cfg.use_rslora});
        const auto t = detail::staged_tensors(cfg, file, n.name, a, source);
        a.load(*n.layer, t);
        made.push_back(std::make_shared<adapted_layer<dora_adapter>>(n.layer, std::move(a)));
      } else {
        lora_adapter a(*n.layer, lora_config{.rank = r, .alpha = alpha, .use_rslora = cfg.use_rslora});
        const auto t = detail::staged_tensors(cfg, file, n.name, a, source);
        a.load(*n.layer, t);
        made.push_back(std::make_shared<adapted_layer<lora_adapter>>(n.layer, std::move(a)));
      }
    } catch (const error&) {
      detail::rethrow_in(detail::concat("attach_peft_adapter: module '", n.name, "'"));
    }
    names.push_back(n.name);
  }
  if (names.empty()) {
    throw value_error(detail::concat(source, ": adapter_config.json targets no conv2d or linear node of the network"));
  }
  for (std::size_t i = 0; i < names.size(); ++i) net.set_layer(names[i], made[i]);
  return names;
}

}  // namespace rimc
