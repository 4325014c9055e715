#pragma once
/// \file
/// Hugging Face PEFT adapter files (LoRA, LoRA with use_dora, and VeRA), as
/// names and tensors: this header knows the file format, not the adapters
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
///
/// VeRA (peft_type "VERA", PEFT's src/peft/tuners/vera and
/// utils/save_and_load.py): `adapter_model.safetensors` holds the shared
/// projections once, `base_model.vera_A` [r, max_in] and `base_model.vera_B`
/// [max_out, r] (save_projection = true), and per module
/// `base_model.model.<module>.vera_lambda_d` [r] and `...vera_lambda_b`
/// [out_features]. PEFT sizes the projections from the largest in_features
/// and out_features of the targeted nn.Linear modules (VeraModel._find_dim)
/// and a layer uses their top-left blocks vera_A[:, :in_features] and
/// vera_B[:out_features, :] (Linear.forward). `adapter_config.json` gives r,
/// target_modules, projection_prng_key, save_projection, vera_dropout,
/// d_initial, fan_in_fan_out and bias; VeRA has no rank or alpha patterns.

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
/// Whether PEFT's target_modules (the string form `regex` when set, else the
/// list `names`) targets module `module` (see the file comment).
[[nodiscard]] inline bool peft_targets(const std::optional<std::string>& regex, const std::vector<std::string>& names,
                                       const std::string& module) {
  if (regex) return full_match(*regex, module, "target_modules");
  for (const auto& t : names)
    if (module == t || (module.size() > t.size() && module.ends_with("." + t))) return true;
  return false;
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
    return detail::peft_targets(target_regex, target_modules, module);
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

namespace detail {
/// Writes `weights` as `dir`/adapter_model.safetensors and `config` as
/// `dir`/adapter_config.json (`dir` created if missing). Both files are
/// written and flushed before either replaces its predecessor, so a failure
/// while writing leaves the previous pair intact.
inline void write_peft_pair(const std::filesystem::path& dir, const std::vector<std::uint8_t>& weights,
                            const std::string& config) {
  std::filesystem::create_directories(dir);
  staged_file weights_file(dir / "adapter_model.safetensors"), config_file(dir / "adapter_config.json");
  weights_file.writer().write(weights.data(), weights.size());
  config_file.writer().write(config);
  weights_file.finish();
  config_file.finish();
  weights_file.commit();
  config_file.commit();
}
}  // namespace detail

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
  detail::write_peft_pair(dir, weights, cfg.dump(2) + "\n");
}

namespace detail {

/// An adapter_config.json's object and typed access to its fields; every
/// problem is an io_error "`source`: ..." naming the field and the value.
class peft_json {
 public:
  using json = nlohmann::ordered_json;

  /// Parses `text` (io_error "not valid JSON" or "not a JSON object").
  peft_json(std::string_view text, std::string source) : source_(std::move(source)) {
    try {
      j_ = json::parse(text);
    } catch (const json::exception& e) {
      throw io_error(concat(source_, ": not valid JSON: ", e.what()));
    }
    if (!j_.is_object()) throw fail("not a JSON object");
  }

  /// An io_error "`source`: `what`".
  [[nodiscard]] io_error fail(const std::string& what) const { return io_error(concat(source_, ": ", what)); }
  /// A value_error "`source`: `what`" (a setting rimc cannot honour).
  [[nodiscard]] value_error refuse(const std::string& what) const { return value_error(concat(source_, ": ", what)); }
  /// Field `name`, or null when it is missing or null.
  [[nodiscard]] const json* field(const char* name) const {
    const auto it = j_.find(name);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  /// A value as an error message shows it (numbers as numbers).
  [[nodiscard]] static std::string shown(const json& v) { return v.is_number() ? concat(v.get<double>()) : v.dump(); }
  /// Boolean field `name`, `fallback` when absent.
  [[nodiscard]] bool flag(const char* name, bool fallback) const {
    const json* v = field(name);
    if (!v) return fallback;
    if (!v->is_boolean()) throw fail(concat("'", name, "' must be true or false, got ", v->dump()));
    return v->get<bool>();
  }
  /// `v` as an integer >= 1 (`what` names it).
  [[nodiscard]] std::int64_t positive_integer(const json& v, const std::string& what) const {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT64_MAX}) ||
        v.get<std::int64_t>() < 1) {
      throw fail(concat(what, " must be an integer >= 1, got ", shown(v)));
    }
    return v.get<std::int64_t>();
  }

 private:
  std::string source_;
  json j_;
};

}  // namespace detail

namespace detail {
/// Reads target_modules (`t`, null when absent) into the list form `names`
/// or the string form `regex`; an io_error naming `source` and the value
/// when it is neither, or not a regular expression rimc can read.
inline void parse_peft_targets(const nlohmann::ordered_json* t, const std::string& source,
                               std::vector<std::string>& names, std::optional<std::string>& regex) {
  if (!t) return;
  if (t->is_string()) {
    regex = t->get<std::string>();
    try {
      (void)std::regex(*regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      throw io_error(concat(source, ": 'target_modules' '", *regex, "' is not a regular expression rimc can read: ",
                            e.what()));
    }
  } else if (t->is_array()) {
    for (const auto& m : *t) {
      if (!m.is_string()) throw io_error(concat(source, ": 'target_modules' entries must be strings, got ", m.dump()));
      names.push_back(m.get<std::string>());
    }
  } else {
    throw io_error(
        concat(source, ": 'target_modules' must be a list of names or a regular expression, got ", t->dump()));
  }
}
}  // namespace detail

/// Parses and validates the text of an adapter_config.json (`source` names it
/// in errors). Every field rimc uses is checked for type and range: a bad one
/// is an io_error naming the field and the value.
[[nodiscard]] inline peft_config parse_peft_config(std::string_view text, const std::string& source = "<memory>") {
  using json = detail::peft_json::json;
  const detail::peft_json cfg(text, source);
  const auto fail = [&](const std::string& what) { return cfg.fail(what); };
  const auto field = [&](const char* name) { return cfg.field(name); };
  const auto shown = [](const json& v) { return detail::peft_json::shown(v); };
  const auto flag = [&](const char* name, bool fallback) { return cfg.flag(name, fallback); };
  const auto rank = [&](const json& v, const std::string& what) { return cfg.positive_integer(v, what); };
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
  detail::parse_peft_targets(field("target_modules"), source, c.target_modules, c.target_regex);
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

namespace detail {
/// The text of `dir`/adapter_config.json.
[[nodiscard]] inline std::string peft_config_text(const std::filesystem::path& dir) {
  const auto bytes = read_file_bytes(dir / "adapter_config.json");
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}
}  // namespace detail

/// Reads and validates `dir`/adapter_config.json.
[[nodiscard]] inline peft_config read_peft_config(const std::filesystem::path& dir) {
  return parse_peft_config(detail::peft_config_text(dir), (dir / "adapter_config.json").string());
}

/// Tensor `key` of an adapter file: present and floating point (else an
/// io_error naming the file and the key) with finite values (else a
/// value_error naming the element).
[[nodiscard]] inline Tensor adapter_file_tensor(const safetensors_file& file, const std::string& key) {
  if (!file.contains(key)) throw io_error(detail::concat(file.source(), ": missing tensor '", key, "'"));
  const auto& info = file.info(key);
  if (info.dtype != st_dtype::F32 && info.dtype != st_dtype::F16 && info.dtype != st_dtype::BF16 &&
      info.dtype != st_dtype::F64) {
    throw io_error(detail::concat(file.source(), ": tensor '", key, "' has dtype ", to_string(info.dtype),
                                  "; adapter tensors must be floating point"));
  }
  return file.tensor(key);
}

/// The tensors of module `module` from an adapter file: every one of
/// `names` (e.g. "lora_A.weight") must be present and floating point (the
/// errors name the file and the key).
[[nodiscard]] inline std::map<std::string, Tensor> peft_module_tensors(const safetensors_file& file,
                                                                       const std::string& module,
                                                                       const std::vector<std::string>& names) {
  std::map<std::string, Tensor> out;
  for (const auto& what : names) out.emplace(what, adapter_file_tensor(file, peft_tensor_key(module, what)));
  return out;
}

/// PEFT's key of VeRA's shared vera_A [r, max_in] (the adapter name removed, as PEFT saves it).
inline constexpr std::string_view peft_vera_A_key = "base_model.vera_A";
/// PEFT's key of VeRA's shared vera_B [max_out, r].
inline constexpr std::string_view peft_vera_B_key = "base_model.vera_B";

/// The adapter_config.json fields of a PEFT VeRA adapter that rimc reads and
/// writes (see the file comment).
struct peft_vera_config {
  std::int64_t r = 0;                       ///< the projections' rank
  std::vector<std::string> target_modules;  ///< the list form (empty when target_regex is set)
  std::optional<std::string> target_regex;  ///< the string form: a regular expression names must match whole
  /// PyTorch's generator seed for projections the file does not hold (rimc
  /// reads the saved ones: save_projection must be true).
  std::int64_t projection_prng_key = 0;
  bool save_projection = true;  ///< whether the file holds vera_A and vera_B
  double d_initial = 0.1;       ///< λ_d's initial value
  double vera_dropout = 0;      ///< dropout on the adapter's input in training (none at inference)
  /// PEFT's base-model name or path (null in the file when empty).
  std::string base_model_name_or_path;

  /// Whether PEFT adapts module `module` under this config.
  [[nodiscard]] bool targets(const std::string& module) const {
    return detail::peft_targets(target_regex, target_modules, module);
  }
};

/// One module of a VeRA adapter file: its name and its vectors, named within
/// the module ("vera_lambda_d", "vera_lambda_b").
struct peft_vera_module {
  /// PyTorch module name, e.g. "classifier.dense".
  std::string name;
  /// "vera_lambda_d" [r] and "vera_lambda_b" [out_features].
  named_tensors tensors;
};

/// What save_peft_vera_files writes.
struct peft_vera_files {
  Tensor vera_A;  ///< the shared projection A [r, max_in], max_in the largest in_features of the modules
  Tensor vera_B;  ///< the shared projection B [max_out, r], max_out the largest out_features of the modules
  double d_initial = 0.1;  ///< PEFT's d_initial
  /// PEFT's base-model name or path (null in the file when empty).
  std::string base_model_name_or_path;
  std::map<std::string, std::string> metadata;  ///< extra safetensors metadata ("format": "pt" is always there)
  /// The adapted modules.
  std::vector<peft_vera_module> modules;
};

/// Writes a PEFT VeRA adapter (adapter_model.safetensors with the projections
/// saved, adapter_config.json) into `dir` (created if missing), atomically: a
/// failure leaves the previous files. target_modules names exactly the
/// modules; projection_prng_key is PEFT's default 0 (the file holds the
/// projections, which PEFT then loads instead of drawing them).
inline void save_peft_vera_files(const std::filesystem::path& dir, const peft_vera_files& files) {
  if (files.modules.empty()) throw value_error("save_peft_vera: no adapters given");
  const Tensor& a = files.vera_A;
  const Tensor& b = files.vera_B;
  if (a.rank() != 2 || b.rank() != 2 || a.dim(0) != b.dim(1) || a.dim(0) < 1) {
    throw shape_error(detail::concat("save_peft_vera: vera_A must be [r, max_in] and vera_B [max_out, r], got ",
                                     a.shape().to_string(), " and ", b.shape().to_string()));
  }
  if (!std::isfinite(files.d_initial)) {
    throw value_error(detail::concat("save_peft_vera: d_initial must be finite, got ", files.d_initial));
  }
  std::map<std::string, Tensor> tensors{{std::string(peft_vera_A_key), a}, {std::string(peft_vera_B_key), b}};
  std::vector<std::string> names;
  for (const auto& m : files.modules) {
    if (m.name.empty()) throw value_error("save_peft_vera: an adapter has an empty module name");
    for (const auto& [what, t] : m.tensors) {
      if (!tensors.emplace(peft_tensor_key(m.name, what), t).second) {
        throw value_error(detail::concat("save_peft_vera: module '", m.name, "' given twice"));
      }
    }
    names.push_back(m.name);
  }
  std::map<std::string, std::string> metadata = files.metadata;
  metadata["format"] = "pt";
  const auto weights = serialize_safetensors(tensors, metadata);
  const nlohmann::ordered_json cfg = {
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", files.base_model_name_or_path.empty()
                                      ? nlohmann::ordered_json(nullptr)
                                      : nlohmann::ordered_json(files.base_model_name_or_path)},
      {"bias", "none"},
      {"d_initial", files.d_initial},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_weights", true},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"modules_to_save", nullptr},
      {"peft_type", "VERA"},
      {"projection_prng_key", 0},
      {"r", a.dim(0)},
      {"revision", nullptr},
      {"save_projection", true},
      {"target_modules", peft_target_regex(names)},
      {"task_type", nullptr},
      {"vera_dropout", 0.0},
  };
  detail::write_peft_pair(dir, weights, cfg.dump(2) + "\n");
}

/// The peft_type of the text of an adapter_config.json ("LORA", "VERA", ...);
/// empty when the text is no JSON object with a string peft_type (the
/// config's parser then says what is wrong).
[[nodiscard]] inline std::string peft_type_of(std::string_view text) {
  const auto j = nlohmann::ordered_json::parse(text, nullptr, false);
  if (!j.is_object()) return "";
  const auto it = j.find("peft_type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

/// Parses and validates the text of a VeRA adapter_config.json (`source`
/// names it in errors): a field of the wrong type or range is an io_error
/// naming the field and the value; a setting rimc cannot honour
/// (save_projection false, bias other than "none", fan_in_fan_out,
/// modules_to_save, layers_to_transform, layers_pattern) is a value_error.
[[nodiscard]] inline peft_vera_config parse_peft_vera_config(std::string_view text,
                                                             const std::string& source = "<memory>") {
  using json = detail::peft_json::json;
  const detail::peft_json cfg(text, source);
  const auto fail = [&](const std::string& what) { return cfg.fail(what); };
  const auto refuse = [&](const std::string& what) { return cfg.refuse(what); };
  const auto field = [&](const char* name) { return cfg.field(name); };
  const auto shown = [](const json& v) { return detail::peft_json::shown(v); };
  const auto flag = [&](const char* name, bool fallback) { return cfg.flag(name, fallback); };
  auto number = [&](const char* name, double fallback) {
    const json* v = field(name);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>())) {
      throw fail(detail::concat("'", name, "' must be a finite number, got ", shown(*v)));
    }
    return v->get<double>();
  };

  const json* type = field("peft_type");
  if (!type || *type != "VERA") {
    throw fail(detail::concat("'peft_type' must be \"VERA\", got ", type ? type->dump() : "nothing"));
  }
  peft_vera_config c;
  const json* r = field("r");
  if (!r) throw fail("'r' is missing");
  c.r = cfg.positive_integer(*r, "'r'");
  detail::parse_peft_targets(field("target_modules"), source, c.target_modules, c.target_regex);
  if (const json* k = field("projection_prng_key")) {
    if (!k->is_number_integer() || (k->is_number_unsigned() && k->get<std::uint64_t>() > std::uint64_t{INT64_MAX})) {
      throw fail(detail::concat("'projection_prng_key' must be an integer, got ", shown(*k)));
    }
    c.projection_prng_key = k->get<std::int64_t>();
  }
  c.save_projection = flag("save_projection", true);
  c.d_initial = number("d_initial", 0.1);
  c.vera_dropout = number("vera_dropout", 0.0);
  if (c.vera_dropout < 0 || c.vera_dropout >= 1) {
    throw fail(detail::concat("'vera_dropout' must be in [0, 1), got ", c.vera_dropout));
  }
  if (const json* b = field("bias"); b && *b != "none") {
    throw refuse(detail::concat("'bias' is ", b->dump(),
                                "; rimc reads VeRA adapters with bias \"none\" (the layers' biases unchanged)"));
  }
  if (flag("fan_in_fan_out", false)) {
    throw refuse("'fan_in_fan_out' is true (transformers' Conv1D weights); rimc's linear layers store [out, in]");
  }
  if (const json* m = field("modules_to_save"); m && !(m->is_array() && m->empty())) {
    throw refuse(detail::concat("'modules_to_save' is ", m->dump(), "; rimc reads the VeRA vectors only"));
  }
  for (const char* name : {"layers_to_transform", "layers_pattern"}) {
    if (const json* v = field(name)) {
      throw refuse(detail::concat("'", name, "' is ", v->dump(), "; rimc resolves target_modules alone"));
    }
  }
  if (!c.save_projection) {
    throw refuse(detail::concat("'save_projection' is false: the projections would come from PyTorch's generator "
                                "seeded with projection_prng_key ",
                                c.projection_prng_key,
                                ", which rimc does not reproduce; save the adapter with save_projection=True"));
  }
  if (const json* b = field("base_model_name_or_path"); b && b->is_string()) {
    c.base_model_name_or_path = b->get<std::string>();
  }
  return c;
}

/// Reads and validates `dir`/adapter_config.json of a VeRA adapter.
[[nodiscard]] inline peft_vera_config read_peft_vera_config(const std::filesystem::path& dir) {
  return parse_peft_vera_config(detail::peft_config_text(dir), (dir / "adapter_config.json").string());
}

}  // namespace rimc
