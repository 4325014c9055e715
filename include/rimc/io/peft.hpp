#pragma once
/// \file
/// Adapter files compatible with Hugging Face PEFT (LoRA with use_dora):
/// `adapter_model.safetensors` with keys
///   base_model.model.<module>.lora_A.weight          [r, K] / [r, C, kh, kw]
///   base_model.model.<module>.lora_B.weight          [O, r] / [O, r, 1, 1]
///   base_model.model.<module>.lora_magnitude_vector  [O] / [1, O, 1, 1] (conv, as PEFT stores it)
/// and `adapter_config.json` (peft_type "LORA", use_dora true, r, lora_alpha,
/// use_rslora, target_modules, rank_pattern / alpha_pattern for modules that
/// differ). Saving replaces both files atomically, as a pair.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/io/read_file.hpp>
#include <rimc/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// The adapter_config.json fields rimc reads and writes.
struct peft_config {
  std::int64_t r = 0;
  double lora_alpha = 0;
  bool use_rslora = false;
  bool use_dora = true;
  std::vector<std::string> target_modules;
  std::map<std::string, std::int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;

  [[nodiscard]] std::int64_t rank_of(const std::string& module) const {
    const auto it = rank_pattern.find(module);
    return it == rank_pattern.end() ? r : it->second;
  }
  [[nodiscard]] double alpha_of(const std::string& module) const {
    const auto it = alpha_pattern.find(module);
    return it == alpha_pattern.end() ? lora_alpha : it->second;
  }
};

/// An adapter together with the module name it belongs to (a PyTorch
/// state_dict prefix such as "layer1.0.conv1").
template <class Adapter>
struct named_adapter {
  std::string module;
  Adapter* adapter;
};

namespace detail {
inline std::string peft_key(const std::string& module, const char* what) {
  return "base_model.model." + module + "." + what;
}
inline Shape peft_magnitude_shape(const dora_adapter& a) {
  return a.is_conv() ? Shape{1, a.out_features(), 1, 1} : Shape{a.out_features()};
}
}  // namespace detail

/// Writes adapter_model.safetensors and adapter_config.json into `dir`
/// (created if missing), atomically: a failure leaves the previous files.
inline void save_peft_adapter(const std::filesystem::path& dir,
                              const std::vector<named_adapter<const dora_adapter>>& adapters,
                              const std::string& base_model_name_or_path = "") {
  if (adapters.empty()) throw value_error("save_peft_adapter: no adapters given");
  std::map<std::string, Tensor> tensors;
  const auto& first = adapters.front().adapter->config();
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object(),
                         alpha_pattern = nlohmann::ordered_json::object();
  std::vector<std::string> modules;
  for (const auto& [module, a] : adapters) {
    if (module.empty()) throw value_error("save_peft_adapter: an adapter has an empty module name");
    if (a->config().use_rslora != first.use_rslora) {
      throw value_error(detail::concat("save_peft_adapter: module '", module,
                                       "' differs in use_rslora; PEFT keeps one value per adapter"));
    }
    Tensor m = a->magnitude();
    m.reshape(detail::peft_magnitude_shape(*a));
    if (!tensors.emplace(detail::peft_key(module, "lora_magnitude_vector"), std::move(m)).second) {
      throw value_error(detail::concat("save_peft_adapter: module '", module, "' given twice"));
    }
    tensors.emplace(detail::peft_key(module, "lora_A.weight"), a->lora_A());
    tensors.emplace(detail::peft_key(module, "lora_B.weight"), a->lora_B());
    if (a->rank() != first.rank) rank_pattern[module] = a->rank();
    if (a->config().alpha != first.alpha) alpha_pattern[module] = a->config().alpha;
    modules.push_back(module);
  }
  const auto weights = serialize_safetensors(
      tensors, {{"format", "pt"}, {"rimc.norm_mode", first.norm == norm_mode::exact ? "exact" : "detached"}});
  nlohmann::ordered_json cfg = {
      {"alpha_pattern", alpha_pattern},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name_or_path.empty() ? nlohmann::ordered_json(nullptr)
                                                                  : nlohmann::ordered_json(base_model_name_or_path)},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"lora_alpha", first.alpha},
      {"lora_dropout", 0.0},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", first.rank},
      {"rank_pattern", rank_pattern},
      {"revision", nullptr},
      {"target_modules", modules},
      {"task_type", nullptr},
      {"use_dora", true},
      {"use_rslora", first.use_rslora},
  };
  const std::string text = cfg.dump(2) + "\n";
  // Both files are written and flushed before either replaces its
  // predecessor, so a failure while writing leaves the previous pair intact.
  std::filesystem::create_directories(dir);
  staged_file weights_file(dir / "adapter_model.safetensors"), config_file(dir / "adapter_config.json");
  weights_file.writer().write(weights.data(), weights.size());
  config_file.writer().write(text);
  weights_file.finish();
  config_file.finish();
  weights_file.commit();
  config_file.commit();
}

/// Parses and validates the text of an adapter_config.json (`source` names it
/// in errors). Every field rimc uses is checked for type and range: a bad one
/// is an io_error naming the field and the value.
[[nodiscard]] inline peft_config parse_peft_config(std::string_view text, const std::string& source = "<memory>") {
  using json = nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw io_error(detail::concat(source, ": not valid JSON: ", e.what()));
  }
  auto fail = [&](const std::string& what) { return io_error(detail::concat(source, ": ", what)); };
  if (!j.is_object()) throw fail("not a JSON object");
  auto field = [&](const char* name) -> const json* {
    const auto it = j.find(name);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto shown = [](const json& v) { return v.is_number() ? detail::concat(v.get<double>()) : v.dump(); };
  auto flag = [&](const char* name, bool fallback) {
    const json* v = field(name);
    if (!v) return fallback;
    if (!v->is_boolean()) throw fail(detail::concat("'", name, "' must be true or false, got ", v->dump()));
    return v->get<bool>();
  };
  auto rank = [&](const json& v, const std::string& what) {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT64_MAX}) ||
        v.get<std::int64_t>() < 1) {
      throw fail(detail::concat(what, " must be an integer >= 1, got ", shown(v)));
    }
    return v.get<std::int64_t>();
  };
  auto alpha = [&](const json& v, const std::string& what) {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
      throw fail(detail::concat(what, " must be a positive finite number, got ", shown(v)));
    }
    return v.get<double>();
  };

  const json* type = field("peft_type");
  if (!type || *type != "LORA") {
    throw fail(detail::concat("'peft_type' must be \"LORA\", got ", type ? type->dump() : "nothing"));
  }
  peft_config c;
  c.use_dora = flag("use_dora", false);
  if (!c.use_dora) throw fail("'use_dora' is not true: this is a plain LoRA adapter, not DoRA");
  const json* r = field("r");
  if (!r) throw fail("'r' is missing");
  c.r = rank(*r, "'r'");
  const json* a = field("lora_alpha");
  if (!a) throw fail("'lora_alpha' is missing");
  c.lora_alpha = alpha(*a, "'lora_alpha'");
  c.use_rslora = flag("use_rslora", false);
  if (const json* t = field("target_modules"); t && t->is_array()) {  // PEFT also allows a regex string: not used
    for (const auto& m : *t) {
      if (!m.is_string()) throw fail(detail::concat("'target_modules' entries must be strings, got ", m.dump()));
      c.target_modules.push_back(m.get<std::string>());
    }
  }
  for (const char* pattern : {"rank_pattern", "alpha_pattern"}) {
    const json* p = field(pattern);
    if (!p) continue;
    if (!p->is_object()) throw fail(detail::concat("'", pattern, "' must be an object, got ", p->dump()));
    for (const auto& [module, v] : p->items()) {
      const std::string what = detail::concat("'", pattern, "' entry '", module, "'");
      if (pattern[0] == 'r') {
        c.rank_pattern[module] = rank(v, what);
      } else {
        c.alpha_pattern[module] = alpha(v, what);
      }
    }
  }
  if (const json* b = field("base_model_name_or_path"); b && b->is_string()) c.base_model_name_or_path = b->get<std::string>();
  return c;
}

/// Reads and validates `dir`/adapter_config.json.
[[nodiscard]] inline peft_config read_peft_config(const std::filesystem::path& dir) {
  const auto path = dir / "adapter_config.json";
  const auto bytes = detail::read_file_bytes(path);
  return parse_peft_config(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path.string());
}

/// Loads a parsed config and weights file into existing adapters (matched by
/// module name): every adapter's three tensors must be present with the
/// shapes the adapter has and the config's rank and alpha must match; nothing
/// is changed unless all modules load. `source` names the pair in errors.
inline void load_peft_adapter(const peft_config& cfg, const safetensors_file& file,
                              const std::vector<named_adapter<dora_adapter>>& adapters,
                              const std::string& source = "<memory>") {
  struct loaded {
    dora_adapter* a;
    Tensor m, A, B;
  };
  std::vector<loaded> staged;
  for (const auto& entry : adapters) {
    const std::string& module = entry.module;  // not a structured binding: clang 14 cannot capture those in lambdas
    dora_adapter* const a = entry.adapter;
    if (cfg.rank_of(module) != a->rank()) {
      throw value_error(detail::concat(source, ": module '", module, "' has rank ", cfg.rank_of(module),
                                       " in adapter_config.json but the adapter has rank ", a->rank()));
    }
    if (cfg.alpha_of(module) != a->config().alpha || cfg.use_rslora != a->config().use_rslora) {
      throw value_error(detail::concat(source, ": module '", module, "' has lora_alpha ", cfg.alpha_of(module),
                                       " and use_rslora ", cfg.use_rslora, " in adapter_config.json but the adapter has ",
                                       a->config().alpha, " and ", a->config().use_rslora));
    }
    auto take = [&](const char* what, const Shape& expected) {
      const std::string key = detail::peft_key(module, what);
      if (!file.contains(key)) throw io_error(detail::concat(file.source(), ": missing tensor '", key, "'"));
      const auto& info = file.info(key);
      if (info.dtype != st_dtype::F32 && info.dtype != st_dtype::F16 && info.dtype != st_dtype::BF16 &&
          info.dtype != st_dtype::F64) {
        throw io_error(detail::concat(file.source(), ": tensor '", key, "' has dtype ", to_string(info.dtype),
                                      "; adapter tensors must be floating point"));
      }
      Tensor t = file.tensor(key);
      if (!(t.shape() == expected)) {
        throw shape_error(detail::concat(file.source(), ": tensor '", key, "' has shape ", t.shape().to_string(),
                                         " but the adapter expects ", expected.to_string()));
      }
      return t;
    };
    loaded l{a, take("lora_magnitude_vector", detail::peft_magnitude_shape(*a)), take("lora_A.weight", a->lora_A().shape()),
             take("lora_B.weight", a->lora_B().shape())};
    l.m.reshape(a->magnitude().shape());
    staged.push_back(std::move(l));
  }
  for (auto& l : staged) l.a->set_parameters(std::move(l.m), std::move(l.A), std::move(l.B));
}

/// Loads `dir` (adapter_config.json and adapter_model.safetensors) into
/// existing adapters, as the overload above.
inline void load_peft_adapter(const std::filesystem::path& dir, const std::vector<named_adapter<dora_adapter>>& adapters) {
  load_peft_adapter(read_peft_config(dir), safetensors_file::load(dir / "adapter_model.safetensors"), adapters,
                    dir.string());
}

}  // namespace rimc
