#pragma once
// The experiment both Fashion-MNIST programs run (calibrate_fashion_mnist, the
// demo, and calibration_sweeps, the paper's figures): load the shipped
// ResNet-20 teacher and the data once; per setting, program a fresh student
// onto crossbars, drift it, and measure each recovery method on the same chip.
// Not a public header: examples include it by relative path.

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/models.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace rimc::lab {

/// Which drift the chip sees.
enum class drift_preset : std::uint8_t {
  relative,  ///< the paper's G + rho G xi on a 0-40 uS (or g_min-40 uS) differential 8-bit cell
  cmo,       ///< HfOx/CMO ReRAM (9-88 uS, 0.2% write-verify noise), log-time relaxation at time t
  neurram,   ///< NeuRRAM (1-40 uS), measured relaxation at time t (held outside 1 s - 2 days)
};

inline drift_preset parse_preset(std::string_view s) {
  if (s == "relative") return drift_preset::relative;
  if (s == "cmo") return drift_preset::cmo;
  if (s == "neurram") return drift_preset::neurram;
  throw value_error(detail::concat("--preset must be relative, cmo or neurram, got '", s, "'"));
}

/// --loss-path: how each feature-KD step is computed (calibration_config::loss_path).
inline kd_loss_path parse_loss_path(std::string_view s) {
  for (const kd_loss_path p : {kd_loss_path::automatic, kd_loss_path::statistics, kd_loss_path::direct})
    if (s == rimc::to_string(p)) return p;
  throw value_error(detail::concat("--loss-path must be automatic, statistics or direct, got '", s, "'"));
}

inline const char* to_string(drift_preset p) {
  switch (p) {
    case drift_preset::relative: return "relative";
    case drift_preset::cmo: return "cmo";
    case drift_preset::neurram: return "neurram";
  }
  return "?";
}

/// One chip: device, drift and seeds.
struct chip_config {
  drift_preset preset = drift_preset::relative;
  double rho = 0.2;             ///< relative drift level (preset relative)
  double time_s = 86400;        ///< time since programming (presets cmo, neurram)
  double g_min_ratio = 0;       ///< preset relative: g_min = ratio * g_max (0: the paper's ideal mapping)
  std::uint64_t program_seed = 0;
  std::uint64_t drift_seed = 1;

  void validate() const {
    if (!(rho >= 0) || !std::isfinite(rho)) throw value_error(detail::concat("chip_config: rho must be >= 0, got ", rho));
    if (!(time_s >= 0) || !std::isfinite(time_s)) throw value_error(detail::concat("chip_config: time_s must be >= 0, got ", time_s));
    if (!(g_min_ratio >= 0 && g_min_ratio < 1)) {
      throw value_error(detail::concat("chip_config: g_min_ratio must be in [0, 1), got ", g_min_ratio));
    }
  }

  [[nodiscard]] analog_options options() const {
    analog_options opt;
    switch (preset) {
      case drift_preset::relative:
        opt.device.g_max_us = 40.0;
        opt.device.g_min_us = g_min_ratio * opt.device.g_max_us;
        break;
      case drift_preset::cmo: opt.device = presets::cmo_reram_device(); break;
      case drift_preset::neurram: opt.device = presets::neurram_device(); break;
    }
    opt.program_seed = program_seed;
    return opt;
  }
};

inline network load_folded(const std::string& path) {
  network net = resnet20(1, 10, 28);
  net.load(path);
  net.fold_batch_norm();
  return net;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// A student programmed onto crossbars and drifted; methods are tried on it in turn.
class drifted_chip {
 public:
  drifted_chip(const std::string& model, const chip_config& cfg) : net_(load_folded(model)) {
    cfg.validate();
    const auto t0 = std::chrono::steady_clock::now();
    chip_ = deploy_analog(net_, cfg.options());
    writes_programmed_ = chip_.rram_writes();
    // Per-column drift compensation needs a reference read right after programming.
    for (auto& c : chip_.convs_) comp_.emplace_back(compensation_kind::per_column).record_reference(c->analog());
    for (auto& l : chip_.linears_) comp_.emplace_back(compensation_kind::per_column).record_reference(l->analog());
    switch (cfg.preset) {
      case drift_preset::relative: chip_.drift_to(relative_drift{}, cfg.rho, cfg.drift_seed); break;
      case drift_preset::cmo: chip_.drift_to(presets::cmo_reram_drift(), cfg.time_s, cfg.drift_seed); break;
      case drift_preset::neurram: chip_.drift_to(presets::neurram_relaxation(), cfg.time_s, cfg.drift_seed); break;
    }
    deploy_seconds_ = seconds_since(t0);
  }

  [[nodiscard]] network& net() noexcept { return net_; }
  [[nodiscard]] std::uint64_t writes_programmed() const noexcept { return writes_programmed_; }
  [[nodiscard]] std::uint64_t rram_writes() const { return chip_.rram_writes(); }
  [[nodiscard]] double deploy_seconds() const noexcept { return deploy_seconds_; }

  /// Per-column digital gains from the reference read (on) or unit gains (off).
  void compensate(bool on) {
    std::size_t i = 0;
    auto apply = [&](auto& layer) {
      auto& a = layer->analog();
      a.set_column_gain(on ? comp_[i].gains(a)
                           : std::vector<float>(static_cast<std::size_t>(layer->effective_weights().dim(0)), 1.0f));
      ++i;
    };
    for (auto& c : chip_.convs_) apply(c);
    for (auto& l : chip_.linears_) apply(l);
  }

  /// Back to the bare drifted chip: no adapters, unit gains.
  void reset() {
    net_.detach_adapters();
    compensate(false);
  }

 private:
  network net_;
  analog_deployment<> chip_;
  std::vector<drift_compensation> comp_;
  std::uint64_t writes_programmed_ = 0;
  double deploy_seconds_ = 0;
};

/// The teacher and the data, loaded once.
class fashion_mnist_lab {
 public:
  /// `eval_batch`: test images per forward in evaluate().
  explicit fashion_mnist_lab(std::string model, std::int64_t test_images = 10000, std::int64_t eval_batch = 250)
      : model_(std::move(model)),
        eval_batch_(eval_batch),
        train_(load_mnist_like(fashion_mnist_dir, "train")),
        test_(load_mnist_like(fashion_mnist_dir, "test")),
        teacher_(load_folded(model_)) {
    if (test_images < 1) throw value_error(detail::concat("--test-images must be >= 1, got ", test_images));
    if (eval_batch < 1) throw value_error(detail::concat("--eval-batch must be >= 1, got ", eval_batch));
    if (test_images < test_.size()) {
      std::vector<std::int64_t> first(static_cast<std::size_t>(test_images));
      for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<std::int64_t>(i);
      test_ = test_.subset(first);
    }
  }

  [[nodiscard]] const network& teacher() const noexcept { return teacher_; }
  [[nodiscard]] const dataset& test() const noexcept { return test_; }
  [[nodiscard]] const std::string& model() const noexcept { return model_; }

  /// N training images drawn without replacement by `seed`.
  [[nodiscard]] dataset calibration_set(std::int64_t n, std::uint64_t seed) const {
    return train_.subset(sample_indices(train_.size(), n, seed));
  }

  [[nodiscard]] eval_result evaluate(const network& net) const { return rimc::evaluate(net, test_, eval_batch_, false); }

  [[nodiscard]] std::unique_ptr<drifted_chip> drift(const chip_config& cfg) const {
    return std::make_unique<drifted_chip>(model_, cfg);
  }

 private:
  std::string model_;
  std::int64_t eval_batch_;
  dataset train_, test_;
  network teacher_;
};

}  // namespace rimc::lab
