// Inference throughput of whole networks: the ResNet-20 teacher at 28x28
// (batch 1, 32, 128) and ResNet-50 at 224x224 (batch 8, random weights),
// after batch-norm folding and ReLU fusion. Counter: images/s.
// bench/compare_inference.sh runs PyTorch eager on the same models beside it.

#include "bench_util.hpp"

#include <rimc/nn/models.hpp>
#include <rimc/core/random.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>

namespace {

using namespace rimc;
using bench::randomise;

void run(benchmark::State& state, network& net, std::int64_t batch, const Shape& image) {
  net.fold_batch_norm();
  net.fuse_relu();
  Tensor x(Shape{batch, image[0], image[1], image[2]});
  fill_uniform(x, counter_rng(7), -1, 1);
  Tensor y = net.forward(x);
  for (auto _ : state) {
    y = net.forward(x);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}

void resnet20_teacher(benchmark::State& state) {
  network net = resnet20(1, 10, 28);
  const std::filesystem::path model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
  if (std::filesystem::exists(model)) {
    net.load(model);
    state.SetLabel("shipped teacher");
  } else {
    randomise(net);
    state.SetLabel("random weights");
  }
  run(state, net, state.range(0), Shape{1, 28, 28});
}

void resnet50_224(benchmark::State& state) {
  network net = resnet50(1000, 224);
  randomise(net);
  state.SetLabel("random weights");
  run(state, net, state.range(0), Shape{3, 224, 224});
}

}  // namespace

BENCHMARK(resnet20_teacher)->Arg(1)->Arg(32)->Arg(128)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(resnet50_224)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
