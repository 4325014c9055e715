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
//
// Each row is one work item of sweep_runner.hpp: one method on a chip programmed and drifted afresh
// from the item's seeds (deploying takes ~0.05 s, evaluating the 10k test images ~4 s), so rows
// depend only on their item. Built with MPI, the items run over the ranks of an MPI job; --resume
// continues a killed sweep; --shard and --merge split one over separate jobs (README, "On a cluster").

#include "cli.hpp"
#include "fashion_mnist_lab.hpp"
#include "sweep_runner.hpp"

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
  adapter_inference inference = adapter_inference::factorised;
  low_rank_kernel training_kernel = low_rank_kernel::shift_add;
  std::string out = "examples/results";
  std::string model = lab::default_model;
  std::string data = lab::default_data;
  kd_loss_path loss_path = kd_loss_path::automatic;
  drift_bounds bounds = drift_bounds::physical;
  bool realistic = false;  // --chip realistic
  sweep::flags run;        // --resume, --merge, --shard
  bool threads_given = false;  // --threads on the command line (else this process's share of its node)

  /// A chip of the sweep before its setting: the drift bounds, and the realistic periphery and faults if asked.
  [[nodiscard]] lab::chip_config chip() const {
    lab::chip_config c;
    c.bounds = bounds;
    return realistic ? lab::chip_config::realistic(c) : c;
  }
};

args parse(int argc, char** argv) {
  args a;
  a.threads = sweep::default_threads(1);  // until MPI tells this process's share (main)
  std::string loss_path = "automatic", bounds = "physical", chip = "ideal";
  cli::command_line cl("calibration_sweeps",
                       "The paper's figures on Fashion-MNIST: accuracy of every recovery method on many drifted chips.");
  cl.choice("--sweep", a.sweep, "which sweep", {"rho", "time", "samples", "bp-tune", "resnet50"})->required();
  cl.number("--seeds", a.seeds, "chips (drift seeds 1..n) per setting", 1, 100000);
  const CLI::Option* threads = cl.threads(a.threads);
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
  std::string inference = "factorised", training_kernel = "shift-add";
  cl.choice("--inference", inference, lab::inference_help, {"factorised", "merged"});
  cl.choice("--training-kernel", training_kernel, lab::training_kernel_help, {"shift-add", "direct"});
  cl.text("--out", a.out, "directory of the CSVs");
  cl.text("--model", a.model, "the teacher's weights (safetensors)");
  cl.text("--data", a.data, "the Fashion-MNIST directory");
  a.run.add_to(cl);
  cl.check([&] {
    a.loss_path = lab::parse_loss_path(loss_path);
    a.bounds = lab::parse_drift_bounds(bounds);
    a.realistic = chip == "realistic";
    a.inference = lab::parse_inference(inference);
    a.training_kernel = lab::parse_training_kernel(training_kernel);
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
    (void)a.run.options(a.out, a.threads);  // --shard and --merge
    if (a.sweep == "resnet50") return;  // no data, no model
    cli::check_input_file("--model", a.model);
    std::int64_t n = 10;
    if (a.sweep == "samples") n = *std::max_element(a.samples.begin(), a.samples.end());
    lab::check_data(a.data, n, a.sweep == "samples" ? "--samples-list" : "--samples", a.test_images);
  });
  cl.parse(argc, argv);
  a.threads_given = threads->count() > 0;
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
};

constexpr const char* key_header = "preset,g_min_ratio,rho,time_s,samples,rank,method,setting";
constexpr std::size_t key_fields = 8;  // the summary groups rows by these; the item key adds the seed

std::string key_csv(const row& r) {
  return detail::concat(r.preset, ",", r.g_min_ratio, ",", r.rho, ",", r.time_s, ",", r.samples, ",", r.rank, ",", r.method,
                        ",", r.setting);
}

/// What an item measures on its chip.
enum class method { ideal, drifted, compensated, feature_kd, feature_kd_teacher_norms, backprop };

/// A work item: one method on one freshly drifted chip (or the teacher), giving one row. Every row
/// depends only on its item: the chip is programmed and drifted from the item's seeds, the
/// calibration images drawn by the item's seed.
struct item {
  row r;  ///< the row's key fields (preset .. setting, seed), known before it runs
  method m = method::ideal;
  lab::chip_config chip;
  // The backprop baseline's settings (method::backprop).
  double bp_lr = 0, bp_ce = 0, bp_kl = 0, bp_temperature = 0;
  int bp_steps = 0;

  [[nodiscard]] std::string key() const { return detail::concat(key_csv(r), ",", r.seed); }
};

/// The items of a sweep, in the order the CSV lists them.
class item_list {
 public:
  explicit item_list(const args& a) : a_(a) {}

  void ideal() {
    item it;
    it.r = row{"ideal", 0, 0, 0, 0, 0, 0, "ideal", "", 0, 0};
    items_.push_back(std::move(it));
  }
  /// The drifted chip as it is, and (compensated) with per-column compensation.
  void baselines(const lab::chip_config& c, const row& r, bool compensated = true) {
    add(c, r, method::drifted, "", "");
    if (compensated) add(c, r, method::compensated, "compensated", "");
  }
  void feature_kd(const lab::chip_config& c, row r, std::int64_t samples, std::int64_t rank, bool teacher_norms) {
    r.samples = samples;
    r.rank = rank;
    add(c, r, teacher_norms ? method::feature_kd_teacher_norms : method::feature_kd,
        teacher_norms ? "feature_kd_teacher_norms" : "feature_kd", detail::concat("steps=", a_.steps, " lr=", a_.lr));
  }
  void backprop(const lab::chip_config& c, row r, std::int64_t samples, std::int64_t rank, double lr, double ce, double kl,
                int steps, double temperature) {
    r.samples = samples;
    r.rank = rank;
    add(c, r, method::backprop, "backprop",
        detail::concat("steps=", steps, " lr=", lr, " ce=", ce, " kl=", kl, kl > 0 ? detail::concat(" T=", temperature) : ""));
    item& it = items_.back();
    it.bp_lr = lr;
    it.bp_ce = ce;
    it.bp_kl = kl;
    it.bp_steps = steps;
    it.bp_temperature = temperature;
  }

  [[nodiscard]] const std::vector<item>& items() const noexcept { return items_; }

 private:
  void add(const lab::chip_config& c, row r, method m, const std::string& name, const std::string& setting) {
    item it;
    r.method = m == method::drifted ? "drifted" : name;
    r.setting = setting;
    it.r = std::move(r);
    it.m = m;
    it.chip = c;
    items_.push_back(std::move(it));
  }

  const args& a_;
  std::vector<item> items_;
};

/// Runs one item: its row as a CSV line.
class item_runner {
 public:
  item_runner(const args& a, const lab::fashion_mnist_lab& lab) : a_(a), lab_(lab) {}

  [[nodiscard]] std::string operator()(const item& it) const {
    row r = it.r;
    eval_result e;
    double seconds = 0;
    if (it.m == method::ideal) {
      e = lab_.evaluate(lab_.teacher());
      seconds = e.seconds;
    } else {
      const auto chip = lab_.drift(it.chip);
      switch (it.m) {
        case method::drifted:
          seconds = chip->deploy_seconds();
          break;
        case method::compensated:
          chip->compensate(true);
          break;
        case method::feature_kd:
        case method::feature_kd_teacher_norms: {
          const bool teacher_norms = it.m == method::feature_kd_teacher_norms;
          calibration_config cfg = lab::feature_kd_config(r.rank, a_.steps, a_.lr, r.seed, teacher_norms, a_.loss_path);
          cfg.training_kernel = a_.training_kernel;
          const dataset calib = lab_.calibration_set(r.samples, r.seed);
          const calibration_result res = calibrate_feature_kd(lab_.teacher(), chip->net(), calib.images, cfg);
          check_no_writes(res);
          seconds = res.seconds;
          break;
        }
        case method::backprop: {
          backprop_config cfg =
              lab::backprop_settings(r.rank, it.bp_steps, it.bp_lr, it.bp_ce, it.bp_kl, it.bp_temperature, r.seed);
          cfg.training_kernel = a_.training_kernel;
          const dataset calib = lab_.calibration_set(r.samples, r.seed);
          const calibration_result res = calibrate_backprop(lab_.teacher(), chip->net(), calib.images, calib.labels, cfg);
          check_no_writes(res);
          seconds = res.seconds;
          break;
        }
        case method::ideal: break;
      }
      lab::use_inference(chip->net(), a_.inference);
      e = lab_.evaluate(chip->net());
    }
    r.top1 = lab::top1_percent(e);
    std::fprintf(stderr, "  %-28s %-34s seed %llu: %6.2f%%\n", r.method.c_str(), r.setting.c_str(),
                 static_cast<unsigned long long>(r.seed), r.top1);
    return detail::concat(key_csv(r), ",", r.seed, ",", lab::exact(r.top1), ",", seconds);
  }

 private:
  static void check_no_writes(const calibration_result& res) {
    if (res.rram_writes != 0) throw error(detail::concat("calibration wrote the RRAM ", res.rram_writes, " times"));
  }

  const args& a_;
  const lab::fashion_mnist_lab& lab_;
};

/// <sweep>_summary.csv: mean, spread and extremes over the seeds of each setting, in first-seen
/// order, from the rows as the CSV holds them (so a resumed or merged sweep gives the same summary).
void write_summary(const std::filesystem::path& dir, const std::string& name, const std::vector<std::string>& lines) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::pair<double, double>>> groups;  // key -> (top1, seconds)
  for (const auto& l : lines) {
    const auto f = sweep::fields_of(l);
    const std::string key(l.substr(0, static_cast<std::size_t>(f[key_fields - 1].data() + f[key_fields - 1].size() - l.data())));
    auto& g = groups[key];
    if (g.empty()) order.push_back(key);
    g.emplace_back(sweep::number_of(f[key_fields + 1], "top1"), sweep::number_of(f[key_fields + 2], "seconds"));
  }
  std::string sum = detail::concat(key_header, ",n,mean,std,min,max,mean_seconds\n");
  for (const auto& key : order) {
    const auto& g = groups.at(key);
    std::vector<double> top1;
    double secs = 0;
    for (const auto& [t, s] : g) {
      top1.push_back(t);
      secs += s;
    }
    const lab::spread s = lab::spread_of(top1);
    sum += detail::concat(key, ",", g.size(), ",", s.mean, ",", s.sd, ",", s.lo, ",", s.hi, ",",
                          secs / static_cast<double>(g.size()), "\n");
  }
  write_file_atomically(dir / (name + "_summary.csv"), [&](atomic_writer& w) { w.write(sum); });
}

/// The settings every row of the sweep depends on (its manifest; the grids and seeds are in the item keys).
sweep::json settings_of(const args& a) {
  sweep::json s{{"sweep", a.sweep},
                {"steps", a.steps},
                {"lr", a.lr},
                {"loss_path", std::string(to_string(a.loss_path))},
                {"bp_steps", a.bp_steps},
                {"bp_lr", a.bp_lr},
                {"bp_ce", a.bp_ce},
                {"bp_kl", a.bp_kl},
                {"bp_temperature", a.bp_temperature},
                {"test_images", a.test_images},
                {"model", a.model},
                {"data", a.data},
                {"drift_bounds", std::string(rimc::to_string(a.bounds))},
                {"chip", a.realistic ? "realistic" : "ideal"}};
  if (a.inference == adapter_inference::merged) s["inference"] = "merged";  // absent: factorised (older manifests)
  if (a.training_kernel == low_rank_kernel::direct) s["training_kernel"] = "direct";  // absent: shift-add
  return s;
}

std::uint64_t seed_of(int i) { return static_cast<std::uint64_t>(i + 1); }

void sweep_rho(const args& a, item_list& items) {
  for (const double ratio : {0.0, 0.1}) {
    for (const double rho : ratio == 0 ? a.rhos : a.realistic_rhos) {
      for (int s = 0; s < a.seeds; ++s) {
        lab::chip_config c = a.chip();
        c.rho = rho;
        c.g_min_ratio = ratio;
        c.drift_seed = seed_of(s);
        row r{"relative", ratio, rho, 0, 10, 2, seed_of(s), "", "", 0, 0};
        items.baselines(c, r);
        items.feature_kd(c, r, 10, 2, false);
        items.feature_kd(c, r, 10, 2, true);
        items.backprop(c, r, 10, 2, a.bp_lr, a.bp_ce, a.bp_kl, a.bp_steps, a.bp_temperature);
      }
    }
  }
}

void sweep_time(const args& a, item_list& items) {
  const double year = 365.25 * 86400;
  for (const auto preset : {lab::drift_preset::cmo, lab::drift_preset::neurram}) {
    for (const double t : {1.0, 60.0, 3600.0, 86400.0, 7 * 86400.0, year / 12, year, 10 * year}) {
      for (int s = 0; s < a.seeds; ++s) {
        lab::chip_config c = a.chip();
        c.preset = preset;
        c.time_s = t;
        c.program_seed = seed_of(s);  // the CMO preset has programming noise: a different chip per seed
        c.drift_seed = seed_of(s);
        row r{lab::to_string(preset), 0, 0, t, 10, 2, seed_of(s), "", "", 0, 0};
        items.baselines(c, r);
        items.feature_kd(c, r, 10, 2, false);
      }
    }
  }
}

/// The paper's setting: 20% relative drift, g_min = 0, drift seed s + 1.
lab::chip_config paper_chip(const args& a, int s) {
  lab::chip_config c = a.chip();
  c.rho = 0.2;
  c.drift_seed = seed_of(s);
  return c;
}

void sweep_samples(const args& a, item_list& items) {
  for (int s = 0; s < a.seeds; ++s) {
    const lab::chip_config c = paper_chip(a, s);
    row r{"relative", 0, 0.2, 0, 0, 0, seed_of(s), "", "", 0, 0};
    items.baselines(c, r, false);
    for (const std::int64_t rank : a.ranks) {
      for (const std::int64_t n : a.samples) {
        items.feature_kd(c, r, n, rank, false);
        items.backprop(c, r, n, rank, a.bp_lr, a.bp_ce, a.bp_kl, a.bp_steps, a.bp_temperature);
      }
    }
  }
}

void sweep_bp_tune(const args& a, item_list& items) {
  for (int s = 0; s < a.seeds; ++s) {
    const lab::chip_config c = paper_chip(a, s);
    row r{"relative", 0, 0.2, 0, 10, 2, seed_of(s), "", "", 0, 0};
    items.baselines(c, r, false);
    items.feature_kd(c, r, 10, 2, false);
    for (const int steps : {100, 300})
      for (const double lr : a.bp_lrs)
        for (const auto& [ce, kl] : {std::pair{1.0, 0.0}, std::pair{0.0, 1.0}, std::pair{1.0, 1.0}})
          for (const double t : a.bp_temps) {
            if (kl == 0 && t != a.bp_temps.front()) continue;  // the temperature only enters the KL term
            items.backprop(c, r, 10, 2, lr, ce, kl, steps, t);
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

int main(int argc, char** argv) {
  args a = sweep::flags_before_session([&] { return parse(argc, argv); });  // before MPI starts
  sweep::session session(argc, argv);
  if (!a.threads_given) a.threads = session.default_threads();  // this process's share of its node
  try {
    set_num_threads(a.threads);
    if (a.sweep == "resnet50") {
      if (session.rank() == 0) sweep_resnet50(a);
      return 0;
    }
    if (session.rank() == 0) std::fprintf(stderr, "loading Fashion-MNIST and the teacher...\n");
    const lab::fashion_mnist_lab lab(a.model, a.test_images, 250, a.data);
    item_list list(a);
    list.ideal();
    if (a.sweep == "rho") sweep_rho(a, list);
    else if (a.sweep == "time") sweep_time(a, list);
    else if (a.sweep == "samples") sweep_samples(a, list);
    else sweep_bp_tune(a, list);

    const item_runner runner(a, lab);
    sweep::study st;
    st.name = a.sweep;
    st.header = detail::concat(key_header, ",seed,top1,seconds");
    for (const auto& it : list.items()) st.items.push_back(it.key());
    st.item_of = [](std::string_view line) {
      const auto f = sweep::fields_of(line);
      if (f.size() != key_fields + 3)
        throw value_error(detail::concat("expected ", key_fields + 3, " fields, got ", f.size()));
      return std::string(line.substr(0, static_cast<std::size_t>(f[key_fields].data() + f[key_fields].size() - line.data())));
    };
    st.run = [&](std::size_t i) { return sweep::output{{runner(list.items()[i])}, {}}; };
    st.derive = [&](const std::filesystem::path& dir, const std::vector<std::string>& lines) {
      write_summary(dir, a.sweep, lines);
    };
    st.settings = settings_of(a);
    session.run(st, a.run.options(a.out, a.threads));
    if (session.rank() == 0)
      std::printf("wrote %s/%s.csv and %s_summary.csv\n", a.out.c_str(), a.sweep.c_str(), a.sweep.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return session.fail(1);
  }
}
