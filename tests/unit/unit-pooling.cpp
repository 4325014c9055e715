// Tests of rimc::pool2d and global average pooling (oneDNN) against the
// reference, and of the reference backward against finite differences.

#include <rimc/kernels/pooling.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_pooling {

using namespace rimc;

namespace {
struct pool_case {
  const char* name;
  Shape src;
  pool2d_params p;
};

std::vector<pool_case> pool_cases() {
  return {
      {"max 2x2 stride 2", Shape{2, 3, 8, 8}, {pool_kind::max, {2, 2}, {2, 2}, {0, 0}, true}},
      {"max 3x3 stride 2 pad 1, odd size, batch 7 (ResNet stem)", Shape{7, 4, 11, 9},
       {pool_kind::max, {3, 3}, {2, 2}, {1, 1}, true}},
      {"avg 3x3 stride 1 pad 1 including padding", Shape{1, 5, 7, 7}, {pool_kind::avg, {3, 3}, {1, 1}, {1, 1}, true}},
      {"avg 3x3 stride 2 pad 1 excluding padding", Shape{7, 2, 9, 10},
       {pool_kind::avg, {3, 3}, {2, 2}, {1, 1}, false}},
      {"avg 2x3 stride (1, 2)", Shape{2, 3, 6, 9}, {pool_kind::avg, {2, 3}, {1, 2}, {0, 0}, true}},
  };
}
}  // namespace

TEST_SUITE("pooling") {
  TEST_CASE("oneDNN pooling matches the reference forward and backward") {
    for (const auto& c : pool_cases()) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(c.name) + ", " + std::string(to_string(l))).c_str()) {
          const pool2d pool(c.p);
          const Tensor x = test::random_tensor(c.src, 1, l);
          const Tensor y = pool.forward(x);
          CHECK(y.memory_layout() == l);
          test::check_close(y, reference::pool2d(x, c.p));
          const Tensor dy = test::random_tensor(y.shape(), 2);
          const Tensor dx = pool.backward_data(dy, x);
          CHECK(dx.memory_layout() == l);
          const Tensor xr = x.to_layout(layout::nchw), dyr = dy.to_layout(layout::nchw);
          Tensor expected(c.src);
          reference::pool2d_backward_data(dyr.data(), xr.data(), c.src, c.p, expected.data());
          test::check_close(dx, expected);
        }
      }
    }
  }

  TEST_CASE("the reference pooling backward is the gradient of its forward (double, central differences)") {
    for (const auto& c : pool_cases()) {
      SUBCASE(c.name) {
        const Shape out = pool2d_output_shape(c.src, c.p);
        auto f = [&](const std::vector<double>& x) {
          std::vector<double> y(static_cast<std::size_t>(out.numel()));
          reference::pool2d_forward(x.data(), c.src, c.p, y.data());
          return y;
        };
        auto g = [&](const std::vector<double>& x, const std::vector<double>& dy) {
          std::vector<double> dx(x.size());
          reference::pool2d_backward_data(dy.data(), x.data(), c.src, c.p, dx.data());
          return dx;
        };
        // Random continuous inputs: no ties, and every window maximum is
        // separated from the runner-up by far more than the step.
        test::check_gradient(f, g, test::random_doubles(c.src.numel(), 3), 4, 200);
      }
    }
  }

  TEST_CASE("global average pooling matches the reference, forward and backward") {
    for (layout l : {layout::nchw, layout::nhwc}) {
      SUBCASE(std::string(to_string(l)).c_str()) {
        const Tensor x = test::random_tensor(Shape{7, 16, 5, 3}, 1, l);
        const Tensor y = global_avg_pool2d(x);
        CHECK(y.shape() == Shape{7, 16, 1, 1});
        test::check_close(y, reference::global_avg_pool2d(x));
        const Tensor dy = test::random_tensor(Shape{7, 16, 1, 1}, 2);
        Tensor dx;
        global_avg_pool2d_backward(dy, x.shape(), dx, l);
        CHECK(dx.memory_layout() == l);
        Tensor expected(x.shape());
        reference::global_avg_pool2d_backward_data(dy.data(), x.shape(), expected.data());
        test::check_close(dx, expected);
        CHECK(test::dot(dy, y) == doctest::Approx(test::dot(dx, x)).epsilon(1e-5));
      }
    }
  }

  TEST_CASE("bad pooling parameters are rejected with the values named") {
    CHECK_THROWS_WITH(pool2d(pool2d_params{pool_kind::max, {0, 2}}),
                      "[rimc.value_error] pool2d: kernel must be >= 1, got (0, 2)");
    CHECK_THROWS_WITH(pool2d(pool2d_params{pool_kind::max, {2, 2}, {2, 2}, {2, 0}}),
                      "[rimc.value_error] pool2d: padding (2, 0) must be at most half the kernel (2, 2)");
    const pool2d pool(pool2d_params{pool_kind::avg, {3, 3}, {1, 1}});
    CHECK_THROWS_WITH((void)pool.forward(Tensor(Shape{1, 1, 2, 5})),
                      "[rimc.shape_error] pool2d: kernel (3, 3) does not fit src [1, 1, 2, 5] padded by (0, 0)");
    CHECK_THROWS_WITH((void)global_avg_pool2d(Tensor(Shape{3, 4})),
                      "[rimc.shape_error] global_avg_pool2d: src must be rank 4 (N, C, H, W), got [3, 4]");
  }

  TEST_CASE("one pool2d object run from several threads at once gives the serial results") {
    // oneDNN's channels-first pooling transposes through a scratchpad; with the
    // library's scratchpad, threads sharing one primitive overwrote each other's.
    const pool2d pool(pool2d_params{pool_kind::max, {3, 3}, {2, 2}, {1, 1}, true});
    std::vector<Tensor> x, serial(16), parallel(16), serial_dx(16), parallel_dx(16);
    for (std::uint64_t i = 0; i < 16; ++i) x.push_back(test::random_tensor(Shape{4, 16, 28, 28}, 50 + i));
    const Tensor dy = test::random_tensor(pool.output_shape(x[0].shape()), 3);
    {
      const thread_count_guard one(1);
      for (std::size_t i = 0; i < x.size(); ++i) {
        pool.forward(x[i], serial[i]);
        pool.backward_data(dy, x[i], serial_dx[i]);
      }
    }
    const thread_count_guard two(2);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < 16; ++i) {
      const thread_count_guard one(1);
      const auto k = static_cast<std::size_t>(i);
      pool.forward(x[k], parallel[k]);
      pool.backward_data(dy, x[k], parallel_dx[k]);
    }
    for (std::size_t i = 0; i < x.size(); ++i) {
      CHECK(parallel[i] == serial[i]);
      CHECK(parallel_dx[i] == serial_dx[i]);
    }
  }
}

}  // namespace unit_pooling
