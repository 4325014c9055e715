// Layer-wise feature-KD calibration (the main job's calibration phase): the
// shipped ResNet-20 Fashion-MNIST teacher programmed onto crossbars
// (differential pairs, 8-bit cells, 0-40 uS, per-column scale), 20% relative
// drift (seed 1), rank-2 DoRA adapters, 100 Adam steps per layer, lr 1e-2, on
// N training images chosen by sample_indices(60000, N, 0) -- what
// examples/calibrate_fashion_mnist runs.
//
//   calibrate_layer/N      one stage-2 conv (layer2.1.conv1: 32 -> 32 channels, 14x14), N images
//   calibrate_resnet20/N   all 22 layers (fresh adapters each iteration; detach_adapters() is untimed),
//                          N = 1, 2, 5, 10, 20, 50, 100; each layer's steps on the path the cost model
//                          picks (loss_path automatic: statistics for every ResNet-20 layer)
//   calibrate_resnet20_direct/N  the same with every step computed directly over the N images
//                          (loss_path direct, the method before the statistics path)
//   calibrate_resnet50/S/N four layers of ResNet-50 at S x S (random weights, 20% drift): the 3x3
//                          conv2 of the first block of each stage, N images (random)
//   calibrate_resnet50_whole/S/N every conv and the fc of ResNet-50 at S x S (torchvision's
//                          initialisation, 20% drift), rank 4, N random images, 1 iteration:
//                          the paper's headline setting at S = 224, N = 10. Counters add the peak
//                          RSS of the process (run it alone: --benchmark_filter=resnet50_whole) and
//                          how many layers took each loss path.
//   calibrate_resnet50_whole_direct/S/N  the same with the direct training kernels
//                          (calibration_config::training_kernel) on the layers that take the direct path
//   calibrate_resnet20_cold/10   the same on a freshly deployed chip and teacher with oneDNN's
//                          primitive cache off: every primitive created afresh, none shared
//                          between identical layers or between teacher and chip (the worst case)
//   calibrate_resnet20_fresh/10  the same with oneDNN's primitive cache emptied before each
//                          calibration but on during it, as in a fresh process: what the first
//                          calibration at a new N costs (identical layers share primitives)
//   evaluate_calibrated/B        inference of the drifted, calibrated chip, batch B = 50 (the demo's
//                                evaluation) and 250
//   evaluate_calibrated_merged/B the same with adapter_inference::merged (one conv per layer on the
//                                merged weights; the chip's periphery is ideal)
//   evaluate_drifted/B           the same without adapters (the bare drifted chip)
//   calibrate_layer/isa:T/10, calibrate_resnet20/isa:T/10   the same with rimc's own kernels capped
//                          at each ISA tier T below the machine's (avx2, scalar; kernels/arch/isa.hpp),
//                          in the same run; oneDNN stays on its best ISA (cap it for the whole
//                          process with ONEDNN_MAX_CPU_ISA to time a machine without AVX-512)
//
// Counters: steps/s (Adam steps, all layers), images/s (calibration images
// through an adapter's forward + backward per second: N x steps / time; for
// the evaluate_* benchmarks, test images per second), MACs (multiply-adds
// of one forward of the calibrated layers over the N images: the scale of the
// frozen work), layers.
// Without the Fashion-MNIST files (Debian's dataset-fashion-mnist) the
// calibration images are random; without the shipped teacher the weights are.

#include "bench_util.hpp"

#include <sys/resource.h>

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/random.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
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
    deployment.drift_to(relative_drift{}, drift_level{0.2}, 1);
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

/// Multiply-adds of one forward of `targets` (all conv2d / linear nodes when empty) per image.
double layer_macs(const network& net, const std::vector<std::string>& targets) {
  double macs = 0;
  for (const auto& n : net.nodes()) {
    if (n.kind != op_kind::conv2d && n.kind != op_kind::linear) continue;
    if (!targets.empty() && std::find(targets.begin(), targets.end(), n.name) == targets.end()) continue;
    const double pixels = n.kind == op_kind::conv2d ? static_cast<double>(n.shape[1] * n.shape[2]) : 1.0;
    macs += static_cast<double>(n.params.at("weight").numel()) * pixels;
  }
  return macs;
}

void set_counters(benchmark::State& state, std::int64_t n, std::int64_t steps) {
  state.counters["steps/s"] = benchmark::Counter(static_cast<double>(steps), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(n * steps), benchmark::Counter::kIsIterationInvariantRate);
}

void calibrate(benchmark::State& state, const std::vector<std::string>& targets,
               kd_loss_path path = kd_loss_path::automatic, isa_tier tier = active_isa()) {
  const isa_guard cap(tier);
  const auto n = state.range(0);
  const network teacher = teacher_network();
  chip c;
  const Tensor images = data::get().calibration(n);
  calibration_config cfg = demo_config();
  cfg.targets = targets;
  cfg.loss_path = path;
  std::int64_t steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    detach_adapters(c.net);
    state.ResumeTiming();
    const calibration_result r = calibrate_feature_kd(teacher, c.net, images, cfg);
    steps = 0;
    for (const auto& l : r.layers) steps += l.steps;
    benchmark::DoNotOptimize(r.seconds);
  }
  set_counters(state, n, steps);
  state.counters["MACs"] = layer_macs(c.net, targets) * static_cast<double>(n);
  state.counters["layers"] = static_cast<double>(targets.empty() ? 22 : targets.size());
}

void calibrate_layer(benchmark::State& state) { calibrate(state, {"layer2.1.conv1"}); }
void calibrate_resnet20(benchmark::State& state) { calibrate(state, {}); }
void calibrate_resnet20_direct(benchmark::State& state) { calibrate(state, {}, kd_loss_path::direct); }

void calibrate_resnet50(benchmark::State& state) {
  const auto size = state.range(0), n = state.range(1);
  const std::vector<std::string> targets{"layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"};
  network teacher = resnet50(1000, size);
  bench::randomise(teacher, 0.05f);
  teacher.fold_batch_norm();
  network student = resnet50(1000, size);
  bench::randomise(student, 0.05f);
  student.fold_batch_norm();
  analog_options opt;
  opt.device.g_min_us = 0.0;
  opt.device.g_max_us = 40.0;
  auto chip = deploy_analog(student, opt, targets);
  chip.drift_to(relative_drift{}, drift_level{0.2}, 1);
  Tensor images(Shape{n, 3, size, size});
  fill_uniform(images, counter_rng(13), -2, 2);
  calibration_config cfg = demo_config();
  cfg.targets = targets;
  std::int64_t steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    detach_adapters(student);
    state.ResumeTiming();
    const calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
    steps = 0;
    for (const auto& l : r.layers) steps += l.steps;
  }
  set_counters(state, n, steps);
  state.counters["MACs"] = layer_macs(student, targets) * static_cast<double>(n);
  state.counters["layers"] = static_cast<double>(targets.size());
}

void resnet50_whole(benchmark::State& state, low_rank_kernel kernel) {
  const auto size = state.range(0), n = state.range(1);
  network teacher = resnet50(1000, size);
  bench::torchvision_init(teacher);
  teacher.fold_batch_norm();
  network student = resnet50(1000, size);
  bench::torchvision_init(student);
  student.fold_batch_norm();
  analog_options opt;
  opt.device.g_min_us = 0.0;
  opt.device.g_max_us = 40.0;
  auto chip = deploy_analog(student, opt);
  chip.drift_to(relative_drift{}, drift_level{0.2}, 1);
  Tensor images(Shape{n, 3, size, size});
  fill_uniform(images, counter_rng(13), -2, 2);
  calibration_config cfg = demo_config();
  cfg.rank = 4;
  cfg.training_kernel = kernel;
  std::int64_t steps = 0, statistics = 0, direct = 0;
  double mse_before = 0, mse_after = 0;
  for (auto _ : state) {
    state.PauseTiming();
    detach_adapters(student);
    state.ResumeTiming();
    const calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
    steps = statistics = direct = 0;
    mse_before = mse_after = 0;
    for (const auto& l : r.layers) {
      steps += l.steps;
      (l.path == kd_loss_path::statistics ? statistics : direct) += 1;
      mse_before += l.mse_before;
      mse_after += l.mse_after;
    }
  }
  set_counters(state, n, steps);
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  state.counters["peak_rss_mib"] = static_cast<double>(u.ru_maxrss) / 1024.0;
  state.counters["statistics_layers"] = static_cast<double>(statistics);
  state.counters["direct_layers"] = static_cast<double>(direct);
  state.counters["layers"] = static_cast<double>(statistics + direct);
  state.counters["mse_after_over_before"] = mse_after / mse_before;
}

void calibrate_resnet50_whole(benchmark::State& state) { resnet50_whole(state, low_rank_kernel::shift_add); }
void calibrate_resnet50_whole_direct(benchmark::State& state) { resnet50_whole(state, low_rank_kernel::direct); }

/// Calibrations on a freshly deployed chip and teacher; with `cache_off` oneDNN's primitive
/// cache stays off during the calibration, else it is only emptied before it.
void calibrate_fresh_chip(benchmark::State& state, bool cache_off) {
  const auto n = state.range(0);
  const Tensor images = data::get().calibration(n);
  const int capacity = dnnl::get_primitive_cache_capacity();
  std::int64_t steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto teacher = std::make_unique<network>(teacher_network());
    auto c = std::make_unique<chip>();
    dnnl::set_primitive_cache_capacity(0);  // empties it
    if (!cache_off) dnnl::set_primitive_cache_capacity(capacity);
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

void calibrate_resnet20_cold(benchmark::State& state) { calibrate_fresh_chip(state, true); }
void calibrate_resnet20_fresh(benchmark::State& state) { calibrate_fresh_chip(state, false); }

void evaluate(benchmark::State& state, bool adapters, adapter_inference form = adapter_inference::factorised) {
  const auto batch = state.range(0);
  const network teacher = teacher_network();
  chip c;
  if (adapters) (void)calibrate_feature_kd(teacher, c.net, data::get().calibration(10), demo_config());
  set_adapter_inference(c.net, form);
  const Tensor x = data::get().test_batch(batch);
  Tensor y = c.net.forward(x);
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  for (auto _ : state) {
    y = c.net.forward(x);
    benchmark::DoNotOptimize(y.data());
  }
  getrusage(RUSAGE_SELF, &after);
  state.counters["page_faults/forward"] = static_cast<double>(after.ru_minflt - before.ru_minflt) /
                                         static_cast<double>(state.iterations());
  state.counters["images/s"] = benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}

void evaluate_calibrated(benchmark::State& state) { evaluate(state, true); }
void evaluate_calibrated_merged(benchmark::State& state) { evaluate(state, true, adapter_inference::merged); }
void evaluate_drifted(benchmark::State& state) { evaluate(state, false); }

}  // namespace

BENCHMARK(calibrate_layer)->Arg(1)->Arg(10)->Arg(100)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20)
    ->Arg(1)->Arg(2)->Arg(5)->Arg(10)->Arg(20)->Arg(50)->Arg(100)
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20_direct)->Arg(10)->Arg(100)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet50)->Args({32, 10})->Args({224, 10})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet50_whole)->Args({32, 10})->Args({224, 10})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet50_whole_direct)
    ->Args({32, 10})
    ->Args({224, 10})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20_cold)->Arg(10)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(calibrate_resnet20_fresh)->Arg(10)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(evaluate_calibrated)->Arg(50)->Arg(250)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(evaluate_calibrated_merged)->Arg(50)->Arg(250)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(evaluate_drifted)->Arg(50)->Arg(250)->UseRealTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  for (const isa_tier tier : {isa_tier::avx2, isa_tier::scalar}) {
    if (tier >= active_isa()) continue;
    const std::string t = "/isa:" + std::string(to_string(tier));
    benchmark::RegisterBenchmark(("calibrate_layer" + t).c_str(), [tier](benchmark::State& state) {
      calibrate(state, {"layer2.1.conv1"}, kd_loss_path::automatic, tier);
    })->Arg(10)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("calibrate_resnet20" + t).c_str(), [tier](benchmark::State& state) {
      calibrate(state, {}, kd_loss_path::automatic, tier);
    })->Arg(10)->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
