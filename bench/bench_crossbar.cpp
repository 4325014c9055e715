// Analog (RRAM crossbar) layers on ResNet-20 (CIFAR, 32x32) and ResNet-50
// (ImageNet, 224x224) layer shapes at batch 32, 256 x 256 tiles:
//   program     - building the layer: quantising and programming every cell (cells/s)
//   drift       - drift_to(relative_drift, drift_level{0.2}) and the effective-weight rebuild (cells/s)
//   effective   - the forward with an ideal periphery: one oneDNN kernel on the effective weights
//   tile_adc8   - the tile-exact forward with an 8-bit per-tile ADC (convs: one oneDNN convolution per
//                 tile; linear: one matmul per tile on cache-sized row chunks)
//   tile_dac8_adc8 - the same with an 8-bit per-vector abs-max DAC too (convs then use im2col + matmul)
//   ratio       - both forwards timed back to back in one run; counter tile_over_effective
//   ratio_noisy - the same with CMO read noise and 1-ohm wires on the tile path (8-bit ADC)
//   ratio_realistic - the same on the realistic chip's periphery: calibrated 8-bit DAC,
//                 per-column 8-bit ADC, read noise, 1-ohm wires
//   network/resnet20_fmnist/<chip> - the shipped ResNet-20 (28 x 28, batch 50, every layer on
//                 crossbars) on the ideal periphery and on each of the above, back to back;
//                 counter over_ideal
// Forward benchmarks report GFLOPS (2 * MACs per second) and images/s; the
// label names the path (and oneDNN's implementation for the effective path).

#include "bench_util.hpp"

#include <rimc/crossbar.hpp>
#include <rimc/device.hpp>
#include <rimc/core/random.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace {

using namespace rimc;

constexpr std::int64_t batch = 32;

struct layer_shape {
  std::string net;
  std::int64_t c, o, hw, k, stride, pad;  // k = 0: a linear layer c -> o
};

std::vector<layer_shape> shapes() {
  return {
      // ResNet-20 on CIFAR: stem, the 3x3 convs of each stage, the stride-2 convs, the classifier.
      {"resnet20", 3, 16, 32, 3, 1, 1},
      {"resnet20", 16, 16, 32, 3, 1, 1},
      {"resnet20", 16, 32, 32, 3, 2, 1},
      {"resnet20", 32, 32, 16, 3, 1, 1},
      {"resnet20", 32, 64, 16, 3, 2, 1},
      {"resnet20", 64, 64, 8, 3, 1, 1},
      {"resnet20", 64, 100, 1, 0, 1, 0},
      // ResNet-50 on ImageNet: stem, layer1 3x3 and expansion 1x1, layer3 and layer4 3x3,
      // the layer4 stride-2 projection, the classifier.
      {"resnet50", 3, 64, 224, 7, 2, 3},
      {"resnet50", 64, 64, 56, 3, 1, 1},
      {"resnet50", 64, 256, 56, 1, 1, 0},
      {"resnet50", 256, 256, 14, 3, 1, 1},
      {"resnet50", 512, 512, 7, 3, 1, 1},
      {"resnet50", 1024, 2048, 14, 1, 2, 0},
      {"resnet50", 2048, 1000, 1, 0, 1, 0},
  };
}

std::string name_of(const layer_shape& s) {
  if (s.k == 0) return s.net + "/fc_" + std::to_string(s.c) + "x" + std::to_string(s.o);
  return s.net + "/c" + std::to_string(s.c) + "_o" + std::to_string(s.o) + "_" + std::to_string(s.hw) + "x" +
         std::to_string(s.hw) + "_k" + std::to_string(s.k) + "_s" + std::to_string(s.stride);
}

analog_options options() {
  analog_options opt;
  opt.device.noise = programming_noise::proportional(0.02);
  opt.program_seed = 1;
  return opt;
}

periphery_config adc8() {
  periphery_config p;
  p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.99};
  return p;
}

/// adc8 with CMO ReRAM read noise (1 day) and 1-ohm wire segments.
periphery_config noisy() {
  periphery_config p = adc8();
  p.read = presets::cmo_reram_read_noise(seconds{86400.0});
  p.noise_seed = 5;
  p.wires.segment_ohm = 1.0;
  return p;
}

/// The realistic chip's periphery (examples' --chip realistic): noisy() with a calibrated
/// 8-bit DAC and per-column ADC ranges (headroom 1.5; the examples' chip now uses 2, which
/// changes the ranges, not the work).
periphery_config realistic() {
  periphery_config p = noisy();
  p.dac = dac_config{8, dac_scaling::calibrated, 1.0, 99.99};
  p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.99, true, 1.5};
  return p;
}

/// One layer (conv or linear) with its weights, input and FLOP count.
struct problem {
  layer_shape s;
  Tensor w, x;
  conv2d_params params;
  double flops = 0;
  std::int64_t weights = 0;

  explicit problem(const layer_shape& shape) : s(shape) {
    if (s.k == 0) {
      w = Tensor(Shape{s.o, s.c});
      x = Tensor(Shape{batch, s.c});
      flops = 2.0 * static_cast<double>(batch * s.c * s.o);
    } else {
      w = Tensor(Shape{s.o, s.c, s.k, s.k});
      x = Tensor(Shape{batch, s.c, s.hw, s.hw}, layout::nhwc);
      params.stride = {s.stride, s.stride};
      params.padding = {s.pad, s.pad};
      const Shape out = conv2d_output_shape(x.shape(), w.shape(), params);
      flops = 2.0 * static_cast<double>(out.numel()) * static_cast<double>(s.c * s.k * s.k);
    }
    fill_uniform(w, counter_rng(1), -0.1f, 0.1f);
    fill_uniform(x, counter_rng(2), 0.0f, 1.0f);
    weights = w.numel();
  }
};

/// The analog layer of a problem, conv or linear.
struct layer {
  std::variant<analog_conv2d, analog_linear> l;
  explicit layer(const problem& p)
      : l(p.s.k == 0 ? std::variant<analog_conv2d, analog_linear>(std::in_place_type<analog_linear>, p.w,
                                                                   std::nullopt, options())
                     : std::variant<analog_conv2d, analog_linear>(std::in_place_type<analog_conv2d>, p.w,
                                                                   std::nullopt, p.params, options())) {}
  template <class F>
  decltype(auto) visit(F&& f) {
    return std::visit(std::forward<F>(f), l);
  }
  std::uint64_t writes() {
    return visit([](auto& a) { return a.rram_writes(); });
  }
};

void set_forward_counters(benchmark::State& state, double flops, const std::string& label) {
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["images/s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(label);
}

void program(benchmark::State& state, const layer_shape& s) {
  const problem p(s);
  std::uint64_t cells = 0;
  for (auto _ : state) {
    layer l(p);
    cells = l.writes();
    benchmark::DoNotOptimize(cells);
  }
  state.counters["cells/s"] = benchmark::Counter(static_cast<double>(cells), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cells"] = static_cast<double>(cells);
  state.SetLabel("program: quantise + programming noise + effective-weight readback");
}

void drift(benchmark::State& state, const layer_shape& s) {
  const problem p(s);
  layer l(p);
  std::uint64_t seed = 0;
  for (auto _ : state) {
    l.visit([&](auto& a) { a.drift_to(relative_drift{}, drift_level{0.2}, ++seed); });
  }
  state.counters["cells/s"] = benchmark::Counter(static_cast<double>(l.writes()), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("drift: relative_drift rho 0.2 + effective-weight rebuild");
}

void effective(benchmark::State& state, const layer_shape& s) {
  const problem p(s);
  layer l(p);
  l.visit([](auto& a) { a.drift_to(relative_drift{}, drift_level{0.2}, 7); });
  Tensor y;
  l.visit([&](auto& a) { a.forward(p.x, y); });
  for (auto _ : state) {
    l.visit([&](auto& a) { a.forward(p.x, y); });
    benchmark::DoNotOptimize(y.data());
  }
  std::string impl = "effective-weight oneDNN";
  if (auto* c = std::get_if<analog_conv2d>(&l.l)) {
    impl += " (" + conv2d(c->effective_weights(), std::nullopt, p.params).implementation(p.x.shape()) + ")";
  }
  set_forward_counters(state, p.flops, impl);
}

void tile_adc8(benchmark::State& state, const layer_shape& s) {
  const problem p(s);
  layer l(p);
  l.visit([&](auto& a) {
    a.drift_to(relative_drift{}, drift_level{0.2}, 7);
    a.set_periphery(adc8());
    a.calibrate_adc(p.x);
  });
  Tensor y;
  l.visit([&](auto& a) { a.forward(p.x, y); });
  for (auto _ : state) {
    l.visit([&](auto& a) { a.forward(p.x, y); });
    benchmark::DoNotOptimize(y.data());
  }
  set_forward_counters(state, p.flops,
                       s.k == 0 ? "tile-exact, 256x256 tiles, 8-bit ADC (matmul per tile)"
                                : "tile-exact, 256x256 tiles, 8-bit ADC (oneDNN convolution per tile)");
}

void tile_dac8_adc8(benchmark::State& state, const layer_shape& s) {
  const problem p(s);
  layer l(p);
  l.visit([&](auto& a) {
    a.drift_to(relative_drift{}, drift_level{0.2}, 7);
    a.set_periphery(periphery_config::quantised(8, 8));
    a.calibrate_adc(p.x);
  });
  Tensor y;
  l.visit([&](auto& a) { a.forward(p.x, y); });
  for (auto _ : state) {
    l.visit([&](auto& a) { a.forward(p.x, y); });
    benchmark::DoNotOptimize(y.data());
  }
  set_forward_counters(state, p.flops, "tile-exact, 256x256 tiles, 8-bit per-vector DAC + 8-bit ADC (im2col + matmul)");
}

/// Both forwards, back to back in every iteration; the counter is their time ratio.
void ratio(benchmark::State& state, const layer_shape& s, periphery_config (*periphery)(), const char* label) {
  using clock = std::chrono::steady_clock;
  const problem p(s);
  layer ideal(p), quantised(p);
  ideal.visit([](auto& a) { a.drift_to(relative_drift{}, drift_level{0.2}, 7); });
  quantised.visit([&](auto& a) {
    a.drift_to(relative_drift{}, drift_level{0.2}, 7);
    a.set_periphery(periphery());
    a.calibrate_adc(p.x);
  });
  Tensor y1, y2;
  ideal.visit([&](auto& a) { a.forward(p.x, y1); });
  quantised.visit([&](auto& a) { a.forward(p.x, y2); });
  double t_eff = 0, t_tile = 0;
  for (auto _ : state) {
    const auto t0 = clock::now();
    ideal.visit([&](auto& a) { a.forward(p.x, y1); });
    const auto t1 = clock::now();
    quantised.visit([&](auto& a) { a.forward(p.x, y2); });
    const auto t2 = clock::now();
    t_eff += std::chrono::duration<double>(t1 - t0).count();
    t_tile += std::chrono::duration<double>(t2 - t1).count();
    benchmark::DoNotOptimize(y2.data());
  }
  state.counters["tile_over_effective"] = t_tile / t_eff;
  state.counters["effective_ms"] = 1e3 * t_eff / static_cast<double>(state.iterations());
  state.counters["tile_ms"] = 1e3 * t_tile / static_cast<double>(state.iterations());
  state.SetLabel(label);
}

/// The shipped ResNet-20 on crossbars, ideal periphery and `periphery()`, forwards back to back.
void network_ratio(benchmark::State& state, periphery_config (*periphery)()) {
  using clock = std::chrono::steady_clock;
  const auto make = [](const periphery_config& per) {
    network net = resnet20(1, 10, 28);
    const std::filesystem::path model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
    if (std::filesystem::exists(model)) {
      net.load(model);
    } else {
      bench::randomise(net);
    }
    net.fold_batch_norm();
    analog_options opt = options();
    opt.periphery = per;
    auto chip = deploy_analog(net, opt);
    chip.drift_to(relative_drift{}, drift_level{0.2}, 7);
    return std::make_pair(std::move(net), std::move(chip));
  };
  Tensor x(Shape{50, 1, 28, 28});
  fill_uniform(x, counter_rng(3), 0.0f, 1.0f);
  auto [ideal, ideal_chip] = make(periphery_config::ideal());
  auto [real, real_chip] = make(periphery());
  real_chip.calibrate_adc(real, x);
  Tensor y1 = ideal.forward(x), y2 = real.forward(x);
  double t_ideal = 0, t_real = 0;
  for (auto _ : state) {
    const auto t0 = clock::now();
    y1 = ideal.forward(x);
    const auto t1 = clock::now();
    y2 = real.forward(x);
    const auto t2 = clock::now();
    t_ideal += std::chrono::duration<double>(t1 - t0).count();
    t_real += std::chrono::duration<double>(t2 - t1).count();
    benchmark::DoNotOptimize(y2.data());
  }
  state.counters["over_ideal"] = t_real / t_ideal;
  state.counters["ideal_ms"] = 1e3 * t_ideal / static_cast<double>(state.iterations());
  state.counters["chip_ms"] = 1e3 * t_real / static_cast<double>(state.iterations());
  state.SetLabel("ResNet-20 28x28 batch 50: this chip's forward time / the ideal chip's");
}

}  // namespace

int main(int argc, char** argv) {
  for (const auto& s : shapes()) {
    const std::string n = name_of(s);
    benchmark::RegisterBenchmark(("program/" + n).c_str(), program, s)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("drift/" + n).c_str(), drift, s)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("effective/" + n).c_str(), effective, s)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("tile_adc8/" + n).c_str(), tile_adc8, s)->UseRealTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("tile_dac8_adc8/" + n).c_str(), tile_dac8_adc8, s)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("ratio/" + n).c_str(), ratio, s, adc8, "tile-exact 8-bit ADC time / effective-weight time")
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("ratio_noisy/" + n).c_str(), ratio, s, noisy,
                                 "tile-exact 8-bit ADC + read noise + IR drop time / effective-weight time")
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("ratio_realistic/" + n).c_str(), ratio, s, realistic,
                                 "realistic periphery time / effective-weight time")
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("network/resnet20_fmnist/adc8", network_ratio, adc8)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("network/resnet20_fmnist/noisy", network_ratio, noisy)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("network/resnet20_fmnist/realistic", network_ratio, realistic)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
