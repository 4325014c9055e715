#pragma once
// The experiment both Fashion-MNIST programs run (calibrate_fashion_mnist, the
// demo, and calibration_sweeps, the paper's figures): load the shipped
// ResNet-20 teacher and the data once; per setting, program a fresh student
// onto crossbars, drift it, and measure each recovery method on the same chip.
// Not a public header: examples include it by relative path.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/device/presets.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/models.hpp>

#include "cli.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
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
  throw cli::usage_error(detail::concat("--preset: must be one of relative|cmo|neurram, got '", s, "'"));
}

/// --drift-bounds: where drift may take a conductance (device_config::bounds).
inline drift_bounds parse_drift_bounds(std::string_view s) {
  for (const drift_bounds b : {drift_bounds::physical, drift_bounds::floor_at_g_min, drift_bounds::programming_window})
    if (s == rimc::to_string(b)) return b;
  throw cli::usage_error(detail::concat("--drift-bounds: must be one of physical|floor-g-min|window, got '", s, "'"));
}

/// The --drift-bounds flag's help text.
inline constexpr const char* drift_bounds_help =
    "where drift may take a conductance: physical (G >= 0), floor-g-min (G >= g_min) or window ([g_min, g_max])";

/// --inference's help (the demo, the sweeps and the lifetime study).
inline constexpr const char* inference_help =
    "how calibrated adapters run at evaluation: factorised (the crossbar output, then the adapter, as the chip "
    "computes) or merged (one kernel per layer on the merged weights where the periphery is ideal: the same maths, "
    "float rounding aside, at the bare chip's cost)";

/// --training-kernel's help (the demo and the sweeps).
inline constexpr const char* training_kernel_help =
    "kernels of the adapters' calibration steps: shift-add (oneDNN GEMMs, the bits of the committed results) or "
    "direct (rimc's thin-convolution kernels: faster; backprop then rounds differently)";

/// --training-kernel's value ("shift-add" or "direct"; the flag's choice list has refused any other).
inline low_rank_kernel parse_training_kernel(std::string_view s) {
  return s == "direct" ? low_rank_kernel::direct : low_rank_kernel::shift_add;
}

/// Sets the inference form of every adapter of `net` that has a merged form (the others,
/// e.g. BN recalibration's affine adapters, stay factorised).
inline void use_inference(const graph& net, adapter_inference form) {
  for (const auto& [name, l] : adapted_layers(net))
    if (l->can_merge()) l->set_inference(form);
}

/// --inference's value ("factorised" or "merged"; the flag's choice list has refused any other).
inline adapter_inference parse_inference(std::string_view s) {
  return s == "merged" ? adapter_inference::merged : adapter_inference::factorised;
}

/// --loss-path: how each feature-KD step is computed (calibration_config::loss_path).
inline kd_loss_path parse_loss_path(std::string_view s) {
  for (const kd_loss_path p : {kd_loss_path::automatic, kd_loss_path::statistics, kd_loss_path::direct})
    if (s == rimc::to_string(p)) return p;
  throw cli::usage_error(detail::concat("--loss-path: must be one of automatic|statistics|direct, got '", s, "'"));
}

/// The shipped model's default path and the dataset's default directory (Debian's dataset-fashion-mnist).
inline const std::string default_model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
inline const std::string default_data = fashion_mnist_dir.string();

/// The largest adapter rank every conv2d and linear layer of ResNet-20 (1 x 28 x 28, 10 classes)
/// takes, with the layer that limits it: min(O, K, dora_config::max_rank) over the layers.
inline std::pair<std::int64_t, std::string> max_rank() {
  std::pair<std::int64_t, std::string> best{dora_config::max_rank, "any layer"};
  for (const auto& g : layer_geometries(resnet20(1, 10, 28))) {
    const auto limit = std::min(g.out_features, g.fan_in);
    if (limit < best.first) best = {limit, g.name};
  }
  return best;
}

/// Rejects a rank ResNet-20 cannot take (before anything is loaded).
inline void check_rank(std::string_view flag, std::int64_t rank) {
  const auto [limit, layer] = max_rank();
  if (rank < 1 || rank > limit) {
    throw cli::usage_error(detail::concat(flag, ": must be in [1, ", limit, "] (min(O, K) of layer '", layer, "' is ", limit,
                                          "), got ", rank));
  }
}

/// Rejects a dataset directory without Fashion-MNIST's files, and a number of
/// calibration samples or test images (from test image `test_offset` on) it
/// cannot provide (reads the headers only).
inline void check_data(const std::string& dir, std::int64_t samples, std::string_view samples_flag, std::int64_t test_images,
                       std::int64_t test_offset = 0) {
  cli::check_input_dir("--data", dir);
  std::int64_t train = 0, test = 0;
  try {
    train = mnist_like_size(dir, "train");
    test = mnist_like_size(dir, "test");
  } catch (const rimc::error& e) {
    throw cli::usage_error(detail::concat("--data: ", detail::message_of(e)));
  }
  if (samples > train) {
    throw cli::usage_error(detail::concat(samples_flag, ": must be at most the ", train, " training images of '", dir,
                                          "', got ", samples));
  }
  if (test_offset == 0 && test_images > test) {
    throw cli::usage_error(detail::concat("--test-images: must be at most the ", test, " test images of '", dir, "', got ",
                                          test_images));
  }
  if (test_offset > 0 && test_offset + test_images > test) {
    throw cli::usage_error(detail::concat("--test-offset and --test-images: test images ", test_offset, " to ",
                                          test_offset + test_images - 1, " asked, '", dir, "' has ", test));
  }
}

/// Feature-KD settings of the lab's programs (rank r, `steps` Adam steps per layer at `lr`).
inline calibration_config feature_kd_config(std::int64_t rank, int steps, double lr, std::uint64_t seed,
                                            bool teacher_norms, kd_loss_path path) {
  calibration_config cfg;
  cfg.rank = rank;
  cfg.steps = steps;
  cfg.lr = lr;
  cfg.seed = seed;
  cfg.magnitude_from_teacher = teacher_norms;
  cfg.loss_path = path;
  return cfg;
}

/// Backprop-baseline settings of the lab's programs (all adapters jointly, `steps` Adam steps at
/// `lr`, ce x cross-entropy + kl x KL to the teacher at `temperature`).
inline backprop_config backprop_settings(std::int64_t rank, int steps, double lr, double ce, double kl, double temperature,
                                         std::uint64_t seed) {
  backprop_config cfg;
  cfg.rank = rank;
  cfg.steps = steps;
  cfg.lr = lr;
  cfg.ce_weight = ce;
  cfg.kl_weight = kl;
  cfg.temperature = temperature;
  cfg.seed = seed;
  return cfg;
}

inline const char* to_string(drift_preset p) {
  switch (p) {
    case drift_preset::relative: return "relative";
    case drift_preset::cmo: return "cmo";
    case drift_preset::neurram: return "neurram";
  }
  return "?";
}

/// The wire resistance of the realistic chip: 1 ohm per cell-to-cell segment
/// of the 256 x 256 tiles (word and bit lines alike).
inline constexpr double realistic_wire_ohm = 1.0;
/// Reference images the percentile ADCs are calibrated on after programming.
inline constexpr std::int64_t adc_reference_images = 32;

/// The --chip flag's help text.
inline constexpr const char* chip_help =
    "ideal: exact read-out; realistic: 8-bit per-column ADC and 8-bit DAC (ranges from 32 reference images), CMO read "
    "noise, stuck-at faults 1.75% / 9.04% with fault-aware programming, 1 ohm wire segments on 256 x 256 tiles";

/// One chip: device, drift, periphery and seeds.
struct chip_config {
  drift_preset preset = drift_preset::relative;
  double rho = 0.2;             ///< relative drift level (preset relative)
  double time_s = 86400;        ///< time since programming (presets cmo, neurram)
  double g_min_ratio = 0;       ///< preset relative: g_min = ratio * g_max (0: the paper's ideal mapping)
  drift_bounds bounds = drift_bounds::physical;  ///< where drift may take a conductance
  stuck_at_faults faults{};                      ///< stuck-at fault fractions (none by default)
  double wire_ohm = 0;                           ///< wire segment resistance (IR drop, fast model), ohm
  bool fault_aware = false;                      ///< fault-aware programming (device_config::fault_aware_programming)
  bool fault_aware_rows = false;                 ///< fault-aware row order (device_config::fault_aware_row_order)
  int adc_bits = 0;          ///< per-column percentile ADC of this many bits (0: ideal read-out)
  int dac_bits = 0;          ///< input DAC of this many bits, range calibrated per layer like the ADC (0: ideal inputs)
  bool read_noise = false;   ///< per-read noise of the CMO ReRAM form at the chip's time since programming
  bool adc_per_tile = false;  ///< one ADC range per tile and slice instead of one per column
  /// ADC range = this multiple of the 99.99th percentile of the reference currents: the
  /// reference images are few (32), and at 1.5 test images beyond them were clipped on
  /// some realistic chips (README, "A realistic chip": 91.62 +- 1.10 against 92.26 +- 0.29 at 2)
  double adc_headroom = 2.0;
  std::uint64_t program_seed = 0;
  std::uint64_t drift_seed = 1;

  /// The realistic chip on top of `c`'s device and drift: 8-bit per-column
  /// ADC with ranges calibrated on reference images, 8-bit DAC, read noise,
  /// the measured stuck-at fractions with fault-aware programming and row
  /// order, and IR drop at realistic_wire_ohm on 256 x 256 tiles.
  [[nodiscard]] static chip_config realistic(chip_config c) {
    c.adc_bits = 8;
    c.dac_bits = 8;
    c.read_noise = true;
    c.faults = presets::hfox_stuck_at();
    c.fault_aware = true;
    c.fault_aware_rows = true;
    c.wire_ohm = realistic_wire_ohm;
    return c;
  }
  /// Whether the chip computes through the tile-exact path (an ADC, a DAC or read noise).
  [[nodiscard]] bool tile_exact() const noexcept { return adc_bits > 0 || dac_bits > 0 || read_noise; }

  void validate() const {
    if (!(rho >= 0) || !std::isfinite(rho)) throw value_error(detail::concat("chip_config: rho must be >= 0, got ", rho));
    if (!(time_s >= 0) || !std::isfinite(time_s)) throw value_error(detail::concat("chip_config: time_s must be >= 0, got ", time_s));
    if (!(g_min_ratio >= 0 && g_min_ratio < 1)) {
      throw value_error(detail::concat("chip_config: g_min_ratio must be in [0, 1), got ", g_min_ratio));
    }
    faults.validate();
    wire_config{wire_ohm}.validate();
    if (adc_bits != 0) detail::check_int_range("chip_config", "adc_bits", adc_bits, 2, 16);
    if (dac_bits != 0) detail::check_int_range("chip_config", "dac_bits", dac_bits, 2, 16);
    detail::check_finite_value("chip_config", "adc_headroom", adc_headroom);
    if (!(adc_headroom >= 1)) throw value_error(detail::concat("chip_config: adc_headroom must be >= 1, got ", adc_headroom));
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
    opt.device.bounds = bounds;
    opt.device.faults = faults;
    opt.device.fault_aware_programming = fault_aware;
    opt.device.fault_aware_row_order = fault_aware_rows;
    opt.periphery.wires.segment_ohm = wire_ohm;
    if (adc_bits > 0) {
      opt.periphery.adc = adc_config{adc_bits, adc_range_mode::percentile, 0.0, 99.99, !adc_per_tile, adc_headroom};
    }
    if (dac_bits > 0) opt.periphery.dac = dac_config{dac_bits, dac_scaling::calibrated, 1.0, 99.99};
    // The CMO ReRAM read noise grows with the time since programming; the relative preset's chip is read at 1 day.
    if (read_noise) {
      opt.periphery.read = presets::cmo_reram_read_noise(seconds{preset == drift_preset::relative ? 86400.0 : std::max(time_s, 1.0)});
    }
    opt.periphery.noise_seed = detail::mix_seed(program_seed, 0x52454144);  // "READ"
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

/// Mean, sample standard deviation (0 for one value), min and max of a
/// setting's accuracies over its chips: what the summary CSVs report.
struct spread {
  double mean = 0, sd = 0, lo = 0, hi = 0;
};

/// Top-1 in percent as the studies' CSVs record it: 100 x hits / images, correctly rounded (on the
/// 10k test set that is the two-decimal value itself, e.g. 92.99).
[[nodiscard]] inline double top1_percent(const eval_result& e) {
  const double n = static_cast<double>(e.images);
  return 100.0 * std::round(e.top1 * n) / n;
}

/// `v` as the shortest text that reads back as the same double ("92.99", "31.333333333333332"), so
/// that a summary computed from a CSV equals one computed from the run.
[[nodiscard]] inline std::string exact(double v) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

/// The spread of `values` (at least one), accumulated in their order.
inline spread spread_of(const std::vector<double>& values) {
  spread s{0, 0, 1e300, -1e300};
  for (const double v : values) {
    s.mean += v;
    s.lo = std::min(s.lo, v);
    s.hi = std::max(s.hi, v);
  }
  const double n = static_cast<double>(values.size());
  s.mean /= n;
  double var = 0;
  for (const double v : values) var += (v - s.mean) * (v - s.mean);
  s.sd = values.size() > 1 ? std::sqrt(var / (n - 1)) : 0.0;
  return s;
}

/// A student programmed onto crossbars and drifted; methods are tried on it in turn.
class drifted_chip {
 public:
  /// `adc_reference`: images the percentile ADCs are calibrated on right after programming.
  drifted_chip(const std::string& model, const chip_config& cfg, const Tensor& adc_reference) : net_(load_folded(model)) {
    cfg.validate();
    const auto t0 = std::chrono::steady_clock::now();
    chip_ = deploy_analog(net_, cfg.options());
    writes_programmed_ = chip_.rram_writes();
    chip_.calibrate_adc(net_, adc_reference);  // the ADC and DAC ranges, if the chip has them
    // Per-column drift compensation needs a reference read right after programming.
    chip_.for_each([&](const std::string&, auto& a) {
      comp_.emplace_back(compensation_kind::per_column).record_reference(a);
    });
    switch (cfg.preset) {
      case drift_preset::relative: chip_.drift_to(relative_drift{}, drift_level{cfg.rho}, cfg.drift_seed); break;
      case drift_preset::cmo: chip_.drift_to(presets::cmo_reram_drift(), seconds{cfg.time_s}, cfg.drift_seed); break;
      case drift_preset::neurram: chip_.drift_to(presets::neurram_relaxation(), seconds{cfg.time_s}, cfg.drift_seed); break;
    }
    // The ranges follow the arrays: set again on the drifted chip (periphery only, no RRAM write).
    chip_.calibrate_adc(net_, adc_reference);
    deploy_seconds_ = seconds_since(t0);
  }

  [[nodiscard]] network& net() noexcept { return net_; }
  [[nodiscard]] std::uint64_t writes_programmed() const noexcept { return writes_programmed_; }
  [[nodiscard]] std::uint64_t rram_writes() const { return chip_.rram_writes(); }
  [[nodiscard]] fault_count stuck_cells() const { return chip_.stuck_cells(); }
  [[nodiscard]] double deploy_seconds() const noexcept { return deploy_seconds_; }

  /// Per-column digital gains from the reference read (on) or unit gains (off).
  void compensate(bool on) {
    std::size_t i = 0;
    chip_.for_each([&](const std::string&, auto& a) {
      a.set_column_gain(on ? comp_[i].gains(a)
                           : std::vector<float>(static_cast<std::size_t>(a.effective_weights().dim(0)), 1.0f));
      ++i;
    });
  }

  /// Back to the bare drifted chip: no adapters, unit gains.
  void reset() {
    detach_adapters(net_);
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
  /// `eval_batch`: test images per forward in evaluate(); `data`: the dataset directory;
  /// evaluate() runs test images [test_offset, test_offset + test_images) (those the set has).
  explicit fashion_mnist_lab(std::string model, std::int64_t test_images = 10000, std::int64_t eval_batch = 250,
                             const std::string& data = default_data, std::int64_t test_offset = 0)
      : model_(std::move(model)),
        eval_batch_(eval_batch),
        train_(load_mnist_like(data, "train")),
        test_(load_mnist_like(data, "test")),
        teacher_(load_folded(model_)) {
    if (test_images < 1) throw value_error(detail::concat("--test-images must be >= 1, got ", test_images));
    if (eval_batch < 1) throw value_error(detail::concat("--eval-batch must be >= 1, got ", eval_batch));
    if (test_offset < 0 || test_offset >= test_.size()) {
      throw value_error(detail::concat("--test-offset must be in [0, ", test_.size() - 1, "], got ", test_offset));
    }
    if (test_offset > 0 || test_images < test_.size()) {
      const auto count = std::min(test_images, test_.size() - test_offset);
      std::vector<std::int64_t> picked(static_cast<std::size_t>(count));
      for (std::size_t i = 0; i < picked.size(); ++i) picked[i] = test_offset + static_cast<std::int64_t>(i);
      test_ = test_.subset(picked);
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
    const dataset reference = calibration_set(adc_reference_images, detail::mix_seed(cfg.program_seed, 0x414443));  // "ADC"
    return std::make_unique<drifted_chip>(model_, cfg, reference.images);
  }

 private:
  std::string model_;
  std::int64_t eval_batch_;
  dataset train_, test_;
  network teacher_;
};

}  // namespace rimc::lab
