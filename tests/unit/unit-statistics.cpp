// The statistics-based feature-KD loss (adapt/feature_statistics.hpp) is the
// direct loss rewritten, not an approximation: its loss and gradients equal
// the direct forward + backward's to rounding for DoRA and LoRA on conv and linear layers,
// ranks 1..5, both norm modes, with and without bias, in one chunk or many;
// its exact-mode gradient matches central differences of its own loss in
// double; oneDNN's strided gemm that builds the statistics matches plain
// loops; and a whole calibration on either path ends at the same feature
// MSEs. DoRA (gamma = m / n) and LoRA (gamma = 1) share the statistics.

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/feature_statistics.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/kernels/arch/isa.hpp>
#include <rimc/kernels/small_gemm.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_statistics {

using namespace rimc;

namespace {

/// ||a - b|| / ||b|| over all elements.
double rel_diff(const Tensor& a, const Tensor& b) {
  double d = 0, n = 0;
  for (std::int64_t i = 0; i < b.numel(); ++i) {
    d += std::pow(double(a[i]) - double(b[i]), 2);
    n += std::pow(double(b[i]), 2);
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

struct layer_case {
  bool conv;
  std::int64_t rank;
  norm_mode norm;
  bool bias;
  std::int64_t chunk_rows;
  layout in_layout;
};

/// A random layer (with or without bias), a DoRA and a LoRA adapter with non-trivial m and B on it,
/// its input, its output (W0 x + bias) and a target.
struct layer_fixture {
  std::shared_ptr<layer> base;
  dora_adapter a;
  lora_adapter l;
  Tensor x, layer_out, target;

  static std::shared_ptr<layer> make_base(const layer_case& c) {
    const Tensor bias = test::random_tensor(Shape{c.conv ? 12 : 9}, 3);
    const std::optional<Tensor> b = c.bias ? std::optional<Tensor>(bias) : std::nullopt;
    if (c.conv) {
      return std::make_shared<digital_conv2d>(test::random_tensor(Shape{12, 5, 3, 3}, 1, layout::nchw, -0.3f, 0.3f), b,
                                              conv2d_params{.stride = {2, 1}, .padding = {1, 0}});
    }
    return std::make_shared<digital_linear>(test::random_tensor(Shape{9, 37}, 1, layout::nchw, -0.3f, 0.3f), b);
  }

  explicit layer_fixture(const layer_case& c)
      : base(make_base(c)), a(*base, {.rank = c.rank, .alpha = 2.0, .norm = c.norm, .seed = 4}),
        l(*base, {.rank = c.rank, .alpha = 2.0, .seed = 4}) {
    Tensor b = a.lora_B(), m = a.magnitude();
    fill_uniform(b, counter_rng(6), -0.3f, 0.3f);
    for (float& v : m.values()) v *= 1.1f;
    a.set_parameters(*base, m, a.lora_A(), b);
    l.set_parameters(*base, l.lora_A(), b);
    x = c.conv ? test::random_tensor(Shape{3, 5, 9, 8}, 2, c.in_layout) : test::random_tensor(Shape{7, 37}, 2);
    base->forward(x, layer_out);
    if (layer_out.rank() == 4) layer_out = layer_out.to_layout(layout::nhwc);
    const std::int64_t O = a.out_features();
    // The target: a perturbed copy of the layer's output (a drift-sized error).
    target = layer_out;
    const Tensor noise = test::random_tensor(target.shape(), 5, target.memory_layout());
    const Tensor* bias = base->bias();
    for (std::int64_t i = 0; i < target.numel(); ++i) {
      const float bo = bias ? (*bias)[i % O] : 0.0f;
      target[i] = 1.05f * (target[i] - bo) + 0.1f * noise[i] + bo;
    }
  }
};

}  // namespace

TEST_SUITE("feature statistics") {
  TEST_CASE("the statistics give the direct loss and gradients to rounding") {
    std::vector<layer_case> cases;
    for (const bool conv : {true, false})
      for (const std::int64_t r : {1, 2, 3, 5})
        for (const norm_mode nm : {norm_mode::detached, norm_mode::exact})
          cases.push_back({conv, r, nm, r != 3, r == 2 ? 7 : 0, r == 5 ? layout::nchw : layout::nhwc});
    for (const auto& c : cases) {
      CAPTURE(c.conv);
      CAPTURE(c.rank);
      CAPTURE(static_cast<int>(c.norm));
      CAPTURE(c.bias);
      CAPTURE(c.chunk_rows);
      layer_fixture f(c);
      detail::feature_statistics st(*f.base, f.x, f.layer_out, f.target, c.chunk_rows);
      // Direct: forward, MSE and the hand-written backward (checked against finite differences in
      // unit-dora and unit-lora), for the DoRA and the LoRA adapter on the same statistics.
      auto compare = [&](const auto& ad, std::size_t count) {
        Tensor y, dy;
        low_rank_cache cache;
        ad.forward(*f.base, f.x, f.layer_out, y, &cache);
        const double direct = detail::mse(y, f.target, &dy);
        std::vector<Tensor> gd(count), gs(count);
        ad.backward(*f.base, cache, dy, gd);
        const double stats = st.evaluate(ad, *f.base, gs);
        CHECK(stats == doctest::Approx(direct).epsilon(1e-5));
        CHECK(st.evaluate(ad, *f.base) == stats);
        for (std::size_t k = 0; k < count; ++k) {
          CAPTURE(k);
          CHECK(rel_diff(gs[k], gd[k]) < 1e-4);
          CHECK(gs[k].shape() == gd[k].shape());
        }
      };
      compare(f.a, 3);
      compare(f.l, 2);
    }
  }

  TEST_CASE("exact-norm gradients of the statistics loss match central differences in double") {
    for (const bool conv : {true, false}) {
      CAPTURE(conv);
      const layer_case c{conv, 3, norm_mode::exact, true, 0, layout::nhwc};
      layer_fixture f(c);
      detail::feature_statistics st(*f.base, f.x, f.layer_out, f.target);
      std::array<Tensor, 3> g;
      (void)st.evaluate(f.a, *f.base, g);
      const Tensor* grads[3] = {&g[0], &g[1], &g[2]};
      for (int which = 0; which < 3; ++which) {
        const Tensor base = *f.a.parameters()[static_cast<std::size_t>(which)];
        for (const std::int64_t i : {std::int64_t{0}, base.numel() / 2, base.numel() - 1}) {
          CAPTURE(which);
          CAPTURE(i);
          // The loss's float rounding is about 1e-7 of it: a step of 1e-2 keeps that well under the tolerance.
          const double h = 1e-2;
          const std::array<Tensor, 3> start{f.a.magnitude(), f.a.lora_A(), f.a.lora_B()};
          auto loss_at = [&](double delta) {
            std::array<Tensor, 3> p = start;
            p[static_cast<std::size_t>(which)][i] = static_cast<float>(double(base[i]) + delta);
            f.a.set_parameters(*f.base, p[0], p[1], p[2]);
            const double l = st.evaluate(f.a, *f.base);
            f.a.set_parameters(*f.base, start[0], start[1], start[2]);
            return l;
          };
          const double fd = (loss_at(h) - loss_at(-h)) / (2 * h);
          const double an = (*grads[which])[i];
          CHECK(an == doctest::Approx(fd).epsilon(2e-3).scale(1e-3 * std::abs(fd) + 1e-6));
        }
      }
    }
  }

  TEST_CASE("oneDNN's gemm with a row stride (the statistics' X^T [X | Z0 | Q]) against plain loops") {
    // a: X is the first K columns of y [P, W]; c = X^T y [K, W].
    const std::int64_t P = 37, K = 5, W = 11;
    const Tensor y = test::random_tensor(Shape{P, W}, 8);
    std::vector<float> c(static_cast<std::size_t>(K * W));
    detail::gemm(detail::gemm_spec{.M = K, .N = W, .K = P, .ta = true, .lda = W}, y.data(), y.data(), c.data());
    for (std::int64_t i = 0; i < K; ++i)
      for (std::int64_t j = 0; j < W; ++j) {
        double want = 0;
        for (std::int64_t p = 0; p < P; ++p) want += double(y[p * W + i]) * double(y[p * W + j]);
        CHECK(c[static_cast<std::size_t>(i * W + j)] == doctest::Approx(want).epsilon(1e-5));
      }
    // b with a row stride too: c2 = y[:, :K]^T y[:, 3:3+4].
    std::vector<float> c2(static_cast<std::size_t>(K * 4));
    detail::gemm(detail::gemm_spec{.M = K, .N = 4, .K = P, .ta = true, .lda = W, .ldb = W}, y.data(), y.data() + 3,
                 c2.data());
    for (std::int64_t i = 0; i < K; ++i)
      for (std::int64_t j = 0; j < 4; ++j) {
        double want = 0;
        for (std::int64_t p = 0; p < P; ++p) want += double(y[p * W + i]) * double(y[p * W + 3 + j]);
        CHECK(c2[static_cast<std::size_t>(i * 4 + j)] == doctest::Approx(want).epsilon(1e-5));
      }
  }

  TEST_CASE("bad inputs to the statistics are rejected with the shapes named") {
    const layer_case c{true, 2, norm_mode::detached, true, 0, layout::nhwc};
    layer_fixture f(c);
    Tensor short_target(Shape{f.target.numel() - 1});
    CHECK_THROWS_AS(detail::feature_statistics(*f.base, f.x, f.layer_out, short_target), shape_error);
    CHECK_THROWS_WITH_AS(detail::feature_statistics(*f.base, f.x, f.layer_out.to_layout(layout::nchw), f.target),
                         doctest::Contains("channels-last"), value_error);
    const Tensor other_x = test::random_tensor(Shape{3, 5, 11, 8}, 2, layout::nhwc);
    CHECK_THROWS_WITH_AS(detail::feature_statistics(*f.base, other_x, f.layer_out, f.target),
                         doctest::Contains("output positions"), shape_error);
    detail::feature_statistics st(*f.base, f.x, f.layer_out, f.target);
    const auto other_base = std::make_shared<digital_linear>(test::random_tensor(Shape{12, 44}, 1), std::nullopt);
    const dora_adapter other(*other_base, {.rank = 2, .alpha = 2.0});
    CHECK_THROWS_WITH_AS((void)st.evaluate(other, *other_base), doctest::Contains("do not fit rank 2 on 12 x 45"), shape_error);
  }

  TEST_CASE("a calibration on the statistics path ends where the direct path does, and the automatic path picks per layer") {
    // A small conv net with biases (c1, c2) and a linear head, the student its drifted copy.
    network teacher;
    int x = teacher.input(Shape{3, 12, 12});
    x = teacher.conv2d("c1", x, 8, 3, conv2d_params{{1, 1}, {1, 1}}, true);
    x = teacher.relu("r1", x);
    x = teacher.conv2d("c2", x, 16, 3, conv2d_params{{2, 2}, {1, 1}}, true);
    x = teacher.relu("r2", x);
    x = teacher.global_avg_pool("gap", x);
    x = teacher.flatten("flat", x);
    teacher.linear("fc", x, 5);
    std::uint64_t seed = 1;
    test::for_each_parameter(teacher, [&](const network_node&, const std::string&, Tensor& t) {
      fill_uniform(t, counter_rng(seed++), -0.3f, 0.3f);
    });
    const Tensor images = test::random_tensor(Shape{6, 3, 12, 12}, 9);
    // A freshly drifted chip calibrated with `cfg` (30 steps, lr 0.02).
    auto calibrate_chip = [&](calibration_config cfg) {
      network student = teacher;
      analog_options opt;
      opt.device.g_min_us = 0.0;
      auto chip = deploy_analog(student, opt);
      chip.drift_to(relative_drift{}, drift_level{0.2}, 3);
      cfg.steps = 30;
      cfg.lr = 0.02;
      calibration_result r = calibrate_feature_kd(teacher, student, images, cfg);
      CHECK(r.rram_writes == 0);
      return r;
    };
    std::map<kd_loss_path, calibration_result> results;
    for (const kd_loss_path path : {kd_loss_path::direct, kd_loss_path::statistics, kd_loss_path::automatic}) {
      calibration_config cfg;
      cfg.loss_path = path;
      results[path] = calibrate_chip(cfg);
    }
    const auto& d = results[kd_loss_path::direct].layers;
    const auto& s = results[kd_loss_path::statistics].layers;
    REQUIRE(d.size() == 3);
    REQUIRE(s.size() == 3);
    for (std::size_t i = 0; i < d.size(); ++i) {
      CAPTURE(d[i].name);
      CHECK(d[i].path == kd_loss_path::direct);
      CHECK(s[i].path == kd_loss_path::statistics);
      CHECK(s[i].mse_before == doctest::Approx(d[i].mse_before).epsilon(1e-3));
      CHECK(s[i].mse_after == doctest::Approx(d[i].mse_after).epsilon(1e-2));
      CHECK(s[i].mse_after < s[i].mse_before);
    }
    // Automatic: every layer here is far cheaper from statistics, unless they may not take any memory.
    for (const auto& l : results[kd_loss_path::automatic].layers) CHECK(l.path == kd_loss_path::statistics);
    calibration_config no_memory;
    no_memory.statistics_max_bytes = 0;
    const calibration_result r = calibrate_chip(no_memory);
    for (std::size_t i = 0; i < d.size(); ++i) {
      CHECK(r.layers[i].path == kd_loss_path::direct);
      CHECK(r.layers[i].mse_after == d[i].mse_after);  // the same path gives the same bits
    }
    calibration_config bad;
    bad.loss_path = static_cast<kd_loss_path>(7);
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("loss_path"), value_error);
    bad.loss_path = kd_loss_path::automatic;
    bad.statistics_max_bytes = std::nan("");
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("statistics_max_bytes"), value_error);
  }

  TEST_CASE("the automatic loss path follows the ISA tier's cost model (bench/results/loss_paths_*.csv)") {
    // (P, K, O) of layers timed by bench/loss_paths, N = 10, rank 2, 100 steps, and the faster path per tier.
    struct measured {
      const char* name;
      std::int64_t P, K, O;
      kd_loss_path avx512, avx2, scalar;
    };
    constexpr auto S = kd_loss_path::statistics, D = kd_loss_path::direct;
    const measured layers[] = {
        {"resnet20 layer1.0.conv1", 7840, 144, 16, S, S, S},
        {"resnet20 layer3.1.conv1", 490, 576, 64, S, S, D},
        {"resnet50/32 layer1.0.conv2", 640, 576, 64, S, S, D},
        {"resnet50/32 layer4.0.conv2", 10, 4608, 512, D, D, D},
        {"resnet50/224 layer1.0.conv2", 31360, 576, 64, S, S, S},
        {"resnet50/224 layer3.0.conv2", 1960, 2304, 256, D, D, D},
    };
    calibration_config cfg;
    for (const auto& l : layers) {
      CAPTURE(l.name);
      for (const auto& [tier, want] : {std::pair{isa_tier::avx512, l.avx512}, std::pair{isa_tier::avx2, l.avx2},
                                       std::pair{isa_tier::scalar, l.scalar}}) {
        CAPTURE(to_string(tier));
        const bool stats = detail::feature_statistics::cost(l.P, l.K, l.O, 2, 100, tier) <=
                           detail::feature_statistics::direct_cost(l.P, l.K, l.O, 2, 100, tier);
        CHECK((stats ? S : D) == want);
        if (tier <= active_isa()) {  // the calibrator asks the active tier
          const isa_guard cap(tier);
          CHECK(detail::choose_loss_path(cfg, l.K, l.O, 2, l.P) == want);
        }
      }
    }
  }
}

}  // namespace unit_statistics
