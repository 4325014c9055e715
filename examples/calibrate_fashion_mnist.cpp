// The main job: the shipped ResNet-20 teacher is programmed onto RRAM
// crossbars, the conductances drift (20% relative drift by default), and
// DoRA adapters in SRAM are calibrated layer by layer from N = 10 training
// images by feature distillation, with the RRAM left untouched. Prints a
// table (ideal, drifted, per-column drift compensation, feature-KD and
// backprop calibrated accuracy, adapter share, SRAM bytes, RRAM writes,
// calibration time) and writes it as CSV, with the time of each phase.
// `--help` lists the flags with their defaults and units; every value is
// checked before anything is loaded.

#include "cli.hpp"
#include "fashion_mnist_lab.hpp"

#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/atomic_file.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>

#include <sys/resource.h>
#include <unistd.h>

namespace {

using namespace rimc;

struct args {
  lab::chip_config chip;
  // The backprop baseline as tuned by calibration_sweeps --sweep bp-tune: KL to the teacher's logits only.
  double lr = 1e-2, bp_lr = 1e-3, bp_ce = 0.0, bp_kl = 1.0;
  int bp_steps = 100;
  bool backprop = true;
  bool layers = false;  // --layers
  std::int64_t samples = 10, rank = 2, test_images = 10000, test_offset = 0, eval_batch = 50;
  kd_loss_path loss_path = kd_loss_path::automatic;
  int steps = 100, threads = 2, reads = 1;
  bool recalibrate_adc = true;
  adapter_inference inference = adapter_inference::factorised;
  low_rank_kernel training_kernel = low_rank_kernel::shift_add;
  std::uint64_t seed = 0;
  bool from_teacher_norms = false;
  std::string csv = "calibration.csv";
  std::string model = lab::default_model;
  std::string data = lab::default_data;
  std::string save_adapter;
};

args parse(int argc, char** argv) {
  args a;
  std::string preset = "relative", loss_path = "automatic", bounds = "physical", chip = "ideal",
              inference = "factorised", training_kernel = "shift-add";
  constexpr auto u64max = std::numeric_limits<std::uint64_t>::max();
  cli::command_line cl("calibrate_fashion_mnist",
                       "Programs the shipped ResNet-20 Fashion-MNIST teacher onto drifting RRAM crossbars and recovers "
                       "its accuracy with DoRA adapters calibrated by layer-wise feature distillation.");
  cl.choice("--preset", preset, "drift model: the paper's relative drift, CMO-ReRAM or NeuRRAM relaxation",
            {"relative", "cmo", "neurram"});
  cl.number("--rho", a.chip.rho, "relative drift sigma / G (preset relative)", 0.0, 10.0);
  cl.number("--time", a.chip.time_s, "time since programming (presets cmo, neurram)", 0.0, 1e12, "s");
  cl.number("--g-min-ratio", a.chip.g_min_ratio, "g_min as a fraction of g_max (preset relative)", 0.0, 0.99);
  cl.choice("--drift-bounds", bounds, lab::drift_bounds_help, {"physical", "floor-g-min", "window"});
  auto* sa0 = cl.number("--sa0", a.chip.faults.sa0, "fraction of cells stuck at g_min (e.g. 0.0175, Chen et al. 2017)", 0.0, 1.0);
  auto* sa1 = cl.number("--sa1", a.chip.faults.sa1, "fraction of cells stuck at g_max (e.g. 0.0904, Chen et al. 2017)", 0.0, 1.0);
  auto* aware = cl.flag("--fault-aware", a.chip.fault_aware, "program the partner of a stuck device to compensate it (knows the fault map)");
  auto* aware_rows = cl.flag("--fault-aware-rows,!--no-fault-aware-rows", a.chip.fault_aware_rows,
                             "place each tile's weight rows on the word lines whose stuck devices they suffer least "
                             "from (knows the fault map; on in --chip realistic)");
  auto* wire = cl.number("--wire-ohm", a.chip.wire_ohm, "wire resistance between neighbouring cells (IR drop, fast model)",
                         0.0, 1e6, "ohm");
  cl.choice("--chip", chip, std::string(lab::chip_help) + "; the flags here set one non-ideality each (a given one "
            "overrides the realistic value)", {"ideal", "realistic"});
  auto* adc = cl.number("--adc-bits", a.chip.adc_bits, "per-column percentile ADC resolution (0: ideal read-out)", 0, 16);
  auto* dac = cl.number("--dac-bits", a.chip.dac_bits, "input DAC resolution, range calibrated per layer (0: ideal inputs)", 0, 16);
  std::string read_noise = "none";
  auto* read = cl.choice("--read-noise", read_noise, "per-read noise: none, or the CMO ReRAM form at the chip's time",
                         {"none", "cmo"});
  cl.flag("--adc-per-tile", a.chip.adc_per_tile, "one ADC range per tile instead of one per column");
  cl.number("--adc-headroom", a.chip.adc_headroom, "ADC range as a multiple of the reference currents' 99.99th percentile",
            1.0, 1e3);
  bool keep_adc = false;
  cl.flag("--keep-adc-ranges", keep_adc, "calibration keeps the ADC and DAC ranges set on the reference images "
          "(default: widens them to what the calibrated activations need)");
  cl.number("--reads", a.reads, "reads of each frozen layer per calibration sample, averaged (feature KD)", 1, 1000);
  cl.number("--samples", a.samples, "calibration images N", std::int64_t{1}, std::int64_t{1} << 40);
  cl.number("--rank", a.rank, "adapter rank r", std::int64_t{1}, std::int64_t{64});
  cl.number("--steps", a.steps, "Adam steps per layer (feature KD)", 0, 1000000);
  cl.number("--lr", a.lr, "Adam learning rate (feature KD), > 0", 0.0, 100.0);
  cl.flag("--from-teacher-norms", a.from_teacher_norms, "start m from the teacher's row norms, not the drifted ones");
  cl.number("--seed", a.seed, "seed of the calibration samples, the adapters and the programming noise", std::uint64_t{0},
            u64max);
  cl.number("--drift-seed", a.chip.drift_seed, "seed of the drift", std::uint64_t{0}, u64max);
  cl.threads(a.threads);
  cl.number("--test-images", a.test_images, "test images evaluated (the first ones, or from --test-offset on)",
            std::int64_t{1}, std::int64_t{1} << 40);
  cl.number("--test-offset", a.test_offset,
            "index of the first test image evaluated (e.g. 5000 with --test-images 5000: the second half, to report "
            "a setting chosen on the first)",
            std::int64_t{0}, std::int64_t{1} << 40);
  cl.number("--eval-batch", a.eval_batch, "test images per forward", std::int64_t{1}, std::int64_t{1} << 20);
  cl.choice("--loss-path", loss_path, "how each calibration step is computed (both exact)",
            {"automatic", "statistics", "direct"});
  cl.number("--bp-steps", a.bp_steps, "joint Adam steps of the backprop baseline", 0, 1000000);
  cl.number("--bp-lr", a.bp_lr, "learning rate of the backprop baseline, > 0", 0.0, 100.0);
  cl.number("--bp-ce", a.bp_ce, "weight of cross-entropy on the labels (backprop baseline)", 0.0, 1e6);
  cl.number("--bp-kl", a.bp_kl, "weight of KL to the teacher's logits (backprop baseline)", 0.0, 1e6);
  bool no_backprop = false;
  cl.flag("--no-backprop", no_backprop, "skip the backprop baseline");
  cl.flag("--layers", a.layers, "print each layer's feature MSE before and after calibration (always on a terminal)");
  cl.choice("--inference", inference, lab::inference_help, {"factorised", "merged"});
  cl.choice("--training-kernel", training_kernel, lab::training_kernel_help, {"shift-add", "direct"});
  cl.text("--csv", a.csv, "where the table is written (CSV)");
  cl.text("--model", a.model, "the teacher's weights (safetensors)");
  cl.text("--data", a.data, "the Fashion-MNIST directory (train-*/t10k-* IDX files, gz or not)");
  cl.text("--save-adapter", a.save_adapter, "write the calibrated adapters as PEFT files into this directory");
  cl.check([&] {
    a.chip.preset = lab::parse_preset(preset);
    a.chip.bounds = lab::parse_drift_bounds(bounds);
    a.chip.read_noise = read_noise == "cmo";
    a.recalibrate_adc = !keep_adc;
    if (chip == "realistic") {  // every non-ideality at its realistic value, unless its flag was given
      const lab::chip_config r = lab::chip_config::realistic(a.chip);
      if (adc->count() == 0) a.chip.adc_bits = r.adc_bits;
      if (dac->count() == 0) a.chip.dac_bits = r.dac_bits;
      if (read->count() == 0) a.chip.read_noise = r.read_noise;
      if (sa0->count() == 0) a.chip.faults.sa0 = r.faults.sa0;
      if (sa1->count() == 0) a.chip.faults.sa1 = r.faults.sa1;
      if (aware->count() == 0) a.chip.fault_aware = r.fault_aware;
      if (aware_rows->count() == 0) a.chip.fault_aware_rows = r.fault_aware_rows;
      if (wire->count() == 0) a.chip.wire_ohm = r.wire_ohm;
    }
    if (a.chip.adc_bits == 1 || a.chip.dac_bits == 1) {
      throw cli::usage_error(detail::concat("--adc-bits and --dac-bits: must be 0 (ideal) or 2..16, got ", a.chip.adc_bits,
                                            " and ", a.chip.dac_bits));
    }
    if (a.chip.faults.sa0 + a.chip.faults.sa1 > 1) {
      throw cli::usage_error(detail::concat("--sa0 and --sa1: must add up to at most 1, got ", a.chip.faults.sa0, " + ",
                                            a.chip.faults.sa1));
    }
    a.loss_path = lab::parse_loss_path(loss_path);
    a.inference = lab::parse_inference(inference);
    a.training_kernel = lab::parse_training_kernel(training_kernel);
    a.backprop = !no_backprop;
    if (!(a.lr > 0)) throw cli::usage_error(detail::concat("--lr: must be > 0, got ", a.lr));
    lab::check_rank("--rank", a.rank);
    if (a.backprop) {
      if (!(a.bp_lr > 0)) throw cli::usage_error(detail::concat("--bp-lr: must be > 0, got ", a.bp_lr));
      if (a.bp_ce + a.bp_kl <= 0) {
        throw cli::usage_error(detail::concat("--bp-ce and --bp-kl: at least one must be > 0, got ", a.bp_ce, " and ",
                                              a.bp_kl, " (or pass --no-backprop)"));
      }
    }
    cli::check_input_file("--model", a.model);
    lab::check_data(a.data, a.samples, "--samples", a.test_images, a.test_offset);
    cli::check_writable_file("--csv", a.csv);
    if (!a.save_adapter.empty()) cli::check_writable_dir("--save-adapter", a.save_adapter);
  });
  cl.parse(argc, argv);
  a.chip.program_seed = a.seed;
  a.chip.validate();
  return a;
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace

int main(int argc, char** argv) try {
  const args a = parse(argc, argv);
  set_num_threads(a.threads);
  std::fprintf(stderr, "loading Fashion-MNIST and the teacher...\n");
  const lab::fashion_mnist_lab lab(a.model, a.test_images, a.eval_batch, a.data, a.test_offset);
  const eval_result ideal = lab.evaluate(lab.teacher());

  // Program every conv and linear layer onto crossbars (differential pairs, 8-bit cells), then drift.
  if (a.chip.preset == lab::drift_preset::relative) {
    std::fprintf(stderr, "programming and drifting (relative drift %.2f, g_min = %.2f g_max, seed %llu)...\n", a.chip.rho,
                 a.chip.g_min_ratio, static_cast<unsigned long long>(a.chip.drift_seed));
  } else {
    std::fprintf(stderr, "programming and drifting (%s preset, t = %g s, seed %llu)...\n", lab::to_string(a.chip.preset),
                 a.chip.time_s, static_cast<unsigned long long>(a.chip.drift_seed));
  }
  const auto chip = lab.drift(a.chip);
  const eval_result drifted = lab.evaluate(chip->net());
  chip->compensate(true);
  const eval_result compensated = lab.evaluate(chip->net());
  chip->reset();

  std::fprintf(stderr, "feature-KD calibration with %lld samples, rank %lld, %d steps per layer...\n",
               static_cast<long long>(a.samples), static_cast<long long>(a.rank), a.steps);
  const dataset calib = lab.calibration_set(a.samples, a.seed);
  calibration_config cfg = lab::feature_kd_config(a.rank, a.steps, a.lr, a.seed, a.from_teacher_norms, a.loss_path);
  cfg.reads = a.reads;
  cfg.training_kernel = a.training_kernel;
  cfg.recalibrate_adc = a.recalibrate_adc;  // the backprop baseline below follows the same choice
  if (a.layers || ::isatty(2)) {  // one progress line per calibrated layer
    cfg.on_layer = [](const layer_calibration& l, std::size_t i, std::size_t n) {
      std::fprintf(stderr, "  [%2zu/%zu] %-22s feature MSE %.4g -> %.4g (%s, %.3f s)\n", i + 1, n, l.name.c_str(),
                   l.mse_before, l.mse_after, rimc::to_string(l.path), l.seconds);
    };
  }
  const calibration_result cal = calibrate_feature_kd(lab.teacher(), chip->net(), calib.images, cfg);
  set_adapter_inference(chip->net(), a.inference);
  const eval_result calibrated = lab.evaluate(chip->net());
  if (!a.save_adapter.empty()) {
    save_peft_adapter(a.save_adapter, chip->net(), a.model);
    std::fprintf(stderr, "wrote the adapters to %s (adapter_config.json, adapter_model.safetensors)\n",
                 a.save_adapter.c_str());
  }

  // The baseline: the same drifted chip, adapters trained jointly by backprop.
  calibration_result bp;
  eval_result backprop;
  if (a.backprop) {
    std::fprintf(stderr, "backprop baseline: %d joint steps, %.1f x CE + %.1f x KL...\n", a.bp_steps, a.bp_ce, a.bp_kl);
    chip->reset();
    backprop_config bcfg =
        lab::backprop_settings(a.rank, a.bp_steps, a.bp_lr, a.bp_ce, a.bp_kl, backprop_config{}.temperature, a.seed);
    bcfg.recalibrate_adc_every = a.recalibrate_adc ? 10 : 0;
    bcfg.training_kernel = a.training_kernel;
    bp = calibrate_backprop(lab.teacher(), chip->net(), calib.images, calib.labels, bcfg);
    set_adapter_inference(chip->net(), a.inference);
    backprop = lab.evaluate(chip->net());
  }

  const auto& f = cal.footprint;
  const auto pct = [](const eval_result& r) { return 100 * r.top1; };
  const auto n_test = static_cast<long long>(lab.test().size());
  const std::string images = a.test_offset == 0 ? detail::concat(n_test, " test images")
                                                : detail::concat("test images ", a.test_offset, "-", a.test_offset + n_test - 1);
  if (a.chip.preset == lab::drift_preset::relative) {
    std::printf("ResNet-20 on Fashion-MNIST (%s), relative drift %.2f (g_min = %.2f g_max, %s drift "
                "bounds), N = %lld, rank %lld\n\n",
                images.c_str(), a.chip.rho, a.chip.g_min_ratio,
                std::string(to_string(a.chip.bounds)).c_str(), static_cast<long long>(a.samples),
                static_cast<long long>(a.rank));
  } else {
    std::printf("ResNet-20 on Fashion-MNIST (%s), %s drift at t = %g s (%s drift bounds), N = %lld, "
                "rank %lld\n\n",
                images.c_str(), lab::to_string(a.chip.preset), a.chip.time_s,
                std::string(to_string(a.chip.bounds)).c_str(), static_cast<long long>(a.samples),
                static_cast<long long>(a.rank));
  }
  std::printf("%-34s %10s\n", "setting", "top-1 %");
  std::printf("%-34s %10.2f\n", "ideal (digital teacher)", pct(ideal));
  std::printf("%-34s %10.2f\n", "drifted", pct(drifted));
  std::printf("%-34s %10.2f\n", "per-column drift compensation", pct(compensated));
  std::printf("%-34s %10.2f\n", "DoRA feature-KD calibration", pct(calibrated));
  if (a.backprop) std::printf("%-34s %10.2f\n", "DoRA backprop calibration", pct(backprop));
  std::printf("\nadapter parameters %lld (%.2f%% of %lld RRAM weights), SRAM %zu bytes (fp32)\n",
              static_cast<long long>(f.parameters), f.share_percent(), static_cast<long long>(f.rram_weights), f.sram_bytes);
  if (a.chip.faults.any() || a.chip.wire_ohm > 0 || a.chip.tile_exact()) {
    const fault_count stuck = chip->stuck_cells();
    std::printf("stuck cells: %llu at g_min, %llu at g_max%s; wire resistance %g ohm per segment\n",
                static_cast<unsigned long long>(stuck.sa0), static_cast<unsigned long long>(stuck.sa1),
                a.chip.fault_aware ? (a.chip.fault_aware_rows ? " (fault-aware programming and row order)"
                                                               : " (fault-aware programming)")
                                   : (a.chip.fault_aware_rows ? " (fault-aware row order)" : ""),
                a.chip.wire_ohm);
    std::printf("periphery: ADC %s, DAC %s, read noise %s, %d read%s per calibration sample\n",
                a.chip.adc_bits ? detail::concat(a.chip.adc_bits, "-bit per ", a.chip.adc_per_tile ? "tile" : "column",
                                                 ", headroom ", a.chip.adc_headroom,
                                                 a.recalibrate_adc ? ", ranges widened in calibration" : "")
                                      .c_str()
                                : "ideal",
                a.chip.dac_bits ? detail::concat(a.chip.dac_bits, "-bit").c_str() : "ideal",
                a.chip.read_noise ? "CMO ReRAM" : "none", a.reads, a.reads == 1 ? "" : "s");
  }
  std::printf("RRAM writes: %llu at programming, %llu during calibration\n",
              static_cast<unsigned long long>(chip->writes_programmed()),
              static_cast<unsigned long long>(cal.rram_writes + bp.rram_writes));
  std::printf("time: deploy + drift %.3f s, feature-KD calibration %.3f s (%zu layers)", chip->deploy_seconds(), cal.seconds,
              cal.layers.size());
  if (a.backprop) std::printf(", backprop %.3f s", bp.seconds);
  std::printf(", evaluation %.3f s (%.0f images/s)\n", calibrated.seconds, calibrated.images_per_s());

  std::string csv = "metric,value\n";
  auto row = [&](const char* k, double v) { csv += detail::concat(k, ",", v, "\n"); };
  row("rho", a.chip.preset == lab::drift_preset::relative ? a.chip.rho : 0.0);
  row("time_s", a.chip.preset == lab::drift_preset::relative ? 0.0 : a.chip.time_s);
  row("g_min_ratio", a.chip.g_min_ratio);
  row("sa0", a.chip.faults.sa0);
  row("sa1", a.chip.faults.sa1);
  row("wire_ohm", a.chip.wire_ohm);
  row("fault_aware", a.chip.fault_aware ? 1.0 : 0.0);
  if (a.chip.fault_aware_rows) row("fault_aware_rows", 1.0);  // only when on, so earlier CSVs stay comparable
  row("adc_bits", a.chip.adc_bits);
  row("dac_bits", a.chip.dac_bits);
  row("read_noise", a.chip.read_noise ? 1.0 : 0.0);
  row("reads", a.reads);
  row("adc_per_tile", a.chip.adc_per_tile ? 1.0 : 0.0);
  row("adc_headroom", a.chip.adc_headroom);
  row("adc_recalibrated", a.recalibrate_adc ? 1.0 : 0.0);
  if (a.inference == adapter_inference::merged) row("merged_inference", 1.0);  // absent: factorised
  if (a.training_kernel == low_rank_kernel::direct) row("direct_training_kernel", 1.0);  // absent: shift-add
  if (a.test_offset > 0) row("test_offset", static_cast<double>(a.test_offset));  // absent: from the first test image
  row("samples", static_cast<double>(a.samples));
  row("rank", static_cast<double>(a.rank));
  row("ideal_top1", ideal.top1);
  row("drifted_top1", drifted.top1);
  row("compensated_top1", compensated.top1);
  row("calibrated_top1", calibrated.top1);
  if (a.backprop) row("backprop_top1", backprop.top1);
  row("adapter_parameters", static_cast<double>(f.parameters));
  row("adapter_share_percent", f.share_percent());
  row("sram_bytes", static_cast<double>(f.sram_bytes));
  row("rram_writes_during_calibration", static_cast<double>(cal.rram_writes + bp.rram_writes));
  row("deploy_drift_seconds", chip->deploy_seconds());
  row("calibration_seconds", cal.seconds);
  if (a.backprop) row("backprop_seconds", bp.seconds);
  row("evaluation_seconds", calibrated.seconds);
  row("ideal_evaluation_seconds", ideal.seconds);
  row("peak_rss_mib", peak_rss_mib());
  write_file_atomically(a.csv, [&](atomic_writer& w) { w.write(csv); });
  std::printf("wrote %s\n", std::filesystem::absolute(a.csv).c_str());
  return cal.rram_writes == 0 && bp.rram_writes == 0 && chip->rram_writes() == chip->writes_programmed() ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
