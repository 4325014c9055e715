// rimc's vector kernels give the same bits on every ISA tier (portable,
// AVX2 + FMA, AVX-512): each tier this CPU runs is forced in turn with
// isa_guard and compared with the portable form, on sizes that exercise every
// vector tail. The combination is also bitwise oneDNN's matmul with the
// adapter epilogue where oneDNN runs AVX-512 (its own kernels differ in
// rounding at lower ISAs), and within float rounding of it elsewhere.

#include <rimc/core/half.hpp>
#include <rimc/core/random.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/kernels/combine.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/mse.hpp>
#include <rimc/kernels/small_gemm.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_isa {

using namespace rimc;

namespace {

/// The tiers this process can run: up to the CPU's best and RIMC_MAX_ISA.
std::vector<isa_tier> runnable_tiers() {
  std::vector<isa_tier> out;
  const isa_tier top = detail::lower(detected_isa(), detail::environment_isa_cap());
  for (const isa_tier t : {isa_tier::scalar, isa_tier::avx2, isa_tier::avx512})
    if (t <= top) out.push_back(t);
  return out;
}

/// Runs `f()` under each runnable tier and checks the tier really was active.
template <class F>
void for_each_tier(F&& f) {
  const auto tiers = runnable_tiers();
  if (tiers.size() < 3) {
    std::string names;
    for (const auto t : tiers) names += std::string(to_string(t)) + " ";
    MESSAGE("this run compares the tiers " << names << "(CPU: " << to_string(detected_isa()) << ")");
  }
  for (const isa_tier t : tiers) {
    const isa_guard cap(t);
    REQUIRE(active_isa() == t);
    CAPTURE(to_string(t));
    f(t);
  }
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

TEST_SUITE("isa tiers") {
  TEST_CASE("tier names parse and a bad RIMC_MAX_ISA value is an error naming it") {
    CHECK(parse_isa_tier("avx512") == isa_tier::avx512);
    CHECK(parse_isa_tier("avx2") == isa_tier::avx2);
    CHECK(parse_isa_tier("scalar") == isa_tier::scalar);
    CHECK_THROWS_WITH_AS((void)parse_isa_tier("sse4", "RIMC_MAX_ISA"), "[rimc.value_error] RIMC_MAX_ISA must be avx512, avx2 or scalar, got 'sse4'",
                         value_error);
    CHECK(to_string(isa_tier::avx2) == "avx2");
  }

  TEST_CASE("the active tier never exceeds the CPU, RIMC_MAX_ISA or set_max_isa") {
    const char* env = std::getenv("RIMC_MAX_ISA");
    const isa_tier cap = env && *env ? parse_isa_tier(env) : isa_tier::avx512;
    CHECK(active_isa() <= detected_isa());
    CHECK(active_isa() <= cap);
    CHECK(active_isa() == detail::lower(detected_isa(), cap));
    {
      const isa_guard g(isa_tier::scalar);
      CHECK(active_isa() == isa_tier::scalar);
    }
    CHECK(active_isa() == detail::lower(detected_isa(), cap));
  }

  TEST_CASE("the combination gives the portable form's bits on every tier, with bias removal and ReLU") {
    for (const std::int64_t r : {1, 2, 3, 4, 16, 64})
      for (const std::int64_t O : {1, 7, 8, 10, 16, 17, 33, 64}) {
        CAPTURE(r);
        CAPTURE(O);
        const std::int64_t P = 37;
        const Tensor u = test::random_tensor(Shape{P, r}, 1), sbt = test::random_tensor(Shape{r, O}, 2),
                     z0 = test::random_tensor(Shape{P, O}, 3),
                     gamma = test::random_tensor(Shape{O}, 4, layout::nchw, 0.5f, 1.5f),
                     shift = test::random_tensor(Shape{O}, 5);
        for (const bool unbias : {false, true})
          for (const bool relu : {false, true}) {
            std::vector<float> want(static_cast<std::size_t>(P * O) + 9, -3.0f);
            detail::portable::combine_rows(u.data(), sbt.data(), z0.data(), unbias ? shift.data() : nullptr,
                                           gamma.data(), shift.data(), r, O, 0, P, want.data(), relu);
            for_each_tier([&](isa_tier) {
              std::vector<float> got(want.size(), -3.0f);  // the 9 past the end must stay untouched
              detail::combine_rows(u.data(), sbt.data(), z0.data(), unbias ? shift.data() : nullptr, gamma.data(),
                                   shift.data(), r, O, P, got.data(), relu);
              CHECK(same_bits(want, got));
            });
          }
      }
  }

  TEST_CASE("the combination is oneDNN's matmul with the adapter epilogue: bitwise on AVX-512, to rounding elsewhere") {
    const bool onednn_avx512 = static_cast<int>(dnnl::get_effective_cpu_isa()) >= static_cast<int>(dnnl::cpu_isa::avx512_core);
    for (const std::int64_t r : {1, 2, 4, 16, 64})
      for (const std::int64_t O : {10, 16, 33, 64}) {
        CAPTURE(r);
        CAPTURE(O);
        const std::int64_t P = 301;
        const Tensor u = test::random_tensor(Shape{P, r}, 1), sbt = test::random_tensor(Shape{r, O}, 2),
                     z0 = test::random_tensor(Shape{P, O}, 3),
                     gamma = test::random_tensor(Shape{O}, 4, layout::nchw, 0.5f, 1.5f),
                     shift = test::random_tensor(Shape{O}, 5);
        Tensor want(Shape{P, O}), got(Shape{P, O});
        detail::gemm({.M = P, .N = O, .K = r, .epilogue = true}, u.data(), sbt.data(), want.data(), z0.data(),
                     gamma.data(), shift.data());
        detail::combine_rows(u.data(), sbt.data(), z0.data(), nullptr, gamma.data(), shift.data(), r, O, P, got.data());
        if (onednn_avx512) {
          CHECK(std::memcmp(want.data(), got.data(), static_cast<std::size_t>(P * O) * sizeof(float)) == 0);
        } else {
          // Each of the r + 3 terms is at most about 1: rounding differs by a few float ulps of that.
          for (std::int64_t i = 0; i < P * O; ++i) REQUIRE(std::abs(got[i] - want[i]) <= 1e-6 * static_cast<double>(r + 3));
        }
        relu(want, want);  // with the ReLU in the same pass: oneDNN's ReLU of the result
        detail::combine_rows(u.data(), sbt.data(), z0.data(), nullptr, gamma.data(), shift.data(), r, O, P, got.data(),
                             true);
        for (std::int64_t i = 0; i < P * O; ++i) {
          if (onednn_avx512) {
            REQUIRE(got[i] == want[i]);
          } else {
            REQUIRE(std::abs(got[i] - want[i]) <= 1e-6 * static_cast<double>(r + 3));
          }
        }
        // With the bias still in the layer's output (DoRA takes it off first): oneDNN's matmul on
        // z0 = z - bias, that difference taken in float as the combination takes it.
        const Tensor bias = test::random_tensor(Shape{O}, 6);
        Tensor z(Shape{P, O}), z_unbiased(Shape{P, O});
        for (std::int64_t p = 0; p < P; ++p)
          for (std::int64_t o = 0; o < O; ++o) {
            z[p * O + o] = z0[p * O + o] + bias[o];
            z_unbiased[p * O + o] = z[p * O + o] - bias[o];
          }
        detail::gemm({.M = P, .N = O, .K = r, .epilogue = true}, u.data(), sbt.data(), want.data(), z_unbiased.data(),
                     gamma.data(), shift.data());
        detail::combine_rows(u.data(), sbt.data(), z.data(), bias.data(), gamma.data(), shift.data(), r, O, P,
                             got.data());
        for (std::int64_t i = 0; i < P * O; ++i) {
          if (onednn_avx512) {
            REQUIRE(got[i] == want[i]);
          } else {
            REQUIRE(std::abs(got[i] - want[i]) <= 1e-6 * static_cast<double>(r + 3));
          }
        }
      }
  }

  TEST_CASE("the feature MSE block gives the portable form's bits on every tier, tails included") {
    const std::int64_t n = 4096 + 13;
    const Tensor y = test::random_tensor(Shape{n}, 3), t = test::random_tensor(Shape{n}, 4);
    for (const std::int64_t len : {1, 3, 5, 8, 9, 13, 64, 4096, 4109}) {
      CAPTURE(len);
      std::vector<float> ga(static_cast<std::size_t>(n), -1.0f);
      const double a = detail::portable::mse_block(y.data(), t.data(), ga.data(), len, 12345.0);
      for_each_tier([&](isa_tier) {
        std::vector<float> gb(static_cast<std::size_t>(n), -1.0f);
        CHECK(detail::mse_block(y.data(), t.data(), gb.data(), len, 12345.0) == a);
        CHECK(same_bits(ga, gb));  // including the untouched elements past the block
        CHECK(detail::mse_block(y.data(), t.data(), nullptr, len, 12345.0) == a);
      });
    }
  }

  TEST_CASE("rows times matrix and double row dots give the portable form's bits on every tier") {
    for (const std::int64_t r : {1, 2, 3, 4, 5, 9})
      for (const std::int64_t K : {1, 7, 8, 16, 33})
        for (const std::int64_t N : {1, 7, 15, 16, 17, 64, 65, 130}) {
          CAPTURE(r);
          CAPTURE(K);
          CAPTURE(N);
          const std::int64_t lda = K + 3, ldb = N + 5, ldo = N + 2;
          const Tensor a = test::random_tensor(Shape{r, lda}, 1), b = test::random_tensor(Shape{K, ldb}, 2);
          std::vector<float> want(static_cast<std::size_t>(r * ldo), -7.0f);
          detail::portable::rows_times_matrix({a.data(), lda}, r, K, {b.data(), ldb}, 0, N, want.data(), ldo);
          // Double row dots of a [r, K] against b's first rows read as [min(K, 4), K].
          const std::int64_t n = std::min<std::int64_t>(K, 4);
          std::vector<double> dwant(static_cast<std::size_t>(r * n));
          detail::portable::row_dots_f64({a.data(), lda}, r, {b.data(), ldb}, n, K, dwant.data());
          for_each_tier([&](isa_tier) {
            std::vector<float> got(want.size(), -7.0f);
            detail::rows_times_matrix({a.data(), lda}, r, K, {b.data(), ldb}, N, got.data(), ldo);
            CHECK(same_bits(want, got));
            std::vector<double> dgot(dwant.size());
            detail::row_dots_f64({a.data(), lda}, r, {b.data(), ldb}, n, K, dgot.data());
            CHECK(same_bits(dwant, dgot));
          });
        }
  }

  TEST_CASE("the thin convolution's forward and weight gradient give the portable form's bits on every tier") {
    conv2d_params s2, s1, d2;
    s2.stride = {2, 2};
    s2.padding = {1, 1};
    s1.padding = {1, 1};  // ResNet-20's 3 x 3 layers (16-channel ones have their own AVX-512 and AVX2 weight gradients)
    d2.padding = {2, 1};
    d2.dilation = {2, 1};  // dilated, with padding that differs between the axes
    for (const auto& geometry : {s2, s1, d2})
    for (const std::int64_t C : {1, 3, 8, 16, 20, 33, 64})
      for (const std::int64_t r : {1, 2, 3, 4, 6}) {
        CAPTURE(C);
        CAPTURE(r);
        CAPTURE(geometry.stride[0]);
        CAPTURE(geometry.dilation[0]);
        const thin_conv2d conv(test::random_tensor(Shape{r, C, 3, 3}, 1), geometry);
        const Tensor x = test::random_tensor(Shape{3, C, 9, 8}, 2, layout::nhwc);
        Tensor u0, dw0;
        {
          const isa_guard cap(isa_tier::scalar);
          conv.forward(x, u0);
          conv.backward(x, u0, dw0);
        }
        for_each_tier([&](isa_tier) {
          Tensor u, dw;
          conv.forward(x, u);
          conv.backward(x, u0, dw);
          CHECK(u == u0);
          CHECK(dw == dw0);
        });
      }
  }

  TEST_CASE("DoRA's backward pass gives the portable form's bits on every tier, tails included") {
    for (const std::int64_t O : {1, 5, 8, 13, 16, 20, 33, 64})
      for (const std::int64_t r : {1, 2, 4}) {
        CAPTURE(O);
        CAPTURE(r);
        const std::int64_t P = 37;
        const Tensor g = test::random_tensor(Shape{P, O}, 1), z = test::random_tensor(Shape{P, O}, 2),
                     bias = test::random_tensor(Shape{O}, 3), u = test::random_tensor(Shape{P, r}, 4),
                     w = test::random_tensor(Shape{r, O}, 5);
        for (const bool with_bias : {false, true}) {
          const float* b = with_bias ? bias.data() : nullptr;
          std::vector<double> c0(static_cast<std::size_t>(O), 0.5);
          std::vector<float> t0(static_cast<std::size_t>(r * O), 0.25f), h0(static_cast<std::size_t>(P * r), -1.0f);
          detail::portable::dora_backward_rows(g.data(), z.data(), b, u.data(), w.data(), O, r, 3, P, c0.data(),
                                               t0.data(), h0.data());
          for_each_tier([&](isa_tier t) {
            std::vector<double> c1(static_cast<std::size_t>(O), 0.5);
            std::vector<float> t1(static_cast<std::size_t>(r * O), 0.25f), h1(static_cast<std::size_t>(P * r), -1.0f);
            detail::dora_backward_rows(g.data(), z.data(), b, u.data(), w.data(), O, r, 3, P, c1.data(), t1.data(),
                                       h1.data(), t);
            CHECK(same_bits(c0, c1));
            CHECK(same_bits(t0, t1));
            CHECK(same_bits(h0, h1));  // rows before p0 untouched
          });
        }
      }
  }

  TEST_CASE("Adam's update gives the portable form's bits on every tier") {
    for (const std::int64_t n : {1, 7, 8, 9, 17, 1000}) {
      CAPTURE(n);
      const Tensor g = test::random_tensor(Shape{n}, 3, layout::nchw, -1e-3f, 1e-3f);
      const Tensor p0 = test::random_tensor(Shape{n}, 4), m0 = test::random_tensor(Shape{n}, 5, layout::nchw, -1e-4f, 1e-4f),
                   v0 = test::random_tensor(Shape{n}, 6, layout::nchw, 0.0f, 1e-7f);
      const detail::adam_step_consts consts{0.9f, 0.999f, 1 - 0.9f, 1 - 0.999f, 1 - 0.9 * 0.9, 1 - 0.999 * 0.999, 1e-2, 1e-8};
      Tensor p1 = p0, m1 = m0, v1 = v0;
      for (int step = 0; step < 3; ++step) detail::portable::adam_update(p1.data(), g.data(), m1.data(), v1.data(), n, consts);
      for_each_tier([&](isa_tier) {
        Tensor p2 = p0, m2 = m0, v2 = v0;
        for (int step = 0; step < 3; ++step) detail::adam_update(p2.data(), g.data(), m2.data(), v2.data(), n, consts);
        CHECK(p1 == p2);
        CHECK(m1 == m2);
        CHECK(v1 == v2);
      });
    }
  }

  TEST_CASE("the normal generator gives the portable form's bits on every tier, at any offset and length") {
    for (const std::uint64_t first : {std::uint64_t{0}, std::uint64_t{3}, std::uint64_t{61}, std::uint64_t{1} << 40}) {
      for (const std::int64_t n : {1, 5, 63, 64, 65, 127, 128, 129, 1000, 20011}) {
        CAPTURE(first);
        CAPTURE(n);
        std::vector<float> ref(static_cast<std::size_t>(n));
        detail::portable::normal_fill(11, 12, first, n, ref.data());
        // Each value is normal_from_bits of word i % 4 of Philox block i / 4, as counter_rng numbers them.
        const counter_rng rng(11, 12);
        for (std::int64_t i = 0; i < n; i += 7) {
          const auto idx = first + static_cast<std::uint64_t>(i);
          CHECK(ref[static_cast<std::size_t>(i)] == detail::normal_from_bits(rng.bits(idx / 4)[idx % 4]));
        }
        for_each_tier([&](isa_tier t) {
          std::vector<float> got(static_cast<std::size_t>(n));
          detail::normal_fill(11, 12, first, n, got.data(), t);
          CHECK(same_bits(ref, got));
        });
        if (n == 20011) {  // long enough to reach the tail quantile (|z| > 2.93, w >= 5) dozens of times
          const auto tail = std::count_if(ref.begin(), ref.end(), [](float z) { return std::abs(z) > 2.94f; });
          CHECK(tail > 20);
        }
      }
    }
  }

  TEST_CASE("the crossbar periphery (DAC, read noise, ADC, epilogue) gives the portable form's bits on every tier") {
    for (const std::int64_t n : {1, 15, 16, 17, 100, 1031}) {
      CAPTURE(n);
      const auto c = test::random_tensor(Shape{n}, 21, layout::nchw, -2.0f, 2.0f);
      auto v = test::random_tensor(Shape{n}, 22, layout::nchw, -1e-3f, 4.0f);  // a few negative roundings
      v[0] = 0.0f;
      std::vector<float> z(static_cast<std::size_t>(n));
      detail::portable::normal_fill(3, 4, 0, n, z.data());
      std::vector<float> ref(static_cast<std::size_t>(n));
      detail::portable::add_read_noise(c.data(), v.data(), z.data(), n, ref.data());
      CHECK(std::isfinite(ref[0]));
      CHECK(ref[0] == doctest::Approx(c[0]));  // zero variance: no noise
      for_each_tier([&](isa_tier t) {
        std::vector<float> got(static_cast<std::size_t>(n));
        detail::add_read_noise(c.data(), v.data(), z.data(), n, got.data(), t);
        CHECK(same_bits(ref, got));
      });
    }
    for (const std::int64_t n : {1, 15, 16, 17, 100, 1031}) {
      CAPTURE(n);
      auto x = test::random_tensor(Shape{n}, 41, layout::nchw, -3.0f, 3.0f);  // beyond the range too
      x[0] = -0.0f;
      std::vector<float> ref(static_cast<std::size_t>(n)), ref_sq(static_cast<std::size_t>(n));
      detail::portable::dac_codes(x.data(), n, 0.5f, 127.0f, ref.data(), ref_sq.data());
      CHECK(ref[n - 1] == doctest::Approx(std::clamp(x[n - 1] * 0.5f, -1.0f, 1.0f)).epsilon(0.01 + 1.0 / 127));
      for (std::int64_t i = 0; i < n; ++i) CHECK(ref_sq[i] == ref[i] * ref[i]);
      for_each_tier([&](isa_tier t) {
        std::vector<float> got(static_cast<std::size_t>(n)), got_sq(static_cast<std::size_t>(n), -1.0f);
        detail::dac_codes(x.data(), n, 0.5f, 127.0f, got.data(), got_sq.data(), t);
        CHECK(same_bits(ref, got));
        CHECK(same_bits(ref_sq, got_sq));
        std::vector<float> only(static_cast<std::size_t>(n));
        detail::dac_codes(x.data(), n, 0.5f, 127.0f, only.data(), nullptr, t);
        CHECK(same_bits(ref, only));
        std::vector<float> in_place(x.data(), x.data() + n), in_place_sq(static_cast<std::size_t>(n));
        detail::dac_codes(in_place.data(), n, 0.5f, 127.0f, in_place.data(), in_place_sq.data(), t);
        CHECK(same_bits(ref, in_place));
        CHECK(same_bits(ref_sq, in_place_sq));
      });
    }
    // C <= 16, 32 and 64 with one input scale take the register-resident form on AVX-512 (40: an
    // empty fourth chunk); 65 and a per-row scale the general one
    for (const std::int64_t C : {1, 7, 16, 20, 32, 33, 40, 64, 65}) {
      const std::int64_t M = 5, ldy = C + 3;
      const auto cur = test::random_tensor(Shape{M * C}, 31, layout::nchw, -1.5f, 1.5f);
      const auto f = test::random_tensor(Shape{C}, 32, layout::nchw, 0.1f, 2.0f);
      const auto to = test::random_tensor(Shape{C}, 33, layout::nchw, 50.0f, 200.0f);
      const auto lsb = test::random_tensor(Shape{C}, 34, layout::nchw, 0.001f, 0.02f);
      const auto gain = test::random_tensor(Shape{C}, 35, layout::nchw, 0.5f, 1.5f);
      const auto bias = test::random_tensor(Shape{C}, 36, layout::nchw, -0.5f, 0.5f);
      const auto y0 = test::random_tensor(Shape{M * ldy}, 37, layout::nchw, -1.0f, 1.0f);
      const std::vector<float> xscale = {0.5f, 1.0f, 2.0f, 0.25f, 3.0f};
      for (int mode = 0; mode < 3; ++mode)      // per-column ADC, per-tile ADC, none
        for (int tail = 0; tail < 4; ++tail) {  // no epilogue, gain, gain + bias, gain + bias + ReLU
          CAPTURE(C);
          CAPTURE(mode);
          CAPTURE(tail);
          detail::adc_readout a;
          a.factor = f.data();
          if (mode < 2) a.steps = 127.0f;
          if (mode == 0) {
            a.to_steps = to.data();
            a.lsb = lsb.data();
          } else {
            a.to_all = 90.0f;
            a.lsb_all = 0.01f;
          }
          if (tail > 0) a.gain = gain.data();
          if (tail > 1) a.bias = bias.data();
          a.relu = tail > 2;
          for (int variant = 0; variant < 4; ++variant) {
            const bool overwrite = variant % 2 == 1;
            const float* xs = variant < 2 ? nullptr : xscale.data();
            CAPTURE(variant);
            std::vector<float> ref(y0.data(), y0.data() + M * ldy);
            detail::portable::adc_rows(a, cur.data(), M, C, xs, 0.75f, 2.0f, ref.data(), ldy, overwrite);
            for_each_tier([&](isa_tier t) {
              std::vector<float> got(y0.data(), y0.data() + M * ldy);
              detail::adc_rows(a, cur.data(), M, C, xs, 0.75f, 2.0f, got.data(), ldy, overwrite, t);
              CHECK(same_bits(ref, got));
            });
            // the columns past C in each row are untouched
            for (std::int64_t m = 0; m < M; ++m)
              for (std::int64_t j = C; j < ldy; ++j) CHECK(ref[m * ldy + j] == y0[m * ldy + j]);
          }
        }
    }
  }

  TEST_CASE("every normal the generator gives lies within normal_bound, and the approximate quantile (AVX2 and AVX-512) within approx_normal_error of it") {
    // All 2^23 inputs of the quantile (the top 23 bits of a word).
    std::vector<std::uint32_t> bits(std::size_t{1} << 23);
    std::vector<float> exact(bits.size());
    float largest = 0;
    for (std::uint32_t k = 0; k < (1u << 23); ++k) {
      bits[k] = k << 9 | (k * 2654435761u >> 23);  // the low 9 bits play no part
      exact[k] = detail::normal_from_bits(bits[k]);
      largest = std::max(largest, std::abs(exact[k]));
    }
    CHECK(largest == exact.back());
    CHECK(largest == -exact.front());
    CHECK(largest > 5.29f);
    CHECK(largest <= detail::normal_bound);
    if (detected_isa() < isa_tier::avx2) {
      MESSAGE("the approximate quantile needs AVX2 or AVX-512; this CPU has neither");
      return;
    }
    // AVX2: octaves 0-15 of the tail probability, NaN beyond (the 64 smallest and largest k)
    std::vector<float> approx2(bits.size());
    detail::avx2::approx_normals(bits.data(), static_cast<std::int64_t>(bits.size()), approx2.data());
    double worst2 = 0;
    std::size_t far = 0;
    for (std::size_t k = 0; k < bits.size(); ++k) {
      const bool tail = k < 64 || k >= bits.size() - 64;
      far += std::isnan(approx2[k]) ? 1 : 0;
      if (tail) {
        CHECK(std::isnan(approx2[k]));
      } else {
        worst2 = std::max(worst2, std::abs(static_cast<double>(approx2[k]) - exact[k]));
      }
    }
    CHECK(far == 128);
    CHECK(worst2 > 1e-6);
    CHECK(worst2 <= detail::approx_normal_error);
    if (detected_isa() < isa_tier::avx512) {
      MESSAGE("AVX-512's approximate quantile not checked: this CPU lacks it");
      return;
    }
    std::vector<float> approx(bits.size());
    detail::avx512::approx_normals(bits.data(), static_cast<std::int64_t>(bits.size()), approx.data());
    double worst = 0;
    std::size_t differ = 0;
    for (std::size_t k = 0; k < bits.size(); ++k) {
      worst = std::max(worst, std::abs(static_cast<double>(approx[k]) - exact[k]));
      if (!std::isnan(approx2[k]) && std::memcmp(&approx[k], &approx2[k], sizeof(float)) != 0) ++differ;
    }
    CHECK(worst > 1e-6);  // an approximation (3.6e-5 where written)
    CHECK(worst <= detail::approx_normal_error);
    CHECK(differ == 0);  // the same operations on both tiers
  }

  TEST_CASE("normals_at gives normal_fill's value at scattered indices on every tier") {
    const std::uint64_t first = (std::uint64_t{1} << 33) + 3;  // blocks beyond 32 bits, not a multiple of 4
    constexpr std::int64_t span = 20011;
    std::vector<float> all(span);
    detail::portable::normal_fill(5, 6, first, span, all.data());
    std::vector<std::uint32_t> offsets;
    for (std::uint32_t i = 0; i < span; i += 1 + i % 5) offsets.push_back(i);
    for (std::uint32_t i = 0; i < span; ++i)
      if (std::abs(all[i]) > 2.94f) offsets.push_back(i);  // the tail quantile too
    offsets.push_back(0);                                 // repeats and any order
    const auto n = static_cast<std::int64_t>(offsets.size());
    for_each_tier([&](isa_tier t) {
      for (const std::int64_t len : {std::int64_t{1}, std::int64_t{15}, std::int64_t{17}, n}) {
        std::vector<float> got(static_cast<std::size_t>(len), -1.0f);
        detail::normals_at(5, 6, first, offsets.data(), len, got.data(), t);
        for (std::int64_t k = 0; k < len; ++k) CHECK(got[k] == all[offsets[k]]);
      }
    });
  }

  TEST_CASE("noisy_for_adc: the ADC reads the exact noisy currents' codes from its currents on every tier") {
    // Per-column and per-tile ADCs of 4 and 8 bits, noise from 1e-6 to 3 ADC steps, and currents
    // placed so that the exact noisy current (the generator's own normal) lies a little either side
    // of a code's rounding boundary or of the clipping; zeros, infinities and NaNs too. The
    // read-out of noisy_for_adc's currents equals that of the exact ones bit for bit.
    const std::uint64_t seed = 7, stream = 8, first = 1000003;
    for (const std::int64_t C : {1, 16, 20, 64, 65}) {
      const std::int64_t M = 211, n = M * C;
      const auto to = test::random_tensor(Shape{C}, 51, layout::nchw, 50.0f, 200.0f);
      const auto f = test::random_tensor(Shape{C}, 52, layout::nchw, 0.1f, 2.0f);
      const auto lsb = test::random_tensor(Shape{C}, 53, layout::nchw, 0.001f, 0.02f);
      const auto u = test::random_tensor(Shape{4 * n}, 54, layout::nchw, 0.0f, 1.0f);
      std::vector<float> z(static_cast<std::size_t>(n));
      detail::portable::normal_fill(seed, stream, first, n, z.data());
      for (const float steps : {7.0f, 127.0f})
        for (const bool per_col : {true, false}) {
          CAPTURE(C);
          CAPTURE(steps);
          CAPTURE(per_col);
          detail::adc_readout a;
          a.factor = f.data();
          a.steps = steps;
          if (per_col) {
            a.to_steps = to.data();
            a.lsb = lsb.data();
          } else {
            a.to_all = 90.0f;
            a.lsb_all = 0.01f;
          }
          std::vector<float> c(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n));
          for (std::int64_t i = 0; i < n; ++i) {
            const float tj = per_col ? to[i % C] : 90.0f;
            const float* ui = u.data() + 4 * i;
            const float sigma_steps = std::pow(10.0f, -6.0f + 6.5f * ui[0]) / 5.3f;  // the noise in ADC steps
            v[i] = (sigma_steps / tj) * (sigma_steps / tj);
            // the exact noisy current at a rounding boundary (k + 1/2) or the clipping, moved by
            // -+1e-7 to -+1e-2 steps (or not at all)
            const float k = std::floor((2 * ui[1] - 1) * (steps + 2));
            const float edge = ui[2] < 0.8f ? k + 0.5f : (ui[2] < 0.9f ? steps : -steps);
            const float shift = ui[3] < 0.1f ? 0.0f : std::copysign(std::pow(10.0f, -7.0f + 5.0f * ui[3]), ui[3] - 0.55f);
            c[i] = (edge + shift) / tj - std::sqrt(v[i]) * z[i];
          }
          const auto nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
          c[0] = nan;
          c[1 % n] = inf;
          c[2 % n] = -0.0f;
          c[3 % n] = 0.0f;
          v[3 % n] = 0.0f;
          v[4 % n] = nan;
          v[5 % n] = -1e-12f;  // a negative rounding: no noise
          v[6 % n] = inf;
          v[7 % n] = 1e30f;
          v[8 % n] = -nan;
          std::vector<float> noisy(static_cast<std::size_t>(n));
          detail::portable::add_read_noise(c.data(), v.data(), z.data(), n, noisy.data());
          std::vector<float> want(static_cast<std::size_t>(n), 0.5f);
          detail::portable::adc_rows(a, noisy.data(), M, C, nullptr, 0.75f, 2.0f, want.data(), C, false);
          for_each_tier([&](isa_tier t) {
            std::vector<float> got_noisy(static_cast<std::size_t>(n)), scratch(static_cast<std::size_t>(n));
            std::vector<std::uint32_t> undecided(static_cast<std::size_t>(n));
            detail::noisy_for_adc(seed, stream, first, a, c.data(), v.data(), M, C, got_noisy.data(), scratch.data(),
                                  undecided.data(), t);
            std::vector<float> got(static_cast<std::size_t>(n), 0.5f);
            detail::portable::adc_rows(a, got_noisy.data(), M, C, nullptr, 0.75f, 2.0f, got.data(), C, false);
            CHECK(same_bits(want, got));
          });
        }
    }
  }

  TEST_CASE("noisy_for_adc with approximate variances: the exact variances' codes on every tier, exact ones asked for near a boundary only") {
    // Each approximate variance lies up to the bound's edge away from the exact one (either side);
    // the exact noisy current sits a little either side of a rounding boundary, noise from 1e-6 to
    // 3 ADC steps. The read-out equals the exact currents' bit for bit; the vector tiers ask for few
    // exact variances, the portable one for all.
    const std::uint64_t seed = 17, stream = 18, first = 77;
    const std::int64_t C = 20, M = 307, n = M * C;
    const auto u = test::random_tensor(Shape{5 * n}, 81, layout::nchw, 0.0f, 1.0f);
    std::vector<float> z(static_cast<std::size_t>(n));
    detail::portable::normal_fill(seed, stream, first, n, z.data());
    const float tiny = std::numeric_limits<float>::min();
    detail::variance_bound bound;
    bound.rel = 0x1p-8f;
    bound.abs = 1e-12f;
    for (const float steps : {7.0f, 127.0f}) {
      CAPTURE(steps);
      detail::adc_readout a;
      const std::vector<float> f(static_cast<std::size_t>(C), 0.5f);
      a.factor = f.data();
      a.steps = steps;
      a.to_all = 90.0f;
      a.lsb_all = 0.01f;
      std::vector<float> c(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(n)), va(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) {
        const float* ui = u.data() + 5 * i;
        const float sigma_steps = std::pow(10.0f, -6.0f + 6.5f * ui[0]) / 5.3f;
        v[i] = (sigma_steps / 90.0f) * (sigma_steps / 90.0f);
        // the approximate root up to the bound's edge from the exact one, either side
        const float r = std::sqrt(v[i] + tiny), d = (2 * ui[4] - 1) * 0.999f;
        const float ra = (r - bound.abs * d) / (1 + bound.rel * d);
        va[i] = std::max(ra * ra - tiny, 0.0f);
        const float k = std::floor((2 * ui[1] - 1) * (steps + 2));
        const float shift = std::copysign(std::pow(10.0f, -7.0f + 5.0f * ui[3]), ui[3] - 0.55f);
        c[i] = (k + 0.5f + shift) / 90.0f - std::sqrt(v[i]) * z[i];
      }
      std::vector<float> noisy(static_cast<std::size_t>(n));
      detail::portable::add_read_noise(c.data(), v.data(), z.data(), n, noisy.data());
      std::vector<float> want(static_cast<std::size_t>(n), 0.5f);
      detail::portable::adc_rows(a, noisy.data(), M, C, nullptr, 0.75f, 2.0f, want.data(), C, false);
      for_each_tier([&](isa_tier t) {
        std::int64_t asked = 0;
        bound.exact = [&](const std::uint32_t* idx, std::int64_t count, float* out) {
          asked += count;
          for (std::int64_t i = 0; i < count; ++i) out[i] = v[idx[i]];
        };
        std::vector<float> got_noisy(static_cast<std::size_t>(n)), scratch(static_cast<std::size_t>(n));
        std::vector<std::uint32_t> undecided(static_cast<std::size_t>(n));
        detail::noisy_for_adc(seed, stream, first, a, c.data(), va.data(), M, C, got_noisy.data(), scratch.data(),
                              undecided.data(), t, &bound);
        std::vector<float> got(static_cast<std::size_t>(n), 0.5f);
        detail::portable::adc_rows(a, got_noisy.data(), M, C, nullptr, 0.75f, 2.0f, got.data(), C, false);
        CHECK(same_bits(want, got));
        if (t == isa_tier::scalar) {
          CHECK(asked == n);
        } else {
          // the currents sit near boundaries on purpose (about half within the bound's margin), yet some decide
          CHECK(asked > 0);
          CHECK(asked < n);
        }
      });
    }
  }

  TEST_CASE("bf16_round rounds to nearest even and finds the largest input on every tier") {
    std::vector<float> x;
    const auto r = test::random_tensor(Shape{1000}, 90, layout::nchw, -30.0f, 30.0f);
    for (std::int64_t i = 0; i < r.numel(); ++i) x.push_back(std::exp2(r[i]) * (i % 3 ? 1.0f : 1.0f + 0x1p-8f));
    for (const float e : {0.0f, 1e-40f, std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(), 1.0f + 0x1p-8f, 1.0f + 0x1p-7f + 0x1p-8f, 3.0f})
      x.push_back(e);
    std::vector<std::uint16_t> want(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = float_to_bf16_bits(x[i]);
    CHECK(want[want.size() - 3] == 0x3f80);  // 1 + 2^-8: a tie, to even
    CHECK(want[want.size() - 2] == 0x3f82);  // 1 + 2^-7 + 2^-8: a tie, to even (up)
    x.pop_back();  // the largest is infinity; 3 was only for the layout of the ties
    want.pop_back();
    for_each_tier([&](isa_tier t) {
      for (const std::size_t len : {x.size(), std::size_t{1}, std::size_t{17}, x.size() - 9}) {
        std::vector<std::uint16_t> got(len);
        const float top = detail::bf16_round(x.data(), static_cast<std::int64_t>(len), got.data(), t);
        CHECK(same_bits(got, std::vector<std::uint16_t>(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(len))));
        CHECK(top == *std::max_element(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(len)));
      }
    });
  }

  TEST_CASE("chain_conv is each output's FMA chain over its image taps: the same bits on every tier, and oneDNN's") {
    // Strides, padding, height dilation, 1 to 7 channels, 1x1 to 5x5 windows, 1 to 40 columns,
    // rows shorter and longer than the register-blocked kernel's pixels (every one of its six
    // forms: 1-3 channels, 3 or 5 taps per kernel row), inputs of both signs,
    // and inputs so small that products round to -0: a chain that is -0 when it meets a padding
    // tap turns +0 if that tap is multiplied in, so the reference skips the padding's taps.
    // oneDNN 2.7's f32 convolution gives the same outputs where it is brgconv:avx512_core or
    // jit:avx2 on undilated odd windows padded by at most half a window (the stems' shapes); a
    // 2x2 window, wider padding or height dilation it sums in other orders (analog_conv2d's probe
    // then keeps oneDNN's).
    struct geo {
      std::int64_t N, C, H, W, cols, k, s, p, dh;
    };
    int cases = 0;
    for (const geo& q : {geo{2, 3, 9, 32, 16, 3, 1, 1, 1}, geo{3, 1, 7, 28, 16, 3, 1, 1, 1}, geo{1, 2, 6, 40, 20, 3, 1, 1, 1},
                        geo{2, 3, 8, 21, 40, 5, 1, 2, 1}, geo{2, 1, 9, 19, 7, 5, 1, 1, 1}, geo{2, 2, 9, 12, 17, 3, 2, 1, 1},
                        geo{1, 7, 6, 9, 33, 3, 1, 1, 1}, geo{2, 4, 5, 6, 1, 1, 1, 0, 1}, geo{2, 3, 9, 9, 16, 3, 1, 2, 2},
                        geo{1, 3, 4, 5, 16, 3, 1, 3, 1}, geo{2, 5, 7, 8, 24, 2, 1, 1, 1}, geo{1, 2, 7, 30, 16, 5, 1, 2, 1}})
      for (const bool tiny : {false, true}) {
        CAPTURE(q.C);
        CAPTURE(q.k);
        CAPTURE(q.s);
        CAPTURE(q.p);
        CAPTURE(q.dh);
        CAPTURE(q.W);
        CAPTURE(tiny);
        Tensor x = test::random_tensor(Shape{q.N, q.C, q.H, q.W}, 95 + cases, layout::nhwc, -1.0f, 1.0f);
        Tensor w = test::random_tensor(Shape{q.cols, q.C, q.k, q.k}, 96 + cases, layout::nchw, -1.0f, 1.0f);
        ++cases;
        if (tiny) {  // products below the smallest float: every chain of a window ends at -0, +0 or a tiny value
          for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = i % 3 == 0 ? 1e-39f : -1e-39f;
          for (std::int64_t i = 0; i < w.numel(); ++i) w[i] *= 1e-10f;
        }
        conv2d_params cp{{q.s, q.s}, {q.p, q.p}};
        cp.dilation = {q.dh, 1};
        const conv2d conv(w, std::nullopt, cp);
        const Shape out = conv.output_shape(x.shape());
        const std::int64_t OH = out[2], OW = out[3];
        std::vector<float> want(static_cast<std::size_t>(q.N * OH * OW * q.cols));
        std::int64_t minus_zero = 0;
        for (std::int64_t n = 0; n < q.N; ++n)
          for (std::int64_t oh = 0; oh < OH; ++oh)
            for (std::int64_t ow = 0; ow < OW; ++ow)
              for (std::int64_t j = 0; j < q.cols; ++j) {
                float acc = 0.0f;
                for (std::int64_t kh = 0; kh < q.k; ++kh)
                  for (std::int64_t kw = 0; kw < q.k; ++kw) {
                    const std::int64_t ih = oh * q.s - q.p + kh * q.dh, iw = ow * q.s - q.p + kw;
                    if (ih < 0 || ih >= q.H || iw < 0 || iw >= q.W) continue;
                    for (std::int64_t c = 0; c < q.C; ++c)
                      acc = std::fma(x[((n * q.H + ih) * q.W + iw) * q.C + c], w[((j * q.C + c) * q.k + kh) * q.k + kw], acc);
                  }
                want[static_cast<std::size_t>(((n * OH + oh) * OW + ow) * q.cols + j)] = acc;
                minus_zero += std::bit_cast<std::uint32_t>(acc) == 0x80000000u;
              }
        if (tiny) CHECK(minus_zero > 0);  // the case the padding's taps would get wrong
        const auto g = detail::chain_conv_shape(q.N, q.C, q.H, q.W, OH, OW, q.cols, q.k, q.k, q.s, q.s, q.p, q.p, q.dh);
        std::vector<float> xp;
        detail::chain_conv_input(g, x.data(), xp);
        CHECK(xp.size() == static_cast<std::size_t>(q.N * (q.H + 2 * q.p) * (q.W + 2 * q.p) * q.C));
        const auto wp = detail::chain_conv_weights(w.data(), q.cols, q.C, q.k, q.k);
        for_each_tier([&](isa_tier t) {
          std::vector<float> got(want.size(), -7.0f);
          detail::chain_conv(g, xp.data(), wp.data(), got.data(), t);
          CHECK(same_bits(got, want));
        });
        const std::string impl = conv.implementation(x.shape());
        const bool stem_like = q.dh == 1 && q.k % 2 == 1 && 2 * q.p <= q.k - 1;
        if (stem_like && (impl.rfind("brgconv:avx512_core", 0) == 0 || impl == "jit:avx2")) {
          Tensor y;
          conv.forward(x, y);
          y = y.to_layout(layout::nhwc);
          CHECK(same_bits(std::vector<float>(y.data(), y.data() + y.numel()), want));
        }
      }
  }

  TEST_CASE("conv_chain_values is the per-output FMA chain over in-bounds taps, the same bits on every tier") {
    // Strides, padding, dilation, 1 to 28 channels, 1 to 40 outputs; listed outputs in scattered
    // order, then in order (runs of one pixel's outputs) with gaps. The reference skips the
    // padding's taps instead of reading zeros.
    struct geo {
      std::int64_t C, r, k, s, p, d;
    };
    for (const geo q : {geo{1, 16, 3, 1, 1, 1}, geo{3, 20, 3, 2, 1, 1}, geo{12, 5, 3, 1, 2, 2}, geo{28, 1, 3, 2, 0, 1},
                        geo{8, 7, 1, 1, 0, 1}, geo{5, 9, 5, 1, 2, 1}, geo{2, 40, 3, 1, 1, 1}})
      for (const bool sorted : {false, true}) {
        CAPTURE(sorted);
        CAPTURE(q.C);
        CAPTURE(q.k);
        detail::thin_conv_geometry g;
        g.N = 2;
        g.H = 9;
        g.W = 8;
        g.C = g.Cp = q.C;
        g.KH = g.KW = q.k;
        g.sh = g.sw = q.s;
        g.ph = g.pw = q.p;
        g.dh = g.dw = q.d;
        g.OH = (g.H + 2 * q.p - q.d * (q.k - 1) - 1) / q.s + 1;
        g.OW = (g.W + 2 * q.p - q.d * (q.k - 1) - 1) / q.s + 1;
        g.r = q.r;
        const auto x = test::random_tensor(Shape{g.N * g.H * g.W * g.C}, 91, layout::nchw, 0.0f, 2.0f);
        const auto w = test::random_tensor(Shape{g.r * g.KH * g.KW * g.C}, 92, layout::nchw, 0.0f, 1e-3f);
        const std::int64_t outputs = g.N * g.OH * g.OW * g.r;
        std::vector<std::uint32_t> idx;
        for (std::int64_t i = 0; i < outputs; ++i) {
          if (!sorted) {
            idx.push_back(static_cast<std::uint32_t>((i * 7919) % outputs));
          } else if (i % 5 != 2 && i % 11 != 3) {
            idx.push_back(static_cast<std::uint32_t>(i));
          }
        }
        std::vector<float> want(idx.size());
        for (std::size_t i = 0; i < idx.size(); ++i) {
          const std::int64_t o = idx[i] % g.r, p = idx[i] / g.r, n = p / (g.OH * g.OW), oh = p % (g.OH * g.OW) / g.OW,
                             ow = p % g.OW;
          float acc = 0.0f;
          for (std::int64_t kh = 0; kh < g.KH; ++kh)
            for (std::int64_t kw = 0; kw < g.KW; ++kw) {
              const std::int64_t ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
              if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
              for (std::int64_t c = 0; c < g.C; ++c)
                acc = std::fma(x[((n * g.H + ih) * g.W + iw) * g.C + c], w[((o * g.KH + kh) * g.KW + kw) * g.C + c], acc);
            }
          want[i] = acc;
        }
        for_each_tier([&](isa_tier t) {
          for (const std::size_t len : {idx.size(), std::size_t{1}, std::size_t{13}}) {
            std::vector<float> got(len);
            detail::conv_chain_values(g, x.data(), w.data(), idx.data(), static_cast<std::int64_t>(len), got.data(), t);
            CHECK(same_bits(got, std::vector<float>(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(len))));
          }
        });
      }
  }
}

}  // namespace unit_isa
