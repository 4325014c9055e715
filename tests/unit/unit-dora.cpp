// Tests of rimc::dora_adapter: identity at init, the factorised forward
// against the materialised W', hand-written gradients against finite
// differences (double) and against PyTorch autograd, the deploy form, and
// invalid settings.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/dora_reference.hpp>
#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/kernels/reference.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_dora {

using namespace rimc;
using reference::dmat;
using reference::dvec;

namespace {

using test::to_dmat;

/// A frozen digital layer (weights w0, optional bias) and a DoRA adapter on it.
struct adapted {
  std::shared_ptr<layer> base;
  dora_adapter a;
  Tensor layer_out;  ///< the base layer's last output (forward's cache refers to it)

  adapted(std::shared_ptr<layer> b, const dora_config& cfg) : base(std::move(b)), a(*base, cfg) {}
  /// y = the adapted output of x; the cache (if any) refers to x and layer_out.
  void forward(const Tensor& x, Tensor& y, dora_cache* cache = nullptr) {
    base->forward(x, layer_out);
    if (layer_out.rank() == 4) layer_out = layer_out.to_layout(layout::nhwc);
    a.forward(*base, x, layer_out, y, cache);
  }
};

std::shared_ptr<layer> digital(const Tensor& w0, const Tensor* bias, const conv2d_params& p, bool conv) {
  std::optional<Tensor> b = bias ? std::optional<Tensor>(*bias) : std::nullopt;
  if (conv) return std::make_shared<digital_conv2d>(w0, b, p);
  return std::make_shared<digital_linear>(w0, b);
}

/// The adapter's current parameters as a double-precision reference problem.
reference::dora_params<double> params_of(const dora_adapter& a, const layer& base, const Tensor* bias) {
  reference::dora_params<double> p;
  p.w0 = to_dmat(base.effective_weights(), a.out_features());
  p.a = to_dmat(a.lora_A(), a.rank());
  p.b = to_dmat(a.lora_B(), a.out_features());
  p.m = a.magnitude().vector().cast<double>();
  if (bias) p.bias = bias->vector().cast<double>();
  p.scale = a.config().scale();
  return p;
}

/// Input rows for the reference: x itself for linear, im2col(x) for conv.
dmat<double> rows_of(const dora_adapter& a, const Tensor& x) {
  if (!a.is_conv()) return to_dmat(x, x.dim(0));
  const Tensor xs = x.to_layout(layout::nchw);
  const Shape w = a.base_weight_shape();
  const Shape out = conv2d_output_shape(x.shape(), w, a.conv_params());
  const auto P = out[0] * out[2] * out[3];
  Tensor cols(Shape{P, a.fan_in()});
  reference::im2col(xs.data(), x.shape(), w, a.conv_params(), cols.data());
  return cols.matrix().cast<double>();
}

/// A reference output [P, O] as a tensor shaped like the adapter's output.
Tensor as_output(const dmat<double>& y, const Shape& shape) {
  Tensor t = Tensor::empty(shape, shape.rank() == 4 ? layout::nhwc : layout::nchw);
  t.matrix(y.rows(), y.cols()) = y.cast<float>();
  return t;
}

/// Random parameters away from the init (m perturbed, B non-zero).
void perturb(adapted& l, std::uint64_t seed) {
  dora_adapter& a = l.a;
  Tensor m = a.magnitude(), A = a.lora_A(), B = test::random_tensor(a.lora_B().shape(), seed, layout::nchw, -0.3f, 0.3f);
  for (std::int64_t o = 0; o < m.numel(); ++o) m[o] *= 1.0f + 0.4f * static_cast<float>(counter_rng(seed, 1).uniform(o));
  a.set_parameters(*l.base, m, A, B);
}

struct layer_case {
  const char* name;
  bool conv;
  Shape x, w;
  conv2d_params p;
  std::int64_t rank;
};

std::vector<layer_case> layer_cases() {
  conv2d_params s2;
  s2.stride = {2, 2};
  s2.padding = {1, 1};
  return {
      {"linear, batch 4", false, Shape{4, 13}, Shape{6, 13}, {}, 3},
      {"linear on a flattened image", false, Shape{3, 2, 3, 2}, Shape{5, 12}, {}, 2},
      {"conv 3x3 stride 2 padding 1, non-square input, batch 3", true, Shape{3, 4, 9, 7}, Shape{6, 4, 3, 3}, s2, 2},
      {"conv 1x1", true, Shape{2, 8, 5, 5}, Shape{4, 8, 1, 1}, {}, 4},
      {"conv 3x3 stride 2, rank 8 (oneDNN low-rank path)", true, Shape{2, 4, 6, 5}, Shape{10, 4, 3, 3}, s2, 8},
  };
}

/// The layer of case c (bias from seed 2 unless `no_bias`) with an adapter of `mode`.
adapted make_adapter(const layer_case& c, norm_mode mode, std::uint64_t seed = 3, bool no_bias = false) {
  dora_config cfg;
  cfg.rank = c.rank;
  cfg.alpha = 2.0 * static_cast<double>(c.rank);
  cfg.norm = mode;
  cfg.seed = seed;
  const Tensor w0 = test::random_tensor(c.w, seed + 10, layout::nchw, -0.5f, 0.5f);
  const Tensor bias = test::random_tensor(Shape{c.w[0]}, 2);
  return adapted(digital(w0, no_bias ? nullptr : &bias, c.p, c.conv), cfg);
}

}  // namespace

TEST_SUITE("dora") {
  TEST_CASE("at init the adapted layer reproduces the base layer exactly") {
    for (const auto& c : layer_cases()) {
      SUBCASE(c.name) {
        adapted l = make_adapter(c, norm_mode::detached);
        const dora_adapter& a = l.a;
        CHECK(a.lora_B().vector().isZero(0));
        const Tensor g = a.gamma();
        for (float v : g.values()) REQUIRE(v == 1.0f);
        // A is kaiming-uniform with bound 1/sqrt(fan_in), as PEFT initialises it.
        const float bound = 1.0f / std::sqrt(static_cast<float>(a.fan_in()));
        CHECK(a.lora_A().vector().cwiseAbs().maxCoeff() <= bound);
        CHECK(a.lora_A().vector().cwiseAbs().maxCoeff() > 0.5f * bound);
        const Tensor x = test::random_tensor(c.x, 1);
        Tensor y;
        l.forward(x, y);
        // gamma = 1: (W0 x + b - b) + b, the layer's own output to rounding of the bias round trip.
        const Tensor zr = l.layer_out.to_layout(y.memory_layout());
        const Tensor& bias = *l.base->bias();
        const auto O = c.w[0];
        for (std::int64_t i = 0; i < y.numel(); ++i) REQUIRE(y[i] == (zr[i] - bias[i % O]) + bias[i % O]);
      }
    }
  }

  TEST_CASE("the factorised forward equals the materialised W' for random m, A, B") {
    for (const auto& c : layer_cases()) {
      SUBCASE(c.name) {
        adapted l = make_adapter(c, norm_mode::detached);
        perturb(l, 5);
        const dora_adapter& a = l.a;
        const Tensor x = test::random_tensor(c.x, 1);
        Tensor y;
        l.forward(x, y);
        const auto ref = reference::dora_forward(rows_of(a, x), params_of(a, *l.base, l.base->bias()));
        test::check_close(y, as_output(ref, y.shape()), 1e-5, 1e-5);
        // The norms computed from W0 A^T and A A^T equal ||W0 + s B A||.
        const dvec<double> n = reference::dora_norms(params_of(a, *l.base, nullptr));
        for (std::int64_t o = 0; o < a.out_features(); ++o) CHECK(a.norms()[o] == doctest::Approx(n[o]).epsilon(1e-6));
      }
    }
  }

  TEST_CASE("reference gradients match central differences in double, both norm modes") {
    for (const auto& c : layer_cases()) {
      for (norm_mode mode : {norm_mode::detached, norm_mode::exact}) {
        SUBCASE((std::string(c.name) + (mode == norm_mode::exact ? ", exact norm" : ", detached norm")).c_str()) {
          adapted l = make_adapter(c, mode);
          perturb(l, 7);
          const dora_adapter& a = l.a;
          const auto p0 = params_of(a, *l.base, l.base->bias());
          const Tensor x = test::random_tensor(c.x, 1);
          const dmat<double> X = rows_of(a, x);
          const bool exact = mode == norm_mode::exact;
          const std::optional<dvec<double>> frozen_n =
              exact ? std::nullopt : std::optional<dvec<double>>(reference::dora_norms(p0));
          auto flat = [](const auto& m) { return std::vector<double>(m.data(), m.data() + m.size()); };
          auto run = [&](const reference::dora_params<double>& p, const dmat<double>& xr) {
            return flat(reference::dora_forward(xr, p, frozen_n));
          };
          auto grads = [&](const std::vector<double>& dy) {
            const Eigen::Map<const dmat<double>> G(dy.data(), X.rows(), p0.m.size());
            return reference::dora_backward(X, p0, dmat<double>(G), exact);
          };
          SUBCASE("magnitude") {
            test::check_gradient(
                [&](const std::vector<double>& v) {
                  auto p = p0;
                  p.m = Eigen::Map<const dvec<double>>(v.data(), p0.m.size());
                  return run(p, X);
                },
                [&](const std::vector<double>&, const std::vector<double>& dy) { return flat(grads(dy).m); }, flat(p0.m),
                11);
          }
          SUBCASE("lora_A") {
            test::check_gradient(
                [&](const std::vector<double>& v) {
                  auto p = p0;
                  p.a = Eigen::Map<const dmat<double>>(v.data(), p0.a.rows(), p0.a.cols());
                  return run(p, X);
                },
                [&](const std::vector<double>&, const std::vector<double>& dy) { return flat(grads(dy).a); }, flat(p0.a),
                12);
          }
          SUBCASE("lora_B") {
            test::check_gradient(
                [&](const std::vector<double>& v) {
                  auto p = p0;
                  p.b = Eigen::Map<const dmat<double>>(v.data(), p0.b.rows(), p0.b.cols());
                  return run(p, X);
                },
                [&](const std::vector<double>&, const std::vector<double>& dy) { return flat(grads(dy).b); }, flat(p0.b),
                13);
          }
          SUBCASE("input") {
            // Through im2col / col2im for conv, so the input gradient of the layer itself is checked.
            const Shape w = a.base_weight_shape();
            const Tensor xs = x.to_layout(layout::nchw);
            std::vector<double> x0(xs.data(), xs.data() + xs.numel());
            auto rows = [&](const std::vector<double>& xv) {
              if (!c.conv) return dmat<double>(Eigen::Map<const dmat<double>>(xv.data(), X.rows(), X.cols()));
              dmat<double> cols(X.rows(), X.cols());
              reference::im2col(xv.data(), c.x, w, c.p, cols.data());
              return cols;
            };
            test::check_gradient([&](const std::vector<double>& xv) { return run(p0, rows(xv)); },
                                 [&](const std::vector<double>&, const std::vector<double>& dy) {
                                   const dmat<double> dxr = grads(dy).x;
                                   if (!c.conv) return flat(dxr);
                                   std::vector<double> dx(x0.size());
                                   reference::col2im(dxr.data(), c.x, w, c.p, dx.data());
                                   return dx;
                                 },
                                 x0, 14);
          }
        }
      }
    }
  }

  TEST_CASE("the adapter's backward matches the reference gradients, both norm modes, both training kernels") {
    for (const auto& c : layer_cases()) {
      for (norm_mode mode : {norm_mode::detached, norm_mode::exact}) {
        for (const low_rank_kernel kernel : {low_rank_kernel::shift_add, low_rank_kernel::direct}) {
          const std::string name = std::string(c.name) + (mode == norm_mode::exact ? ", exact norm" : ", detached norm") +
                                   (kernel == low_rank_kernel::direct ? ", direct kernels" : ", shift-add kernels");
          SUBCASE(name.c_str()) {
            adapted l = make_adapter(c, mode);
            l.a.set_training_kernel(kernel);
            perturb(l, 9);
            const dora_adapter& a = l.a;
            const Tensor x = test::random_tensor(c.x, 1);
            dora_cache cache;
            Tensor y;
            l.forward(x, y, &cache);
            const Tensor gy = test::random_tensor(y.shape(), 4);
            dora_gradients g;
            Tensor dx;
            a.backward(*l.base, cache, gy, g, &dx);
            const dmat<double> X = rows_of(a, x);
            const Tensor gyp = gy.to_layout(y.memory_layout());
            const dmat<double> G = gyp.matrix(X.rows(), c.w[0]).cast<double>();
            const auto ref = reference::dora_backward(X, params_of(a, *l.base, l.base->bias()), G, mode == norm_mode::exact);
            auto T = [](const auto& m, const Shape& s) {
              Tensor t(s);
              const dmat<double> rm = m;
              t.matrix(rm.rows(), rm.cols()) = rm.cast<float>();
              return t;
            };
            test::check_close(g.magnitude, T(dmat<double>(ref.m.transpose()), a.magnitude().shape()), 1e-4, 1e-4);
            test::check_close(g.lora_A, T(ref.a, a.lora_A().shape()), 1e-4, 1e-4);
            test::check_close(g.lora_B, T(ref.b, a.lora_B().shape()), 1e-4, 1e-4);
            Tensor dx_ref(c.x);
            if (c.conv) {
              reference::col2im(dmat<double>(ref.x).cast<float>().eval().data(), c.x, a.base_weight_shape(), c.p,
                                dx_ref.data());
            } else {
              dx_ref.matrix(ref.x.rows(), ref.x.cols()) = ref.x.cast<float>();
            }
            test::check_close(dx, dx_ref, 1e-4, 1e-4);
            // dL/dx alone (no cache) is the same.
            Tensor dx_alone;
            a.backward_data(*l.base, gy, x.shape(), dx_alone);
            test::check_close(dx_alone, dx, 1e-6, 1e-6);
          }
        }
      }
    }
  }

  TEST_CASE("forward and gradients match PyTorch autograd (tests/data/dora_fixtures.safetensors)") {
    const auto f = safetensors_file::load(std::filesystem::path(RIMC_TEST_DATA_DIR) / "dora_fixtures.safetensors");
    for (std::string name : {"linear", "conv"}) {
      for (std::string mode : {"detached", "exact"}) {
        SUBCASE((name + ", " + mode).c_str()) {
          const auto t = [&](const std::string& key) { return f.tensor(name + "." + key); };
          dora_config cfg;
          cfg.rank = std::stoll(f.metadata().at(name + ".rank"));
          cfg.alpha = std::stod(f.metadata().at(name + ".alpha"));
          cfg.use_rslora = f.metadata().at(name + ".use_rslora") == "true";
          cfg.norm = mode == "exact" ? norm_mode::exact : norm_mode::detached;
          conv2d_params p;
          p.stride = {2, 2};
          p.padding = {1, 1};
          const Tensor bias = t("bias");
          adapted l(digital(t("w0"), &bias, p, name == "conv"), cfg);
          l.a.set_parameters(*l.base, t("m"), t("A"), t("B"));
          const Tensor x = t("x");
          dora_cache cache;
          Tensor y;
          l.forward(x, y, &cache);
          test::check_close(y, t("y"), 1e-5, 1e-5);
          dora_gradients g;
          Tensor dx;
          l.a.backward(*l.base, cache, t("grad_y"), g, &dx);
          test::check_close(g.magnitude, t(mode + ".dm"), 1e-5, 1e-5);
          test::check_close(g.lora_A, t(mode + ".dA"), 1e-5, 1e-5);
          test::check_close(g.lora_B, t(mode + ".dB"), 1e-5, 1e-5);
          test::check_close(dx, t(mode + ".dx"), 1e-5, 1e-5);
        }
      }
    }
  }

  TEST_CASE("zero-norm rows stay finite in both modes") {
    Tensor w0 = test::random_tensor(Shape{4, 6}, 1);
    for (std::int64_t k = 0; k < 6; ++k) w0[2 * 6 + k] = 0.0f;  // row 2 is all zeros
    for (norm_mode mode : {norm_mode::detached, norm_mode::exact}) {
      dora_config cfg;
      cfg.rank = 2;
      cfg.norm = mode;
      adapted l(digital(w0, nullptr, {}, false), cfg);
      CHECK(l.a.norms()[2] == static_cast<float>(cfg.norm_eps));
      const Tensor x = test::random_tensor(Shape{3, 6}, 2);
      dora_cache cache;
      Tensor y, dx;
      l.forward(x, y, &cache);
      dora_gradients g;
      l.a.backward(*l.base, cache, test::random_tensor(y.shape(), 3), g, &dx);
      for (const Tensor* t : {&y, &g.magnitude, &g.lora_A, &g.lora_B, &dx}) CHECK(t->vector().allFinite());
    }
  }

  TEST_CASE("the deploy form computes the training forward") {
    for (const auto& c : layer_cases()) {
      SUBCASE(c.name) {
        adapted l = make_adapter(c, norm_mode::detached);
        perturb(l, 5);
        const dora_adapter& a = l.a;
        const Tensor x = test::random_tensor(c.x, 1);
        const Tensor& bias = *l.base->bias();
        Tensor y, yd;
        l.forward(x, y);
        const Tensor& lo = l.layer_out;
        a.deploy(sram_precision::fp32).forward(x, lo, &bias, yd);
        CHECK(yd == y);  // bitwise
        // In place (the inference path) is bitwise forward() too, and with a ReLU, relu(forward()).
        Tensor in_place = lo, y_relu;
        a.forward_in_place(*l.base, x, in_place, false);
        CHECK(in_place == y);
        in_place = lo;
        a.forward_in_place(*l.base, x, in_place, true);
        relu(y, y_relu);
        CHECK(in_place == y_relu);
        // fp16 and int8 storage: within the rounding of the stored values.
        a.deploy(sram_precision::fp16).forward(x, lo, &bias, yd);
        test::check_close(yd, y, 2e-3, 2e-3);
        a.deploy(sram_precision::int8).forward(x, lo, &bias, yd);
        test::check_close(yd, y, 2e-2, 2e-2);
        // One frozen kernel on the merged weights gives the same output.
        const Tensor wm = a.merged_weights(*l.base);
        const Tensor ym = c.conv ? conv2d(wm, bias, c.p).forward(x) : linear(wm, bias).forward(x);
        test::check_close(ym, y, 1e-5, 1e-5);
        const Tensor ymd = c.conv ? conv2d(a.deploy().merged_weights(*l.base), bias, c.p).forward(x)
                                  : linear(a.deploy().merged_weights(*l.base), bias).forward(x);
        test::check_close(ymd, y, 1e-5, 1e-5);
      }
    }
  }

  TEST_CASE("footprints count parameters, SRAM bytes and the share of RRAM weights") {
    dora_config cfg;
    cfg.rank = 2;
    const adapted l(digital(test::random_tensor(Shape{16, 8, 3, 3}, 1), nullptr, {}, true), cfg);
    const dora_adapter& a = l.a;
    // O = 16, K = 72, r = 2: 16 + 144 + 32 = 192 values over 1152 weights.
    const auto f = a.footprint();
    CHECK(f.parameters == 192);
    CHECK(f.rram_weights == 1152);
    CHECK(f.sram_bytes == 768);
    CHECK(f.share_percent() == doctest::Approx(100.0 / 6.0));
    CHECK(a.footprint(sram_precision::fp16).sram_bytes == 384);
    CHECK(a.footprint(sram_precision::int8).sram_bytes == 176 + 2 * (16 + 2 + 16));
    CHECK(a.deploy(sram_precision::int8).footprint().sram_bytes == 244);
    adapter_footprint total;
    total += f;
    total += f;
    CHECK(total.share_percent() == doctest::Approx(100.0 / 6.0));
  }

  TEST_CASE("invalid settings are rejected up front with the values named") {
    const auto fc = digital(test::random_tensor(Shape{4, 6}, 1), nullptr, {}, false);
    dora_config cfg;
    cfg.rank = 0;
    CHECK_THROWS_WITH((void)dora_adapter(*fc, cfg),
                      "[rimc.value_error] dora_config: rank must be in [1, min(64, O = 4, K = 6)], got 0");
    cfg.rank = 5;
    CHECK_THROWS_WITH((void)dora_adapter(*fc, cfg),
                      "[rimc.value_error] dora_config: rank must be in [1, min(64, O = 4, K = 6)], got 5");
    cfg.rank = 2;
    cfg.alpha = -1;
    CHECK_THROWS_WITH((void)dora_adapter(*fc, cfg),
                      "[rimc.value_error] dora_config: alpha must be a positive finite number, got -1");
    cfg.alpha = 4;
    conv2d_params g2;
    g2.groups = 2;
    const auto grouped = digital(test::random_tensor(Shape{4, 3, 3, 3}, 1), nullptr, g2, true);
    CHECK_THROWS_WITH((void)dora_adapter(*grouped, cfg),
                      "[rimc.value_error] dora_adapter: groups must be 1 (PEFT's adapters support no grouped "
                      "convolutions), got 2");
    Tensor w(Shape{4, 6});
    w[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH((void)dora_adapter(*digital(w, nullptr, {}, false), cfg),
                      "[rimc.value_error] dora_adapter: base weights: element 3 of tensor [4, 6] is nan");
    dora_adapter a(*fc, cfg);
    CHECK_THROWS_WITH(a.set_parameters(*fc, Tensor(Shape{4}), Tensor(Shape{2, 5}), Tensor(Shape{4, 2})),
                      "[rimc.shape_error] dora_adapter::set_parameters: lora_A: shapes differ: [2, 5] vs [2, 6]");
    Tensor y;
    CHECK_THROWS_WITH(a.forward(*fc, Tensor(Shape{3, 5}), Tensor(Shape{3, 4}), y),
                      "[rimc.shape_error] dora_adapter: src [3, 5] does not give 6 features per row");
    dora_gradients g;
    CHECK_THROWS_WITH(a.backward(*fc, dora_cache{}, Tensor(Shape{3, 4}), g),
                      "[rimc.value_error] dora_adapter::backward: the cache holds no forward pass");
    // An adapter made for one layer refuses another of a different shape.
    const auto other = digital(test::random_tensor(Shape{5, 6}, 1), nullptr, {}, false);
    CHECK_THROWS_WITH(a.refresh(*other), "[rimc.shape_error] dora_adapter::refresh: the adapter was made for weights "
                                         "[4, 6], the layer now has [5, 6]");
  }
}

TEST_SUITE("dora") {
  TEST_CASE("W0 is borrowed from the layer: after the chip drifts, forward and gradients follow the new weights") {
    // A crossbar layer, an adapter on it, then more drift: the adapter keeps no copy of W0, so after
    // refresh its norms, output and gradients are those of the drifted weights (checked against the
    // double reference on the new W0 and, for dL/dm, against central differences of the forward).
    const Tensor w0 = test::random_tensor(Shape{6, 13}, 21, layout::nchw, -0.5f, 0.5f);
    const Tensor bias = test::random_tensor(Shape{6}, 22);
    analog_options opt;
    opt.device.g_min_us = 0.0;
    struct analog final : layer {
      basic_analog_linear<> a;
      Tensor b;
      analog(const Tensor& w, const Tensor& bias, const analog_options& o) : a(w, bias, o), b(bias) {}
      void forward(const Tensor& s, Tensor& d) const override { a.forward(s, d); }
      void backward_data(const Tensor& dy, const Shape&, Tensor& dx) const override { a.backward_data(dy, dx); }
      const Tensor& effective_weights() const override { return a.effective_weights(); }
      const Tensor* bias() const override { return &b; }
      const conv2d_params* conv_params() const override { return nullptr; }
      std::uint64_t weights_version() const override { return a.weights_version(); }
    };
    auto base = std::make_shared<analog>(w0, bias, opt);
    dora_config cfg;
    cfg.rank = 3;
    cfg.alpha = 6;
    cfg.norm = norm_mode::exact;
    adapted l(base, cfg);
    perturb(l, 23);
    const Tensor before = base->effective_weights();
    base->a.drift_to(relative_drift{}, drift_level{0.3}, 5);
    REQUIRE(!(base->effective_weights() == before));
    l.a.refresh(*base);  // what adapted_layer does by itself when the weights' version changes
    const Tensor x = test::random_tensor(Shape{4, 13}, 24);
    dora_cache cache;
    Tensor y;
    l.forward(x, y, &cache);
    const auto p = params_of(l.a, *base, &bias);
    const dmat<double> X = to_dmat(x, 4);
    test::check_close(y, as_output(reference::dora_forward(X, p), y.shape()), 1e-5, 1e-5);
    const Tensor gy = test::random_tensor(y.shape(), 25);
    dora_gradients g;
    Tensor dx;
    l.a.backward(*base, cache, gy, g, &dx);
    const auto ref = reference::dora_backward(X, p, dmat<double>(gy.matrix(4, 6).cast<double>()), true);
    for (std::int64_t i = 0; i < g.lora_A.numel(); ++i)
      CHECK(g.lora_A[i] == doctest::Approx(ref.a.data()[i]).epsilon(1e-4).scale(1e-4));
    for (std::int64_t i = 0; i < g.lora_B.numel(); ++i)
      CHECK(g.lora_B[i] == doctest::Approx(ref.b.data()[i]).epsilon(1e-4).scale(1e-4));
    for (std::int64_t i = 0; i < dx.numel(); ++i) CHECK(dx[i] == doctest::Approx(ref.x.data()[i]).epsilon(1e-4).scale(1e-4));
    // Central differences in double on the drifted weights: the exact gradients of m and A (A's
    // includes the norm terms, which involve W0) are those of the new W0.
    auto G_of = [](const std::vector<double>& dy) { return dmat<double>(Eigen::Map<const dmat<double>>(dy.data(), 4, 6)); };
    auto flat = [](const dmat<double>& m) { return std::vector<double>(m.data(), m.data() + m.size()); };
    test::check_gradient(
        [&](const std::vector<double>& v) {
          auto q = p;
          q.m = Eigen::Map<const dvec<double>>(v.data(), 6);
          return flat(reference::dora_forward(X, q));
        },
        [&](const std::vector<double>&, const std::vector<double>& dy) {
          const dvec<double> gm = reference::dora_backward(X, p, G_of(dy), true).m;
          return std::vector<double>(gm.data(), gm.data() + gm.size());
        },
        std::vector<double>(p.m.data(), p.m.data() + 6), 26);
    test::check_gradient(
        [&](const std::vector<double>& v) {
          auto q = p;
          q.a = Eigen::Map<const dmat<double>>(v.data(), p.a.rows(), p.a.cols());
          return flat(reference::dora_forward(X, q));
        },
        [&](const std::vector<double>&, const std::vector<double>& dy) {
          return flat(reference::dora_backward(X, p, G_of(dy), true).a);
        },
        flat(p.a), 27);
    for (std::int64_t o = 0; o < 6; ++o) CHECK(g.magnitude[o] == doctest::Approx(ref.m[o]).epsilon(1e-4).scale(1e-4));
  }
}

}  // namespace unit_dora
