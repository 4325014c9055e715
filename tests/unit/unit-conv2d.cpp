// Tests of rimc::conv2d (oneDNN) against the reference, and of the reference's
// backward pass against finite differences in double precision.

#include <rimc/core/half.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_conv2d {

using namespace rimc;

namespace {

struct conv_case {
  const char* name;
  Shape src;      // [N, C, H, W]
  Shape weights;  // [O, C/g, kh, kw]
  conv2d_params p;
  bool bias;
};

std::vector<conv_case> conv_cases() {
  auto P = [](std::int64_t s, std::int64_t pad, std::int64_t d, std::int64_t g, bool relu) {
    conv2d_params p;
    p.stride = {s, s};
    p.padding = {pad, pad};
    p.dilation = {d, d};
    p.groups = g;
    p.relu = relu;
    return p;
  };
  conv2d_params asym;
  asym.stride = {2, 1};
  asym.padding = {0, 2};
  asym.dilation = {1, 2};
  return {
      {"3x3 same padding, batch 1", Shape{1, 16, 8, 8}, Shape{16, 16, 3, 3}, P(1, 1, 1, 1, false), true},
      {"3x3 stride 2, odd size, batch 7", Shape{7, 8, 11, 9}, Shape{12, 8, 3, 3}, P(2, 1, 1, 1, false), true},
      {"1x1 stride 2 shortcut", Shape{3, 16, 10, 10}, Shape{32, 16, 1, 1}, P(2, 0, 1, 1, false), false},
      {"dilation 2", Shape{2, 5, 13, 12}, Shape{7, 5, 3, 3}, P(1, 2, 2, 1, false), true},
      {"groups 2 with fused relu", Shape{7, 8, 9, 9}, Shape{6, 4, 3, 3}, P(1, 1, 1, 2, true), true},
      {"depthwise", Shape{2, 8, 7, 7}, Shape{8, 1, 3, 3}, P(1, 1, 1, 8, false), false},
      {"first layer, 3 input channels, 7x7 stride 2", Shape{2, 3, 17, 17}, Shape{16, 3, 7, 7},
       P(2, 3, 1, 1, true), true},
      {"one input channel, 5x5, no padding", Shape{7, 1, 28, 28}, Shape{6, 1, 5, 5}, P(1, 0, 1, 1, false), true},
      {"asymmetric stride, padding and dilation", Shape{2, 4, 9, 11}, Shape{5, 4, 3, 2}, asym, true},
  };
}

}  // namespace

TEST_SUITE("conv2d") {
  TEST_CASE("oneDNN forward matches the reference") {
    for (const auto& c : conv_cases()) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(c.name) + ", src " + std::string(to_string(l))).c_str()) {
          const Tensor x = test::random_tensor(c.src, 1, l);
          const Tensor w = test::random_tensor(c.weights, 2);
          const Tensor b = test::random_tensor(Shape{c.weights[0]}, 3);
          const conv2d conv(w, c.bias ? std::optional<Tensor>(b) : std::nullopt, c.p);
          const Tensor y = conv.forward(x);
          CHECK(y.shape() == conv.output_shape(c.src));
          test::check_close(y, reference::conv2d(x, w, c.bias ? &b : nullptr, c.p));
        }
      }
    }
  }

  TEST_CASE("oneDNN backward-data matches the reference and is the forward's adjoint") {
    for (const auto& c : conv_cases()) {
      SUBCASE(c.name) {
        conv2d_params p = c.p;
        p.relu = false;  // backward-data is the linear part's transpose
        const Tensor w = test::random_tensor(c.weights, 4);
        const conv2d conv(w, std::nullopt, p);
        const Shape out = conv.output_shape(c.src);
        const Tensor dy = test::random_tensor(out, 5, layout::nhwc);
        const Tensor dx = conv.backward_data(dy, c.src);
        CHECK(dx.shape() == c.src);
        test::check_close(dx, reference::conv2d_backward_data(dy, w, p, c.src));
        // <dy, conv(x)> == <conv^T(dy), x> for any x.
        const Tensor x = test::random_tensor(c.src, 6);
        const double lhs = test::dot(dy, conv.forward(x)), rhs = test::dot(dx, x);
        CHECK(lhs == doctest::Approx(rhs).epsilon(1e-4));
      }
    }
  }

  TEST_CASE("the reference backward-data is the gradient of the reference forward (double, central differences)") {
    for (const auto& c : conv_cases()) {
      SUBCASE(c.name) {
        conv2d_params p = c.p;
        p.relu = false;
        const auto w = test::random_doubles(c.weights.numel(), 8);
        const Shape out = conv2d_output_shape(c.src, c.weights, p);
        auto f = [&](const std::vector<double>& x) {
          std::vector<double> y(static_cast<std::size_t>(out.numel()));
          reference::conv2d_forward(x.data(), c.src, w.data(), c.weights, static_cast<const double*>(nullptr), p,
                                    y.data());
          return y;
        };
        auto g = [&](const std::vector<double>&, const std::vector<double>& dy) {
          std::vector<double> dx(static_cast<std::size_t>(c.src.numel()));
          reference::conv2d_backward_data(dy.data(), w.data(), c.weights, p, c.src, dx.data());
          return dx;
        };
        test::check_gradient(f, g, test::random_doubles(c.src.numel(), 9), 10, 150);
      }
    }
  }

  TEST_CASE("weights are packed once per format, not per call") {
    const conv2d conv(test::random_tensor(Shape{16, 16, 3, 3}, 1), std::nullopt, conv2d_params{{1, 1}, {1, 1}});
    const Tensor x = test::random_tensor(Shape{4, 16, 8, 8}, 2, layout::nhwc);
    Tensor y;
    for (int i = 0; i < 5; ++i) conv.forward(x, y);
    const auto packs = conv.packed_weight_count();
    CHECK(packs <= 1);
    for (int i = 0; i < 5; ++i) conv.forward(x, y);
    CHECK(conv.packed_weight_count() == packs);
    CHECK_FALSE(conv.implementation(x.shape()).empty());
  }

  TEST_CASE("set_weights changes the result and re-packs") {
    const Tensor w1 = test::random_tensor(Shape{4, 3, 3, 3}, 1), w2 = test::random_tensor(Shape{4, 3, 3, 3}, 2);
    const Tensor x = test::random_tensor(Shape{2, 3, 6, 6}, 3);
    const conv2d_params p{{1, 1}, {1, 1}};
    conv2d conv(w1, std::nullopt, p);
    test::check_close(conv.forward(x), reference::conv2d(x, w1, nullptr, p));
    conv.set_weights(w2);
    test::check_close(conv.forward(x), reference::conv2d(x, w2, nullptr, p));
    CHECK_THROWS_WITH(conv.set_weights(Tensor(Shape{4, 3, 1, 1})),
                      "[rimc.shape_error] conv2d::set_weights: shapes differ: [4, 3, 1, 1] vs [4, 3, 3, 3]");
  }

  TEST_CASE("results agree across thread counts and in-place calls") {
    const Tensor w = test::random_tensor(Shape{32, 16, 3, 3}, 1);
    const conv2d conv(w, std::nullopt, conv2d_params{{1, 1}, {1, 1}});
    Tensor x = test::random_tensor(Shape{8, 16, 12, 12}, 2, layout::nhwc);
    Tensor y1, y2;
    {
      const thread_count_guard g(1);
      conv.forward(x, y1);
    }
    {
      const thread_count_guard g(2);
      conv.forward(x, y2);
    }
    test::check_close(y1, y2, 1e-5, 1e-5);
    conv.forward(x, x);
    test::check_close(x, y1, 1e-5, 1e-5);
  }

  TEST_CASE("bad shapes and parameters are rejected with the values named") {
    const Tensor w(Shape{8, 4, 3, 3});
    CHECK_THROWS_WITH(conv2d(Tensor(Shape{8, 4})),
                      "[rimc.shape_error] conv2d: weights must be rank 4 [O, C/groups, kh, kw], got [8, 4]");
    CHECK_THROWS_WITH(conv2d(w, Tensor(Shape{7})),
                      "[rimc.shape_error] conv2d: bias [7] does not match weights [8, 4, 3, 3] (expected [8])");
    CHECK_THROWS_WITH(conv2d(w, std::nullopt, conv2d_params{{0, 1}}),
                      "[rimc.value_error] conv2d: stride must be >= 1, got (0, 1)");
    CHECK_THROWS_WITH(conv2d(w, std::nullopt, conv2d_params{{1, 1}, {0, 0}, {1, 1}, 3}),
                      "[rimc.shape_error] conv2d: output channels 8 of weights [8, 4, 3, 3] are not divisible by "
                      "groups 3");
    const conv2d conv(w);
    CHECK_THROWS_WITH((void)conv.forward(Tensor(Shape{2, 5, 8, 8})),
                      "[rimc.shape_error] conv2d: src [2, 5, 8, 8] has 5 channels but weights [8, 4, 3, 3] with "
                      "groups 1 expect 4");
    CHECK_THROWS_WITH((void)conv.forward(Tensor(Shape{2, 4, 2, 8})),
                      "[rimc.shape_error] conv2d: kernel [8, 4, 3, 3] with dilation (1, 1) does not fit src "
                      "[2, 4, 2, 8] padded by (0, 0)");
    CHECK_THROWS_WITH((void)conv.forward(Tensor(Shape{4, 8})),
                      "[rimc.shape_error] conv2d: src must be rank 4 (N, C, H, W), got [4, 8]");
    CHECK_THROWS_WITH((void)conv.backward_data(Tensor(Shape{1, 8, 5, 5}), Shape{1, 4, 8, 8}),
                      "[rimc.shape_error] conv2d::backward_data: diff_dst: shapes differ: [1, 8, 5, 5] vs "
                      "[1, 8, 6, 6]");
  }
}

TEST_SUITE("conv2d backward-weights") {
  TEST_CASE("oneDNN backward-weights matches the reference, with and without the bias gradient") {
    for (const auto& c : conv_cases()) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(c.name) + ", " + std::string(to_string(l))).c_str()) {
          conv2d_params p = c.p;
          p.relu = false;
          const Tensor w = test::random_tensor(c.weights, 4);
          const conv2d conv(w, test::random_tensor(Shape{c.weights[0]}, 5), p);
          const Tensor x = test::random_tensor(c.src, 6, l);
          const Tensor dy = test::random_tensor(conv.output_shape(c.src), 7, l);
          Tensor dw, db;
          conv.backward_weights(x, dy, dw, &db);
          CHECK(dw.shape() == c.weights);
          test::check_close(dw, reference::conv2d_backward_weights(x, dy, c.weights, p), 1e-4, 1e-3);
          // dL/dbias sums dy over batch and positions.
          const Tensor dyr = dy.to_layout(layout::nchw);
          Tensor expected_db(Shape{c.weights[0]});
          const auto per = dyr.numel() / dyr.dim(0) / c.weights[0];
          for (std::int64_t n = 0; n < dyr.dim(0); ++n)
            for (std::int64_t o = 0; o < c.weights[0]; ++o)
              for (std::int64_t i = 0; i < per; ++i) expected_db[o] += dyr[(n * c.weights[0] + o) * per + i];
          test::check_close(db, expected_db, 1e-4, 1e-3);
          test::check_close(conv.backward_weights(x, dy), dw, 1e-6, 1e-6);
        }
      }
    }
  }

  TEST_CASE("the reference backward-weights is the gradient with respect to the weights (double, central differences)") {
    for (const auto& c : conv_cases()) {
      SUBCASE(c.name) {
        conv2d_params p = c.p;
        p.relu = false;
        const auto x = test::random_doubles(c.src.numel(), 11);
        const Shape out = conv2d_output_shape(c.src, c.weights, p);
        auto f = [&](const std::vector<double>& w) {
          std::vector<double> y(static_cast<std::size_t>(out.numel()));
          reference::conv2d_forward(x.data(), c.src, w.data(), c.weights, static_cast<const double*>(nullptr), p,
                                    y.data());
          return y;
        };
        auto g = [&](const std::vector<double>&, const std::vector<double>& dy) {
          std::vector<double> dw(static_cast<std::size_t>(c.weights.numel()));
          reference::conv2d_backward_weights(x.data(), c.src, dy.data(), c.weights, p, dw.data());
          return dw;
        };
        test::check_gradient(f, g, test::random_doubles(c.weights.numel(), 12), 13, 150);
      }
    }
  }

  TEST_CASE("im2col rows times the flattened weights give the convolution") {
    conv2d_params p;
    p.stride = {2, 1};
    p.padding = {1, 2};
    p.dilation = {1, 2};
    const Shape src{2, 3, 7, 6}, wshape{4, 3, 3, 2};
    const Tensor x = test::random_tensor(src, 1), w = test::random_tensor(wshape, 2);
    const Shape out = conv2d_output_shape(src, wshape, p);
    const auto P = out[0] * out[2] * out[3], K = wshape.numel() / wshape[0];
    Tensor cols(Shape{P, K});
    reference::im2col(x.data(), src, wshape, p, cols.data());
    const RowMatrixXf y = cols.matrix() * w.matrix(wshape[0], K).transpose();  // [P, O], rows (n, oh, ow)
    const Tensor expected = reference::conv2d(x, w, nullptr, p);
    for (std::int64_t n = 0; n < out[0]; ++n)
      for (std::int64_t o = 0; o < out[1]; ++o)
        for (std::int64_t i = 0; i < out[2] * out[3]; ++i)
          REQUIRE(y(n * out[2] * out[3] + i, o) ==
                  doctest::Approx(expected[(n * out[1] + o) * out[2] * out[3] + i]).epsilon(1e-5));
  }
}

TEST_SUITE("conv2d bf16") {
  TEST_CASE("forward_bf16 is the convolution of the bf16-rounded source and weights, summed in f32") {
    // Against a double reference on the bf16 values (weights rounded to nearest even): within the
    // f32 summation's rounding, K 2^-23 times the sum of |products|, for every output. Where oneDNN
    // has no bf16 convolution the call is a backend_error and the implementation's name empty.
    struct bf16_case {
      Shape src, weights;
      conv2d_params p;
    };
    for (const auto& c : {bf16_case{Shape{2, 16, 9, 9}, Shape{24, 16, 3, 3}, conv2d_params{{1, 1}, {1, 1}}},
                          bf16_case{Shape{3, 5, 10, 7}, Shape{8, 5, 3, 3}, conv2d_params{{2, 2}, {0, 0}}},
                          bf16_case{Shape{1, 28, 7, 7}, Shape{64, 28, 1, 1}, conv2d_params{}}}) {
      CAPTURE(c.src.to_string());
      const Tensor x = test::random_tensor(c.src, 40, layout::nhwc);
      const Tensor w = test::random_tensor(c.weights, 41);
      const conv2d conv(w, std::nullopt, c.p);
      std::vector<std::uint16_t> xb(static_cast<std::size_t>(x.numel()));
      for (std::int64_t i = 0; i < x.numel(); ++i) xb[static_cast<std::size_t>(i)] = float_to_bf16_bits(x.data()[i]);
      Tensor y;
      if (conv.bf16_implementation(c.src).empty()) {
        MESSAGE("oneDNN has no bf16 convolution here");
        CHECK_THROWS_AS(conv.forward_bf16(xb.data(), c.src, y), backend_error);
        continue;
      }
      conv.forward_bf16(xb.data(), c.src, y);
      CHECK(y.memory_layout() == layout::nhwc);
      REQUIRE(y.shape() == conv.output_shape(c.src));
      // The reference on the rounded values, and the sum of |products| for the tolerance.
      Tensor xr(c.src), wr(c.weights);
      const Tensor xp = x.to_layout(layout::nchw);
      for (std::int64_t i = 0; i < xr.numel(); ++i) xr[i] = bf16_bits_to_float(float_to_bf16_bits(xp[i]));
      for (std::int64_t i = 0; i < wr.numel(); ++i) wr[i] = bf16_bits_to_float(float_to_bf16_bits(w[i]));
      Tensor xa = xr, wa = wr;
      for (std::int64_t i = 0; i < xa.numel(); ++i) xa[i] = std::abs(xa[i]);
      for (std::int64_t i = 0; i < wa.numel(); ++i) wa[i] = std::abs(wa[i]);
      const Tensor want = reference::conv2d(xr, wr, nullptr, c.p).to_layout(layout::nchw);
      const Tensor mag = reference::conv2d(xa, wa, nullptr, c.p).to_layout(layout::nchw);
      const Tensor got = y.to_layout(layout::nchw);
      const double K = static_cast<double>(c.weights[1] * c.weights[2] * c.weights[3]);
      double worst = 0;
      for (std::int64_t i = 0; i < got.numel(); ++i) {
        worst = std::max(worst, std::abs(double(got[i]) - double(want[i])) / (K * 0x1p-23 * double(mag[i]) + 1e-30));
      }
      CHECK(worst <= 1.0);
      // A bias has no place in it.
      const conv2d with_bias(w, test::random_tensor(Shape{c.weights[0]}, 42), c.p);
      CHECK_THROWS_AS(with_bias.forward_bf16(xb.data(), c.src, y), value_error);
    }
  }
}

}  // namespace unit_conv2d
