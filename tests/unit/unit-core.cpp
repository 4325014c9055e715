// Tests of rimc/core: errors, shapes, the tensor, the counter-based RNG and thread control.

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/version.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_core {

using namespace rimc;

TEST_SUITE("core") {
  TEST_CASE("the header version matches the CMake project version") {
    CHECK(std::string(version_string) == RIMC_EXPECTED_VERSION);
    CHECK(std::to_string(RIMC_VERSION_MAJOR) + "." + std::to_string(RIMC_VERSION_MINOR) + "." +
              std::to_string(RIMC_VERSION_PATCH) ==
          RIMC_EXPECTED_VERSION);
  }

  TEST_CASE("errors carry their kind in the message prefix and derive from rimc::error") {
    const shape_error e("conv2d: bad");
    CHECK(std::string(e.what()) == "[rimc.shape_error] conv2d: bad");
    CHECK(e.kind() == "shape_error");
    CHECK_THROWS_AS(throw value_error("x"), rimc::error);
    CHECK_THROWS_AS(throw io_error("x"), rimc::error);
    CHECK_THROWS_AS(throw backend_error("x"), std::runtime_error);
  }

  TEST_CASE("a shape knows its rank, element count and text form") {
    const Shape s{2, 3, 4, 5};
    CHECK(s.rank() == 4);
    CHECK(s.numel() == 120);
    CHECK(s.to_string() == "[2, 3, 4, 5]");
    CHECK(Shape{}.numel() == 1);
    CHECK(Shape{3, 0}.numel() == 0);
    CHECK(Shape{2, 3} == Shape{2, 3});
    CHECK_FALSE(Shape{2, 3} == Shape{3, 2});
    CHECK_THROWS_WITH(Shape({1, 2, 3, 4, 5}), "[rimc.shape_error] Shape: rank 5 exceeds the maximum rank 4");
    CHECK_THROWS_WITH(Shape({2, -1}), "[rimc.shape_error] Shape: dimension 1 is negative (-1)");
    const auto big = std::numeric_limits<std::int64_t>::max() / 2;
    CHECK_THROWS_WITH(Shape({big, 4}), "[rimc.shape_error] Shape: element count overflows int64 at dimension 1");
    // Empty, but its other dimensions' partial products would still overflow.
    CHECK_THROWS_WITH(Shape({big, 0, 4}), "[rimc.shape_error] Shape: element count overflows int64 at dimension 2");
    CHECK(Shape({big, 0, 1}).numel() == 0);
    CHECK_THROWS_WITH((void)s.at(4), "[rimc.shape_error] Shape::at: index 4 out of range for shape [2, 3, 4, 5]");
  }

  TEST_CASE("a new tensor is zero-filled and 64-byte aligned") {
    const Tensor t(Shape{3, 5, 7, 9});
    CHECK(t.numel() == 945);
    CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % 64 == 0);
    for (float v : t.values()) REQUIRE(v == 0.0f);
    CHECK(Tensor().numel() == 0);
    CHECK(Tensor().empty());
  }

  TEST_CASE("tensor elements are addressed logically in both layouts") {
    const Tensor a = test::random_tensor(Shape{2, 3, 4, 5}, 11);
    const Tensor b = a.to_layout(layout::nhwc);
    CHECK(b.memory_layout() == layout::nhwc);
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t c = 0; c < 3; ++c)
        for (std::int64_t h = 0; h < 4; ++h)
          for (std::int64_t w = 0; w < 5; ++w) REQUIRE(a.at(n, c, h, w) == b.at(n, c, h, w));
    CHECK(b.offset(0, 1, 0, 0) == 1);
    CHECK(a.offset(0, 1, 0, 0) == 20);
    CHECK(b.to_layout(layout::nchw) == a);
    CHECK(a == b);
    CHECK_THROWS_WITH(Tensor(Shape{2, 3}, layout::nhwc),
                      "[rimc.shape_error] Tensor: layout nhwc needs a rank-4 shape, got [2, 3]");
  }

  TEST_CASE("Tensor::from checks the value count") {
    const Tensor t = Tensor::from(Shape{2, 2}, {1, 2, 3, 4});
    CHECK(t.matrix()(1, 0) == 3.0f);
    CHECK_THROWS_WITH(Tensor::from(Shape{2, 2}, {1, 2, 3}),
                      "[rimc.shape_error] Tensor::from: 3 values given for shape [2, 2] (4 elements)");
  }

  TEST_CASE("copies are deep and moves leave an empty tensor") {
    Tensor a = Tensor::from(Shape{3}, {1, 2, 3});
    Tensor b = a;
    b[0] = 9;
    CHECK(a[0] == 1.0f);
    Tensor c = std::move(a);
    CHECK(c[2] == 3.0f);
    CHECK(a.numel() == 0);  // NOLINT(bugprone-use-after-move): moved-from state is specified
    a = c;
    CHECK(a[1] == 2.0f);
    // Copies of a default-constructed tensor are empty too.
    const Tensor none;
    const Tensor copy = none;
    CHECK(copy.empty());
    a = none;
    CHECK(a.empty());
    std::vector<Tensor> many(3, Tensor());
    CHECK(many[2].empty());
  }

  TEST_CASE("matrix views map the storage without copying") {
    Tensor t(Shape{2, 3, 1, 2});
    auto m = t.matrix(2, 6);
    m(1, 5) = 4.0f;
    CHECK(t[11] == 4.0f);
    CHECK(t.vector().sum() == 4.0f);
    CHECK_THROWS_WITH((void)t.matrix(), "[rimc.shape_error] Tensor::matrix: rank-2 tensor expected, got [2, 3, 1, 2]");
    CHECK_THROWS_WITH((void)t.matrix(5, 2), "[rimc.shape_error] Tensor::matrix: cannot view [2, 3, 1, 2] as [5, 2]");
  }

  TEST_CASE("ensure reuses a large-enough allocation and reshape keeps the data") {
    Tensor t(Shape{4, 8});
    const float* before = t.data();
    t.ensure(Shape{2, 2, 2, 2}, layout::nhwc);
    CHECK(t.data() == before);
    CHECK(t.memory_layout() == layout::nhwc);
    t.ensure(Shape{100});
    CHECK(t.numel() == 100);
    Tensor r = Tensor::from(Shape{2, 3}, {1, 2, 3, 4, 5, 6});
    r.reshape(Shape{3, 2});
    CHECK(r.matrix()(2, 1) == 6.0f);
    CHECK_THROWS_WITH(r.reshape(Shape{4, 2}),
                      "[rimc.shape_error] Tensor::reshape: cannot view [3, 2] (6 elements) as [4, 2] (8 elements)");
    Tensor h(Shape{1, 2, 1, 1}, layout::nhwc);
    CHECK_THROWS_AS(h.reshape(Shape{2}), shape_error);
  }

  TEST_CASE("check_finite names the first non-finite element") {
    Tensor t(Shape{2, 2});
    CHECK_NOTHROW(check_finite("weights", t));
    t[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(check_finite("weights", t), "[rimc.value_error] weights: element 3 of tensor [2, 2] is nan");
    t[3] = 0.0f;
    t[1] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(check_finite("w", t), "[rimc.value_error] w: element 1 of tensor [2, 2] is inf");
  }
}

TEST_SUITE("random") {
  TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
    using A4 = std::array<std::uint32_t, 4>;
    using A2 = std::array<std::uint32_t, 2>;
    CHECK(philox4x32(A4{0, 0, 0, 0}, A2{0, 0}) == A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
    CHECK(philox4x32(A4{~0u, ~0u, ~0u, ~0u}, A2{~0u, ~0u}) == A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
    CHECK(philox4x32(A4{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, A2{0xa4093822, 0x299f31d0}) ==
          A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
    static_assert(philox4x32(A4{0, 0, 0, 0}, A2{0, 0})[0] == 0x6627e8d5, "usable at compile time");
  }

  TEST_CASE("a draw depends only on seed, stream and index") {
    const counter_rng a(42, 3), b(42, 3);
    // Reverse order, and repeated: the same values.
    for (std::uint64_t i = 100; i-- > 0;) REQUIRE(a.uniform(i) == b.uniform(i));
    CHECK(a.normal(7) == b.normal(7));
    CHECK(a.uniform(0) != counter_rng(43, 3).uniform(0));
    CHECK(a.uniform(0) != a.substream(4).uniform(0));
    CHECK(a.substream(4).seed() == 42);
    std::set<double> seen;
    for (std::uint64_t i = 0; i < 1000; ++i) seen.insert(a.uniform(i));
    CHECK(seen.size() == 1000);
  }

  TEST_CASE("uniform and normal draws have the right moments") {
    // Tolerances are 5 standard errors of each estimate for n draws.
    constexpr int n = 200000;
    const counter_rng rng(2024, 1);
    double su = 0, su2 = 0, sn = 0, sn2 = 0, sn4 = 0, umin = 1, umax = 0;
    for (int i = 0; i < n; ++i) {
      const double u = rng.uniform(static_cast<std::uint64_t>(i));
      const double z = rng.normal(static_cast<std::uint64_t>(i));
      su += u;
      su2 += u * u;
      sn += z;
      sn2 += z * z;
      sn4 += z * z * z * z;
      umin = std::min(umin, u);
      umax = std::max(umax, u);
    }
    const double se = 1.0 / std::sqrt(double(n));
    CHECK(umin >= 0.0);
    CHECK(umax < 1.0);
    CHECK(std::abs(su / n - 0.5) < 5 * std::sqrt(1.0 / 12) * se);
    CHECK(std::abs(su2 / n - 1.0 / 3) < 5 * std::sqrt(4.0 / 45) * se);
    CHECK(std::abs(sn / n) < 5 * se);
    CHECK(std::abs(sn2 / n - 1.0) < 5 * std::sqrt(2.0) * se);
    CHECK(std::abs(sn4 / n - 3.0) < 5 * std::sqrt(96.0) * se);
  }

  TEST_CASE("fill_uniform and fill_normal fill in storage order") {
    Tensor t(Shape{1000});
    fill_uniform(t, counter_rng(5), -2.0f, 3.0f);
    CHECK(t.vector().minCoeff() >= -2.0f);
    CHECK(t.vector().maxCoeff() < 3.0f);
    CHECK(t[17] == static_cast<float>(counter_rng(5).uniform(17, -2.0, 3.0)));
    fill_normal(t, counter_rng(5), 1.0f, 0.5f);
    CHECK(t[3] == static_cast<float>(1.0 + 0.5 * counter_rng(5).normal(3)));
  }
}

TEST_SUITE("parallel") {
  TEST_CASE("the thread count is settable and a guard restores it") {
    const int before = num_threads();
    {
      const thread_count_guard g(1);
      CHECK(num_threads() == 1);
    }
    CHECK(num_threads() == before);
    const std::string range = detail::concat("[rimc.value_error] set_num_threads: n must be in [1, ", max_threads(),
                                             "] (4 x the ", omp_get_num_procs(), " processors), got ");
    CHECK_THROWS_WITH(set_num_threads(0), (range + "0").c_str());
    CHECK_THROWS_WITH(set_num_threads(100000), (range + "100000").c_str());  // OpenMP would crash on it
    CHECK(max_threads() == 4 * omp_get_num_procs());
  }
}

}  // namespace unit_core
