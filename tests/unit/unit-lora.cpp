// Tests of rimc::lora_adapter, the second adapter through the adapter concept:
// identity at init, the forward against the merged weights in double, the
// hand-written gradients against the double reference (the DoRA reference with
// gamma fixed at 1 is LoRA) and central differences, and both calibrators
// training it unchanged.

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/dora_reference.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_lora {

using namespace rimc;
using reference::dmat;
using reference::dvec;

namespace {

using test::to_dmat;

struct lora_case {
  const char* name;
  bool conv;
  Shape x, w;
  conv2d_params p;
  std::int64_t rank;
};

std::vector<lora_case> cases() {
  const conv2d_params s2{.stride = {2, 2}, .padding = {1, 1}};
  return {{"linear", false, Shape{4, 13}, Shape{6, 13}, {}, 3},
          {"conv 3x3 stride 2, rank 2 (thin path)", true, Shape{3, 4, 9, 7}, Shape{6, 4, 3, 3}, s2, 2},
          {"conv 3x3, rank 8 (oneDNN low-rank path)", true, Shape{2, 4, 6, 5}, Shape{10, 4, 3, 3}, s2, 8}};
}

struct fixture {
  std::shared_ptr<layer> base;
  lora_adapter a;
  Tensor x, layer_out;

  static std::shared_ptr<layer> make_base(const lora_case& c) {
    const Tensor w0 = test::random_tensor(c.w, 11, layout::nchw, -0.5f, 0.5f), b = test::random_tensor(Shape{c.w[0]}, 12);
    if (c.conv) return std::make_shared<digital_conv2d>(w0, b, c.p);
    return std::make_shared<digital_linear>(w0, b);
  }
  explicit fixture(const lora_case& c)
      : base(make_base(c)), a(*base, {.rank = c.rank, .alpha = 2.0 * static_cast<double>(c.rank), .seed = 3}) {
    a.set_parameters(*base, a.lora_A(), test::random_tensor(a.lora_B().shape(), 5, layout::nchw, -0.3f, 0.3f));
    x = test::random_tensor(c.x, 1);
    base->forward(x, layer_out);
    if (layer_out.rank() == 4) layer_out = layer_out.to_layout(layout::nhwc);
  }
  /// The reference problem: W0, A, B, m = ||W0 + s B A|| (gamma = 1), bias.
  [[nodiscard]] reference::dora_params<double> params() const {
    reference::dora_params<double> p;
    const auto O = a.out_features();
    p.w0 = to_dmat(base->effective_weights(), O);
    p.a = to_dmat(a.lora_A(), a.rank());
    p.b = to_dmat(a.lora_B(), O);
    p.bias = base->bias()->vector().cast<double>();
    p.scale = a.config().scale();
    p.m = reference::dora_norms(p);
    return p;
  }
  [[nodiscard]] dmat<double> rows(const lora_case& c) const {
    if (!c.conv) return to_dmat(x, x.dim(0));
    const Shape out = conv2d_output_shape(c.x, c.w, c.p);
    Tensor cols(Shape{out[0] * out[2] * out[3], c.w.numel() / c.w[0]});
    reference::im2col(x.to_layout(layout::nchw).data(), c.x, c.w, c.p, cols.data());
    return cols.matrix().cast<double>();
  }
};

}  // namespace

TEST_SUITE("lora") {
  TEST_CASE("at init (B = 0) the adapted output is the layer's own output, bitwise") {
    for (const auto& c : cases()) {
      CAPTURE(c.name);
      const auto base = fixture::make_base(c);
      const lora_adapter a(*base, {.rank = c.rank, .alpha = 4.0, .seed = 9});
      const Tensor x = test::random_tensor(c.x, 2);
      Tensor lo, y;
      base->forward(x, lo);
      if (lo.rank() == 4) lo = lo.to_layout(layout::nhwc);
      a.forward(*base, x, lo, y);
      CHECK(y == lo);
      CHECK(a.footprint().parameters == c.rank * (c.w.numel() / c.w[0]) + c.w[0] * c.rank);
    }
  }

  TEST_CASE("forward, gradients and the input gradient match the double reference and central differences") {
    for (const auto& c : cases()) {
      CAPTURE(c.name);
      fixture f(c);
      Tensor y;
      low_rank_cache cache;
      f.a.forward(*f.base, f.x, f.layer_out, y, &cache);
      const auto p = f.params();
      const dmat<double> X = f.rows(c);
      const dmat<double> ref_y = reference::dora_forward(X, p);
      const Tensor yn = y.to_layout(y.rank() == 4 ? layout::nhwc : layout::nchw);
      for (std::int64_t i = 0; i < ref_y.size(); ++i) REQUIRE(yn[i] == doctest::Approx(ref_y.data()[i]).epsilon(1e-5).scale(0.1));
      const Tensor gy = test::random_tensor(y.shape(), 4, y.memory_layout());
      std::array<Tensor, 2> g;
      Tensor dx;
      f.a.backward(*f.base, cache, gy, g, &dx);
      const dmat<double> G = gy.matrix(X.rows(), c.w[0]).cast<double>();
      const auto ref = reference::dora_backward(X, p, G, /*exact=*/false);  // gamma = 1: LoRA's gradients
      for (std::int64_t i = 0; i < g[0].numel(); ++i) CHECK(g[0][i] == doctest::Approx(ref.a.data()[i]).epsilon(1e-4).scale(1e-4));
      for (std::int64_t i = 0; i < g[1].numel(); ++i) CHECK(g[1][i] == doctest::Approx(ref.b.data()[i]).epsilon(1e-4).scale(1e-4));
      Tensor dx_ref(c.x);
      if (c.conv) {
        reference::col2im(dmat<double>(ref.x).cast<float>().eval().data(), c.x, c.w, c.p, dx_ref.data());
      } else {
        dx_ref.matrix(ref.x.rows(), ref.x.cols()) = ref.x.cast<float>();
      }
      test::check_close(dx, dx_ref, 1e-4, 1e-4);
      Tensor dx_alone;
      f.a.backward_data(*f.base, gy, c.x, dx_alone);
      test::check_close(dx_alone, dx, 1e-6, 1e-6);
      // Central differences of the reference forward (with n re-derived each time, i.e. LoRA's y = X (W0 + s B A)^T + b).
      auto flat = [](const dmat<double>& m) { return std::vector<double>(m.data(), m.data() + m.size()); };
      auto lora_forward = [&](const reference::dora_params<double>& q) {
        return flat(dmat<double>((X * (q.w0 + q.scale * q.b * q.a).transpose()).rowwise() + q.bias.transpose()));
      };
      auto G_of = [&](const std::vector<double>& dy) { return dmat<double>(Eigen::Map<const dmat<double>>(dy.data(), X.rows(), c.w[0])); };
      test::check_gradient(
          [&](const std::vector<double>& v) {
            auto q = p;
            q.a = Eigen::Map<const dmat<double>>(v.data(), p.a.rows(), p.a.cols());
            return lora_forward(q);
          },
          [&](const std::vector<double>&, const std::vector<double>& dy) { return flat(reference::dora_backward(X, p, G_of(dy), false).a); },
          flat(p.a), 31);
      test::check_gradient(
          [&](const std::vector<double>& v) {
            auto q = p;
            q.b = Eigen::Map<const dmat<double>>(v.data(), p.b.rows(), p.b.cols());
            return lora_forward(q);
          },
          [&](const std::vector<double>&, const std::vector<double>& dy) { return flat(reference::dora_backward(X, p, G_of(dy), false).b); },
          flat(p.b), 32);
    }
  }

  TEST_CASE("the feature-KD and backprop calibrators train LoRA adapters unchanged, on both loss paths") {
    const auto make = test::small_conv_net;
    const network teacher = make(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    const auto lora = [](const adapter_request& r) { return lora_adapter(r.base, {.rank = 2, .alpha = 2.0, .seed = r.seed}); };
    std::map<kd_loss_path, std::vector<layer_calibration>> runs;
    for (const kd_loss_path path : {kd_loss_path::direct, kd_loss_path::statistics}) {
      network student = test::drifted_small_conv_net(1);
      calibration_config cfg;
      cfg.steps = 30;
      cfg.lr = 0.02;
      cfg.loss_path = path;
      const auto r = calibrate_feature_kd(teacher, student, images, cfg, lora);
      REQUIRE(r.layers.size() == 3);
      for (const auto& l : r.layers) {
        CAPTURE(l.name);
        CHECK(l.path == path);
        CHECK(l.mse_after < l.mse_before);
      }
      CHECK(r.rram_writes == 0);
      CHECK(adapter_at<lora_adapter>(student, "c2")->adapter().rank() == 2);
      runs[path] = r.layers;
    }
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(runs[kd_loss_path::statistics][i].mse_after ==
            doctest::Approx(runs[kd_loss_path::direct][i].mse_after).epsilon(1e-2));
    }
    test::check_backprop_trains(teacher, images, lora);
  }
}

}  // namespace unit_lora
