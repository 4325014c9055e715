// A realistic chip in the loop: the fast normal generator behind per-read
// noise (accuracy of its pieces, statistics, counter layout), the calibrated
// DAC and the ADC headroom, read noise on the per-tile convolution kernel,
// calibrating every ADC of a deployed network in one pass, and feature-KD
// calibration through the tile-exact path (ranges set again per layer, reads
// averaged per sample).

#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/random.hpp>
#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/nn/deploy.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace unit_realistic_chip {

using namespace rimc;

namespace {

using small_tile = CrossbarTile<float, 64, 32>;

/// A conv layer's options with programming noise, on the paper's device.
analog_options options() {
  analog_options opt;
  opt.device.noise = programming_noise::proportional(0.02);
  opt.program_seed = 3;
  return opt;
}

/// The chip's periphery: calibrated 8-bit DAC, per-column 8-bit ADC, read noise.
periphery_config realistic_periphery(double headroom = 1.0) {
  periphery_config p;
  p.dac = dac_config{8, dac_scaling::calibrated, 1.0, 99.99};
  p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.99, true, headroom};
  p.read = read_noise::proportional(0.05);
  p.noise_seed = 9;
  return p;
}

/// Two forwards (fresh read noise each) of a layer with the per-tile convolution kernel: make()'s
/// layer on src with periphery p, drawing every read exactly or not; the outputs and how many
/// (tile, slice, source shape) used the bf16 variance estimate and chain_conv's column currents.
struct two_reads {
  std::vector<Tensor> ys;
  std::size_t estimated = 0, chained = 0;
};
template <class Make>
two_reads read_twice(Make make, const Tensor& src, periphery_config p, bool every) {
  auto layer = make();
  p.draw_every_read = every;
  layer.set_periphery(p);
  layer.calibrate_adc(src);
  two_reads r{std::vector<Tensor>(2), 0};
  for (auto& y : r.ys) layer.forward_tiles(src, y, tile_kernel::conv);
  CHECK_FALSE(r.ys[0] == r.ys[1]);
  r.estimated = layer.bf16_variance_shapes();
  r.chained = layer.chain_current_shapes();
  CHECK((!every || r.estimated == 0));
  return r;
}

}  // namespace

TEST_SUITE("realistic chip") {
  TEST_CASE("the normal generator's logarithm and square root are accurate to float rounding") {
    double worst_log = 0;
    for (int i = 1; i < 200000; ++i) {
      const float x = static_cast<float>(i) * 5e-6f;
      const double exact = std::log(static_cast<double>(x));
      if (std::abs(exact) < 1e-3) continue;  // relative error is meaningless at the root
      worst_log = std::max(worst_log, std::abs(detail::fast_logf(x) - exact) / std::abs(exact));
    }
    CHECK(worst_log < 2e-7);
    double worst_sqrt = 0;
    for (const float w : {1e-30f, 1e-6f, 0.3f, 1.0f, 5.0f, 33.0f, 1e6f, 3e30f}) {
      const double exact = std::sqrt(static_cast<double>(w));
      worst_sqrt = std::max(worst_sqrt, std::abs(detail::sqrt_positive(w) - exact) / exact);
    }
    CHECK(worst_sqrt < 3e-7);
  }

  TEST_CASE("each normal is the standard normal quantile of its 23-bit uniform to 1e-5 relative") {
    // Phi(z(u)) = u within 1e-5 of min(u, 1 - u): the tails (|z| up to 5.3) as well as the centre.
    double worst = 0;
    for (std::uint32_t k = 0; k < (1u << 23); k += 97) {
      for (const std::uint32_t kk : {k, (1u << 23) - 1 - k}) {
        const float z = detail::normal_from_bits(kk << 9);
        const double u = (kk + 0.5) / 8388608.0;
        const double phi = 0.5 * std::erfc(-z / std::sqrt(2.0));
        worst = std::max(worst, std::abs(phi - u) / std::min(u, 1 - u));
      }
    }
    CHECK(worst < 1e-5);
    CHECK(detail::normal_from_bits(0) < -5.2f);
    CHECK(detail::normal_from_bits(0xffffffffu) > 5.2f);
  }

  TEST_CASE("fast normals have zero mean, unit variance and normal tails over 4e6 draws") {
    const std::int64_t n = 4'000'000;
    std::vector<float> z(static_cast<std::size_t>(n));
    detail::normal_fill(5, 6, 0, n, z.data());
    double m1 = 0, m2 = 0, m4 = 0;
    std::int64_t beyond2 = 0, beyond3 = 0;
    for (const float v : z) {
      m1 += v;
      m2 += double(v) * v;
      m4 += double(v) * v * v * v;
      beyond2 += std::abs(v) > 2;
      beyond3 += std::abs(v) > 3;
    }
    const double N = static_cast<double>(n);
    m1 /= N;
    m2 /= N;
    m4 /= N;
    CHECK(std::abs(m1) < 5 / std::sqrt(N));               // se of the mean: 1 / sqrt(N)
    CHECK(std::abs(m2 - 1) < 5 * std::sqrt(2 / N));       // se of the variance: sqrt(2 / N)
    CHECK(std::abs(m4 - 3) < 5 * std::sqrt(96 / N));      // se of the fourth moment: sqrt(96 / N)
    const auto within = [&](std::int64_t count, double p) {  // a binomial count within 5 standard errors
      return std::abs(static_cast<double>(count) - N * p) < 5 * std::sqrt(N * p * (1 - p));
    };
    CHECK(within(beyond2, 0.0455002638963584));
    CHECK(within(beyond3, 0.0026997960632602));
  }

  TEST_CASE("a calibrated DAC takes its range from the reference inputs' percentile, and computes only once set") {
    const Tensor w = test::random_tensor(Shape{50, 20}, 1);
    periphery_config p;
    p.dac = dac_config{8, dac_scaling::calibrated, 1.0, 100.0};
    TiledArray<small_tile> a(w, device_config{}, 2, p);
    Tensor x = test::random_tensor(Shape{30, 50}, 3, layout::nchw, -0.5f, 0.5f);
    x[7] = -2.5f;  // the largest magnitude
    Tensor y;
    CHECK_THROWS_WITH_AS(a.mvm(x, y),
                         "[rimc.value_error] TiledArray: the DAC range is not calibrated (dac_scaling::calibrated): "
                         "call calibrate_adc first",
                         value_error);
    Tensor bad = x;
    bad[3] = std::nanf("");
    CHECK_THROWS_WITH_AS(a.calibrate_adc(bad),
                         "[rimc.value_error] TiledArray::calibrate_adc: reference inputs: element 3 of tensor [30, 50] "
                         "is nan",
                         value_error);
    CHECK_FALSE(a.dac_ready());
    a.calibrate_adc(x);
    CHECK(a.periphery().dac->range == 2.5);
    // With that range the calibrated DAC is the fixed one.
    periphery_config fixed;
    fixed.dac = dac_config{8, dac_scaling::fixed, 2.5};
    TiledArray<small_tile> b(w, device_config{}, 2, fixed);
    CHECK(a.mvm(x) == b.mvm(x));
    // A new periphery needs calibrating again.
    a.set_periphery(p);
    CHECK_FALSE(a.dac_ready());
    p.dac->percentile = 0;
    CHECK_THROWS_WITH_AS(p.validate(), "[rimc.value_error] dac_config: percentile must be in (0, 100], got 0",
                         value_error);
    CHECK_THROWS_WITH_AS(TiledArray<small_tile>(w, device_config{}, 2, periphery_config{}).calibrate_adc(x),
                         "[rimc.value_error] TiledArray::calibrate_adc: the periphery has no ADC and no calibrated DAC",
                         value_error);
  }

  TEST_CASE("widening keeps the larger of each range and its new estimate, for the ADC and the DAC") {
    const Tensor w = test::random_tensor(Shape{70, 40}, 30);
    periphery_config p = periphery_config::quantised(8, 8, 99.0, true);
    p.dac->scaling = dac_scaling::calibrated;
    const Tensor first = test::random_tensor(Shape{20, 70}, 31), second = test::random_tensor(Shape{20, 70}, 32, layout::nchw, -1.5f, 1.5f);
    TiledArray<small_tile> widened(w, device_config{}, 6, p), a(w, device_config{}, 6, p), b(w, device_config{}, 6, p);
    widened.calibrate_adc(first);
    widened.calibrate_adc(second, range_update::widen);
    a.calibrate_adc(first);
    b.calibrate_adc(second);  // each on its own
    CHECK(widened.periphery().dac->range == std::max(a.periphery().dac->range, b.periphery().dac->range));
    // The ADC estimate depends on the DAC range it reads through: compare with b's ranges read through the widened DAC.
    const auto& r = widened.adc_ranges();
    std::size_t grew = 0;
    for (std::size_t i = 0; i < r.size(); ++i) {
      CHECK(r[i] >= a.adc_ranges()[i]);
      grew += r[i] > a.adc_ranges()[i];
    }
    CHECK(grew > 0);
    // Widening an uncalibrated array is a plain calibration.
    TiledArray<small_tile> fresh(w, device_config{}, 6, p);
    fresh.calibrate_adc(first, range_update::widen);
    CHECK(fresh.adc_ranges() == a.adc_ranges());
  }

  TEST_CASE("the ADC headroom multiplies every calibrated range, and must be at least 1") {
    const Tensor w = test::random_tensor(Shape{70, 40}, 4);
    const Tensor x = test::random_tensor(Shape{25, 70}, 5);
    for (const bool per_column : {false, true}) {
      CAPTURE(per_column);
      periphery_config p = periphery_config::quantised(8, 8, 99.0, per_column);
      TiledArray<small_tile> tight(w, device_config{}, 6, p);
      p.adc->headroom = 1.75;
      TiledArray<small_tile> loose(w, device_config{}, 6, p);
      tight.calibrate_adc(x);
      loose.calibrate_adc(x);
      REQUIRE(tight.adc_ranges().size() == loose.adc_ranges().size());
      for (std::size_t i = 0; i < tight.adc_ranges().size(); ++i)
        CHECK(loose.adc_ranges()[i] == doctest::Approx(1.75 * tight.adc_ranges()[i]).epsilon(1e-6));
    }
    adc_config bad{8, adc_range_mode::percentile, 0.0, 99.0, false, 0.5};
    CHECK_THROWS_WITH_AS(bad.validate(), "[rimc.value_error] adc_config: headroom must be >= 1, got 0.5", value_error);
    bad.headroom = std::nan("");
    CHECK_THROWS_WITH_AS(bad.validate(), "[rimc.value_error] adc_config: headroom must be finite, got nan", value_error);
  }

  TEST_CASE("the per-tile convolution kernel gives the same bits for channels-first and channels-last sources") {
    // The tiles' input channels reach them by different ways (read straight through the DAC, gathered
    // per pixel, gathered per channel plane, copied whole), each an element-wise copy or DAC code, so
    // both layouts give the same outputs bit for bit. 14 images of 16 x 16 with 20 outputs make two
    // groups, so every source is copied; 40 channels split over six row blocks of 7 channels.
    const conv2d_params geometry{{1, 1}, {1, 1}};
    for (const std::int64_t C : {1, 3, 40}) {
      const Tensor w = test::random_tensor(Shape{20, C, 3, 3}, 13);
      const Tensor nhwc = test::random_tensor(Shape{14, C, 16, 16}, 14, layout::nhwc, 0.0f, 1.5f);
      const Tensor nchw = nhwc.to_layout(layout::nchw);
      for (const bool dac : {false, true})
        for (const bool reading : {false, true}) {
          CAPTURE(C);
          CAPTURE(dac);
          CAPTURE(reading);
          periphery_config p;
          if (dac) p.dac = dac_config{8, dac_scaling::fixed, 1.0};  // clips the inputs above 1 too
          p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.0};
          if (reading) p.read = read_noise::proportional(0.1);
          p.noise_seed = 15;
          auto run = [&](const Tensor& src) {  // a fresh layer: the noise depends on the call count
            basic_analog_conv2d<small_tile> layer(w, std::nullopt, geometry, options());
            layer.set_periphery(p);
            layer.calibrate_adc(nhwc);
            REQUIRE(layer.conv_kernel_exact());
            REQUIRE(layer.array().tile_grid_rows() == (C == 40 ? 6 : 1));
            Tensor y;
            layer.forward_tiles(src, y, tile_kernel::conv);
            return y;
          };
          const Tensor a = run(nhwc), b = run(nchw);
          CHECK(a.memory_layout() == b.memory_layout());
          CHECK(a == b);
        }
    }
  }

  TEST_CASE("with read noise the per-tile convolution kernel draws the GEMM kernel's noise") {
    // Same counters, same variances up to float rounding: the two kernels agree closely, the noise is
    // fresh per call, and neither depends on the thread count.
    const Tensor w = test::random_tensor(Shape{40, 12, 3, 3}, 7);
    const Tensor src = test::random_tensor(Shape{3, 12, 9, 9}, 8, layout::nhwc);
    periphery_config p;
    p.read = read_noise::proportional(0.1);
    p.noise_seed = 10;
    const conv2d_params geometry{{1, 1}, {1, 1}};
    auto run = [&](tile_kernel kernel, int threads) {
      const thread_count_guard g(threads);
      basic_analog_conv2d<small_tile> layer(w, std::nullopt, geometry, options());
      layer.set_periphery(p);
      REQUIRE(layer.conv_kernel_exact());
      Tensor a, b;
      layer.forward_tiles(src, a, kernel);
      layer.forward_tiles(src, b, kernel);
      CHECK_FALSE(a == b);
      return a;
    };
    const Tensor conv = run(tile_kernel::conv, 2);
    const Tensor gemm = run(tile_kernel::gemm, 2);
    CHECK(run(tile_kernel::conv, 1) == conv);
    const Tensor ideal = basic_analog_conv2d<small_tile>(w, std::nullopt, geometry, options()).forward(src);
    test::check_close(conv, gemm, 1e-4, 1e-4);
    // The noise is there and of the expected size: 10% of each cell, so a few % of the output.
    double diff = 0, norm = 0;
    const Tensor c = conv.to_layout(layout::nchw), e = ideal.to_layout(layout::nchw);
    for (std::int64_t i = 0; i < c.numel(); ++i) {
      diff += (double(c[i]) - e[i]) * (double(c[i]) - e[i]);
      norm += double(e[i]) * e[i];
    }
    CHECK(std::sqrt(diff / norm) > 0.005);
    CHECK(std::sqrt(diff / norm) < 0.2);
  }

  TEST_CASE("read noise before an ADC gives the outputs of drawing every read's exact normal, bit for bit") {
    // The same layers with periphery_config::draw_every_read on and off: equal outputs on every
    // runnable tier (AVX-512 finds most codes from the approximate quantile), for convolutions on
    // both tile kernels and a linear layer, per-column and per-tile ADCs of 4 and 8 bits, read noise
    // at 5% and at 300% of each cell, two calls each (fresh noise per call).
    const Tensor w = test::random_tensor(Shape{40, 12, 3, 3}, 17);
    const Tensor src = test::random_tensor(Shape{3, 12, 9, 9}, 18, layout::nhwc, 0.0f, 1.0f);
    const Tensor wl = test::random_tensor(Shape{50, 70}, 19);
    const Tensor xl = test::random_tensor(Shape{33, 70}, 20, layout::nchw, 0.0f, 1.0f);
    const conv2d_params geometry{{1, 1}, {1, 1}};
    const isa_tier top = detail::lower(detected_isa(), detail::environment_isa_cap());
    for (const isa_tier tier : {isa_tier::scalar, isa_tier::avx2, isa_tier::avx512}) {
      if (tier > top) continue;
      const isa_guard cap(tier);
      for (const int bits : {4, 8})
        for (const bool per_column : {true, false})
          for (const double ratio : {0.05, 3.0}) {
            CAPTURE(to_string(tier));
            CAPTURE(bits);
            CAPTURE(per_column);
            CAPTURE(ratio);
            periphery_config p;
            p.dac = dac_config{8, dac_scaling::calibrated, 1.0, 99.99};
            p.adc = adc_config{bits, adc_range_mode::percentile, 0.0, 99.9, per_column};
            p.read = read_noise::proportional(ratio);
            p.noise_seed = 21;
            auto conv = [&](tile_kernel kernel, bool every) {
              basic_analog_conv2d<small_tile> layer(w, std::nullopt, geometry, options());
              auto q = p;
              q.draw_every_read = every;
              layer.set_periphery(q);
              layer.calibrate_adc(src);
              std::vector<Tensor> ys(2);
              for (auto& y : ys) layer.forward_tiles(src, y, kernel);
              CHECK_FALSE(ys[0] == ys[1]);
              return ys;
            };
            for (const auto kernel : {tile_kernel::conv, tile_kernel::gemm}) {
              const auto skipping = conv(kernel, false), every = conv(kernel, true);
              CHECK(skipping[0] == every[0]);
              CHECK(skipping[1] == every[1]);
            }
            auto linear = [&](bool every) {
              basic_analog_linear<small_tile> layer(wl, std::nullopt, options());
              auto q = p;
              q.dac = dac_config{8, dac_scaling::per_vector_absmax, 1.0};
              q.draw_every_read = every;
              layer.set_periphery(q);
              layer.calibrate_adc(xl);
              Tensor y;
              layer.forward_tiles(xl, y);
              return y;
            };
            CHECK(linear(false) == linear(true));
          }
    }
  }

  TEST_CASE("the read variances' bf16 estimate gives the outputs of the exact variances, bit for bit") {
    // Convolutions whose tiles hold 14 (3x3) or 20 (1x1) input channels, so the bf16 estimate
    // runs where oneDNN has native bf16 (the 6-channel second tile of the 3x3 layers keeps the f32
    // convolution): strides, padding, dilation, a channels-first source, per-column and per-tile
    // ADCs of 4 and 8 bits, read noise at 5% and 300% of each cell and the CMO ReRAM form, two
    // calls each. The outputs equal those with draw_every_read (every variance exact) on every tier.
    using tile128 = CrossbarTile<float, 128, 32>;
    struct geometry_case {
      std::int64_t k, stride, pad, dilation;
    };
    const isa_tier top = detail::lower(detected_isa(), detail::environment_isa_cap());
    const conv2d w3(test::random_tensor(Shape{40, 14, 3, 3}, 60), std::nullopt, conv2d_params{});
    const bool shortcut_expected =
        detail::onednn_native_bf16() && w3.implementation(Shape{2, 14, 11, 11}).rfind("brgconv:avx512_core", 0) == 0;
    if (!shortcut_expected) MESSAGE("no native bf16 or another f32 convolution here: the estimate may not run");
    for (const geometry_case gc : {geometry_case{3, 1, 1, 1}, geometry_case{3, 2, 0, 1}, geometry_case{3, 1, 2, 2},
                                   geometry_case{1, 1, 0, 1}}) {
      const Tensor w = test::random_tensor(Shape{40, 20, gc.k, gc.k}, 61);
      conv2d_params geometry;
      geometry.stride = {gc.stride, gc.stride};
      geometry.padding = {gc.pad, gc.pad};
      geometry.dilation = {gc.dilation, gc.dilation};
      for (const layout l : {layout::nhwc, layout::nchw}) {
        const Tensor src = test::random_tensor(Shape{3, 20, 11, 11}, 62, l, 0.0f, 1.0f);
        for (const isa_tier tier : {isa_tier::scalar, isa_tier::avx2, isa_tier::avx512}) {
          if (tier > top) continue;
          const isa_guard cap(tier);
          for (const int bits : {4, 8})
            for (const bool per_column : {true, false})
              for (const read_noise noise :
                   {read_noise::proportional(0.05), read_noise::proportional(3.0), read_noise::cmo_reram(seconds{86400.0})}) {
                CAPTURE(gc.k);
                CAPTURE(gc.stride);
                CAPTURE(gc.pad);
                CAPTURE(gc.dilation);
                CAPTURE(l == layout::nhwc);
                CAPTURE(to_string(tier));
                CAPTURE(bits);
                CAPTURE(per_column);
                CAPTURE(noise.value);
                periphery_config p = realistic_periphery();
                p.adc = adc_config{bits, adc_range_mode::percentile, 0.0, 99.9, per_column};
                p.read = noise;
                const auto make = [&] {
                  basic_analog_conv2d<tile128> layer(w, std::nullopt, geometry, options());
                  REQUIRE(layer.array().tile_grid_rows() == (gc.k == 3 ? 2 : 1));
                  return layer;
                };
                const auto fast = read_twice(make, src, p, false), exact = read_twice(make, src, p, true);
                CHECK(fast.ys == exact.ys);
                const std::size_t estimated = fast.estimated;
                if (tier == isa_tier::scalar) {
                  CHECK(estimated == 0);  // the portable read-out computes every current exactly
                } else if (shortcut_expected) {
                  // the first row of tiles (two columns of tiles), one source shape; the second row's 6
                  // channels too where pair_conv runs (the width not dilated)
                  const bool pairs = detail::pair_conv_available(tier) && gc.k == 3 && gc.dilation == 1;
                  CHECK(estimated == (pairs ? 4u : 2u));
                }
              }
        }
      }
    }
  }

  TEST_CASE("a bf16 convolution's read variances keep within bf16_variance_bound of the f32 ones") {
    // Squared inputs and variance matrices over many magnitudes (down to below 2^-126, zeros
    // among them), 1 to 28 channels: every output's root lies within the bound's relative and
    // absolute parts of the f32 convolution's root.
    const float tiny = std::numeric_limits<float>::min();
    for (const std::int64_t C : {1, 8, 14, 28}) {
      CAPTURE(C);
      Tensor x = test::random_tensor(Shape{4, C, 9, 9}, 70, layout::nhwc, 0.0f, 1.0f);
      Tensor v = test::random_tensor(Shape{24, C, 3, 3}, 71, layout::nchw, 0.0f, 1.0f);
      const Tensor e = test::random_tensor(Shape{x.numel() + v.numel()}, 72, layout::nchw, -40.0f, 2.0f);
      for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = i % 17 == 0 ? 0.0f : x[i] * std::exp2(e[i]);
      for (std::int64_t i = 0; i < v.numel(); ++i) v[i] = v[i] * std::exp2(e[x.numel() + i]) * 1e-3f;
      x[1] = 1e-40f;  // below 2^-126
      v[1] = 1e-41f;
      const conv2d conv(v, std::nullopt, conv2d_params{{1, 1}, {1, 1}});
      if (conv.bf16_implementation(x.shape()).empty()) {
        MESSAGE("oneDNN has no bf16 convolution here");
        CHECK_THROWS_AS(conv.forward_bf16(nullptr, x.shape(), v), backend_error);
        continue;
      }
      std::vector<std::uint16_t> xb(static_cast<std::size_t>(x.numel()));
      const float x_max = detail::bf16_round(x.data(), x.numel(), xb.data(), active_isa());
      float v_max = 0.0f;
      for (std::int64_t i = 0; i < v.numel(); ++i) v_max = std::max(v_max, v[i]);
      Tensor exact, approx;
      conv.forward(x, exact);
      conv.forward_bf16(xb.data(), x.shape(), approx);
      exact = exact.to_layout(layout::nhwc);
      REQUIRE(approx.shape() == exact.shape());
      const auto b = detail::bf16_variance_bound(C * 9, v_max, x_max);
      CHECK(b.rel < 0.0042f);  // about 2^-8
      double worst = 0;
      for (std::int64_t i = 0; i < exact.numel(); ++i) {
        const double r = std::sqrt(double(exact[i]) + tiny), ra = std::sqrt(double(approx[i]) + tiny);
        const double allowed = double(b.rel) * ra + double(b.abs);
        worst = std::max(worst, std::abs(r - ra) / allowed);
      }
      CHECK(worst <= 1.0);
      CHECK(worst > 0.05);  // the bound is not vacuous: some roots use a good part of it
    }
  }

  TEST_CASE("the thin tiles' pair_conv estimate and chain_conv currents give the exact outputs, bit for bit") {
    // Layers of 1 and 3 input channels (a stem): every tile below 8 channels, so the estimate is
    // pair_conv's where the CPU has AVX-512 BF16, and the column currents chain_conv's on the
    // AVX-512 tier where the probe approves: 3x3 (stride 1 and 2, height dilation 2) and 5x5
    // windows, both source layouts, with and without a DAC, per-column and per-tile 8-bit ADCs,
    // two noise forms, two calls each; the outputs equal draw_every_read's on every tier, and
    // every tier's equal the first tier's (oneDNN's currents on the scalar and AVX2 tiers).
    using tile128 = CrossbarTile<float, 128, 32>;
    struct geometry_case {
      std::int64_t k, stride, pad, dh;
    };
    const isa_tier top = detail::lower(detected_isa(), detail::environment_isa_cap());
    for (const std::int64_t C : {1, 3})
      for (const geometry_case gc : {geometry_case{3, 1, 1, 1}, geometry_case{3, 2, 1, 1}, geometry_case{5, 1, 2, 1},
                                     geometry_case{3, 1, 2, 2}}) {
        const Tensor w = test::random_tensor(Shape{40, C, gc.k, gc.k}, 63);
        conv2d_params geometry;
        geometry.stride = {gc.stride, gc.stride};
        geometry.padding = {gc.pad, gc.pad};
        geometry.dilation = {gc.dh, 1};
        // The f32 convolutions whose order the chain was seen to follow for these shapes (oneDNN 2.7
        // here; capped at AVX2 too). Elsewhere the probe decides, and only the outputs are checked.
        const std::string impl = conv2d(w, std::nullopt, geometry).implementation(Shape{3, C, 13, 12});
        const bool chain_order_known = impl.rfind("brgconv:avx512_core", 0) == 0 || impl == "jit:avx2";
        for (const layout l : {layout::nhwc, layout::nchw}) {
          const Tensor src = test::random_tensor(Shape{3, C, 13, 12}, 64, l, 0.0f, 1.0f);
          std::vector<std::vector<Tensor>> first_tier;  // each case's outputs on the first tier
          for (const isa_tier tier : {isa_tier::scalar, isa_tier::avx2, isa_tier::avx512}) {
            if (tier > top) continue;
            const isa_guard cap(tier);
            std::size_t case_index = 0;
            for (const bool dac : {true, false})
              for (const bool per_column : {true, false})
                for (const read_noise noise : {read_noise::proportional(0.05), read_noise::cmo_reram(seconds{86400.0})}) {
                  CAPTURE(C);
                  CAPTURE(gc.k);
                  CAPTURE(gc.stride);
                  CAPTURE(gc.dh);
                  CAPTURE(l == layout::nhwc);
                  CAPTURE(to_string(tier));
                  CAPTURE(dac);
                  CAPTURE(per_column);
                  CAPTURE(noise.value);
                  periphery_config p = realistic_periphery();
                  p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.9, per_column};
                  if (!dac) p.dac.reset();
                  p.read = noise;
                  const auto make = [&] {
                    basic_analog_conv2d<tile128> layer(w, std::nullopt, geometry, options());
                    REQUIRE(layer.array().tile_grid_rows() == 1);
                    REQUIRE(layer.array().tile_grid_cols() == 2);
                    return layer;
                  };
                  const auto fast = read_twice(make, src, p, false), exact = read_twice(make, src, p, true);
                  CHECK(fast.ys == exact.ys);
                  if (case_index == first_tier.size()) first_tier.push_back(fast.ys);
                  CHECK(fast.ys == first_tier[case_index++]);
                  // chain_conv's currents where it is fast, for channels-last inputs (one channel is either)
                  const bool channels_last = dac || l == layout::nhwc || C == 1;
                  if (!detail::chain_conv_fast(tier)) {
                    CHECK(fast.chained == 0);
                  } else if (channels_last && gc.dh == 1 && chain_order_known) {
                    CHECK(fast.chained == 2);
                    CHECK(exact.chained == 2);
                  } else {
                    CHECK(fast.chained <= 2);  // the probe decides (no with height dilation on oneDNN 2.7)
                  }
                  const std::size_t estimated = fast.estimated;
                  // Without a DAC a channels-first source is squared as it is (channels-first): no estimate.
                  const bool nhwc_squares = dac || l == layout::nhwc;
                  if (!detail::pair_conv_available(tier)) {
                    CHECK(estimated == 0);
                  } else if (nhwc_squares && gc.dh == 1 && chain_order_known) {
                    CHECK(estimated == 2);  // both columns of tiles, one source shape
                  } else {
                    // oneDNN 2.7's f32 convolution dilated along the height sums 1-3 channels in
                    // another order than the chain's here: the probe declines, the f32 one runs
                    // (and an f32 convolution not named above may do the same)
                    CHECK(estimated <= 2);
                  }
                }
          }
        }
      }
  }

  TEST_CASE("pair_conv's read variances keep within bf16_variance_bound of the f32 ones") {
    // rimc's own bf16 convolution (the estimate below 8 channels per tile): 1 to 7 channels, 1x1
    // to 5x5 windows, strides, padding, height dilation, 1 to 40 columns, inputs and variances
    // over many magnitudes (zeros and values below 2^-126 among them). Every output is checked
    // three times: tightly against the same sum in double of the bf16-rounded operands (so a
    // misplaced input or weight fails), against bf16_variance_bound from the f32 convolution's
    // root, and bit for bit against pair_conv_pixels one pixel at a time (the register-blocked
    // rows at stride 1 with 3 x 3 windows and 1-3 channels: rows of 9 to 32 pixels, one to two
    // runs; 7 pixels take the eight-at-a-time form).
    const float tiny = std::numeric_limits<float>::min();
    const isa_tier tier = active_isa();
    {  // The input's largest square; a NaN met before larger values stays (the bound then decides nothing).
      std::vector<float> sq(2 * 3 * 4, 1.0f);
      sq[20] = 5.0f;
      const auto g = detail::pair_geometry(2, 1, 3, 4, 3, 4, 1, 1, 1, 1, 1, 0, 0, 1);
      std::vector<std::uint16_t> padded;
      CHECK(detail::pair_conv_input(g, sq.data(), 3, 4, 0, 0, padded, tier) == 5.0f);
      sq[2] = std::numeric_limits<float>::quiet_NaN();
      CHECK(std::isnan(detail::pair_conv_input(g, sq.data(), 3, 4, 0, 0, padded, tier)));
      CHECK(padded.size() == static_cast<std::size_t>(2 * 3 * (4 + 2)));
    }
    struct pair_case {
      std::int64_t C, k, stride, pad, dh, cols, H, W;
    };
    int cases = 0;
    for (const pair_case pc : {pair_case{1, 3, 1, 1, 1, 16, 9, 9}, pair_case{3, 3, 1, 1, 1, 16, 10, 13},
                               pair_case{3, 3, 2, 0, 1, 40, 11, 9}, pair_case{2, 5, 1, 2, 2, 7, 12, 11},
                               pair_case{7, 3, 2, 1, 1, 33, 9, 10}, pair_case{5, 1, 1, 0, 1, 16, 6, 7},
                               pair_case{4, 2, 1, 1, 1, 1, 5, 8}, pair_case{6, 3, 1, 2, 2, 20, 9, 9},
                               pair_case{1, 3, 1, 1, 1, 16, 5, 28}, pair_case{3, 3, 1, 1, 2, 16, 6, 32},
                               pair_case{2, 3, 1, 1, 1, 40, 4, 17}, pair_case{3, 3, 1, 0, 1, 5, 4, 9},
                               pair_case{1, 3, 1, 0, 1, 3, 5, 9}}) {
      CAPTURE(pc.C);
      CAPTURE(pc.k);
      CAPTURE(pc.stride);
      CAPTURE(pc.pad);
      CAPTURE(pc.dh);
      CAPTURE(pc.cols);
      const std::int64_t C = pc.C, k = pc.k, N = 2, KK = k * k, R = C * KK;
      Tensor x = test::random_tensor(Shape{N, C, pc.H, pc.W}, 80 + cases, layout::nhwc, 0.0f, 1.0f);
      Tensor m = test::random_tensor(Shape{R, pc.cols}, 81 + cases, layout::nchw, 0.0f, 1.0f);  // the tile's [R, cols]
      const Tensor e = test::random_tensor(Shape{x.numel() + m.numel()}, 82 + cases, layout::nchw, -40.0f, 2.0f);
      for (std::int64_t i = 0; i < x.numel(); ++i) x[i] = i % 13 == 0 ? 0.0f : x[i] * std::exp2(e[i]);
      for (std::int64_t i = 0; i < m.numel(); ++i) m[i] = i % 11 == 0 ? 0.0f : m[i] * std::exp2(e[x.numel() + i]) * 1e-3f;
      x[1] = 1e-40f;  // below 2^-126
      m[2] = 1e-41f;
      ++cases;
      conv2d_params cp{{pc.stride, pc.stride}, {pc.pad, pc.pad}};
      cp.dilation = {pc.dh, 1};
      // The f32 convolution of the same values (weights [cols, C, k, k] from the tile's rows).
      Tensor w = Tensor::empty(Shape{pc.cols, C, k, k});
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t j = 0; j < pc.cols; ++j) w[j * R + r] = m[r * pc.cols + j];
      const conv2d conv(w, std::nullopt, cp);
      Tensor exact;
      conv.forward(x, exact);
      exact = exact.to_layout(layout::nhwc);
      const auto g = detail::pair_geometry(N, C, pc.H, pc.W, exact.dim(2), exact.dim(3), pc.cols, k, k, pc.stride,
                                           pc.stride, pc.pad, pc.pad, pc.dh);
      const auto wp = detail::pair_conv_weights(m.data(), pc.cols, C, k, k);
      std::vector<std::uint16_t> xp;
      const float x_max = detail::pair_conv_input(g, x.data(), pc.H, pc.W, pc.pad, pc.pad, xp, tier);
      std::vector<float> got(static_cast<std::size_t>(exact.numel()), -1.0f);
      if (!detail::pair_conv_available(tier)) {
        MESSAGE("no AVX-512 BF16 dot products here");
        CHECK_THROWS_WITH_AS(detail::pair_conv(g, xp.data(), wp.data(), got.data(), tier),
                             "[rimc.value_error] pair_conv: this CPU or tier has no AVX-512 BF16 dot products",
                             value_error);
        continue;
      }
      detail::pair_conv(g, xp.data(), wp.data(), got.data(), tier);
      float v_max = 0.0f;
      for (std::int64_t i = 0; i < m.numel(); ++i) v_max = std::max(v_max, m[i]);
      CHECK(x_max == *std::max_element(x.data(), x.data() + x.numel()));
      const auto b = detail::bf16_variance_bound(R, v_max, x_max);
      const auto bf = [](float v) {
        std::uint16_t h = 0;
        detail::bf16_round_body(&v, 1, &h);
        return static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16));
      };
      const auto OH = exact.dim(2), OW = exact.dim(3);
      double worst = 0;
      std::int64_t loose = 0;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t oh = 0; oh < OH; ++oh)
          for (std::int64_t ow = 0; ow < OW; ++ow)
            for (std::int64_t j = 0; j < pc.cols; ++j) {
              double sum = 0, flushed = 0;  // the bf16 operands' products in double; what flushing can lose
              for (std::int64_t c = 0; c < C; ++c)
                for (std::int64_t kh = 0; kh < k; ++kh)
                  for (std::int64_t kw = 0; kw < k; ++kw) {
                    const std::int64_t ih = oh * pc.stride - pc.pad + kh * pc.dh, iw = ow * pc.stride - pc.pad + kw;
                    if (ih < 0 || ih >= pc.H || iw < 0 || iw >= pc.W) continue;
                    const double xv = bf(x[((n * pc.H + ih) * pc.W + iw) * C + c]);
                    const double wv = bf(m[(c * KK + kh * k + kw) * pc.cols + j]);
                    sum += xv * wv;
                    flushed += 0x1p-126 * (1 + xv + wv);
                  }
              const std::int64_t o = ((n * OH + oh) * OW + ow) * pc.cols + j;
              const double a = got[static_cast<std::size_t>(o)];
              if (std::abs(a - sum) > static_cast<double>(R) * 0x1p-24 * sum + 3 * flushed) ++loose;
              const double r = std::sqrt(double(exact[o]) + tiny), ra = std::sqrt(a + tiny);
              worst = std::max(worst, std::abs(r - ra) / (double(b.rel) * ra + double(b.abs)));
            }
      CHECK(loose == 0);
      CHECK(worst <= 1.0);
      std::vector<float> one(got.size(), -1.0f);
      const std::int64_t step = g.sw * g.C, wblock = g.KH * g.pairs * 16;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t oh = 0; oh < OH; ++oh)
          for (std::int64_t ow = 0; ow < OW; ++ow)
            for (std::int64_t cb = 0; cb * 16 < pc.cols; ++cb) {
              const auto lanes = static_cast<__mmask16>(pc.cols - cb * 16 >= 16 ? 0xFFFFu : (1u << (pc.cols - cb * 16)) - 1u);
              detail::avx512::pair_conv_pixels<1>(g, xp.data() + (n * g.Hp + oh * g.sh) * g.row + ow * step, step,
                                                  wp.data() + cb * wblock, lanes,
                                                  one.data() + ((n * OH + oh) * OW + ow) * pc.cols + cb * 16);
            }
      CHECK(std::memcmp(one.data(), got.data(), got.size() * sizeof(float)) == 0);
    }
  }

  TEST_CASE("a deployment calibrates every ADC and DAC in one forward pass, each on its own layer's input") {
    network net = test::small_conv_net(11);
    analog_options opt = options();
    opt.periphery = realistic_periphery();
    opt.periphery.read = read_noise::none();  // so that a second forward reads what the calibration pass read
    auto chip = deploy_analog(net, opt);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 12);
    const auto before = net.layer_ptr("c2");
    chip.calibrate_adc(net, images);
    CHECK(net.layer_ptr("c2") == before);  // every node has its own layer back
    // Layer c2's ranges are those of a twin calibrated on c2's input, which the calibrated c1 produces.
    std::map<std::string, Tensor> got;
    (void)net.forward(images, {"r1"}, got);
    network twin_net = test::small_conv_net(11);
    auto twin = deploy_analog(twin_net, opt);
    twin.conv("c2").calibrate_adc(got.at("r1"));
    CHECK(chip.conv("c2").array().adc_ranges() == twin.conv("c2").array().adc_ranges());
    CHECK(chip.conv("c2").array().periphery().dac->range == twin.conv("c2").array().periphery().dac->range);
    CHECK(chip.conv("c1").array().periphery().dac->range > 0);
    CHECK(std::isfinite(net.forward(images)[0]));
    // A network that does not run this deployment's layers is refused, and keeps its own.
    network other = test::small_conv_net(11);
    CHECK_THROWS_WITH_AS(chip.calibrate_adc(other, images),
                         "[rimc.value_error] analog_deployment::calibrate_adc: node 'c1' of this network does not run "
                         "this deployment's layer",
                         value_error);
    CHECK_FALSE(other.layer("c1").is_analog());
  }

  TEST_CASE("feature KD widens each layer's ADC and DAC ranges to what its calibrated input needs, unless told not to") {
    const network teacher = test::small_conv_net(13);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 14);
    for (const bool again : {true, false}) {
      CAPTURE(again);
      network student = test::small_conv_net(13);
      analog_options opt = options();
      opt.periphery = realistic_periphery(1.5);
      auto chip = deploy_analog(student, opt);
      const Tensor reference = test::random_tensor(Shape{6, 2, 10, 10}, 15);  // other reference images
      chip.calibrate_adc(student, reference);
      chip.drift_to(relative_drift{}, drift_level{0.2}, 16);
      const auto c1_ranges = chip.conv("c1").array().adc_ranges();
      const auto fc_ranges = chip.linear("fc").array().adc_ranges();
      calibration_config cfg;
      cfg.steps = 5;
      cfg.recalibrate_adc = again;
      const auto r = calibrate_feature_kd(teacher, student, images, cfg);
      CHECK(r.rram_writes == 0);
      if (!again) {
        CHECK(chip.conv("c1").array().adc_ranges() == c1_ranges);
        CHECK(chip.linear("fc").array().adc_ranges() == fc_ranges);
        continue;
      }
      // c1's input is the images themselves: its ranges are those of widening the reference ones on them.
      network twin_net = test::small_conv_net(13);
      auto twin = deploy_analog(twin_net, opt);
      twin.calibrate_adc(twin_net, reference);
      twin.drift_to(relative_drift{}, drift_level{0.2}, 16);
      twin.conv("c1").calibrate_adc(images, range_update::widen);
      CHECK(chip.conv("c1").array().adc_ranges() == twin.conv("c1").array().adc_ranges());
      CHECK_FALSE(chip.linear("fc").array().adc_ranges() == fc_ranges);
      for (std::size_t i = 0; i < fc_ranges.size(); ++i) CHECK(chip.linear("fc").array().adc_ranges()[i] >= fc_ranges[i]);
    }
  }

  TEST_CASE("calibrate_adcs sets every analog layer's ranges as the deployment's own pass does, adapters or not") {
    analog_options opt = options();
    opt.periphery = realistic_periphery();
    opt.periphery.read = read_noise::none();
    const Tensor images = test::random_tensor(Shape{5, 2, 10, 10}, 20);
    network a = test::small_conv_net(21), b = test::small_conv_net(21);
    auto chip_a = deploy_analog(a, opt);
    auto chip_b = deploy_analog(b, opt);
    chip_a.calibrate_adc(a, images);
    calibrate_adcs(b, images);
    for (const char* name : {"c1", "c2"})
      CHECK(chip_a.conv(name).array().adc_ranges() == chip_b.conv(name).array().adc_ranges());
    CHECK(chip_a.linear("fc").array().adc_ranges() == chip_b.linear("fc").array().adc_ranges());
    Tensor bad = images;
    bad[0] = std::nanf("");
    CHECK_THROWS_WITH_AS(calibrate_adcs(b, bad),
                         "[rimc.value_error] calibrate_adcs: images: element 0 of tensor [5, 2, 10, 10] is nan",
                         value_error);
  }

  TEST_CASE("backprop sets the ranges again every k steps on the calibration images, or never with k = 0") {
    const network teacher = test::small_conv_net(22);
    const Tensor images = test::random_tensor(Shape{6, 2, 10, 10}, 23);
    const std::vector<std::int32_t> labels{0, 1, 2, 3, 0, 1};
    for (const int every : {0, 5}) {
      CAPTURE(every);
      network student = test::small_conv_net(22);
      analog_options opt = options();
      opt.periphery = realistic_periphery(1.5);
      auto chip = deploy_analog(student, opt);
      chip.calibrate_adc(student, test::random_tensor(Shape{6, 2, 10, 10}, 24));
      chip.drift_to(relative_drift{}, drift_level{0.2}, 25);
      const auto fc_ranges = chip.linear("fc").array().adc_ranges();
      backprop_config cfg;
      cfg.steps = 6;
      cfg.recalibrate_adc_every = every;
      const auto r = calibrate_backprop(teacher, student, images, labels, cfg);
      CHECK(r.rram_writes == 0);
      CHECK((chip.linear("fc").array().adc_ranges() == fc_ranges) == (every == 0));
    }
    backprop_config bad;
    bad.recalibrate_adc_every = -1;
    CHECK_THROWS_WITH_AS(bad.validate(), "[rimc.value_error] backprop_config: recalibrate_adc_every must be >= 0, got -1",
                         value_error);
  }

  TEST_CASE("averaging R reads of a noisy layer divides the read noise's variance by R") {
    const Tensor w = test::random_tensor(Shape{16, 6, 3, 3}, 17);
    periphery_config p;
    p.read = read_noise::proportional(0.1);
    p.noise_seed = 18;
    const auto one_conv = [&](const analog_options& opt) {
      network net;
      const int x = net.input(Shape{6, 8, 8});
      net.conv2d("c", x, 16, 3, conv2d_params{{1, 1}, {1, 1}}, false);
      net.set_parameter("c", "weight", w);
      (void)deploy_analog(net, opt);
      return net;
    };
    analog_options noisy = options();
    noisy.periphery = p;
    const network net = one_conv(noisy), exact_net = one_conv(options());
    const Tensor src = test::random_tensor(Shape{4, 6, 8, 8}, 19);
    Tensor exact;
    exact_net.layer("c").forward(src, exact);  // the noise-free read
    exact = exact.to_layout(layout::nhwc);
    const auto noise_power = [&](int reads) {
      Tensor y;
      net.layer("c").forward(src, y);
      y = y.to_layout(layout::nhwc);
      if (reads > 1) detail::average_reads(net.layer("c"), src, reads, y);
      double s = 0;
      for (std::int64_t i = 0; i < y.numel(); ++i) s += (double(y[i]) - exact[i]) * (double(y[i]) - exact[i]);
      return s / static_cast<double>(y.numel());
    };
    const double one = noise_power(1), sixteen = noise_power(16);
    CHECK(one > 0);
    CHECK(one / sixteen > 16 * 0.7);
    CHECK(one / sixteen < 16 * 1.4);
    // On an exact chip more reads change nothing.
    Tensor y4 = exact;
    detail::average_reads(exact_net.layer("c"), src, 4, y4);
    CHECK(y4 == exact);
    calibration_config cfg;
    cfg.reads = 0;
    CHECK_THROWS_WITH_AS(cfg.validate(), "[rimc.value_error] calibration_config: reads must be >= 1, got 0", value_error);
  }
}

}  // namespace unit_realistic_chip
