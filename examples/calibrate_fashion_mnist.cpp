// The main job: the shipped ResNet-20 teacher is programmed onto RRAM
// crossbars, the conductances drift (20% relative drift by default), and
// DoRA adapters in SRAM are calibrated layer by layer from N = 10 training
// images by feature distillation, with the RRAM left untouched. Prints a
// table (ideal, drifted, per-column drift compensation, feature-KD and
// backprop calibrated accuracy, adapter share, SRAM bytes, RRAM writes,
// calibration time) and writes it as CSV, with the time of each phase.
//
//   calibrate_fashion_mnist [--preset relative|cmo|neurram] [--rho 0.2] [--time 86400] [--g-min-ratio 0]
//                           [--samples 10] [--rank 2] [--steps 100] [--lr 0.01] [--from-teacher-norms]
//                           [--seed 0] [--drift-seed 1] [--threads 2] [--test-images 10000] [--eval-batch 50]
//                           [--loss-path automatic|statistics|direct]
//                           [--bp-steps 100] [--bp-lr 0.001] [--bp-ce 0] [--bp-kl 1] [--no-backprop]
//                           [--csv calibration.csv] [--model path.safetensors]
//
// --rho applies to the relative preset, --time (seconds since programming) to cmo and neurram.
// --loss-path: how each calibration step is computed (calibration_config::loss_path; both exact).

#include "fashion_mnist_lab.hpp"

#include <rimc/io/atomic_file.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include <sys/resource.h>

namespace {

using namespace rimc;

struct args {
  lab::chip_config chip;
  // The backprop baseline as tuned by calibration_sweeps --sweep bp-tune: KL to the teacher's logits only.
  double lr = 1e-2, bp_lr = 1e-3, bp_ce = 0.0, bp_kl = 1.0;
  int bp_steps = 100;
  bool backprop = true;
  std::int64_t samples = 10, rank = 2, test_images = 10000, eval_batch = 50;
  kd_loss_path loss_path = kd_loss_path::automatic;
  int steps = 100, threads = 2;
  std::uint64_t seed = 0;
  bool from_teacher_norms = false;
  std::string csv = "calibration.csv";
  std::string model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
};

args parse(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view k = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) throw value_error(detail::concat("calibrate_fashion_mnist: ", k, " needs a value"));
      return argv[++i];
    };
    if (k == "--preset") a.chip.preset = lab::parse_preset(next());
    else if (k == "--rho") a.chip.rho = std::atof(next());
    else if (k == "--time") a.chip.time_s = std::atof(next());
    else if (k == "--g-min-ratio") a.chip.g_min_ratio = std::atof(next());
    else if (k == "--lr") a.lr = std::atof(next());
    else if (k == "--samples") a.samples = std::atoll(next());
    else if (k == "--rank") a.rank = std::atoll(next());
    else if (k == "--steps") a.steps = std::atoi(next());
    else if (k == "--threads") a.threads = std::atoi(next());
    else if (k == "--seed") a.seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--drift-seed") a.chip.drift_seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--test-images") a.test_images = std::atoll(next());
    else if (k == "--eval-batch") a.eval_batch = std::atoll(next());
    else if (k == "--loss-path") a.loss_path = lab::parse_loss_path(next());
    else if (k == "--from-teacher-norms") a.from_teacher_norms = true;
    else if (k == "--bp-steps") a.bp_steps = std::atoi(next());
    else if (k == "--bp-lr") a.bp_lr = std::atof(next());
    else if (k == "--bp-ce") a.bp_ce = std::atof(next());
    else if (k == "--bp-kl") a.bp_kl = std::atof(next());
    else if (k == "--no-backprop") a.backprop = false;
    else if (k == "--csv") a.csv = next();
    else if (k == "--model") a.model = next();
    else throw value_error(detail::concat("calibrate_fashion_mnist: unknown option '", k, "'"));
  }
  if (a.samples < 1) throw value_error(detail::concat("calibrate_fashion_mnist: --samples must be >= 1, got ", a.samples));
  if (a.threads < 1) throw value_error(detail::concat("calibrate_fashion_mnist: --threads must be >= 1, got ", a.threads));
  if (a.eval_batch < 1) {
    throw value_error(detail::concat("calibrate_fashion_mnist: --eval-batch must be >= 1, got ", a.eval_batch));
  }
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
  const lab::fashion_mnist_lab lab(a.model, a.test_images, a.eval_batch);
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
  calibration_config cfg;
  cfg.rank = a.rank;
  cfg.steps = a.steps;
  cfg.lr = a.lr;
  cfg.seed = a.seed;
  cfg.magnitude_from_teacher = a.from_teacher_norms;
  cfg.loss_path = a.loss_path;
  const calibration_result cal = calibrate_feature_kd(lab.teacher(), chip->net(), calib.images, cfg);
  const eval_result calibrated = lab.evaluate(chip->net());

  // The baseline: the same drifted chip, adapters trained jointly by backprop.
  calibration_result bp;
  eval_result backprop;
  if (a.backprop) {
    std::fprintf(stderr, "backprop baseline: %d joint steps, %.1f x CE + %.1f x KL...\n", a.bp_steps, a.bp_ce, a.bp_kl);
    chip->reset();
    backprop_config bcfg;
    bcfg.rank = a.rank;
    bcfg.steps = a.bp_steps;
    bcfg.lr = a.bp_lr;
    bcfg.ce_weight = a.bp_ce;
    bcfg.kl_weight = a.bp_kl;
    bcfg.seed = a.seed;
    bp = calibrate_backprop(lab.teacher(), chip->net(), calib.images, calib.labels, bcfg);
    backprop = lab.evaluate(chip->net());
  }

  const auto& f = cal.footprint;
  const auto pct = [](const eval_result& r) { return 100 * r.top1; };
  if (a.chip.preset == lab::drift_preset::relative) {
    std::printf("ResNet-20 on Fashion-MNIST (%lld test images), relative drift %.2f (g_min = %.2f g_max), N = %lld, rank %lld\n\n",
                static_cast<long long>(lab.test().size()), a.chip.rho, a.chip.g_min_ratio, static_cast<long long>(a.samples),
                static_cast<long long>(a.rank));
  } else {
    std::printf("ResNet-20 on Fashion-MNIST (%lld test images), %s drift at t = %g s, N = %lld, rank %lld\n\n",
                static_cast<long long>(lab.test().size()), lab::to_string(a.chip.preset), a.chip.time_s,
                static_cast<long long>(a.samples), static_cast<long long>(a.rank));
  }
  std::printf("%-34s %10s\n", "setting", "top-1 %");
  std::printf("%-34s %10.2f\n", "ideal (digital teacher)", pct(ideal));
  std::printf("%-34s %10.2f\n", "drifted", pct(drifted));
  std::printf("%-34s %10.2f\n", "per-column drift compensation", pct(compensated));
  std::printf("%-34s %10.2f\n", "DoRA feature-KD calibration", pct(calibrated));
  if (a.backprop) std::printf("%-34s %10.2f\n", "DoRA backprop calibration", pct(backprop));
  std::printf("\nadapter parameters %lld (%.2f%% of %lld RRAM weights), SRAM %zu bytes (fp32)\n",
              static_cast<long long>(f.parameters), f.share_percent(), static_cast<long long>(f.rram_weights), f.sram_bytes);
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
  row("peak_rss_mib", peak_rss_mib());
  write_file_atomically(a.csv, [&](atomic_writer& w) { w.write(csv); });
  std::printf("wrote %s\n", std::filesystem::absolute(a.csv).c_str());
  return cal.rram_writes == 0 && bp.rram_writes == 0 && chip->rram_writes() == chip->writes_programmed() ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
