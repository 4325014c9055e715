#pragma once
/// \file
/// Drift-aware schedules (docs/formulas.md, sec. 3): a chip's adapters get a
/// different parameter set depending on the time elapsed since programming.
/// A drift_schedule holds levels; level i holds one parameter set (every
/// adapted layer's tensors by file name, as the adapter's tensors() gives
/// them, so any adapter type works) and is in force from `from_s` on, until
/// the next level's `from_s`. Two ways to fill it:
///
/// - offline, before deployment: for each level, calibrate one set on
///   simulated chips drifted to the level's time (calibrate_feature_kd_ensemble)
///   and capture() it; the deployed chip needs no field data;
/// - in the field: recalibrate on the chip at chosen times and capture() each.
///
/// Levels are placed either by time (log_spaced_times; each level then
/// serves the times nearest to its own in log time: nearest_in_log_time
/// gives the from_s values) or by an accuracy-loss bound
/// (place_levels_by_bound: a new level starts where the current one's loss
/// first exceeds the bound). Files: one safetensors file, tensors
/// "level.`i`/`layer`/`key`", the config (format, kind, from_s and time_s of
/// every level) in its metadata.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/core/units.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/graph.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace rimc {

/// One parameter set: adapted layer name -> the adapter's tensors by file name.
using adapter_set = std::map<std::string, std::map<std::string, Tensor>>;

/// The tensors of every adapter of kind `kind` attached to `net` (value_error
/// if none is, or if an adapted layer has another kind).
[[nodiscard]] inline adapter_set capture_adapters(const graph& net, std::string_view kind) {
  adapter_set set;
  for (const auto& [name, l] : adapted_layers(net)) {
    if (l->adapter_kind() != kind) {
      throw value_error(detail::concat("capture_adapters: layer '", name, "' has a ", l->adapter_kind(),
                                       " adapter, the schedule holds ", kind, " adapters"));
    }
    auto& m = set[name];
    for (auto& [key, t] : l->adapter_tensors()) m.emplace(key, t);
  }
  if (set.empty()) throw value_error(detail::concat("capture_adapters: the network has no ", kind, " adapter attached"));
  return set;
}

/// Loads `set` into the adapters attached to `net`, all or nothing: every
/// layer of the set must be adapted with kind `kind`, and a load that fails
/// (a wrong shape, a missing tensor, a NaN) puts back what the earlier
/// layers had.
inline void load_adapters(graph& net, std::string_view kind, const adapter_set& set) {
  const auto layers = adapted_layers(net);
  for (const auto& [name, tensors] : set) {
    const auto it = layers.find(name);
    if (it == layers.end()) throw value_error(detail::concat("load_adapters: layer '", name, "' has no adapter attached"));
    if (it->second->adapter_kind() != kind) {
      throw value_error(detail::concat("load_adapters: layer '", name, "' has a ", it->second->adapter_kind(),
                                       " adapter, the set is for ", kind, " adapters"));
    }
  }
  std::vector<std::pair<adapted_layer_base*, std::map<std::string, Tensor>>> before;
  try {
    for (const auto& [name, tensors] : set) {
      adapted_layer_base& l = *layers.at(name);
      std::map<std::string, Tensor> old;
      for (auto& [key, t] : l.adapter_tensors()) old.emplace(key, t);
      l.load_adapter_tensors(tensors);
      before.emplace_back(&l, std::move(old));
    }
  } catch (const error&) {
    for (auto it = before.rbegin(); it != before.rend(); ++it) it->first->load_adapter_tensors(it->second);
    detail::rethrow_in("load_adapters");
  }
}

/// `n` times from `first_s` to `last_s` evenly spaced in log time, s.
[[nodiscard]] inline std::vector<double> log_spaced_times(double first_s, double last_s, int n) {
  if (!(first_s > 0) || !std::isfinite(first_s) || !(last_s >= first_s) || !std::isfinite(last_s)) {
    throw value_error(detail::concat("log_spaced_times: need 0 < first_s <= last_s, finite, got first_s = ", first_s,
                                     " and last_s = ", last_s));
  }
  if (n < 1) throw value_error(detail::concat("log_spaced_times: n must be >= 1, got ", n));
  std::vector<double> t(static_cast<std::size_t>(n), first_s);
  const double l0 = std::log(first_s), l1 = std::log(last_s);
  for (int i = 1; i < n; ++i) t[static_cast<std::size_t>(i)] = std::exp(l0 + (l1 - l0) * i / (n - 1));
  if (n > 1) t.back() = last_s;
  return t;
}

/// The from_s of levels fitted at increasing `times` when each serves the
/// times nearest to its own in log time: 0, then the geometric means of neighbours.
[[nodiscard]] inline std::vector<double> nearest_in_log_time(std::span<const double> times) {
  std::vector<double> from(times.size(), 0.0);
  for (std::size_t i = 1; i < times.size(); ++i) {
    if (!(times[i] > times[i - 1]) || !(times[i - 1] > 0)) {
      throw value_error(detail::concat("nearest_in_log_time: times must be > 0 and increasing, got ", times[i - 1],
                                       " then ", times[i]));
    }
    from[i] = std::sqrt(times[i - 1] * times[i]);
  }
  return from;
}

/// Level placement by an accuracy-loss bound over a grid of candidate times
/// (increasing): a level is fitted at grid[0] (`fit(t)`), and serves the
/// following grid times while `loss(level, t)` stays at most `bound`; the
/// first grid time past the bound gets a new level fitted there, and so on.
/// Returns the indices into `grid` where levels start (the first is 0).
/// A level whose loss exceeds the bound at its own time still serves it (a
/// finer grid or a larger bound is then needed; the caller sees it in the losses).
template <class Fit, class Loss>
[[nodiscard]] std::vector<std::size_t> place_levels_by_bound(std::span<const double> grid, double bound, Fit&& fit,
                                                             Loss&& loss) {
  if (grid.empty()) throw value_error("place_levels_by_bound: the grid of candidate times is empty");
  if (!(bound >= 0) || !std::isfinite(bound)) {
    throw value_error(detail::concat("place_levels_by_bound: bound must be >= 0 and finite, got ", bound));
  }
  for (std::size_t i = 1; i < grid.size(); ++i)
    if (!(grid[i] > grid[i - 1])) {
      throw value_error(detail::concat("place_levels_by_bound: grid times must increase, got ", grid[i - 1], " then ",
                                       grid[i]));
    }
  std::vector<std::size_t> starts{0};
  auto level = fit(grid[0]);
  for (std::size_t i = 1; i < grid.size(); ++i) {
    if (loss(level, grid[i]) > bound) {
      starts.push_back(i);
      level = fit(grid[i]);
    }
  }
  return starts;
}

/// One level of a schedule.
struct schedule_level {
  double from_s = 0;  ///< the level is in force from this time since programming on, s
  double time_s = 0;  ///< the time its set was made for (fitted or recalibrated at), s
  adapter_set set;    ///< the parameters
};

/// Parameter sets by time since programming (see the file comment).
class drift_schedule {
 public:
  /// The file format's name, written to and required in the metadata.
  static constexpr const char* format = "rimc.drift_schedule";
  /// The file format's version, written to and required in the metadata.
  static constexpr int version = 1;

  /// An empty schedule of adapters of kind `kind` ("dora", "vera", ...).
  explicit drift_schedule(std::string kind) : kind_(std::move(kind)) {
    if (kind_.empty()) throw value_error("drift_schedule: the adapter kind is empty");
  }

  /// The adapter kind the sets are for.
  [[nodiscard]] const std::string& kind() const noexcept { return kind_; }
  /// Number of levels.
  [[nodiscard]] std::size_t size() const noexcept { return levels_.size(); }
  /// Level i.
  [[nodiscard]] const schedule_level& level(std::size_t i) const { return levels_.at(i); }

  /// Adds a level in force from `from_s` (after every level so far; the first
  /// from 0, or later) with the set made for `time_s`. Every level must hold
  /// the same layers and tensor shapes as the first.
  void add(double from_s, double time_s, adapter_set set) {
    const bool first = levels_.empty();
    if (!(from_s >= 0) || !std::isfinite(from_s) || (!first && !(from_s > levels_.back().from_s))) {
      throw value_error(detail::concat("drift_schedule::add: from_s must be finite, >= 0 and after the last level's ",
                                       first ? 0.0 : levels_.back().from_s, " s, got ", from_s));
    }
    if (!(time_s >= 0) || !std::isfinite(time_s)) {
      throw value_error(detail::concat("drift_schedule::add: time_s must be >= 0 and finite, got ", time_s));
    }
    if (set.empty()) throw value_error("drift_schedule::add: the set holds no layer");
    for (const auto& [name, tensors] : set) {
      if (name.find('/') != std::string::npos) {
        throw value_error(detail::concat("drift_schedule::add: layer name '", name, "' contains '/'"));
      }
      for (const auto& [key, t] : tensors) {
        if (key.find('/') != std::string::npos) {
          throw value_error(detail::concat("drift_schedule::add: tensor key '", key, "' of layer '", name, "' contains '/'"));
        }
        check_finite(detail::concat("drift_schedule::add: layer '", name, "' tensor '", key, "'"), t);
      }
    }
    if (!first) check_like_first(set, "drift_schedule::add");
    levels_.push_back({from_s, time_s, std::move(set)});
  }

  /// The level in force at time t since programming: the last one with from_s <= t (the first before it).
  [[nodiscard]] std::size_t level_at(seconds t) const {
    if (levels_.empty()) throw value_error("drift_schedule::level_at: the schedule has no level");
    if (!(t.value >= 0) || !std::isfinite(t.value)) {
      throw value_error(detail::concat("drift_schedule::level_at: t must be >= 0 and finite, got ", t.value));
    }
    std::size_t i = 0;
    while (i + 1 < levels_.size() && levels_[i + 1].from_s <= t.value) ++i;
    return i;
  }

  /// Loads level i's set into the adapters attached to `net` (load_adapters: all or nothing).
  void apply(graph& net, std::size_t i) const {
    if (i >= levels_.size()) {
      throw value_error(detail::concat("drift_schedule::apply: level ", i, " of a schedule with ", levels_.size(), " levels"));
    }
    load_adapters(net, kind_, levels_[i].set);
  }
  /// Loads the set in force at time t; returns its level.
  std::size_t apply_at(graph& net, seconds t) const {
    const std::size_t i = level_at(t);
    apply(net, i);
    return i;
  }

  /// Values stored over all levels.
  [[nodiscard]] std::int64_t parameters() const noexcept {
    std::int64_t n = 0;
    for (const auto& l : levels_)
      for (const auto& [name, tensors] : l.set)
        for (const auto& [key, t] : tensors) n += t.numel();
    return n;
  }

  /// Writes the schedule to `path` atomically (safetensors, config in the metadata).
  void save(const std::filesystem::path& path) const {
    if (levels_.empty()) throw value_error("drift_schedule::save: the schedule has no level");
    std::map<std::string, Tensor> tensors;
    nlohmann::json from = nlohmann::json::array(), times = nlohmann::json::array();
    for (std::size_t i = 0; i < levels_.size(); ++i) {
      from.push_back(levels_[i].from_s);
      times.push_back(levels_[i].time_s);
      for (const auto& [name, ts] : levels_[i].set)
        for (const auto& [key, t] : ts) tensors.emplace(detail::concat("level.", i, "/", name, "/", key), t);
    }
    save_safetensors(path, tensors,
                     {{"format", format}, {"version", std::to_string(version)}, {"kind", kind_},
                      {"from_s", from.dump()}, {"time_s", times.dump()}});
  }

  /// Reads a schedule written by save(); every field is checked (io_error / value_error naming it).
  [[nodiscard]] static drift_schedule load(const std::filesystem::path& path) {
    const safetensors_file f = safetensors_file::load(path);
    const auto& md = f.metadata();
    const auto field = [&](const char* key) -> const std::string& {
      const auto it = md.find(key);
      if (it == md.end()) throw io_error(detail::concat(path.string(), ": metadata has no '", key, "'"));
      return it->second;
    };
    if (field("format") != format) {
      throw io_error(detail::concat(path.string(), ": metadata 'format' must be '", format, "', got '", field("format"), "'"));
    }
    if (field("version") != std::to_string(version)) {
      throw io_error(detail::concat(path.string(), ": metadata 'version' must be ", version, ", got '", field("version"), "'"));
    }
    const auto numbers = [&](const char* key) {
      nlohmann::json j = nlohmann::json::parse(field(key), nullptr, false);
      if (!j.is_array()) throw io_error(detail::concat(path.string(), ": metadata '", key, "' is not a JSON array"));
      std::vector<double> v;
      for (const auto& e : j) {
        if (!e.is_number()) throw io_error(detail::concat(path.string(), ": metadata '", key, "' holds a non-number"));
        v.push_back(e.get<double>());
      }
      return v;
    };
    const std::vector<double> from = numbers("from_s"), times = numbers("time_s");
    if (from.size() != times.size() || from.empty()) {
      throw io_error(detail::concat(path.string(), ": metadata 'from_s' has ", from.size(), " values and 'time_s' ",
                                    times.size(), "; need the same number, at least one"));
    }
    std::vector<adapter_set> sets(from.size());
    for (const auto& info : f.tensors()) {
      const std::string& k = info.name;
      const auto s1 = k.find('/'), s2 = s1 == std::string::npos ? s1 : k.find('/', s1 + 1);
      std::size_t level = 0;
      bool ok = k.rfind("level.", 0) == 0 && s2 != std::string::npos && s1 > 6;
      if (ok) {
        const std::string idx = k.substr(6, s1 - 6);
        ok = idx.find_first_not_of("0123456789") == std::string::npos && idx.size() < 9;
        if (ok) level = static_cast<std::size_t>(std::stoul(idx));
      }
      if (!ok || level >= sets.size()) {
        throw io_error(detail::concat(path.string(), ": tensor '", k, "' is not 'level.i/layer/key' with i below ",
                                      sets.size()));
      }
      sets[level][k.substr(s1 + 1, s2 - s1 - 1)].emplace(k.substr(s2 + 1), f.tensor(k));
    }
    drift_schedule s(field("kind"));
    try {
      for (std::size_t i = 0; i < sets.size(); ++i) s.add(from[i], times[i], std::move(sets[i]));
    } catch (const error&) {
      detail::rethrow_in(path.string());
    }
    return s;
  }

 private:
  void check_like_first(const adapter_set& set, const char* who) const {
    const adapter_set& ref = levels_.front().set;
    if (set.size() != ref.size()) {
      throw value_error(detail::concat(who, ": the set holds ", set.size(), " layers, the first level ", ref.size()));
    }
    for (const auto& [name, tensors] : ref) {
      const auto it = set.find(name);
      if (it == set.end()) throw value_error(detail::concat(who, ": the set has no layer '", name, "'"));
      if (it->second.size() != tensors.size()) {
        throw value_error(detail::concat(who, ": layer '", name, "' holds ", it->second.size(), " tensors, the first level ",
                                         tensors.size()));
      }
      for (const auto& [key, t] : tensors) {
        const auto jt = it->second.find(key);
        if (jt == it->second.end()) throw value_error(detail::concat(who, ": layer '", name, "' has no tensor '", key, "'"));
        check_same_shape(detail::concat(who, ": layer '", name, "' tensor '", key, "'"), jt->second.shape(), t.shape());
      }
    }
  }

  std::string kind_;
  std::vector<schedule_level> levels_;
};

}  // namespace rimc
