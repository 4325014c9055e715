// A chip's lifetime (README, "A chip's lifetime"; tools/lifetime.sh runs it and renders the plot):
// program the shipped ResNet-20 onto crossbars once, then follow it from 1 s
// to 10 years and, at each time, measure every way to keep its accuracy, on
// several chips per drift model:
//
//   none            the drifted chip as it is
//   global_comp     one digital gain per layer from a reference read (aihwkit's global drift compensation)
//   column_comp     one gain per column from a reference read
//   bn_recal        BN-statistics recalibration: per-channel affine re-fitted from N field samples
//   dora_field      DoRA r = 2, recalibrated by feature KD from N field samples at every time
//   lora_field      LoRA r = 2, the same
//   vera_field      VeRA (shared projections, vectors per layer), the same
//   vera_offline    VeRA+: one vector set per drift level trained before deployment on simulated
//                   chips; the schedule picks the set by elapsed time; no field data
//   dora_offline    the same schedule with DoRA r = 2 sets
//   dora_budget     DoRA placed under an SRAM budget (a quarter of DoRA r = 2's bytes) by the
//                   sensitivity measured on simulated chips, recalibrated from N field samples
//
// Drift models: cmo (HfOx/CMO ReRAM log-time relaxation), pcm (power law), neurram (measured
// relaxation, up to its 2-day table) and relative (the paper's zero-mean relative drift, with
// rho growing in log time to 0.2 at one day: no systematic part for an offline schedule to learn).
// Simulated chips (offline training, sensitivity) use drift and programming seeds from 1001 on;
// evaluated chips use 1..--chips: an offline set never sees the chip it is scored on.
//
// Writes <out>/lifetime.csv (one row per chip, time and method), <out>/lifetime_summary.csv
// (mean, std, min, max over the chips) and <out>/lifetime_offline.csv (each drift model's offline
// preparation: time and what it chose), atomically after every chip.
//
// The work items of sweep_runner.hpp are the teacher and each (drift model, chip): a chip is
// programmed once and measured at every time with every method. Built with MPI they run over the
// ranks of an MPI job; --resume continues a killed study. Each process prepares a drift model's
// offline sets (about 90 s per model on 2 threads) before its first chip of that model, so with many
// processes the preparation is repeated once per process and model; the copies must agree.

#include "cli.hpp"
#include "fashion_mnist_lab.hpp"
#include "sweep_runner.hpp"

#include <rimc/adapt/affine_adapter.hpp>
#include <rimc/adapt/budget.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/schedule.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/core/half.hpp>
#include <rimc/cost/calibration_cost.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/nn/geometry.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using namespace rimc;

constexpr double minute = 60, hour = 3600, day = 86400, year = 365.25 * day;
const std::vector<std::string> all_methods{"none",         "global_comp",  "column_comp", "bn_recal",
                                           "dora_field",   "lora_field",   "vera_field",  "vera_offline",
                                           "dora_offline", "dora_budget"};
const std::vector<std::string> all_presets{"cmo", "pcm", "neurram", "relative"};

struct args {
  std::vector<std::string> presets = all_presets;
  std::vector<std::string> methods = all_methods;
  std::vector<double> times{1, minute, hour, day, 7 * day, year / 12, year, 10 * year};
  std::vector<double> relative_times{hour, day, year / 12, 10 * year};  // fewer: it only shows what offline sets cannot do
  int chips = 5, sim_chips = 4, levels = 4, threads = 2, steps = 100, vera_steps = 100;
  std::int64_t samples = 10, rank = 2, vera_rank = 4, offline_images = 64, test_images = 10000, eval_batch = 50;
  double lr = 1e-2, vera_lr = 5e-2, budget_fraction = 0.25, bound = 0;
  std::string out = "examples/results", model = lab::default_model, data = lab::default_data;
  drift_bounds bounds = drift_bounds::physical;
  adapter_inference inference = adapter_inference::factorised;
  bool dora_teacher_norms = false;  ///< --dora-magnitude teacher
  bool vera_fp16 = false;           ///< --vera-storage fp16
  sweep::flags run;  // --resume, --merge, --shard
  bool threads_given = false;  // --threads on the command line (else this process's share of its node)
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

args parse(int argc, char** argv) {
  args a;
  a.threads = sweep::default_threads(1);  // until MPI tells this process's share (main)
  std::string presets = "cmo,pcm,neurram,relative", methods = "all";
  cli::command_line cl("lifetime", "A chip's lifetime: every recovery method from 1 s to 10 years, several chips per drift model.");
  cl.text("--presets", presets, "drift models, comma-separated: cmo,pcm,neurram,relative");
  cl.text("--methods", methods, "methods, comma-separated, or all (see the file comment)");
  cl.numbers("--times", a.times, "times since programming (neurram: those up to 2 days, and 2 days), s", 0.0, 1e10);
  cl.numbers("--relative-times", a.relative_times, "times of the relative-drift model, s", 0.0, 1e10);
  cl.number("--chips", a.chips, "evaluated chips per drift model (seeds 1..n)", 1, 1000);
  cl.number("--sim-chips", a.sim_chips, "simulated chips of the offline training and the sensitivity", 1, 64);
  cl.number("--levels", a.levels, "offline schedule levels, log-spaced over the times", 1, 64);
  cl.number("--bound", a.bound, "place the levels by this accuracy-loss bound (pp, on simulated chips) instead; 0: log-spaced",
            0.0, 100.0);
  cl.number("--samples", a.samples, "field samples N per recalibration", std::int64_t{1}, std::int64_t{60000});
  cl.number("--rank", a.rank, "DoRA and LoRA rank", std::int64_t{1}, std::int64_t{9});
  cl.number("--vera-rank", a.vera_rank, "VeRA rank (of the shared projections)", std::int64_t{1}, std::int64_t{64});
  cl.number("--offline-images", a.offline_images, "training images of the offline sets and the sensitivity",
            std::int64_t{1}, std::int64_t{60000});
  cl.number("--steps", a.steps, "Adam steps per layer (DoRA, LoRA)", 0, 100000);
  cl.number("--lr", a.lr, "Adam learning rate (DoRA, LoRA), > 0", 0.0, 100.0);
  cl.number("--vera-steps", a.vera_steps, "Adam steps per layer (VeRA)", 0, 100000);
  cl.number("--vera-lr", a.vera_lr, "Adam learning rate (VeRA), > 0", 0.0, 100.0);
  cl.number("--budget-fraction", a.budget_fraction, "dora_budget's bytes as a share of DoRA's at --rank", 0.0, 1.0);
  cl.number("--test-images", a.test_images, "test images evaluated (the first ones)", std::int64_t{1}, std::int64_t{10000});
  cl.number("--eval-batch", a.eval_batch, "test images per forward", std::int64_t{1}, std::int64_t{10000});
  const CLI::Option* threads = cl.threads(a.threads);
  std::string bounds = "physical", inference = "factorised", magnitude = "drifted", vera_storage = "fp32";
  cl.choice("--inference", inference, lab::inference_help, {"factorised", "merged"});
  cl.choice("--dora-magnitude", magnitude,
            "where DoRA's magnitude m starts (dora_field, dora_budget, dora_offline): the drifted chip's row norms "
            "(the paper) or the teacher's, i.e. the programmed weights' (O values per layer kept from programming)",
            {"drifted", "teacher"});
  cl.choice("--vera-storage", vera_storage,
            "how VeRA+'s stored vector sets and the shared VeRA projections are kept in SRAM: fp32, or fp16 (each value "
            "rounded to the nearest half-precision number before it is used, 2 bytes counted per value)",
            {"fp32", "fp16"});
  cl.choice("--drift-bounds", bounds, lab::drift_bounds_help, {"physical", "floor-g-min", "window"});
  cl.text("--out", a.out, "directory of the CSVs");
  cl.text("--model", a.model, "the teacher's weights (safetensors)");
  cl.text("--data", a.data, "the Fashion-MNIST directory");
  a.run.add_to(cl);
  cl.check([&] {
    a.bounds = lab::parse_drift_bounds(bounds);
    a.inference = lab::parse_inference(inference);
    a.dora_teacher_norms = magnitude == "teacher";
    a.vera_fp16 = vera_storage == "fp16";
    a.presets = split(presets);
    for (const auto& p : a.presets)
      if (std::find(all_presets.begin(), all_presets.end(), p) == all_presets.end())
        throw cli::usage_error(detail::concat("--presets: each must be one of cmo|pcm|neurram|relative, got '", p, "'"));
    if (methods != "all") {
      a.methods = split(methods);
      for (const auto& m : a.methods)
        if (std::find(all_methods.begin(), all_methods.end(), m) == all_methods.end())
          throw cli::usage_error(detail::concat("--methods: unknown method '", m, "'"));
    }
    if (!(a.lr > 0)) throw cli::usage_error(detail::concat("--lr: must be > 0, got ", a.lr));
    if (!(a.vera_lr > 0)) throw cli::usage_error(detail::concat("--vera-lr: must be > 0, got ", a.vera_lr));
    if (!(a.budget_fraction > 0)) throw cli::usage_error(detail::concat("--budget-fraction: must be > 0, got ", a.budget_fraction));
    for (auto* t : {&a.times, &a.relative_times}) {
      std::sort(t->begin(), t->end());
      for (std::size_t i = 0; i < t->size(); ++i)
        if (!((*t)[i] > 0) || (i > 0 && (*t)[i] == (*t)[i - 1]))
          throw cli::usage_error(detail::concat(t == &a.times ? "--times" : "--relative-times",
                                                ": must be > 0 and distinct, got ", (*t)[i]));
    }
    lab::check_rank("--rank", a.rank);
    cli::check_writable_dir("--out", a.out);
    (void)a.run.options(a.out, a.threads);  // --shard and --merge
    cli::check_input_file("--model", a.model);
    lab::check_data(a.data, std::max(a.samples, a.offline_images), "--samples", a.test_images);
  });
  cl.parse(argc, argv);
  a.threads_given = threads->count() > 0;
  return a;
}

/// The settings every row depends on (the lifetime run's manifest; drift models and chips are in the item keys).
sweep::json settings_of(const args& a) {
  sweep::json s{{"methods", a.methods},
                {"times", a.times},
                {"relative_times", a.relative_times},
                {"sim_chips", a.sim_chips},
                {"levels", a.levels},
                {"bound", a.bound},
                {"samples", a.samples},
                {"rank", a.rank},
                {"vera_rank", a.vera_rank},
                {"offline_images", a.offline_images},
                {"steps", a.steps},
                {"lr", a.lr},
                {"vera_steps", a.vera_steps},
                {"vera_lr", a.vera_lr},
                {"budget_fraction", a.budget_fraction},
                {"test_images", a.test_images},
                {"eval_batch", a.eval_batch},
                {"model", a.model},
                {"data", a.data},
                {"drift_bounds", std::string(rimc::to_string(a.bounds))}};
  if (a.inference == adapter_inference::merged) s["inference"] = "merged";  // absent: factorised (older manifests)
  if (a.dora_teacher_norms) s["dora_magnitude"] = "teacher";             // absent: drifted (older manifests)
  if (a.vera_fp16) s["vera_storage"] = "fp16";                           // absent: fp32 (older manifests)
  return s;
}

/// A drift model with its device: which one, and the chip's conductances at time t.
struct preset {
  std::string name;
  device_config device;
  std::vector<double> times;  ///< the study's times for it
  double reference_time;      ///< the time the budgeted placement is measured at

  /// Relative drift level at time t (preset relative): 0.2 at one day, growing with ln(1 + t).
  static double rho_at(double t) { return 0.2 * std::log1p(t) / std::log1p(day); }

  template <class Tile>
  void drift(analog_deployment<Tile>& chip, double t, std::uint64_t seed) const {
    if (name == "cmo") chip.drift_to(presets::cmo_reram_drift(), seconds{t}, seed);
    else if (name == "pcm") chip.drift_to(presets::pcm_drift(), seconds{t}, seed);
    else if (name == "neurram") chip.drift_to(presets::neurram_relaxation(), seconds{t}, seed);
    else chip.drift_to(relative_drift{}, drift_level{rho_at(t)}, seed);
  }
};

preset make_preset(const std::string& name, const std::vector<double>& times) {
  preset p{name, {}, times, day};
  if (name == "cmo") p.device = presets::cmo_reram_device();
  else if (name == "pcm") p.device = presets::pcm_device();
  else if (name == "neurram") p.device = presets::neurram_device();
  else {
    p.device.g_min_us = 0;
    p.device.g_max_us = 40;
  }
  if (name == "neurram") {  // its measured table ends at 2 days
    std::vector<double> t;
    for (const double v : times)
      if (v <= 2 * day) t.push_back(v);
    if (t.empty() || t.back() < 2 * day) t.push_back(2 * day);
    p.times = t;
  }
  return p;
}

/// One chip: programmed once, drifted to each time from its programmed state.
class chip {
 public:
  chip(const std::string& model, const preset& p, std::uint64_t seed) : p_(p), seed_(seed), net_(lab::load_folded(model)) {
    analog_options opt;
    opt.device = p.device;
    opt.program_seed = seed;
    dep_ = deploy_analog(net_, opt);
    dep_.for_each([&](const std::string&, auto& a) {
      global_.emplace_back(compensation_kind::global).record_reference(a);
      column_.emplace_back(compensation_kind::per_column).record_reference(a);
    });
  }
  chip(const chip&) = delete;
  chip& operator=(const chip&) = delete;

  [[nodiscard]] network& net() noexcept { return net_; }
  /// Drifts to time t (adapters off, unit gains).
  void at(double t) {
    reset();
    p_.drift(dep_, t, seed_);
  }
  void reset() {
    detach_adapters(net_);
    gains(nullptr);
  }
  /// Column gains from the reference reads (null: unit gains).
  void gains(const std::vector<drift_compensation>* comp) {
    std::size_t i = 0;
    dep_.for_each([&](const std::string&, auto& a) {
      a.set_column_gain(comp ? (*comp)[i].gains(a)
                             : std::vector<float>(static_cast<std::size_t>(a.effective_weights().dim(0)), 1.0f));
      ++i;
    });
  }
  [[nodiscard]] const std::vector<drift_compensation>& global() const noexcept { return global_; }
  [[nodiscard]] const std::vector<drift_compensation>& column() const noexcept { return column_; }
  [[nodiscard]] std::uint64_t rram_writes() const { return dep_.rram_writes(); }

 private:
  const preset& p_;
  std::uint64_t seed_;
  network net_;
  analog_deployment<> dep_;
  std::vector<drift_compensation> global_, column_;
};

/// One measurement.
struct row {
  std::string preset, method;
  double time_s = 0;
  std::uint64_t chip = 0;
  double top1 = 0;
  std::int64_t field_samples = 0, recalibrations = 0;
  std::size_t sram_bytes = 0;
  double energy_j = 0, latency_s = 0, seconds = 0;
  int level = -1;
};

constexpr const char* row_header =
    "preset,time_s,method,chip,top1,field_samples,recalibrations,sram_bytes,energy_j,latency_s,level,seconds";
constexpr const char* offline_header = "preset,item,seconds,chose";

/// A row as a line of lifetime.csv.
std::string row_csv(const row& r) {
  return detail::concat(r.preset, ",", r.time_s, ",", r.method, ",", r.chip, ",", lab::exact(r.top1), ",", r.field_samples, ",",
                        r.recalibrations, ",", r.sram_bytes, ",", r.energy_j, ",", r.latency_s, ",", r.level, ",", r.seconds);
}

/// Collects an item's rows and side rows (sweep_runner.hpp) and prints them as they come.
class recorder {
 public:
  void add(const row& r) {
    std::fprintf(stderr, "  %-8s t=%-10g %-13s chip %llu: %6.2f%%  (%lld samples, %zu B)\n", r.preset.c_str(), r.time_s,
                 r.method.c_str(), static_cast<unsigned long long>(r.chip), r.top1,
                 static_cast<long long>(r.field_samples), r.sram_bytes);
    out_.rows.push_back(row_csv(r));
  }

  /// One offline preparation step (an offline schedule, the budget plan): its time and what it chose.
  void offline(const std::string& preset, const std::string& item, double seconds, const std::string& chose) {
    std::fprintf(stderr, "  %s %s: %.1f s, %s\n", preset.c_str(), item.c_str(), seconds, chose.c_str());
    out_.side.push_back(detail::concat(preset, ",", item, ",", seconds, ",", chose));
  }

  /// What was collected since the last take.
  sweep::output take() { return std::exchange(out_, sweep::output{}); }

 private:
  sweep::output out_;
};

/// lifetime_summary.csv: per (preset, time, method) in first-seen order, the spread over the chips
/// (from the rows as lifetime.csv holds them) and the first chip's cost columns.
void write_summary(const std::filesystem::path& dir, const std::vector<std::string>& lines) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::vector<std::string_view>>> groups;  // views into `lines`
  for (const auto& l : lines) {
    auto f = sweep::fields_of(l);
    if (f.size() != 12) throw value_error(detail::concat("lifetime.csv: expected 12 fields, got ", f.size(), " in '", l, "'"));
    const std::string key = detail::concat(f[0], ",", f[1], ",", f[2]);
    auto& g = groups[key];
    if (g.empty()) order.push_back(key);
    g.push_back(std::move(f));
  }
  std::string sum = "preset,time_s,method,n,mean,std,min,max,field_samples,recalibrations,sram_bytes,energy_j,latency_s\n";
  for (const auto& k : order) {
    const auto& g = groups.at(k);
    std::vector<double> top1;
    for (const auto& f : g) top1.push_back(sweep::number_of(f[4], "lifetime.csv top1"));
    const lab::spread s = lab::spread_of(top1);
    const auto& f = g.front();
    sum += detail::concat(k, ",", g.size(), ",", s.mean, ",", s.sd, ",", s.lo, ",", s.hi, ",", f[5], ",", f[6], ",", f[7], ",",
                          f[8], ",", f[9], "\n");
  }
  write_file_atomically(dir / "lifetime_summary.csv", [&](atomic_writer& w) { w.write(sum); });
}

/// Seeds: evaluated chips 1..n, simulated chips from 1001 on (disjoint).
constexpr std::uint64_t sim_seed_base = 1001;

/// The lifetime study of one drift model.
class study {
 public:
  study(const args& a, const lab::fashion_mnist_lab& lab, recorder& rec, const preset& p)
      : a_(a), lab_(lab), rec_(rec), p_(p), geoms_(layer_geometries(lab.teacher())) {
    std::int64_t max_in = 0, max_out = 0;
    for (const auto& g : geoms_) {
      max_in = std::max(max_in, g.fan_in);
      max_out = std::max(max_out, g.out_features);
    }
    vera_projections proj(a.vera_rank, max_in, max_out, 0x76657261);
    proj_ = a.vera_fp16 ? std::make_shared<const vera_projections>(rounded_to_half(proj.A()), rounded_to_half(proj.B()))
                        : std::make_shared<const vera_projections>(std::move(proj));
    offline_ = lab.calibration_set(a.offline_images, 0x6f66666c696e65ULL);  // training images, not the field samples
  }

  /// A copy of t with every value rounded to the nearest half-precision number (--vera-storage fp16).
  static Tensor rounded_to_half(const Tensor& t) {
    Tensor r = t;
    for (float& v : r.values()) v = round_to_half(v);
    return r;
  }
  /// SRAM precision of VeRA+'s stored sets and the shared projections.
  [[nodiscard]] sram_precision vera_storage() const noexcept {
    return a_.vera_fp16 ? sram_precision::fp16 : sram_precision::fp32;
  }

  /// The offline preparation (schedules, budget plan), once per process: recorded as side rows.
  void prepare();
  /// One evaluated chip (seed) at every time: its rows.
  void run_chip(std::uint64_t seed);

 private:
  [[nodiscard]] bool wants(const std::string& m) const {
    return std::find(a_.methods.begin(), a_.methods.end(), m) != a_.methods.end();
  }

  [[nodiscard]] calibration_config dora_cfg() const {
    calibration_config c;
    c.rank = a_.rank;
    c.steps = a_.steps;
    c.lr = a_.lr;
    c.magnitude_from_teacher = a_.dora_teacher_norms;
    return c;
  }
  /// DoRA adapters of rank r, m started where --dora-magnitude says.
  [[nodiscard]] dora_factory dora(std::int64_t r) const {
    dora_factory f = dora_factory::from(dora_cfg());
    f.rank = r;
    return f;
  }
  [[nodiscard]] calibration_config vera_cfg() const {
    calibration_config c = dora_cfg();
    c.magnitude_from_teacher = false;
    c.steps = a_.vera_steps;
    c.lr = a_.vera_lr;
    return c;
  }
  [[nodiscard]] auto vera_factory() const {
    return [proj = proj_](const adapter_request& r) { return vera_adapter(r.base, vera_config{proj, 1, 0.1}); };
  }
  [[nodiscard]] auto lora_factory() const {
    return [rank = a_.rank](const adapter_request& r) {
      return lora_adapter(r.base, lora_config{rank, static_cast<double>(rank), false, r.seed});
    };
  }

  /// Simulated chips (seeds from 1001 on), programmed once.
  std::vector<std::unique_ptr<chip>>& sims() {
    if (sims_.empty())
      for (int k = 0; k < a_.sim_chips; ++k)
        sims_.push_back(std::make_unique<chip>(lab_.model(), p_, sim_seed_base + static_cast<std::uint64_t>(k)));
    return sims_;
  }
  std::vector<network*> sim_nets(double t) {
    std::vector<network*> nets;
    for (auto& s : sims()) {
      s->at(t);
      nets.push_back(&s->net());
    }
    return nets;
  }

  /// Top-1 (%) of the simulated chips' mean at time t with `set` loaded into adapters made by `make`.
  template <class Factory>
  double sim_accuracy(const std::string& kind, const adapter_set& set, Factory make, double t) {
    double acc = 0;
    const dataset val = lab_.calibration_set(1000, 0x76616cULL);
    for (network* n : sim_nets(t)) {
      attach_all(*n, make);
      load_adapters(*n, kind, set);
      lab::use_inference(*n, a_.inference);
      acc += 100.0 * rimc::evaluate(*n, val, a_.eval_batch, false).top1;
      detach_adapters(*n);
    }
    return acc / static_cast<double>(sims_.size());
  }

  template <class Factory>
  static void attach_all(network& net, Factory make) {
    for (const auto& name : net.layer_names())
      attach_adapter(net, name, make(adapter_request{net.layer(name), name, net.id(name), 0, net}));
  }

  /// One set per level, trained on the simulated chips at the level's time.
  template <class A, class Factory>
  drift_schedule offline_schedule(const std::string& kind, Factory make, const calibration_config& cfg) {
    const auto fit = [&](double t) {
      const std::vector<network*> nets = sim_nets(t);
      const auto res = calibrate_feature_kd_ensemble(lab_.teacher(), nets, offline_.images, cfg, make);
      adapter_set set = capture_adapters(*nets[0], kind);
      if (kind == "vera" && a_.vera_fp16)  // the stored sets: what the deployed chip reads back from SRAM
        for (auto& [layer_name, tensors] : set)
          for (auto& [tensor_name, values] : tensors) values = rounded_to_half(values);
      std::fprintf(stderr, "  %s offline set at t = %g s: %.2f s\n", kind.c_str(), t, res.seconds);
      for (network* n : nets) detach_adapters(*n);
      return set;
    };
    drift_schedule s(kind);
    const double first = p_.times.front(), last = p_.times.back();
    if (a_.bound > 0) {
      const std::vector<double> grid = log_spaced_times(first, last, std::max(2 * a_.levels, 8));
      const double ideal = 100.0 * rimc::evaluate(lab_.teacher(), lab_.calibration_set(1000, 0x76616cULL), a_.eval_batch, false).top1;
      std::vector<adapter_set> sets;
      const auto starts = place_levels_by_bound(
          grid, a_.bound,
          [&](double t) {
            sets.push_back(fit(t));
            return sets.size() - 1;
          },
          [&](std::size_t level, double t) { return ideal - sim_accuracy(kind, sets[level], make, t); });
      for (std::size_t i = 0; i < starts.size(); ++i) s.add(i == 0 ? 0.0 : grid[starts[i]], grid[starts[i]], sets[i]);
    } else {
      const std::vector<double> times = log_spaced_times(first, last, a_.levels);
      const std::vector<double> from = nearest_in_log_time(times);
      for (std::size_t i = 0; i < times.size(); ++i) s.add(from[i], times[i], fit(times[i]));
    }
    return s;
  }

  /// The budgeted placement, from the sensitivity on simulated chips at the reference time.
  void plan_budget() {
    std::size_t uniform = 0;
    {
      chip ref(lab_.model(), p_, sim_seed_base);
      for (const auto& name : ref.net().layer_names())
        uniform += dora_adapter(ref.net().layer(name), dora_config{a_.rank}).footprint().sram_bytes;
    }
    const std::vector<network*> nets = sim_nets(p_.reference_time);
    const std::vector<std::int64_t> ranks{1, 2, 4};
    const auto sens = measure_sensitivity(lab_.teacher(), nets, offline_.images, dora_cfg(), ranks,
                                          [&](const adapter_request& r, std::int64_t rank) { return dora(rank)(r); });
    budget_bytes_ = static_cast<std::size_t>(static_cast<double>(uniform) * a_.budget_fraction);
    plan_ = plan_adapter_budget(sens, budget_bytes_);
  }

  /// The recalibration cost of one field calibration with `m`.
  strategy_cost field_cost(const std::string& m, const std::vector<std::string>& adapted) const {
    const cost_model cm;
    std::vector<sram_calibration_layer> layers;
    for (const auto& g : geoms_) {
      if (std::find(adapted.begin(), adapted.end(), g.name) == adapted.end()) continue;
      const double K = static_cast<double>(g.fan_in), O = static_cast<double>(g.out_features);
      double r = static_cast<double>(a_.rank);
      if (m == "dora_budget") r = static_cast<double>(plan_.ranks.at(g.name));
      if (m == "vera_field") r = static_cast<double>(a_.vera_rank);
      sram_calibration_layer l{g, 0, 3.0 * (r * K + O * r), 0};
      if (m == "bn_recal") l = {g, 2 * O, 0, 3 * O};
      else if (m == "vera_field") l.trained_values = r + O;
      else if (m == "lora_field") l.trained_values = r * (K + O);
      else l.trained_values = r * (K + O) + O;
      layers.push_back(l);
    }
    return sram_calibration_cost(m, layers, p_.device, cm, a_.samples, m == "bn_recal" ? 0 : (m == "vera_field" ? a_.vera_steps : a_.steps),
                                 sram_precision::fp32, m == "bn_recal" ? 0 : 2);
  }

  /// One reference read of every layer (1 probe per layer, or K probes: per column).
  strategy_cost compensation_cost(bool per_column) const {
    const cost_model cm;
    double e = 0, t = 0;
    for (const auto& g : geoms_) {
      layer_geometry probe = g;
      probe.positions = per_column ? g.fan_in : 1;
      e += crossbar_inference_energy_j({probe}, p_.device, cm);
      t += static_cast<double>(probe.positions) * cm.rram_read_latency_ns * 1e-9;
    }
    strategy_cost s;
    s.energy_j = e;
    s.latency_s = t;
    return s;
  }

  void measure(chip& ch, std::uint64_t seed, std::size_t ti) {
    const double t = p_.times[ti];
    const auto recals = static_cast<std::int64_t>(ti + 1);
    ch.at(t);
    network& net = ch.net();
    const std::uint64_t writes = ch.rram_writes();
    const dataset field = lab_.calibration_set(a_.samples, seed * 1000 + ti);
    const auto layers = net.layer_names();
    std::size_t all_o = 0;
    for (const auto& g : geoms_) all_o += static_cast<std::size_t>(g.out_features);
    const auto record = [&](const std::string& m, std::int64_t samples, std::int64_t n_recal, std::size_t bytes,
                            const strategy_cost& cost, double secs, int level = -1) {
      lab::use_inference(net, a_.inference);
      row r{p_.name, m, t, seed, lab::top1_percent(lab_.evaluate(net)), samples, n_recal, bytes,
            cost.energy_j * static_cast<double>(n_recal), cost.latency_s * static_cast<double>(n_recal), secs, level};
      if (ch.rram_writes() != writes) throw error(detail::concat(m, " wrote the RRAM"));
      rec_.add(r);
      ch.reset();
    };
    const strategy_cost nothing;
    for (const auto& m : a_.methods) {
      const auto t0 = std::chrono::steady_clock::now();
      if (m == "none") {
        record(m, 0, 0, 0, nothing, 0);
      } else if (m == "global_comp") {
        ch.gains(&ch.global());
        record(m, 0, recals, 8 * layers.size(), compensation_cost(false), lab::seconds_since(t0));
      } else if (m == "column_comp") {
        ch.gains(&ch.column());
        record(m, 0, recals, 8 * all_o, compensation_cost(true), lab::seconds_since(t0));
      } else if (m == "bn_recal") {
        const auto res = recalibrate_batch_norm(lab_.teacher(), net, field.images);
        record(m, a_.samples * recals, recals, res.footprint.sram_bytes, field_cost(m, layers), res.seconds);
      } else if (m == "dora_field") {
        const auto res = calibrate_feature_kd(lab_.teacher(), net, field.images, with_seed(dora_cfg(), seed, ti));
        record(m, a_.samples * recals, recals, res.footprint.sram_bytes, field_cost(m, layers), res.seconds);
      } else if (m == "lora_field") {
        const auto res = calibrate_feature_kd(lab_.teacher(), net, field.images, with_seed(dora_cfg(), seed, ti), lora_factory());
        record(m, a_.samples * recals, recals, res.footprint.sram_bytes, field_cost(m, layers), res.seconds);
      } else if (m == "vera_field") {
        const auto res = calibrate_feature_kd(lab_.teacher(), net, field.images, with_seed(vera_cfg(), seed, ti), vera_factory());
        record(m, a_.samples * recals, recals, res.footprint.sram_bytes + proj_->footprint(vera_storage()).sram_bytes,
               field_cost(m, layers), res.seconds);
      } else if (m == "vera_offline" || m == "dora_offline") {
        const bool vera = m == "vera_offline";
        const drift_schedule& s = vera ? *vera_schedule_ : *dora_schedule_;
        if (vera) attach_all(net, vera_factory());
        else attach_all(net, dora_factory{a_.rank});
        const std::size_t level = s.apply_at(net, seconds{t});
        std::size_t bytes = 0;
        const sram_precision storage = vera ? vera_storage() : sram_precision::fp32;
        for (const auto& [name, l] : adapted_layers(net)) bytes += l->footprint(storage).sram_bytes;
        bytes *= s.size();
        if (vera) bytes += proj_->footprint(storage).sram_bytes;
        record(m, 0, 0, bytes, nothing, lab::seconds_since(t0), static_cast<int>(level));
      } else if (m == "dora_budget") {
        calibration_config c = with_seed(dora_cfg(), seed, ti);
        c.targets = plan_.targets(net);
        const auto ranks = plan_.ranks;
        const auto res = calibrate_feature_kd(lab_.teacher(), net, field.images, c,
                                              [&](const adapter_request& r) { return dora(ranks.at(r.name))(r); });
        record(m, a_.samples * recals, recals, res.footprint.sram_bytes, field_cost(m, c.targets), res.seconds);
      }
    }
  }

  static calibration_config with_seed(calibration_config c, std::uint64_t seed, std::size_t ti) {
    c.seed = seed * 1000 + ti;
    return c;
  }

  const args& a_;
  const lab::fashion_mnist_lab& lab_;
  recorder& rec_;
  const preset& p_;
  std::vector<layer_geometry> geoms_;
  std::shared_ptr<const vera_projections> proj_;
  dataset offline_;
  std::vector<std::unique_ptr<chip>> sims_;
  std::optional<drift_schedule> vera_schedule_, dora_schedule_;
  adapter_plan plan_;
  std::size_t budget_bytes_ = 0;
  bool prepared_ = false;
};

void study::prepare() {
  if (prepared_) return;
  prepared_ = true;
  // The level times of a schedule, in the offline CSV's 'chose' column.
  const auto levels = [](const drift_schedule& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i)
      out += detail::concat(i ? " " : "", "level ", i, " fitted at ", s.level(i).time_s, " s from ", s.level(i).from_s, " s");
    return out;
  };
  auto t0 = std::chrono::steady_clock::now();
  if (wants("vera_offline")) {
    vera_schedule_ = offline_schedule<vera_adapter>("vera", vera_factory(), vera_cfg());
    rec_.offline(p_.name, "vera_offline schedule", lab::seconds_since(t0), levels(*vera_schedule_));
  }
  t0 = std::chrono::steady_clock::now();
  if (wants("dora_offline")) {
    dora_schedule_ = offline_schedule<dora_adapter>("dora", dora(a_.rank), dora_cfg());
    rec_.offline(p_.name, "dora_offline schedule", lab::seconds_since(t0), levels(*dora_schedule_));
  }
  t0 = std::chrono::steady_clock::now();
  if (wants("dora_budget")) {
    plan_budget();
    std::string chose = detail::concat(plan_.bytes, " of ", budget_bytes_, " B (", plan_.exact ? "exact" : "greedy", "):");
    for (const auto& [n, r] : plan_.ranks) chose += detail::concat(" ", n, "=r", r);
    rec_.offline(p_.name, "dora_budget plan", lab::seconds_since(t0), chose);
  }
}

void study::run_chip(std::uint64_t seed) {
  prepare();
  chip ch(lab_.model(), p_, seed);
  for (std::size_t ti = 0; ti < p_.times.size(); ++ti) measure(ch, seed, ti);
}

}  // namespace

int main(int argc, char** argv) {
  args a = sweep::flags_before_session([&] { return parse(argc, argv); });  // before MPI starts
  sweep::session session(argc, argv);
  if (!a.threads_given) a.threads = session.default_threads();  // this process's share of its node
  try {
    set_num_threads(a.threads);
    const auto t0 = std::chrono::steady_clock::now();
    if (session.rank() == 0) std::fprintf(stderr, "loading Fashion-MNIST and the teacher...\n");
    const lab::fashion_mnist_lab lab(a.model, a.test_images, a.eval_batch, a.data);
    std::vector<preset> presets;
    for (const auto& name : a.presets) {
      presets.push_back(make_preset(name, name == "relative" ? a.relative_times : a.times));
      presets.back().device.bounds = a.bounds;
    }

    // Items: the teacher, then every (drift model, chip); a chip item measures every time and method.
    // Each process prepares a drift model's offline sets once, before its first chip of that model.
    recorder rec;
    std::vector<std::unique_ptr<study>> studies;
    for (const auto& p : presets) studies.push_back(std::make_unique<study>(a, lab, rec, p));
    sweep::study st;
    st.name = "lifetime";
    st.header = row_header;
    st.items.push_back("ideal,0");
    std::vector<std::pair<std::size_t, std::uint64_t>> chip_of{{0, 0}};  // (preset, seed) per item
    for (std::size_t p = 0; p < presets.size(); ++p)
      for (int c = 0; c < a.chips; ++c) {
        st.items.push_back(detail::concat(presets[p].name, ",", c + 1));
        chip_of.emplace_back(p, static_cast<std::uint64_t>(c + 1));
      }
    st.item_of = [](std::string_view line) {
      const auto f = sweep::fields_of(line);
      if (f.size() != 12) throw value_error(detail::concat("expected 12 fields, got ", f.size()));
      return detail::concat(f[0], ",", f[3]);
    };
    st.run = [&](std::size_t i) {
      if (i == 0) {
        const eval_result ideal = lab.evaluate(lab.teacher());
        rec.add(row{"ideal", "ideal", 0, 0, lab::top1_percent(ideal), 0, 0, 0, 0, 0, ideal.seconds, -1});
      } else {
        studies[chip_of[i].first]->run_chip(chip_of[i].second);
      }
      return rec.take();
    };
    st.derive = [](const std::filesystem::path& dir, const std::vector<std::string>& lines) { write_summary(dir, lines); };
    st.side.name = "lifetime_offline";
    st.side.header = offline_header;
    st.side.key_fields = 2;
    for (const auto& p : presets)
      for (const char* k : {"vera_offline schedule", "dora_offline schedule", "dora_budget plan"})
        st.side.keys.push_back(detail::concat(p.name, ",", k));
    st.settings = settings_of(a);
    session.run(st, a.run.options(a.out, a.threads));
    if (session.rank() == 0)
      std::printf("wrote %s/lifetime.csv and lifetime_summary.csv in %.0f s\n", a.out.c_str(), lab::seconds_since(t0));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return session.fail(1);
  }
}
