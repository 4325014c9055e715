// Tests of the adapter optimizers against hand-computed updates.

#include <rimc/adapt/optim.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_optim {

using namespace rimc;

namespace {
/// L = sum p^2 / 2 over two parameters; gradient = p.
void quadratic_grad(const Tensor& p, Tensor& g) { g = p; }
}  // namespace

TEST_SUITE("optim") {
  TEST_CASE("SGD with momentum follows PyTorch's update rule") {
    Tensor p = Tensor::from(Shape{1}, {1.0f}), g(Shape{1});
    sgd opt(0.1, 0.9);
    const param_slot slot{&p, &g};
    g[0] = 2.0f;  // L = p^2
    opt.step({&slot, 1});
    CHECK(p[0] == doctest::Approx(0.8));  // buf = 2
    g[0] = 2.0f * p[0];
    opt.step({&slot, 1});
    CHECK(p[0] == doctest::Approx(0.8 - 0.1 * (0.9 * 2 + 1.6)));  // buf = 3.4
    opt.reset();
    g[0] = 1.0f;
    const float before = p[0];
    opt.step({&slot, 1});
    CHECK(p[0] == doctest::Approx(before - 0.1));  // fresh buffer
  }

  TEST_CASE("Adam and AdamW match the hand-computed bias-corrected updates") {
    for (double wd : {0.0, 0.1}) {
      SUBCASE(wd > 0 ? "AdamW" : "Adam") {
        const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
        Tensor p = Tensor::from(Shape{2}, {1.0f, -0.5f}), g(Shape{2});
        adam opt(lr, b1, b2, eps, wd);
        const param_slot slot{&p, &g};
        double q[2] = {1.0, -0.5}, m[2] = {0, 0}, v[2] = {0, 0};
        for (int t = 1; t <= 5; ++t) {
          for (int i = 0; i < 2; ++i) g[i] = 2.0f * p[i];
          opt.step({&slot, 1});
          for (int i = 0; i < 2; ++i) {
            const double gi = 2.0 * q[i];
            q[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1 - b1) * gi;
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            q[i] -= lr * (m[i] / (1 - std::pow(b1, t))) / (std::sqrt(v[i] / (1 - std::pow(b2, t))) + eps);
            CHECK(p[i] == doctest::Approx(q[i]).epsilon(1e-5));
          }
        }
        CHECK(p[0] == doctest::Approx(wd > 0 ? q[0] : 1.0 - 0.1 * 5).epsilon(wd > 0 ? 1e-5 : 0.02));
        CHECK(opt.steps() == 5);
      }
    }
  }

  TEST_CASE("both optimizers decrease a quadratic loss") {
    for (int which = 0; which < 2; ++which) {
      SUBCASE(which == 0 ? "sgd" : "adam") {
        Tensor p = test::random_tensor(Shape{10}, 1), g;
        sgd s(0.1, 0.5);
        adam a(0.05);
        double last = p.vector().squaredNorm();
        const double first = last;
        for (int t = 0; t < 50; ++t) {
          quadratic_grad(p, g);
          const param_slot slot{&p, &g};
          which == 0 ? s.step({&slot, 1}) : a.step({&slot, 1});
          last = p.vector().squaredNorm();
        }
        CHECK(last < 0.05 * first);
      }
    }
  }

  TEST_CASE("invalid optimizer settings and mismatched slots are rejected") {
    CHECK_THROWS_WITH(sgd(-0.1), "[rimc.value_error] sgd: lr must be in (0, inf), got -0.1");
    CHECK_THROWS_WITH(sgd(0.1, 1.5), "[rimc.value_error] sgd: momentum must be in [0, 1), got 1.5");
    CHECK_THROWS_WITH(adam(0.1, 0.9, 1.0), "[rimc.value_error] adam: beta2 must be in [0, 1), got 1");
    CHECK_THROWS_WITH(adam(std::nan("")), "[rimc.value_error] adam: lr must be in (0, inf), got nan");
    Tensor p(Shape{2}), g(Shape{3});
    adam a(0.1);
    const param_slot slot{&p, &g};
    CHECK_THROWS_WITH(a.step({&slot, 1}),
                      "[rimc.shape_error] adam: gradient of parameter 0: shapes differ: [3] vs [2]");
    Tensor g2(Shape{2});
    const param_slot ok[2] = {{&p, &g2}, {&p, &g2}};
    a.step({ok, 2});
    CHECK_THROWS_WITH(a.step({ok, 1}),
                      "[rimc.value_error] adam: step called with 1 parameters after 2; call reset() when the "
                      "parameter set changes");
  }
}

}  // namespace unit_optim
