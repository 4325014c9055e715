// Tests of rimc::thin_conv2d (direct convolution for few output channels)
// against the reference forward, weight gradient and data gradient.

#include <rimc/core/parallel.hpp>
#include <rimc/kernels/reference.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_thin_conv2d {

using namespace rimc;

TEST_SUITE("thin_conv2d") {
  TEST_CASE("forward, weight and input gradients match the reference") {
    struct c {
      const char* name;
      Shape x, w;
      conv2d_params p;
    };
    conv2d_params s2, dil, asym, pad2;
    s2.stride = {2, 2};
    s2.padding = {1, 1};
    dil.dilation = {2, 2};
    dil.padding = {2, 2};
    asym.stride = {2, 1};
    asym.padding = {0, 2};
    asym.dilation = {1, 2};
    pad2.padding = {2, 2};
    pad2.stride = {3, 3};
    const std::vector<c> cases = {
        {"r 2, 3x3 stride 2 padding 1, odd size", Shape{3, 5, 9, 7}, Shape{2, 5, 3, 3}, s2},
        {"r 1, 1x1", Shape{2, 8, 4, 6}, Shape{1, 8, 1, 1}, {}},
        {"r 4, dilation 2", Shape{2, 3, 11, 10}, Shape{4, 3, 3, 3}, dil},
        {"r 3, asymmetric geometry", Shape{1, 4, 9, 11}, Shape{3, 4, 3, 2}, asym},
        {"r 8, 5x5 stride 3 padding 2", Shape{7, 2, 13, 12}, Shape{8, 2, 5, 5}, pad2},
        {"r 2, 32 channels (two full blocks)", Shape{2, 32, 6, 5}, Shape{2, 32, 3, 3}, s2},
        {"r 5, 37 channels (two blocks and a tail of 5)", Shape{2, 37, 5, 6}, Shape{5, 37, 3, 3}, dil},
        {"r 4, 20 channels, 1x1 stride 2", Shape{3, 20, 7, 7}, Shape{4, 20, 1, 1}, pad2},
    };
    for (const auto& k : cases) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(k.name) + ", " + std::string(to_string(l))).c_str()) {
          const Tensor w = test::random_tensor(k.w, 1), x = test::random_tensor(k.x, 2, l);
          const thin_conv2d conv(w, k.p);
          Tensor u;
          conv.forward(x, u);
          test::check_close(u, reference::conv2d(x, w, nullptr, k.p), 1e-5, 1e-5);
          Tensor u_shift_add;  // the inference form
          conv.forward_shift_add(x, u_shift_add);
          test::check_close(u_shift_add, reference::conv2d(x, w, nullptr, k.p), 1e-5, 1e-5);
          const Tensor du = test::random_tensor(u.shape(), 3, l);
          Tensor dw, dx;
          conv.backward(x, du, dw, &dx);
          test::check_close(dw, reference::conv2d_backward_weights(x, du, k.w, k.p), 1e-4, 1e-4);
          test::check_close(dx, reference::conv2d_backward_data(du, w, k.p, k.x), 1e-5, 1e-5);
          Tensor dw_shift_add, dx_shift_add;  // the shift-add form of the backward
          conv.backward_shift_add(x, du, dw_shift_add, &dx_shift_add);
          test::check_close(dw_shift_add, reference::conv2d_backward_weights(x, du, k.w, k.p), 1e-4, 1e-4);
          CHECK(dx_shift_add == dx);  // one input-gradient path
        }
      }
    }
  }

  TEST_CASE("forward and weight gradient are bitwise the same at every thread count") {
    conv2d_params p;
    p.padding = {1, 1};
    const thin_conv2d conv(test::random_tensor(Shape{2, 16, 3, 3}, 1), p);
    const Tensor x = test::random_tensor(Shape{6, 16, 10, 10}, 2, layout::nhwc);
    Tensor u1, u2, dw1, dw2;
    {
      const thread_count_guard g(1);
      conv.forward(x, u1);
      conv.backward(x, u1, dw1);
    }
    {
      const thread_count_guard g(2);
      conv.forward(x, u2);
      conv.backward(x, u1, dw2);
    }
    CHECK(u1 == u2);    // no reduction across threads in the forward
    CHECK(dw1 == dw2);  // the weight gradient's blocks are fixed and added in order
    Tensor dw3;
    {
      const thread_count_guard g(2);
      conv.backward(x, u1, dw3);
    }
    CHECK(dw3 == dw2);
  }

  TEST_CASE("grouped weights and mismatched gradients are rejected") {
    conv2d_params g2;
    g2.groups = 2;
    CHECK_THROWS_WITH(thin_conv2d(Tensor(Shape{2, 4, 3, 3}), g2), "[rimc.value_error] thin_conv2d: groups must be 1, got 2");
    const thin_conv2d conv(Tensor(Shape{2, 4, 3, 3}), conv2d_params{});
    Tensor dw;
    CHECK_THROWS_WITH(conv.backward(Tensor(Shape{1, 4, 5, 5}), Tensor(Shape{1, 2, 2, 2}), dw),
                      "[rimc.shape_error] thin_conv2d::backward: diff_u: shapes differ: [1, 2, 2, 2] vs [1, 2, 3, 3]");
  }
}

}  // namespace unit_thin_conv2d
