// The main job: the shipped ResNet-20 teacher is programmed onto RRAM
// crossbars, the conductances drift (20% relative drift by default), and
// DoRA adapters in SRAM are calibrated layer by layer from N = 10 training
// images by feature distillation, with the RRAM left untouched. Prints a
// table (ideal, drifted, per-column drift compensation and calibrated
// accuracy, adapter share, SRAM bytes, RRAM writes, calibration time) and
// writes it as CSV.
//
//   calibrate_fashion_mnist [--rho 0.2] [--samples 10] [--rank 2] [--steps 100] [--lr 0.01]
//                           [--seed 0] [--drift-seed 1] [--threads 2] [--test-images 10000]
//                           [--from-teacher-norms] [--bp-steps 200] [--bp-lr 0.01] [--bp-kl 1]
//                           [--csv calibration.csv]

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/crossbar/compensation.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/models.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace {

using namespace rimc;

struct args {
  double rho = 0.2, lr = 1e-2, bp_lr = 1e-2, bp_kl = 1.0;
  int bp_steps = 200;
  std::int64_t samples = 10, rank = 2, test_images = 10000;
  int steps = 100, threads = 2;
  std::uint64_t seed = 0, drift_seed = 1;
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
    if (k == "--rho") a.rho = std::atof(next());
    else if (k == "--lr") a.lr = std::atof(next());
    else if (k == "--samples") a.samples = std::atoll(next());
    else if (k == "--rank") a.rank = std::atoll(next());
    else if (k == "--steps") a.steps = std::atoi(next());
    else if (k == "--threads") a.threads = std::atoi(next());
    else if (k == "--seed") a.seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--drift-seed") a.drift_seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--test-images") a.test_images = std::atoll(next());
    else if (k == "--from-teacher-norms") a.from_teacher_norms = true;
    else if (k == "--bp-steps") a.bp_steps = std::atoi(next());
    else if (k == "--bp-lr") a.bp_lr = std::atof(next());
    else if (k == "--bp-kl") a.bp_kl = std::atof(next());
    else if (k == "--csv") a.csv = next();
    else if (k == "--model") a.model = next();
    else throw value_error(detail::concat("calibrate_fashion_mnist: unknown option '", k, "'"));
  }
  return a;
}

network load_folded(const std::string& path) {
  network net = resnet20(1, 10, 28);
  net.load(path);
  net.fold_batch_norm();
  return net;
}

}  // namespace

int main(int argc, char** argv) try {
  const args a = parse(argc, argv);
  set_num_threads(a.threads);
  std::fprintf(stderr, "loading Fashion-MNIST and the teacher...\n");
  const dataset train = load_mnist_like(fashion_mnist_dir, "train");
  dataset test = load_mnist_like(fashion_mnist_dir, "test");
  if (a.test_images < test.size()) {
    std::vector<std::int64_t> first(static_cast<std::size_t>(a.test_images));
    for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<std::int64_t>(i);
    test = test.subset(first);
  }
  const network teacher = load_folded(a.model);
  const eval_result ideal = evaluate(teacher, test);

  // Program every conv and linear layer onto crossbars (differential pairs, 8-bit cells, g_min = 0).
  network student = load_folded(a.model);
  analog_options opt;
  opt.device.g_min_us = 0.0;
  opt.device.g_max_us = 40.0;
  opt.program_seed = a.seed;
  auto chip = deploy_analog(student, opt);
  const std::uint64_t writes_programmed = chip.rram_writes();
  const eval_result programmed = evaluate(student, test);

  // Per-column drift compensation needs a reference read right after programming.
  std::vector<drift_compensation> comp(chip.convs_.size() + chip.linears_.size(), drift_compensation(compensation_kind::per_column));
  for (std::size_t i = 0; i < chip.convs_.size(); ++i) comp[i].record_reference(chip.convs_[i]->analog());
  for (std::size_t i = 0; i < chip.linears_.size(); ++i) comp[chip.convs_.size() + i].record_reference(chip.linears_[i]->analog());

  std::fprintf(stderr, "drifting (relative drift %.2f, seed %llu)...\n", a.rho, static_cast<unsigned long long>(a.drift_seed));
  chip.drift_to(relative_drift{}, a.rho, a.drift_seed);
  const eval_result drifted = evaluate(student, test);

  for (std::size_t i = 0; i < chip.convs_.size(); ++i) chip.convs_[i]->analog().set_column_gain(comp[i].gains(chip.convs_[i]->analog()));
  for (std::size_t i = 0; i < chip.linears_.size(); ++i)
    chip.linears_[i]->analog().set_column_gain(comp[chip.convs_.size() + i].gains(chip.linears_[i]->analog()));
  const eval_result compensated = evaluate(student, test);
  for (auto& c : chip.convs_) c->analog().set_column_gain(std::vector<float>(static_cast<std::size_t>(c->effective_weights().dim(0)), 1.0f));
  for (auto& l : chip.linears_) l->analog().set_column_gain(std::vector<float>(static_cast<std::size_t>(l->effective_weights().dim(0)), 1.0f));

  std::fprintf(stderr, "calibrating with %lld samples, rank %lld, %d steps per layer...\n",
               static_cast<long long>(a.samples), static_cast<long long>(a.rank), a.steps);
  const dataset calib = train.subset(sample_indices(train.size(), a.samples, a.seed));
  calibration_config cfg;
  cfg.rank = a.rank;
  cfg.steps = a.steps;
  cfg.lr = a.lr;
  cfg.seed = a.seed;
  cfg.magnitude_from_teacher = a.from_teacher_norms;
  const calibration_result cal = calibrate_feature_kd(teacher, student, calib.images, cfg);
  const eval_result calibrated = evaluate(student, test);

  // The baseline: the same chip (same programming and drift seeds), adapters trained jointly by backprop.
  std::fprintf(stderr, "backprop baseline: %d joint steps, CE + %.1f x KL...\n", a.bp_steps, a.bp_kl);
  network bp_student = load_folded(a.model);
  auto bp_chip = deploy_analog(bp_student, opt);
  bp_chip.drift_to(relative_drift{}, a.rho, a.drift_seed);
  backprop_config bcfg;
  bcfg.rank = a.rank;
  bcfg.steps = a.bp_steps;
  bcfg.lr = a.bp_lr;
  bcfg.kl_weight = a.bp_kl;
  bcfg.seed = a.seed;
  const calibration_result bp = calibrate_backprop(teacher, bp_student, calib.images, calib.labels, bcfg);
  const eval_result backprop = evaluate(bp_student, test);

  const auto& f = cal.footprint;
  std::printf("ResNet-20 on Fashion-MNIST (%lld test images), relative drift %.2f, N = %lld, rank %lld\n\n",
              static_cast<long long>(test.size()), a.rho, static_cast<long long>(a.samples), static_cast<long long>(a.rank));
  std::printf("%-34s %10s\n", "setting", "top-1 %");
  std::printf("%-34s %10.2f\n", "ideal (digital teacher)", 100 * ideal.top1);
  std::printf("%-34s %10.2f\n", "programmed, before drift", 100 * programmed.top1);
  std::printf("%-34s %10.2f\n", "drifted", 100 * drifted.top1);
  std::printf("%-34s %10.2f\n", "per-column drift compensation", 100 * compensated.top1);
  std::printf("%-34s %10.2f\n", "DoRA feature-KD calibration", 100 * calibrated.top1);
  std::printf("%-34s %10.2f\n", "DoRA backprop calibration", 100 * backprop.top1);
  std::printf("\nadapter parameters %lld (%.2f%% of %lld RRAM weights), SRAM %zu bytes (fp32)\n",
              static_cast<long long>(f.parameters), f.share_percent(), static_cast<long long>(f.rram_weights), f.sram_bytes);
  std::printf("RRAM writes: %llu at programming, %llu during calibration\n",
              static_cast<unsigned long long>(writes_programmed), static_cast<unsigned long long>(cal.rram_writes));
  std::printf("calibration time %.3f s (feature KD, %zu layers), %.3f s (backprop); evaluation %.0f images/s\n",
              cal.seconds, cal.layers.size(), bp.seconds, calibrated.images_per_s());

  std::string csv = "metric,value\n";
  auto row = [&](const char* k, double v) { csv += detail::concat(k, ",", v, "\n"); };
  row("rho", a.rho);
  row("samples", static_cast<double>(a.samples));
  row("rank", static_cast<double>(a.rank));
  row("ideal_top1", ideal.top1);
  row("programmed_top1", programmed.top1);
  row("drifted_top1", drifted.top1);
  row("compensated_top1", compensated.top1);
  row("calibrated_top1", calibrated.top1);
  row("backprop_top1", backprop.top1);
  row("adapter_share_percent", f.share_percent());
  row("sram_bytes", static_cast<double>(f.sram_bytes));
  row("rram_writes_during_calibration", static_cast<double>(cal.rram_writes));
  row("calibration_seconds", cal.seconds);
  row("backprop_seconds", bp.seconds);
  write_file_atomically(a.csv, [&](atomic_writer& w) { w.write(csv); });
  std::printf("wrote %s\n", std::filesystem::absolute(a.csv).c_str());
  return cal.rram_writes == 0 && bp.rram_writes == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
