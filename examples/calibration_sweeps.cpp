// The paper's figures on Fashion-MNIST (see tools/sweeps.sh, which runs every
// sweep and renders the plots): each sweep programs fresh drifted chips of the
// shipped ResNet-20 and measures every recovery method on the same chip,
// over several drift seeds, on the test set.
//
//   calibration_sweeps --sweep rho|time|samples|bp-tune|resnet50 [options]   (--help lists them)
//
// rho:      accuracy vs relative drift (mappings g_min = 0, and g_min = g_max / 10 at --realistic-rhos): drifted,
//           per-column compensation, feature KD (m from the drifted or the teacher's norms), backprop.
// time:     accuracy vs time since programming (1 s .. 10 years), CMO-ReRAM and NeuRRAM presets.
// samples:  accuracy vs calibration samples N at rho = 0.2, feature KD vs backprop, ranks 2 and 4.
// bp-tune:  the backprop baseline's learning rate, loss (CE, KL, CE + KL) and steps at N = 10.
// resnet50: adapter parameters as a share of ResNet-50's weights at ranks 1 to 8.
//
// --chip realistic runs every chip of a sweep with the realistic periphery and faults (the demo's --chip).
// Writes <out>/<sweep>.csv (one row per chip and method) and <out>/<sweep>_summary.csv
// (mean, standard deviation, min and max over the seeds, in percent).

#include "cli.hpp"
#include "fashion_mnist_lab.hpp"

#include <rimc/io/atomic_file.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace {

using namespace rimc;

struct args {
  std::string sweep;
  // The backprop baseline as tuned by the bp-tune sweep (KL to the teacher's logits only, lr 1e-3, 100 steps).
  int seeds = 5, threads = 2, steps = 100, bp_steps = 100;
  double lr = 1e-2, bp_lr = 1e-3, bp_ce = 0.0, bp_kl = 1.0, bp_temperature = 4.0;
  std::int64_t test_images = 10000;
  std::vector<double> rhos{0, 0.05, 0.1, 0.2, 0.3};
  std::vector<double> realistic_rhos{0.1, 0.2, 0.3};  // the g_min = g_max / 10 mapping
  std::vector<std::int64_t> samples{1, 2, 5, 10, 20, 50, 100};
  std::vector<std::int64_t> ranks{2, 4};
  std::vector<double> bp_lrs{1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2};  // bp-tune's grid
  std::vector<double> bp_temps{4};
  std::string out = "examples/results";
  std::string model = lab::default_model;
  std::string data = lab::default_data;
  kd_loss_path loss_path = kd_loss_path::automatic;
  drift_bounds bounds = drift_bounds::physical;
  bool realistic = false;  // --chip realistic

  /// A chip of the sweep before its setting: the drift bounds, and the realistic periphery and faults if asked.
  [[nodiscard]] lab::chip_config chip() const {
    lab::chip_config c;
    c.bounds = bounds;
    return realistic ? lab::chip_config::realistic(c) : c;
  }
};

args parse(int argc, char** argv) {
  args a;
  std::string loss_path = "automatic", bounds = "physical", chip = "ideal";
  cli::command_line cl("calibration_sweeps",
                       "The paper's figures on Fashion-MNIST: accuracy of every recovery method on many drifted chips.");
  cl.choice("--sweep", a.sweep, "which sweep", {"rho", "time", "samples", "bp-tune", "resnet50"})->required();
  cl.number("--seeds", a.seeds, "chips (drift seeds 1..n) per setting", 1, 100000);
  cl.threads(a.threads);
  cl.number("--steps", a.steps, "Adam steps per layer (feature KD)", 0, 1000000);
  cl.number("--lr", a.lr, "Adam learning rate (feature KD), > 0", 0.0, 100.0);
  cl.choice("--loss-path", loss_path, "how each calibration step is computed (both exact)",
            {"automatic", "statistics", "direct"});
  cl.number("--bp-steps", a.bp_steps, "joint Adam steps of the backprop baseline", 0, 1000000);
  cl.number("--bp-lr", a.bp_lr, "learning rate of the backprop baseline, > 0", 0.0, 100.0);
  cl.number("--bp-ce", a.bp_ce, "weight of cross-entropy (backprop baseline)", 0.0, 1e6);
  cl.number("--bp-kl", a.bp_kl, "weight of KL to the teacher (backprop baseline)", 0.0, 1e6);
  cl.number("--bp-temperature", a.bp_temperature, "distillation temperature T, > 0", 0.0, 1e3);
  cl.number("--test-images", a.test_images, "test images evaluated (the first ones)", std::int64_t{1},
            std::int64_t{1} << 40);
  cl.numbers("--rhos", a.rhos, "relative drifts of the rho sweep (g_min = 0)", 0.0, 10.0);
  cl.numbers("--realistic-rhos", a.realistic_rhos, "relative drifts with g_min = g_max / 10", 0.0, 10.0);
  cl.numbers("--samples-list", a.samples, "calibration images N of the samples sweep", std::int64_t{1},
             std::int64_t{1} << 40);
  cl.numbers("--ranks", a.ranks, "adapter ranks of the samples sweep", std::int64_t{1}, std::int64_t{64});
  cl.numbers("--bp-lrs", a.bp_lrs, "bp-tune's learning rates, > 0", 0.0, 100.0);
  cl.numbers("--bp-temps", a.bp_temps, "bp-tune's temperatures, > 0", 0.0, 1e3);
  cl.choice("--drift-bounds", bounds, lab::drift_bounds_help, {"physical", "floor-g-min", "window"});
  cl.choice("--chip", chip, lab::chip_help, {"ideal", "realistic"});
  cl.text("--out", a.out, "directory of the CSVs");
  cl.text("--model", a.model, "the teacher's weights (safetensors)");
  cl.text("--data", a.data, "the Fashion-MNIST directory");
  cl.check([&] {
    a.loss_path = lab::parse_loss_path(loss_path);
    a.bounds = lab::parse_drift_bounds(bounds);
    a.realistic = chip == "realistic";
    if (!(a.lr > 0)) throw cli::usage_error(detail::concat("--lr: must be > 0, got ", a.lr));
    if (!(a.bp_lr > 0)) throw cli::usage_error(detail::concat("--bp-lr: must be > 0, got ", a.bp_lr));
    if (!(a.bp_temperature > 0)) throw cli::usage_error(detail::concat("--bp-temperature: must be > 0, got ", a.bp_temperature));
    for (const double v : a.bp_lrs)
      if (!(v > 0)) throw cli::usage_error(detail::concat("--bp-lrs: every value must be > 0, got ", v));
    for (const double v : a.bp_temps)
      if (!(v > 0)) throw cli::usage_error(detail::concat("--bp-temps: every value must be > 0, got ", v));
    if (a.bp_ce + a.bp_kl <= 0) {
      throw cli::usage_error(detail::concat("--bp-ce and --bp-kl: at least one must be > 0, got ", a.bp_ce, " and ", a.bp_kl));
    }
    for (const auto r : a.ranks) lab::check_rank("--ranks", r);
    cli::check_writable_dir("--out", a.out);
    if (a.sweep == "resnet50") return;  // no data, no model
    cli::check_input_file("--model", a.model);
    std::int64_t n = 10;
    if (a.sweep == "samples") n = *std::max_element(a.samples.begin(), a.samples.end());
    lab::check_data(a.data, n, a.sweep == "samples" ? "--samples-list" : "--samples", a.test_images);
  });
  cl.parse(argc, argv);
  return a;
}

/// One measurement: a chip setting, a method and its accuracy.
struct row {
  std::string preset;
  double g_min_ratio = 0, rho = 0, time_s = 0;
  std::int64_t samples = 0, rank = 0;
  std::uint64_t seed = 0;
  std::string method, setting;
  double top1 = 0, seconds = 0;

  [[nodiscard]] auto key() const { return std::tie(preset, g_min_ratio, rho, time_s, samples, rank, method, setting); }
};

constexpr const char* key_header = "preset,g_min_ratio,rho,time_s,samples,rank,method,setting";

std::string key_csv(const row& r) {
  return detail::concat(r.preset, ",", r.g_min_ratio, ",", r.rho, ",", r.time_s, ",", r.samples, ",", r.rank, ",", r.method,
                        ",", r.setting);
}

/// Runs the methods on drifted chips and collects the rows; writes them as they come.
class sweep_runner {
 public:
  sweep_runner(const args& a, const lab::fashion_mnist_lab& lab) : a_(a), lab_(lab) {}

  /// Rows are written out (atomically) after every measurement, so an interrupted sweep keeps what it measured.

  void add(row r, const eval_result& e, double seconds) {
    r.top1 = 100 * e.top1;
    r.seconds = seconds;
    std::fprintf(stderr, "  %-28s %-34s seed %llu: %6.2f%%\n", r.method.c_str(), r.setting.c_str(),
                 static_cast<unsigned long long>(r.seed), r.top1);
    rows_.push_back(std::move(r));
    write();
  }

  /// Feature-KD calibration on `chip` (reset first), evaluated.
  void feature_kd(lab::drifted_chip& chip, row r, std::int64_t samples, std::int64_t rank, bool teacher_norms) {
    chip.reset();
    const calibration_config cfg = lab::feature_kd_config(rank, a_.steps, a_.lr, r.seed, teacher_norms, a_.loss_path);
    const dataset calib = lab_.calibration_set(samples, r.seed);
    const calibration_result res = calibrate_feature_kd(lab_.teacher(), chip.net(), calib.images, cfg);
    check_no_writes(res);
    r.method = teacher_norms ? "feature_kd_teacher_norms" : "feature_kd";
    r.setting = detail::concat("steps=", a_.steps, " lr=", a_.lr);
    r.samples = samples;
    r.rank = rank;
    add(std::move(r), lab_.evaluate(chip.net()), res.seconds);
  }

  /// Backprop calibration on `chip` (reset first), evaluated.
  void backprop(lab::drifted_chip& chip, row r, std::int64_t samples, std::int64_t rank, double lr, double ce, double kl,
                int steps, double temperature) {
    chip.reset();
    backprop_config cfg;
    cfg.rank = rank;
    cfg.steps = steps;
    cfg.lr = lr;
    cfg.ce_weight = ce;
    cfg.kl_weight = kl;
    cfg.temperature = temperature;
    cfg.seed = r.seed;
    const dataset calib = lab_.calibration_set(samples, r.seed);
    const calibration_result res = calibrate_backprop(lab_.teacher(), chip.net(), calib.images, calib.labels, cfg);
    check_no_writes(res);
    r.method = "backprop";
    r.setting = detail::concat("steps=", steps, " lr=", lr, " ce=", ce, " kl=", kl, kl > 0 ? detail::concat(" T=", temperature) : "");
    r.samples = samples;
    r.rank = rank;
    add(std::move(r), lab_.evaluate(chip.net()), res.seconds);
  }

  /// The drifted chip as it is, and with per-column compensation.
  void baselines(lab::drifted_chip& chip, row r, bool compensated = true) {
    chip.reset();
    r.method = "drifted";
    add(r, lab_.evaluate(chip.net()), chip.deploy_seconds());
    if (!compensated) return;
    chip.compensate(true);
    r.method = "compensated";
    add(r, lab_.evaluate(chip.net()), 0);
    chip.reset();
  }

  void write() const {
    const std::string& name = a_.sweep;
    std::filesystem::create_directories(a_.out);
    std::string raw = detail::concat(key_header, ",seed,top1,seconds\n");
    for (const auto& r : rows_) raw += detail::concat(key_csv(r), ",", r.seed, ",", r.top1, ",", r.seconds, "\n");
    const auto raw_path = std::filesystem::path(a_.out) / (name + ".csv");
    write_file_atomically(raw_path, [&](atomic_writer& w) { w.write(raw); });

    // Mean, spread and extremes over the seeds of each setting, in first-seen order.
    std::vector<const row*> order;
    std::map<decltype(rows_[0].key()), std::vector<const row*>> groups;
    for (const auto& r : rows_) {
      auto& g = groups[r.key()];
      if (g.empty()) order.push_back(&r);
      g.push_back(&r);
    }
    std::string sum = detail::concat(key_header, ",n,mean,std,min,max,mean_seconds\n");
    for (const row* first : order) {
      const auto& g = groups.at(first->key());
      std::vector<double> top1;
      double secs = 0;
      for (const row* r : g) {
        top1.push_back(r->top1);
        secs += r->seconds;
      }
      const lab::spread s = lab::spread_of(top1);
      sum += detail::concat(key_csv(*first), ",", g.size(), ",", s.mean, ",", s.sd, ",", s.lo, ",", s.hi, ",",
                            secs / static_cast<double>(g.size()), "\n");
    }
    const auto sum_path = std::filesystem::path(a_.out) / (name + "_summary.csv");
    write_file_atomically(sum_path, [&](atomic_writer& w) { w.write(sum); });
  }

 private:
  static void check_no_writes(const calibration_result& res) {
    if (res.rram_writes != 0) throw error(detail::concat("calibration wrote the RRAM ", res.rram_writes, " times"));
  }

  const args& a_;
  const lab::fashion_mnist_lab& lab_;
  std::vector<row> rows_;
};

std::uint64_t seed_of(int i) { return static_cast<std::uint64_t>(i + 1); }

void sweep_rho(const args& a, const lab::fashion_mnist_lab& lab, sweep_runner& run) {
  for (const double ratio : {0.0, 0.1}) {
    for (const double rho : ratio == 0 ? a.rhos : a.realistic_rhos) {
      std::fprintf(stderr, "rho %.2f, g_min = %.1f g_max\n", rho, ratio);
      for (int s = 0; s < a.seeds; ++s) {
        lab::chip_config c = a.chip();
        c.rho = rho;
        c.g_min_ratio = ratio;
        c.drift_seed = seed_of(s);
        const auto chip = lab.drift(c);
        row r{"relative", ratio, rho, 0, 10, 2, seed_of(s), "", "", 0, 0};
        run.baselines(*chip, r);
        run.feature_kd(*chip, r, 10, 2, false);
        run.feature_kd(*chip, r, 10, 2, true);
        run.backprop(*chip, r, 10, 2, a.bp_lr, a.bp_ce, a.bp_kl, a.bp_steps, a.bp_temperature);
      }
    }
  }
}

void sweep_time(const args& a, const lab::fashion_mnist_lab& lab, sweep_runner& run) {
  const double year = 365.25 * 86400;
  for (const auto preset : {lab::drift_preset::cmo, lab::drift_preset::neurram}) {
    for (const double t : {1.0, 60.0, 3600.0, 86400.0, 7 * 86400.0, year / 12, year, 10 * year}) {
      std::fprintf(stderr, "%s at t = %g s\n", lab::to_string(preset), t);
      for (int s = 0; s < a.seeds; ++s) {
        lab::chip_config c = a.chip();
        c.preset = preset;
        c.time_s = t;
        c.program_seed = seed_of(s);  // the CMO preset has programming noise: a different chip per seed
        c.drift_seed = seed_of(s);
        const auto chip = lab.drift(c);
        row r{lab::to_string(preset), 0, 0, t, 10, 2, seed_of(s), "", "", 0, 0};
        run.baselines(*chip, r);
        run.feature_kd(*chip, r, 10, 2, false);
      }
    }
  }
}

/// The paper's setting: 20% relative drift, g_min = 0, drift seed s + 1.
std::unique_ptr<lab::drifted_chip> paper_chip(const args& a, const lab::fashion_mnist_lab& lab, int s) {
  lab::chip_config c = a.chip();
  c.rho = 0.2;
  c.drift_seed = seed_of(s);
  return lab.drift(c);
}

void sweep_samples(const args& a, const lab::fashion_mnist_lab& lab, sweep_runner& run) {
  for (int s = 0; s < a.seeds; ++s) {
    const auto chip = paper_chip(a, lab, s);
    row r{"relative", 0, 0.2, 0, 0, 0, seed_of(s), "", "", 0, 0};
    run.baselines(*chip, r, false);
    for (const std::int64_t rank : a.ranks) {
      for (const std::int64_t n : a.samples) {
        std::fprintf(stderr, "seed %d, rank %lld, N = %lld\n", s + 1, static_cast<long long>(rank),
                     static_cast<long long>(n));
        run.feature_kd(*chip, r, n, rank, false);
        run.backprop(*chip, r, n, rank, a.bp_lr, a.bp_ce, a.bp_kl, a.bp_steps, a.bp_temperature);
      }
    }
  }
}

void sweep_bp_tune(const args& a, const lab::fashion_mnist_lab& lab, sweep_runner& run) {
  for (int s = 0; s < a.seeds; ++s) {
    const auto chip = paper_chip(a, lab, s);
    row r{"relative", 0, 0.2, 0, 10, 2, seed_of(s), "", "", 0, 0};
    run.baselines(*chip, r, false);
    run.feature_kd(*chip, r, 10, 2, false);
    for (const int steps : {100, 300})
      for (const double lr : a.bp_lrs)
        for (const auto& [ce, kl] : {std::pair{1.0, 0.0}, std::pair{0.0, 1.0}, std::pair{1.0, 1.0}})
          for (const double t : a.bp_temps) {
            if (kl == 0 && t != a.bp_temps.front()) continue;  // the temperature only enters the KL term
            run.backprop(*chip, r, 10, 2, lr, ce, kl, steps, t);
          }
  }
}

/// ResNet-50's adapter share: every conv and the fc, at 1000 and at 10 classes, and convs only; the
/// adapters' own footprint (PEFT's factorisation: A is a k x k conv C -> r, B a 1 x 1 conv r -> O), and
/// for comparison loralib's ConvLoRA factorisation (A [r k, C k], B [O k, r k]: r k^2 (C + O) per conv).
void sweep_resnet50(const args& a) {
  std::string csv = "classes,layers,rank,adapter_parameters,rram_weights,share_percent,sram_bytes_fp32,loralib_share_percent\n";
  std::printf("%-8s %-10s %5s %12s %12s %8s %10s\n", "classes", "layers", "rank", "adapter", "weights", "share %", "loralib %");
  for (const std::int64_t classes : {1000, 10}) {
    const network net = resnet50(classes, 224);
    for (const bool convs_only : {false, true}) {
      for (std::int64_t rank = 1; rank <= 8; ++rank) {
        adapter_footprint total;
        std::int64_t loralib = 0;
        dora_config dc;
        dc.rank = rank;
        for (const auto& n : net.nodes()) {
          if (n.kind == op_kind::conv2d) {
            const Tensor& w = n.params.at("weight");
            total += dora_adapter(*n.layer, dc).footprint();
            const std::int64_t O = w.dim(0), C = w.dim(1), k = w.dim(2);
            loralib += rank * k * k * (C + O) + O;
          } else if (n.kind == op_kind::linear && !convs_only) {
            const Tensor& w = n.params.at("weight");
            total += dora_adapter(*n.layer, dc).footprint();
            loralib += rank * (w.dim(0) + w.dim(1)) + w.dim(0);
          }
        }
        const char* layers = convs_only ? "convs" : "convs+fc";
        const double loralib_share = 100.0 * static_cast<double>(loralib) / static_cast<double>(total.rram_weights);
        std::printf("%-8lld %-10s %5lld %12lld %12lld %8.3f %10.3f\n", static_cast<long long>(classes), layers,
                    static_cast<long long>(rank), static_cast<long long>(total.parameters),
                    static_cast<long long>(total.rram_weights), total.share_percent(), loralib_share);
        csv += detail::concat(classes, ",", layers, ",", rank, ",", total.parameters, ",", total.rram_weights, ",",
                              total.share_percent(), ",", total.sram_bytes, ",", loralib_share, "\n");
      }
    }
  }
  std::filesystem::create_directories(a.out);
  const auto path = std::filesystem::path(a.out) / "resnet50_share.csv";
  write_file_atomically(path, [&](atomic_writer& w) { w.write(csv); });
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace

int main(int argc, char** argv) try {
  const args a = parse(argc, argv);
  set_num_threads(a.threads);
  if (a.sweep == "resnet50") {
    sweep_resnet50(a);
    return 0;
  }
  std::fprintf(stderr, "loading Fashion-MNIST and the teacher...\n");
  const lab::fashion_mnist_lab lab(a.model, a.test_images, 250, a.data);
  sweep_runner run(a, lab);
  const eval_result ideal = lab.evaluate(lab.teacher());
  run.add(row{"ideal", 0, 0, 0, 0, 0, 0, "ideal", "", 0, 0}, ideal, ideal.seconds);
  if (a.sweep == "rho") sweep_rho(a, lab, run);
  else if (a.sweep == "time") sweep_time(a, lab, run);
  else if (a.sweep == "samples") sweep_samples(a, lab, run);
  else sweep_bp_tune(a, lab, run);
  std::printf("wrote %s/%s.csv and %s_summary.csv\n", a.out.c_str(), a.sweep.c_str(), a.sweep.c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
