// Layer-wise feature-KD calibration (the main job's calibration phase): the
// shipped ResNet-20 Fashion-MNIST teacher programmed onto crossbars
// (differential pairs, 8-bit cells, 0-40 uS, per-column scale), 20% relative
// drift (seed 1), rank-2 DoRA adapters, 100 Adam steps per layer, lr 1e-2, on
// N training images chosen by sample_indices(60000, N, 0) -- what
// examples/calibrate_fashion_mnist runs.
//
//   calibrate_layer/N      one stage-2 conv (layer2.1.conv1: 32 -> 32 channels, 14x14), N images
//   calibrate_resnet20/N   all 22 layers (fresh adapters each iteration; detach_adapters() is untimed)
//   calibrate_resnet20_cold/10   the same on a freshly deployed chip and teacher with oneDNN's
//                          primitive cache off: what the first calibration at a new N costs
//   evaluate_calibrated/250      inference of the drifted, calibrated chip, batch 250 (the demo's evaluation)
//   evaluate_drifted/250         the same without adapters (the bare drifted chip)
//
// Counters: steps/s (Adam steps, all layers), images/s (calibration images
// through an adapter's forward + backward per second: N x steps / time; for
// the evaluate_* benchmarks, test images per second).
// Without the Fashion-MNIST files (Debian's dataset-fashion-mnist) the
// calibration images are random; without the shipped teacher the weights are.

#include "bench_util.hpp"

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/random.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <string>

namespace {

using namespace rimc;

const std::filesystem::path model_path = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";

network teacher_network() {
  network net = resnet20(1, 10, 28);
  if (std::filesystem::exists(model_path)) {
    net.load(model_path);
  } else {
    bench::randomise(net, 0.1f);
  }
  net.fold_batch_norm();
  return net;
}

/// The main job's chip: every conv / linear on crossbars, 20% relative drift, drift seed 1.
struct chip {
  network net = teacher_network();
  analog_deployment<> deployment;
  chip() {
    analog_options opt;
    opt.device.g_min_us = 0.0;
    opt.device.g_max_us = 40.0;
    deployment = deploy_analog(net, opt);
    deployment.drift_to(relative_drift{}, 0.2, 1);
  }
};

/// Fashion-MNIST's training and test images, loaded once (empty when the files are missing).
struct data {
  dataset train, test;
  data() {
    if (!std::filesystem::exists(fashion_mnist_dir)) return;
    train = load_mnist_like(fashion_mnist_dir, "train");
    test = load_mnist_like(fashion_mnist_dir, "test");
  }
  static const data& get() {
    static const data d;
    return d;
  }
  /// The demo's N calibration images (random ones without the data set).
  [[nodiscard]] Tensor calibration(std::int64_t n) const {
    if (train.size() == 0) {
      Tensor x(Shape{n, 1, 28, 28});
      fill_uniform(x, counter_rng(11), -1, 2);
      return x;
    }
    return train.subset(sample_indices(train.size(), n, 0)).images;
  }
  [[nodiscard]] Tensor test_batch(std::int64_t n) const {
    if (test.size() == 0) {
      Tensor x(Shape{n, 1, 28, 28});
      fill_uniform(x, counter_rng(12), -1, 2);
      return x;
    }
    return test.batch(0, n);
  }
};

calibration_config demo_config() {
  calibration_config cfg;
  cfg.rank = 2;
  cfg.steps = 100;
  cfg.lr = 1e-2;
  cfg.seed = 0;
  return cfg;
}

void set_counters(benchmark::State& state, std::int64_t n, std::int64_t steps) {
  state.counters["steps/s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(n * steps), benchmark::Counter::kIsIterationInvariantRate);
}

void calibrate(benchmark::State& state, const std::vector<std::string>& targets) {
  const auto n = state.range(0);
  const network teacher = teacher_network();
  chip c;
  const Tensor images = data::get().calibration(n);
  calibration_config cfg = demo_config();
  cfg.targets = targets;
  std::int64_t steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    c.net.detach_adapters();
    state.ResumeTiming();
    const calibration_result r = calibrate_feature_kd(teacher, c.net, images, cfg);
    steps = 0;
    for (const auto& l : r.layers) steps += l.steps;
    benchmark::DoNotOptimize(r.seconds);
  }
  set_counters(state, n, steps);
}

void calibrate_layer(benchmark::State& state) { calibrate(state, {"layer2.1.conv1"}); }
void calibrate_resnet20(benchmark::State& state) { calibrate(state, {}); }

void calibrate_resnet20_cold(benchmark::State& state) {
  const auto n = state.range(0);
  const Tensor images = data::get().calibration(n);
  const int capacity = dnnl::get_primitive_cache_capacity();
  std::int64_t steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto teacher = std::make_unique<network>(teacher_network());
    auto c = std::make_unique<chip>();
    dnnl::set_primitive_cache_capacity(0);
    state.ResumeTiming();
    const calibration_result r = calibrate_feature_kd(*teacher, c->net, images, demo_config());
    state.PauseTiming();
    dnnl::set_primitive_cache_capacity(capacity);
    c.reset();
    teacher.reset();
    state.ResumeTiming();
    steps = 0;
    for (const auto& l : r.layers) steps += l.steps;
  }
  set_counters(state, n, steps);
}

void evaluate(benchmark::State& state, bool adapters) {
  const auto batch = state.range(0);
  const network teacher = teacher_network();
  chip c;
  if (adapters) (void)calibrate_feature_kd(teacher, c.net, data::get().calibration(10), demo_config());
  const Tensor x = data::get().test_batch(batch);
  Tensor y = c.net.forward(x);
  for (auto _ : state) {
    y = c.net.forward(x);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}

void evaluate_calibrated(benchmark::State& state) { evaluate(state, true); }
void evaluate_drifted(benchmark::State& state) { evaluate(state, false); }

}  // namespace

BENCHMARK(calibrate_layer)->Arg(1)->Arg(10)->Arg(100)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20)->Arg(1)->Arg(10)->Arg(100)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20_cold)->Arg(10)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(evaluate_calibrated)->Arg(250)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(evaluate_drifted)->Arg(250)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
