// Tests of rimc's element-wise kernels (oneDNN) against the reference, and of
// the reference ReLU backward against finite differences.

#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_eltwise {

using namespace rimc;

TEST_SUITE("eltwise") {
  TEST_CASE("relu matches the reference, in place and not, in both layouts and on matrices") {
    for (const Shape& s : {Shape{7, 5, 3, 3}, Shape{1, 16, 8, 8}, Shape{9, 10}}) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        if (l == layout::nhwc && s.rank() != 4) continue;
        SUBCASE((s.to_string() + " " + std::string(to_string(l))).c_str()) {
          Tensor x = test::random_tensor(s, 1, l);
          Tensor expected(s);
          const Tensor xr = x.to_layout(layout::nchw);
          reference::relu_forward(xr.data(), xr.numel(), expected.data());
          test::check_close(relu(x), expected, 0, 0);
          const Tensor dy = test::random_tensor(s, 2);
          Tensor expected_dx(s);
          const Tensor dyr = dy.to_layout(layout::nchw);
          reference::relu_backward(dyr.data(), xr.data(), xr.numel(), expected_dx.data());
          test::check_close(relu_backward(dy, x), expected_dx, 0, 0);
          Tensor dy_inplace = dy.to_layout(l);
          relu_backward(dy_inplace, x, dy_inplace);
          test::check_close(dy_inplace, expected_dx, 0, 0);
          relu(x, x);
          test::check_close(x, expected, 0, 0);
        }
      }
    }
  }

  TEST_CASE("the reference relu backward is the gradient of its forward (double, central differences)") {
    constexpr std::int64_t n = 300;
    auto f = [](const std::vector<double>& x) {
      std::vector<double> y(x.size());
      reference::relu_forward(x.data(), n, y.data());
      return y;
    };
    auto g = [](const std::vector<double>& x, const std::vector<double>& dy) {
      std::vector<double> dx(x.size());
      reference::relu_backward(dy.data(), x.data(), n, dx.data());
      return dx;
    };
    test::check_gradient(f, g, test::random_doubles(n, 1), 2);
  }

  TEST_CASE("add matches the reference for equal and mixed layouts, with and without relu") {
    const Shape s{7, 6, 5, 3};
    for (layout la : {layout::nchw, layout::nhwc}) {
      for (layout lb : {layout::nchw, layout::nhwc}) {
        for (bool r : {false, true}) {
          SUBCASE((std::string(to_string(la)) + " + " + std::string(to_string(lb)) + (r ? " relu" : "")).c_str()) {
            Tensor a = test::random_tensor(s, 1, la);
            const Tensor b = test::random_tensor(s, 2, lb);
            const Tensor ar = a.to_layout(layout::nchw), br = b.to_layout(layout::nchw);
            Tensor expected(s);
            reference::add_forward(ar.data(), br.data(), ar.numel(), expected.data());
            if (r) reference::relu_forward(expected.data(), expected.numel(), expected.data());
            const Tensor c = add(a, b, r);
            CHECK(c.memory_layout() == la);
            test::check_close(c, expected, 1e-6, 1e-6);
            add(a, b, a, r);
            test::check_close(a, expected, 1e-6, 1e-6);
          }
        }
      }
    }
    CHECK_THROWS_WITH((void)add(Tensor(Shape{2, 3}), Tensor(Shape{3, 2})),
                      "[rimc.shape_error] add: shapes differ: [2, 3] vs [3, 2]");
  }
}

}  // namespace unit_eltwise
