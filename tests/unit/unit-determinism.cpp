// Determinism of the whole pipeline on the shipped ResNet-20 teacher and
// Fashion-MNIST images: programming (with noise), drift, calibration (feature
// KD and the backprop baseline, 8 steps on 8 images), logits and top-1 on 128
// images, for the same seeds.
//
// What is reproducible, measured on this pipeline:
// - With the same thread count, everything is bitwise identical from run to
//   run: drifted weights, adapters (m, A, B), logits and accuracy.
// - Across 1 vs 2 OpenMP threads, programmed and drifted weights are bitwise
//   identical (counter-based RNG per cell), and so are oneDNN's convolutions
//   (forward and backward-data). The adapters are not: oneDNN's matmul splits
//   the reduction dimension between threads when the output is small, which
//   changes the last bit of the adapter gradients' sums over pixels
//   (G^T u [O, r] and dA [r, K] in dora_adapter::backward, X^T D in
//   thin_conv2d::backward; measured 1 ulp, 3.8e-6 absolute on sums of 6272
//   products of magnitude ~1). Adam amplifies these differences step by step.
//   Measured, 1 vs 2 threads:
//     8 steps (this test):  adapters ||d|| / ||a|| <= 1.9e-4 (KD), 8.6e-5 (backprop);
//                           logits max |d| / max |logit| <= 5.8e-6 (KD), 3.5e-5 (backprop);
//     demo settings (KD 100 steps per layer, backprop 200 steps, N = 10):
//                           adapters <= 0.058 (KD), 0.093 (backprop);
//                           logits <= 5.6e-4 (KD), 0.067 (backprop);
//     top-1 on 126-128 images: equal in every case.
//   So across thread counts, adapters, logits and accuracies are reproducible
//   only to a tolerance; the test below checks 10x the measured 8-step values
//   (adapters 2e-3, logits 5e-4) and top-1 within one image.
//
// A load test runs independent pipelines (each with its own networks) from
// several std::threads at once: the results equal the sequential ones bitwise
// (rimc's oneDNN wrappers keep streams, scratchpads and argument maps per
// thread and lock their shared primitive caches).

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <exception>
#include <string>
#include <thread>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_determinism {

using namespace rimc;

namespace {

enum class method { feature_kd, backprop };

/// Everything a calibration run produces that a user would compare.
struct pipeline_run {
  std::map<std::string, Tensor> drifted;                  ///< effective crossbar weights per layer
  std::map<std::string, std::array<Tensor, 3>> adapters;  ///< m, A, B per layer
  Tensor logits;                                          ///< calibrated student on the evaluation images
  double top1 = 0;
};

const dataset& images() {
  static const dataset d = load_mnist_like(fashion_mnist_dir, "test").subset([] {
    std::vector<std::int64_t> idx(136);
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<std::int64_t>(i);
    return idx;
  }());
  return d;
}

network teacher_network() {
  network net = resnet20(1, 10, 28);
  net.load(std::filesystem::path(RIMC_MODEL_DIR) / "resnet20_fmnist.safetensors");
  net.fold_batch_norm();
  return net;
}

pipeline_run run_pipeline(method m, int threads, std::uint64_t seed) {
  const thread_count_guard guard(threads);
  const network teacher = teacher_network();
  network student = teacher_network();
  analog_options opt;
  opt.device.noise = programming_noise::proportional(0.01);
  // The chip the tolerances below were measured on (drift clamped to the programming window). On
  // the physical-bound chip of the same seeds the 1 vs 2 thread logits agree as well (2.5e-4, same
  // top-1) but one adapter tensor differs by 1.2%: Adam's normalised steps turn rounding-level sign
  // changes of near-zero gradients into lr-sized differences, so the adapter tolerance is chip-dependent.
  opt.device.bounds = drift_bounds::programming_window;
  opt.program_seed = seed;
  auto chip = deploy_analog(student, opt);
  chip.drift_to(relative_drift{}, drift_level{0.2}, seed + 1);
  pipeline_run run;
  for (const auto& name : chip.names()) run.drifted[name] = student.layer(name).effective_weights();
  const dataset& data = images();
  const dataset calib = data.subset({0, 1, 2, 3, 4, 5, 6, 7});
  calibration_result r;
  if (m == method::feature_kd) {
    calibration_config cfg;
    cfg.steps = 8;
    cfg.seed = seed;
    r = calibrate_feature_kd(teacher, student, calib.images, cfg);
  } else {
    backprop_config cfg;
    cfg.steps = 8;
    cfg.seed = seed;
    cfg.kl_weight = 1.0;
    r = calibrate_backprop(teacher, student, calib.images, calib.labels, cfg);
  }
  for (const auto& [name, a] : r.adapters)
    run.adapters[name] = {a->adapter().magnitude(), a->adapter().lora_A(), a->adapter().lora_B()};
  run.logits = student.forward(data.batch(8, 128));
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < 128; ++i) {
    const float* z = run.logits.data() + i * 10;
    correct += std::max_element(z, z + 10) - z == data.labels[static_cast<std::size_t>(i + 8)];
  }
  run.top1 = static_cast<double>(correct) / 128.0;
  return run;
}

/// ||a - b|| / ||b|| over the logical elements (0 when both are zero).
double relative_difference(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const Tensor x = a.to_layout(layout::nchw), y = b.to_layout(layout::nchw);
  double d = 0, n = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    d += std::pow(double(x[i]) - double(y[i]), 2);
    n += std::pow(double(y[i]), 2);
  }
  return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

/// max |a - b| / max |b|.
double scaled_max_difference(const Tensor& a, const Tensor& b) {
  double d = 0, m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::abs(double(a[i]) - double(b[i])));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / m;
}

void check_bitwise(const pipeline_run& a, const pipeline_run& b) {
  REQUIRE(a.drifted.size() == b.drifted.size());
  for (const auto& [name, w] : a.drifted) CHECK(w == b.drifted.at(name));
  REQUIRE(a.adapters.size() == b.adapters.size());
  for (const auto& [name, p] : a.adapters)
    for (std::size_t k = 0; k < 3; ++k) CHECK(p[k] == b.adapters.at(name)[k]);
  CHECK(a.logits == b.logits);
  CHECK(a.top1 == b.top1);
}

void check_thread_tolerance(const pipeline_run& a, const pipeline_run& b) {
  for (const auto& [name, w] : a.drifted) CHECK(w == b.drifted.at(name));
  double adapters = 0;
  for (const auto& [name, p] : a.adapters)
    for (std::size_t k = 0; k < 3; ++k) adapters = std::max(adapters, relative_difference(p[k], b.adapters.at(name)[k]));
  const double logits = scaled_max_difference(a.logits, b.logits);
  MESSAGE("1 vs 2 threads: adapters ||d|| / ||a|| <= ", adapters, ", logits max |d| / max |logit| = ", logits,
          ", top-1 ", a.top1, " vs ", b.top1);
  CHECK(adapters <= 2e-3);
  CHECK(logits <= 5e-4);
  CHECK(std::abs(a.top1 - b.top1) <= 1.0 / 128 + 1e-12);
}

}  // namespace

TEST_SUITE("determinism") {
  TEST_CASE("feature KD: bitwise identical across runs, within the documented tolerance across 1 vs 2 threads") {
    const auto a = run_pipeline(method::feature_kd, 1, 3);
    check_bitwise(a, run_pipeline(method::feature_kd, 1, 3));
    check_thread_tolerance(a, run_pipeline(method::feature_kd, 2, 3));
  }

  TEST_CASE("backprop: bitwise identical across runs, within the documented tolerance across 2 vs 1 threads") {
    const auto a = run_pipeline(method::backprop, 2, 3);
    check_bitwise(a, run_pipeline(method::backprop, 2, 3));
    check_thread_tolerance(run_pipeline(method::backprop, 1, 3), a);
  }

  TEST_CASE("one calibrated network run from several std::threads at once gives the sequential logits bitwise") {
    // A const network (analog layers, adapters on top) is safe to run concurrently: layers are built
    // eagerly, scratch is per thread, and adapters re-derive their norms under a lock. The chip drifts
    // once more before the threads start, so every thread's first forward finds stale norms to refresh.
    const network teacher = teacher_network();
    network student = teacher_network();
    auto chip = deploy_analog(student, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.2}, 11);
    const dataset& data = images();
    const dataset calib = data.subset({0, 1, 2, 3, 4, 5, 6, 7});
    calibration_config cfg;
    cfg.steps = 5;
    (void)calibrate_feature_kd(teacher, student, calib.images, cfg);
    chip.drift_to(relative_drift{}, drift_level{0.25}, 12);
    const network& net = student;
    std::vector<Tensor> batches;
    for (std::int64_t b = 0; b < 4; ++b) batches.push_back(data.batch(8 + 32 * b, 32));
    std::vector<Tensor> concurrent(batches.size());
    std::vector<std::exception_ptr> errors(batches.size());
    {
      std::vector<std::thread> threads;
      for (std::size_t i = 0; i < batches.size(); ++i) {
        threads.emplace_back([&, i] {
          try {
            const thread_count_guard one(1);
            for (int rep = 0; rep < 3; ++rep) concurrent[i] = net.forward(batches[i]);
          } catch (...) {
            errors[i] = std::current_exception();
          }
        });
      }
      for (auto& t : threads) t.join();
    }
    const thread_count_guard one(1);
    for (std::size_t i = 0; i < batches.size(); ++i) {
      INFO("batch ", i);
      if (errors[i]) std::rethrow_exception(errors[i]);
      CHECK(concurrent[i] == net.forward(batches[i]));
    }
  }

  TEST_CASE("independent pipelines calibrated concurrently from std::threads match the sequential results bitwise") {
    struct job {
      method m;
      std::uint64_t seed;
    };
    const std::vector<job> jobs{{method::feature_kd, 3}, {method::backprop, 4}, {method::feature_kd, 5}};
    std::vector<pipeline_run> sequential, concurrent(jobs.size());
    for (const auto& j : jobs) sequential.push_back(run_pipeline(j.m, 1, j.seed));
    std::vector<std::exception_ptr> errors(jobs.size());
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      threads.emplace_back([&, i] {
        try {
          concurrent[i] = run_pipeline(jobs[i].m, 1, jobs[i].seed);
        } catch (...) {
          errors[i] = std::current_exception();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      INFO("job ", i);
      if (errors[i]) std::rethrow_exception(errors[i]);
      check_bitwise(sequential[i], concurrent[i]);
    }
  }
}

}  // namespace unit_determinism
