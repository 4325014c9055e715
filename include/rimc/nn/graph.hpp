#pragma once
/// \file
/// rimc::graph: the nodes and names of a network, as users assemble it in
/// code. Node names equal PyTorch state_dict prefixes ("layer1.0.conv1"), so
/// weights load by name from a safetensors export; shapes are inferred and
/// checked when a node is added, not when the network runs. Nodes are kept in
/// the order they were added, which is a topological order (a node can only
/// consume nodes that exist), so cycles cannot be built.
///
/// Every conv2d and linear node has its compute (a rimc::layer) from the
/// moment it exists: a digital oneDNN layer rebuilt whenever its parameters
/// change, or a layer put in its place by set_layer() (an analog layer after
/// deployment, an adapted layer during calibration). Nothing is built lazily,
/// so a const network can be run from several threads at once.
///
/// The passes (batch-norm folding, ReLU fusion; nn/passes.hpp), the executor
/// (nn/executor.hpp) and parameter files (nn/serialize.hpp) work on a graph;
/// rimc::network (nn/network.hpp) puts them behind one type.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/pooling.hpp>
#include <rimc/nn/layer.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// The operation of a network node.
enum class op_kind : std::uint8_t { input, conv2d, batch_norm, relu, max_pool, avg_pool, global_avg_pool, add, flatten, linear };

/// A name for each op_kind ("conv2d", ...).
[[nodiscard]] inline std::string_view to_string(op_kind k) noexcept {
  constexpr std::string_view names[] = {"input", "conv2d",          "batch_norm", "relu",    "max_pool",
                                        "avg_pool", "global_avg_pool", "add",        "flatten", "linear"};
  return names[static_cast<int>(k)];
}

/// One node of a network. Read it through graph::node(); change it through
/// the graph (set_parameter, set_layer, the passes), which keeps its layer in step.
struct network_node {
  /// Unique node name; parameters load and save as `<name>.<param>` (PyTorch state_dict keys).
  std::string name;
  /// The operation.
  op_kind kind = op_kind::input;
  std::vector<int> inputs;  ///< indices of the nodes it consumes
  Shape shape;              ///< per-sample output shape: [C, H, W] or [F]
  conv2d_params conv{};     ///< conv2d geometry (relu: a fused ReLU)
  /// conv2d kernel height and width.
  ///@{
  std::int64_t kernel_h = 0, kernel_w = 0;
  ///@}
  pool2d_params pool{};      ///< max_pool / avg_pool
  double bn_eps = 1e-5;      ///< batch_norm
  bool relu_after = false;   ///< linear / add: fused ReLU
  bool bypass = false;       ///< an identity (a batch_norm folded into its conv, a relu fused into its producer)
  bool folded = false;       ///< batch_norm: folded into the conv2d before it
  std::map<std::string, Tensor> params;  ///< "weight", "bias", "running_mean", "running_var", "num_batches_tracked"
  std::shared_ptr<rimc::layer> layer;          ///< conv2d / linear compute (the digital one, or set_layer's)
  std::shared_ptr<rimc::layer> digital_layer;  ///< conv2d / linear: the digital layer built from `params`
  std::shared_ptr<const rimc::pool2d> pool_kernel;  ///< max_pool / avg_pool compute

  /// Whether this is a conv2d or linear node (one with a layer).
  [[nodiscard]] bool has_layer() const noexcept { return kind == op_kind::conv2d || kind == op_kind::linear; }
  /// Whether the node runs its own digital layer (not a deployed or adapted one).
  [[nodiscard]] bool own_layer() const noexcept { return layer && layer == digital_layer; }
};

class graph;
namespace detail {
/// Throws value_error("<who>: <noun> '<name>' is listed twice") for the first
/// name in `names` that repeats an earlier one.
inline void check_listed_once(const std::vector<std::string>& names, std::string_view who, std::string_view noun) {
  for (auto it = names.begin(); it != names.end(); ++it) {
    if (std::find(names.begin(), it, *it) != it) throw value_error(concat(who, ": ", noun, " '", *it, "' is listed twice"));
  }
}

/// The graph's internals for the passes, the executor and the parameter files (nn/ only).
struct graph_access {
  static std::vector<network_node>& nodes(graph& g);
  static void rebuild_layer(graph& g, network_node& n);
};
}  // namespace detail

/// The nodes of a network and their names (see the file comment).
class graph {
 public:
  /// The input node, per-sample shape [C, H, W] (or [F]).
  int input(const Shape& per_sample, std::string name = "input") {
    if (!nodes_.empty()) throw value_error("network::input: the input must be the first node");
    return push(make(std::move(name), op_kind::input, {}, per_sample));
  }

  /// A conv2d node: weights [out_channels, C, kernel, kernel], optional bias.
  int conv2d(std::string name, int in, std::int64_t out_channels, std::int64_t kernel, conv2d_params p = {},
             bool bias = false) {
    return conv2d(std::move(name), in, out_channels, {kernel, kernel}, p, bias);
  }
  /// A conv2d node with a kernel of kernel[0] x kernel[1].
  int conv2d(std::string name, int in, std::int64_t out_channels, std::array<std::int64_t, 2> kernel,
             conv2d_params p = {}, bool bias = false) {
    const Shape& s = image_input("conv2d", name, in);
    if (out_channels < 1 || kernel[0] < 1 || kernel[1] < 1) {
      throw value_error(detail::concat("network: conv2d '", name, "' needs out_channels and kernel >= 1, got ",
                                       out_channels, " and ", kernel[0], "x", kernel[1]));
    }
    const Shape w{out_channels, s[0] / std::max<std::int64_t>(p.groups, 1), kernel[0], kernel[1]};
    const Shape out = conv2d_output_shape(Shape{1, s[0], s[1], s[2]}, w, p);
    network_node n = make(std::move(name), op_kind::conv2d, {in}, Shape{out[1], out[2], out[3]});
    n.conv = p;
    n.kernel_h = kernel[0];
    n.kernel_w = kernel[1];
    n.params["weight"] = Tensor(w);
    if (bias) n.params["bias"] = Tensor(Shape{out_channels});
    build_layer(n);
    return push(std::move(n));
  }

  /// A batch-norm node (inference statistics): weight, bias, running_mean, running_var.
  int batch_norm(std::string name, int in, double eps = 1e-5) {
    const Shape& s = image_input("batch_norm", name, in);
    if (!(eps > 0) || !std::isfinite(eps)) {
      throw value_error(detail::concat("network: batch_norm '", name, "': eps must be positive, got ", eps));
    }
    network_node n = make(std::move(name), op_kind::batch_norm, {in}, s);
    n.bn_eps = eps;
    const Shape c{s[0]};
    n.params["weight"] = Tensor(c);
    n.params["weight"].fill(1.0f);
    n.params["bias"] = Tensor(c);
    n.params["running_mean"] = Tensor(c);
    n.params["running_var"] = Tensor(c);
    n.params["running_var"].fill(1.0f);
    n.params["num_batches_tracked"] = Tensor(Shape{});
    return push(std::move(n));
  }

  /// A ReLU node.
  int relu(std::string name, int in) { return push(make(std::move(name), op_kind::relu, {in}, checked(in, "relu").shape)); }

  /// A max-pooling node.
  int max_pool(std::string name, int in, pool2d_params p) { return pool(std::move(name), in, p, op_kind::max_pool); }
  /// An average-pooling node.
  int avg_pool(std::string name, int in, pool2d_params p) { return pool(std::move(name), in, p, op_kind::avg_pool); }

  /// Global average pooling: [C, H, W] -> [C, 1, 1].
  int global_avg_pool(std::string name, int in) {
    const Shape& s = image_input("global_avg_pool", name, in);
    return push(make(std::move(name), op_kind::global_avg_pool, {in}, Shape{s[0], 1, 1}));
  }

  /// Element-wise sum of two nodes of the same shape (residual connections).
  int add(std::string name, int a, int b, bool relu_after = false) {
    const Shape& sa = checked(a, "add").shape;
    const Shape& sb = checked(b, "add").shape;
    if (!(sa == sb)) {
      throw shape_error(detail::concat("network: add '", name, "': inputs '", nodes_[idx(a)].name, "' ",
                                       sa.to_string(), " and '", nodes_[idx(b)].name, "' ", sb.to_string(), " differ"));
    }
    network_node n = make(std::move(name), op_kind::add, {a, b}, sa);
    n.relu_after = relu_after;
    return push(std::move(n));
  }

  /// [C, H, W] -> [C H W] in channels-first order (PyTorch's flatten(1)).
  int flatten(std::string name, int in) {
    const Shape& s = checked(in, "flatten").shape;
    return push(make(std::move(name), op_kind::flatten, {in}, Shape{s.numel()}));
  }

  /// A linear node: weights [out_features, F], bias [out_features].
  int linear(std::string name, int in, std::int64_t out_features, bool bias = true) {
    const Shape& s = checked(in, "linear").shape;
    if (s.rank() != 1) {
      throw shape_error(detail::concat("network: linear '", name, "' needs a flat input, but '", nodes_[idx(in)].name,
                                       "' is ", s.to_string(), "; add a flatten node"));
    }
    if (out_features < 1) {
      throw value_error(detail::concat("network: linear '", name, "' needs out_features >= 1, got ", out_features));
    }
    network_node n = make(std::move(name), op_kind::linear, {in}, Shape{out_features});
    n.params["weight"] = Tensor(Shape{out_features, s[0]});
    if (bias) n.params["bias"] = Tensor(Shape{out_features});
    build_layer(n);
    return push(std::move(n));
  }

  /// Marks the node whose output forward() returns (default: the last node).
  void set_output(int id) {
    (void)checked(id, "set_output");
    output_ = id;
  }

  /// Number of nodes.
  [[nodiscard]] std::size_t size() const noexcept { return nodes_.size(); }
  /// Every node, in network (topological) order.
  [[nodiscard]] const std::vector<network_node>& nodes() const noexcept { return nodes_; }
  /// The node whose output forward() returns.
  [[nodiscard]] int output() const noexcept { return output_ >= 0 ? output_ : static_cast<int>(nodes_.size()) - 1; }

  /// The index of node `name`; throws naming it if unknown.
  [[nodiscard]] int id(std::string_view name) const {
    const auto it = index_.find(std::string(name));
    if (it == index_.end()) throw value_error(detail::concat("network: no node named '", name, "'"));
    return it->second;
  }
  /// Node `name`; throws naming it if unknown.
  [[nodiscard]] const network_node& node(std::string_view name) const { return nodes_[idx(id(name))]; }
  /// Whether a node named `name` exists.
  [[nodiscard]] bool contains(std::string_view name) const { return index_.contains(std::string(name)); }

  /// Every parameter as "<node>.<param>" -> shape, in state_dict naming.
  [[nodiscard]] std::map<std::string, Shape> parameter_shapes() const {
    std::map<std::string, Shape> out;
    for (const auto& n : nodes_)
      for (const auto& [p, t] : n.params) out[n.name + "." + p] = t.shape();
    return out;
  }

  /// Replaces parameter `key` ("weight", "running_var", ...) of node `name`
  /// (same shape, finite values) and rebuilds the node's digital layer. A
  /// node running a deployed or adapted layer keeps its parameters: set them
  /// before deploy_analog() or attaching adapters.
  void set_parameter(std::string_view name, const std::string& key, Tensor value) {
    network_node& n = nodes_[idx(id(name))];
    const auto it = n.params.find(key);
    if (it == n.params.end()) {
      throw value_error(detail::concat("network::set_parameter: node '", name, "' (", to_string(n.kind),
                                       ") has no parameter '", key, "'"));
    }
    check_same_shape(detail::concat("network::set_parameter: '", name, ".", key, "'"), value.shape(),
                     it->second.shape());
    check_finite(detail::concat("network::set_parameter: '", name, ".", key, "'"), value);
    if (n.has_layer() && !n.own_layer()) {
      throw value_error(detail::concat("network::set_parameter: node '", name,
                                       "' runs a deployed or adapted layer; set its parameters before deploying"));
    }
    it->second = value.to_layout(layout::nchw);
    if (n.has_layer()) build_layer(n);
  }

  /// Replaces the compute of conv2d / linear node `name` (an analog layer, an
  /// adapted layer, or any user type): it must apply weights of the node's shape.
  void set_layer(std::string_view name, std::shared_ptr<rimc::layer> l) {
    network_node& n = nodes_[idx(id(name))];
    if (!n.has_layer()) {
      throw value_error(detail::concat("network::set_layer: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    if (!l) throw value_error(detail::concat("network::set_layer: no layer given for node '", name, "'"));
    if (!(l->effective_weights().shape() == n.params.at("weight").shape())) {
      throw shape_error(detail::concat("network::set_layer: a layer with weights ",
                                       l->effective_weights().shape().to_string(), " on node '", name,
                                       "' with weights ", n.params.at("weight").shape().to_string()));
    }
    if ((l->conv_params() != nullptr) != (n.kind == op_kind::conv2d)) {
      throw value_error(detail::concat("network::set_layer: node '", name, "' is a ", to_string(n.kind),
                                       " but the layer is a ", l->conv_params() ? "convolution" : "linear layer"));
    }
    n.layer = std::move(l);
  }

  /// Puts the node's digital layer (built from its parameters) back in place of set_layer's.
  void reset_layer(std::string_view name) {
    network_node& n = nodes_[idx(id(name))];
    if (!n.has_layer()) {
      throw value_error(detail::concat("network::reset_layer: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    n.layer = n.digital_layer;
  }

  /// The compute of conv2d / linear node `name`.
  [[nodiscard]] const rimc::layer& layer(std::string_view name) const { return *layer_ptr(name); }
  /// The compute of conv2d / linear node `name`, shared.
  [[nodiscard]] std::shared_ptr<rimc::layer> layer_ptr(std::string_view name) const {
    const network_node& n = node(name);
    if (!n.has_layer()) {
      throw value_error(detail::concat("network: node '", name, "' (", to_string(n.kind), ") has no layer"));
    }
    return n.layer;
  }

  /// Total RRAM programming events over all layers.
  [[nodiscard]] std::uint64_t rram_writes() const {
    std::uint64_t w = 0;
    for (const auto& n : nodes_)
      if (n.layer) w += n.layer->rram_writes();
    return w;
  }

  /// Names of the conv2d and linear nodes, in network order.
  [[nodiscard]] std::vector<std::string> layer_names() const {
    std::vector<std::string> out;
    for (const auto& n : nodes_)
      if (n.has_layer()) out.push_back(n.name);
    return out;
  }

  /// Whether every batch norm is folded (true when there is none).
  [[nodiscard]] bool batch_norm_folded() const noexcept {
    return std::all_of(nodes_.begin(), nodes_.end(),
                       [](const network_node& n) { return n.kind != op_kind::batch_norm || n.folded; });
  }

  /// The node a node's value really comes from (skipping identities).
  [[nodiscard]] int resolve(int id) const {
    while (nodes_[idx(id)].bypass) id = nodes_[idx(id)].inputs[0];
    return id;
  }

  /// How many nodes consume node `id` (the output counts as one).
  [[nodiscard]] int consumers(int id) const {
    int c = 0;
    for (const auto& n : nodes_)
      for (int i : n.inputs) c += (i == id) ? 1 : 0;
    return c + (output() == id ? 1 : 0);
  }

  /// How many running nodes read node `id`'s value, directly or through
  /// bypassed nodes (a folded batch norm passes its producer's value on; the
  /// output counts as one).
  [[nodiscard]] int value_consumers(int id) const {
    int c = 0;
    for (const auto& n : nodes_) {
      if (n.bypass) continue;
      for (int i : n.inputs) c += (resolve(i) == id) ? 1 : 0;
    }
    return c + (resolve(output()) == id ? 1 : 0);
  }

 protected:
  /// Node id `i` as an index into the node list.
  [[nodiscard]] static std::size_t idx(int i) noexcept { return static_cast<std::size_t>(i); }

 private:
  friend struct detail::graph_access;

  network_node make(std::string name, op_kind kind, std::vector<int> inputs, Shape shape) {
    if (name.empty()) throw value_error(detail::concat("network: a ", to_string(kind), " node needs a name"));
    if (index_.contains(name)) throw value_error(detail::concat("network: a node named '", name, "' exists already"));
    if (kind != op_kind::input && nodes_.empty()) {
      throw value_error(detail::concat("network: add the input node before '", name, "'"));
    }
    network_node n;
    n.name = std::move(name);
    n.kind = kind;
    n.inputs = std::move(inputs);
    n.shape = shape;
    return n;
  }
  int push(network_node n) {
    const int id = static_cast<int>(nodes_.size());
    index_[n.name] = id;
    nodes_.push_back(std::move(n));
    return id;
  }
  const network_node& checked(int id, std::string_view what) const {
    if (id < 0 || id >= static_cast<int>(nodes_.size())) {
      throw value_error(detail::concat("network: ", what, " refers to node ", id, ", which does not exist (",
                                       nodes_.size(), " nodes so far)"));
    }
    return nodes_[idx(id)];
  }
  const Shape& image_input(std::string_view what, const std::string& name, int in) const {
    const Shape& s = checked(in, what).shape;
    if (s.rank() != 3) {
      throw shape_error(detail::concat("network: ", what, " '", name, "' needs a [C, H, W] input, but '",
                                       nodes_[idx(in)].name, "' is ", s.to_string()));
    }
    return s;
  }
  int pool(std::string name, int in, pool2d_params p, op_kind kind) {
    const Shape& s = image_input(to_string(kind), name, in);
    p.kind = kind == op_kind::max_pool ? pool_kind::max : pool_kind::avg;
    const Shape out = pool2d_output_shape(Shape{1, s[0], s[1], s[2]}, p);
    network_node n = make(std::move(name), kind, {in}, Shape{out[1], out[2], out[3]});
    n.pool = p;
    n.pool_kernel = std::make_shared<const rimc::pool2d>(p);
    return push(std::move(n));
  }

  /// (Re)builds the digital layer of a conv2d / linear node from its parameters.
  static void build_layer(network_node& n) {
    const auto b = n.params.find("bias");
    std::optional<Tensor> bias = b == n.params.end() ? std::nullopt : std::optional<Tensor>(b->second);
    if (n.kind == op_kind::conv2d) {
      n.digital_layer = std::make_shared<digital_conv2d>(n.params.at("weight"), std::move(bias), n.conv);
    } else {
      n.digital_layer = std::make_shared<digital_linear>(n.params.at("weight"), std::move(bias), n.relu_after);
    }
    n.layer = n.digital_layer;
  }

  std::vector<network_node> nodes_;
  std::map<std::string, int> index_;
  int output_ = -1;
};

namespace detail {
inline std::vector<network_node>& graph_access::nodes(graph& g) { return g.nodes_; }
inline void graph_access::rebuild_layer(graph& /*g*/, network_node& n) { graph::build_layer(n); }
}  // namespace detail

}  // namespace rimc
