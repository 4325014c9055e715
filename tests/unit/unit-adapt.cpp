// Tests of the open architecture around adapters and layers: adapted layers
// in a network (attach, detach, the frozen layer's weights borrowed and
// followed when the chip drifts again, network backprop through them), a
// user-defined adapter trained by the unchanged calibrators, a user-defined
// tile type on every analog path, the network's guards (input shapes,
// parameters of deployed layers), and failures that leave the network as it
// was (deploy, fold, calibration).

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/backprop.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/lora_adapter.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <span>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_adapt {

using namespace rimc;

namespace {

network toy(std::uint64_t seed) {
  network net;
  int x = net.input(Shape{2, 9, 9});
  x = net.conv2d("c1", x, 6, 3, conv2d_params{{1, 1}, {1, 1}}, true);
  x = net.relu("r1", x);
  x = net.conv2d("c2", x, 8, 3, conv2d_params{{2, 2}, {1, 1}}, true);
  x = net.relu("r2", x);
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 5);
  test::for_each_parameter(net, [&](const network_node&, const std::string&, Tensor& t) {
    fill_uniform(t, counter_rng(seed++), -0.5f, 0.5f);
  });
  return net;
}

/// A per-channel gain on the layer output: y = a ⊙ layer_out (a user's adapter, defined here).
class channel_gain {
 public:
  struct cache_type {
    const Tensor* src = nullptr;
    const Tensor* layer_out = nullptr;
  };
  static constexpr std::string_view kind = "channel_gain";
  explicit channel_gain(const layer& base) : a_(Shape{base.effective_weights().dim(0)}) { a_.fill(1.0f); }
  void forward(const layer&, const Tensor& x, const Tensor& lo, Tensor& y, cache_type* c) const {
    const auto O = a_.numel(), P = lo.numel() / O;
    y.ensure(lo.shape(), lo.rank() == 4 ? layout::nhwc : layout::nchw);
    y.matrix(P, O) = lo.matrix(P, O) * a_.vector().asDiagonal();
    if (c) *c = {&x, &lo};
  }
  void backward(const layer& base, const cache_type& c, const Tensor& dy, std::span<Tensor> g, Tensor* dx) const {
    const auto O = a_.numel(), P = dy.numel() / O;
    const Tensor gy = dy.rank() == 4 ? dy.to_layout(layout::nhwc) : dy;
    g[0].ensure(a_.shape());
    g[0].vector() = gy.matrix(P, O).cwiseProduct(c.layer_out->matrix(P, O)).colwise().sum().transpose();
    if (dx) backward_data(base, dy, c.src->shape(), *dx);
  }
  void backward_data(const layer& base, const Tensor& dy, const Shape& xs, Tensor& dx) const {
    const auto O = a_.numel(), P = dy.numel() / O;
    Tensor g = dy.rank() == 4 ? dy.to_layout(layout::nhwc) : dy;
    g.matrix(P, O) *= a_.vector().asDiagonal();
    base.backward_data(g, xs, dx);
  }
  std::vector<Tensor*> parameters() { return {&a_}; }
  std::vector<const Tensor*> parameters() const { return {&a_}; }
  void refresh(const layer&) {}
  adapter_footprint footprint(const layer& base, sram_precision) const {
    return {a_.numel(), base.effective_weights().numel(), static_cast<std::size_t>(4 * a_.numel())};
  }
  named_tensors tensors() const { return {{"gain", a_}}; }
  void load(const layer&, const std::map<std::string, Tensor>& f) { a_ = detail::take_tensor(f, "gain", a_.shape(), "channel_gain"); }

 private:
  Tensor a_;
};
static_assert(adapter<channel_gain>);
static_assert(!low_rank_adapter<channel_gain>);

/// A user's tile: CrossbarTile whose last column is dead (reads 0 whatever was programmed), a fault model
/// defined outside the library. It shadows analog_matrix and read_weights; TiledArray calls them statically.
class dead_column_tile : public CrossbarTile<float, 16, 8> {
  using base_tile = CrossbarTile<float, 16, 8>;

 public:
  std::uint64_t program(const float* w, const float* scales, const device_config& dev, std::uint64_t seed) {
    const auto n = base_tile::program(w, scales, dev, seed);
    rebuild_dead();
    return n;
  }
  template <drift_model M>
  void drift_to(const M& m, typename M::argument_type when, std::uint64_t seed) {
    base_tile::drift_to(m, when, seed);
    rebuild_dead();
  }
  void reset_drift() {
    base_tile::reset_drift();
    rebuild_dead();
  }
  [[nodiscard]] const Tensor& analog_matrix(int s) const noexcept { return dead_[static_cast<std::size_t>(s)]; }
  void read_weights(const float* scales, float* out) const {
    base_tile::read_weights(scales, out);
    if (col0() + cols() - 1 == dead_global_col) {
      for (std::int64_t r = 0; r < rows(); ++r) out[(row0() + r) * matrix_cols_ + dead_global_col] = 0.0f;
    }
  }
  static constexpr std::int64_t dead_global_col = 7;
  dead_column_tile(std::int64_t r0, std::int64_t c0, std::int64_t rows, std::int64_t cols, std::int64_t matrix_cols,
                   const level_grid& g)
      : base_tile(r0, c0, rows, cols, matrix_cols, g), matrix_cols_(matrix_cols) {}
  dead_column_tile() = default;

 private:
  void rebuild_dead() {
    dead_.clear();
    for (int s = 0; s < slices(); ++s) {
      Tensor m = base_tile::analog_matrix(s);
      if (col0() + cols() - 1 == dead_global_col)
        for (std::int64_t r = 0; r < rows(); ++r) m[r * cols() + cols() - 1] = 0.0f;
      dead_.push_back(std::move(m));
    }
  }
  std::int64_t matrix_cols_ = 0;
  std::vector<Tensor> dead_;
};
static_assert(crossbar_tile<dead_column_tile>);

}  // namespace

TEST_SUITE("adapt") {
  TEST_CASE("attach and detach: the node runs the adapted layer, then its own digital layer again") {
    network net = toy(1);
    const Tensor x = test::random_tensor(Shape{3, 2, 9, 9}, 2);
    const Tensor before = net.forward(x);
    auto l = attach_adapter(net, "c2", dora_adapter(net.layer("c2"), {.rank = 2, .alpha = 2.0}));
    CHECK(adapted_layers(net).size() == 1);
    // B = 0 at init: the same function. DoRA scales W0 x = z - bias and adds the bias back, which
    // returned z bitwise here with oneDNN's AVX-512 convolutions but rounds some elements by one ulp
    // with its AVX2 ones (the release-avx2 preset), so the check is to rounding.
    test::check_close(net.forward(x), before, 1e-6, 1e-6);
    CHECK_THROWS_WITH(attach_adapter(net, "c2", lora_adapter(net.layer("c2"), {.rank = 2})),
                      "[rimc.value_error] attach_adapter: node 'c2' has an adapter already");
    CHECK_THROWS_WITH(net.set_parameter("c2", "bias", Tensor(Shape{8})),
                      "[rimc.value_error] network::set_parameter: node 'c2' runs a deployed or adapted layer; set its "
                      "parameters before deploying");
    detach_adapters(net);
    CHECK(adapted_layers(net).empty());
    CHECK(net.node("c2").own_layer());
    net.set_parameter("c2", "bias", Tensor(Shape{8}));  // allowed again
    CHECK(!(net.forward(x) == before));
  }

  TEST_CASE("a failed deploy, fold or calibration leaves the network as it was") {
    SUBCASE("deploy_analog: a later layer that cannot be programmed, or a name listed twice") {
      network net;
      int x = net.input(Shape{4, 6, 6});
      x = net.conv2d("plain", x, 4, 3, conv2d_params{{1, 1}, {1, 1}});
      net.conv2d("grouped", x, 4, 3, conv2d_params{.stride = {1, 1}, .padding = {1, 1}, .groups = 2});
      CHECK_THROWS_WITH((void)deploy_analog(net, analog_options{}),
                        "[rimc.value_error] analog_conv2d: groups must be 1, got 2");
      CHECK(net.node("plain").own_layer());  // nothing was placed
      CHECK_THROWS_WITH((void)deploy_analog(net, analog_options{}, {"plain", "plain"}),
                        "[rimc.value_error] deploy_analog: node 'plain' is listed twice");
      CHECK(net.node("plain").own_layer());
      auto chip = deploy_analog(net, analog_options{}, {"plain"});  // and it still deploys
      CHECK_FALSE(net.node("plain").own_layer());
    }
    SUBCASE("fold_batch_norm: a deployed conv after a foldable one") {
      network net;
      int x = net.input(Shape{2, 6, 6});
      x = net.conv2d("a", x, 3, 3);
      x = net.batch_norm("a_bn", x);
      x = net.conv2d("b", x, 3, 1);
      net.batch_norm("b_bn", x);
      test::for_each_parameter(net, [&](const network_node&, const std::string& p, Tensor& t) {
        if (p != "num_batches_tracked") fill_uniform(t, counter_rng(3), 0.5f, 1.5f);
      });
      const Tensor a_weights = net.node("a").params.at("weight");
      auto chip = deploy_analog(net, analog_options{}, {"b"});
      CHECK_THROWS_WITH(net.fold_batch_norm(), "[rimc.value_error] network::fold_batch_norm: 'b' already runs a "
                                               "deployed or adapted layer; fold batch norm before deploying");
      CHECK(net.node("a").params.at("weight") == a_weights);
      CHECK_FALSE(net.node("a_bn").bypass);
    }
    SUBCASE("calibrate_feature_kd: a failure after the first layer takes its adapter off again") {
      const network teacher = toy(21);
      network student = toy(21);
      auto chip = deploy_analog(student, analog_options{});
      chip.drift_to(relative_drift{}, drift_level{0.2}, 22);
      const Tensor images = test::random_tensor(Shape{3, 2, 9, 9}, 23);
      const Tensor before = student.forward(images);
      calibration_config cfg;
      cfg.steps = 3;
      cfg.on_layer = [](const layer_calibration& l, std::size_t, std::size_t) {
        if (l.name == "c2") throw value_error("stop at c2");
      };
      CHECK_THROWS_WITH((void)calibrate_feature_kd(teacher, student, images, cfg), "[rimc.value_error] stop at c2");
      CHECK(adapted_layers(student).empty());
      CHECK(student.forward(images) == before);
      cfg.targets = {"c1", "c1"};
      CHECK_THROWS_WITH((void)calibrate_feature_kd(teacher, student, images, cfg),
                        "[rimc.value_error] calibrate_feature_kd: target 'c1' is listed twice");
    }
    SUBCASE("calibrate_backprop: a fused ReLU outside the targets is refused before anything is attached") {
      const network teacher = toy(31);
      network student = toy(31);
      student.fuse_relu();
      backprop_config cfg;
      cfg.steps = 2;
      cfg.targets = {"fc"};
      const Tensor images = test::random_tensor(Shape{2, 2, 9, 9}, 32);
      CHECK_THROWS_WITH((void)calibrate_backprop(teacher, student, images, {0, 1}, cfg),
                        "[rimc.value_error] calibrate_backprop: student node 'c1' has a fused ReLU; backprop needs the "
                        "network without fuse_relu()");
      CHECK(adapted_layers(student).empty());
    }
  }

  TEST_CASE("an adapted layer follows its crossbars: after more drift its output uses the new weights' norms") {
    network net = toy(3);
    auto chip = deploy_analog(net, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.1}, 4);
    dora_adapter a(net.layer("c2"), {.rank = 2, .alpha = 2.0, .seed = 5});
    Tensor b = a.lora_B();
    fill_uniform(b, counter_rng(6), -0.3f, 0.3f);
    a.set_parameters(net.layer("c2"), a.magnitude(), a.lora_A(), b);
    auto l = attach_adapter(net, "c2", std::move(a));
    const Tensor x = test::random_tensor(Shape{2, 2, 9, 9}, 7);
    (void)net.forward(x);
    chip.drift_to(relative_drift{}, drift_level{0.3}, 8);  // the chip drifts further after attaching
    const Tensor after = net.forward(x);
    // The same parameters on a fresh adapter made for the new weights give the same output.
    network fresh = toy(3);
    auto chip2 = deploy_analog(fresh, analog_options{});
    chip2.drift_to(relative_drift{}, drift_level{0.3}, 8);
    dora_adapter f(fresh.layer("c2"), {.rank = 2, .alpha = 2.0, .seed = 5});
    f.set_parameters(fresh.layer("c2"), l->adapter().magnitude(), l->adapter().lora_A(), l->adapter().lora_B());
    (void)attach_adapter(fresh, "c2", std::move(f));
    CHECK(after == fresh.forward(x));
    CHECK(l->adapter().norms() == adapter_at<dora_adapter>(fresh, "c2")->adapter().norms());
  }

  TEST_CASE("network backprop reaches LoRA and user adapters: gradients match central differences") {
    network net = toy(9);
    auto lo = attach_adapter(net, "c1", lora_adapter(net.layer("c1"), {.rank = 2, .alpha = 2.0, .seed = 1}));
    lo->adapter().set_parameters(*lo->base(), lo->adapter().lora_A(),
                                 test::random_tensor(lo->adapter().lora_B().shape(), 2, layout::nchw, -0.3f, 0.3f));
    lo->parameters_changed();
    auto g = attach_adapter(net, "fc", channel_gain(net.layer("fc")));
    fill_uniform(*g->trainable_parameters()[0], counter_rng(3), 0.5f, 1.5f);
    g->parameters_changed();
    const Tensor x = test::random_tensor(Shape{3, 2, 9, 9}, 4);
    network_tape tape;
    const Tensor y = net.forward_train(x, tape);
    test::check_close(y, net.forward(x), 1e-6, 1e-6);
    const Tensor r = test::random_tensor(y.shape(), 5);
    parameter_gradients grads;
    (void)net.backward(tape, r, grads);
    auto loss = [&] { return test::dot(net.forward(x), r); };
    auto check_param = [&](Tensor& p, const Tensor& grad, const auto& refresh) {
      for (const std::int64_t i : {std::int64_t{0}, p.numel() / 2, p.numel() - 1}) {
        const float v = p[i], h = 1e-2f;
        p[i] = v + h;
        refresh();
        const double up = loss();
        p[i] = v - h;
        refresh();
        const double down = loss();
        p[i] = v;
        refresh();
        CHECK(grad[i] == doctest::Approx((up - down) / (2 * h)).epsilon(2e-2).scale(1.0));
      }
    };
    check_param(*lo->trainable_parameters()[lora_adapter::grad_index_B], grads.at("c1")[lora_adapter::grad_index_B],
                [&] { lo->parameters_changed(); });
    check_param(*g->trainable_parameters()[0], grads.at("fc")[0], [&] { g->parameters_changed(); });
  }

  TEST_CASE("a user-defined adapter is trained by the unchanged feature-KD calibrator (direct path)") {
    const network teacher = toy(11);
    network student = toy(11);
    auto chip = deploy_analog(student, analog_options{});
    chip.drift_to(relative_drift{}, drift_level{0.2}, 12);
    const Tensor images = test::random_tensor(Shape{6, 2, 9, 9}, 13);
    calibration_config cfg;
    cfg.steps = 40;
    cfg.lr = 0.02;
    std::vector<std::string> progress;
    cfg.on_layer = [&](const layer_calibration& l, std::size_t i, std::size_t n) {
      progress.push_back(detail::concat(i + 1, "/", n, " ", l.name));
    };
    const auto r = calibrate_feature_kd(teacher, student, images, cfg,
                                        [](const adapter_request& q) { return channel_gain(q.base); });
    REQUIRE(r.layers.size() == 3);
    for (const auto& l : r.layers) {
      CAPTURE(l.name);
      CHECK(l.path == kd_loss_path::direct);
      CHECK(l.mse_after < l.mse_before);
      CHECK(l.footprint.parameters == student.node(l.name).params.at("weight").dim(0));
    }
    CHECK(progress == std::vector<std::string>{"1/3 c1", "2/3 c2", "3/3 fc"});
    CHECK(r.rram_writes == 0);
  }

  TEST_CASE("a user-defined tile type runs every analog path (effective weights, tile-exact, drift)") {
    const Tensor w = test::random_tensor(Shape{20, 11}, 21);  // K = 20 inputs over two row blocks, O = 11 over two column blocks
    TiledArray<dead_column_tile> a(w, device_config{});
    const Tensor eff = a.effective_weights();
    for (std::int64_t k = 0; k < 20; ++k) CHECK(eff[k * 11 + 7] == 0.0f);   // the dead column reads 0
    CHECK(eff[0] == doctest::Approx(w[0]).epsilon(1e-2).scale(1.0));
    const Tensor x = test::random_tensor(Shape{5, 20}, 22);
    const Tensor y = a.mvm(x);  // the tile-exact product through analog_matrix
    for (std::int64_t n = 0; n < 5; ++n) {
      CHECK(y[n * 11 + 7] == 0.0f);
      double want = 0;
      for (std::int64_t k = 0; k < 20; ++k) want += double(x[n * 20 + k]) * eff[k * 11 + 3];
      CHECK(y[n * 11 + 3] == doctest::Approx(want).epsilon(1e-4).scale(1e-4));
    }
    a.drift_to(relative_drift{}, drift_level{0.2}, 3);
    const Tensor drifted = a.effective_weights();
    for (std::int64_t k = 0; k < 20; ++k) CHECK(drifted[k * 11 + 7] == 0.0f);
    CHECK(!(drifted == eff));
  }

  TEST_CASE("the network checks batch shapes and refuses to reload deployed layers") {
    network net = toy(1);
    CHECK_THROWS_WITH((void)net.forward(Tensor(Shape{2, 3, 9, 9})),
                      "[rimc.shape_error] network::forward: node 'input' takes batches of [2, 9, 9] per sample, got "
                      "[2, 3, 9, 9]");
    CHECK_THROWS_WITH((void)net.forward(Tensor(Shape{2, 2, 8, 9})),
                      "[rimc.shape_error] network::forward: node 'input' takes batches of [2, 9, 9] per sample, got "
                      "[2, 2, 8, 9]");
    const auto dir = test::temp_dir("adapt-reload");
    net.save(dir / "w.safetensors");
    auto chip = deploy_analog(net, analog_options{});
    CHECK_THROWS_WITH(net.load(dir / "w.safetensors"),
                      "[rimc.value_error] network::load: node 'c1' runs a deployed or adapted layer; load weights "
                      "before deploying");
    CHECK_THROWS_WITH((void)deploy_analog(net, analog_options{}),
                      "[rimc.value_error] deploy_analog: node 'c1' already runs a deployed or adapted layer");
    CHECK_THROWS_WITH((void)chip.conv("fc"), "[rimc.value_error] analog_deployment: node 'fc' is deployed as a linear layer, "
                                       "not a conv2d");
    CHECK_THROWS_WITH((void)chip.linear("nope"), "[rimc.value_error] analog_deployment: node 'nope' is not deployed");
    CHECK(chip.names() == std::vector<std::string>{"c1", "c2", "fc"});
    CHECK(chip.rram_weights() == 6 * 18 + 8 * 54 + 5 * 8);
  }
}

}  // namespace unit_adapt
