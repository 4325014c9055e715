// Tests of rimc::affine_adapter and recalibrate_batch_norm (the BN-statistics
// recalibration baseline): identity at init, the forward (and its in-place
// form) against a double reference, the scale and shift gradients against
// central differences in double, the input gradient against a directional
// difference (the map is linear in x), and the closed-form fit matching each
// channel's mean and variance to the teacher's, layer by layer.

#include <rimc/adapt/affine_adapter.hpp>
#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_affine {

using namespace rimc;

namespace {

std::vector<std::pair<const char*, std::shared_ptr<layer>>> bases() {
  const conv2d_params s2{.stride = {2, 2}, .padding = {1, 1}};
  return {{"linear", std::make_shared<digital_linear>(test::random_tensor(Shape{6, 13}, 11),
                                                      test::random_tensor(Shape{6}, 12))},
          {"conv 3x3 stride 2", std::make_shared<digital_conv2d>(test::random_tensor(Shape{5, 4, 3, 3}, 13),
                                                                 test::random_tensor(Shape{5}, 14), s2)}};
}

Shape input_shape(const layer& base) { return base.conv_params() ? Shape{3, 4, 9, 7} : Shape{4, 13}; }

/// The layer's output as it reaches an adapter (channels-last for a conv).
Tensor layer_out(const layer& base, const Tensor& x) {
  Tensor z;
  base.forward(x, z);
  return z.rank() == 4 ? z.to_layout(layout::nhwc) : z;
}

/// Per-channel mean and variance over every row of a channels-last [P, O] view, in double.
std::pair<std::vector<double>, std::vector<double>> channel_stats(const Tensor& t) {
  const Tensor v = t.rank() == 4 ? t.to_layout(layout::nhwc) : t;
  const std::int64_t O = t.dim(1), P = t.numel() / O;
  std::vector<double> m(static_cast<std::size_t>(O)), s(m);
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t o = 0; o < O; ++o) m[static_cast<std::size_t>(o)] += v[p * O + o] / static_cast<double>(P);
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t o = 0; o < O; ++o) {
      const double d = v[p * O + o] - m[static_cast<std::size_t>(o)];
      s[static_cast<std::size_t>(o)] += d * d / static_cast<double>(P);
    }
  return {m, s};
}

}  // namespace

TEST_SUITE("affine") {
  TEST_CASE("the affine adapter: identity at init, forward and in-place forward against a double reference, footprint") {
    for (const auto& [name, base] : bases()) {
      CAPTURE(name);
      affine_adapter a(*base);
      const Tensor x = test::random_tensor(input_shape(*base), 2);
      const Tensor z = layer_out(*base, x);
      Tensor y;
      a.forward(*base, x, z, y);
      CHECK(y == z);
      const auto O = a.out_features();
      a.set_parameters(*base, test::random_tensor(Shape{O}, 3, layout::nchw, 0.5f, 1.5f), test::random_tensor(Shape{O}, 4));
      a.forward(*base, x, z, y);
      const std::int64_t P = z.numel() / O;
      double worst = 0;
      for (std::int64_t p = 0; p < P; ++p)
        for (std::int64_t o = 0; o < O; ++o) {
          const double ref = double(a.scale()[o]) * double(z[p * O + o]) + double(a.shift()[o]);
          worst = std::max(worst, std::abs(ref - double(y[p * O + o])));
        }
      CHECK(worst < 1e-5);
      // In place, with and without the ReLU: bitwise forward()'s.
      Tensor out;
      base->forward(x, out);
      a.forward_in_place(*base, x, out, false);
      CHECK(out == y);
      base->forward(x, out);
      a.forward_in_place(*base, x, out, true);
      Tensor yr = y;
      for (std::int64_t i = 0; i < yr.numel(); ++i) yr[i] = std::max(yr[i], 0.0f);
      CHECK(out == yr);
      CHECK(a.footprint().parameters == 2 * O);
      CHECK(a.footprint().sram_bytes == static_cast<std::size_t>(8 * O));
      CHECK(a.footprint(sram_precision::fp16).sram_bytes == static_cast<std::size_t>(4 * O));
    }
  }

  TEST_CASE("the affine adapter's scale and shift gradients match central differences, its input gradient a directional one") {
    for (const auto& [name, base] : bases()) {
      CAPTURE(name);
      affine_adapter a(*base);
      const auto O = a.out_features();
      a.set_parameters(*base, test::random_tensor(Shape{O}, 5, layout::nchw, 0.5f, 1.5f), test::random_tensor(Shape{O}, 6));
      const Tensor x = test::random_tensor(input_shape(*base), 7);
      const Tensor z = layer_out(*base, x);
      Tensor y;
      affine_cache cache;
      a.forward(*base, x, z, y, &cache);
      const Tensor gy = test::random_tensor(y.shape(), 8, y.memory_layout());
      std::array<Tensor, 2> g;
      Tensor dx;
      a.backward(*base, cache, gy, g, &dx);
      // L = sum G (scale z + shift) in double, z fixed: central differences in each parameter.
      const std::int64_t P = z.numel() / O;
      std::vector<double> params;
      for (std::int64_t o = 0; o < O; ++o) params.push_back(a.scale()[o]);
      for (std::int64_t o = 0; o < O; ++o) params.push_back(a.shift()[o]);
      const auto f = [&](const std::vector<double>& q) {
        std::vector<double> out(static_cast<std::size_t>(P * O));
        for (std::int64_t p = 0; p < P; ++p)
          for (std::int64_t o = 0; o < O; ++o)
            out[static_cast<std::size_t>(p * O + o)] =
                q[static_cast<std::size_t>(o)] * z[p * O + o] + q[static_cast<std::size_t>(O + o)];
        return out;
      };
      const auto L = [&](const std::vector<double>& q) {
        const auto out = f(q);
        double s = 0;
        for (std::int64_t i = 0; i < P * O; ++i) s += double(gy[i]) * out[static_cast<std::size_t>(i)];
        return s;
      };
      const double h = 1e-6;
      for (std::int64_t j = 0; j < 2 * O; ++j) {
        auto qp = params, qm = params;
        qp[static_cast<std::size_t>(j)] += h;
        qm[static_cast<std::size_t>(j)] -= h;
        const double fd = (L(qp) - L(qm)) / (2 * h);
        const double got = j < O ? g[0][j] : g[1][j - O];
        CHECK(got == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
      }
      // The output is linear in x: L(x + v) - L(x - v) = 2 <dL/dx, v> up to float rounding.
      const Tensor v = test::random_tensor(x.shape(), 9);
      Tensor xp = x, xm = x;
      for (std::int64_t i = 0; i < x.numel(); ++i) {
        xp[i] += v[i];
        xm[i] -= v[i];
      }
      Tensor yp, ym;
      a.forward(*base, xp, layer_out(*base, xp), yp);
      a.forward(*base, xm, layer_out(*base, xm), ym);
      const double dir = (test::dot(gy, yp) - test::dot(gy, ym)) / 2;
      CHECK(test::dot(dx, v) == doctest::Approx(dir).epsilon(1e-4));
      Tensor dx_alone;
      a.backward_data(*base, gy, x.shape(), dx_alone);
      CHECK(dx_alone == dx);
    }
  }

  TEST_CASE("the affine adapter checks its parameters, files and geometry, changing nothing on error") {
    const auto base = bases()[0].second;
    affine_adapter a(*base);
    CHECK_THROWS_AS(a.set_parameters(*base, Tensor(Shape{5}), Tensor(Shape{6})), shape_error);
    Tensor nan(Shape{6});
    nan[2] = std::nanf("");
    CHECK_THROWS_AS(a.set_parameters(*base, nan, Tensor(Shape{6})), value_error);
    CHECK(a.scale().vector().isOnes());
    std::map<std::string, Tensor> files{{"affine_scale", Tensor(Shape{6})}};
    CHECK_THROWS_WITH_AS(a.load(*base, files), "[rimc.value_error] affine_adapter::load: missing tensor 'affine_shift'",
                         value_error);
    CHECK(a.scale().vector().isOnes());
    files["affine_shift"] = test::random_tensor(Shape{6}, 1);
    files["affine_scale"] = test::random_tensor(Shape{6}, 2);
    a.load(*base, files);
    CHECK(a.shift() == files["affine_shift"]);
    const digital_linear other(test::random_tensor(Shape{7, 13}, 1), Tensor(Shape{7}));
    Tensor y;
    CHECK_THROWS_AS(a.forward(other, Tensor(Shape{2, 13}), Tensor(Shape{2, 7}), y), shape_error);
  }

  TEST_CASE("BN recalibration matches each channel's mean and variance to the teacher's, layer by layer, without RRAM writes") {
    const network teacher = test::small_conv_net(1);
    network student = test::drifted_small_conv_net(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    const Tensor want = teacher.forward(images);
    const auto mse_to = [&](const Tensor& t) {
      double s = 0;
      for (std::int64_t i = 0; i < t.numel(); ++i) s += (t[i] - want[i]) * (t[i] - want[i]);
      return s / static_cast<double>(t.numel());
    };
    const double out_before = mse_to(student.forward(images));
    const batch_norm_recalibration r = recalibrate_batch_norm(teacher, student, images);
    REQUIRE(r.layers.size() == 3);
    CHECK(r.rram_writes == 0);
    CHECK(r.footprint.parameters == 2 * (8 + 12 + 4));
    std::map<std::string, Tensor> s_out, t_out;
    (void)student.forward(images, {"c1", "c2", "fc"}, s_out);
    (void)teacher.forward(images, {"c1", "c2", "fc"}, t_out);
    for (const auto& l : r.layers) {
      CAPTURE(l.name);
      CHECK(l.mse_after <= l.mse_before);
      const auto [ms, vs] = channel_stats(s_out.at(l.name));
      const auto [mt, vt] = channel_stats(t_out.at(l.name));
      for (std::size_t o = 0; o < ms.size(); ++o) {
        CHECK(ms[o] == doctest::Approx(mt[o]).epsilon(1e-4).scale(1e-4));
        CHECK(vs[o] == doctest::Approx(vt[o]).epsilon(1e-4).scale(1e-6));
      }
    }
    CHECK(mse_to(student.forward(images)) < out_before);
  }

  TEST_CASE("BN recalibration: a constant channel keeps scale 1, targets are honoured, bad input changes nothing") {
    const network teacher = test::small_conv_net(1);
    network student = test::small_conv_net(1);
    // Channel 0 of c1 is constant (its bias): its variance is 0, so only its mean is moved.
    Tensor w = student.node("c1").params.at("weight");
    for (std::int64_t i = 0; i < w.numel() / w.dim(0); ++i) w[i] = 0;
    student.set_parameter("c1", "weight", w);
    const Tensor images = test::random_tensor(Shape{5, 2, 10, 10}, 4);
    const auto r = recalibrate_batch_norm(teacher, student, images, {"c1"});
    REQUIRE(r.adapters.size() == 1);
    const affine_adapter& a = r.adapters.at("c1")->adapter();
    CHECK(a.scale()[0] == 1.0f);
    std::map<std::string, Tensor> t_out;
    (void)teacher.forward(images, {"c1"}, t_out);
    const double bias0 = student.node("c1").params.at("bias")[0];
    CHECK(double(a.shift()[0]) + bias0 == doctest::Approx(channel_stats(t_out.at("c1")).first[0]).epsilon(1e-5));
    CHECK(adapted_layers(student).size() == 1);

    network fresh = test::drifted_small_conv_net(1);
    Tensor bad = images;
    bad[7] = std::nanf("");
    CHECK_THROWS_WITH_AS(recalibrate_batch_norm(teacher, fresh, bad),
                         "[rimc.value_error] recalibrate_batch_norm: the calibration images are not finite", value_error);
    CHECK_THROWS_WITH_AS(recalibrate_batch_norm(teacher, fresh, images, {"r1"}),
                         "[rimc.value_error] recalibrate_batch_norm: target 'r1' is not a conv2d or linear layer",
                         value_error);
    CHECK(adapted_layers(fresh).empty());
    (void)recalibrate_batch_norm(teacher, fresh, images, {"c2"});
    CHECK_THROWS_WITH_AS(recalibrate_batch_norm(teacher, fresh, images, {"c2"}),
                         "[rimc.value_error] recalibrate_batch_norm: target 'c2' has an adapter already (detach_adapters first)",
                         value_error);
  }

  TEST_CASE("the feature-KD and backprop calibrators train affine adapters unchanged") {
    const network teacher = test::small_conv_net(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    const auto affine = [](const adapter_request& r) { return affine_adapter(r.base); };
    network student = test::drifted_small_conv_net(1);
    calibration_config cfg;
    cfg.steps = 40;
    cfg.lr = 0.02;
    const auto r = calibrate_feature_kd(teacher, student, images, cfg, affine);
    REQUIRE(r.layers.size() == 3);
    for (const auto& l : r.layers) {
      CAPTURE(l.name);
      CHECK(l.mse_after < l.mse_before);
    }
    test::check_backprop_trains(teacher, images, affine);
  }
}

}  // namespace unit_affine
