#pragma once
/// \file
/// Deployment of a network onto RRAM crossbars: chosen conv2d / linear nodes
/// (by default all) are replaced by analog layers programmed from their
/// (batch-norm-folded) weights; everything else stays digital. The returned
/// handle drifts every analog layer at once, reproducibly from a seed, and
/// counts RRAM writes.

#include <rimc/crossbar/analog_layers.hpp>
#include <rimc/nn/network.hpp>

#include <memory>
#include <string>
#include <vector>

namespace rimc {

namespace detail {
template <class Tile>
class analog_conv_layer final : public frozen_layer {
 public:
  analog_conv_layer(const network_node& n, const analog_options& opt)
      : a_(n.params.at("weight"), bias_of(n), n.conv, opt) {}
  void forward(const Tensor& src, Tensor& dst) const override { a_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override { a_.backward_data(dy, s, dx); }
  [[nodiscard]] const Tensor& effective_weights() const override { return a_.effective_weights(); }
  [[nodiscard]] std::uint64_t rram_writes() const override { return a_.rram_writes(); }
  [[nodiscard]] bool is_analog() const override { return true; }
  [[nodiscard]] basic_analog_conv2d<Tile>& analog() noexcept { return a_; }

  static std::optional<Tensor> bias_of(const network_node& n) {
    const auto b = n.params.find("bias");
    return b == n.params.end() ? std::nullopt : std::optional<Tensor>(b->second);
  }

 private:
  basic_analog_conv2d<Tile> a_;
};

template <class Tile>
class analog_linear_layer final : public frozen_layer {
 public:
  analog_linear_layer(const network_node& n, const analog_options& opt)
      : a_(n.params.at("weight"), analog_conv_layer<Tile>::bias_of(n), opt, n.relu_after) {}
  void forward(const Tensor& src, Tensor& dst) const override { a_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override {
    a_.backward_data(dy, dx);
    if (s.rank() == 4) dx.reshape(s);
  }
  [[nodiscard]] const Tensor& effective_weights() const override { return a_.effective_weights(); }
  [[nodiscard]] std::uint64_t rram_writes() const override { return a_.rram_writes(); }
  [[nodiscard]] bool is_analog() const override { return true; }
  [[nodiscard]] basic_analog_linear<Tile>& analog() noexcept { return a_; }

 private:
  basic_analog_linear<Tile> a_;
};
}  // namespace detail

/// The analog layers of a deployed network.
template <class Tile = CrossbarTile<>>
class analog_deployment {
 public:
  /// Names of the nodes that run on crossbars.
  [[nodiscard]] const std::vector<std::string>& names() const noexcept { return names_; }

  /// Drifts every analog layer to time / level `t_or_level` of `model`, from
  /// the programmed state (never accumulated); layer i uses seed mixed with its node index.
  template <class Model>
  void drift_to(const Model& model, double t_or_level, std::uint64_t seed) {
    for (auto& c : convs_) c->analog().drift_to(model, t_or_level, seed);
    for (auto& l : linears_) l->analog().drift_to(model, t_or_level, seed);
  }

  /// Back to the freshly programmed conductances.
  void reset_drift() {
    for (auto& c : convs_) c->analog().reset_drift();
    for (auto& l : linears_) l->analog().reset_drift();
  }

  /// RRAM programming events over all layers.
  [[nodiscard]] std::uint64_t rram_writes() const {
    std::uint64_t w = 0;
    for (const auto& c : convs_) w += c->rram_writes();
    for (const auto& l : linears_) w += l->rram_writes();
    return w;
  }

  /// Weights on the crossbars.
  [[nodiscard]] std::int64_t rram_weights() const {
    std::int64_t n = 0;
    for (const auto& c : convs_) n += c->effective_weights().numel();
    for (const auto& l : linears_) n += l->effective_weights().numel();
    return n;
  }

  std::vector<std::shared_ptr<detail::analog_conv_layer<Tile>>> convs_;
  std::vector<std::shared_ptr<detail::analog_linear_layer<Tile>>> linears_;
  std::vector<std::string> names_;
};

/// Programs the conv2d / linear nodes `names` of `net` (all of them when
/// empty) onto crossbars with `options`; each layer's seeds are mixed with its
/// node index. Fold batch norm first so the folded weights are programmed.
template <class Tile = CrossbarTile<>>
[[nodiscard]] analog_deployment<Tile> deploy_analog(network& net, const analog_options& options,
                                                    std::vector<std::string> names = {}) {
  if (names.empty()) {
    for (const auto& n : net.nodes())
      if (n.kind == op_kind::conv2d || n.kind == op_kind::linear) names.push_back(n.name);
  }
  analog_deployment<Tile> d;
  for (const auto& name : names) {
    const network_node& n = net.node(name);
    analog_options opt = options;
    opt.layer_id = static_cast<std::uint64_t>(net.id(name));
    if (n.kind == op_kind::conv2d) {
      auto layer = std::make_shared<detail::analog_conv_layer<Tile>>(n, opt);
      d.convs_.push_back(layer);
      net.set_layer(name, layer);
    } else if (n.kind == op_kind::linear) {
      auto layer = std::make_shared<detail::analog_linear_layer<Tile>>(n, opt);
      d.linears_.push_back(layer);
      net.set_layer(name, layer);
    } else {
      throw value_error(detail::concat("deploy_analog: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    d.names_.push_back(name);
  }
  return d;
}

}  // namespace rimc
