// The vectorised fast paths of the calibration loop compute bitwise what
// their plain forms compute (the calibration's results must not change when
// a faster path is taken), and the loss equals the plain double sum to
// rounding.

#include <rimc/adapt/feature_kd.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

using namespace rimc;

TEST_SUITE("fast paths") {
  TEST_CASE("feature MSE: the gradient is 2 (y - t) / n exactly, the loss the double sum to rounding, any thread count") {
    for (const std::int64_t n : {1, 7, 8, 9, 4095, 4096, 4097, 40000, 125440}) {
      CAPTURE(n);
      const Tensor y = test::random_tensor(Shape{n}, 1), t = test::random_tensor(Shape{n}, 2, layout::nchw, -2, 3);
      double plain = 0;
      for (std::int64_t i = 0; i < n; ++i) {
        const double d = double(y[i]) - double(t[i]);
        plain += d * d;
      }
      plain /= static_cast<double>(n);
      Tensor g;
      double loss = 0;
      {
        const thread_count_guard one(1);
        loss = detail::mse(y, t, &g);
      }
      CHECK(loss == doctest::Approx(plain).epsilon(1e-13));
      for (std::int64_t i = 0; i < n; ++i) {
        const double d = double(y[i]) - double(t[i]);
        if (g[i] != static_cast<float>(2.0 * d / static_cast<double>(n))) FAIL("gradient element ", i, " differs");
      }
      Tensor g2;
      const thread_count_guard two(2);
      CHECK(detail::mse(y, t, &g2) == loss);  // bitwise, whatever the thread count
      CHECK(std::memcmp(g.data(), g2.data(), static_cast<std::size_t>(n) * sizeof(float)) == 0);
      CHECK(detail::mse(y, t, nullptr) == loss);
    }
  }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  TEST_CASE("feature MSE: the AVX-512 block equals the scalar block bitwise") {
    if (!detail::has_avx512f()) return;
    const std::int64_t n = 4096 + 13;
    const Tensor y = test::random_tensor(Shape{n}, 3), t = test::random_tensor(Shape{n}, 4);
    for (const std::int64_t len : {1, 5, 8, 13, 64, 4096, 4109}) {
      CAPTURE(len);
      std::vector<float> ga(static_cast<std::size_t>(n), -1.0f), gb(static_cast<std::size_t>(n), -1.0f);
      const double a = detail::mse_block_scalar(y.data(), t.data(), ga.data(), 0, len, 12345.0);
      const double b = detail::mse_block_avx512(y.data(), t.data(), gb.data(), 0, len, 12345.0);
      CHECK(a == b);
      CHECK(ga == gb);  // including the untouched elements past the block
    }
  }
#endif
}
