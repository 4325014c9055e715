#pragma once
/// \file
/// rimc::lora_adapter: plain LoRA (Hu et al. 2022, as Hugging Face PEFT with
/// use_dora false) on a frozen linear or conv2d layer, through the same
/// adapter concept as DoRA (docs/formulas.md, sec. 2):
///
///   y = W0 x + s B (A x) + bias,   s = alpha / r (rsLoRA: alpha / sqrt r),
///
/// with A [r, K] ([r, C, kh, kw]) Kaiming-uniform and B [O, r] ([O, r, 1, 1])
/// zero at start. W0 x is the frozen layer's output; W0 is borrowed from it
/// for the input gradient and the merged weights.

#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/nn/layer.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rimc {

/// Settings of one LoRA adapter.
struct lora_config {
  std::int64_t rank = 4;    ///< r, 1..dora_config::max_rank and at most min(O, K)
  double alpha = 8.0;       ///< lora_alpha
  bool use_rslora = false;  ///< s = alpha / sqrt(r) instead of alpha / r
  std::uint64_t seed = 0;   ///< seeds lora_A's initialisation

  /// The LoRA scale s.
  [[nodiscard]] double scale() const noexcept {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
  }
};

/// A LoRA adapter on a frozen linear or conv2d layer (see the file comment).
class lora_adapter {
 public:
  /// What forward keeps for backward: A x and references to x and the layer's output.
  using cache_type = low_rank_cache;
  /// The adapter's name in files and reports.
  static constexpr std::string_view kind = "lora";
  /// Where dL/dA and dL/dB go among the gradients (parameters() order).
  ///@{
  static constexpr std::size_t grad_index_A = 0, grad_index_B = 1;
  ///@}

  /// An adapter for `base` (B = 0: the layer's output is unchanged at first).
  lora_adapter(const layer& base, lora_config cfg) : geo_(base, "lora_adapter"), cfg_(cfg) {
    detail::check_low_rank_config(geo_, cfg_.rank, cfg_.alpha, "lora_config");
    a_ = detail::init_lora_a(geo_, cfg_.rank, cfg_.seed);
    b_ = geo_.conv ? Tensor(Shape{geo_.O, cfg_.rank, 1, 1}) : Tensor(Shape{geo_.O, cfg_.rank});
    kernels_ = detail::low_rank_kernels(geo_.conv, a_, geo_.params);
  }

  /// Movable (the moved-from adapter may only be assigned to or destroyed); not copyable.
  ///@{
  lora_adapter(lora_adapter&&) noexcept = default;
  lora_adapter& operator=(lora_adapter&&) noexcept = default;
  ///@}

  /// Whether the base layer is a conv2d (else a linear layer).
  [[nodiscard]] bool is_conv() const noexcept { return geo_.conv; }
  /// O, the base layer's output channels or features.
  [[nodiscard]] std::int64_t out_features() const noexcept { return geo_.O; }
  /// K: C kh kw for a conv2d, in_features for a linear layer.
  [[nodiscard]] std::int64_t fan_in() const noexcept { return geo_.K; }
  /// The rank r of A and B.
  [[nodiscard]] std::int64_t rank() const noexcept { return cfg_.rank; }
  /// Which kernels a calibration step runs (low_rank_kernel; shift_add unless set).
  [[nodiscard]] low_rank_kernel training_kernel() const noexcept { return kernels_.training_kernel(); }
  /// Sets training_kernel(); the parameters and inference are unaffected.
  void set_training_kernel(low_rank_kernel k) noexcept { kernels_.set_training_kernel(k); }
  /// The LoRA scale s = alpha / r (alpha / sqrt(r) with rsLoRA), in float.
  [[nodiscard]] float scale() const noexcept { return static_cast<float>(cfg_.scale()); }
  /// The settings it was made with.
  [[nodiscard]] const lora_config& config() const noexcept { return cfg_; }
  /// The shape of the weights the adapter was made for.
  [[nodiscard]] const Shape& base_weight_shape() const noexcept { return geo_.weight_shape; }

  /// lora_A: [r, K] for linear, [r, C, kh, kw] for conv.
  [[nodiscard]] const Tensor& lora_A() const noexcept { return a_; }
  /// lora_B: [O, r] for linear, [O, r, 1, 1] for conv.
  [[nodiscard]] const Tensor& lora_B() const noexcept { return b_; }

  /// Replaces A and B (shapes and finiteness checked), then refreshes.
  void set_parameters(const layer& base, Tensor a, Tensor b) {
    detail::check_parameter("lora_adapter::set_parameters: lora_A", a, a_.shape());
    detail::check_parameter("lora_adapter::set_parameters: lora_B", b, b_.shape());
    a_ = a.to_layout(layout::nchw);
    b_ = b.to_layout(layout::nchw);
    refresh(base);
  }

  /// A and B for an optimizer to update in place; call refresh(base) afterwards.
  [[nodiscard]] std::vector<Tensor*> parameters() { return {&a_, &b_}; }
  /// A and B.
  [[nodiscard]] std::vector<const Tensor*> parameters() const { return {&a_, &b_}; }

  /// Repacks A (LoRA derives nothing from W0).
  void refresh(const layer& base) {
    geo_.check(base, "lora_adapter::refresh");
    kernels_.set_a(a_);
  }

  /// u = A x alone into `cache` (see dora_adapter::forward_low_rank).
  void forward_low_rank(const layer& base, const Tensor& x, const Tensor& layer_out, low_rank_cache& cache) const {
    check_io(base, x, layer_out);
    kernels_.forward(x, cache.u, detail::u_form::training);
    cache.src = &x;
    cache.layer_out = &layer_out;
  }

  /// y = layer_out + s B (A x), layer_out = W0 x + bias from the frozen layer
  /// (channels-last for conv). With `cache`, keeps what backward needs.
  void forward(const layer& base, const Tensor& x, const Tensor& layer_out, Tensor& y,
               low_rank_cache* cache = nullptr) const {
    check_io(base, x, layer_out);
    detail::additive_low_rank_forward(kernels_, b_.matrix(geo_.O, cfg_.rank), scale(), x, layer_out, y, cache, "lora_adapter");
  }

  /// Inference in the storage of the layer's output (then ReLU with `relu`), bitwise forward()'s.
  void forward_in_place(const layer& base, const Tensor& x, Tensor& out, bool relu) const {
    check_io(base, x, out);
    detail::additive_low_rank_in_place(kernels_, b_.matrix(geo_.O, cfg_.rank), scale(), x, out, relu);
  }

  /// grads = {dL/dA, dL/dB} for dL/dy and the forward that filled `cache`;
  /// with `diff_x`, also dL/dx = G W0 (the base layer's backward-data) + s (G B) A.
  void backward(const layer& base, const low_rank_cache& cache, const Tensor& diff_y, std::span<Tensor> grads,
                Tensor* diff_x = nullptr) const {
    if (!cache.src || !cache.layer_out) throw value_error("lora_adapter::backward: the cache holds no forward pass");
    if (grads.size() != 2) {
      throw value_error(detail::concat("lora_adapter::backward: 2 gradient tensors needed (A, B), got ", grads.size()));
    }
    geo_.check(base, "lora_adapter::backward");
    check_same_shape("lora_adapter::backward: diff_y", diff_y.shape(), cache.layer_out->shape());
    const auto r = cfg_.rank, O = geo_.O;
    const Eigen::Index P = cache.layer_out->numel() / O;
    const float s = scale();
    thread_local Tensor gy_scratch;
    const Tensor& gy = geo_.conv ? detail::as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
    RowMatrixXf gtu(O, r);  // G^T u
    detail::gemm({.M = O, .N = r, .K = P, .ta = true}, gy.data(), cache.u.data(), gtu.data());
    const RowMatrixXf sb = s * b_.matrix(O, r);
    thread_local Tensor gb;  // s G B
    gb.ensure(cache.u.shape(), cache.u.memory_layout());
    detail::gemm({.M = P, .N = r, .K = O}, gy.data(), sb.data(), gb.data());
    Tensor& dB = grads[grad_index_B];
    dB.ensure(b_.shape());
    dB.matrix(O, r).noalias() = s * gtu;
    Tensor& dA = grads[grad_index_A];
    dA.ensure(a_.shape());
    Tensor dx_low;
    kernels_.backward(*cache.src, gb, dA, diff_x ? &dx_low : nullptr);
    if (diff_x) {
      base.backward_data(gy, cache.src->shape(), *diff_x);
      add(*diff_x, dx_low, *diff_x);
    }
  }

  /// dL/dx alone for dL/dy: G W0 + s (G B) A.
  void backward_data(const layer& base, const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x) const {
    detail::low_rank_input_gradient(geo_, kernels_, base, b_, cfg_.rank, scale(), nullptr, diff_y, x_shape, diff_x,
                                    "lora_adapter::backward_data");
  }

  /// Nothing follows from dL/dgamma (LoRA has no per-channel factor).
  void complete_gradients(const layer& /*base*/, const Eigen::VectorXd& /*dgamma*/, std::span<Tensor> grads) const {
    if (grads.size() != 2) {
      throw value_error(detail::concat("lora_adapter::complete_gradients: 2 gradient tensors needed, got ", grads.size()));
    }
  }

  /// W' = W0 + s B A (see dora_adapter::merged_weights).
  [[nodiscard]] Tensor merged_weights(const layer& base) const {
    geo_.check(base, "lora_adapter::merged_weights");
    return detail::low_rank_merge(base.effective_weights(), a_, b_, nullptr, scale());
  }

  /// Adapter values: r K + O r.
  [[nodiscard]] std::int64_t parameter_count() const noexcept { return cfg_.rank * geo_.K + geo_.O * cfg_.rank; }
  /// Parameters, SRAM bytes (int8: one fp16 scale per row of A and B) and share of the base layer's weights.
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    return {parameter_count(), geo_.O * geo_.K, detail::low_rank_bytes(geo_.O, geo_.K, cfg_.rank, 0, precision)};
  }
  /// The same (the concept's form).
  [[nodiscard]] adapter_footprint footprint(const layer& /*base*/, sram_precision precision) const noexcept {
    return footprint(precision);
  }

  /// The parameters by PEFT file name: lora_A.weight, lora_B.weight.
  [[nodiscard]] named_tensors tensors() const { return {{"lora_A.weight", a_}, {"lora_B.weight", b_}}; }
  /// Replaces the parameters from tensors named as tensors() names them (nothing changes on error).
  void load(const layer& base, const std::map<std::string, Tensor>& files) {
    Tensor a = detail::take_tensor(files, "lora_A.weight", a_.shape(), "lora_adapter::load");
    Tensor b = detail::take_tensor(files, "lora_B.weight", b_.shape(), "lora_adapter::load");
    set_parameters(base, std::move(a), std::move(b));
  }

  /// The low-rank form (no gamma) for the statistics calibration and the fused loss.
  [[nodiscard]] low_rank_form low_rank() const noexcept { return {&a_, &b_, cfg_.scale(), nullptr}; }

 private:
  void check_io(const layer& base, const Tensor& x, const Tensor& layer_out) const {
    detail::check_low_rank_io(geo_, base, x, layer_out, "lora_adapter");
  }

  detail::base_geometry geo_;
  lora_config cfg_;
  Tensor a_, b_;
  detail::low_rank_kernels kernels_;
};

static_assert(low_rank_adapter<lora_adapter>);

}  // namespace rimc
