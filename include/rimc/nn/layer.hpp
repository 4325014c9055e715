#pragma once
/// \file
/// rimc::layer: the compute of a conv2d or linear node of a network, and the
/// digital (oneDNN) layers a network builds from its parameters. Deployment
/// replaces them by analog layers (nn/deploy.hpp) and calibration wraps them
/// in adapted layers (adapt/adapted_layer.hpp); the network only sees this
/// interface, so any user type implementing it is a layer too.
///
/// Threading: forward, forward_train, backward and backward_data are const
/// and may run concurrently on one layer; changing a layer's weights (drift,
/// reprogramming, loading) must not overlap them.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/params.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace rimc {

/// What a training forward of one layer keeps for its backward pass (layers
/// with trainable parameters derive from it; frozen layers keep nothing).
struct layer_cache {
  virtual ~layer_cache() = default;
};

/// The compute of a conv2d or linear node (see the file comment).
class layer {
 public:
  layer() = default;
  layer(const layer&) = delete;
  layer& operator=(const layer&) = delete;
  virtual ~layer() = default;

  /// dst = layer(src): weights, bias, and a ReLU the layer has fused in (conv2d_params::relu).
  virtual void forward(const Tensor& src, Tensor& dst) const = 0;
  /// dL/dsrc through the layer's weights (no bias, no ReLU).
  virtual void backward_data(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src) const = 0;
  /// The weights the layer applies right now (PyTorch layout, plain).
  [[nodiscard]] virtual const Tensor& effective_weights() const = 0;
  /// The layer's bias [O], or null.
  [[nodiscard]] virtual const Tensor* bias() const = 0;
  /// The convolution geometry, or null for a linear layer.
  [[nodiscard]] virtual const conv2d_params* conv_params() const = 0;

  /// Changes whenever effective_weights() changes (drift, reprogramming, a
  /// new column gain): layers that derive state from the weights compare it.
  [[nodiscard]] virtual std::uint64_t weights_version() const { return 0; }
  /// RRAM cell programming events so far (0 for digital layers).
  [[nodiscard]] virtual std::uint64_t rram_writes() const { return 0; }
  /// Whether the weights live on crossbars.
  [[nodiscard]] virtual bool is_analog() const { return false; }
  /// Whether forward(x) is exactly the convolution (conv_params()) or matrix
  /// product of x with effective_weights(), plus bias(), and nothing else (no
  /// ReLU, no converter, no noise): a digital layer, or a crossbar layer whose
  /// periphery is ideal. An adapter on such a layer can run merged into its
  /// weights (adapter_inference::merged in adapt/adapted_layer.hpp).
  [[nodiscard]] virtual bool linear_forward() const { return false; }
  /// Sets the ranges of the layer's percentile ADC and calibrated DAC from
  /// inputs `src` (layers on crossbars with one; `update` as in
  /// TiledArray::calibrate_adc); returns whether there was one to set.
  /// Periphery state only: no weight changes and no RRAM cell is written. Not
  /// to be called while another thread runs forward().
  virtual bool calibrate_adc(const Tensor& src, range_update update) {
    (void)src;
    (void)update;
    return false;
  }

  /// Whether forward_relu fuses a following ReLU into the layer's own pass.
  [[nodiscard]] virtual bool fuses_relu() const { return false; }
  /// relu(forward(src)): in one pass where fuses_relu(), else in two.
  virtual void forward_relu(const Tensor& src, Tensor& dst) const {
    forward(src, dst);
    relu(dst, dst);
  }

  /// Parameters a training step updates (none for a frozen layer).
  [[nodiscard]] virtual std::vector<Tensor*> trainable_parameters() { return {}; }
  /// The same, read-only.
  [[nodiscard]] virtual std::vector<const Tensor*> parameters() const { return {}; }
  /// Called after trainable_parameters() were changed in place (e.g. by an optimizer).
  virtual void parameters_changed() {}
  /// A forward pass that keeps what backward() needs (for frozen layers: nothing).
  virtual std::unique_ptr<layer_cache> forward_train(const Tensor& src, Tensor& dst) const {
    forward(src, dst);
    return nullptr;
  }
  /// dL/dparameters into `param_grads` (one per trainable parameter, in that
  /// order) and, with `diff_src`, dL/dsrc, for the forward_train that filled
  /// `cache` on `src`. Frozen layers pass the input gradient only.
  virtual void backward(const layer_cache* cache, const Tensor& src, const Tensor& diff_dst, Tensor* diff_src,
                        std::span<Tensor> param_grads) const {
    (void)cache;
    (void)param_grads;
    if (diff_src) backward_data(diff_dst, src.shape(), *diff_src);
  }
  /// The layer a wrapper (an adapted layer) applies underneath, or null.
  [[nodiscard]] virtual std::shared_ptr<layer> wrapped() const { return nullptr; }
};

/// The innermost layer of `l` (through wrappers such as adapted layers).
[[nodiscard]] inline std::shared_ptr<layer> innermost(std::shared_ptr<layer> l) {
  while (l && l->wrapped()) l = l->wrapped();
  return l;
}

/// A frozen digital convolution (oneDNN) on given weights.
class digital_conv2d final : public layer {
 public:
  /// A convolution of `weights` [O, C / groups, kh, kw] with optional `bias` [O] and geometry `p`.
  digital_conv2d(const Tensor& weights, std::optional<Tensor> bias, const conv2d_params& p)
      : k_(weights, std::move(bias), p) {}
  void forward(const Tensor& src, Tensor& dst) const override { k_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override { k_.backward_data(dy, s, dx); }
  [[nodiscard]] const Tensor& effective_weights() const override { return k_.weights(); }
  [[nodiscard]] const Tensor* bias() const override { return k_.bias() ? &*k_.bias() : nullptr; }
  [[nodiscard]] const conv2d_params* conv_params() const override { return &k_.params(); }
  [[nodiscard]] bool linear_forward() const override { return !k_.params().relu; }
  /// The oneDNN kernel.
  [[nodiscard]] const rimc::conv2d& kernel() const noexcept { return k_; }

 private:
  rimc::conv2d k_;
};

/// A frozen digital fully-connected layer (oneDNN) on given weights.
class digital_linear final : public layer {
 public:
  /// A layer of `weights` [O, K] with optional `bias` [O], then ReLU when `relu`.
  digital_linear(const Tensor& weights, std::optional<Tensor> bias, bool relu = false)
      : k_(weights, bias, relu), bias_(std::move(bias)) {}
  void forward(const Tensor& src, Tensor& dst) const override { k_.forward(src, dst); }
  void backward_data(const Tensor& dy, const Shape& s, Tensor& dx) const override {
    k_.backward_data(dy, dx);
    if (s.rank() == 4) dx.reshape(s);
  }
  [[nodiscard]] const Tensor& effective_weights() const override { return k_.weights(); }
  [[nodiscard]] const Tensor* bias() const override { return bias_ ? &*bias_ : nullptr; }
  [[nodiscard]] const conv2d_params* conv_params() const override { return nullptr; }
  [[nodiscard]] bool linear_forward() const override { return !k_.fused_relu(); }
  /// The oneDNN kernel.
  [[nodiscard]] const rimc::linear& kernel() const noexcept { return k_; }

 private:
  rimc::linear k_;
  std::optional<Tensor> bias_;
};

}  // namespace rimc
