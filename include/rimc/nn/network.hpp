#pragma once
/// \file
/// rimc::network: a small DAG of named layers that users assemble in code.
/// Node names equal PyTorch state_dict prefixes ("layer1.0.conv1"), so
/// weights load by name from a safetensors export; shapes are inferred and
/// checked when a node is added, not when the network runs. Nodes are kept
/// in the order they were added, which is a topological order (a node can
/// only consume nodes that exist), so cycles cannot be built.
///
/// Running reuses activation buffers: each node's output is released after
/// its last consumer, so peak memory is the activations alive at once. Any
/// node's output can be captured by name (calibration needs the teacher's
/// and the student's features).

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/pooling.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
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

/// A frozen layer's compute: the digital oneDNN kernel, or an analog layer
/// that stands in for it after deployment onto crossbars.
class frozen_layer {
 public:
  frozen_layer() = default;
  frozen_layer(const frozen_layer&) = delete;
  frozen_layer& operator=(const frozen_layer&) = delete;
  virtual ~frozen_layer() = default;
  /// dst = layer(src), bias and fused ReLU included.
  virtual void forward(const Tensor& src, Tensor& dst) const = 0;
  /// dL/dsrc through the layer's weights (no bias, no ReLU).
  virtual void backward_data(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src) const = 0;
  /// The weights the layer applies right now (PyTorch layout).
  [[nodiscard]] virtual const Tensor& effective_weights() const = 0;
  /// RRAM cell programming events so far (0 for digital layers).
  [[nodiscard]] virtual std::uint64_t rram_writes() const { return 0; }
  /// Whether this layer runs on crossbars.
  [[nodiscard]] virtual bool is_analog() const { return false; }
};

namespace detail {
class digital_conv final : public frozen_layer {
 public:
  digital_conv(const Tensor& w, std::optional<Tensor> b, const conv2d_params& p) : k_(w, std::move(b), p) {}
  void forward(const Tensor& src, Tensor& dst) const override { k_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override { k_.backward_data(dy, s, dx); }
  [[nodiscard]] const Tensor& effective_weights() const override { return k_.weights(); }

 private:
  rimc::conv2d k_;
};

class digital_linear final : public frozen_layer {
 public:
  digital_linear(const Tensor& w, std::optional<Tensor> b, bool relu) : k_(w, std::move(b), relu) {}
  void forward(const Tensor& src, Tensor& dst) const override { k_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override {
    k_.backward_data(dy, dx);
    if (s.rank() == 4) dx.reshape(s);
  }
  [[nodiscard]] const Tensor& effective_weights() const override { return k_.weights(); }

 private:
  rimc::linear k_;
};
}  // namespace detail

/// One node of a network.
struct network_node {
  std::string name;
  op_kind kind = op_kind::input;
  std::vector<int> inputs;  ///< indices of the nodes it consumes
  Shape shape;              ///< per-sample output shape: [C, H, W] or [F]
  // Geometry and settings of the op.
  conv2d_params conv{};      ///< conv2d (relu = fused ReLU)
  std::int64_t kernel_h = 0, kernel_w = 0;
  pool2d_params pool{};      ///< max_pool / avg_pool
  double bn_eps = 1e-5;      ///< batch_norm
  bool relu_after = false;   ///< linear / add: fused ReLU
  bool bypass = false;       ///< an identity (a batch_norm folded into its conv, a relu fused into its producer)
  std::map<std::string, Tensor> params;  ///< "weight", "bias", "running_mean", "running_var", "num_batches_tracked"
  std::shared_ptr<frozen_layer> layer;   ///< conv2d / linear compute, built on demand
  std::shared_ptr<rimc::pool2d> pool_kernel;  ///< max_pool / avg_pool compute, built on demand
  std::shared_ptr<const dora_adapter> adapter;  ///< conv2d / linear: a DoRA adapter applied on top of the layer
};

/// What a training forward keeps for the backward pass: every node's output,
/// and for adapted nodes W0 x and the adapter's cache.
struct network_tape {
  std::vector<Tensor> values;               ///< output of node i (empty for identities)
  std::map<int, Tensor> base_out;           ///< adapted node -> W0 x (no bias)
  std::map<int, dora_cache> caches;         ///< adapted node -> adapter cache
};

/// A small DAG of named layers (see the file comment).
class network {
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
  int conv2d(std::string name, int in, std::int64_t out_channels, std::array<std::int64_t, 2> kernel,
             conv2d_params p = {}, bool bias = false) {
    const Shape& s = image_input("conv2d", name, in);
    const Shape w{out_channels, s[0] / std::max<std::int64_t>(p.groups, 1), kernel[0], kernel[1]};
    const Shape out = conv2d_output_shape(Shape{1, s[0], s[1], s[2]}, w, p);
    network_node n = make(std::move(name), op_kind::conv2d, {in}, Shape{out[1], out[2], out[3]});
    n.conv = p;
    n.kernel_h = kernel[0];
    n.kernel_w = kernel[1];
    n.params["weight"] = Tensor(w);
    if (bias) n.params["bias"] = Tensor(Shape{out_channels});
    return push(std::move(n));
  }

  /// A batch-norm node (inference statistics): weight, bias, running_mean, running_var.
  int batch_norm(std::string name, int in, double eps = 1e-5) {
    const Shape& s = image_input("batch_norm", name, in);
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

  int relu(std::string name, int in) {
    return push(make(std::move(name), op_kind::relu, {in}, checked(in, "relu").shape));
  }

  int max_pool(std::string name, int in, pool2d_params p) { return pool(std::move(name), in, p, op_kind::max_pool); }
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
      throw shape_error(detail::concat("network: add '", name, "': inputs '", nodes_[a].name, "' ",
                                       sa.to_string(), " and '", nodes_[b].name, "' ", sb.to_string(), " differ"));
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
      throw shape_error(detail::concat("network: linear '", name, "' needs a flat input, but '", nodes_[in].name,
                                       "' is ", s.to_string(), "; add a flatten node"));
    }
    network_node n = make(std::move(name), op_kind::linear, {in}, Shape{out_features});
    n.params["weight"] = Tensor(Shape{out_features, s[0]});
    if (bias) n.params["bias"] = Tensor(Shape{out_features});
    return push(std::move(n));
  }

  /// Marks the node whose output forward() returns (default: the last node).
  void set_output(int id) {
    (void)checked(id, "set_output");
    output_ = id;
  }

  [[nodiscard]] std::size_t size() const noexcept { return nodes_.size(); }
  [[nodiscard]] const std::vector<network_node>& nodes() const noexcept { return nodes_; }
  [[nodiscard]] int output() const noexcept { return output_ >= 0 ? output_ : static_cast<int>(nodes_.size()) - 1; }

  /// The index of node `name`; throws naming it if unknown.
  [[nodiscard]] int id(std::string_view name) const {
    const auto it = index_.find(std::string(name));
    if (it == index_.end()) throw value_error(detail::concat("network: no node named '", name, "'"));
    return it->second;
  }
  [[nodiscard]] const network_node& node(std::string_view name) const { return nodes_[static_cast<std::size_t>(id(name))]; }
  [[nodiscard]] network_node& node(std::string_view name) { return nodes_[static_cast<std::size_t>(id(name))]; }

  /// Every parameter as "<node>.<param>" -> shape, in state_dict naming.
  [[nodiscard]] std::map<std::string, Shape> parameter_shapes() const {
    std::map<std::string, Shape> out;
    for (const auto& n : nodes_)
      for (const auto& [p, t] : n.params) out[n.name + "." + p] = t.shape();
    return out;
  }

  /// Loads every parameter from `file` by name. With `strict`, a missing or
  /// extra key is an error; a shape mismatch always is. Nothing changes
  /// unless everything loads.
  void load(const safetensors_file& file, bool strict = true) {
    std::map<std::string, Tensor> staged;
    for (const auto& n : nodes_) {
      for (const auto& [p, t] : n.params) {
        const std::string key = n.name + "." + p;
        if (!file.contains(key)) {
          if (strict) throw io_error(detail::concat(file.source(), ": missing tensor '", key, "'"));
          continue;
        }
        Tensor v = file.tensor(key);
        if (!(v.shape() == t.shape())) {
          throw shape_error(detail::concat(file.source(), ": tensor '", key, "' has shape ", v.shape().to_string(),
                                           " but the network expects ", t.shape().to_string()));
        }
        staged.emplace(key, std::move(v));
      }
    }
    if (strict) {
      for (const auto& i : file.tensors()) {
        if (!staged.contains(i.name)) {
          throw io_error(detail::concat(file.source(), ": tensor '", i.name, "' matches no network parameter"));
        }
      }
    }
    for (auto& n : nodes_) {
      for (auto& [p, t] : n.params) {
        auto it = staged.find(n.name + "." + p);
        if (it != staged.end()) t = std::move(it->second);
      }
      n.layer.reset();
    }
  }
  void load(const std::filesystem::path& path, bool strict = true) { load(safetensors_file::load(path), strict); }

  /// Writes every parameter to `path` (atomically), with `metadata`.
  void save(const std::filesystem::path& path, const std::map<std::string, std::string>& metadata = {}) const {
    std::map<std::string, Tensor> all;
    for (const auto& n : nodes_)
      for (const auto& [p, t] : n.params) all.emplace(n.name + "." + p, t);
    save_safetensors(path, all, metadata);
  }

  /// Folds each batch norm into the conv2d it directly follows (when the conv
  /// feeds nothing else): w' = w gamma / sqrt(var + eps), b' = (b - mean)
  /// gamma / sqrt(var + eps) + beta. The batch-norm node becomes an identity
  /// and the conv keeps its name, so adapters and files still address it.
  void fold_batch_norm() {
    for (auto& bn : nodes_) {
      if (bn.kind != op_kind::batch_norm || bn.bypass) continue;
      network_node& conv = nodes_[static_cast<std::size_t>(bn.inputs[0])];
      if (conv.kind != op_kind::conv2d || consumers(bn.inputs[0]) != 1 || conv.conv.relu) continue;
      if (conv.layer && conv.layer->is_analog()) {
        throw value_error(detail::concat("network::fold_batch_norm: '", conv.name,
                                         "' is already on crossbars; fold batch norm before deploying"));
      }
      const auto O = conv.shape[0];
      Tensor& w = conv.params["weight"];
      if (!conv.params.contains("bias")) conv.params["bias"] = Tensor(Shape{O});
      Tensor& b = conv.params["bias"];
      const auto K = w.numel() / O;
      for (std::int64_t o = 0; o < O; ++o) {
        const double scale =
            bn.params["weight"][o] / std::sqrt(static_cast<double>(bn.params["running_var"][o]) + bn.bn_eps);
        for (std::int64_t k = 0; k < K; ++k) w[o * K + k] = static_cast<float>(w[o * K + k] * scale);
        b[o] = static_cast<float>((b[o] - bn.params["running_mean"][o]) * scale + bn.params["bias"][o]);
      }
      bn.bypass = true;
      bn.params.clear();
      conv.layer.reset();
    }
  }

  /// Fuses each ReLU into the conv2d / linear / add it follows when that
  /// producer feeds nothing else (oneDNN post-op); the relu node becomes an identity.
  void fuse_relu() {
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      network_node& r = nodes_[i];
      if (r.kind != op_kind::relu || r.bypass) continue;
      const int src = resolve(r.inputs[0]);
      network_node& p = nodes_[static_cast<std::size_t>(src)];
      if (consumers(src) != 1 || (p.layer && p.layer->is_analog())) continue;  // analog layers keep their epilogue
      if (p.kind == op_kind::conv2d && !p.conv.relu) {
        p.conv.relu = true;
      } else if ((p.kind == op_kind::linear || p.kind == op_kind::add) && !p.relu_after) {
        p.relu_after = true;
      } else {
        continue;
      }
      p.layer.reset();
      r.bypass = true;
    }
  }

  /// Replaces the compute of conv2d / linear node `name` (e.g. by an analog layer).
  void set_layer(std::string_view name, std::shared_ptr<frozen_layer> layer) {
    network_node& n = node(name);
    if (n.kind != op_kind::conv2d && n.kind != op_kind::linear) {
      throw value_error(detail::concat("network::set_layer: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    n.layer = std::move(layer);
  }

  /// The compute of conv2d / linear node `name` (built from its parameters on first use).
  [[nodiscard]] const frozen_layer& layer(std::string_view name) const { return layer_of(nodes_[static_cast<std::size_t>(id(name))]); }

  /// Applies `adapter` on top of conv2d / linear node `name`: its output
  /// becomes the adapter's gamma (W0 x + s B A x) + bias, with W0 x from the
  /// node's (possibly analog) layer. The node must not have a fused ReLU.
  void attach_adapter(std::string_view name, std::shared_ptr<const dora_adapter> adapter) {
    network_node& n = node(name);
    if (n.kind != op_kind::conv2d && n.kind != op_kind::linear) {
      throw value_error(detail::concat("network::attach_adapter: node '", name, "' is a ", to_string(n.kind),
                                       ", not a conv2d or linear"));
    }
    if (n.conv.relu || n.relu_after) {
      throw value_error(detail::concat("network::attach_adapter: node '", name,
                                       "' has a fused ReLU; attach adapters to a network without fuse_relu()"));
    }
    if (adapter && !(adapter->base_weights().shape() == n.params.at("weight").shape())) {
      throw shape_error(detail::concat("network::attach_adapter: adapter for ", adapter->base_weights().shape().to_string(),
                                       " weights on node '", name, "' with weights ",
                                       n.params.at("weight").shape().to_string()));
    }
    n.adapter = std::move(adapter);
  }
  /// Removes every adapter.
  void detach_adapters() {
    for (auto& n : nodes_) n.adapter.reset();
  }

  /// Total RRAM programming events over all layers.
  [[nodiscard]] std::uint64_t rram_writes() const {
    std::uint64_t w = 0;
    for (const auto& n : nodes_)
      if (n.layer) w += n.layer->rram_writes();
    return w;
  }

  /// The output for a batch x [N, C, H, W] (or [N, F]).
  [[nodiscard]] Tensor forward(const Tensor& x) const {
    std::map<std::string, Tensor> none;
    return forward(x, {}, none);
  }

  /// As forward(x), also copying the outputs of the nodes named in `capture` into `captured`.
  [[nodiscard]] Tensor forward(const Tensor& x, const std::vector<std::string>& capture,
                               std::map<std::string, Tensor>& captured) const {
    return run(x, 0, output(), capture, captured);
  }

  /// Runs nodes (from, to] given the output of node `from` (e.g. the student's
  /// activation entering a layer), capturing as forward does.
  [[nodiscard]] Tensor forward_from(int from, const Tensor& value, int to, const std::vector<std::string>& capture,
                                    std::map<std::string, Tensor>& captured) const {
    return run(value, from, to, capture, captured);
  }

  /// Runs nodes (from, to] given the outputs of the earlier nodes they
  /// consume in `known` (by node index; read, never copied or overwritten),
  /// capturing as forward does: resumes a forward pass from the values an
  /// earlier pass left (layer-wise calibration runs each prefix once).
  [[nodiscard]] Tensor forward_from(int from, const std::map<int, Tensor>& known, int to,
                                    const std::vector<std::string>& capture,
                                    std::map<std::string, Tensor>& captured) const {
    return run(Tensor(), from, to, capture, captured, &known);
  }

  /// A forward pass that keeps every node's output in `tape` for backward().
  /// Nodes with adapters keep their caches; fused ReLUs are not supported here.
  [[nodiscard]] Tensor forward_train(const Tensor& x, network_tape& tape) const {
    const auto count = static_cast<int>(nodes_.size());
    tape.values.assign(static_cast<std::size_t>(count), Tensor());
    tape.base_out.clear();
    tape.caches.clear();
    tape.values[0] = x;
    for (int i = 1; i < count; ++i) {
      const network_node& n = nodes_[static_cast<std::size_t>(i)];
      if (n.bypass) continue;
      if (n.conv.relu) {
        throw value_error(detail::concat("network::forward_train: node '", n.name,
                                         "' has a fused ReLU; build the training network without fuse_relu()"));
      }
      std::vector<const Tensor*> in;
      for (int j : n.inputs) in.push_back(&tape.values[static_cast<std::size_t>(resolve(j))]);
      Tensor& out = tape.values[static_cast<std::size_t>(i)];
      if ((n.kind == op_kind::conv2d || n.kind == op_kind::linear) && n.adapter) {
        if (n.relu_after) {
          throw value_error(detail::concat("network::forward_train: adapted node '", n.name, "' has a fused ReLU"));
        }
        Tensor& z0 = tape.base_out[i];
        layer_of(n).forward(*in[0], z0);
        if (z0.rank() == 4 && z0.memory_layout() != layout::nhwc) z0 = z0.to_layout(layout::nhwc);
        const auto b = n.params.find("bias");
        const Tensor* bias = b == n.params.end() ? nullptr : &b->second;
        if (bias) z0.matrix(z0.numel() / bias->numel(), bias->numel()).rowwise() -= bias->vector().transpose();
        n.adapter->forward(*in[0], z0, bias, out, &tape.caches[i]);
      } else {
        apply(n, in, out);
      }
    }
    return tape.values[static_cast<std::size_t>(resolve(output()))];
  }

  /// Back-propagates dL/d(output) through the network recorded in `tape`:
  /// adapter parameter gradients go to `grads` by node name; frozen layers
  /// pass input gradients only (no weight gradients). Returns dL/d(input).
  Tensor backward(const network_tape& tape, const Tensor& diff_out, std::map<std::string, dora_gradients>& grads) const {
    const auto count = static_cast<int>(nodes_.size());
    std::vector<Tensor> g(static_cast<std::size_t>(count));
    g[static_cast<std::size_t>(resolve(output()))] = diff_out;
    auto accumulate = [&](int to, Tensor&& d) {
      Tensor& slot = g[static_cast<std::size_t>(resolve(to))];
      if (slot.empty()) {
        slot = std::move(d);
      } else {
        rimc::add(slot, d, slot);
      }
    };
    for (int i = count - 1; i >= 1; --i) {
      const network_node& n = nodes_[static_cast<std::size_t>(i)];
      Tensor& gi = g[static_cast<std::size_t>(i)];
      if (n.bypass || gi.empty()) continue;
      const Tensor& x = tape.values[static_cast<std::size_t>(resolve(n.inputs[0]))];
      const Tensor& y = tape.values[static_cast<std::size_t>(i)];
      Tensor dx;
      switch (n.kind) {
        case op_kind::input: break;
        case op_kind::conv2d:
        case op_kind::linear: {
          if (n.relu_after) rimc::relu_backward(gi, y, gi);
          if (n.adapter) {
            n.adapter->backward(tape.caches.at(i), gi, grads[n.name], &dx);
          } else {
            layer_of(n).backward_data(gi, x.shape(), dx);
          }
          break;
        }
        case op_kind::batch_norm: {
          dx = gi.to_layout(layout::nhwc);
          const auto C = dx.dim(1);
          Eigen::VectorXf scale(C);
          for (std::int64_t c = 0; c < C; ++c)
            scale[c] = static_cast<float>(n.params.at("weight")[c] /
                                          std::sqrt(static_cast<double>(n.params.at("running_var")[c]) + n.bn_eps));
          dx.matrix(dx.numel() / C, C) *= scale.asDiagonal();
          break;
        }
        case op_kind::relu: rimc::relu_backward(gi, x, dx); break;
        case op_kind::max_pool:
        case op_kind::avg_pool: n.pool_kernel->backward_data(gi, x, dx); break;
        case op_kind::global_avg_pool: global_avg_pool2d_backward(gi, x.shape(), dx, x.rank() == 4 ? x.memory_layout() : layout::nchw); break;
        case op_kind::add: {
          if (n.relu_after) rimc::relu_backward(gi, y, gi);
          accumulate(n.inputs[1], Tensor(gi));
          dx = std::move(gi);
          break;
        }
        case op_kind::flatten: {
          dx = gi;
          dx.reshape(x.shape());
          break;
        }
      }
      if (n.kind != op_kind::input) accumulate(n.inputs[0], std::move(dx));
      gi = Tensor();
    }
    return std::move(g[0]);
  }

  /// The node a node's value really comes from (skipping identities).
  [[nodiscard]] int resolve(int id) const {
    while (nodes_[static_cast<std::size_t>(id)].bypass) id = nodes_[static_cast<std::size_t>(id)].inputs[0];
    return id;
  }

 private:
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
    return nodes_[static_cast<std::size_t>(id)];
  }
  const Shape& image_input(std::string_view what, const std::string& name, int in) const {
    const Shape& s = checked(in, what).shape;
    if (s.rank() != 3) {
      throw shape_error(detail::concat("network: ", what, " '", name, "' needs a [C, H, W] input, but '",
                                       nodes_[static_cast<std::size_t>(in)].name, "' is ", s.to_string()));
    }
    return s;
  }
  int pool(std::string name, int in, pool2d_params p, op_kind kind) {
    const Shape& s = image_input(to_string(kind), name, in);
    p.kind = kind == op_kind::max_pool ? pool_kind::max : pool_kind::avg;
    const Shape out = pool2d_output_shape(Shape{1, s[0], s[1], s[2]}, p);
    network_node n = make(std::move(name), kind, {in}, Shape{out[1], out[2], out[3]});
    n.pool = p;
    return push(std::move(n));
  }
  [[nodiscard]] int consumers(int id) const {
    int c = 0;
    for (const auto& n : nodes_)
      for (int i : n.inputs) c += (i == id) ? 1 : 0;
    return c + (output() == id ? 1 : 0);
  }

  const frozen_layer& layer_of(const network_node& n) const {
    if (!n.layer) {
      auto& mutable_node = const_cast<network_node&>(n);
      const auto b = n.params.find("bias");
      std::optional<Tensor> bias = b == n.params.end() ? std::nullopt : std::optional<Tensor>(b->second);
      if (n.kind == op_kind::conv2d) {
        mutable_node.layer = std::make_shared<detail::digital_conv>(n.params.at("weight"), std::move(bias), n.conv);
      } else if (n.kind == op_kind::linear) {
        mutable_node.layer = std::make_shared<detail::digital_linear>(n.params.at("weight"), std::move(bias), n.relu_after);
      } else {
        throw value_error(detail::concat("network: node '", n.name, "' (", to_string(n.kind), ") has no layer"));
      }
    }
    return *n.layer;
  }

  /// Runs node n; with `fuse_relu` (an adapted layer on the AVX-512 combination, or an add) its
  /// output goes through ReLU in the same pass.
  void apply(const network_node& n, const std::vector<const Tensor*>& in, Tensor& out, bool fuse_relu = false) const {
    switch (n.kind) {
      case op_kind::input: out = *in[0]; break;
      case op_kind::conv2d:
      case op_kind::linear: {
        if (!n.adapter) {
          layer_of(n).forward(*in[0], out);
          break;
        }
        thread_local Tensor z0;
        layer_of(n).forward(*in[0], z0);
        if (z0.rank() == 4 && z0.memory_layout() != layout::nhwc) z0 = z0.to_layout(layout::nhwc);
        const auto b = n.params.find("bias");
        const Tensor* bias = b == n.params.end() ? nullptr : &b->second;
        // The adapter scales W0 x: it takes the bias off the layer's output in the same pass.
        n.adapter->forward_on_layer_output(*in[0], z0, bias, out, fuse_relu);
        break;
      }
      case op_kind::batch_norm: batch_norm_forward(n, *in[0], out); break;
      case op_kind::relu: rimc::relu(*in[0], out); break;
      case op_kind::max_pool:
      case op_kind::avg_pool: {
        if (!n.pool_kernel) const_cast<network_node&>(n).pool_kernel = std::make_shared<rimc::pool2d>(n.pool);
        n.pool_kernel->forward(*in[0], out);
        break;
      }
      case op_kind::global_avg_pool: global_avg_pool2d(*in[0], out); break;
      case op_kind::add: rimc::add(*in[0], *in[1], out, n.relu_after || fuse_relu); break;
      case op_kind::flatten: {
        out = in[0]->rank() == 4 ? in[0]->to_layout(layout::nchw) : *in[0];
        out.reshape(Shape{in[0]->dim(0), n.shape[0]});
        break;
      }
    }
  }

  static void batch_norm_forward(const network_node& n, const Tensor& x, Tensor& y) {
    const Tensor xs = x.to_layout(layout::nhwc);
    const auto C = x.dim(1), P = x.numel() / C;
    y.ensure(x.shape(), layout::nhwc);
    Eigen::VectorXf scale(C), shift(C);
    for (std::int64_t c = 0; c < C; ++c) {
      const double s = n.params.at("weight")[c] / std::sqrt(static_cast<double>(n.params.at("running_var")[c]) + n.bn_eps);
      scale[c] = static_cast<float>(s);
      shift[c] = static_cast<float>(n.params.at("bias")[c] - n.params.at("running_mean")[c] * s);
    }
    y.matrix(P, C) = (xs.matrix(P, C) * scale.asDiagonal()).rowwise() + shift.transpose();
  }

  Tensor run(const Tensor& x, int from, int to, const std::vector<std::string>& capture,
             std::map<std::string, Tensor>& captured, const std::map<int, Tensor>* known = nullptr) const {
    std::set<int> wanted;
    for (const auto& c : capture) wanted.insert(id(c));
    const auto count = static_cast<int>(nodes_.size());
    // Last consumer of each node among those that run; buffers are freed after it.
    std::vector<int> last_use(static_cast<std::size_t>(count), -1);
    for (int i = from + 1; i <= to; ++i)
      for (int in : nodes_[static_cast<std::size_t>(i)].inputs) last_use[static_cast<std::size_t>(resolve(in))] = i;
    // value: each node's current output (null when not computed or freed); owned: the buffers this run
    // made, which go back to the pool after their last use (known values are only read).
    std::vector<const Tensor*> value(static_cast<std::size_t>(count), nullptr);
    std::vector<std::shared_ptr<Tensor>> owned(static_cast<std::size_t>(count));
    std::vector<std::shared_ptr<Tensor>> pool;
    auto take = [&]() {
      if (pool.empty()) return std::make_shared<Tensor>();
      auto t = std::move(pool.back());
      pool.pop_back();
      return t;
    };
    const int start = resolve(from);
    std::vector<char> borrowed(static_cast<std::size_t>(count), 0);  // known values: read only, never pooled
    if (known) {
      for (const auto& [k, v] : *known) {
        const auto r = static_cast<std::size_t>(resolve(k));
        value[r] = &v;
        borrowed[r] = 1;
      }
      if (wanted.contains(from) && value[static_cast<std::size_t>(start)]) {
        captured[nodes_[static_cast<std::size_t>(from)].name] = *value[static_cast<std::size_t>(start)];
      }
    } else {
      owned[static_cast<std::size_t>(start)] = std::make_shared<Tensor>(x);
      value[static_cast<std::size_t>(start)] = owned[static_cast<std::size_t>(start)].get();
      if (wanted.contains(from)) captured[nodes_[static_cast<std::size_t>(from)].name] = x;
    }
    // A ReLU that is the only consumer of an adapted layer (on the AVX-512 combination) or of an add, whose
    // pre-activation nobody captures, runs in its producer's pass and takes over the producer's buffer
    // (oneDNN's ReLU and the fused max(y, 0) agree bitwise).
    std::vector<int> relu_of(static_cast<std::size_t>(count), -1), fused_src(static_cast<std::size_t>(count), -1);
    {
      std::vector<int> uses(static_cast<std::size_t>(count), 0), only(static_cast<std::size_t>(count), -1);
      std::vector<char> seen(static_cast<std::size_t>(count), 0);
      for (int i = 1; i < count; ++i) {
        if (nodes_[static_cast<std::size_t>(i)].bypass) continue;
        for (int j : nodes_[static_cast<std::size_t>(i)].inputs) {
          const auto r = static_cast<std::size_t>(resolve(j));
          ++uses[r];
          only[r] = i;
        }
      }
      ++uses[static_cast<std::size_t>(resolve(output()))];
      for (int w : wanted) seen[static_cast<std::size_t>(resolve(w))] = 1;
      for (int i = from + 1; i <= to; ++i) {
        const auto ii = static_cast<std::size_t>(i);
        const network_node& n = nodes_[ii];
        if (n.bypass || seen[ii] || uses[ii] != 1 || i == resolve(to)) continue;
        const int c = only[ii];
        if (c > to || nodes_[static_cast<std::size_t>(c)].kind != op_kind::relu) continue;
        const bool adapted = (n.kind == op_kind::conv2d || n.kind == op_kind::linear) && n.adapter && !n.conv.relu &&
                             !n.relu_after;
        if (adapted || (n.kind == op_kind::add && !n.relu_after)) {
          relu_of[ii] = c;
          fused_src[static_cast<std::size_t>(c)] = i;
        }
      }
    }
    for (int i = from + 1; i <= to; ++i) {
      const network_node& n = nodes_[static_cast<std::size_t>(i)];
      if (fused_src[static_cast<std::size_t>(i)] >= 0) {  // this ReLU ran in its producer's pass
        const auto src = static_cast<std::size_t>(fused_src[static_cast<std::size_t>(i)]);
        owned[static_cast<std::size_t>(i)] = std::move(owned[src]);
        value[static_cast<std::size_t>(i)] = std::exchange(value[src], nullptr);
        if (wanted.contains(i)) captured[n.name] = *value[static_cast<std::size_t>(i)];
        continue;
      }
      if (n.bypass) {
        if (wanted.contains(i)) captured[n.name] = *value[static_cast<std::size_t>(resolve(i))];
        continue;
      }
      std::vector<const Tensor*> in;
      for (int j : n.inputs) {
        const auto& v = value[static_cast<std::size_t>(resolve(j))];
        if (!v) {
          throw value_error(detail::concat("network: node '", n.name, "' needs '", nodes_[static_cast<std::size_t>(j)].name,
                                           "', which is not computed when running from '",
                                           nodes_[static_cast<std::size_t>(from)].name, "'"));
        }
        in.push_back(v);
      }
      auto out = take();
      apply(n, in, *out, relu_of[static_cast<std::size_t>(i)] >= 0);
      value[static_cast<std::size_t>(i)] = out.get();
      owned[static_cast<std::size_t>(i)] = std::move(out);
      if (wanted.contains(i)) captured[n.name] = *value[static_cast<std::size_t>(i)];
      for (int j : n.inputs) {
        const int r = resolve(j);
        if (last_use[static_cast<std::size_t>(r)] == i && r != start && !borrowed[static_cast<std::size_t>(r)] &&
            owned[static_cast<std::size_t>(r)]) {
          pool.push_back(std::move(owned[static_cast<std::size_t>(r)]));
          value[static_cast<std::size_t>(r)] = nullptr;
        }
      }
    }
    const Tensor* result = value[static_cast<std::size_t>(resolve(to))];
    return result ? *result : Tensor();
  }

  std::vector<network_node> nodes_;
  std::map<std::string, int> index_;
  int output_ = -1;
};

}  // namespace rimc
