#pragma once
/// \file
/// Hugging Face PEFT adapter files (LoRA, and LoRA with use_dora), as names
/// and tensors: this header knows the file format, not the adapters
/// (adapt/peft_files.hpp turns adapters into these and back).
///
/// `adapter_model.safetensors` holds, per module (a PyTorch module name such
/// as "layer1.0.conv1"), `base_model.model.<module>.lora_A.weight`,
/// `...lora_B.weight` and, for DoRA, `...lora_magnitude_vector`.
/// `adapter_config.json` gives peft_type "LORA", use_dora, r, lora_alpha,
/// use_rslora, target_modules and rank_pattern / alpha_pattern for the
/// modules whose rank or alpha differ from r and lora_alpha.
///
/// PEFT resolves these fields by pattern, not by name: a list entry of
/// target_modules targets every module whose name equals it or ends with
/// "." + it (so "conv1" also targets "layer1.0.conv1"); a string is a
/// regular expression the whole name must match; and the rank of a module is
/// the rank_pattern value of the first key k (rank_pattern keys, then
/// alpha_pattern keys, in file order) with re.match(r"(.*\.)?(k)$", name).
/// rimc writes configs these rules resolve exactly: target_modules as one
/// regular expression naming exactly the adapted modules, and pattern keys
/// anchored at the start ("^layer1\.0\.conv1"), which no other module name
/// matches. Reading accepts both forms and resolves them by the same rules.
/// Saving replaces both files atomically, as a pair.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/io/read_file.hpp>
#include <rimc/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

namespace detail {
/// `s` with every regular-expression metacharacter escaped.
[[nodiscard]] inline std::string regex_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (std::string_view(R"(\^$.|?*+()[]{}-)").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}
/// Whether the whole of `text` matches regular expression `pattern` (Python's re.fullmatch;
/// ECMAScript syntax, which covers what PEFT configs use). `what` names the pattern in errors.
[[nodiscard]] inline bool full_match(const std::string& pattern, const std::string& text, std::string_view what) {
  try {
    return std::regex_match(text, std::regex(pattern, std::regex::ECMAScript));
  } catch (const std::regex_error& e) {
    throw value_error(concat(what, " '", pattern, "' is not a regular expression rimc can read: ", e.what()));
  }
}
}  // namespace detail

/// The adapter_config.json fields rimc reads and writes (see the file comment).
struct peft_config {
  std::int64_t r = 0;                        ///< default rank
  double lora_alpha = 0;                     ///< default alpha
  bool use_rslora = false;                   ///< s = alpha / sqrt(r)
  bool use_dora = true;                      ///< DoRA (magnitude vectors) or plain LoRA
  std::vector<std::string> target_modules;   ///< the list form (empty when target_regex is set)
  std::optional<std::string> target_regex;   ///< the string form: a regular expression names must match whole
  std::vector<std::pair<std::string, std::int64_t>> rank_pattern;  ///< pattern key -> rank, in file order
  std::vector<std::pair<std::string, double>> alpha_pattern;       ///< pattern key -> alpha, in file order
  /// PEFT's base-model name or path (null in the file when empty).
  std::string base_model_name_or_path;

  /// Whether PEFT adapts module `module` under this config.
  [[nodiscard]] bool targets(const std::string& module) const {
    if (target_regex) return detail::full_match(*target_regex, module, "target_modules");
    for (const auto& t : target_modules)
      if (module == t || (module.size() > t.size() && module.ends_with("." + t))) return true;
    return false;
  }
  /// The pattern key PEFT picks for `module`: the first rank_pattern, then
  /// alpha_pattern, key k with (.*\.)?(k)$ matching the name; null when none does.
  [[nodiscard]] const std::string* pattern_key(const std::string& module) const {
    for (const auto& [k, v] : rank_pattern)
      if (detail::full_match("(.*\\.)?(" + k + ")", module, "rank_pattern key")) return &k;
    for (const auto& [k, v] : alpha_pattern)
      if (detail::full_match("(.*\\.)?(" + k + ")", module, "alpha_pattern key")) return &k;
    return nullptr;
  }
  /// The rank PEFT gives `module`.
  [[nodiscard]] std::int64_t rank_of(const std::string& module) const {
    if (const std::string* k = pattern_key(module))
      for (const auto& [key, v] : rank_pattern)
        if (key == *k) return v;
    return r;
  }
  /// The alpha PEFT gives `module`.
  [[nodiscard]] double alpha_of(const std::string& module) const {
    if (const std::string* k = pattern_key(module))
      for (const auto& [key, v] : alpha_pattern)
        if (key == *k) return v;
    return lora_alpha;
  }
};

/// One module of an adapter file: its name, rank, alpha and tensors (named
/// within the module, e.g. "lora_A.weight").
struct peft_module {
  /// PyTorch module name, e.g. "layer1.0.conv1".
  std::string name;
  /// Rank r.
  std::int64_t rank = 0;
  /// lora_alpha.
  double alpha = 0;
  /// Tensors named within the module ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector").
  named_tensors tensors;
};

/// What save_peft_files writes.
struct peft_files {
  /// DoRA (magnitude vectors) or plain LoRA.
  bool use_dora = true;
  /// s = alpha / sqrt(r) instead of alpha / r.
  bool use_rslora = false;
  /// PEFT's base-model name or path (null in the file when empty).
  std::string base_model_name_or_path;
  std::map<std::string, std::string> metadata;  ///< extra safetensors metadata ("format": "pt" is always there)
  /// The adapted modules.
  std::vector<peft_module> modules;
};

/// The safetensors key of tensor `what` of module `module`.
[[nodiscard]] inline std::string peft_tensor_key(const std::string& module, std::string_view what) {
  return detail::concat("base_model.model.", module, ".", what);
}

/// The rank_pattern / alpha_pattern key rimc writes for `module`: anchored at
/// the start and escaped, so PEFT's (.*\.)?(key)$ matches that name only.
[[nodiscard]] inline std::string peft_pattern_key(const std::string& module) {
  return "^" + detail::regex_escape(module);
}

/// The target_modules expression rimc writes: exactly `modules`, whole names.
[[nodiscard]] inline std::string peft_target_regex(const std::vector<std::string>& modules) {
  std::string out = "(?:";
  for (std::size_t i = 0; i < modules.size(); ++i) out += (i ? "|" : "") + detail::regex_escape(modules[i]);
  return out + ")";
}

/// Writes adapter_model.safetensors and adapter_config.json into `dir`
/// (created if missing), atomically: a failure leaves the previous files.
/// The first module's rank and alpha are the defaults; the others' go to
/// rank_pattern / alpha_pattern where they differ.
inline void save_peft_files(const std::filesystem::path& dir, const peft_files& files) {
  if (files.modules.empty()) throw value_error("save_peft_adapter: no adapters given");
  std::map<std::string, Tensor> tensors;
  const auto& first = files.modules.front();
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object(),
                         alpha_pattern = nlohmann::ordered_json::object();
  std::vector<std::string> names;
  for (const auto& m : files.modules) {
    if (m.name.empty()) throw value_error("save_peft_adapter: an adapter has an empty module name");
    for (const auto& [what, t] : m.tensors) {
      if (!tensors.emplace(peft_tensor_key(m.name, what), t).second) {
        throw value_error(detail::concat("save_peft_adapter: module '", m.name, "' given twice"));
      }
    }
    if (m.rank != first.rank) rank_pattern[peft_pattern_key(m.name)] = m.rank;
    if (m.alpha != first.alpha) alpha_pattern[peft_pattern_key(m.name)] = m.alpha;
    names.push_back(m.name);
  }
  std::map<std::string, std::string> metadata = files.metadata;
  metadata["format"] = "pt";
  const auto weights = serialize_safetensors(tensors, metadata);
  nlohmann::ordered_json cfg = {
      {"alpha_pattern", alpha_pattern},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", files.base_model_name_or_path.empty()
                                      ? nlohmann::ordered_json(nullptr)
                                      : nlohmann::ordered_json(files.base_model_name_or_path)},
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
      {"target_modules", peft_target_regex(names)},
      {"task_type", nullptr},
      {"use_dora", files.use_dora},
      {"use_rslora", files.use_rslora},
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
  using json = nlohmann::ordered_json;
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
  auto pattern_ok = [&](const std::string& pattern, const std::string& what) {
    try {
      (void)std::regex(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw fail(detail::concat(what, " is not a regular expression rimc can read: ", e.what()));
    }
  };

  const json* type = field("peft_type");
  if (!type || *type != "LORA") {
    throw fail(detail::concat("'peft_type' must be \"LORA\", got ", type ? type->dump() : "nothing"));
  }
  peft_config c;
  c.use_dora = flag("use_dora", false);
  const json* r = field("r");
  if (!r) throw fail("'r' is missing");
  c.r = rank(*r, "'r'");
  const json* a = field("lora_alpha");
  if (!a) throw fail("'lora_alpha' is missing");
  c.lora_alpha = alpha(*a, "'lora_alpha'");
  c.use_rslora = flag("use_rslora", false);
  if (const json* t = field("target_modules")) {
    if (t->is_string()) {
      c.target_regex = t->get<std::string>();
      pattern_ok(*c.target_regex, detail::concat("'target_modules' '", *c.target_regex, "'"));
    } else if (t->is_array()) {
      for (const auto& m : *t) {
        if (!m.is_string()) throw fail(detail::concat("'target_modules' entries must be strings, got ", m.dump()));
        c.target_modules.push_back(m.get<std::string>());
      }
    } else {
      throw fail(detail::concat("'target_modules' must be a list of names or a regular expression, got ", t->dump()));
    }
  }
  for (const char* pattern : {"rank_pattern", "alpha_pattern"}) {
    const json* p = field(pattern);
    if (!p) continue;
    if (!p->is_object()) throw fail(detail::concat("'", pattern, "' must be an object, got ", p->dump()));
    for (const auto& [key, v] : p->items()) {
      const std::string what = detail::concat("'", pattern, "' entry '", key, "'");
      pattern_ok("(.*\\.)?(" + key + ")", what);
      if (pattern[0] == 'r') {
        c.rank_pattern.emplace_back(key, rank(v, what));
      } else {
        c.alpha_pattern.emplace_back(key, alpha(v, what));
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

/// The tensors of module `module` from an adapter file: every one of
/// `names` (e.g. "lora_A.weight") must be present and floating point (the
/// errors name the file and the key).
[[nodiscard]] inline std::map<std::string, Tensor> peft_module_tensors(const safetensors_file& file,
                                                                       const std::string& module,
                                                                       const std::vector<std::string>& names) {
  std::map<std::string, Tensor> out;
  for (const auto& what : names) {
    const std::string key = peft_tensor_key(module, what);
    if (!file.contains(key)) throw io_error(detail::concat(file.source(), ": missing tensor '", key, "'"));
    const auto& info = file.info(key);
    if (info.dtype != st_dtype::F32 && info.dtype != st_dtype::F16 && info.dtype != st_dtype::BF16 &&
        info.dtype != st_dtype::F64) {
      throw io_error(detail::concat(file.source(), ": tensor '", key, "' has dtype ", to_string(info.dtype),
                                    "; adapter tensors must be floating point"));
    }
    out.emplace(what, file.tensor(key));
  }
  return out;
}

}  // namespace rimc
