// Tests of the analog layers (analog_conv2d, analog_linear): the
// effective-weight oneDNN path against the tile-exact path and the plain
// references, ADC error bounds, input gradients, drift, RRAM write counts,
// column gains, drift compensation and argument checks.

#include <rimc/core/parallel.hpp>
#include <rimc/crossbar.hpp>
#include <rimc/device.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_analog {

using namespace rimc;

namespace {

using small_tile = CrossbarTile<float, 128, 64>;  // 180 or 300 rows and 70 columns do not divide it

void check_relative(const Tensor& got, const Tensor& expected, double rtol) {
  const Tensor e = expected.to_layout(layout::nchw);
  const double scale = std::max(1e-30, double(e.vector().cwiseAbs().maxCoeff()));
  test::check_close(got, expected, rtol, rtol * scale);
}

/// Effective weights [O, K] transposed from the array readback [K, O], times the gain.
Tensor from_array(const Tensor& ko, const std::vector<float>& gain) {
  const auto K = ko.dim(0), O = ko.dim(1);
  Tensor ok(Shape{O, K});
  for (std::int64_t o = 0; o < O; ++o)
    for (std::int64_t k = 0; k < K; ++k) ok[o * K + k] = gain[static_cast<std::size_t>(o)] * ko[k * O + o];
  return ok;
}

/// Per output column: the largest ADC rounding error (half a step per tile and slice feeding it).
template <class A>
std::vector<double> adc_bound(const A& a, int bits) {
  const double steps = std::ldexp(1.0, bits - 1) - 1;
  std::vector<double> bound(static_cast<std::size_t>(a.cols()), 0.0);
  const auto& g = a.grid();
  const auto S = static_cast<std::size_t>(g.slices);
  for (std::size_t ti = 0; ti < a.tiles().size(); ++ti) {
    const auto& t = a.tiles()[ti];
    for (std::size_t s = 0; s < S; ++s)
      for (std::int64_t c = 0; c < t.cols(); ++c) {
        const auto o = static_cast<std::size_t>(t.col0() + c);
        bound[o] += a.scales()[o] * g.lm1 / g.q_max * g.place(static_cast<int>(s)) * a.adc_ranges()[ti * S + s] /
                    (2 * steps);
      }
  }
  return bound;
}

conv2d_params conv_params(std::int64_t stride, std::int64_t pad, bool relu) {
  conv2d_params p;
  p.stride = {stride, stride};
  p.padding = {pad, pad};
  p.relu = relu;
  return p;
}

analog_options noisy_options(std::uint64_t layer_id = 0) {
  analog_options opt;
  opt.device.noise = programming_noise::proportional(0.02);
  opt.program_seed = 5;
  opt.layer_id = layer_id;
  return opt;
}

}  // namespace

TEST_SUITE("analog") {
  TEST_CASE("analog linear: oneDNN on the effective weights equals the tile-exact path and the reference") {
    const Tensor w = test::random_tensor(Shape{70, 300}, 1);
    const Tensor b = test::random_tensor(Shape{70}, 2);
    for (bool relu : {false, true}) {
      CAPTURE(relu);
      basic_analog_linear<small_tile> layer(w, b, noisy_options(), relu);
      layer.drift_to(relative_drift{}, drift_level{0.2}, 3);
      CHECK_FALSE(layer.uses_tile_path());
      CHECK(layer.array().tile_grid_rows() == 3);
      CHECK(layer.array().tile_grid_cols() == 2);
      CHECK(layer.effective_weights() == from_array(layer.array().effective_weights(), layer.column_gain()));
      const Tensor x = test::random_tensor(Shape{17, 300}, 4);
      const Tensor expected = reference::linear(x, layer.effective_weights(), &b, relu);
      const Tensor fast = layer.forward(x);
      Tensor tiles;
      layer.forward_tiles(x, tiles);
      check_relative(fast, expected, 1e-5);
      check_relative(tiles, expected, 1e-5);
      // The drifted layer is not the trained one.
      const Tensor trained = reference::linear(x, w, &b, relu);
      CHECK(test::dot(fast, fast) > 0);
      CHECK_FALSE(fast == trained);
    }
  }

  TEST_CASE("analog conv2d: oneDNN on the effective weights equals the tile-exact path and the reference") {
    struct conv_case {
      const char* name;
      Shape src, weights;
      conv2d_params p;
    };
    const std::vector<conv_case> cases{
        {"3x3 same padding, K = 180", Shape{3, 20, 9, 9}, Shape{70, 20, 3, 3}, conv_params(1, 1, false)},
        {"3x3 stride 2 with relu, K = 144", Shape{2, 16, 11, 11}, Shape{40, 16, 3, 3}, conv_params(2, 1, true)},
        {"1x1 stride 2 shortcut", Shape{2, 32, 8, 8}, Shape{65, 32, 1, 1}, conv_params(2, 0, false)},
    };
    for (const auto& c : cases) {
      for (layout l : {layout::nchw, layout::nhwc}) {
        SUBCASE((std::string(c.name) + ", src " + std::string(to_string(l))).c_str()) {
          const Tensor w = test::random_tensor(c.weights, 5);
          const Tensor b = test::random_tensor(Shape{c.weights[0]}, 6);
          basic_analog_conv2d<small_tile> layer(w, b, c.p, noisy_options());
          layer.drift_to(presets::neurram_relaxation(), seconds{86400.0}, 7);
          const Tensor src = test::random_tensor(c.src, 8, l);
          const Tensor expected = reference::conv2d(src, layer.effective_weights(), &b, c.p);
          check_relative(layer.forward(src), expected, 1e-5);
          Tensor tiles;
          layer.forward_tiles(src, tiles);
          check_relative(tiles, expected, 1e-5);
          // And the same as a plain rimc::conv2d built on the effective weights.
          const conv2d plain(layer.effective_weights(), b, c.p);
          check_relative(layer.forward(src), plain.forward(src), 1e-6);
          CHECK(layer.params().stride == c.p.stride);
          CHECK(layer.bias().has_value());
        }
      }
    }
  }

  TEST_CASE("with an 8-bit ADC the analog conv2d stays within the quantisation bound of the ideal output") {
    const Tensor w = test::random_tensor(Shape{70, 20, 3, 3}, 9);
    basic_analog_conv2d<small_tile> layer(w, std::nullopt, conv_params(1, 1, false), noisy_options());
    layer.drift_to(relative_drift{}, drift_level{0.1}, 10);
    const Tensor src = test::random_tensor(Shape{4, 20, 9, 9}, 11, layout::nhwc);
    const Tensor ideal = layer.forward(src).to_layout(layout::nchw);
    periphery_config p;
    p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 100.0};
    layer.set_periphery(p);
    CHECK(layer.uses_tile_path());
    layer.calibrate_adc(src);
    const Tensor y = layer.forward(src).to_layout(layout::nchw);
    const auto bound = adc_bound(layer.array(), 8);
    double worst = 0, total = 0;
    for (std::int64_t n = 0; n < 4; ++n)
      for (std::int64_t o = 0; o < 70; ++o)
        for (std::int64_t i = 0; i < 81; ++i) {
          const auto idx = (n * 70 + o) * 81 + i;
          const double err = std::abs(double(y[idx]) - double(ideal[idx]));
          worst = std::max(worst, err / (bound[static_cast<std::size_t>(o)] + 1e-5 * std::abs(double(ideal[idx]))));
          total += err;
        }
    INFO("worst error / bound = ", worst);
    CHECK(worst <= 1.0);
    CHECK(total > 0);
    // forward on a non-ideal periphery is the tile path.
    Tensor tiles;
    layer.forward_tiles(src, tiles);
    CHECK(tiles == layer.forward(src));
  }

  TEST_CASE("conv tiles keep whole input channels and both tile kernels agree") {
    // 40 channels of 3x3 = 360 rows: 128-row tiles hold 14 channels (126 rows) each -> 3 row blocks.
    const Tensor w = test::random_tensor(Shape{70, 40, 3, 3}, 30);
    const Tensor b = test::random_tensor(Shape{70}, 31);
    device_config two_slices;
    two_slices.bits_per_cell = 4;
    two_slices.slices = 2;
    for (const auto& dev : {device_config{}, two_slices}) {
      analog_options opt = noisy_options();
      opt.device = dev;
      opt.device.noise = programming_noise::proportional(0.02);
      basic_analog_conv2d<small_tile> layer(w, b, conv_params(2, 1, true), opt);
      CHECK(layer.array().row_group() == 9);
      CHECK(layer.array().tile_grid_rows() == 3);
      CHECK(layer.array().tile(0, 0).rows() == 126);
      CHECK(layer.array().tile(2, 0).rows() == 108);
      layer.drift_to(presets::cmo_reram_drift(), seconds{3600.0}, 32);
      const Tensor src = test::random_tensor(Shape{5, 40, 10, 10}, 33, layout::nhwc);
      const Tensor expected = reference::conv2d(src, layer.effective_weights(), &b, layer.params());
      Tensor by_conv, by_gemm;
      layer.forward_tiles(src, by_conv, tile_kernel::conv);
      layer.forward_tiles(src, by_gemm, tile_kernel::gemm);
      check_relative(by_conv, expected, 1e-5);
      check_relative(by_gemm, expected, 1e-5);
      // With a fixed-range 8-bit DAC, an 8-bit ADC and output noise the two kernels see the same
      // quantised inputs and draw the same noise (same call count); they differ by float rounding,
      // and by one ADC step where that rounding moves a current across a step boundary.
      periphery_config p;
      p.dac = dac_config{8, dac_scaling::fixed, 1.0};
      p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.0};
      p.output_noise = 0.01;
      p.noise_seed = 34;
      auto noisy = [&](tile_kernel kernel) {  // a fresh layer: the noise draw depends on the call count
        basic_analog_conv2d<small_tile> twin(w, b, conv_params(2, 1, true), opt);
        twin.drift_to(presets::cmo_reram_drift(), seconds{3600.0}, 32);
        twin.set_periphery(p);
        twin.calibrate_adc(src);
        CHECK(twin.conv_kernel_exact());
        Tensor y;
        twin.forward_tiles(src, y, kernel);
        return std::make_pair(y, std::move(twin));
      };
      auto [after_conv, with_conv] = noisy(tile_kernel::conv);
      by_gemm = noisy(tile_kernel::gemm).first;
      const auto& calibrated = with_conv;
      const Tensor c = after_conv.to_layout(layout::nchw), g = by_gemm.to_layout(layout::nchw);
      const auto bound = adc_bound(calibrated.array(), 8);  // half a step per tile and slice
      const double floor = 1e-5 * double(c.vector().cwiseAbs().maxCoeff());
      const auto O = c.dim(1), HW = c.dim(2) * c.dim(3);
      std::int64_t stepped = 0;
      double worst = 0;
      for (std::int64_t i = 0; i < c.numel(); ++i) {
        const double d = std::abs(double(c[i]) - double(g[i]));
        stepped += d > floor;
        worst = std::max(worst, d / (2 * bound[static_cast<std::size_t>((i / HW) % O)] + floor));
      }
      CHECK(stepped < c.numel() / 50);
      CHECK(worst <= 1.0);
    }
  }

  TEST_CASE("the tile kernel is chosen by the periphery and the mapping") {
    const Tensor w = test::random_tensor(Shape{8, 4, 3, 3}, 35);
    analog_conv2d layer(w);
    CHECK(layer.conv_kernel_exact());
    periphery_config p = periphery_config::quantised(8, 8);  // per-vector abs-max DAC: rows, not elements
    layer.set_periphery(p);
    CHECK_FALSE(layer.conv_kernel_exact());
    const Tensor src = test::random_tensor(Shape{2, 4, 5, 5}, 36);
    layer.calibrate_adc(src);
    Tensor y;
    CHECK_THROWS_WITH_AS(layer.forward_tiles(src, y, tile_kernel::conv),
                         "[rimc.value_error] analog_conv2d: tile_kernel::conv needs a mapping without digital offset and "
                         "no DAC or one with a fixed or calibrated range",
                         value_error);
    p.dac->scaling = dac_scaling::calibrated;  // element-wise again
    layer.set_periphery(p);
    CHECK(layer.conv_kernel_exact());
    p.dac.reset();
    p.read = read_noise::constant(0.1);  // read noise: a second convolution gives each current's variance
    layer.set_periphery(p);
    CHECK(layer.conv_kernel_exact());
    basic_analog_conv2d<CrossbarTile<float, 256, 256, offset_mapping>> offset(w);
    CHECK_FALSE(offset.conv_kernel_exact());
    // Offset mapping runs the GEMM kernel, exactly.
    check_relative(
        [&] {
          Tensor t;
          offset.forward_tiles(src, t);
          return t;
        }(),
        reference::conv2d(src, offset.effective_weights(), nullptr, offset.params()), 1e-5);
  }

  TEST_CASE("noisy tile-exact convolutions are identical for any thread count") {
    const Tensor w = test::random_tensor(Shape{40, 30, 3, 3}, 37);
    const Tensor src = test::random_tensor(Shape{6, 30, 12, 12}, 38, layout::nhwc);
    for (auto kernel : {tile_kernel::conv, tile_kernel::gemm}) {
      auto run = [&](int threads) {
        const thread_count_guard g(threads);
        basic_analog_conv2d<small_tile> layer(w, std::nullopt, conv_params(1, 1, false), noisy_options());
        periphery_config p;
        p.adc = adc_config{6, adc_range_mode::percentile, 0.0, 99.9};
        p.output_noise = 0.02;
        p.noise_seed = 1;
        layer.set_periphery(p);
        layer.calibrate_adc(src);
        Tensor a, b;
        layer.forward_tiles(src, a, kernel);
        layer.forward_tiles(src, b, kernel);
        CHECK_FALSE(a == b);  // fresh noise per call
        return a;
      };
      CHECK(run(1) == run(2));
    }
  }

  TEST_CASE("the tile-exact convolution gives each image the same outputs however the batch is grouped") {
    // conv_tiles splits a batch into groups by its size (13 images of 8 x 8 x 40 outputs: four
    // groups of 3 or 4; one image: one group); each image's outputs must not depend on which
    // group, or how large a group, it went in. A fixed-range DAC, a calibrated ADC, three row
    // blocks of 14, 14 and 12 channels, bit for bit; then with read and output noise.
    const Tensor w = test::random_tensor(Shape{40, 40, 3, 3}, 41);
    const Tensor b = test::random_tensor(Shape{40}, 42);
    const Tensor src = test::random_tensor(Shape{13, 40, 8, 8}, 43, layout::nhwc);
    basic_analog_conv2d<small_tile> layer(w, b, conv_params(1, 1, true), noisy_options());
    layer.drift_to(relative_drift{}, drift_level{0.2}, 44);
    periphery_config p;
    p.dac = dac_config{8, dac_scaling::fixed, 1.0};
    p.adc = adc_config{8, adc_range_mode::percentile, 0.0, 99.0};
    layer.set_periphery(p);
    layer.calibrate_adc(src);
    REQUIRE(layer.conv_kernel_exact());
    CHECK(layer.array().tile_grid_rows() == 3);
    Tensor all;
    layer.forward_tiles(src, all, tile_kernel::conv);
    const Tensor y = all.to_layout(layout::nchw);
    const auto C = src.dim(1), HW = src.dim(2) * src.dim(3), per_image = y.numel() / src.dim(0);
    std::int64_t differing = 0;
    for (std::int64_t n = 0; n < src.dim(0); ++n) {
      Tensor one = Tensor::empty(Shape{1, C, src.dim(2), src.dim(3)}, layout::nhwc);
      std::copy_n(src.data() + src.offset(n, 0, 0, 0), C * HW, one.data());
      Tensor alone;
      layer.forward_tiles(one, alone, tile_kernel::conv);
      const Tensor a = alone.to_layout(layout::nchw);
      for (std::int64_t i = 0; i < per_image; ++i)
        differing += std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(y[n * per_image + i]);
    }
    CHECK(differing == 0);

    // With read and output noise: element (row r, column j) draws normal r C + j of its tile's
    // stream, so the first 13 images of a 26-image batch (four groups of 6 or 7) read what the
    // 13-image batch (groups of 3 or 4) reads, on twin layers at their first forward.
    p.read = read_noise::proportional(0.05);
    p.output_noise = 0.01;
    p.noise_seed = 45;
    Tensor twice = Tensor::empty(Shape{26, C, src.dim(2), src.dim(3)}, layout::nhwc);
    std::copy_n(src.data(), src.numel(), twice.data());
    std::copy_n(src.data(), src.numel(), twice.data() + src.numel());
    auto noisy = [&](const Tensor& batch) {
      basic_analog_conv2d<small_tile> twin(w, b, conv_params(1, 1, true), noisy_options());
      twin.drift_to(relative_drift{}, drift_level{0.2}, 44);
      twin.set_periphery(p);
      twin.calibrate_adc(src);
      Tensor out;
      twin.forward_tiles(batch, out, tile_kernel::conv);
      return out.to_layout(layout::nchw);
    };
    const Tensor thirteen = noisy(src), twenty_six = noisy(twice);
    CHECK_FALSE(thirteen == y);  // the noise moved some codes
    std::int64_t noisy_differing = 0;
    for (std::int64_t i = 0; i < thirteen.numel(); ++i)
      noisy_differing += std::bit_cast<std::uint32_t>(thirteen[i]) != std::bit_cast<std::uint32_t>(twenty_six[i]);
    CHECK(noisy_differing == 0);
  }

  TEST_CASE("input gradients go through the effective weights") {
    const Tensor w = test::random_tensor(Shape{30, 8, 3, 3}, 12);
    basic_analog_conv2d<small_tile> conv(w, std::nullopt, conv_params(2, 1, false), noisy_options());
    conv.drift_to(relative_drift{}, drift_level{0.2}, 13);
    const Shape src{2, 8, 9, 9};
    const Tensor dy = test::random_tensor(conv.output_shape(src), 14);
    check_relative(conv.backward_data(dy, src),
                   reference::conv2d_backward_data(dy, conv.effective_weights(), conv.params(), src), 1e-5);

    const Tensor lw = test::random_tensor(Shape{20, 150}, 15);
    basic_analog_linear<small_tile> lin(lw, std::nullopt, noisy_options());
    lin.drift_to(relative_drift{}, drift_level{0.2}, 16);
    const Tensor ldy = test::random_tensor(Shape{5, 20}, 17);
    Tensor expected(Shape{5, 150});
    reference::linear_backward_data(ldy.data(), 5, 20, lin.effective_weights().data(), 150, expected.data());
    check_relative(lin.backward_data(ldy), expected, 1e-5);
  }

  TEST_CASE("drift, reads and calibration never write RRAM cells and reprogramming does") {
    const Tensor w = test::random_tensor(Shape{16, 8, 3, 3}, 18);
    analog_conv2d layer(w, std::nullopt, conv_params(1, 1, false));
    const std::uint64_t cells = 16 * 72 * 2;
    CHECK(layer.rram_writes() == cells);
    const Tensor programmed = layer.effective_weights();
    const Tensor src = test::random_tensor(Shape{2, 8, 6, 6}, 19);
    layer.drift_to(presets::pcm_drift(40.0), seconds{1e6}, 20);
    CHECK_FALSE(layer.effective_weights() == programmed);
    (void)layer.forward(src);
    layer.set_periphery(periphery_config::quantised(8, 8));
    layer.calibrate_adc(src);
    (void)layer.forward(src);
    drift_compensation comp(compensation_kind::per_column);
    comp.record_reference(layer);
    comp.apply(layer);
    CHECK(layer.rram_writes() == cells);
    layer.reset_drift();
    layer.set_column_gain(std::vector<float>(16, 1.0f));
    CHECK(layer.effective_weights() == programmed);
    layer.reprogram(w, 1);
    CHECK(layer.rram_writes() == 2 * cells);
  }

  TEST_CASE("drift is reproducible per seed and independent between layer ids") {
    const Tensor w = test::random_tensor(Shape{40, 100}, 21);
    auto drifted = [&](std::uint64_t id, std::uint64_t seed, int threads) {
      const thread_count_guard g(threads);
      analog_linear l(w, std::nullopt, noisy_options(id));
      l.drift_to(relative_drift{}, drift_level{0.2}, seed);
      return l.effective_weights();
    };
    const Tensor a = drifted(0, 1, 1);
    CHECK(a == drifted(0, 1, 2));
    CHECK_FALSE(a == drifted(0, 2, 1));
    CHECK_FALSE(a == drifted(1, 1, 1));
  }

  TEST_CASE("column gains scale the effective weights and both forward paths") {
    const Tensor w = test::random_tensor(Shape{6, 40}, 22);
    const Tensor b = test::random_tensor(Shape{6}, 23);
    analog_linear layer(w, b);
    const Tensor before = layer.effective_weights();
    const std::vector<float> gain{1.0f, 2.0f, 0.5f, 1.0f, 3.0f, -1.0f};
    layer.set_column_gain(gain);
    CHECK(layer.column_gain() == gain);
    for (std::int64_t o = 0; o < 6; ++o)
      for (std::int64_t k = 0; k < 40; ++k)
        CHECK(layer.effective_weights()[o * 40 + k] == gain[static_cast<std::size_t>(o)] * before[o * 40 + k]);
    const Tensor x = test::random_tensor(Shape{9, 40}, 24);
    Tensor tiles;
    layer.forward_tiles(x, tiles);
    check_relative(layer.forward(x), reference::linear(x, layer.effective_weights(), &b), 1e-5);
    check_relative(tiles, reference::linear(x, layer.effective_weights(), &b), 1e-5);
    // A rank-4 source is flattened channels-first, in either layout.
    const Tensor x4 = test::random_tensor(Shape{3, 10, 2, 2}, 25, layout::nhwc);
    Tensor x2 = x4.to_layout(layout::nchw);
    x2.reshape(Shape{3, 40});
    layer.forward_tiles(x4, tiles);
    check_relative(tiles, layer.forward(x2), 1e-5);
  }

  TEST_CASE("global drift compensation undoes a uniform conductance decay, per-column does no worse") {
    const Tensor w = test::random_tensor(Shape{64, 16, 3, 3}, 26);
    analog_options opt;
    opt.device = presets::pcm_device(25.0);
    opt.device.noise = programming_noise::none();
    auto error_to = [&](const Tensor& a) {
      double e = 0;
      for (std::int64_t i = 0; i < a.numel(); ++i) e += std::pow(double(a[i]) - double(w[i]), 2);
      return std::sqrt(e);
    };
    double errors[3]{};
    for (auto kind : {compensation_kind::global, compensation_kind::per_column}) {
      analog_conv2d layer(w, std::nullopt, conv_params(1, 1, false), opt);
      drift_compensation comp(kind);
      CHECK_THROWS_WITH_AS((void)comp.gains(layer),
                           "[rimc.value_error] drift_compensation: no reference read recorded (call record_reference "
                           "first)",
                           value_error);
      comp.record_reference(layer);
      for (float g : comp.gains(layer)) CHECK(g == doctest::Approx(1.0f).epsilon(1e-5));
      layer.drift_to(presets::pcm_drift(25.0), seconds{86400.0}, 27);
      errors[0] = error_to(layer.effective_weights());
      comp.apply(layer);
      errors[kind == compensation_kind::global ? 1 : 2] = error_to(layer.effective_weights());
      CHECK(layer.column_gain()[0] > 1.2f);  // (1 day / 20 s)^0.05 or more
    }
    INFO("drifted ", errors[0], ", global ", errors[1], ", per column ", errors[2]);
    CHECK(errors[1] < 0.3 * errors[0]);
    CHECK(errors[2] <= errors[1] * 1.05);
  }

  TEST_CASE("invalid layer arguments throw with a message naming them") {
    const Tensor w = test::random_tensor(Shape{4, 2, 3, 3}, 28);
    conv2d_params grouped;
    grouped.groups = 2;
    CHECK_THROWS_WITH_AS(analog_conv2d(w, std::nullopt, grouped), "[rimc.value_error] analog_conv2d: groups must be 1, got 2",
                         value_error);
    CHECK_THROWS_WITH_AS(analog_conv2d(w, Tensor(Shape{3})),
                         "[rimc.shape_error] analog_conv2d: bias [3] does not match 4 outputs", shape_error);
    CHECK_THROWS_WITH_AS(analog_linear(Tensor(Shape{4, 2, 3})),
                         "[rimc.shape_error] analog_linear: weights must be rank 2 [O, K], got [4, 2, 3]", shape_error);
    analog_options bad;
    bad.device.g_min_us = 50;
    CHECK_THROWS_WITH(analog_linear(Tensor(Shape{2, 2}), std::nullopt, bad),
                      "[rimc.value_error] device_config: g_min_us (50) must be < g_max_us (40)");
    analog_linear l(Tensor(Shape{2, 3}));
    CHECK_THROWS_WITH_AS(l.set_column_gain(std::vector<float>{1.0f}),
                         "[rimc.shape_error] analog_linear::set_column_gain: 1 gains given for 2 output columns",
                         shape_error);
    CHECK_THROWS_WITH(l.set_column_gain(std::vector<float>{1.0f, std::numeric_limits<float>::quiet_NaN()}),
                      "[rimc.value_error] analog_linear::set_column_gain: gain 1 is nan");
    CHECK_THROWS_WITH(l.drift_to(relative_drift{}, drift_level{-0.5}, 1), "[rimc.value_error] relative_drift: rho must be >= 0, got -0.5");
    CHECK_THROWS_WITH_AS((void)l.forward(Tensor(Shape{2, 4})),
                         "[rimc.shape_error] linear: src [2, 4] does not give 3 features per row for weights [2, 3]",
                         shape_error);
    Tensor nan_w(Shape{2, 3});
    nan_w[4] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(analog_linear{nan_w}, "[rimc.value_error] analog_linear: weights: element 4 of tensor [2, 3] is nan");
    Tensor inf_w = w;
    inf_w[7] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(analog_conv2d{inf_w}, "[rimc.value_error] analog_conv2d: weights: element 7 of tensor [4, 2, 3, 3] is inf");
  }
}

}  // namespace unit_analog
