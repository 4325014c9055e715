// Tests of rimc::vera_adapter (VeRA, and VeRA+'s one set of vectors per drift
// level) through the adapter concept: identity at init, the forward against a
// double reference, the vectors' gradients against central differences of
// that reference, the input gradient, levels, loading and checks, and both
// calibrators training it unchanged.

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/vera_adapter.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <array>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_vera {

using namespace rimc;
using dmat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

struct vera_case {
  const char* name;
  bool conv;
  Shape x, w;
  conv2d_params p;
  std::int64_t rank;
};

std::vector<vera_case> cases() {
  const conv2d_params s2{.stride = {2, 2}, .padding = {1, 1}};
  return {{"linear", false, Shape{4, 13}, Shape{6, 13}, {}, 3},
          {"conv 3x3 stride 2, rank 2 (thin path)", true, Shape{3, 4, 9, 7}, Shape{6, 4, 3, 3}, s2, 2},
          {"conv 3x3, rank 8 (oneDNN low-rank path)", true, Shape{2, 4, 6, 5}, Shape{10, 4, 3, 3}, s2, 8}};
}

std::shared_ptr<layer> make_base(const vera_case& c) {
  const Tensor w0 = test::random_tensor(c.w, 11, layout::nchw, -0.5f, 0.5f), b = test::random_tensor(Shape{c.w[0]}, 12);
  if (c.conv) return std::make_shared<digital_conv2d>(w0, b, c.p);
  return std::make_shared<digital_linear>(w0, b);
}

/// The layer's input as im2col rows [P, K] (the input itself for a linear layer).
dmat rows(const vera_case& c, const Tensor& x) {
  if (!c.conv) return test::to_dmat(x, x.dim(0));
  const Shape out = conv2d_output_shape(c.x, c.w, c.p);
  Tensor cols(Shape{out[0] * out[2] * out[3], c.w.numel() / c.w[0]});
  reference::im2col(x.to_layout(layout::nchw).data(), c.x, c.w, c.p, cols.data());
  return cols.matrix().cast<double>();
}

/// The double reference: Y = X W0^T + bias + (X A^T) diag(d) B^T diag(b), rows [P, O].
struct reference_vera {
  dmat X, W0, A, B;  // A [r, K], B [O, r]: the layer's slices
  Eigen::VectorXd bias;
  [[nodiscard]] dmat forward(const Eigen::VectorXd& d, const Eigen::VectorXd& b) const {
    dmat y = X * W0.transpose();
    y.rowwise() += bias.transpose();
    y.noalias() += (X * A.transpose()) * d.asDiagonal() * B.transpose() * b.asDiagonal();
    return y;
  }
};

Eigen::VectorXd as_vector(const Tensor& t) { return t.vector().cast<double>(); }

}  // namespace

TEST_SUITE("vera") {
  TEST_CASE("at init (lambda_b = 0) the adapted output is the layer's own output, bitwise, and footprints count the vectors") {
    for (const auto& c : cases()) {
      CAPTURE(c.name);
      const auto base = make_base(c);
      const auto K = c.w.numel() / c.w[0], O = c.w[0];
      const auto proj = std::make_shared<const vera_projections>(c.rank, K + 5, O + 3, 7);
      const vera_adapter a(*base, {.projections = proj, .levels = 3});
      const Tensor x = test::random_tensor(c.x, 2);
      Tensor lo, y;
      base->forward(x, lo);
      if (lo.rank() == 4) lo = lo.to_layout(layout::nhwc);
      a.forward(*base, x, lo, y);
      CHECK(y == lo);
      CHECK(a.lambda_d(2).vector().isConstant(0.1f));
      CHECK(a.lambda_b(2).vector().isZero());
      // The adapter's own values: 3 levels of (r + O), fp32; the projections are counted once.
      CHECK(a.footprint().parameters == 3 * (c.rank + O));
      CHECK(a.footprint().sram_bytes == 4 * static_cast<std::size_t>(3 * (c.rank + O)));
      CHECK(a.footprint(sram_precision::int8).sram_bytes == static_cast<std::size_t>(3 * (c.rank + O)) + 12);
      CHECK(proj->footprint().parameters == c.rank * (K + 5) + (O + 3) * c.rank);
      // The layer's slices are the projections' top-left blocks.
      CHECK(a.projection_A().matrix(c.rank, K) == proj->A().matrix(c.rank, K + 5).leftCols(K));
    }
  }

  TEST_CASE("forward, the vectors' gradients and the input gradient match a double reference and central differences") {
    for (const auto& c : cases()) {
      CAPTURE(c.name);
      const auto base = make_base(c);
      const auto K = c.w.numel() / c.w[0], O = c.w[0], r = c.rank;
      const auto proj = std::make_shared<const vera_projections>(r, K + 2, O + 4, 21);
      vera_adapter a(*base, {.projections = proj, .levels = 2});
      a.set_parameters(1, test::random_tensor(Shape{r}, 5, layout::nchw, -0.8f, 0.8f),
                       test::random_tensor(Shape{O}, 6, layout::nchw, -0.8f, 0.8f));
      a.select(1);
      const Tensor x = test::random_tensor(c.x, 1);
      Tensor lo;
      base->forward(x, lo);
      if (lo.rank() == 4) lo = lo.to_layout(layout::nhwc);
      Tensor y;
      low_rank_cache cache;
      a.forward(*base, x, lo, y, &cache);

      reference_vera ref;
      ref.X = rows(c, x);
      ref.W0 = test::to_dmat(base->effective_weights(), O);
      ref.A = proj->A().matrix(r, K + 2).leftCols(K).cast<double>();
      ref.B = proj->B().matrix(O + 4, r).topRows(O).cast<double>();
      ref.bias = base->bias()->vector().cast<double>();
      const Eigen::VectorXd d = as_vector(a.lambda_d(1)), b = as_vector(a.lambda_b(1));
      const dmat ref_y = ref.forward(d, b);
      const auto P = ref.X.rows();
      const std::vector<float> ref_yf(ref_y.data(), ref_y.data() + ref_y.size());
      test::check_close(y, Tensor::from(y.shape(), ref_yf, y.memory_layout()), 1e-5, 1e-5);

      const Tensor gy = test::random_tensor(y.shape(), 4, y.memory_layout());
      std::array<Tensor, 2> g;
      Tensor dx;
      a.backward(*base, cache, gy, g, &dx);
      // Central differences of the double reference in each vector.
      const dmat G = gy.matrix(P, O).cast<double>();
      auto loss_d = [&](const Eigen::VectorXd& dd) { return (G.array() * ref.forward(dd, b).array()).sum(); };
      auto loss_b = [&](const Eigen::VectorXd& bb) { return (G.array() * ref.forward(d, bb).array()).sum(); };
      const double h = 1e-6;
      for (Eigen::Index j = 0; j < r; ++j) {
        Eigen::VectorXd dp = d, dm = d;
        dp[j] += h;
        dm[j] -= h;
        CHECK(g[0][j] == doctest::Approx((loss_d(dp) - loss_d(dm)) / (2 * h)).epsilon(1e-4).scale(1e-3));
      }
      for (Eigen::Index o = 0; o < O; ++o) {
        Eigen::VectorXd bp = b, bm = b;
        bp[o] += h;
        bm[o] -= h;
        CHECK(g[1][o] == doctest::Approx((loss_b(bp) - loss_b(bm)) / (2 * h)).epsilon(1e-4).scale(1e-3));
      }
      // dL/dx = G (W0 + diag(b) B diag(d) A), through col2im for a convolution.
      const dmat dX = G * (ref.W0 + b.asDiagonal() * ref.B * d.asDiagonal() * ref.A);
      Tensor dx_ref(c.x);
      if (c.conv) {
        reference::col2im(dmat(dX).cast<float>().eval().data(), c.x, c.w, c.p, dx_ref.data());
      } else {
        dx_ref.matrix(dX.rows(), dX.cols()) = dX.cast<float>();
      }
      test::check_close(dx, dx_ref, 1e-4, 1e-4);
      Tensor dx_alone;
      a.backward_data(*base, gy, c.x, dx_alone);
      test::check_close(dx_alone, dx, 1e-6, 1e-6);
      // The merged weights give the same output as the factorised forward.
      const dmat merged = test::to_dmat(a.merged_weights(*base), O);
      const dmat W_ref = ref.W0 + b.asDiagonal() * ref.B * d.asDiagonal() * ref.A;
      CHECK((merged - W_ref).cwiseAbs().maxCoeff() < 1e-6);
    }
  }

  TEST_CASE("both levels' forward and gradients match PyTorch autograd (tests/data/vera_fixtures.safetensors)") {
    const auto f = safetensors_file::load(std::filesystem::path(RIMC_TEST_DATA_DIR) / "vera_fixtures.safetensors");
    for (std::string name : {"linear", "conv"}) {
      CAPTURE(name);
      const auto t = [&](const std::string& key) { return f.tensor(name + "." + key); };
      const bool conv = name == "conv";
      const Tensor w0 = t("w0"), bias = t("bias");
      std::shared_ptr<layer> base;
      if (conv) {
        base = std::make_shared<digital_conv2d>(w0, bias, conv2d_params{.stride = {2, 2}, .padding = {1, 1}});
      } else {
        base = std::make_shared<digital_linear>(w0, bias);
      }
      const auto proj = std::make_shared<const vera_projections>(t("vera_A"), t("vera_B"));
      REQUIRE(proj->rank() == std::stoll(f.metadata().at(name + ".rank")));
      vera_adapter a(*base, {.projections = proj, .levels = 2});
      for (int l = 0; l < 2; ++l) {
        const std::string lv = std::to_string(l) + ".";
        a.set_parameters(l, t(lv + "lambda_d"), t(lv + "lambda_b"));
      }
      const Tensor x = t("x");
      Tensor lo;
      base->forward(x, lo);
      for (int l = 0; l < 2; ++l) {
        CAPTURE(l);
        const std::string lv = std::to_string(l) + ".";
        a.select(l);
        low_rank_cache cache;
        Tensor y;
        a.forward(*base, x, lo, y, &cache);
        test::check_close(y, t(lv + "y"), 1e-5, 1e-5);
        std::array<Tensor, 2> g;
        Tensor dx;
        a.backward(*base, cache, t("grad_y"), g, &dx);
        test::check_close(g[0], t(lv + "dlambda_d"), 1e-5, 1e-5);
        test::check_close(g[1], t(lv + "dlambda_b"), 1e-5, 1e-5);
        test::check_close(dx, t(lv + "dx"), 1e-5, 1e-5);
      }
    }
  }

  TEST_CASE("levels are selected and loaded as a whole, and bad arguments name the field and change nothing") {
    const vera_case c = cases()[0];
    const auto base = make_base(c);
    const auto proj = std::make_shared<const vera_projections>(3, 13, 6, 2);
    vera_adapter a(*base, {.projections = proj, .levels = 2});
    a.set_parameters(1, test::random_tensor(Shape{3}, 1), test::random_tensor(Shape{6}, 2));
    const Tensor x = test::random_tensor(c.x, 3);
    Tensor lo, y0, y1;
    base->forward(x, lo);
    a.forward(*base, x, lo, y0);
    CHECK(y0 == lo);  // level 0 is still at init
    a.select(1);
    a.forward(*base, x, lo, y1);
    CHECK_FALSE(y1 == lo);
    CHECK(a.parameters()[1] == &a.lambda_b(1));

    // tensors() names every level; load restores them; a failed load changes nothing.
    const auto named = a.tensors();
    REQUIRE(named.size() == 4);
    CHECK(named[2].first == "levels.1.vera_lambda_d");
    std::map<std::string, Tensor> files(named.begin(), named.end());
    vera_adapter b(*base, {.projections = proj, .levels = 2});
    b.load(*base, files);
    b.select(1);
    Tensor yb;
    b.forward(*base, x, lo, yb);
    CHECK(yb == y1);
    auto bad = files;
    bad["levels.0.vera_lambda_b"] = Tensor(Shape{7});
    CHECK_THROWS_WITH_AS(b.load(*base, bad),
                         "[rimc.shape_error] vera_adapter::load: tensor 'levels.0.vera_lambda_b' has shape [7], expected [6]",
                         shape_error);
    bad = files;
    bad["levels.1.vera_lambda_d"][0] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(b.load(*base, bad), value_error);
    bad = files;
    bad.erase("levels.1.vera_lambda_b");
    CHECK_THROWS_WITH_AS(b.load(*base, bad), "[rimc.value_error] vera_adapter::load: missing tensor 'levels.1.vera_lambda_b'",
                         value_error);
    Tensor yb2;
    b.forward(*base, x, lo, yb2);
    CHECK(yb2 == y1);

    CHECK_THROWS_WITH_AS(a.select(2), "[rimc.value_error] vera_adapter::select: level must be in [0, 2), got 2", value_error);
    CHECK_THROWS_WITH_AS(vera_adapter(*base, {.projections = proj, .levels = 0}),
                         "[rimc.value_error] vera_config: levels must be in [1, 64], got 0", value_error);
    CHECK_THROWS_WITH_AS(vera_adapter(*base, {}), "[rimc.value_error] vera_config: projections must be set", value_error);
    const auto small = std::make_shared<const vera_projections>(3, 12, 6, 2);
    CHECK_THROWS_WITH_AS(vera_adapter(*base, {.projections = small}),
                         "[rimc.value_error] vera_adapter: the layer needs K = 13 and O = 6, the projections serve "
                         "max_in = 12 and max_out = 6",
                         value_error);
    CHECK_THROWS_WITH_AS(vera_projections(0, 4, 4, 1), "[rimc.value_error] vera_projections: rank must be in [1, 64], got 0",
                         value_error);
    CHECK_THROWS_AS(vera_projections(Tensor(Shape{3, 4}), Tensor(Shape{5, 2})), shape_error);
  }

  TEST_CASE("the feature-KD and backprop calibrators train VeRA adapters unchanged") {
    const auto make = test::small_conv_net;
    const network teacher = make(1);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 3);
    // One pair of projections for the whole network: K up to 8 * 3 * 3, O up to 12.
    const auto proj = std::make_shared<const vera_projections>(4, 72, 12, 5);
    const auto vera = [&](const adapter_request& r) { return vera_adapter(r.base, {.projections = proj}); };
    network student = test::drifted_small_conv_net(1);
    calibration_config cfg;
    cfg.steps = 40;
    cfg.lr = 0.05;
    const auto r = calibrate_feature_kd(teacher, student, images, cfg, vera);
    REQUIRE(r.layers.size() == 3);
    for (const auto& l : r.layers) {
      CAPTURE(l.name);
      CHECK(l.path == kd_loss_path::direct);
      CHECK(l.mse_after < l.mse_before);
    }
    CHECK(r.rram_writes == 0);
    CHECK(r.footprint.parameters == (4 + 8) + (4 + 12) + (4 + 4));

    test::check_backprop_trains(teacher, images, vera);
  }
}

}  // namespace unit_vera
