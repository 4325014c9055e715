// The vectorised fast paths of the calibration loop compute bitwise what
// their plain forms compute (the calibration's results must not change when
// a faster path is taken): the feature MSE's gradient, the fused
// forward + loss of a calibration step; and the loss equals the plain double
// sum to rounding. Each vector kernel's tiers are compared in unit-isa.cpp.

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/nn/models.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <span>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_fastpaths {

using namespace rimc;

TEST_SUITE("fast paths") {
  TEST_CASE("feature MSE: the gradient is 2 (y - t) / n exactly, the loss the double sum to rounding, any thread count") {
    for (const std::int64_t n : {1, 7, 8, 9, 4095, 4096, 4097, 40000, 125440}) {
      CAPTURE(n);
      const Tensor y = test::random_tensor(Shape{n}, 1), t = test::random_tensor(Shape{n}, 2, layout::nchw, -2, 3);
      double plain = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const double d = double(y[i]) - double(t[i]);
        plain += d * d;
      }
      plain /= static_cast<double>(n);
      Tensor g;
      double loss = 0;
      {
        const thread_count_guard one(1);
        loss = detail::mse(y, t, &g);
      }
      CHECK(loss == doctest::Approx(plain).epsilon(1e-13));
      for (std::int64_t i = 0; i < n; ++i) {
        const double d = double(y[i]) - double(t[i]);
        if (g[i] != static_cast<float>(2.0 * d / static_cast<double>(n))) FAIL("gradient element ", i, " differs");
      }
      Tensor g2;
      const thread_count_guard two(2);
      CHECK(detail::mse(y, t, &g2) == loss);  // bitwise, whatever the thread count
      CHECK(std::memcmp(g.data(), g2.data(), static_cast<std::size_t>(n) * sizeof(float)) == 0);
      CHECK(detail::mse(y, t, nullptr) == loss);
    }
  }

  TEST_CASE("a calibration step's fused forward and loss equal forward() then mse() bitwise, and backward accepts its cache") {
    for (const bool conv : {true, false}) {
      for (const std::int64_t r : {1, 2, 3, 8}) {
        for (const bool with_bias : {true, false}) {
          CAPTURE(conv);
          CAPTURE(r);
          CAPTURE(with_bias);
          const Tensor w0 = conv ? test::random_tensor(Shape{20, 6, 3, 3}, 5) : test::random_tensor(Shape{10, 37}, 5);
          const Tensor bias = test::random_tensor(Shape{w0.dim(0)}, 8);
          const conv2d_params geo{.stride = {2, 2}, .padding = {1, 1}};
          const std::optional<Tensor> b0 = with_bias ? std::optional<Tensor>(bias) : std::nullopt;
          const std::shared_ptr<layer> base = conv ? std::shared_ptr<layer>(std::make_shared<digital_conv2d>(w0, b0, geo))
                                                   : std::make_shared<digital_linear>(w0, b0);
          dora_adapter a(*base, {.rank = r, .alpha = 2.0, .seed = 3});
          lora_adapter l(*base, {.rank = r, .alpha = 2.0, .seed = 3});
          // Non-trivial B and m, so every term of the combination matters.
          Tensor b = a.lora_B(), m = a.magnitude();
          fill_uniform(b, counter_rng(6), -0.5f, 0.5f);
          for (float& v : m.values()) v *= 1.1f;
          a.set_parameters(*base, m, a.lora_A(), b);
          l.set_parameters(*base, l.lora_A(), b);
          const Tensor x = conv ? test::random_tensor(Shape{7, 6, 15, 13}, 7, layout::nhwc) : test::random_tensor(Shape{9, 37}, 7);
          Tensor layer_out;
          base->forward(x, layer_out);
          if (layer_out.rank() == 4) layer_out = layer_out.to_layout(layout::nhwc);
          const Tensor target = test::random_tensor(layer_out.shape(), 9, layer_out.memory_layout());
          auto check_adapter = [&](const auto& ad, auto grads_a, auto grads_b) {
            Tensor y, g_plain, g_fused, y2;
            low_rank_cache c_plain, c_fused;
            ad.forward(*base, x, layer_out, y, &c_plain);
            const double plain = detail::mse(y, target, &g_plain);
            const double fused = detail::adapter_mse(ad, *base, x, layer_out, target, y2, &g_fused, c_fused);
            CHECK(plain == fused);
            REQUIRE(g_plain.numel() == g_fused.numel());
            CHECK(std::memcmp(g_plain.data(), g_fused.data(), static_cast<std::size_t>(g_plain.numel()) * sizeof(float)) == 0);
            ad.backward(*base, c_plain, g_plain, grads_a);
            ad.backward(*base, c_fused, g_fused, grads_b);
            for (std::size_t k = 0; k < grads_a.size(); ++k) CHECK(grads_a[k] == grads_b[k]);
            // Inference in the layer output's storage equals forward() without a cache bitwise, and
            // forward() with a cache too when it runs the shift-add kernels (to rounding with direct).
            Tensor in_place = layer_out, y_inference;
            ad.forward(*base, x, layer_out, y_inference);
            ad.forward_in_place(*base, x, in_place, false);
            CHECK(std::memcmp(y_inference.data(), in_place.data(),
                              static_cast<std::size_t>(y_inference.numel()) * sizeof(float)) == 0);
            if (ad.training_kernel() == low_rank_kernel::shift_add) {
              CHECK(std::memcmp(y.data(), in_place.data(), static_cast<std::size_t>(y.numel()) * sizeof(float)) == 0);
            } else {
              test::check_close(y, y_inference, 1e-5, 1e-5);
            }
          };
          for (const low_rank_kernel kernel : {low_rank_kernel::shift_add, low_rank_kernel::direct}) {
            CAPTURE(static_cast<int>(kernel));
            a.set_training_kernel(kernel);
            l.set_training_kernel(kernel);
            std::array<Tensor, 3> ga, gb;
            check_adapter(a, std::span<Tensor>(ga), std::span<Tensor>(gb));
            std::array<Tensor, 2> la, lb;
            check_adapter(l, std::span<Tensor>(la), std::span<Tensor>(lb));
          }
        }
      }
    }
  }

  TEST_CASE("calibration reuses each prefix's activations: adapters bitwise equal to one target per call (full forward each)") {
    auto make = [](std::uint64_t seed, float scale) {
      network net = resnet20(1, 10, 12);
      test::for_each_parameter(net, [&](const network_node&, const std::string& p, Tensor& t) {
        if (p == "num_batches_tracked") return;
        fill_uniform(t, counter_rng(seed++), p == "running_var" ? 0.5f : -0.3f * scale, p == "running_var" ? 1.5f : 0.3f * scale);
      });
      net.fold_batch_norm();
      return net;
    };
    const network teacher = make(1, 1.0f);
    network a = make(1, 1.0f), b = make(1, 1.0f);
    for (network* s : {&a, &b})  // the same "drift" on both students
      test::for_each_parameter(*s, [](const network_node& n, const std::string& p, Tensor& t) {
        if (n.has_layer() && p == "weight")
          for (float& v : t.values()) v *= 1.05f;
      });
    const Tensor images = test::random_tensor(Shape{3, 1, 12, 12}, 9);
    calibration_config cfg;
    cfg.rank = 2;
    cfg.steps = 4;
    const auto all = calibrate_feature_kd(teacher, a, images, cfg);
    REQUIRE(all.layers.size() == 22);
    for (const auto& l : all.layers) {
      calibration_config one = cfg;
      one.targets = {l.name};
      const auto r = calibrate_feature_kd(teacher, b, images, one);
      const auto& x = all.adapters.at(l.name)->adapter();
      const auto& y = r.adapters.at(l.name)->adapter();
      CAPTURE(l.name);
      CHECK(std::memcmp(x.lora_A().data(), y.lora_A().data(), static_cast<std::size_t>(x.lora_A().numel()) * 4) == 0);
      CHECK(std::memcmp(x.lora_B().data(), y.lora_B().data(), static_cast<std::size_t>(x.lora_B().numel()) * 4) == 0);
      CHECK(std::memcmp(x.magnitude().data(), y.magnitude().data(), static_cast<std::size_t>(x.magnitude().numel()) * 4) == 0);
      CHECK(l.mse_after == r.layers[0].mse_after);
    }
    // Inference fuses each ReLU into its adapted producer / add unless the pre-activation is captured: the
    // logits are bitwise those of the unfused pass (capturing every node disables every fusion).
    std::vector<std::string> every;
    for (const auto& n : a.nodes()) every.push_back(n.name);
    std::map<std::string, Tensor> all_values;
    const Tensor fused = a.forward(images), plain = a.forward(images, every, all_values);
    CHECK(std::memcmp(fused.data(), plain.data(), static_cast<std::size_t>(fused.numel()) * sizeof(float)) == 0);
    // Targets out of network order take the full-forward path and still calibrate every layer.
    network c = make(1, 1.0f);
    calibration_config rev = cfg;
    rev.targets = {"layer3.0.conv1", "layer1.0.conv1", "fc"};
    const auto r = calibrate_feature_kd(teacher, c, images, rev);
    CHECK(r.layers.size() == 3);
  }

}

}  // namespace unit_fastpaths
