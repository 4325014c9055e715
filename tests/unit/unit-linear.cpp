// Tests of rimc::linear and rimc::matmul (oneDNN) against the reference and Eigen,
// and of the reference backward against finite differences in double precision.

#include <rimc/core/parallel.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_linear {

using namespace rimc;

TEST_SUITE("linear") {
  TEST_CASE("oneDNN forward matches the reference") {
    for (std::int64_t N : {1, 7, 32}) {
      for (bool bias : {false, true}) {
        for (bool relu : {false, true}) {
          SUBCASE(("N " + std::to_string(N) + (bias ? " bias" : "") + (relu ? " relu" : "")).c_str()) {
            const Tensor w = test::random_tensor(Shape{10, 37}, 1);
            const Tensor b = test::random_tensor(Shape{10}, 2);
            const linear fc(w, bias ? std::optional<Tensor>(b) : std::nullopt, relu);
            const Tensor x = test::random_tensor(Shape{N, 37}, 3);
            const Tensor y = fc.forward(x);
            CHECK(y.shape() == Shape{N, 10});
            test::check_close(y, reference::linear(x, w, bias ? &b : nullptr, relu));
          }
        }
      }
    }
  }

  TEST_CASE("a rank-4 source is flattened in channels-first order whatever its layout") {
    const Tensor w = test::random_tensor(Shape{5, 3 * 4 * 2}, 1);
    const linear fc(w);
    const Tensor x = test::random_tensor(Shape{7, 3, 4, 2}, 2);
    const Tensor expected = reference::linear(x, w, nullptr);
    test::check_close(fc.forward(x), expected);
    test::check_close(fc.forward(x.to_layout(layout::nhwc)), expected);
  }

  TEST_CASE("oneDNN backward-data matches the reference and is the forward's adjoint") {
    for (std::int64_t N : {1, 7}) {
      SUBCASE(("N " + std::to_string(N)).c_str()) {
        const Tensor w = test::random_tensor(Shape{9, 33}, 4);
        const linear fc(w);
        const Tensor dy = test::random_tensor(Shape{N, 9}, 5);
        const Tensor dx = fc.backward_data(dy);
        Tensor expected(Shape{N, 33});
        reference::linear_backward_data(dy.data(), N, 9, w.data(), 33, expected.data());
        test::check_close(dx, expected);
        const Tensor x = test::random_tensor(Shape{N, 33}, 6);
        CHECK(test::dot(dy, fc.forward(x)) == doctest::Approx(test::dot(dx, x)).epsilon(1e-4));
      }
    }
  }

  TEST_CASE("the reference backward-data is the gradient of the reference forward (double, central differences)") {
    constexpr std::int64_t N = 3, K = 11, O = 4;
    const auto w = test::random_doubles(O * K, 1);
    auto f = [&](const std::vector<double>& x) {
      std::vector<double> y(N * O);
      reference::linear_forward(x.data(), N, K, w.data(), O, static_cast<const double*>(nullptr), false, y.data());
      return y;
    };
    auto g = [&](const std::vector<double>&, const std::vector<double>& dy) {
      std::vector<double> dx(N * K);
      reference::linear_backward_data(dy.data(), N, O, w.data(), K, dx.data());
      return dx;
    };
    test::check_gradient(f, g, test::random_doubles(N * K, 2), 3);
  }

  TEST_CASE("weights are packed once and set_weights re-packs") {
    const Tensor w1 = test::random_tensor(Shape{16, 64}, 1), w2 = test::random_tensor(Shape{16, 64}, 2);
    linear fc(w1);
    const Tensor x = test::random_tensor(Shape{32, 64}, 3);
    Tensor y;
    for (int i = 0; i < 3; ++i) fc.forward(x, y);
    test::check_close(y, reference::linear(x, w1, nullptr));
    fc.set_weights(w2);
    test::check_close(fc.forward(x), reference::linear(x, w2, nullptr));
    CHECK_FALSE(fc.implementation(32).empty());
  }

  TEST_CASE("matmul matches Eigen") {
    const Tensor a = test::random_tensor(Shape{13, 7}, 1), b = test::random_tensor(Shape{7, 5}, 2);
    const Tensor c = matmul(a, b);
    RowMatrixXf expected = a.matrix() * b.matrix();
    test::check_close(c, Tensor::from(Shape{13, 5}, std::span<const float>(expected.data(), 65)));
    CHECK_THROWS_WITH((void)matmul(a, a), "[rimc.shape_error] matmul: cannot multiply [13, 7] by [13, 7]");
  }

  TEST_CASE("bad shapes are rejected with the values named") {
    CHECK_THROWS_WITH(linear(Tensor(Shape{4})), "[rimc.shape_error] linear: weights must be rank 2 [O, K], got [4]");
    CHECK_THROWS_WITH(linear(Tensor(Shape{4, 3}), Tensor(Shape{3})),
                      "[rimc.shape_error] linear: bias [3] does not match weights [4, 3] (expected [4])");
    const linear fc(Tensor(Shape{4, 3}));
    CHECK_THROWS_WITH((void)fc.forward(Tensor(Shape{2, 5})),
                      "[rimc.shape_error] linear: src [2, 5] does not give 3 features per row for weights [4, 3]");
    CHECK_THROWS_WITH((void)fc.backward_data(Tensor(Shape{2, 3})),
                      "[rimc.shape_error] linear::backward_data: diff_dst must be [N, 4], got [2, 3]");
  }
}

TEST_SUITE("concurrency") {
  TEST_CASE("primitives executed from several threads at once give the serial results") {
    // oneDNN's default scratchpad is shared by all primitives; rimc gives each thread its own.
    std::vector<Tensor> a, b, serial(8), parallel(8);
    for (int i = 0; i < 8; ++i) {
      a.push_back(test::random_tensor(Shape{96, 300}, 10 + static_cast<std::uint64_t>(i)));
      b.push_back(test::random_tensor(Shape{300, 70}, 30 + static_cast<std::uint64_t>(i)));
    }
    const conv2d conv(test::random_tensor(Shape{16, 16, 3, 3}, 1), std::nullopt, conv2d_params{{1, 1}, {1, 1}});
    const Tensor x = test::random_tensor(Shape{4, 16, 12, 12}, 2, layout::nhwc);
    std::vector<Tensor> cs(8), cp(8);
    {
      const thread_count_guard one(1);
      for (int i = 0; i < 8; ++i) {
        serial[static_cast<std::size_t>(i)] = matmul(a[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(i)]);
        conv.forward(x, cs[static_cast<std::size_t>(i)]);
      }
    }
    const thread_count_guard two(2);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < 8; ++i) {
      const thread_count_guard one(1);
      parallel[static_cast<std::size_t>(i)] = matmul(a[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(i)]);
      conv.forward(x, cp[static_cast<std::size_t>(i)]);
    }
    for (std::size_t i = 0; i < 8; ++i) {
      CHECK(parallel[i] == serial[i]);
      CHECK(cp[i] == cs[i]);
    }
  }
}

}  // namespace unit_linear
