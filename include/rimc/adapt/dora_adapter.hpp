#pragma once
/// \file
/// rimc::dora_adapter: a DoRA adapter (Liu et al. 2024, as in Hugging Face
/// PEFT) on a frozen linear or conv2d layer whose weights W0 are the ones the
/// crossbar really applies. Parameters live in SRAM: magnitude m [O],
/// lora_A [r, K] ([r, C, kh, kw] for conv), lora_B [O, r] ([O, r, 1, 1]),
/// scale s = alpha / r (rsLoRA: alpha / sqrt r).
///
///   y = (m / n) ⊙ (W0 x + s B (A x)) + bias,   n_o = ||(W0 + s B A)_o||
///
/// W0 x comes from the frozen path (the crossbar); W' = m V / n is never
/// materialised. The norms use ||V_o||^2 = ||W0_o||^2 + 2 s B_o (W0 A^T)_o +
/// s^2 B_o (A A^T) B_o^T in double, so W0 is read once per parameter update.
/// The backward pass is hand-written (../shared/PAPER.md): gradients of m, A
/// and B with the norm detached (PEFT, DoRA paper Sec. 4.3) or exact, and the
/// input gradient for backprop through the layer. No dropout.

#include <rimc/core/error.hpp>
#include <rimc/core/half.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/combine.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/small_gemm.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace rimc {

/// How the gradient treats the row norms n of V = W0 + s B A.
enum class norm_mode : std::uint8_t {
  detached,  ///< n is a constant in the backward pass (PEFT; DoRA paper Sec. 4.3)
  exact,     ///< the full gradient through n
};

/// Settings of one DoRA adapter.
struct dora_config {
  /// The largest rank an adapter may have (besides min(O, K)).
  static constexpr std::int64_t max_rank = 64;

  std::int64_t rank = 4;                ///< r, 1..max_rank and at most min(O, K)
  double alpha = 8.0;                   ///< lora_alpha
  bool use_rslora = false;              ///< s = alpha / sqrt(r) instead of alpha / r
  norm_mode norm = norm_mode::detached; ///< gradient mode
  std::uint64_t seed = 0;               ///< seeds lora_A's initialisation
  double norm_eps = 1e-6;               ///< n is clamped below by this (zero rows stay finite)

  /// The LoRA scale s.
  [[nodiscard]] double scale() const noexcept {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
  }
};

/// Gradients of an adapter's parameters, in the parameters' shapes.
struct dora_gradients {
  Tensor magnitude, lora_A, lora_B;
};

/// What an adapter's forward keeps for its backward. It refers to the
/// forward's input and base output, which must stay alive and unchanged
/// until backward (calibration keeps them anyway); only A x is stored.
struct dora_cache {
  const Tensor* src = nullptr;       ///< the forward's input x
  const Tensor* base_out = nullptr;  ///< the forward's W0 x
  Tensor u;                          ///< A x: [N, r, OH, OW] channels-last, or [N, r]
  Tensor owned_base_out;             ///< W0 x when the adapter computed it itself
};

/// Storage precision of an adapter's parameters in SRAM.
enum class sram_precision : std::uint8_t {
  fp32,  ///< 4 bytes per value
  fp16,  ///< 2 bytes per value (IEEE binary16)
  int8,  ///< A and B as int8 with one fp16 scale per row; gamma in fp16
};

/// Parameter count, SRAM bytes and share of the RRAM weights of one or more adapters.
struct adapter_footprint {
  std::int64_t parameters = 0;    ///< adapter values (m, A, B)
  std::int64_t rram_weights = 0;  ///< weights of the base layers on the crossbars
  std::size_t sram_bytes = 0;     ///< bytes the adapters occupy in SRAM
  /// Adapter parameters as a percentage of the RRAM weights.
  [[nodiscard]] double share_percent() const noexcept {
    return rram_weights ? 100.0 * static_cast<double>(parameters) / static_cast<double>(rram_weights) : 0.0;
  }
  adapter_footprint& operator+=(const adapter_footprint& o) noexcept {
    parameters += o.parameters;
    rram_weights += o.rram_weights;
    sram_bytes += o.sram_bytes;
    return *this;
  }
};

namespace detail {

/// The low-rank path of an adapter: A as a convolution with r output
/// channels and the base geometry (thin_conv2d's shift-and-add for r <= 4,
/// where oneDNN's channel padding would waste most of the work; oneDNN's
/// direct convolution above) or as a linear layer; and W0 as a frozen oneDNN
/// kernel.
class dora_kernels {
 public:
  /// Largest rank that uses thin_conv2d (measured in bench/bench_dora.cpp).
  static constexpr std::int64_t thin_max_rank = 4;

  dora_kernels() = default;
  /// An empty `w0` builds no frozen W0 kernel (base_forward and the input gradient through W0 are then unavailable).
  dora_kernels(bool conv, const Tensor& a, const Tensor& w0, const conv2d_params& p) : conv_(conv) {
    if (conv) {
      if (a.dim(0) <= thin_max_rank) {
        a_thin_ = std::make_unique<thin_conv2d>(a, p);
      } else {
        a_conv_ = std::make_unique<rimc::conv2d>(a, std::nullopt, p);
      }
      if (!w0.empty()) base_conv_ = std::make_unique<rimc::conv2d>(w0, std::nullopt, p);
    } else {
      a_linear_ = std::make_unique<rimc::linear>(a);
      if (!w0.empty()) base_linear_ = std::make_unique<rimc::linear>(w0);
    }
  }
  void set_a(const Tensor& a) {
    if (a_thin_) a_thin_->set_weights(a);
    if (a_conv_) a_conv_->set_weights(a);
    if (a_linear_) a_linear_->set_weights(a);
  }
  void set_w0(const Tensor& w0) { conv_ ? base_conv_->set_weights(w0) : base_linear_->set_weights(w0); }

  /// u = A x, channels-last for conv.
  void a_forward(const Tensor& x, Tensor& u) const {
    if (a_thin_) {
      a_thin_->forward(x, u);
    } else if (a_conv_) {
      a_conv_->forward(x, u);
      if (u.memory_layout() != layout::nhwc) u = u.to_layout(layout::nhwc);
    } else {
      a_linear_->forward(x, u);
    }
  }
  /// dL/dA (A's shape) and, with `dx`, A's part of dL/dx, given du = dL/du (conv only).
  void a_conv_backward(const Tensor& x, const Tensor& du, Tensor& da, Tensor* dx) const {
    if (a_thin_) {
      a_thin_->backward(x, du, da, dx);
      return;
    }
    a_conv_->backward_weights(x, du, da);
    if (dx) a_conv_->backward_data(du, x.shape(), *dx);
  }
  void base_forward(const Tensor& x, Tensor& z0) const {
    conv_ ? base_conv_->forward(x, z0) : base_linear_->forward(x, z0);
  }
  [[nodiscard]] const rimc::conv2d& base_conv() const { return *base_conv_; }
  [[nodiscard]] const rimc::linear& a_linear() const { return *a_linear_; }
  [[nodiscard]] const rimc::linear& base_linear() const { return *base_linear_; }

 private:
  bool conv_ = false;
  std::unique_ptr<thin_conv2d> a_thin_;
  std::unique_ptr<rimc::conv2d> a_conv_, base_conv_;
  std::unique_ptr<rimc::linear> a_linear_, base_linear_;
};

/// Rows per block of the row-wise reductions: fixed, so that partial sums
/// are added in the same order whatever the thread count.
inline constexpr Eigen::Index dora_block_rows = 256;

/// y = (u s B^T + z0) diag(gamma) + bias in one fused pass (z0 read once, y
/// written once): oneDNN's matmul with an epilogue, or on AVX-512 for
/// r <= 64 combine_rows (bitwise the same). With `bias_in_base`, base_out
/// still holds the bias (a layer's own output) and it is taken off first;
/// with `relu`, y = max(y, 0) (oneDNN's ReLU, fused on the fast path).
inline void dora_combine(const Tensor& u, const Tensor& base_out, const Eigen::Ref<const RowMatrixXf>& b,
                         const Eigen::VectorXf& gamma, float s, const Tensor* bias, Tensor& y, bool bias_in_base = false,
                         bool relu = false) {
  const bool conv = base_out.rank() == 4;
  const auto O = base_out.dim(1);
  const Eigen::Index P = base_out.numel() / O, r = b.cols();
  const Tensor& z0 = conv ? as_layout(base_out, layout::nhwc, 1) : base_out;
  y.ensure(base_out.shape(), conv ? layout::nhwc : layout::nchw);
  const RowMatrixXf sbt = s * b.transpose();  // [r, O]
  const Eigen::VectorXf shift = bias ? Eigen::VectorXf(bias->vector()) : Eigen::VectorXf::Zero(O);
  const bool unbias = bias_in_base && bias;
  combine_rows(u.data(), sbt.data(), z0.data(), unbias ? shift.data() : nullptr, gamma.data(), shift.data(), r, O, P,
               y.data(), relu);
}

/// gamma ⊙ (W0 + s B A) with W0 [O, ...], A [r, ...], B [O, r, ...].
[[nodiscard]] inline Tensor dora_merge(const Tensor& w0, const Tensor& a, const Tensor& b,
                                       const Eigen::VectorXf& gamma, float s) {
  const auto O = w0.dim(0), K = w0.numel() / O, r = a.dim(0);
  Tensor w = w0;
  auto W = w.matrix(O, K);
  W.noalias() += s * (b.matrix(O, r) * a.matrix(r, K));
  W = gamma.asDiagonal() * W;
  return w;
}

}  // namespace detail

class dora_deployed;

/// A DoRA adapter on a frozen linear or conv2d layer (see the file comment).
class dora_adapter {
 public:
  /// An adapter for a linear layer with (effective) base weights [O, K].
  [[nodiscard]] static dora_adapter linear(Tensor base_weights, dora_config cfg) {
    if (base_weights.rank() != 2) {
      throw shape_error(detail::concat("dora_adapter::linear: base weights must be [O, K], got ",
                                       base_weights.shape().to_string()));
    }
    return dora_adapter(std::move(base_weights), false, conv2d_params{}, cfg);
  }

  /// An adapter for a conv2d layer with (effective) base weights [O, C, kh, kw] and geometry `p`.
  [[nodiscard]] static dora_adapter conv2d(Tensor base_weights, conv2d_params p, dora_config cfg) {
    if (base_weights.rank() != 4) {
      throw shape_error(detail::concat("dora_adapter::conv2d: base weights must be [O, C, kh, kw], got ",
                                       base_weights.shape().to_string()));
    }
    if (p.groups != 1) {
      throw value_error(detail::concat("dora_adapter::conv2d: groups must be 1 (PEFT's DoRA supports no grouped "
                                       "convolutions), got ",
                                       p.groups));
    }
    p.relu = false;
    return dora_adapter(std::move(base_weights), true, p, cfg);
  }

  dora_adapter(dora_adapter&&) noexcept = default;
  dora_adapter& operator=(dora_adapter&&) noexcept = default;

  [[nodiscard]] bool is_conv() const noexcept { return conv_; }
  [[nodiscard]] std::int64_t out_features() const noexcept { return O_; }
  [[nodiscard]] std::int64_t fan_in() const noexcept { return K_; }
  [[nodiscard]] std::int64_t rank() const noexcept { return cfg_.rank; }
  [[nodiscard]] float scale() const noexcept { return static_cast<float>(cfg_.scale()); }
  [[nodiscard]] const dora_config& config() const noexcept { return cfg_; }
  [[nodiscard]] const conv2d_params& conv_params() const noexcept { return params_; }
  /// Changes the gradient mode (the parameters are unaffected).
  void set_norm_mode(norm_mode mode) noexcept { cfg_.norm = mode; }

  /// m [O].
  [[nodiscard]] const Tensor& magnitude() const noexcept { return m_; }
  /// lora_A: [r, K] for linear, [r, C, kh, kw] for conv.
  [[nodiscard]] const Tensor& lora_A() const noexcept { return a_; }
  /// lora_B: [O, r] for linear, [O, r, 1, 1] for conv.
  [[nodiscard]] const Tensor& lora_B() const noexcept { return b_; }

  /// Replaces m, A and B (shapes and finiteness checked), then refreshes.
  void set_parameters(Tensor m, Tensor a, Tensor b) {
    check_same_shape("dora_adapter::set_parameters: magnitude", m.shape(), m_.shape());
    check_same_shape("dora_adapter::set_parameters: lora_A", a.shape(), a_.shape());
    check_same_shape("dora_adapter::set_parameters: lora_B", b.shape(), b_.shape());
    check_finite("dora_adapter::set_parameters: magnitude", m);
    check_finite("dora_adapter::set_parameters: lora_A", a);
    check_finite("dora_adapter::set_parameters: lora_B", b);
    m_ = std::move(m);
    a_ = a.to_layout(layout::nchw);
    b_ = b.to_layout(layout::nchw);
    refresh();
  }

  /// m, A and B for an optimizer to update in place; call refresh() afterwards.
  [[nodiscard]] std::array<Tensor*, 3> parameters() noexcept { return {&m_, &a_, &b_}; }

  /// Recomputes the norms and repacks A after the parameters changed in place.
  void refresh() {
    kernels_.set_a(a_);
    update_norms();
  }

  /// The frozen base weights W0 (what the array applies), PyTorch layout.
  [[nodiscard]] const Tensor& base_weights() const noexcept { return w0_; }

  /// Replaces W0 (e.g. the chip drifted further); m, A, B are kept.
  void set_base_weights(Tensor w0) {
    check_same_shape("dora_adapter::set_base_weights", w0.shape(), w0_.shape());
    check_finite("dora_adapter::set_base_weights", w0);
    w0_ = w0.to_layout(layout::nchw);
    kernels_.set_w0(w0_);
    update_base_stats();
    update_norms();
  }

  /// Sets m to the row norms of `weights` ([O, ...], e.g. the ideal undrifted
  /// weights: the adapter then starts as a per-channel gain correction).
  void init_magnitude_from(const Tensor& weights) {
    if (weights.numel() != O_ * K_ || weights.dim(0) != O_) {
      throw shape_error(detail::concat("dora_adapter::init_magnitude_from: weights ", weights.shape().to_string(),
                                       " do not match the base weights ", w0_.shape().to_string()));
    }
    const Tensor w = weights.to_layout(layout::nchw);
    m_.vector() = w.matrix(O_, K_).rowwise().norm();
  }

  /// n [O]: row norms of V = W0 + s B A (clamped below by norm_eps).
  [[nodiscard]] const Tensor& norms() const noexcept { return n_; }

  /// gamma = m / n [O]: the per-output-channel scale the device applies.
  [[nodiscard]] Tensor gamma() const {
    Tensor g(Shape{O_});
    g.vector() = m_.vector().cwiseQuotient(n_.vector());
    return g;
  }

  /// z0 = W0 x (no bias) through the adapter's own frozen kernel.
  void base_forward(const Tensor& x, Tensor& z0) const { kernels_.base_forward(x, z0); }

  /// y = gamma ⊙ (base_out + s B(A x)) + bias, with base_out = W0 x (no bias)
  /// from the frozen path. Conv outputs are channels-last. With `cache`,
  /// keeps what backward needs (and refers to `x`).
  void forward(const Tensor& x, const Tensor& base_out, const Tensor* bias, Tensor& y,
               dora_cache* cache = nullptr) const {
    check_io(x, base_out, bias);
    if (&y == &x || &y == &base_out) throw value_error("dora_adapter::forward: y must not alias x or base_out");
    thread_local Tensor u_local;
    Tensor& u = cache ? cache->u : u_local;
    kernels_.a_forward(x, u);
    const Eigen::VectorXf g = m_.vector().cwiseQuotient(n_.vector());
    detail::dora_combine(u, base_out, b_.matrix(O_, cfg_.rank), g, scale(), bias, y);
    if (cache) {
      cache->src = &x;
      cache->base_out = &base_out;
    }
  }

  /// The low-rank part of forward alone: u = A x into `cache` (which then
  /// refers to x and base_out, as forward's does), for a caller that combines
  /// y = gamma ⊙ (base_out + s u B^T) + bias itself (fused with its loss);
  /// backward() accepts the cache as it accepts forward's.
  void forward_low_rank(const Tensor& x, const Tensor& base_out, const Tensor* bias, dora_cache& cache) const {
    check_io(x, base_out, bias);
    kernels_.a_forward(x, cache.u);
    cache.src = &x;
    cache.base_out = &base_out;
  }

  /// Inference forward from the frozen layer's own output: `layer_out` =
  /// W0 x + bias (channels-last for conv), so the caller need not take the
  /// bias off first; the result equals forward(x, layer_out - bias, bias, y)
  /// bitwise (then relu(y) with `relu`). `layer_out` is left with unspecified
  /// contents (on the AVX-512 path y is computed in its storage, which then
  /// changes places with y's: no second output-sized buffer is streamed).
  void forward_on_layer_output(const Tensor& x, Tensor& layer_out, const Tensor* bias, Tensor& y,
                               bool relu = false) const {
    check_io(x, layer_out, bias);
    if (&y == &x || &y == &layer_out) throw value_error("dora_adapter::forward: y must not alias x or layer_out");
    thread_local Tensor u;
    kernels_.a_forward(x, u);
    const Eigen::VectorXf g = m_.vector().cwiseQuotient(n_.vector());
    if (layer_out.rank() != 4 || layer_out.memory_layout() == layout::nhwc) {
      // Element by element, read before written: in place is exact.
      detail::dora_combine(u, layer_out, b_.matrix(O_, cfg_.rank), g, scale(), bias, layer_out, true, relu);
      std::swap(layer_out, y);
      return;
    }
    detail::dora_combine(u, layer_out, b_.matrix(O_, cfg_.rank), g, scale(), bias, y, true, relu);
  }

  /// As above, computing W0 x itself (kept in the cache when one is given).
  void forward(const Tensor& x, const Tensor* bias, Tensor& y, dora_cache* cache = nullptr) const {
    if (cache) {
      base_forward(x, cache->owned_base_out);
      forward(x, cache->owned_base_out, bias, y, cache);
      return;
    }
    Tensor z0;
    base_forward(x, z0);
    forward(x, z0, bias, y, cache);
  }

  /// Gradients of the loss given dL/dy for the forward that filled `cache`;
  /// with `diff_x`, also dL/dx (through W0 and the low-rank path).
  void backward(const dora_cache& cache, const Tensor& diff_y, dora_gradients& grads, Tensor* diff_x = nullptr) const {
    if (!cache.src || !cache.base_out) throw value_error("dora_adapter::backward: the cache holds no forward pass");
    check_same_shape("dora_adapter::backward: diff_y", diff_y.shape(), cache.base_out->shape());
    const Tensor& x = *cache.src;
    const auto r = cfg_.rank;
    const Eigen::Index P = cache.base_out->numel() / O_;
    const float s = scale();
    const Tensor& gy = conv_ ? detail::as_layout(diff_y, layout::nhwc, 2) : diff_y;
    const Tensor& z0t = conv_ ? detail::as_layout(*cache.base_out, layout::nhwc, 1) : *cache.base_out;
    const auto G = gy.matrix(P, O_);
    const auto B = b_.matrix(O_, r);
    const Eigen::VectorXf gamma = m_.vector().cwiseQuotient(n_.vector());

    // c_o = sum_p G[p, o] z[p, o] with z = z0 + s u B^T splits into
    // sum_p G z0 (one pass, per-block partials added in order) and
    // s sum_j B[o, j] (G^T u)[o, j]; G^T u and s G diag(gamma) B are matmuls.
    const Eigen::Index blocks = (P + detail::dora_block_rows - 1) / detail::dora_block_rows;
    Eigen::MatrixXd c_part(O_, blocks);
    const float* g_ptr = gy.data();
    const float* z_ptr = z0t.data();
#pragma omp parallel for schedule(static)
    for (Eigen::Index blk = 0; blk < blocks; ++blk) {
      const Eigen::Index p0 = blk * detail::dora_block_rows, p1 = std::min(P, p0 + detail::dora_block_rows);
      std::vector<double> acc(static_cast<std::size_t>(O_), 0.0);
      for (Eigen::Index p = p0; p < p1; ++p) {
        const float* gr = g_ptr + p * O_;
        const float* zr = z_ptr + p * O_;
        for (Eigen::Index o = 0; o < O_; ++o) acc[static_cast<std::size_t>(o)] += static_cast<double>(gr[o] * zr[o]);
      }
      c_part.col(blk) = Eigen::Map<const Eigen::VectorXd>(acc.data(), O_);
    }
    RowMatrixXf gtu(O_, r);  // G^T u
    detail::gemm({O_, r, P, true, false, false}, g_ptr, cache.u.data(), gtu.data());
    const RowMatrixXf w_gb = s * (gamma.asDiagonal() * B);  // [O, r]
    thread_local Tensor ghb_t;                              // s G diag(gamma) B = s Ĝ B
    ghb_t.ensure(cache.u.shape(), cache.u.memory_layout());
    detail::gemm({P, r, O_, false, false, false}, g_ptr, w_gb.data(), ghb_t.data());
    Tensor gh_t;  // Ĝ = G diag(gamma), for the input gradient through W0
    if (diff_x) {
      gh_t.ensure(cache.base_out->shape(), conv_ ? layout::nhwc : layout::nchw);
      gh_t.matrix(P, O_).noalias() = G * gamma.asDiagonal();
    }
    Eigen::VectorXd c = Eigen::VectorXd::Zero(O_);
    for (Eigen::Index blk = 0; blk < blocks; ++blk) c += c_part.col(blk);
    c += static_cast<double>(s) * (B.cast<double>().cwiseProduct(gtu.cast<double>())).rowwise().sum();

    grads.lora_B.ensure(b_.shape());
    auto dB = grads.lora_B.matrix(O_, r);
    dB.noalias() = s * (gamma.asDiagonal() * gtu);
    grads.lora_A.ensure(a_.shape());
    Tensor dx_low;
    if (conv_) {
      kernels_.a_conv_backward(x, ghb_t, grads.lora_A, diff_x ? &dx_low : nullptr);
    } else {
      const Tensor& xs = detail::as_layout(x, layout::nchw, 3);
      detail::gemm({r, K_, P, true, false, false}, ghb_t.data(), xs.data(), grads.lora_A.data());
    }
    complete_gradients(c, grads);
    if (diff_x) {
      if (conv_) {
        kernels_.base_conv().backward_data(gh_t, x.shape(), *diff_x);
      } else {
        kernels_.base_linear().backward_data(gh_t, *diff_x);
        kernels_.a_linear().backward_data(ghb_t, dx_low);
        if (x.rank() == 4) {  // a flattened image input: hand back its shape
          diff_x->reshape(x.shape());
          dx_low.reshape(x.shape());
        }
      }
      add(*diff_x, dx_low, *diff_x);
    }
  }

  /// Completes `grads` from c = dL/dgamma [O] (gamma = m / n) when dL/dA and
  /// dL/dB at fixed n are already in it: sets dL/dm = c / n and, in
  /// norm_mode::exact, adds the part through n to dL/dA and dL/dB. backward()
  /// ends with it; a caller that has dL/dgamma from elsewhere (the
  /// statistics-based calibration) finishes its gradients the same way.
  void complete_gradients(const Eigen::VectorXd& c, dora_gradients& grads) const {
    if (c.size() != O_) {
      throw shape_error(
          detail::concat("dora_adapter::complete_gradients: dL/dgamma has ", c.size(), " values, not ", O_));
    }
    check_same_shape("dora_adapter::complete_gradients: dL/dA", grads.lora_A.shape(), a_.shape());
    check_same_shape("dora_adapter::complete_gradients: dL/dB", grads.lora_B.shape(), b_.shape());
    const auto r = cfg_.rank;
    const Eigen::VectorXd nd = n_.vector().cast<double>();
    grads.magnitude.ensure(m_.shape());
    grads.magnitude.vector() = c.cwiseQuotient(nd).cast<float>();
    if (cfg_.norm != norm_mode::exact) return;
    const Eigen::VectorXd md = m_.vector().cast<double>();
    const Eigen::VectorXd kappa = md.cwiseProduct(c).cwiseQuotient(nd.cwiseProduct(nd).cwiseProduct(nd));
    const Eigen::MatrixXd Bd = b_.matrix(O_, r).cast<double>(), Ad = a_.matrix(r, K_).cast<double>();
    const double sd = cfg_.scale();
    grads.lora_B.matrix(O_, r) -= (sd * kappa.asDiagonal() * (w0_a_t_ + sd * Bd * a_a_t_)).cast<float>();
    const Eigen::MatrixXd kb = kappa.asDiagonal() * Bd;  // rows of B scaled by kappa
    Eigen::MatrixXd corr = kb.transpose() * w0_.matrix(O_, K_).cast<double>();
    corr.noalias() += sd * (Bd.transpose() * kb) * Ad;
    grads.lora_A.matrix(r, K_) -= (sd * corr).cast<float>();
  }

  /// W' = gamma ⊙ (W0 + s B A) in the base weights' layout: the single weight
  /// tensor that gives the same output as base + adapter. A simulator whose
  /// crossbar path is ideal can run the adapted layer as one frozen kernel on
  /// W' (no per-image adapter work); a non-ideal crossbar output needs the
  /// factorised forward.
  [[nodiscard]] Tensor merged_weights() const { return detail::dora_merge(w0_, a_, b_, gamma().vector(), scale()); }

  /// Adapter values: O + r K + O r.
  [[nodiscard]] std::int64_t parameter_count() const noexcept { return O_ + cfg_.rank * K_ + O_ * cfg_.rank; }
  /// Weights of the base layer on the crossbar: O K.
  [[nodiscard]] std::int64_t base_weight_count() const noexcept { return O_ * K_; }

  /// Parameters, SRAM bytes (at `precision`) and share of the RRAM weights.
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    const auto r = static_cast<std::size_t>(cfg_.rank), O = static_cast<std::size_t>(O_),
               K = static_cast<std::size_t>(K_);
    std::size_t bytes = 0;
    switch (precision) {
      case sram_precision::fp32: bytes = 4 * (O + r * K + O * r); break;
      case sram_precision::fp16: bytes = 2 * (O + r * K + O * r); break;
      case sram_precision::int8: bytes = (r * K + O * r) + 2 * (O + r + O); break;
    }
    return {parameter_count(), base_weight_count(), bytes};
  }

  /// The inference form the device stores (see dora_deployed).
  [[nodiscard]] dora_deployed deploy(sram_precision precision = sram_precision::fp32) const;

 private:
  dora_adapter(Tensor w0, bool conv, const conv2d_params& p, dora_config cfg)
      : conv_(conv), params_(p), cfg_(cfg) {
    check_finite(conv ? "dora_adapter::conv2d: base weights" : "dora_adapter::linear: base weights", w0);
    w0_ = w0.to_layout(layout::nchw);
    O_ = w0_.dim(0);
    K_ = w0_.numel() / std::max<std::int64_t>(O_, 1);
    const auto r = cfg_.rank;
    if (r < 1 || r > dora_config::max_rank || r > std::min(O_, K_)) {
      throw value_error(detail::concat("dora_config: rank must be in [1, min(", dora_config::max_rank, ", O = ", O_, ", K = ", K_,
                                       ")], got ", r));
    }
    if (!std::isfinite(cfg_.alpha) || cfg_.alpha <= 0) {
      throw value_error(detail::concat("dora_config: alpha must be a positive finite number, got ", cfg_.alpha));
    }
    if (!std::isfinite(cfg_.norm_eps) || cfg_.norm_eps <= 0) {
      throw value_error(detail::concat("dora_config: norm_eps must be positive, got ", cfg_.norm_eps));
    }
    // PEFT's initialisation: A kaiming-uniform (a = sqrt 5, i.e. bound 1/sqrt(fan_in)), B = 0, m = ||W0||_row.
    a_ = conv ? Tensor(Shape{r, w0_.dim(1), w0_.dim(2), w0_.dim(3)}) : Tensor(Shape{r, K_});
    const auto bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(K_)));
    fill_uniform(a_, counter_rng(cfg_.seed, 0x646f7261 /* "dora" */), -bound, bound);
    b_ = conv ? Tensor(Shape{O_, r, 1, 1}) : Tensor(Shape{O_, r});
    kernels_ = detail::dora_kernels(conv, a_, w0_, params_);
    update_base_stats();
    // m = ||W0||_row computed exactly as n is, so that gamma = m / n is exactly 1 at init.
    m_ = Tensor(Shape{O_});
    n_ = Tensor(Shape{O_});
    update_norms();
    m_ = n_;
  }

  void check_io(const Tensor& x, const Tensor& base_out, const Tensor* bias) const {
    const Shape expected = conv_ ? kernels_.base_conv().output_shape(x.shape())
                                 : Shape{x.rank() > 0 ? x.dim(0) : 0, O_};
    if (!conv_ && (x.rank() < 2 || x.numel() != x.dim(0) * K_)) {
      throw shape_error(detail::concat("dora_adapter: src ", x.shape().to_string(), " does not give ", K_,
                                       " features per row"));
    }
    check_same_shape("dora_adapter::forward: base_out", base_out.shape(), expected);
    if (bias && !(bias->shape() == Shape{O_})) {
      throw shape_error(detail::concat("dora_adapter::forward: bias ", bias->shape().to_string(), " should be [", O_,
                                       "]"));
    }
  }

  void update_base_stats() {
    w0_sq_ = w0_.matrix(O_, K_).cast<double>().rowwise().squaredNorm();
  }

  void update_norms() {
    const auto r = cfg_.rank;
    // W0 A^T [O, r] and A A^T [r, r] in double (row_dots_f64: the same bits with or without AVX-512).
    w0_a_t_.resize(O_, r);  // no reallocation once sized
    a_a_t_.resize(r, r);
    detail::row_dots_f64({w0_.data(), K_}, O_, {a_.data(), K_}, r, K_, w0_a_t_.data());
    detail::row_dots_f64({a_.data(), K_}, r, {a_.data(), K_}, r, K_, a_a_t_.data());
    const double s = cfg_.scale();
    const float* B = b_.data();
    for (Eigen::Index o = 0; o < O_; ++o) {
      double cross = 0, quad = 0;
      for (Eigen::Index j = 0; j < r; ++j) {
        const double bj = B[o * r + j];
        cross += bj * w0_a_t_(o, j);
        double q = 0;
        for (Eigen::Index l = 0; l < r; ++l) q += a_a_t_(j, l) * static_cast<double>(B[o * r + l]);
        quad += bj * q;
      }
      const double n2 = w0_sq_[o] + 2 * s * cross + s * s * quad;
      n_[o] = static_cast<float>(std::max(std::sqrt(std::max(n2, 0.0)), cfg_.norm_eps));
    }
  }

  bool conv_ = false;
  conv2d_params params_;
  dora_config cfg_;
  std::int64_t O_ = 0, K_ = 0;
  Tensor w0_, m_, a_, b_, n_;
  Eigen::VectorXd w0_sq_;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> w0_a_t_, a_a_t_;  ///< W0 A^T, A A^T
  detail::dora_kernels kernels_;
};

/// What the device stores and computes at inference: gamma = m / n [O], A and
/// B, at a storage precision (values held dequantised). Its forward is the
/// training forward with gamma frozen: exact at fp32, within the storage
/// rounding at fp16 / int8.
class dora_deployed {
 public:
  dora_deployed(const dora_adapter& a, sram_precision precision)
      : precision_(precision), scale_(a.scale()), footprint_(a.footprint(precision)), O_(a.out_features()),
        r_(a.rank()) {
    gamma_ = a.gamma();
    lora_a_ = a.lora_A();
    lora_b_ = a.lora_B();
    if (precision == sram_precision::fp16 || precision == sram_precision::int8) {
      for (float& v : gamma_.values()) v = round_to_half(v);
    }
    if (precision == sram_precision::fp16) {
      for (float& v : lora_a_.values()) v = round_to_half(v);
      for (float& v : lora_b_.values()) v = round_to_half(v);
    } else if (precision == sram_precision::int8) {
      quantise_rows(lora_a_, r_);
      quantise_rows(lora_b_, O_);
    }
    w0_ = a.base_weights();
    // The deploy form only adds to W0 x from the crossbar: no frozen W0 kernel of its own.
    kernels_ = detail::dora_kernels(a.is_conv(), lora_a_, Tensor(), a.conv_params());
  }

  [[nodiscard]] sram_precision precision() const noexcept { return precision_; }
  /// gamma [O] as stored.
  [[nodiscard]] const Tensor& gamma() const noexcept { return gamma_; }
  /// A and B as stored (dequantised).
  [[nodiscard]] const Tensor& lora_A() const noexcept { return lora_a_; }
  [[nodiscard]] const Tensor& lora_B() const noexcept { return lora_b_; }
  /// Parameters, SRAM bytes and share of the RRAM weights.
  [[nodiscard]] const adapter_footprint& footprint() const noexcept { return footprint_; }

  /// W' = gamma ⊙ (W0 + s B A) from the stored values (see dora_adapter::merged_weights).
  [[nodiscard]] Tensor merged_weights() const { return detail::dora_merge(w0_, lora_a_, lora_b_, gamma_.vector(), scale_); }

  /// y = gamma ⊙ (base_out + s B(A x)) + bias, base_out = W0 x from the crossbar.
  void forward(const Tensor& x, const Tensor& base_out, const Tensor* bias, Tensor& y) const {
    thread_local Tensor u;
    kernels_.a_forward(x, u);
    detail::dora_combine(u, base_out, lora_b_.matrix(O_, r_), gamma_.vector(), scale_, bias, y);
  }

 private:
  /// Symmetric int8 per row with an fp16 scale, stored back dequantised.
  static void quantise_rows(Tensor& t, std::int64_t rows) {
    auto m = t.matrix(rows, t.numel() / rows);
    for (Eigen::Index i = 0; i < m.rows(); ++i) {
      const float amax = m.row(i).cwiseAbs().maxCoeff();
      const float scale = round_to_half(amax / 127.0f);
      if (scale == 0.0f) {
        m.row(i).setZero();
        continue;
      }
      for (Eigen::Index j = 0; j < m.cols(); ++j)
        m(i, j) = std::clamp(std::nearbyint(m(i, j) / scale), -127.0f, 127.0f) * scale;
    }
  }

  sram_precision precision_;
  float scale_;
  adapter_footprint footprint_;
  std::int64_t O_, r_;
  Tensor gamma_, lora_a_, lora_b_, w0_;
  detail::dora_kernels kernels_;
};

inline dora_deployed dora_adapter::deploy(sram_precision precision) const { return {*this, precision}; }

}  // namespace rimc
