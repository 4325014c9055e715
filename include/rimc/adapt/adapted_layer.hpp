#pragma once
/// \file
/// rimc::adapted_layer: a frozen layer and an adapter on top of it, as one
/// network layer, the way PEFT wraps its base layer. The frozen layer (digital
/// or on crossbars) computes W0 x + bias; the adapter turns it into the
/// adapted output, borrowing W0 and the backward-data pass from the layer at
/// every call. When the frozen layer's weights change (the chip drifted
/// again, a column gain was set) the adapter re-derives what it keeps from
/// them (DoRA's norms) before the next use, under a lock, so a network may
/// keep running from several threads.
///
/// attach_adapter / detach_adapters put adapted layers into a network and
/// take them out again; adapted_layers finds them.
///
/// Inference runs in one of two forms (adapter_inference). Factorised, the
/// default, is what the chip computes: the frozen layer's output, then the
/// adapter's digital path on top. Merged runs one kernel on the merged weights
/// (gamma ⊙ (W0 + s B A) for DoRA) with the frozen layer's bias: the same
/// output in exact arithmetic, at the bare layer's cost, where the frozen
/// layer's forward is exactly that kernel (a digital layer, or crossbars with
/// an ideal periphery; elsewhere, e.g. with ADCs or read noise, the layer
/// runs factorised). The float rounding differs from the factorised form's
/// (about 1e-7 relative per layer). The merged weights are rebuilt on the
/// first forward after the chip's weights or the adapter's parameters
/// changed, and cost one more copy of the layer's weights while merged.

#include <rimc/adapt/adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/nn/graph.hpp>
#include <rimc/nn/layer.hpp>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// How an adapted layer computes its inference output (forward, forward_relu;
/// training always runs factorised). See the file comment.
enum class adapter_inference : std::uint8_t {
  factorised,  ///< the frozen layer's output, then the adapter on top (what the chip computes)
  merged,      ///< one kernel on the merged weights, where the frozen layer is linear
};

/// What every adapted layer has, whatever its adapter type.
class adapted_layer_base : public layer {
 public:
  /// The frozen layer underneath.
  [[nodiscard]] const std::shared_ptr<layer>& base() const noexcept { return base_; }
  /// The adapter's kind ("dora", "lora", ...).
  [[nodiscard]] virtual std::string_view adapter_kind() const noexcept = 0;
  /// The adapter's parameters by file name.
  [[nodiscard]] virtual named_tensors adapter_tensors() const = 0;
  /// Sets the adapter's parameters from tensors by file name (the adapter's
  /// load: every shape and value checked, nothing changed on error).
  virtual void load_adapter_tensors(const std::map<std::string, Tensor>& tensors) = 0;
  /// Values, SRAM bytes and share of the frozen weights of the adapter.
  [[nodiscard]] virtual adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const = 0;

  [[nodiscard]] std::shared_ptr<layer> wrapped() const override { return base_; }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override = 0;
  /// The frozen layer's weights (what the crossbar applies; the adapter's
  /// correction is not among them).
  [[nodiscard]] const Tensor& effective_weights() const override { return base_->effective_weights(); }
  [[nodiscard]] const Tensor* bias() const override { return base_->bias(); }
  [[nodiscard]] const conv2d_params* conv_params() const override { return base_->conv_params(); }
  [[nodiscard]] std::uint64_t weights_version() const override { return base_->weights_version(); }
  [[nodiscard]] std::uint64_t rram_writes() const override { return base_->rram_writes(); }
  [[nodiscard]] bool is_analog() const override { return base_->is_analog(); }
  /// The frozen layer's ADC (the adapter is digital).
  bool calibrate_adc(const Tensor& src, range_update update) override { return base_->calibrate_adc(src, update); }

  /// How forward computes the adapted output (factorised unless set).
  [[nodiscard]] adapter_inference inference() const noexcept { return inference_.load(std::memory_order_relaxed); }
  /// Whether the adapter type has a merged form (mergeable_adapter).
  [[nodiscard]] virtual bool can_merge() const noexcept = 0;
  /// Whether forward runs merged now: merged inference set, and the frozen
  /// layer's forward linear in its effective weights (layer::linear_forward).
  [[nodiscard]] bool runs_merged() const {
    return inference() == adapter_inference::merged && can_merge() && base_->linear_forward();
  }
  /// Sets how forward computes the adapted output; value_error for merged
  /// when the adapter has no merged form. Back to factorised frees the
  /// merged weights. Not to be called while another thread runs forward().
  virtual void set_inference(adapter_inference mode) = 0;
  /// Sets the kernels the adapter's calibration steps run (low_rank_kernel)
  /// and returns true, or returns false for an adapter without a low-rank
  /// path (nothing to set). Not to be called while another thread runs the layer.
  virtual bool set_training_kernel(low_rank_kernel k) = 0;

 protected:
  /// Wraps `base`; value_error when it is null.
  explicit adapted_layer_base(std::shared_ptr<layer> base) : base_(std::move(base)) {
    if (!base_) throw value_error("adapted_layer: no base layer given");
  }

  /// The frozen layer underneath (never null).
  std::shared_ptr<layer> base_;
  /// See inference().
  std::atomic<adapter_inference> inference_{adapter_inference::factorised};
};

/// A frozen layer with an adapter of type A on top (see the file comment).
template <adapter A>
class adapted_layer final : public adapted_layer_base {
 public:
  /// Wraps `base` with `a` (made for `base`'s weights).
  /// The adapter is refreshed from `base` here (its geometry checked, DoRA's
  /// norms taken from the weights as they are now).
  adapted_layer(std::shared_ptr<layer> base, A a) : adapted_layer_base(std::move(base)), adapter_(std::move(a)) {
    adapter_.refresh(*base_);
    seen_.store(base_->weights_version());
  }

  /// The adapter. After changing its parameters in place, call parameters_changed().
  ///@{
  [[nodiscard]] A& adapter() noexcept { return adapter_; }
  [[nodiscard]] const A& adapter() const noexcept { return adapter_; }
  ///@}

  [[nodiscard]] std::string_view adapter_kind() const noexcept override { return A::kind; }
  [[nodiscard]] named_tensors adapter_tensors() const override { return adapter_.tensors(); }
  void load_adapter_tensors(const std::map<std::string, Tensor>& tensors) override {
    const std::lock_guard lock(mutex_);
    adapter_.load(*base_, tensors);
    adapter_.refresh(*base_);
    seen_.store(base_->weights_version(), std::memory_order_release);
  }
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const override {
    return adapter_.footprint(*base_, precision);
  }

  void forward(const Tensor& src, Tensor& dst) const override { run(src, dst, false); }
  [[nodiscard]] bool fuses_relu() const override { return in_place_adapter<A> || runs_merged(); }
  void forward_relu(const Tensor& src, Tensor& dst) const override { run(src, dst, true); }

  [[nodiscard]] bool can_merge() const noexcept override { return mergeable_adapter<A>; }
  void set_inference(adapter_inference mode) override {
    if (mode == adapter_inference::merged && !can_merge()) {
      throw value_error(detail::concat("adapted_layer::set_inference: a ", A::kind,
                                       " adapter has no merged form (it runs factorised only)"));
    }
    const std::lock_guard lock(merge_mutex_);
    inference_.store(mode, std::memory_order_relaxed);
    if (mode == adapter_inference::factorised) merged_.reset();
  }
  bool set_training_kernel(low_rank_kernel k) override {
    if constexpr (requires(A& a) { a.set_training_kernel(k); }) {
      const std::lock_guard lock(mutex_);
      adapter_.set_training_kernel(k);
      return true;
    } else {
      return false;
    }
  }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override {
    sync();
    adapter_.backward_data(*base_, dy, s, dx);
  }

  [[nodiscard]] std::vector<Tensor*> trainable_parameters() override { return adapter_.parameters(); }
  [[nodiscard]] std::vector<const Tensor*> parameters() const override {
    return static_cast<const A&>(adapter_).parameters();
  }
  void parameters_changed() override {
    adapter_.refresh(*base_);
    seen_.store(base_->weights_version());
  }

  std::unique_ptr<layer_cache> forward_train(const Tensor& src, Tensor& dst) const override {
    sync();
    auto c = std::make_unique<cache>();
    base_->forward(src, c->layer_out);
    if (c->layer_out.rank() == 4 && c->layer_out.memory_layout() != layout::nhwc) {
      c->layer_out = c->layer_out.to_layout(layout::nhwc);
    }
    adapter_.forward(*base_, src, c->layer_out, dst, &c->state);
    return c;
  }
  void backward(const layer_cache* lc, const Tensor& src, const Tensor& diff_dst, Tensor* diff_src,
                std::span<Tensor> param_grads) const override {
    const auto* c = dynamic_cast<const cache*>(lc);
    if (!c) throw value_error("adapted_layer::backward: no cache from this layer's forward_train");
    (void)src;
    adapter_.backward(*base_, c->state, diff_dst, param_grads, diff_src);
  }

  /// Re-derives the adapter's state from the frozen layer's weights if they changed since.
  void sync() const {
    const std::uint64_t v = base_->weights_version();
    if (seen_.load(std::memory_order_acquire) == v) return;
    const std::lock_guard lock(mutex_);
    if (seen_.load(std::memory_order_relaxed) == v) return;
    adapter_.refresh(*base_);
    seen_.store(v, std::memory_order_release);
  }

 private:
  struct cache final : layer_cache {
    Tensor layer_out;
    typename A::cache_type state;
  };

  /// The merged kernel and what it was built from: the frozen layer's weights
  /// version and the adapter's parameters (which tensors, and their values).
  struct merged_state {
    std::uint64_t version = 0;
    std::vector<const Tensor*> sources;
    std::vector<Tensor> values;
    std::optional<rimc::conv2d> conv;
    std::optional<rimc::linear> fc;

    [[nodiscard]] bool built_from(std::uint64_t v, const std::vector<const Tensor*>& params) const {
      if (v != version || params != sources) return false;
      for (std::size_t i = 0; i < params.size(); ++i) {
        const Tensor& a = *params[i];
        const Tensor& b = values[i];
        if (!(a.shape() == b.shape()) || a.memory_layout() != b.memory_layout() ||
            (a.numel() > 0 && std::memcmp(a.data(), b.data(), a.bytes()) != 0)) {
          return false;
        }
      }
      return true;
    }
  };

  /// The merged kernel for the weights and parameters as they are now,
  /// rebuilt when either changed (compared value by value: the adapter's
  /// parameters are small next to the layer it corrects).
  [[nodiscard]] std::shared_ptr<const merged_state> merged_kernel() const {
    sync();
    const std::vector<const Tensor*> params = static_cast<const A&>(adapter_).parameters();
    const std::uint64_t v = base_->weights_version();
    const std::lock_guard lock(merge_mutex_);
    if (merged_ && merged_->built_from(v, params)) return merged_;
    auto m = std::make_shared<merged_state>();
    m->version = v;
    m->sources = params;
    for (const Tensor* p : params) m->values.push_back(*p);
    Tensor w = adapter_.merged_weights(*base_);
    std::optional<Tensor> b;
    if (const Tensor* bias = base_->bias()) b = *bias;
    if (const conv2d_params* cp = base_->conv_params()) {
      conv2d_params p = *cp;
      p.relu = false;
      m->conv.emplace(std::move(w), std::move(b), p);
    } else {
      m->fc.emplace(std::move(w), std::move(b), false);
    }
    merged_ = m;
    return m;
  }

  void run(const Tensor& src, Tensor& dst, bool fuse_relu) const {
    if constexpr (mergeable_adapter<A>) {
      if (runs_merged()) {
        const auto m = merged_kernel();
        if (m->conv) {
          if (fuse_relu) {
            m->conv->forward_relu(src, dst);
          } else {
            m->conv->forward(src, dst);
          }
        } else {
          m->fc->forward(src, dst);
          if (fuse_relu) relu(dst, dst);
        }
        return;
      }
    }
    sync();
    if constexpr (in_place_adapter<A>) {
      // The frozen layer writes into dst's storage and the adapter combines in place: one output-sized buffer.
      if (&src == &dst) {
        Tensor y;
        run(src, y, fuse_relu);
        dst = std::move(y);
        return;
      }
      base_->forward(src, dst);
      adapter_.forward_in_place(*base_, src, dst, fuse_relu);
    } else {
      thread_local Tensor z;
      base_->forward(src, z);
      if (z.rank() == 4 && z.memory_layout() != layout::nhwc) z = z.to_layout(layout::nhwc);
      Tensor y;
      adapter_.forward(*base_, src, z, y, nullptr);
      dst = std::move(y);
      if (fuse_relu) relu(dst, dst);
    }
  }

  mutable A adapter_;  ///< mutable for sync(): the norms follow the frozen weights (under mutex_)
  mutable std::mutex mutex_;
  mutable std::atomic<std::uint64_t> seen_{0};
  mutable std::mutex merge_mutex_;                        ///< guards merged_
  mutable std::shared_ptr<const merged_state> merged_;  ///< built on the first merged forward
};

namespace detail {
/// Throws value_error ("<who>: node '<name>' ...") unless node `n`'s layer can
/// take an adapter: no fused ReLU (its output would be relu(W0 x + b)), none yet.
inline void check_adaptable(const network_node& n, const std::string& who) {
  if (n.conv.relu || n.relu_after) {
    throw value_error(detail::concat(who, ": node '", n.name,
                                     "' has a fused ReLU; attach adapters to a network without fuse_relu()"));
  }
  if (std::dynamic_pointer_cast<adapted_layer_base>(n.layer)) {
    throw value_error(detail::concat(who, ": node '", n.name, "' has an adapter already"));
  }
}
}  // namespace detail

/// Wraps conv2d / linear node `name` of `net` with adapter `a` (made for that
/// node's current layer) and returns the adapted layer. A node with a fused
/// ReLU is refused (attach before fuse_relu()), as is a node already adapted.
template <adapter A>
std::shared_ptr<adapted_layer<A>> attach_adapter(graph& net, std::string_view name, A a) {
  const network_node& n = net.node(name);
  if (!n.has_layer()) {
    throw value_error(detail::concat("attach_adapter: node '", name, "' is a ", to_string(n.kind),
                                     ", not a conv2d or linear"));
  }
  detail::check_adaptable(n, "attach_adapter");
  auto l = std::make_shared<adapted_layer<A>>(n.layer, std::move(a));
  net.set_layer(name, l);
  return l;
}

/// Makes an adapter for node `name` with `make(const layer& base)` and attaches it.
template <class Make>
auto attach_new_adapter(graph& net, std::string_view name, Make&& make) {
  return attach_adapter(net, name, make(net.layer(name)));
}

/// The adapted layers of `net` by node name.
[[nodiscard]] inline std::map<std::string, std::shared_ptr<adapted_layer_base>> adapted_layers(const graph& net) {
  std::map<std::string, std::shared_ptr<adapted_layer_base>> out;
  for (const auto& n : net.nodes())
    if (auto a = std::dynamic_pointer_cast<adapted_layer_base>(n.layer)) out.emplace(n.name, std::move(a));
  return out;
}

/// The adapter of type A on node `name` (value_error if the node has none of that type).
template <adapter A>
[[nodiscard]] std::shared_ptr<adapted_layer<A>> adapter_at(const graph& net, std::string_view name) {
  auto l = std::dynamic_pointer_cast<adapted_layer<A>>(net.layer_ptr(name));
  if (!l) throw value_error(detail::concat("adapter_at: node '", name, "' has no ", A::kind, " adapter"));
  return l;
}

/// Sets how every adapted layer of `net` computes its inference output
/// (adapted_layer_base::set_inference). For merged, value_error naming the
/// first node whose adapter has no merged form, and nothing is changed.
inline void set_adapter_inference(const graph& net, adapter_inference mode) {
  const auto layers = adapted_layers(net);
  if (mode == adapter_inference::merged) {
    for (const auto& [name, l] : layers) {
      if (!l->can_merge()) {
        throw value_error(detail::concat("set_adapter_inference: node '", name, "' has a ", l->adapter_kind(),
                                         " adapter, which has no merged form"));
      }
    }
  }
  for (const auto& [name, l] : layers) l->set_inference(mode);
}

/// Sets the kernels every low-rank adapter of `net` runs in calibration
/// (adapted_layer_base::set_training_kernel); returns how many it set.
inline std::size_t set_adapter_training_kernel(const graph& net, low_rank_kernel k) {
  std::size_t n = 0;
  for (const auto& [name, l] : adapted_layers(net)) n += l->set_training_kernel(k) ? 1 : 0;
  return n;
}

/// Removes the adapter of every adapted node, putting its frozen layer back.
inline void detach_adapters(graph& net) {
  for (const auto& [name, l] : adapted_layers(net)) net.set_layer(name, l->base());
}

namespace detail {
/// Attaches adapters and, unless commit() is called, takes them off again at
/// destruction (in reverse order): a calibration that fails half-way leaves
/// the network as it found it.
class attach_transaction {
 public:
  explicit attach_transaction(graph& net) noexcept : net_(net) {}
  attach_transaction(const attach_transaction&) = delete;
  attach_transaction& operator=(const attach_transaction&) = delete;
  ~attach_transaction() {
    for (auto it = attached_.rbegin(); it != attached_.rend(); ++it) {
      try {
        net_.set_layer(it->first, it->second);
      } catch (...) {  // the base layer came from this node: set_layer accepts it
      }
    }
  }
  /// attach_adapter(net, name, a), remembered.
  template <adapter A>
  std::shared_ptr<adapted_layer<A>> attach(std::string_view name, A a) {
    auto l = attach_adapter(net_, name, std::move(a));
    attached_.emplace_back(std::string(name), l->base());
    return l;
  }
  /// Keeps every adapter attached so far.
  void commit() noexcept { attached_.clear(); }

 private:
  graph& net_;
  std::vector<std::pair<std::string, std::shared_ptr<layer>>> attached_;
};
}  // namespace detail

/// Total values, SRAM bytes and frozen weights of every adapter in `net`.
[[nodiscard]] inline adapter_footprint adapters_footprint(const graph& net,
                                                          sram_precision precision = sram_precision::fp32) {
  adapter_footprint f;
  for (const auto& [name, l] : adapted_layers(net)) f += l->footprint(precision);
  return f;
}

}  // namespace rimc
