// The DoRA adapter's cost next to the frozen convolution it corrects, on
// ResNet-20 and ResNet-50 conv shapes, r = 2, 4, 8, batch 10 and 32:
//   frozen_conv      - the base layer's forward (what the crossbar computes)
//   adapter_fwd      - the adapter's training forward given W0 x (A x, B, scale, bias)
//   adapter_fwd_bwd  - that forward plus the backward for m, A, B (no input gradient), on the
//                      default shift-add kernels (oneDNN GEMMs); adapter_fwd_bwd_direct: the same
//                      on rimc's direct kernels (low_rank_kernel::direct)
//   adapter_infer    - the deploy form's factorised forward (fp32) given W0 x: the per-image
//                      digital work when the crossbar output is not ideal
//   merged_conv      - one frozen conv on W' = gamma (W0 + s B A): the whole adapted layer
//                      when the crossbar path is ideal (compare with frozen_conv)
//   adapted_layer    - the adapted layer's inference forward, frozen conv included, in each
//                      form (".../factorised": the frozen conv, then A x and the combination;
//                      ".../merged": adapter_inference::merged, one conv on W'); its time over
//                      frozen_conv's, minus 1, is what the adapter adds to an inference
// Counters: images/s; the label names the shape. bench/dora_ratios.py turns a
// JSON run into the adapter/frozen ratios. The adapter benchmarks also run at
// each lower ISA tier of rimc's own kernels this CPU has (names end in
// "/isa:avx2", "/isa:scalar"; oneDNN stays on its best ISA in the same run).

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/dora.hpp>
#include <rimc/kernels/conv2d.hpp>

#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

namespace {

using namespace rimc;

struct conv_shape {
  std::string net;
  std::int64_t c, o, hw, k, stride, pad;
};

std::vector<conv_shape> shapes() {
  return {
      {"resnet20_32", 16, 16, 32, 3, 1, 1}, {"resnet20_32", 16, 32, 32, 3, 2, 1}, {"resnet20_32", 32, 32, 16, 3, 1, 1},
      {"resnet20_32", 64, 64, 8, 3, 1, 1},  {"resnet50_224", 64, 64, 56, 3, 1, 1}, {"resnet50_224", 64, 256, 56, 1, 1, 0},
      {"resnet50_224", 256, 256, 14, 3, 1, 1},
  };
}

struct problem {
  Tensor x, w0, bias, layer_out;
  conv2d_params p;
  std::shared_ptr<layer> base;  ///< the frozen conv (with bias) the adapter borrows W0 from
};

problem make(const conv_shape& s, std::int64_t n) {
  problem pr;
  pr.p.stride = {s.stride, s.stride};
  pr.p.padding = {s.pad, s.pad};
  pr.x = Tensor(Shape{n, s.c, s.hw, s.hw});
  pr.w0 = Tensor(Shape{s.o, s.c, s.k, s.k});
  pr.bias = Tensor(Shape{s.o});
  fill_uniform(pr.x, counter_rng(1), -1, 1);
  fill_uniform(pr.w0, counter_rng(2), -0.1f, 0.1f);
  pr.x = pr.x.to_layout(layout::nhwc);
  pr.base = std::make_shared<digital_conv2d>(pr.w0, pr.bias, pr.p);
  pr.base->forward(pr.x, pr.layer_out);
  if (pr.layer_out.memory_layout() != layout::nhwc) pr.layer_out = pr.layer_out.to_layout(layout::nhwc);
  return pr;
}

dora_adapter adapter_for(const problem& pr, std::int64_t r) {
  dora_config cfg;
  cfg.rank = r;
  cfg.alpha = 2.0 * static_cast<double>(r);
  dora_adapter a(*pr.base, cfg);
  Tensor b(a.lora_B().shape());
  fill_uniform(b, counter_rng(3), -0.1f, 0.1f);
  a.set_parameters(*pr.base, a.magnitude(), a.lora_A(), b);
  return a;
}

void finish(benchmark::State& state, std::int64_t n, const std::string& label) {
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(label);
}

void frozen_conv(benchmark::State& state, const conv_shape& s, std::int64_t n) {
  problem pr = make(s, n);
  const conv2d conv(pr.w0, pr.bias, pr.p);
  Tensor y;
  conv.forward(pr.x, y);
  for (auto _ : state) conv.forward(pr.x, y);
  finish(state, n, conv.implementation(pr.x.shape()));
}

void adapter_fwd(benchmark::State& state, const conv_shape& s, std::int64_t n, std::int64_t r, isa_tier tier) {
  const isa_guard cap(tier);
  problem pr = make(s, n);
  const dora_adapter a = adapter_for(pr, r);
  Tensor y;
  a.forward(*pr.base, pr.x, pr.layer_out, y);
  for (auto _ : state) a.forward(*pr.base, pr.x, pr.layer_out, y);
  finish(state, n, "adapter");
}

void adapter_fwd_bwd(benchmark::State& state, const conv_shape& s, std::int64_t n, std::int64_t r, isa_tier tier,
                     low_rank_kernel kernel) {
  const isa_guard cap(tier);
  problem pr = make(s, n);
  dora_adapter a = adapter_for(pr, r);
  a.set_training_kernel(kernel);
  Tensor y;
  dora_cache cache;
  dora_gradients g;
  a.forward(*pr.base, pr.x, pr.layer_out, y, &cache);
  Tensor gy = y;
  fill_uniform(gy, counter_rng(4), -1, 1);
  for (auto _ : state) {
    a.forward(*pr.base, pr.x, pr.layer_out, y, &cache);
    a.backward(*pr.base, cache, gy, g);
  }
  finish(state, n, "adapter");
}

void adapter_infer(benchmark::State& state, const conv_shape& s, std::int64_t n, std::int64_t r, isa_tier tier) {
  const isa_guard cap(tier);
  problem pr = make(s, n);
  const dora_adapter a = adapter_for(pr, r);
  const dora_deployed d = a.deploy();
  Tensor y;
  d.forward(pr.x, pr.layer_out, &pr.bias, y);
  for (auto _ : state) d.forward(pr.x, pr.layer_out, &pr.bias, y);
  finish(state, n, "deployed");
}

void merged_conv(benchmark::State& state, const conv_shape& s, std::int64_t n, std::int64_t r) {
  problem pr = make(s, n);
  const dora_adapter a = adapter_for(pr, r);
  const conv2d conv(a.merged_weights(*pr.base), pr.bias, pr.p);
  Tensor y;
  conv.forward(pr.x, y);
  for (auto _ : state) conv.forward(pr.x, y);
  finish(state, n, conv.implementation(pr.x.shape()));
}

void adapted_forward(benchmark::State& state, const conv_shape& s, std::int64_t n, std::int64_t r,
                     adapter_inference form) {
  problem pr = make(s, n);
  adapted_layer<dora_adapter> l(pr.base, adapter_for(pr, r));
  l.set_inference(form);
  Tensor y;
  l.forward(pr.x, y);  // builds the merged weights once, as the first inference after calibration does
  for (auto _ : state) l.forward(pr.x, y);
  finish(state, n, form == adapter_inference::merged ? "merged" : "factorised");
}

}  // namespace

int main(int argc, char** argv) {
  for (const auto& s : shapes()) {
    for (std::int64_t n : {10, 32}) {
      const std::string shape = s.net + "/c" + std::to_string(s.c) + "_o" + std::to_string(s.o) + "_" +
                                std::to_string(s.hw) + "_k" + std::to_string(s.k) + "_s" + std::to_string(s.stride) +
                                "/n" + std::to_string(n);
      if (s.net == "resnet50_224" && n == 32) continue;  // keeps the run short; batch 10 shows the ratios
      benchmark::RegisterBenchmark(("frozen_conv/" + shape).c_str(), frozen_conv, s, n)->UseRealTime();
      for (std::int64_t r : {2, 4, 8}) {
        const std::string tail = shape + "/r" + std::to_string(r);
        for (const isa_tier tier : {isa_tier::avx512, isa_tier::avx2, isa_tier::scalar}) {
          if (tier > active_isa()) continue;
          const std::string t = tier == active_isa() ? "" : "/isa:" + std::string(to_string(tier));
          benchmark::RegisterBenchmark(("adapter_fwd/" + tail + t).c_str(), adapter_fwd, s, n, r, tier)->UseRealTime();
          benchmark::RegisterBenchmark(("adapter_fwd_bwd/" + tail + t).c_str(), adapter_fwd_bwd, s, n, r, tier,
                                       low_rank_kernel::shift_add)
              ->UseRealTime();
          benchmark::RegisterBenchmark(("adapter_fwd_bwd_direct/" + tail + t).c_str(), adapter_fwd_bwd, s, n, r, tier,
                                       low_rank_kernel::direct)
              ->UseRealTime();
          benchmark::RegisterBenchmark(("adapter_infer/" + tail + t).c_str(), adapter_infer, s, n, r, tier)
              ->UseRealTime();
        }
        if (r == 4) benchmark::RegisterBenchmark(("merged_conv/" + tail).c_str(), merged_conv, s, n, r)->UseRealTime();
        if (r <= 4) {
          for (const auto form : {adapter_inference::factorised, adapter_inference::merged}) {
            const std::string f = form == adapter_inference::merged ? "/merged" : "/factorised";
            benchmark::RegisterBenchmark(("adapted_layer/" + tail + f).c_str(), adapted_forward, s, n, r, form)
                ->UseRealTime();
          }
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
