// Per-layer wall time of feature-KD calibration on each loss path, the data
// the automatic path choice (feature_statistics::cost / direct_cost) is
// fitted to. Runs at the active ISA tier (cap it with RIMC_MAX_ISA, and
// oneDNN's with ONEDNN_MAX_CPU_ISA, to measure another machine kind):
//
//   resnet20  the shipped Fashion-MNIST teacher (random weights without it),
//             every one of its 22 layers, 20% relative drift, N images
//   resnet50  four layers of ResNet-50 at 32x32 and 224x224 (random weights):
//             the 3x3 conv2 of the first block of each stage, N images
//
// Each setup is calibrated `--repeats` times on each path (rank 2, 100 Adam
// steps, lr 1e-2, as bench_calibration); a CSV row per layer and path gives
// the median of its layer_calibration::seconds, the geometry (P = N x output
// positions, K, O, r, steps) and the path `automatic` picks for it.
//
//   loss_paths [--n 10] [--repeats 3] [--csv FILE]
//
// tools/fit_cost_model.py fits the cost model's coefficients to these rows.

#include "bench_util.hpp"

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/random.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/models.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace rimc;

struct setup {
  std::string model;  ///< "resnet20" or "resnet50/<size>"
  network teacher, student;
  std::vector<std::string> targets;  ///< empty: every conv2d / linear node
  Tensor images;
};

analog_options chip_options() {
  analog_options opt;
  opt.device.g_min_us = 0.0;
  opt.device.g_max_us = 40.0;
  return opt;
}

setup resnet20_setup(std::int64_t n) {
  setup s{"resnet20", resnet20(1, 10, 28), resnet20(1, 10, 28), {}, Tensor(Shape{n, 1, 28, 28})};
  const std::filesystem::path model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
  for (network* net : {&s.teacher, &s.student}) {
    if (std::filesystem::exists(model)) {
      net->load(model);
    } else {
      bench::randomise(*net, 0.1f);
    }
    net->fold_batch_norm();
  }
  auto chip = deploy_analog(s.student, chip_options());
  chip.drift_to(relative_drift{}, drift_level{0.2}, 1);
  fill_uniform(s.images, counter_rng(11), -1, 2);
  return s;
}

setup resnet50_setup(std::int64_t size, std::int64_t n) {
  setup s{"resnet50/" + std::to_string(size), resnet50(1000, size), resnet50(1000, size),
          {"layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"},
          Tensor(Shape{n, 3, size, size})};
  for (network* net : {&s.teacher, &s.student}) {
    bench::randomise(*net, 0.05f);
    net->fold_batch_norm();
  }
  auto chip = deploy_analog(s.student, chip_options(), s.targets);
  chip.drift_to(relative_drift{}, drift_level{0.2}, 1);
  fill_uniform(s.images, counter_rng(13), -2, 2);
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

const char* path_name(kd_loss_path p) { return p == kd_loss_path::statistics ? "statistics" : "direct"; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Per-layer calibration time on each feature-KD loss path, at the active ISA tier"};
  std::int64_t n = 10;
  int repeats = 3;
  std::string csv;
  app.add_option("--n", n, "calibration images per setup")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--repeats", repeats, "calibrations per setup and path (the median is reported)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--csv", csv, "also write the rows to this file");
  CLI11_PARSE(app, argc, argv);

  try {
    calibration_config cfg;
    cfg.rank = 2;
    cfg.steps = 100;
    cfg.lr = 1e-2;
    std::vector<std::string> rows;
    const std::string tier(to_string(active_isa()));
    for (auto make : {+[](std::int64_t k) { return resnet20_setup(k); },
                      +[](std::int64_t k) { return resnet50_setup(32, k); },
                      +[](std::int64_t k) { return resnet50_setup(224, k); }}) {
      setup s = make(n);
      cfg.targets = s.targets;
      std::map<std::string, std::map<kd_loss_path, std::vector<double>>> seconds;
      std::map<std::string, kd_loss_path> picked;
      std::vector<std::string> order;
      // Alternate the paths so that a slow spell of the machine hits both.
      for (int rep = 0; rep < repeats; ++rep)
        for (const kd_loss_path path : {kd_loss_path::statistics, kd_loss_path::direct, kd_loss_path::automatic}) {
          detach_adapters(s.student);
          cfg.loss_path = path;
          const calibration_result r = calibrate_feature_kd(s.teacher, s.student, s.images, cfg);
          for (const auto& l : r.layers) {
            if (path == kd_loss_path::automatic) {
              picked[l.name] = l.path;
              continue;
            }
            if (rep == 0 && path == kd_loss_path::statistics) order.push_back(l.name);
            seconds[l.name][path].push_back(l.seconds);
          }
        }
      detach_adapters(s.student);
      for (const auto& g : select_layers(layer_geometries(s.student), order)) {
        for (const kd_loss_path path : {kd_loss_path::statistics, kd_loss_path::direct}) {
          rows.push_back(detail::concat(tier, ',', s.model, ',', g.name, ',', g.positions * n, ',', g.fan_in, ',',
                                        g.out_features, ',', cfg.rank, ',', cfg.steps, ',', path_name(path), ',',
                                        median(seconds[g.name][path]), ',', path_name(picked.at(g.name))));
        }
      }
      std::cerr << s.model << " done\n";
    }
    const std::string header = "tier,model,layer,P,K,O,r,steps,path,seconds,automatic";
    std::cout << header << '\n';
    for (const auto& r : rows) std::cout << r << '\n';
    if (!csv.empty()) {
      std::ofstream out(csv);
      out << header << '\n';
      for (const auto& r : rows) out << r << '\n';
      if (!out) throw io_error("loss_paths: cannot write --csv " + csv);
    }
  } catch (const std::exception& e) {
    std::cerr << "loss_paths: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
