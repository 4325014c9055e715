#pragma once
/// \file
/// rimc::dora_adapter: a DoRA adapter (Liu et al. 2024, as in Hugging Face
/// PEFT) on a frozen linear or conv2d layer whose weights W0 are the ones the
/// crossbar really applies (docs/formulas.md, sec. 1). Its parameters live in
/// SRAM: magnitude m [O], lora_A [r, K] ([r, C, kh, kw] for conv), lora_B
/// [O, r] ([O, r, 1, 1]), scale s = alpha / r (rsLoRA: alpha / sqrt r).
///
///   y = (m / n) ⊙ (W0 x + s B (A x)) + bias,   n_o = ||(W0 + s B A)_o||
///
/// W0 x comes from the frozen layer (the crossbar); W0 itself is borrowed
/// from that layer at every call (no copy to go stale): the norms use
/// ||V_o||^2 = ||W0_o||^2 + 2 s B_o (W0 A^T)_o + s^2 B_o (A A^T) B_o^T in
/// double, computed by refresh(base), and the input gradient runs through the
/// layer's own backward-data pass. The backward pass is hand-written:
/// gradients of m, A and B with the norm detached (PEFT, DoRA paper Sec. 4.3)
/// or exact, and the input gradient for backprop through the layer. No dropout.

#include <rimc/adapt/adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/half.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/kernels/combine.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/small_gemm.hpp>
#include <rimc/kernels/thin_conv2d.hpp>
#include <rimc/nn/layer.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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

/// Gradients of a DoRA adapter's parameters, in the parameters' shapes.
struct dora_gradients {
  /// dL/dm [O], dL/dA and dL/dB, in the shapes of magnitude(), lora_A() and lora_B().
  ///@{
  Tensor magnitude, lora_A, lora_B;
  ///@}
};

/// What a low-rank adapter's forward keeps for its backward. It refers to the
/// forward's input and the layer's output, which must stay alive and
/// unchanged until backward (calibration keeps them anyway); only A x is stored.
struct low_rank_cache {
  const Tensor* src = nullptr;        ///< the forward's input x
  const Tensor* layer_out = nullptr;  ///< the frozen layer's output W0 x + bias
  Tensor u;                           ///< A x: [N, r, OH, OW] channels-last, or [N, r]
};
/// DoRA's cache.
using dora_cache = low_rank_cache;

namespace detail {

/// What a forward of an adapter's u = A x is for: inference (no cache; always
/// thin_conv2d::forward_shift_add) or training (fills a cache; the direct
/// kernel, fused with the combination, when the training kernel is direct).
enum class u_form : std::uint8_t { inference, training };

/// The low-rank path of an adapter: A as a convolution with r output channels
/// and the base geometry (thin_conv2d's shift-and-add for r <= 4, where
/// oneDNN's channel padding would waste most of the work; oneDNN's direct
/// convolution above) or as a linear layer.
class low_rank_kernels {
 public:
  /// Largest rank that uses thin_conv2d (measured in bench/bench_dora.cpp).
  static constexpr std::int64_t thin_max_rank = 4;

  low_rank_kernels() = default;
  low_rank_kernels(bool conv, const Tensor& a, const conv2d_params& p) {
    if (conv) {
      if (a.dim(0) <= thin_max_rank) {
        thin_ = std::make_unique<thin_conv2d>(a, p);
      } else {
        conv_ = std::make_unique<rimc::conv2d>(a, std::nullopt, p);
      }
    } else {
      linear_ = std::make_unique<rimc::linear>(a);
    }
  }
  /// Repacks A after it changed.
  void set_a(const Tensor& a) {
    if (thin_) thin_->set_weights(a);
    if (conv_) conv_->set_weights(a);
    if (linear_) linear_->set_weights(a);
  }
  /// u = A x, then rows_done(p0, p1) over ranges of u's rows covering them
  /// once: for the training form of a thin convolution in the same parallel
  /// region (each range as soon as its rows exist), otherwise after it in
  /// blocks of combine_block_rows, over threads when there are more than
  /// 65536 row elements (`row_elems` per row), as combine_rows does.
  /// Which kernels forwards that fill a cache, and backward, run (shift_add unless set).
  [[nodiscard]] low_rank_kernel training_kernel() const noexcept { return training_; }
  /// Sets training_kernel().
  void set_training_kernel(low_rank_kernel k) noexcept { training_ = k; }
  /// Whether the direct thin-convolution kernels serve `form`.
  [[nodiscard]] bool direct(u_form form) const noexcept {
    return thin_ && form == u_form::training && training_ == low_rank_kernel::direct;
  }

  template <class RowsDone>
  void forward(const Tensor& x, Tensor& u, RowsDone&& rows_done, u_form form, std::int64_t row_elems) const {
    if (direct(form)) {
      thin_->forward(x, u, rows_done);
      return;
    }
    forward(x, u, form);
    const std::int64_t P = u.numel() / (conv_ || thin_ ? u.dim(1) : u.dim(u.rank() - 1));
    const std::int64_t blocks = (P + combine_block_rows - 1) / combine_block_rows;
#pragma omp parallel for schedule(static) if (P * row_elems > 65536)
    for (std::int64_t b = 0; b < blocks; ++b) rows_done(b * combine_block_rows, std::min(P, (b + 1) * combine_block_rows));
  }
  /// u = A x, channels-last for conv, in the given form.
  void forward(const Tensor& x, Tensor& u, u_form form = u_form::inference) const {
    if (thin_) {
      if (direct(form)) {
        thin_->forward(x, u);
      } else {
        thin_->forward_shift_add(x, u);
      }
    } else if (conv_) {
      conv_->forward(x, u);
      if (u.memory_layout() != layout::nhwc) u = u.to_layout(layout::nhwc);
    } else {
      linear_->forward(x, u);
    }
  }
  /// dL/dA (A's shape) and, with `dx`, A's part of dL/dx, given du = dL/du.
  void backward(const Tensor& x, const Tensor& du, Tensor& da, Tensor* dx) const {
    if (thin_) {
      if (training_ == low_rank_kernel::direct) {
        thin_->backward(x, du, da, dx);
      } else {
        thin_->backward_shift_add(x, du, da, dx);
      }
      return;
    }
    if (conv_) {
      conv_->backward_weights(x, du, da);
      if (dx) conv_->backward_data(du, x.shape(), *dx);
      return;
    }
    thread_local Tensor x_scratch;
    const Tensor& xs = as_layout(x, layout::nchw, x_scratch);
    const auto r = da.dim(0), K = da.numel() / r, P = du.numel() / r;
    gemm({.M = r, .N = K, .K = P, .ta = true}, du.data(), xs.data(), da.data());
    if (dx) {
      linear_->backward_data(du, *dx);
      if (x.rank() == 4) dx->reshape(x.shape());
    }
  }
  /// A's part of dL/dx alone, given du.
  void backward_data(const Tensor& du, const Shape& x_shape, Tensor& dx) const {
    if (thin_) {
      thin_->backward_data(du, x_shape, dx);
    } else if (conv_) {
      conv_->backward_data(du, x_shape, dx);
    } else {
      linear_->backward_data(du, dx);
      if (x_shape.rank() == 4) dx.reshape(x_shape);
    }
  }

 private:
  std::unique_ptr<thin_conv2d> thin_;
  std::unique_ptr<rimc::conv2d> conv_;
  std::unique_ptr<rimc::linear> linear_;
  low_rank_kernel training_ = low_rank_kernel::shift_add;
};

/// Rows per block of the row-wise reductions: fixed, so that partial sums
/// are added in the same order whatever the thread count.
inline constexpr Eigen::Index dora_block_rows = 256;

/// What a combination step does with the layer's output.
struct combine_options {
  bool bias_in_output = false;  ///< `layer_out` still holds the bias: take it off first (DoRA)
  bool relu = false;            ///< then y = max(y, 0)
};

/// u = A x (k's kernel), then y = ((u s B^T) + z) ⊙ gamma + shift (z =
/// layer_out, minus the bias with opts.bias_in_output; gamma = 1 and shift = 0
/// when gamma is null, i.e. y = layer_out + s u B^T for LoRA; shift = bias
/// otherwise), each range of rows combined as soon as its u rows exist, in
/// the same parallel region for the training form. y may be layer_out itself
/// (element by element, read before written).
inline void low_rank_forward(const low_rank_kernels& k, const Tensor& x, Tensor& u, const Tensor& layer_out,
                             const Eigen::Ref<const RowMatrixXf>& b, const Eigen::VectorXf* gamma, float s,
                             const Tensor* bias, Tensor& y, combine_options opts, u_form form) {
  const bool conv = layer_out.rank() == 4;
  const auto O = layer_out.dim(1);
  const Eigen::Index r = b.cols();
  thread_local Tensor z_scratch;
  const Tensor& z = conv ? as_layout(layer_out, layout::nhwc, z_scratch) : layer_out;
  if (&y != &layer_out || &z != &layer_out) y.ensure(layer_out.shape(), conv ? layout::nhwc : layout::nchw);
  const RowMatrixXf sbt = s * b.transpose();  // [r, O]
  thread_local Eigen::VectorXf ones, shift;
  const float* g = nullptr;
  if (gamma) {
    g = gamma->data();
    shift = bias ? Eigen::VectorXf(bias->vector()) : Eigen::VectorXf::Zero(O);
  } else {
    ones.setOnes(O);
    shift.setZero(O);
    g = ones.data();
  }
  const bool unbias = opts.bias_in_output && bias && gamma;
  const isa_tier tier = active_isa();  // outside the parallel region (it may throw)
  const float *sb = sbt.data(), *zd = z.data(), *ub = unbias ? shift.data() : nullptr, *sh = shift.data();
  float* yd = y.data();
  k.forward(
      x, u,
      [&](std::int64_t p0, std::int64_t p1) {
        combine_rows_block(u.data(), sb, zd, ub, g, sh, r, O, p0, p1, yd + p0 * O, opts.relu, tier);
      },
      form, O);
}

/// The additive low-rank forward LoRA and VeRA share: u = A x (into the cache
/// when given, which then also refers to x and layer_out), y = layer_out +
/// s u B^T; `who` names the adapter in errors.
inline void additive_low_rank_forward(const low_rank_kernels& k, const Eigen::Ref<const RowMatrixXf>& b, float s,
                                      const Tensor& x, const Tensor& layer_out, Tensor& y, low_rank_cache* cache,
                                      std::string_view who) {
  if (&y == &x || &y == &layer_out) throw value_error(concat(who, "::forward: y must not alias x or layer_out"));
  thread_local Tensor u_local;
  Tensor& u = cache ? cache->u : u_local;
  low_rank_forward(k, x, u, layer_out, b, nullptr, s, nullptr, y, {},
                   cache ? u_form::training : u_form::inference);
  if (cache) {
    cache->src = &x;
    cache->layer_out = &layer_out;
  }
}

/// The same in the storage of the layer's output (then ReLU with `relu`), bitwise the above.
inline void additive_low_rank_in_place(const low_rank_kernels& k, const Eigen::Ref<const RowMatrixXf>& b, float s,
                                       const Tensor& x, Tensor& out, bool relu) {
  thread_local Tensor u;
  if (out.rank() == 4 && out.memory_layout() != layout::nhwc) out = out.to_layout(layout::nhwc);
  low_rank_forward(k, x, u, out, b, nullptr, s, nullptr, out, {.relu = relu}, u_form::inference);
}

/// diag(gamma) (W0 + s B A) with W0 [O, ...], A [r, ...], B [O, r, ...] (gamma null: 1).
[[nodiscard]] inline Tensor low_rank_merge(const Tensor& w0, const Tensor& a, const Tensor& b,
                                           const Eigen::VectorXf* gamma, float s) {
  const auto O = w0.dim(0), K = w0.numel() / O, r = a.dim(0);
  Tensor w = w0.to_layout(layout::nchw);
  auto W = w.matrix(O, K);
  W.noalias() += s * (b.matrix(O, r) * a.matrix(r, K));
  if (gamma) W = gamma->asDiagonal() * W;
  return w;
}

/// The geometry of a frozen layer an adapter attaches to: conv (with its
/// params) or linear, O and K, checked against the adapter's limits.
struct base_geometry {
  bool conv = false;
  conv2d_params params{};
  Shape weight_shape;
  std::int64_t O = 0, K = 0;

  base_geometry() = default;
  base_geometry(const layer& base, std::string_view who) {
    const Tensor& w = base.effective_weights();
    conv = base.conv_params() != nullptr;
    if (conv) {
      params = *base.conv_params();
      params.relu = false;
      if (w.rank() != 4) {
        throw shape_error(concat(who, ": a convolution's weights must be [O, C, kh, kw], got ", w.shape().to_string()));
      }
      if (params.groups != 1) {
        throw value_error(concat(who, ": groups must be 1 (PEFT's adapters support no grouped convolutions), got ",
                                 params.groups));
      }
    } else if (w.rank() != 2) {
      throw shape_error(concat(who, ": a linear layer's weights must be [O, K], got ", w.shape().to_string()));
    }
    weight_shape = w.shape();
    O = w.dim(0);
    K = w.numel() / std::max<std::int64_t>(O, 1);
  }
  /// Throws unless `base` still has these weights' shape.
  void check(const layer& base, std::string_view who) const {
    if (!(base.effective_weights().shape() == weight_shape)) {
      throw shape_error(concat(who, ": the adapter was made for weights ", weight_shape.to_string(),
                               ", the layer now has ", base.effective_weights().shape().to_string()));
    }
  }
  /// The shape of the layer's output for an input of shape `x`.
  [[nodiscard]] Shape output_shape(const Shape& x) const {
    return conv ? conv2d_output_shape(x, weight_shape, params) : Shape{x.rank() > 0 ? x[0] : 0, O};
  }
};

/// Kaiming-uniform A (bound 1/sqrt(K), PEFT's init) of the right shape for `g`, from `seed`.
[[nodiscard]] inline Tensor init_lora_a(const base_geometry& g, std::int64_t r, std::uint64_t seed) {
  Tensor a = g.conv ? Tensor(Shape{r, g.weight_shape[1], g.weight_shape[2], g.weight_shape[3]}) : Tensor(Shape{r, g.K});
  const auto bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(g.K)));
  fill_uniform(a, counter_rng(seed, 0x646f7261 /* "dora" */), -bound, bound);
  return a;
}

/// Checks rank and alpha against the layer; `who` names the adapter type.
inline void check_low_rank_config(const base_geometry& g, std::int64_t r, double alpha, std::string_view who) {
  if (r < 1 || r > dora_config::max_rank || r > std::min(g.O, g.K)) {
    throw value_error(concat(who, ": rank must be in [1, min(", dora_config::max_rank, ", O = ", g.O, ", K = ", g.K,
                             ")], got ", r));
  }
  if (!std::isfinite(alpha) || alpha <= 0) {
    throw value_error(concat(who, ": alpha must be a positive finite number, got ", alpha));
  }
}

/// SRAM bytes of r K + O r low-rank values plus `vectors` per-channel values of O.
[[nodiscard]] inline std::size_t low_rank_bytes(std::int64_t O, std::int64_t K, std::int64_t r, int vectors,
                                                sram_precision precision) noexcept {
  const auto rr = static_cast<std::size_t>(r), o = static_cast<std::size_t>(O), k = static_cast<std::size_t>(K),
             v = static_cast<std::size_t>(vectors);
  switch (precision) {
    case sram_precision::fp32: return 4 * (v * o + rr * k + o * rr);
    case sram_precision::fp16: return 2 * (v * o + rr * k + o * rr);
    case sram_precision::int8: return (rr * k + o * rr) + 2 * (rr + o) + 2 * v * o;
  }
  return 0;
}

/// The sum over rows of G[p, o] (layer_out[p, o] - bias[o]) per column o, in
/// double over fixed blocks of rows (the same order whatever the thread count).
[[nodiscard]] inline Eigen::VectorXd column_dots(const float* g, const float* z, const Tensor* bias, Eigen::Index P,
                                                 Eigen::Index O) {
  const Eigen::Index blocks = (P + dora_block_rows - 1) / dora_block_rows;
  Eigen::MatrixXd part(O, blocks);
  const float* b = bias ? bias->data() : nullptr;
#pragma omp parallel for schedule(static)
  for (Eigen::Index blk = 0; blk < blocks; ++blk) {
    const Eigen::Index p0 = blk * dora_block_rows, p1 = std::min(P, p0 + dora_block_rows);
    std::vector<double> acc(static_cast<std::size_t>(O), 0.0);
    for (Eigen::Index p = p0; p < p1; ++p) {
      const float* gr = g + p * O;
      const float* zr = z + p * O;
      for (Eigen::Index o = 0; o < O; ++o) {
        const float zo = b ? zr[o] - b[o] : zr[o];
        acc[static_cast<std::size_t>(o)] += static_cast<double>(gr[o] * zo);
      }
    }
    part.col(blk) = Eigen::Map<const Eigen::VectorXd>(acc.data(), O);
  }
  Eigen::VectorXd c = Eigen::VectorXd::Zero(O);
  for (Eigen::Index blk = 0; blk < blocks; ++blk) c += part.col(blk);
  return c;
}

/// What DoRA's backward needs from dL/dy = G [P, O], in one pass over it (one
/// parallel region; kernels/arch's dora_backward_rows per block of rows): c
/// [O] as column_dots computes it (the same bits), G^T u [O, r] and ghb [P, r]
/// = G w_t^T (w_t [r, O]). Fixed blocks whose partials are added in order:
/// the same bits at every thread count and on every ISA tier.
inline void dora_backward_pass(const float* g, const float* z, const Tensor* bias, const float* u, const float* w_t,
                               Eigen::Index P, Eigen::Index O, Eigen::Index r, Eigen::VectorXd& c, RowMatrixXf& gtu,
                               float* ghb) {
  const Eigen::Index blocks = (P + dora_block_rows - 1) / dora_block_rows;
  thread_local Eigen::MatrixXd part;      // column blk: block blk's sum_p G z0
  thread_local Eigen::MatrixXf part_gtu;  // column blk: block blk's G^T u as [r][O]
  part.setZero(O, blocks);
  part_gtu.setZero(r * O, blocks);
  const float* b = bias ? bias->data() : nullptr;
  const isa_tier tier = active_isa();
  double* pc = part.data();  // the calling thread's buffers, by pointer: inside the region
  float* pt = part_gtu.data();  // a thread_local name would be each worker's own
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (Eigen::Index blk = 0; blk < blocks; ++blk) {
    const Eigen::Index p0 = blk * dora_block_rows, p1 = std::min(P, p0 + dora_block_rows);
    dora_backward_rows(g, z, b, u, w_t, O, r, p0, p1, pc + blk * O, pt + blk * r * O, ghb, tier);
  }
  c = Eigen::VectorXd::Zero(O);
  for (Eigen::Index blk = 0; blk < blocks; ++blk) c += part.col(blk);
  Eigen::VectorXf t = Eigen::VectorXf::Zero(r * O);
  for (Eigen::Index blk = 0; blk < blocks; ++blk) t += part_gtu.col(blk);
  gtu.resize(O, r);
  for (Eigen::Index o = 0; o < O; ++o)
    for (Eigen::Index j = 0; j < r; ++j) gtu(o, j) = t[j * O + o];
}

/// Throws unless x and layer_out fit the layer `g` describes; `who` names the adapter.
inline void check_low_rank_io(const base_geometry& g, const layer& base, const Tensor& x, const Tensor& layer_out,
                              std::string_view who) {
  g.check(base, who);
  if (!g.conv && (x.rank() < 2 || x.numel() != x.dim(0) * g.K)) {
    throw shape_error(concat(who, ": src ", x.shape().to_string(), " does not give ", g.K, " features per row"));
  }
  check_same_shape(concat(who, "::forward: layer_out"), layer_out.shape(), g.output_shape(x.shape()));
}

/// dL/dx of a low-rank adapter alone: Ĝ W0 (the base layer's backward-data) + s (Ĝ B) A, Ĝ = dL/dy
/// with column o scaled by gamma_o (gamma null: 1).
inline void low_rank_input_gradient(const base_geometry& g, const low_rank_kernels& k, const layer& base,
                                    const Tensor& b, std::int64_t r, float s, const Eigen::VectorXf* gamma,
                                    const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x, std::string_view who) {
  g.check(base, who);
  const Shape out = g.output_shape(x_shape);
  check_same_shape(concat(who, ": diff_y"), diff_y.shape(), out);
  const auto O = g.O;
  const Eigen::Index P = diff_y.numel() / O;
  thread_local Tensor gy_scratch;
  const Tensor& gy = g.conv ? as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
  Tensor gh;
  gh.ensure(diff_y.shape(), g.conv ? layout::nhwc : layout::nchw);
  if (gamma) {
    gh.matrix(P, O).noalias() = gy.matrix(P, O) * gamma->asDiagonal();
  } else {
    gh.matrix(P, O) = gy.matrix(P, O);
  }
  const RowMatrixXf sb = s * b.matrix(O, r);
  Tensor du;
  du.ensure(g.conv ? Shape{out[0], r, out[2], out[3]} : Shape{out[0], r}, g.conv ? layout::nhwc : layout::nchw);
  gemm({.M = P, .N = r, .K = O}, gh.data(), sb.data(), du.data());
  Tensor dx_low;
  k.backward_data(du, x_shape, dx_low);
  base.backward_data(gh, x_shape, diff_x);
  add(diff_x, dx_low, diff_x);
}

}  // namespace detail

class dora_deployed;

/// A DoRA adapter on a frozen linear or conv2d layer (see the file comment).
class dora_adapter {
 public:
  /// What forward keeps for backward: A x and references to x and the layer's output.
  using cache_type = dora_cache;
  /// The adapter's name in files and reports.
  static constexpr std::string_view kind = "dora";
  /// Where dL/dm, dL/dA and dL/dB go among the gradients (parameters() order).
  ///@{
  static constexpr std::size_t grad_index_m = 0, grad_index_A = 1, grad_index_B = 2;
  ///@}

  /// An adapter for `base` (its current weights initialise m = ||W0||_row, so
  /// the layer's output is unchanged at first).
  dora_adapter(const layer& base, dora_config cfg) : geo_(base, "dora_adapter"), cfg_(cfg) {
    detail::check_low_rank_config(geo_, cfg_.rank, cfg_.alpha, "dora_config");
    if (!std::isfinite(cfg_.norm_eps) || cfg_.norm_eps <= 0) {
      throw value_error(detail::concat("dora_config: norm_eps must be positive, got ", cfg_.norm_eps));
    }
    check_finite("dora_adapter: base weights", base.effective_weights());
    // PEFT's initialisation: A kaiming-uniform (a = sqrt 5, i.e. bound 1/sqrt(fan_in)), B = 0, m = ||W0||_row.
    a_ = detail::init_lora_a(geo_, cfg_.rank, cfg_.seed);
    b_ = geo_.conv ? Tensor(Shape{geo_.O, cfg_.rank, 1, 1}) : Tensor(Shape{geo_.O, cfg_.rank});
    kernels_ = detail::low_rank_kernels(geo_.conv, a_, geo_.params);
    // m = ||W0||_row computed exactly as n is, so that gamma = m / n is exactly 1 at init.
    m_ = Tensor(Shape{geo_.O});
    n_ = Tensor(Shape{geo_.O});
    rebase(base);
    m_ = n_;
    update_gamma();
  }

  /// Movable (the moved-from adapter may only be assigned to or destroyed); not copyable.
  ///@{
  dora_adapter(dora_adapter&&) noexcept = default;
  dora_adapter& operator=(dora_adapter&&) noexcept = default;
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
  /// The settings it was made with (norm as last set by set_norm_mode).
  [[nodiscard]] const dora_config& config() const noexcept { return cfg_; }
  /// The base layer's convolution geometry (ReLU off).
  [[nodiscard]] const conv2d_params& conv_params() const noexcept { return geo_.params; }
  /// The shape of the weights the adapter was made for.
  [[nodiscard]] const Shape& base_weight_shape() const noexcept { return geo_.weight_shape; }
  /// Changes the gradient mode (the parameters are unaffected).
  void set_norm_mode(norm_mode mode) noexcept { cfg_.norm = mode; }

  /// m [O].
  [[nodiscard]] const Tensor& magnitude() const noexcept { return m_; }
  /// lora_A: [r, K] for linear, [r, C, kh, kw] for conv.
  [[nodiscard]] const Tensor& lora_A() const noexcept { return a_; }
  /// lora_B: [O, r] for linear, [O, r, 1, 1] for conv.
  [[nodiscard]] const Tensor& lora_B() const noexcept { return b_; }
  /// n [O]: row norms of V = W0 + s B A (clamped below by norm_eps), as of the last refresh.
  [[nodiscard]] const Tensor& norms() const noexcept { return n_; }
  /// gamma = m / n [O]: the per-output-channel factor the device applies.
  [[nodiscard]] Tensor gamma() const { return Tensor::from(Shape{geo_.O}, {gamma_.data(), static_cast<std::size_t>(geo_.O)}); }

  /// Replaces m, A and B (shapes and finiteness checked), then refreshes against `base`.
  void set_parameters(const layer& base, Tensor m, Tensor a, Tensor b) {
    detail::check_parameter("dora_adapter::set_parameters: magnitude", m, m_.shape());
    detail::check_parameter("dora_adapter::set_parameters: lora_A", a, a_.shape());
    detail::check_parameter("dora_adapter::set_parameters: lora_B", b, b_.shape());
    m_ = std::move(m);
    a_ = a.to_layout(layout::nchw);
    b_ = b.to_layout(layout::nchw);
    refresh(base);
  }

  /// m, A and B for an optimizer to update in place; call refresh(base) afterwards.
  [[nodiscard]] std::vector<Tensor*> parameters() { return {&m_, &a_, &b_}; }
  /// m, A and B.
  [[nodiscard]] std::vector<const Tensor*> parameters() const { return {&m_, &a_, &b_}; }

  /// Repacks A and recomputes the norms from `base`'s current weights (after
  /// the parameters changed in place, or the chip drifted).
  void refresh(const layer& base) {
    kernels_.set_a(a_);
    if (&base.effective_weights() != w0_seen_ || base.weights_version() != version_seen_ ||
        base.effective_weights().data() != w0_data_seen_) {
      rebase(base);
    } else {
      update_norms(base);
    }
    update_gamma();
  }

  /// Sets m to the row norms of `weights` ([O, ...], e.g. the ideal undrifted
  /// weights: the adapter then starts as a per-channel gain correction); call refresh(base) after.
  void init_magnitude_from(const Tensor& weights) {
    if (weights.numel() != geo_.O * geo_.K || weights.dim(0) != geo_.O) {
      throw shape_error(detail::concat("dora_adapter::init_magnitude_from: weights ", weights.shape().to_string(),
                                       " do not match the base weights ", geo_.weight_shape.to_string()));
    }
    const Tensor w = weights.to_layout(layout::nchw);
    m_.vector() = w.matrix(geo_.O, geo_.K).rowwise().norm();
  }

  /// u = A x alone into `cache` (which then refers to x and layer_out, as
  /// forward's does), for a caller that combines y itself (fused with its
  /// loss); backward() accepts the cache as it accepts forward's.
  void forward_low_rank(const layer& base, const Tensor& x, const Tensor& layer_out, dora_cache& cache) const {
    check_io(base, x, layer_out);
    kernels_.forward(x, cache.u, detail::u_form::training);
    cache.src = &x;
    cache.layer_out = &layer_out;
  }

  /// y = gamma ⊙ (layer_out - bias + s B(A x)) + bias, layer_out = W0 x + bias
  /// from the frozen layer. Conv outputs are channels-last. With `cache`,
  /// keeps what backward needs (and refers to x and layer_out) and computes A x
  /// in the training form (detail::u_form: the direct kernel, equal to the
  /// inference form without a cache to float rounding).
  void forward(const layer& base, const Tensor& x, const Tensor& layer_out, Tensor& y, dora_cache* cache = nullptr) const {
    check_io(base, x, layer_out);
    if (&y == &x || &y == &layer_out) throw value_error("dora_adapter::forward: y must not alias x or layer_out");
    thread_local Tensor u_local;
    Tensor& u = cache ? cache->u : u_local;
    detail::low_rank_forward(kernels_, x, u, layer_out, b_.matrix(geo_.O, cfg_.rank), &gamma_, scale(), base.bias(), y,
                             {.bias_in_output = true},
                             cache ? detail::u_form::training : detail::u_form::inference);
    if (cache) {
      cache->src = &x;
      cache->layer_out = &layer_out;
    }
  }

  /// Inference in the storage of the layer's output: `out` = W0 x + bias on
  /// entry (channels-last for conv), the adapted output on exit (then ReLU
  /// with `relu`), bitwise what forward() gives.
  void forward_in_place(const layer& base, const Tensor& x, Tensor& out, bool relu) const {
    check_io(base, x, out);
    thread_local Tensor u;
    if (out.rank() == 4 && out.memory_layout() != layout::nhwc) out = out.to_layout(layout::nhwc);
    detail::low_rank_forward(kernels_, x, u, out, b_.matrix(geo_.O, cfg_.rank), &gamma_, scale(), base.bias(), out,
                             {.bias_in_output = true, .relu = relu}, detail::u_form::inference);
  }

  /// Gradients of the loss given dL/dy for the forward that filled `cache`, into
  /// grads = {dL/dm, dL/dA, dL/dB}; with `diff_x`, also dL/dx (through W0, by
  /// the base layer's backward-data pass, and through the low-rank path).
  void backward(const layer& base, const dora_cache& cache, const Tensor& diff_y, std::span<Tensor> grads,
                Tensor* diff_x = nullptr) const {
    if (!cache.src || !cache.layer_out) throw value_error("dora_adapter::backward: the cache holds no forward pass");
    if (grads.size() != 3) {
      throw value_error(detail::concat("dora_adapter::backward: 3 gradient tensors needed (m, A, B), got ", grads.size()));
    }
    geo_.check(base, "dora_adapter::backward");
    check_same_shape("dora_adapter::backward: diff_y", diff_y.shape(), cache.layer_out->shape());
    const Tensor& x = *cache.src;
    const auto r = cfg_.rank, O = geo_.O;
    const Eigen::Index P = cache.layer_out->numel() / O;
    const float s = scale();
    thread_local Tensor gy_scratch, z_scratch;
    const Tensor& gy = geo_.conv ? detail::as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
    const Tensor& zt = geo_.conv ? detail::as_layout(*cache.layer_out, layout::nhwc, z_scratch) : *cache.layer_out;
    const auto B = b_.matrix(O, r);
    const float* g_ptr = gy.data();

    // c_o = sum_p G[p, o] z[p, o] with z = z0 + s u B^T splits into sum_p G z0
    // (z0 = layer_out - bias) and s sum_j B[o, j] (G^T u)[o, j]. The direct
    // kernels get sum_p G z0, G^T u and s G diag(gamma) B = s Ĝ B in one pass
    // over G; shift_add takes a pass for the first and a oneDNN matmul each.
    thread_local Tensor ghb_t;
    ghb_t.ensure(cache.u.shape(), cache.u.memory_layout());
    Eigen::VectorXd c;
    RowMatrixXf gtu(O, r);  // G^T u
    if (kernels_.training_kernel() == low_rank_kernel::direct) {
      const RowMatrixXf w_gb_t = (s * (gamma_.asDiagonal() * B)).transpose();  // [r, O]
      detail::dora_backward_pass(g_ptr, zt.data(), base.bias(), cache.u.data(), w_gb_t.data(), P, O, r, c, gtu,
                                 ghb_t.data());
    } else {
      c = detail::column_dots(g_ptr, zt.data(), base.bias(), P, O);
      detail::gemm({.M = O, .N = r, .K = P, .ta = true}, g_ptr, cache.u.data(), gtu.data());
      const RowMatrixXf w_gb = s * (gamma_.asDiagonal() * B);  // [O, r]
      detail::gemm({.M = P, .N = r, .K = O}, g_ptr, w_gb.data(), ghb_t.data());
    }
    c += static_cast<double>(s) * (B.cast<double>().cwiseProduct(gtu.cast<double>())).rowwise().sum();

    Tensor& dB = grads[grad_index_B];
    dB.ensure(b_.shape());
    dB.matrix(O, r).noalias() = s * (gamma_.asDiagonal() * gtu);
    Tensor& dA = grads[grad_index_A];
    dA.ensure(a_.shape());
    Tensor dx_low;
    kernels_.backward(x, ghb_t, dA, diff_x ? &dx_low : nullptr);
    complete_gradients(base, c, grads);
    if (diff_x) {
      Tensor gh;  // Ĝ = G diag(gamma): the input gradient through W0
      gh.ensure(cache.layer_out->shape(), geo_.conv ? layout::nhwc : layout::nchw);
      gh.matrix(P, O).noalias() = gy.matrix(P, O) * gamma_.asDiagonal();
      base.backward_data(gh, x.shape(), *diff_x);
      add(*diff_x, dx_low, *diff_x);
    }
  }
  /// backward() into a dora_gradients.
  void backward(const layer& base, const dora_cache& cache, const Tensor& diff_y, dora_gradients& grads,
                Tensor* diff_x = nullptr) const {
    std::array<Tensor, 3> g{std::move(grads.magnitude), std::move(grads.lora_A), std::move(grads.lora_B)};
    backward(base, cache, diff_y, g, diff_x);
    grads = {std::move(g[0]), std::move(g[1]), std::move(g[2])};
  }

  /// dL/dx alone for dL/dy (it does not depend on x): Ĝ W0 + s (Ĝ B) A.
  void backward_data(const layer& base, const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x) const {
    detail::low_rank_input_gradient(geo_, kernels_, base, b_, cfg_.rank, scale(), &gamma_, diff_y, x_shape, diff_x,
                                    "dora_adapter::backward_data");
  }

  /// Completes `grads` from c = dL/dgamma [O] (gamma = m / n) when dL/dA and
  /// dL/dB at fixed n are already in it: sets dL/dm = c / n and, in
  /// norm_mode::exact, adds the part through n to dL/dA and dL/dB. backward()
  /// ends with it; a caller that has dL/dgamma from elsewhere (the
  /// statistics-based calibration) finishes its gradients the same way.
  void complete_gradients(const layer& base, const Eigen::VectorXd& c, std::span<Tensor> grads) const {
    const auto r = cfg_.rank, O = geo_.O, K = geo_.K;
    if (c.size() != O) {
      throw shape_error(detail::concat("dora_adapter::complete_gradients: dL/dgamma has ", c.size(), " values, not ", O));
    }
    if (grads.size() != 3) {
      throw value_error(detail::concat("dora_adapter::complete_gradients: 3 gradient tensors needed, got ", grads.size()));
    }
    check_same_shape("dora_adapter::complete_gradients: dL/dA", grads[grad_index_A].shape(), a_.shape());
    check_same_shape("dora_adapter::complete_gradients: dL/dB", grads[grad_index_B].shape(), b_.shape());
    const Eigen::VectorXd nd = n_.vector().cast<double>();
    Tensor& dm = grads[grad_index_m];
    dm.ensure(m_.shape());
    dm.vector() = c.cwiseQuotient(nd).cast<float>();
    if (cfg_.norm != norm_mode::exact) return;
    geo_.check(base, "dora_adapter::complete_gradients");
    const Eigen::VectorXd md = m_.vector().cast<double>();
    const Eigen::VectorXd kappa = md.cwiseProduct(c).cwiseQuotient(nd.cwiseProduct(nd).cwiseProduct(nd));
    const Eigen::MatrixXd Bd = b_.matrix(O, r).cast<double>(), Ad = a_.matrix(r, K).cast<double>();
    const double sd = cfg_.scale();
    grads[grad_index_B].matrix(O, r) -= (sd * kappa.asDiagonal() * (w0_a_t_ + sd * Bd * a_a_t_)).cast<float>();
    const Eigen::MatrixXd kb = kappa.asDiagonal() * Bd;  // rows of B scaled by kappa
    const Tensor w0 = base.effective_weights().to_layout(layout::nchw);
    Eigen::MatrixXd corr = kb.transpose() * w0.matrix(O, K).cast<double>();
    corr.noalias() += sd * (Bd.transpose() * kb) * Ad;
    grads[grad_index_A].matrix(r, K) -= (sd * corr).cast<float>();
  }

  /// W' = gamma ⊙ (W0 + s B A) in the base weights' layout: the single weight
  /// tensor that gives the same output as base + adapter. A simulator whose
  /// crossbar path is ideal can run the adapted layer as one frozen kernel on
  /// W' (no per-image adapter work); a non-ideal crossbar output needs the
  /// factorised forward.
  [[nodiscard]] Tensor merged_weights(const layer& base) const {
    geo_.check(base, "dora_adapter::merged_weights");
    return detail::low_rank_merge(base.effective_weights(), a_, b_, &gamma_, scale());
  }

  /// Adapter values: O + r K + O r.
  [[nodiscard]] std::int64_t parameter_count() const noexcept { return geo_.O + cfg_.rank * geo_.K + geo_.O * cfg_.rank; }

  /// Parameters, SRAM bytes (at `precision`: int8 keeps A and B as int8 with one
  /// fp16 scale per row, gamma in fp16) and share of the base layer's weights.
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    return {parameter_count(), geo_.O * geo_.K, detail::low_rank_bytes(geo_.O, geo_.K, cfg_.rank, 1, precision)};
  }
  /// The same (the concept's form).
  [[nodiscard]] adapter_footprint footprint(const layer& /*base*/, sram_precision precision) const noexcept {
    return footprint(precision);
  }

  /// The parameters by PEFT file name: lora_magnitude_vector [O] (a conv
  /// adapter's is [1, O, 1, 1] in PEFT files), lora_A.weight, lora_B.weight.
  [[nodiscard]] named_tensors tensors() const {
    Tensor m = m_;
    if (geo_.conv) m.reshape(Shape{1, geo_.O, 1, 1});
    return {{"lora_magnitude_vector", std::move(m)}, {"lora_A.weight", a_}, {"lora_B.weight", b_}};
  }
  /// Replaces the parameters from tensors named as tensors() names them
  /// (shapes and values checked; nothing changes on error), then refreshes.
  void load(const layer& base, const std::map<std::string, Tensor>& files) {
    Tensor m = detail::take_tensor(files, "lora_magnitude_vector", m_.shape(), "dora_adapter::load");
    Tensor a = detail::take_tensor(files, "lora_A.weight", a_.shape(), "dora_adapter::load");
    Tensor b = detail::take_tensor(files, "lora_B.weight", b_.shape(), "dora_adapter::load");
    set_parameters(base, std::move(m), std::move(a), std::move(b));
  }

  /// The low-rank form (gamma, A, B, s) for the statistics calibration and the fused loss.
  [[nodiscard]] low_rank_form low_rank() const noexcept { return {&a_, &b_, cfg_.scale(), &gamma_}; }

  /// The inference form the device stores (see dora_deployed).
  [[nodiscard]] dora_deployed deploy(sram_precision precision = sram_precision::fp32) const;

 private:
  void check_io(const layer& base, const Tensor& x, const Tensor& layer_out) const {
    detail::check_low_rank_io(geo_, base, x, layer_out, "dora_adapter");
  }

  /// Everything derived from W0: ||W0_o||^2, then the norms.
  void rebase(const layer& base) {
    geo_.check(base, "dora_adapter::refresh");
    const Tensor& w = base.effective_weights();
    const Tensor& w0 = w.memory_layout() == layout::nchw ? w : (w0_plain_ = w.to_layout(layout::nchw));
    w0_sq_ = w0.matrix(geo_.O, geo_.K).cast<double>().rowwise().squaredNorm();
    w0_seen_ = &w;
    w0_data_seen_ = w.data();
    version_seen_ = base.weights_version();
    update_norms(base);
  }

  void update_norms(const layer& base) {
    const auto r = cfg_.rank, O = geo_.O, K = geo_.K;
    const Tensor& w = base.effective_weights();
    const Tensor& w0 = w.memory_layout() == layout::nchw ? w : (w0_plain_ = w.to_layout(layout::nchw));
    // W0 A^T [O, r] and A A^T [r, r] in double (row_dots_f64: the same bits on every ISA tier).
    w0_a_t_.resize(O, r);  // no reallocation once sized
    a_a_t_.resize(r, r);
    detail::row_dots_f64({w0.data(), K}, O, {a_.data(), K}, r, K, w0_a_t_.data());
    detail::row_dots_f64({a_.data(), K}, r, {a_.data(), K}, r, K, a_a_t_.data());
    const double s = cfg_.scale();
    const float* B = b_.data();
    for (Eigen::Index o = 0; o < O; ++o) {
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

  void update_gamma() { gamma_ = m_.vector().cwiseQuotient(n_.vector()); }

  detail::base_geometry geo_;
  dora_config cfg_;
  Tensor m_, a_, b_, n_;
  Eigen::VectorXf gamma_;
  Eigen::VectorXd w0_sq_;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> w0_a_t_, a_a_t_;  ///< W0 A^T, A A^T
  Tensor w0_plain_;  ///< W0 in plain layout when the layer keeps it otherwise (scratch)
  const Tensor* w0_seen_ = nullptr;
  const float* w0_data_seen_ = nullptr;
  std::uint64_t version_seen_ = 0;
  detail::low_rank_kernels kernels_;
};

static_assert(low_rank_adapter<dora_adapter>);

/// What the device stores and computes at inference: gamma = m / n [O], A and
/// B, at a storage precision (values held dequantised). Its forward is the
/// training forward with gamma frozen: exact at fp32, within the storage
/// rounding at fp16 / int8.
class dora_deployed {
 public:
  /// `a`'s gamma, A and B as stored at `precision` (fp16: all half; int8: A, B per-row int8, gamma half).
  dora_deployed(const dora_adapter& a, sram_precision precision)
      : precision_(precision), scale_(a.scale()), footprint_(a.footprint(precision)), O_(a.out_features()),
        r_(a.rank()) {
    const Tensor g = a.gamma();
    gamma_ = g.vector();
    lora_a_ = a.lora_A();
    lora_b_ = a.lora_B();
    if (precision == sram_precision::fp16 || precision == sram_precision::int8) {
      for (float& v : gamma_) v = round_to_half(v);
    }
    if (precision == sram_precision::fp16) {
      for (float& v : lora_a_.values()) v = round_to_half(v);
      for (float& v : lora_b_.values()) v = round_to_half(v);
    } else if (precision == sram_precision::int8) {
      quantise_rows(lora_a_, r_);
      quantise_rows(lora_b_, O_);
    }
    kernels_ = detail::low_rank_kernels(a.is_conv(), lora_a_, a.conv_params());
  }

  /// Storage precision of gamma, A and B.
  [[nodiscard]] sram_precision precision() const noexcept { return precision_; }
  /// gamma [O] as stored.
  [[nodiscard]] Tensor gamma() const { return Tensor::from(Shape{O_}, {gamma_.data(), static_cast<std::size_t>(O_)}); }
  /// A and B as stored (dequantised).
  ///@{
  [[nodiscard]] const Tensor& lora_A() const noexcept { return lora_a_; }
  [[nodiscard]] const Tensor& lora_B() const noexcept { return lora_b_; }
  ///@}
  /// Parameters, SRAM bytes and share of the RRAM weights.
  [[nodiscard]] const adapter_footprint& footprint() const noexcept { return footprint_; }

  /// W' = gamma ⊙ (W0 + s B A) from the stored values and `base`'s weights (see dora_adapter::merged_weights).
  [[nodiscard]] Tensor merged_weights(const layer& base) const {
    return detail::low_rank_merge(base.effective_weights(), lora_a_, lora_b_, &gamma_, scale_);
  }

  /// y = gamma ⊙ (layer_out - bias + s B(A x)) + bias, layer_out = W0 x + bias from the crossbar.
  void forward(const Tensor& x, const Tensor& layer_out, const Tensor* bias, Tensor& y) const {
    thread_local Tensor u;
    detail::low_rank_forward(kernels_, x, u, layer_out, lora_b_.matrix(O_, r_), &gamma_, scale_, bias, y,
                             {.bias_in_output = true}, detail::u_form::inference);
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
  Eigen::VectorXf gamma_;
  Tensor lora_a_, lora_b_;
  detail::low_rank_kernels kernels_;
};

inline dora_deployed dora_adapter::deploy(sram_precision precision) const { return {*this, precision}; }

}  // namespace rimc
