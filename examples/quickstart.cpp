// Quickstart: a small residual CNN's frozen forward pass run through rimc's
// oneDNN kernels and checked stage by stage against the plain reference.
//
//   quickstart [--batch N] [--threads T] [--seed S] [--repeat R]   (--help lists them)
//
// Prints one row per stage: output shape, oneDNN time (best of R after a
// warm-up), reference time and the largest deviation between the two outputs
// relative to the output's scale; exits non-zero if any stage deviates by more
// than 1e-5.

#include "cli.hpp"

#include <rimc/rimc.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace rimc;

double seconds_of(const std::function<void()>& f, int repeat) {
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

/// Largest |a - b| over all logical elements, relative to the largest |b|.
double deviation(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to_layout(layout::nchw), y = b.to_layout(layout::nchw);
  double worst = 0, scale = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    worst = std::max(worst, std::abs(double(x[i]) - y[i]));
    scale = std::max(scale, std::abs(double(y[i])));
  }
  return worst / std::max(scale, 1e-30);
}

Tensor kaiming(const Shape& s, std::uint64_t seed) {
  Tensor t(s);
  const double fan_in = static_cast<double>(s.numel() / s[0]);
  const auto bound = static_cast<float>(std::sqrt(6.0 / fan_in));
  fill_uniform(t, counter_rng(seed), -bound, bound);
  return t;
}

}  // namespace

int main(int argc, char** argv) try {
  std::int64_t batch = 32;
  int threads = 2, repeat = 3;
  std::uint64_t seed = 1;
  cli::command_line cl("quickstart", "A small residual CNN's frozen forward pass through rimc's oneDNN kernels, checked "
                                     "stage by stage against the plain reference.");
  cl.number("--batch", batch, "images per forward", std::int64_t{1}, std::int64_t{4096});
  cl.threads(threads);
  cl.number("--seed", seed, "seed of the weights and images", std::uint64_t{0}, std::numeric_limits<std::uint64_t>::max());
  cl.number("--repeat", repeat, "timed runs per stage (the best is shown)", 1, 1000);
  cl.parse(argc, argv);
  set_num_threads(threads);

  // Weights of a small residual network for 1x28x28 images (Fashion-MNIST size).
  const conv2d_params same{{1, 1}, {1, 1}}, down{{2, 2}, {1, 1}};
  conv2d_params same_relu = same, down_relu = down;
  same_relu.relu = down_relu.relu = true;
  const Tensor w1 = kaiming(Shape{16, 1, 3, 3}, seed), w2 = kaiming(Shape{32, 16, 3, 3}, seed + 1),
               w3 = kaiming(Shape{32, 32, 3, 3}, seed + 2), w4 = kaiming(Shape{32, 32, 3, 3}, seed + 3),
               wf = kaiming(Shape{10, 32}, seed + 4);
  Tensor b1(Shape{16}), b2(Shape{32}), b3(Shape{32}), b4(Shape{32}), bf(Shape{10});
  for (Tensor* b : {&b1, &b2, &b3, &b4, &bf}) fill_uniform(*b, counter_rng(seed, 99), -0.1f, 0.1f);
  const conv2d c1(w1, b1, same_relu), c2(w2, b2, down_relu), c3(w3, b3, same_relu), c4(w4, b4, same);
  const pool2d pool(pool2d_params{pool_kind::max, {2, 2}, {2, 2}});
  const linear fc(wf, bf);

  Tensor x(Shape{batch, 1, 28, 28});
  fill_uniform(x, counter_rng(seed, 7), 0.0f, 1.0f);

  struct stage {
    std::string name;
    std::function<void()> fast, slow;
    const Tensor *fast_out, *slow_out;
  };
  // oneDNN path (channels-last activations) and reference path (channels-first), side by side.
  Tensor a1, a2, a3, a4, a5, a6, a7, y;
  Tensor r1, r2, r3, r4, r5, r6, r7, ry;
  std::vector<stage> stages = {
      {"conv 1->16 3x3 + relu", [&] { c1.forward(x, a1); }, [&] { r1 = reference::conv2d(x, w1, &b1, same_relu); },
       &a1, &r1},
      {"conv 16->32 3x3 s2 + relu", [&] { c2.forward(a1, a2); },
       [&] { r2 = reference::conv2d(r1, w2, &b2, down_relu); }, &a2, &r2},
      {"conv 32->32 3x3 + relu", [&] { c3.forward(a2, a3); }, [&] { r3 = reference::conv2d(r2, w3, &b3, same_relu); },
       &a3, &r3},
      {"conv 32->32 3x3", [&] { c4.forward(a3, a4); }, [&] { r4 = reference::conv2d(r3, w4, &b4, same); }, &a4, &r4},
      {"residual add + relu", [&] { add(a4, a2, a5, true); },
       [&] {
         r5 = Tensor(r4.shape());
         reference::add_forward(r4.data(), r2.data(), r4.numel(), r5.data());
         reference::relu_forward(r5.data(), r5.numel(), r5.data());
       },
       &a5, &r5},
      {"max pool 2x2", [&] { pool.forward(a5, a6); }, [&] { r6 = reference::pool2d(r5, pool.params()); }, &a6, &r6},
      {"global avg pool", [&] { global_avg_pool2d(a6, a7); }, [&] { r7 = reference::global_avg_pool2d(r6); }, &a7,
       &r7},
      {"linear 32->10", [&] { fc.forward(a7, y); }, [&] { ry = reference::linear(r7, wf, &bf); }, &y, &ry},
  };

  std::printf("rimc %s on oneDNN %s, batch %lld, %d threads\n\n", version_string, onednn_version().c_str(), static_cast<long long>(batch),
              threads);
  std::printf("%-28s %-18s %12s %14s %12s\n", "stage", "output", "oneDNN ms", "reference ms", "max error");
  double total_fast = 0, total_slow = 0, worst = 0;
  for (auto& s : stages) s.fast();  // warm-up: primitives are created and weights packed on first use
  for (auto& s : stages) {
    const double tf = seconds_of(s.fast, repeat), ts = seconds_of(s.slow, 1);
    const double dev = deviation(*s.fast_out, *s.slow_out);
    total_fast += tf;
    total_slow += ts;
    worst = std::max(worst, dev);
    std::printf("%-28s %-18s %12.3f %14.3f %12.2e\n", s.name.c_str(), s.fast_out->shape().to_string().c_str(),
                tf * 1e3, ts * 1e3, dev);
  }
  std::printf("%-28s %-18s %12.3f %14.3f %12.2e\n", "total", "", total_fast * 1e3, total_slow * 1e3, worst);
  std::printf("\nconv implementation: %s; speed-up over the reference: %.0fx\n",
              c3.implementation(a2.shape()).c_str(), total_slow / total_fast);
  if (!(worst <= 1e-5)) {
    std::fprintf(stderr, "error: oneDNN and reference outputs differ by %.3g of their scale (tolerance 1e-5)\n",
                 worst);
    return 1;
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
