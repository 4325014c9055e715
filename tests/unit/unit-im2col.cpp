// Tests of rimc::im2col (parallel, either source layout) against the plain
// reference, and of im2col x flattened weights against the reference convolution.

#include <rimc/core/parallel.hpp>
#include <rimc/kernels/im2col.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_im2col {

using namespace rimc;

namespace {
struct im2col_case {
  const char* name;
  Shape src, weights;
  conv2d_params p;
};
std::vector<im2col_case> cases() {
  auto P = [](std::int64_t s0, std::int64_t s1, std::int64_t p0, std::int64_t p1, std::int64_t d) {
    conv2d_params p;
    p.stride = {s0, s1};
    p.padding = {p0, p1};
    p.dilation = {d, d};
    return p;
  };
  return {
      {"3x3 same padding", Shape{2, 5, 8, 8}, Shape{4, 5, 3, 3}, P(1, 1, 1, 1, 1)},
      {"3x3 stride 2, odd size", Shape{3, 4, 11, 9}, Shape{6, 4, 3, 3}, P(2, 2, 1, 1, 1)},
      {"1x1 stride 2", Shape{2, 16, 10, 10}, Shape{8, 16, 1, 1}, P(2, 2, 0, 0, 1)},
      {"7x7 stride 2 padding 3, three channels", Shape{1, 3, 17, 17}, Shape{8, 3, 7, 7}, P(2, 2, 3, 3, 1)},
      {"asymmetric stride and padding, dilation 2", Shape{2, 3, 12, 13}, Shape{5, 3, 3, 2}, P(2, 1, 0, 2, 2)},
  };
}
}  // namespace

TEST_SUITE("im2col") {
  TEST_CASE("im2col equals the reference for either source layout") {
    for (const auto& c : cases()) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(c.name) + ", src " + std::string(to_string(l))).c_str()) {
          const Tensor src = test::random_tensor(c.src, 1);
          const Shape out = conv2d_output_shape(c.src, c.weights, c.p);
          Tensor expected(Shape{out[0] * out[2] * out[3], c.src[1] * c.weights[2] * c.weights[3]});
          reference::im2col(src.data(), c.src, c.weights, c.p, expected.data());
          const Tensor got = im2col(src.to_layout(l), c.weights[2], c.weights[3], c.p);
          CHECK(got == expected);
        }
      }
    }
  }

  TEST_CASE("im2col times the flattened weights is the convolution in channels-last order") {
    for (const auto& c : cases()) {
      SUBCASE(c.name) {
        const Tensor src = test::random_tensor(c.src, 2);
        const Tensor w = test::random_tensor(c.weights, 3);
        const Tensor cols = im2col(src, c.weights[2], c.weights[3], c.p);
        const auto O = c.weights[0], K = w.numel() / O;
        Tensor y(Shape{cols.dim(0), O});
        y.matrix() = cols.matrix() * w.matrix(O, K).transpose();
        const Shape out = conv2d_output_shape(c.src, c.weights, c.p);
        Tensor nhwc = Tensor::empty(out, layout::nhwc);
        std::copy(y.data(), y.data() + y.numel(), nhwc.data());
        test::check_close(nhwc, reference::conv2d(src, w, nullptr, c.p), 1e-5, 1e-5);
      }
    }
  }

  TEST_CASE("im2col is identical for any thread count and rejects groups") {
    const Tensor src = test::random_tensor(Shape{4, 6, 9, 9}, 4, layout::nhwc);
    conv2d_params p;
    p.padding = {1, 1};
    Tensor a, b;
    {
      const thread_count_guard g(1);
      im2col(src, 3, 3, p, a);
    }
    {
      const thread_count_guard g(2);
      im2col(src, 3, 3, p, b);
    }
    CHECK(a == b);
    p.groups = 2;
    CHECK_THROWS_WITH_AS(im2col(src, 3, 3, p, a), "[rimc.value_error] im2col: groups must be 1, got 2", value_error);
  }
}

}  // namespace unit_im2col
