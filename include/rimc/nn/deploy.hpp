#pragma once
/// \file
/// Deployment of a network onto RRAM crossbars: chosen conv2d / linear nodes
/// (by default all) are replaced by analog layers programmed from their
/// (batch-norm-folded) weights; everything else stays digital. The returned
/// handle drifts every analog layer at once, reproducibly from a seed, counts
/// RRAM writes, calibrates every percentile ADC and calibrated DAC from
/// reference images in one forward pass, and gives each analog layer by node name.

#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/nn/graph.hpp>
#include <rimc/nn/layer.hpp>
#include <rimc/nn/network.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace rimc {

namespace detail {
[[nodiscard]] inline std::optional<Tensor> bias_of(const network_node& n) {
  const auto b = n.params.find("bias");
  return b == n.params.end() ? std::nullopt : std::optional<Tensor>(b->second);
}
}  // namespace detail

/// A network layer whose weights live on crossbars: a basic_analog_conv2d
/// (Conv = true) or basic_analog_linear under the rimc::layer interface.
template <class Tile, bool Conv>
class analog_layer final : public layer {
 public:
  /// The analog layer type underneath.
  using analog_type = std::conditional_t<Conv, basic_analog_conv2d<Tile>, basic_analog_linear<Tile>>;

  /// Programs node `n`'s weights onto crossbars as `opt` says; its bias stays digital.
  analog_layer(const network_node& n, const analog_options& opt) : a_(make(n, opt)), bias_(detail::bias_of(n)) {}

  void forward(const Tensor& src, Tensor& dst) const override { a_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override {
    if constexpr (Conv) {
      a_.backward_data(dy, s, dx);
    } else {
      a_.backward_data(dy, dx);
      if (s.rank() == 4) dx.reshape(s);
    }
  }
  [[nodiscard]] const Tensor& effective_weights() const override { return a_.effective_weights(); }
  [[nodiscard]] const Tensor* bias() const override { return bias_ ? &*bias_ : nullptr; }
  [[nodiscard]] const conv2d_params* conv_params() const override {
    if constexpr (Conv) {
      return &a_.params();
    } else {
      return nullptr;
    }
  }
  [[nodiscard]] std::uint64_t weights_version() const override { return a_.weights_version(); }
  [[nodiscard]] std::uint64_t rram_writes() const override { return a_.rram_writes(); }
  [[nodiscard]] bool is_analog() const override { return true; }
  /// True while the periphery is ideal (the forward is then one kernel on the effective weights).
  [[nodiscard]] bool linear_forward() const override {
    if constexpr (Conv) {
      return !a_.uses_tile_path() && !a_.params().relu;
    } else {
      return !a_.uses_tile_path() && !a_.fused_relu();
    }
  }
  bool calibrate_adc(const Tensor& src, range_update update) override {
    if (!a_.periphery().needs_calibration()) return false;
    a_.calibrate_adc(src, update);
    return true;
  }

  /// The analog layer (drift, periphery, column gain, the arrays).
  ///@{
  [[nodiscard]] analog_type& analog() noexcept { return a_; }
  [[nodiscard]] const analog_type& analog() const noexcept { return a_; }
  ///@}

 private:
  static analog_type make(const network_node& n, const analog_options& opt) {
    if constexpr (Conv) {
      return analog_type(n.params.at("weight"), detail::bias_of(n), n.conv, opt);
    } else {
      return analog_type(n.params.at("weight"), detail::bias_of(n), opt, n.relu_after);
    }
  }

  analog_type a_;
  std::optional<Tensor> bias_;
};

template <class Tile>
class analog_deployment;

namespace detail {
/// Stands in for a node during analog_deployment::calibrate_adc: calibrates
/// the ADC of the node's layer (through its adapter, if any) on the node's
/// input, then runs it, so the next layer's ADC is calibrated on what this
/// one really produces.
class adc_calibrating_layer final : public layer {
 public:
  adc_calibrating_layer(std::shared_ptr<layer> node_layer, range_update update)
      : node_(std::move(node_layer)), update_(update) {}
  void forward(const Tensor& src, Tensor& dst) const override {
    (void)node_->calibrate_adc(src, update_);
    node_->forward(src, dst);
  }
  [[nodiscard]] bool fuses_relu() const override { return node_->fuses_relu(); }
  void forward_relu(const Tensor& src, Tensor& dst) const override {
    (void)node_->calibrate_adc(src, update_);
    node_->forward_relu(src, dst);
  }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override { node_->backward_data(dy, s, dx); }
  [[nodiscard]] const Tensor& effective_weights() const override { return node_->effective_weights(); }
  [[nodiscard]] const Tensor* bias() const override { return node_->bias(); }
  [[nodiscard]] const conv2d_params* conv_params() const override { return node_->conv_params(); }
  [[nodiscard]] bool is_analog() const override { return true; }

 private:
  std::shared_ptr<layer> node_;
  range_update update_;
};

/// One forward pass of `images` with the nodes `names` standing in as
/// adc_calibrating_layer; the nodes get their layers back, also on error.
inline void calibration_pass(network& net, const std::vector<std::string>& names, const Tensor& images,
                             range_update update) {
  std::vector<std::pair<std::string, std::shared_ptr<layer>>> swapped;
  const auto restore = [&] {
    for (auto it = swapped.rbegin(); it != swapped.rend(); ++it) net.set_layer(it->first, it->second);
  };
  try {
    for (const auto& name : names) {
      auto node_layer = net.layer_ptr(name);
      swapped.emplace_back(name, node_layer);
      net.set_layer(name, std::make_shared<adc_calibrating_layer>(std::move(node_layer), update));
    }
    if (!swapped.empty()) (void)net.forward(images);
  } catch (...) {
    restore();
    throw;
  }
  restore();
}
}  // namespace detail

/// Calibrates every layer of `net` that has a periphery to calibrate (a
/// percentile ADC or a calibrated DAC, on crossbars, under an adapter or
/// not; layer::calibrate_adc) in one forward pass of `images`, each on the
/// input the layers before it produce (`update`: see range_update).
/// Non-finite images are a value_error before any range changes; the nodes
/// keep their layers.
inline void calibrate_adcs(network& net, const Tensor& images, range_update update = range_update::replace) {
  check_finite("calibrate_adcs: images", images);
  std::vector<std::string> analog;
  for (const auto& name : net.layer_names())
    if (net.layer(name).is_analog()) analog.push_back(name);
  detail::calibration_pass(net, analog, images, update);
}

/// Programs the conv2d / linear nodes `names` of `net` (all of them when
/// empty) onto crossbars of type `Tile` with `options`; each layer's seeds are
/// mixed with its node index. Fold batch norm first so the folded weights are
/// programmed; a node already deployed or adapted is an error.
template <class Tile = CrossbarTile<>>
[[nodiscard]] analog_deployment<Tile> deploy_analog(graph& net, const analog_options& options,
                                                    std::vector<std::string> names = {});

/// The analog layers of a deployed network, by node name.
template <class Tile = CrossbarTile<>>
class analog_deployment {
 public:
  using conv_layer = analog_layer<Tile, true>;     ///< a deployed conv2d
  using linear_layer = analog_layer<Tile, false>;  ///< a deployed linear layer

  /// Names of the nodes that run on crossbars, in deployment order.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : layers_) out.push_back(e.name);
    return out;
  }
  /// Number of analog layers.
  [[nodiscard]] std::size_t size() const noexcept { return layers_.size(); }

  /// The analog convolution of node `name` (value_error if it is not a deployed conv2d).
  [[nodiscard]] basic_analog_conv2d<Tile>& conv(std::string_view name) { return find<true>(name).analog(); }
  /// The analog linear layer of node `name` (value_error if it is not a deployed linear node).
  [[nodiscard]] basic_analog_linear<Tile>& linear(std::string_view name) { return find<false>(name).analog(); }

  /// Calls f(name, layer) for each analog layer in deployment order, `layer`
  /// being a basic_analog_conv2d<Tile>& or a basic_analog_linear<Tile>&.
  template <class F>
  void for_each(F&& f) {
    for (auto& e : layers_) std::visit([&](auto& l) { f(std::as_const(e.name), l->analog()); }, e.layer);
  }
  /// The same, read-only.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& e : layers_)
      std::visit([&](const auto& l) { f(e.name, std::as_const(*l).analog()); }, e.layer);
  }

  /// Drifts every analog layer to time or level `when` of `model`, from the
  /// programmed state (never accumulated); each layer mixes `seed` with its node index.
  template <drift_model Model>
  void drift_to(const Model& model, typename Model::argument_type when, std::uint64_t seed) {
    for_each([&](const std::string&, auto& a) { a.drift_to(model, when, seed); });
  }

  /// Back to the freshly programmed conductances.
  void reset_drift() {
    for_each([](const std::string&, auto& a) { a.reset_drift(); });
  }

  /// RRAM programming events over all layers.
  [[nodiscard]] std::uint64_t rram_writes() const {
    std::uint64_t w = 0;
    for_each([&](const std::string&, const auto& a) { w += a.rram_writes(); });
    return w;
  }

  /// Stuck cells over all layers (device_config::faults).
  [[nodiscard]] fault_count stuck_cells() const {
    fault_count n;
    for_each([&](const std::string&, const auto& a) { n += a.stuck_cells(); });
    return n;
  }

  /// Sets the range of every percentile ADC (adc_range_mode::percentile) and
  /// calibrated DAC (dac_scaling::calibrated) from `images` (a batch of the
  /// network's input): one forward pass of `net` in which each analog layer
  /// with such a periphery calibrates it on its own input before running, so
  /// every layer sees what the calibrated layers before it produce (read
  /// noise is not applied while ranges are collected; see
  /// TiledArray::calibrate_adc). Other layers are left alone, as are
  /// adapters. `net` must be the network this deployment was made on; the
  /// nodes get their own layers back, also on error. Non-finite images are a
  /// value_error before any range changes.
  void calibrate_adc(network& net, const Tensor& images, range_update update = range_update::replace) {
    check_finite("analog_deployment::calibrate_adc: images", images);
    std::vector<std::string> names;
    for (auto& e : layers_) {
      std::visit(
          [&](auto& l) {
            if (!l->analog().periphery().needs_calibration()) return;
            if (!net.contains(e.name) || innermost(net.layer_ptr(e.name)) != l) {
              throw value_error(detail::concat("analog_deployment::calibrate_adc: node '", e.name,
                                               "' of this network does not run this deployment's layer"));
            }
            names.push_back(e.name);
          },
          e.layer);
    }
    detail::calibration_pass(net, names, images, update);
  }

  /// Weights on the crossbars.
  [[nodiscard]] std::int64_t rram_weights() const {
    std::int64_t n = 0;
    for_each([&](const std::string&, const auto& a) { n += a.effective_weights().numel(); });
    return n;
  }

 private:
  friend analog_deployment deploy_analog<Tile>(graph&, const analog_options&, std::vector<std::string>);

  struct entry {
    std::string name;
    std::variant<std::shared_ptr<conv_layer>, std::shared_ptr<linear_layer>> layer;
  };

  template <bool Conv>
  analog_layer<Tile, Conv>& find(std::string_view name) {
    for (auto& e : layers_) {
      if (e.name != name) continue;
      if (auto* p = std::get_if<std::shared_ptr<analog_layer<Tile, Conv>>>(&e.layer)) return **p;
      throw value_error(detail::concat("analog_deployment: node '", name, "' is deployed as a ",
                                       Conv ? "linear layer" : "conv2d", ", not a ", Conv ? "conv2d" : "linear layer"));
    }
    throw value_error(detail::concat("analog_deployment: node '", name, "' is not deployed"));
  }

  std::vector<entry> layers_;
};

template <class Tile>
analog_deployment<Tile> deploy_analog(graph& net, const analog_options& options, std::vector<std::string> names) {
  if (names.empty()) names = net.layer_names();
  detail::check_listed_once(names, "deploy_analog", "node");
  for (const auto& name : names) {
    const network_node& n = net.node(name);
    if (!n.has_layer()) {
      throw value_error(detail::concat("deploy_analog: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    if (!n.own_layer()) {
      throw value_error(detail::concat("deploy_analog: node '", name, "' already runs a deployed or adapted layer"));
    }
  }
  // Every layer is programmed before any node changes: an error leaves the network as it was.
  analog_deployment<Tile> d;
  for (const auto& name : names) {
    const network_node& n = net.node(name);
    analog_options opt = options;
    opt.layer_id = static_cast<std::uint64_t>(net.id(name));
    if (n.kind == op_kind::conv2d) {
      d.layers_.push_back({name, std::make_shared<analog_layer<Tile, true>>(n, opt)});
    } else {
      d.layers_.push_back({name, std::make_shared<analog_layer<Tile, false>>(n, opt)});
    }
  }
  std::size_t placed = 0;
  try {
    for (const auto& e : d.layers_) {
      std::visit([&](const auto& l) { net.set_layer(e.name, l); }, e.layer);
      ++placed;
    }
  } catch (...) {
    for (std::size_t i = 0; i < placed; ++i) net.reset_layer(d.layers_[i].name);
    throw;
  }
  return d;
}

}  // namespace rimc
