#pragma once
/// \file
/// Analog conv2d and linear layers: the weights live on a TiledArray of RRAM
/// crossbars, the bias (and an optional per-column gain) stays digital. With
/// an ideal periphery the forward is one oneDNN kernel on the effective
/// weights; otherwise it runs tile by tile: per tile and slice a oneDNN
/// convolution (convolutions whose DAC acts element-wise) or a matmul of
/// im2col rows (any periphery), with the DAC, per-tile ADC and noise
/// between tiles and the partial sums added digitally (see tile_kernel).

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/crossbar/tiled_array.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/kernels/conv2d.hpp>
#include <rimc/kernels/im2col.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/params.hpp>
#include <rimc/kernels/thin_conv2d.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// How an analog layer is deployed.
struct analog_options {
  device_config device{};                                   ///< the RRAM cell and its mapping parameters
  periphery_config periphery = periphery_config::ideal();  ///< DAC / ADC / noise
  std::uint64_t program_seed = 0;  ///< seed of the programming noise
  std::uint64_t layer_id = 0;      ///< mixed into every seed, so layers sharing a seed drift independently
};

namespace detail {

/// The array, digital column gain and bookkeeping the analog layers share.
template <crossbar_tile Tile>
class analog_core {
 public:
  /// `w_ok` is the weight matrix in PyTorch orientation [O, K].
  analog_core(std::string_view who, const Tensor& w_ok, const analog_options& opt, std::int64_t row_group = 1)
      : who_(who), opt_(opt), array_(transposed(w_ok), opt.device, mix_seed(opt.program_seed, opt.layer_id),
                                     opt.periphery, row_group),
        gain_(static_cast<std::size_t>(w_ok.dim(0)), 1.0f) {}

  [[nodiscard]] const TiledArray<Tile>& array() const noexcept { return array_; }
  [[nodiscard]] const analog_options& options() const noexcept { return opt_; }
  [[nodiscard]] const std::vector<float>& gain() const noexcept { return gain_; }

  /// Effective weights [O, K] (array readback times the column gain).
  [[nodiscard]] Tensor effective_ok() const {
    const Tensor ko = array_.effective_weights();
    const auto K = array_.rows(), O = array_.cols();
    Tensor ok = Tensor::empty(Shape{O, K});
    for (std::int64_t o = 0; o < O; ++o) {
      const float g = gain_[static_cast<std::size_t>(o)];
      for (std::int64_t k = 0; k < K; ++k) ok[o * K + k] = g * ko[k * O + o];
    }
    return ok;
  }

  template <drift_model M>
  void drift_to(const M& model, typename M::argument_type when, std::uint64_t seed) {
    array_.drift_to(model, when, mix_seed(seed, opt_.layer_id));
  }
  void reset_drift() { array_.reset_drift(); }
  void reprogram(const Tensor& w_ok, std::uint64_t seed) {
    array_.reprogram(transposed(w_ok), mix_seed(seed, opt_.layer_id));
  }
  /// Returns whether the effective weights changed (new wires, hence new IR drop).
  bool set_periphery(periphery_config p) {
    const bool rewired = !(p.wires == opt_.periphery.wires);
    array_.set_periphery(p);
    opt_.periphery = std::move(p);
    return rewired;
  }
  void set_gain(std::span<const float> g) {
    if (static_cast<std::int64_t>(g.size()) != array_.cols()) {
      throw shape_error(concat(who_, "::set_column_gain: ", g.size(), " gains given for ", array_.cols(),
                               " output columns"));
    }
    for (std::size_t i = 0; i < g.size(); ++i) {
      if (!std::isfinite(g[i])) throw value_error(concat(who_, "::set_column_gain: gain ", i, " is ", g[i]));
    }
    gain_.assign(g.begin(), g.end());
  }

  /// y [rows, O] = gain * (tile-exact product of the rows `fill` produces) + bias, then ReLU if asked.
  template <class Fill>
  void tile_forward(std::int64_t rows, Fill&& fill, float* y, const std::optional<Tensor>& bias, bool relu) const {
    const auto O = array_.cols();
    const auto fin = finish(bias, relu);
    array_.mvm_rows(rows, fill, y, [=](std::int64_t r0, std::int64_t r1, float* yr) {
      for (std::int64_t n = 0; n < r1 - r0; ++n) fin.apply(yr + n * O, 0, O);
    });
  }

  /// What follows the last partial sum of each column: gain, bias, ReLU if asked.
  [[nodiscard]] typename TiledArray<Tile>::column_epilogue finish(const std::optional<Tensor>& bias,
                                                                  bool relu) const noexcept {
    return {gain_.data(), bias ? bias->data() : nullptr, relu};
  }
  template <class Fill>
  void calibrate_adc(std::int64_t rows, Fill&& fill, range_update update) {
    array_.calibrate_adc_rows(rows, fill, update);
  }

 private:
  [[nodiscard]] static Tensor transposed(const Tensor& w_ok) {
    const auto O = w_ok.dim(0), K = w_ok.numel() / std::max<std::int64_t>(O, 1);
    Tensor ko = Tensor::empty(Shape{K, O});
    const float* p = w_ok.data();
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t k = 0; k < K; ++k) ko[k * O + o] = p[o * K + k];
    return ko;
  }

  std::string_view who_;
  analog_options opt_;
  TiledArray<Tile> array_;
  std::vector<float> gain_;
};

[[nodiscard]] inline Tensor checked_bias(std::string_view who, std::optional<Tensor> bias, std::int64_t O) {
  if (!bias) return {};
  if (bias->rank() != 1 || bias->dim(0) != O) {
    throw shape_error(concat(who, ": bias ", bias->shape().to_string(), " does not match ", O, " outputs"));
  }
  return std::move(*bias);
}

/// How far the root of a read variance estimated by a bf16 convolution
/// (conv2d::forward_bf16 of bf16(x^2) with bf16(V), K <= `K` taps per
/// output) can lie from the root of the f32 convolution's, given the
/// largest V and x^2 (rel and abs of variance_bound; docs/formulas.md,
/// sec. 5): x^2 and V are each rounded to bf16 (relative error <= 2^-8),
/// their products are exact, and both convolutions sum K non-negative
/// terms in f32 (relative error <= gamma = K 2^-24 each, in any order), so
/// the estimate va and the exact v satisfy |va - v| <= eps v with eps =
/// (1 + 2^-8)^2 (1 + gamma) / (1 - gamma) - 1, plus at most K 2^-126 (3 +
/// max V + max x^2) where bf16 arithmetic flushes values below 2^-126 to
/// zero. With w = v + FLT_MIN and wa = va + FLT_MIN, |sqrt(w) - sqrt(wa)| =
/// |v - va| / (sqrt(w) + sqrt(wa)) <= (eps / 2)(1 + eps) sqrt(wa) + flushed
/// / (2 2^-63); noisy_codes_rows' root is within 2^-13 of sqrt(wa), and 1%
/// covers the float arithmetic of the bound itself.
[[nodiscard]] inline variance_bound bf16_variance_bound(std::int64_t K, float v_max, float x2_max) {
  const double k = static_cast<double>(K), gamma = k * 0x1p-24 * 1.01;
  const double eps = (1 + 0x1p-8) * (1 + 0x1p-8) * (1 + gamma) / (1 - gamma) - 1;
  variance_bound b;
  b.rel = static_cast<float>(eps / 2 * (1 + eps) * (1 + 0x1p-13) * 1.01);
  b.abs = static_cast<float>(k * 0x1p-64 * (3.0 + static_cast<double>(v_max) + static_cast<double>(x2_max)) * 1.01);
  return b;
}

}  // namespace detail

/// How the tile-exact path of an analog convolution multiplies its tiles.
enum class tile_kernel : std::uint8_t {
  automatic,  ///< `conv` where it is exact, else `gemm`
  gemm,       ///< im2col rows times each tile's matrix (rimc::matmul, in cache-sized row chunks); any periphery
  conv,       ///< one oneDNN convolution per tile and slice over the tile's input channels (and one
              ///< for the read variance, with read noise); needs a mapping without digital offset
              ///< (differential) and no DAC or an element-wise one (fixed or calibrated range)
};

/// A linear layer y = x W^T + b whose W [O, K] is programmed onto RRAM crossbars.
template <crossbar_tile Tile = CrossbarTile<>>
class basic_analog_linear {
 public:
  /// The crossbar tile type the weights are programmed onto.
  using tile_type = Tile;

  /// Programs `weights` [O, K] as `options` says; optional digital `bias` [O], then ReLU when `relu`.
  basic_analog_linear(const Tensor& weights, std::optional<Tensor> bias = std::nullopt, analog_options options = {},
                      bool relu = false)
      : core_("analog_linear", checked_weights(weights), options),
        bias_(bias ? std::optional<Tensor>(detail::checked_bias("analog_linear", std::move(bias), weights.dim(0)))
                   : std::nullopt),
        relu_(relu),
        digital_(core_.effective_ok(), bias_, relu) {}

  /// Input width K (crossbar rows).
  [[nodiscard]] std::int64_t in_features() const noexcept { return core_.array().rows(); }
  /// Output width O (crossbar columns).
  [[nodiscard]] std::int64_t out_features() const noexcept { return core_.array().cols(); }
  /// The weights [O, K] the layer applies now (array readback times column gain), bias excluded.
  [[nodiscard]] const Tensor& effective_weights() const noexcept { return digital_.weights(); }
  /// The digital bias [O], if any.
  [[nodiscard]] const std::optional<Tensor>& bias() const noexcept { return bias_; }
  /// Whether ReLU follows the bias.
  [[nodiscard]] bool fused_relu() const noexcept { return relu_; }
  /// The programmed crossbars, [K, O].
  [[nodiscard]] const TiledArray<Tile>& array() const noexcept { return core_.array(); }
  /// DAC, ADC and noise settings of the array.
  [[nodiscard]] const periphery_config& periphery() const noexcept { return core_.array().periphery(); }
  /// True when forward runs tile by tile (the periphery is not ideal).
  [[nodiscard]] bool uses_tile_path() const noexcept { return !periphery().is_ideal(); }
  /// RRAM cell programming events since construction.
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return core_.array().rram_writes(); }
  /// Stuck cells of the arrays (device_config::faults).
  [[nodiscard]] fault_count stuck_cells() const noexcept { return core_.array().stuck_cells(); }
  /// Changes whenever effective_weights() does (drift, reprogramming, column gain).
  [[nodiscard]] std::uint64_t weights_version() const noexcept { return version_; }
  /// Digital per-output gain applied after the array (1 by default).
  [[nodiscard]] const std::vector<float>& column_gain() const noexcept { return core_.gain(); }

  /// dst [N, O] from src [N, K] (or [N, C, H, W] flattened channels-first).
  void forward(const Tensor& src, Tensor& dst) const {
    if (!uses_tile_path()) {
      digital_.forward(src, dst);
      return;
    }
    forward_tiles(src, dst);
  }
  /// The tile-exact forward whatever the periphery (what `forward` runs when it is not ideal).
  void forward_tiles(const Tensor& src, Tensor& dst) const {
    if (&src == &dst) {
      Tensor y;
      forward_tiles(src, y);
      dst = std::move(y);
      return;
    }
    std::optional<Tensor> converted;
    const float* x = rows_of(src, converted);
    const auto N = src.dim(0), K = in_features();
    dst.ensure(Shape{N, out_features()});
    core_.tile_forward(
        N, [=](std::int64_t r0, std::int64_t r1, float* d) { std::copy(x + r0 * K, x + r1 * K, d); }, dst.data(),
        bias_, relu_);
  }
  /// \overload
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// diff_src [N, K] = diff_dst [N, O] times the effective weights (no ReLU).
  void backward_data(const Tensor& diff_dst, Tensor& diff_src) const { digital_.backward_data(diff_dst, diff_src); }
  /// \overload
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst) const { return digital_.backward_data(diff_dst); }

  /// Sets the array to `model` at time / level `when` (re-derived from the programmed state).
  template <drift_model M>
  void drift_to(const M& model, typename M::argument_type when, std::uint64_t seed) {
    core_.drift_to(model, when, seed);
    refresh();
  }
  /// Returns the array to its programmed state.
  void reset_drift() {
    core_.reset_drift();
    refresh();
  }
  /// Programs new weights [O, K] (counted in rram_writes); drift is reset.
  void reprogram(const Tensor& weights, std::uint64_t seed) {
    core_.reprogram(checked_weights(weights), seed);
    refresh();
  }
  /// Replaces the periphery (no RRAM write); new wires change the effective weights.
  void set_periphery(periphery_config p) {
    if (core_.set_periphery(std::move(p))) refresh();
  }
  /// Calibrates a percentile ADC and a calibrated DAC on representative inputs src (finite, else value_error).
  void calibrate_adc(const Tensor& src, range_update update = range_update::replace) {
    check_finite("analog_linear::calibrate_adc: reference inputs", src);
    std::optional<Tensor> converted;
    const float* x = rows_of(src, converted);
    const auto K = in_features();
    core_.calibrate_adc(
        src.dim(0), [=](std::int64_t r0, std::int64_t r1, float* d) { std::copy(x + r0 * K, x + r1 * K, d); }, update);
  }
  /// Sets the digital per-output gain (drift compensation); no RRAM write.
  void set_column_gain(std::span<const float> gain) {
    core_.set_gain(gain);
    refresh();
  }
  /// The raw array product probe [P, K] -> [P, O] through the periphery (no gain, no bias).
  [[nodiscard]] Tensor read_array(const Tensor& probe) const { return core_.array().mvm(probe); }

 private:
  [[nodiscard]] static const Tensor& checked_weights(const Tensor& w) {
    if (w.rank() != 2) {
      throw shape_error(detail::concat("analog_linear: weights must be rank 2 [O, K], got ", w.shape().to_string()));
    }
    check_finite("analog_linear: weights", w);
    return w;
  }
  /// The rows of src ([N, K], or [N, C, H, W] flattened channels-first), converting an nhwc source into `converted`.
  [[nodiscard]] const float* rows_of(const Tensor& src, std::optional<Tensor>& converted) const {
    const bool ok = (src.rank() == 2 || src.rank() == 4) && src.dim(0) > 0 &&
                    src.numel() / src.dim(0) == in_features();
    if (!ok) {
      throw shape_error(detail::concat("analog_linear: src ", src.shape().to_string(), " does not give ",
                                       in_features(), " features per row"));
    }
    if (src.memory_layout() == layout::nchw) return src.data();
    converted = src.to_layout(layout::nchw);
    return converted->data();
  }
  void refresh() {
    digital_.set_weights(core_.effective_ok());
    ++version_;
  }

  detail::analog_core<Tile> core_;
  std::optional<Tensor> bias_;
  bool relu_;
  linear digital_;
  std::uint64_t version_ = 0;
};

/// A 2-D convolution whose weights [O, C, kh, kw] (flattened to K = C kh kw
/// crossbar rows) are programmed onto RRAM crossbars. Groups must be 1.
template <crossbar_tile Tile = CrossbarTile<>>
class basic_analog_conv2d {
 public:
  /// The crossbar tile type the weights are programmed onto.
  using tile_type = Tile;

  /// Programs `weights` [O, C, kh, kw] as `options` says; optional digital `bias` [O], geometry `params`.
  basic_analog_conv2d(const Tensor& weights, std::optional<Tensor> bias = std::nullopt, conv2d_params params = {},
                      analog_options options = {})
      : core_("analog_conv2d", checked_weights(weights, params), options, weights.dim(2) * weights.dim(3)),
        bias_(bias ? std::optional<Tensor>(detail::checked_bias("analog_conv2d", std::move(bias), weights.dim(0)))
                   : std::nullopt),
        wshape_(weights.shape()),
        digital_(effective(), bias_, params) {
    if (!core_.array().grid().has_digital_offset()) {
      conv2d_params tp = params;
      tp.relu = false;
      const auto& a = core_.array();
      for (const auto& t : a.tiles())
        for (int s = 0; s < a.grid().slices; ++s)
          tile_convs_.emplace_back(tile_weights(t, t.analog_matrix(s)), std::nullopt, tp);
      refresh_current_chains();
      refresh_variance_convs();
    }
  }

  /// The weights [O, C, kh, kw] the layer applies now (array readback times column gain), bias excluded.
  [[nodiscard]] const Tensor& effective_weights() const noexcept { return digital_.weights(); }
  /// The digital bias [O], if any.
  [[nodiscard]] const std::optional<Tensor>& bias() const noexcept { return bias_; }
  /// Stride, padding, dilation and fused ReLU (groups 1).
  [[nodiscard]] const conv2d_params& params() const noexcept { return digital_.params(); }
  /// The programmed crossbars, [C kh kw, O].
  [[nodiscard]] const TiledArray<Tile>& array() const noexcept { return core_.array(); }
  /// DAC, ADC and noise settings of the array.
  [[nodiscard]] const periphery_config& periphery() const noexcept { return core_.array().periphery(); }
  /// True when forward runs tile by tile (the periphery is not ideal).
  [[nodiscard]] bool uses_tile_path() const noexcept { return !periphery().is_ideal(); }
  /// RRAM cell programming events since construction.
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return core_.array().rram_writes(); }
  /// Stuck cells of the arrays (device_config::faults).
  [[nodiscard]] fault_count stuck_cells() const noexcept { return core_.array().stuck_cells(); }
  /// Changes whenever effective_weights() does (drift, reprogramming, column gain).
  [[nodiscard]] std::uint64_t weights_version() const noexcept { return version_; }
  /// Digital per-output-channel gain applied after the array (1 by default).
  [[nodiscard]] const std::vector<float>& column_gain() const noexcept { return core_.gain(); }
  /// Destination shape for a source of shape `src`.
  [[nodiscard]] Shape output_shape(const Shape& src) const { return digital_.output_shape(src); }

  /// dst [N, O, OH, OW] = conv(src) + bias (then ReLU if params().relu); channels-last on the tile path.
  void forward(const Tensor& src, Tensor& dst) const {
    if (!uses_tile_path()) {
      digital_.forward(src, dst);
      return;
    }
    forward_tiles(src, dst);
  }
  /// The tile-exact forward whatever the periphery (what `forward` runs when it is not ideal).
  void forward_tiles(const Tensor& src, Tensor& dst, tile_kernel kernel = tile_kernel::automatic) const {
    const Shape out = output_shape(src.shape());
    if (kernel == tile_kernel::conv && !conv_kernel_exact()) {
      throw value_error(
          "analog_conv2d: tile_kernel::conv needs a mapping without digital offset and no DAC or one with a fixed or "
          "calibrated range");
    }
    if (&src == &dst) {
      Tensor y;
      forward_tiles(src, y, kernel);
      dst = std::move(y);
      return;
    }
    dst.ensure(out, layout::nhwc);
    if (kernel == tile_kernel::conv || (kernel == tile_kernel::automatic && conv_kernel_exact())) {
      conv_tiles(src, out, dst);
      return;
    }
    core_.tile_forward(out[0] * out[2] * out[3], im2col_fill(src, out), dst.data(), bias_, params().relu);
  }

  /// True when the per-tile convolution kernel computes the tile-exact result (see tile_kernel::conv).
  [[nodiscard]] bool conv_kernel_exact() const noexcept {
    const auto& p = periphery();
    return !core_.array().grid().has_digital_offset() && (!p.dac || p.dac->element_wise());
  }
  /// \overload
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// How many (tile, slice, source shape) combinations read their read-noise variances through
  /// the bf16 estimate now (with the per-tile convolution kernel and read noise before an ADC;
  /// from 8 channels per tile where oneDNN has native bf16, below where the CPU has AVX-512 BF16
  /// for detail::pair_conv; docs/formulas.md, sec. 5): 0 before the first such forward.
  [[nodiscard]] std::size_t bf16_variance_shapes() const { return shortcut_->approved(); }
  /// How many (tile, slice, source shape) combinations take their column currents from
  /// detail::chain_conv now (the per-tile convolution kernel below 8 channels per tile, on the
  /// AVX-512 tier, where oneDNN's f32 convolution was seen to sum in the same order): 0 before
  /// the first such forward.
  [[nodiscard]] std::size_t chain_current_shapes() const { return current_verdicts_->approved(); }

  /// The input gradient through the effective weights (no bias, no ReLU).
  void backward_data(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src) const {
    digital_.backward_data(diff_dst, src_shape, diff_src);
  }
  /// \overload
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst, const Shape& src_shape) const {
    return digital_.backward_data(diff_dst, src_shape);
  }

  /// Sets the array to `model` at time / level `when` (re-derived from the programmed state).
  template <drift_model M>
  void drift_to(const M& model, typename M::argument_type when, std::uint64_t seed) {
    core_.drift_to(model, when, seed);
    refresh();
  }
  /// Returns the array to its programmed state.
  void reset_drift() {
    core_.reset_drift();
    refresh();
  }
  /// Programs new weights [O, C, kh, kw] (counted in rram_writes); drift is reset.
  void reprogram(const Tensor& weights, std::uint64_t seed) {
    check_same_shape("analog_conv2d::reprogram", weights.shape(), wshape_);
    core_.reprogram(weights.to_layout(layout::nchw), seed);
    refresh();
  }
  /// Replaces the periphery (no RRAM write); new wires change the effective weights.
  void set_periphery(periphery_config p) {
    if (core_.set_periphery(std::move(p))) {
      refresh();
    } else {
      refresh_variance_convs();
    }
  }
  /// Calibrates a percentile ADC and a calibrated DAC on representative inputs src [N, C, H, W] (finite, else value_error).
  void calibrate_adc(const Tensor& src, range_update update = range_update::replace) {
    const Shape out = output_shape(src.shape());
    check_finite("analog_conv2d::calibrate_adc: reference inputs", src);
    core_.calibrate_adc(out[0] * out[2] * out[3], im2col_fill(src, out), update);
  }
  /// Sets the digital per-output-channel gain (drift compensation); no RRAM write.
  void set_column_gain(std::span<const float> gain) {
    core_.set_gain(gain);
    refresh_effective();  // the gain is applied digitally: the per-tile convolutions stay
  }
  /// The raw array product probe [P, K] -> [P, O] through the periphery (no gain, no bias).
  [[nodiscard]] Tensor read_array(const Tensor& probe) const { return core_.array().mvm(probe); }

 private:
  [[nodiscard]] static Tensor checked_weights(const Tensor& w, const conv2d_params& p) {
    if (w.rank() != 4) {
      throw shape_error(detail::concat("analog_conv2d: weights must be rank 4 [O, C, kh, kw], got ",
                                       w.shape().to_string()));
    }
    if (p.groups != 1) throw value_error(detail::concat("analog_conv2d: groups must be 1, got ", p.groups));
    Tensor ok = w.to_layout(layout::nchw);
    check_finite("analog_conv2d: weights", ok);
    ok.reshape(Shape{w.dim(0), w.numel() / w.dim(0)});
    return ok;
  }
  /// Fills im2col rows of src on demand (the crossbar's input vectors).
  [[nodiscard]] auto im2col_fill(const Tensor& src, const Shape& out) const {
    return [&src, out, kh = wshape_[2], kw = wshape_[3], p = params()](std::int64_t r0, std::int64_t r1, float* d) {
      im2col_rows(src, kh, kw, p, out, r0, r1, d);
    };
  }
  [[nodiscard]] Tensor effective() const {
    Tensor w = core_.effective_ok();
    w.reshape(wshape_);
    return w;
  }
  /// The effective weights (and their version) after the array or the gain changed.
  void refresh_effective() {
    digital_.set_weights(effective());
    ++version_;
  }
  /// Everything derived from the array: the effective weights and the per-tile convolutions.
  void refresh() {
    refresh_effective();
    const auto& a = core_.array();
    const auto S = static_cast<std::size_t>(a.grid().slices);
    for (std::size_t i = 0; i < tile_convs_.size(); ++i) {
      const Tile& t = a.tiles()[i / S];
      tile_convs_[i].set_weights(tile_weights(t, t.analog_matrix(static_cast<int>(i % S))));
    }
    refresh_current_chains();
    refresh_variance_convs();
  }

  /// Per (tile, slice) of a thin tile (thin_tile): the conductances as
  /// detail::chain_conv's weights, for the column currents; the probe's verdicts start over.
  void refresh_current_chains() {
    current_verdicts_->clear();
    cur_chain_.clear();
    for (const conv2d& tc : tile_convs_) {
      const Shape& w = tc.weights().shape();  // [cols, channels, kh, kw]
      cur_chain_.push_back(thin_tile(w[1]) ? detail::chain_conv_weights(tc.weights().data(), w[0], w[1], w[2], w[3])
                                           : std::vector<float>{});
    }
  }

  /// With read noise and the per-tile convolutions: per (tile, slice) the
  /// convolution whose output is the read variance of each column current
  /// (squared inputs times the per-read variance matrix); none otherwise.
  void refresh_variance_convs() {
    const auto& a = core_.array();
    shortcut_->clear();
    var_chain_.clear();
    var_max_.clear();
    var_pairs_.clear();
    if (tile_convs_.empty() || a.periphery().read.is_none()) {
      var_convs_.clear();
      return;
    }
    const auto S = static_cast<std::size_t>(a.grid().slices);
    conv2d_params tp = params();
    tp.relu = false;
    const auto KK = wshape_[2] * wshape_[3];
    for (std::size_t i = 0; i < tile_convs_.size(); ++i) {
      const Tile& t = a.tiles()[i / S];
      const Tensor& m = a.read_variance(i / S, static_cast<int>(i % S));
      Tensor w = tile_weights(t, m);
      if (i < var_convs_.size()) {
        var_convs_[i].set_weights(std::move(w));
      } else {
        var_convs_.emplace_back(w, std::nullopt, tp);
      }
      // The chain's weights, output-major [C][kh][kw][channels], and the largest variance.
      const auto R = t.rows(), C = t.cols(), chn = R / KK;
      Tensor chain = Tensor::empty(Shape{C, R});
      float vmax = 0.0f;
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t j = 0; j < C; ++j) {
          const float e = m[r * C + j];
          chain[j * R + (r % KK) * chn + r / KK] = e;
          vmax = std::max(vmax, e);
        }
      var_chain_.push_back(std::move(chain));
      var_max_.push_back(vmax);
      var_pairs_.push_back(thin_tile(chn) ? detail::pair_conv_weights(m.data(), C, chn, wshape_[2], wshape_[3])
                                          : std::vector<std::uint32_t>{});
    }
  }

  /// From this many input channels per tile the read variances' bf16 estimate is oneDNN's bf16
  /// convolution; below, where the input's width is not dilated, rimc's own (detail::pair_conv):
  /// oneDNN's is no faster there than its f32 one (oneDNN 2.7, one thread, batch 4-8: 1 channel
  /// 0.025 ms either way, 3 channels 0.022 vs 0.027 ms before the bf16 rounding pass; 16 channels
  /// 0.051 vs 0.090 ms).
  static constexpr std::int64_t bf16_variance_min_channels = 8;
  /// Whether a tile of `chn` input channels is thin: below bf16_variance_min_channels, the
  /// input's width not dilated. There rimc's own kernels stand in for oneDNN's where the CPU
  /// runs them: pair_conv for the read variances' estimate, and chain_conv for the column
  /// currents once the probe has seen oneDNN's f32 convolution sum in its order (oneDNN 2.7 is
  /// slow on so few channels: one thread, 4 images of 32 x 32, 3 channels, 3 x 3, 16 columns,
  /// 0.029 ms against chain_conv's 0.019 ms; 5 images of 28 x 28, 1 channel, 0.017 against 0.009 ms).
  [[nodiscard]] bool thin_tile(std::int64_t chn) const noexcept {
    return chn < bf16_variance_min_channels && params().dilation[1] == 1;
  }

  /// Per (tile, slice) and source shape, whether an f32 oneDNN convolution was seen to compute
  /// every output as rimc's FMA chain: the read variances' as detail::conv_chain_values' (then
  /// the bf16 estimate and that chain stand in for it), or the column currents' as
  /// detail::chain_conv's (then chain_conv does). Shared by the threads of a forward; cleared
  /// with new weights.
  class chain_verdicts {
   public:
    enum class verdict : std::uint8_t { unknown, yes, no };
    [[nodiscard]] verdict state(std::size_t ts, const Shape& shape) const {
      std::lock_guard lock(mutex_);
      for (const auto& e : seen_)
        if (e.ts == ts && e.shape == shape) return e.ok ? verdict::yes : verdict::no;
      return verdict::unknown;
    }
    void record(std::size_t ts, const Shape& shape, bool ok) {
      std::lock_guard lock(mutex_);
      for (const auto& e : seen_)
        if (e.ts == ts && e.shape == shape) return;
      seen_.push_back({ts, shape, ok});
    }
    void clear() {
      std::lock_guard lock(mutex_);
      seen_.clear();
    }
    [[nodiscard]] std::size_t approved() const {
      std::lock_guard lock(mutex_);
      return static_cast<std::size_t>(std::count_if(seen_.begin(), seen_.end(), [](const entry& e) { return e.ok; }));
    }

   private:
    struct entry {
      std::size_t ts;
      Shape shape;
      bool ok;
    };
    mutable std::mutex mutex_;
    std::vector<entry> seen_;
  };

  /// The chain's geometry for source `xsq` (channels-last) on (tile, slice) ts.
  [[nodiscard]] detail::thin_conv_geometry chain_geometry(std::size_t ts, const Tensor& xsq) const {
    const conv2d& v = var_convs_[ts];
    return detail::thin_geometry(xsq.shape(), v.output_shape(xsq.shape()), v.weights().shape(), params());
  }

  /// Whether the f32 variance convolution's outputs `v` of (tile, slice) ts equal the chain's, bit
  /// for bit, on the group's first and last 256 output pixels (every border of the image, every column).
  [[nodiscard]] bool chain_matches(std::size_t ts, const Tensor& xsq, const Tensor& v, const Shape& out,
                                   isa_tier tier) const {
    const auto g = chain_geometry(ts, xsq);
    const std::int64_t pixels = g.N * out[2] * out[3], P = std::min<std::int64_t>(256, (pixels + 1) / 2), C = g.r;
    std::vector<std::uint32_t> idx;
    for (std::int64_t p = 0; p < pixels; ++p) {
      if (p == P && pixels - P > P) p = pixels - P;
      for (std::int64_t j = 0; j < C; ++j) idx.push_back(static_cast<std::uint32_t>(p * C + j));
    }
    std::vector<float> chain(idx.size());
    detail::conv_chain_values(g, xsq.data(), var_chain_[ts].data(), idx.data(), static_cast<std::int64_t>(idx.size()),
                              chain.data(), tier);
    for (std::size_t i = 0; i < idx.size(); ++i)
      if (std::bit_cast<std::uint32_t>(chain[i]) != std::bit_cast<std::uint32_t>(v[idx[i]])) return false;
    return true;
  }

  /// The bf16 variance estimate's bound for (tile, slice) ts and squared inputs `xsq` (largest
  /// xsq_max), and the way to the exact variances (the f32 chain).
  [[nodiscard]] detail::variance_bound variance_approx(std::size_t ts, const Tile& t, const Tensor& xsq, float xsq_max,
                                                       isa_tier tier) const {
    detail::variance_bound b = detail::bf16_variance_bound(t.rows(), var_max_[ts], xsq_max);
    b.exact = [this, ts, g = chain_geometry(ts, xsq), x = xsq.data(), tier](const std::uint32_t* idx, std::int64_t n,
                                                                            float* vals) {
      detail::conv_chain_values(g, x, var_chain_[ts].data(), idx, n, vals, tier);
    };
    return b;
  }

  /// A [rows x cols] matrix `m` of tile t as convolution weights [cols, channels, kh, kw] (the tile's rows are whole channels).
  [[nodiscard]] Tensor tile_weights(const Tile& t, const Tensor& m) const {
    const auto R = t.rows(), C = t.cols(), KK = wshape_[2] * wshape_[3];
    Tensor w = Tensor::empty(Shape{C, R / KK, wshape_[2], wshape_[3]});
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t j = 0; j < C; ++j) w[j * R + r] = m[r * C + j];
    return w;
  }

  /// The column currents of (tile, slice) ts of `cols` columns for the block's inputs `xin`,
  /// into c (channels-last): oneDNN's f32 convolution, or where `chains` (chain_conv is fast here
  /// and the tile has few channels) and the probe has seen oneDNN's outputs equal chain_conv's,
  /// bit for bit, on this source shape, chain_conv (xpad: the inputs padded, made once per block
  /// of channels; `padded` says whether it is). The first call on a shape runs both and compares
  /// every output.
  void column_currents(std::size_t ts, const Tensor& xin, const Shape& out, std::int64_t cols, bool chains,
                       bool& padded, std::vector<float>& xpad, Tensor& c, isa_tier tier) const {
    const auto verdict = chains ? current_verdicts_->state(ts, xin.shape()) : chain_verdicts::verdict::no;
    const auto g = detail::chain_conv_shape(xin.dim(0), xin.dim(1), xin.dim(2), xin.dim(3), out[2], out[3], cols,
                                            wshape_[2], wshape_[3], params().stride[0], params().stride[1],
                                            params().padding[0], params().padding[1], params().dilation[0]);
    if (verdict != chain_verdicts::verdict::no && !padded) {
      detail::chain_conv_input(g, xin.data(), xpad);
      padded = true;
    }
    if (verdict == chain_verdicts::verdict::yes) {
      c.ensure(Shape{xin.dim(0), cols, out[2], out[3]}, layout::nhwc);
      detail::chain_conv(g, xpad.data(), cur_chain_[ts].data(), c.data(), tier);
      return;
    }
    tile_convs_[ts].forward(xin, c);
    if (c.memory_layout() != layout::nhwc) c = c.to_layout(layout::nhwc);
    if (verdict == chain_verdicts::verdict::unknown) {
      std::vector<float> chain(static_cast<std::size_t>(c.numel()));
      detail::chain_conv(g, xpad.data(), cur_chain_[ts].data(), chain.data(), tier);
      current_verdicts_->record(ts, xin.shape(),
                                std::memcmp(chain.data(), c.data(), chain.size() * sizeof(float)) == 0);
    }
  }

  /// The tile-exact forward with one oneDNN convolution per tile and slice:
  /// the tile's column currents are the convolution of its input channels
  /// (DAC-quantised element-wise) with its normalised conductance matrix,
  /// and with read noise their variances the convolution of the squared
  /// inputs with the per-read variance matrix (the noise itself is drawn per
  /// output element as on the GEMM path, from the same counters).
  ///
  /// Images go in groups of about 256 KiB of output (a multiple of four
  /// groups, sizes differing by at most one; the grouping depends on the
  /// shapes only), one group per thread with single-threaded
  /// convolutions: one parallel region per call, each group's currents and
  /// partial sums stay in that core's cache, and results do not depend on
  /// the thread count.
  void conv_tiles(const Tensor& src, const Shape& out, Tensor& y) const {
    const auto& a = core_.array();
    const auto& P = a.periphery();
    const auto N = out[0], O = out[1], pixels = out[2] * out[3];
    const auto C_in = src.dim(1), H = src.dim(2), W = src.dim(3), KK = wshape_[2] * wshape_[3];
    const int S = a.grid().slices;
    a.check_calibrated();
    const auto plan = a.begin_call();
    const auto fin = core_.finish(bias_, params().relu);
    const bool dac = P.dac.has_value(), reading = !P.read.is_none();
    // With the read-out's shortcut and native bf16 dot products (oneDNN's from 8 channels per tile,
    // detail::pair_conv's below), the read variances come from a bf16 convolution, each within a
    // stated bound of the f32 one, and the currents near a code boundary get their exact variance
    // from the f32 chain (see variance_approx). Below 8 channels per tile the column currents
    // come from detail::chain_conv where the probe allows (see column_currents).
    const bool approx_possible = a.read_shortcut(plan) && !var_convs_.empty();
    const bool pairs_here = detail::pair_conv_available(plan.tier), chains_here = detail::chain_conv_fast(plan.tier);
    const float xs_all = dac ? static_cast<float>(P.dac->range) : 1.0f;
    const float inv = 1.0f / xs_all, steps = dac ? static_cast<float>(P.dac->steps()) : 1.0f;
    // About 256 KiB of output per group: enough groups to keep every core busy at small
    // batches, each group's currents and outputs in that core's cache. The count is rounded up
    // to a multiple of four (at most N) and the images spread evenly, so that two or four threads
    // get equal shares: 50 images of 14 x 14 x 32 outputs went as five groups of 10, three for one
    // thread and two for the other.
    const auto per_group = std::clamp<std::int64_t>((1 << 16) / std::max<std::int64_t>(pixels * O, 1), 1, N);
    const auto groups = std::min(N, ((N + per_group - 1) / per_group + 3) / 4 * 4);
    // Where channel ch of pixel (n, h, w) of src is: offset(n, 0, h, w) + ch * channel stride.
    const std::int64_t ch_stride = src.memory_layout() == layout::nhwc ? 1 : H * W;
    std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t gi = 0; gi < groups; ++gi) {
      try {
        const thread_count_guard single(1);
        thread_local Tensor xb, xsq, c, v;  // this thread's scratch, reused across calls
        thread_local std::vector<std::uint16_t> xsq16;  // xsq in bf16 (padded for pair_conv), for the estimate
        thread_local std::vector<float> xpad;           // the inputs padded for chain_conv
        const auto n0 = gi * N / groups, ng = (gi + 1) * N / groups - n0, rows = ng * pixels, r_base = n0 * pixels;
        float* yg = y.data() + r_base * O;
        for (std::int64_t rb = 0; rb < a.tile_grid_rows(); ++rb) {
          const Tile& block = a.tile(rb, 0);
          const auto ch0 = block.row0() / KK, chn = block.rows() / KK;
          const Tensor* xin = &src;
          bool squared = false;
          if (ng < N || chn < C_in || dac) {
            // The group's images, the tile's input channels, through the DAC (with read noise, the
            // codes' squares in the same pass). Where they are one contiguous run of src (channels-last
            // with every channel, or a single channel) the DAC reads src directly; otherwise they are
            // gathered first (channels-first source: one plane at a time) and quantised in place.
            // Every code is the same element-wise quantise_unit, whichever way it is reached.
            xb.ensure(Shape{ng, chn, H, W}, layout::nhwc);
            squared = reading && dac;
            if (squared) xsq.ensure(xb.shape(), layout::nhwc);
            const auto HW = H * W, count = ng * HW * chn;
            float* d = xb.data();
            const float* from = d;
            if (chn == C_in && (ch_stride == 1 || C_in == 1)) {
              from = src.data() + src.offset(n0, 0, 0, 0);
              if (!dac) std::copy(from, from + count, d);
            } else if (ch_stride == 1) {
              for (std::int64_t p = 0; p < ng * HW; ++p) {
                const float* sp = src.data() + (n0 * HW + p) * C_in + ch0;
                std::copy(sp, sp + chn, d + p * chn);
              }
            } else {
              for (std::int64_t n = 0; n < ng; ++n)
                for (std::int64_t ch = 0; ch < chn; ++ch) {
                  const float* sp = src.data() + src.offset(n0 + n, ch0 + ch, 0, 0);
                  float* dp = d + n * HW * chn + ch;
                  for (std::int64_t p = 0; p < HW; ++p) dp[p * chn] = sp[p];
                }
            }
            if (dac) detail::dac_codes(from, count, inv, steps, d, squared ? xsq.data() : nullptr, plan.tier);
            xin = &xb;
          }
          if (reading && !squared) {  // the squared inputs, whose convolution with the variance matrix is each read's variance
            xsq.ensure(xin->shape(), xin->memory_layout());
            const float* xp = xin->data();
            float* qp = xsq.data();
            const auto count = xsq.numel();  // hoisted: xsq is thread_local, so the compiler would recompute it
            for (std::int64_t i = 0; i < count; ++i) qp[i] = xp[i] * xp[i];
          }
          float xsq_max = -1.0f;  // < 0: xsq16 not made yet for this block of channels
          // The estimate's convolution for this block of channels: oneDNN's bf16 one from
          // bf16_variance_min_channels, else pair_conv where it runs.
          const bool pairs = thin_tile(chn) && pairs_here;
          const bool estimate = chn >= bf16_variance_min_channels ? bf16_variance_ : pairs;
          const auto pg = detail::pair_geometry(ng, chn, H, W, out[2], out[3], 0, wshape_[2], wshape_[3],
                                                params().stride[0], params().stride[1], params().padding[0],
                                                params().padding[1], params().dilation[0]);
          // The column currents by chain_conv (channels-last inputs: one channel is either layout).
          const bool chains = chains_here && thin_tile(chn) && (xin->memory_layout() == layout::nhwc || chn == 1);
          bool padded = false;  // xpad made for this block of channels
          for (std::int64_t cb = 0; cb < a.tile_grid_cols(); ++cb) {
            const auto ti = static_cast<std::size_t>(rb * a.tile_grid_cols() + cb);
            for (int s = 0; s < S; ++s) {
              const auto ts = ti * static_cast<std::size_t>(S) + static_cast<std::size_t>(s);
              column_currents(ts, *xin, out, a.tile(rb, cb).cols(), chains, padded, xpad, c, plan.tier);
              std::optional<detail::variance_bound> approx;
              if (reading) {
                const auto probe = approx_possible && estimate &&
                                           xsq.memory_layout() == layout::nhwc &&
                                           rows * a.tile(rb, cb).cols() <= 0xffffffffLL
                                       ? shortcut_->state(ts, xsq.shape())
                                       : chain_verdicts::verdict::no;
                if (probe == chain_verdicts::verdict::yes) {
                  if (pairs) {
                    if (xsq_max < 0) {
                      xsq_max = detail::pair_conv_input(pg, xsq.data(), H, W, params().padding[0],
                                                        params().padding[1], xsq16, plan.tier);
                    }
                    auto g = pg;
                    g.cols = a.tile(rb, cb).cols();
                    v.ensure(Shape{ng, g.cols, out[2], out[3]}, layout::nhwc);
                    detail::pair_conv(g, xsq16.data(), var_pairs_[ts].data(), v.data(), plan.tier);
                  } else {
                    if (xsq_max < 0) {
                      xsq16.resize(static_cast<std::size_t>(xsq.numel()));
                      xsq_max = detail::bf16_round(xsq.data(), xsq.numel(), xsq16.data(), plan.tier);
                    }
                    var_convs_[ts].forward_bf16(xsq16.data(), xsq.shape(), v);
                  }
                  approx = variance_approx(ts, a.tile(rb, cb), xsq, xsq_max, plan.tier);
                } else {
                  var_convs_[ts].forward(xsq, v);
                  if (v.memory_layout() != layout::nhwc) v = v.to_layout(layout::nhwc);
                  if (probe == chain_verdicts::verdict::unknown) {
                    shortcut_->record(ts, xsq.shape(), chain_matches(ts, xsq, v, out, plan.tier));
                  }
                }
              }
              // The first partial sum of each column assigns, the last applies gain, bias and ReLU.
              const bool assign = rb == 0 && s == 0, last = rb + 1 == a.tile_grid_rows() && s + 1 == S;
              a.accumulate(plan, ti, s, r_base, rows, c.data(), reading ? v.data() : nullptr, nullptr, xs_all, yg,
                           assign, last ? &fin : nullptr, approx ? &*approx : nullptr);
            }
          }
        }
      } catch (...) {
#pragma omp critical(rimc_analog_conv2d_failure)
        if (!failure) failure = std::current_exception();
      }
    }
    if (failure) std::rethrow_exception(failure);
  }

  detail::analog_core<Tile> core_;
  std::optional<Tensor> bias_;
  Shape wshape_;
  conv2d digital_;
  std::vector<conv2d> tile_convs_;  ///< per (tile, slice): the tile as a convolution (mappings without digital offset)
  std::vector<conv2d> var_convs_;   ///< per (tile, slice), with read noise: the read variance as a convolution
  std::vector<Tensor> var_chain_;   ///< per (tile, slice), with read noise: its variance matrix [C][kh][kw][channels]
  std::vector<float> var_max_;      ///< per (tile, slice), with read noise: its largest variance
  /// per (tile, slice), with read noise, below bf16_variance_min_channels: its variance matrix as
  /// pair_conv's bf16 weights (else empty)
  std::vector<std::vector<std::uint32_t>> var_pairs_;
  std::unique_ptr<chain_verdicts> shortcut_ = std::make_unique<chain_verdicts>();  ///< the variances' estimate
  /// per (tile, slice) of a thin tile: its conductances as chain_conv's weights (else empty)
  std::vector<std::vector<float>> cur_chain_;
  std::unique_ptr<chain_verdicts> current_verdicts_ = std::make_unique<chain_verdicts>();  ///< the currents' chain_conv
  bool bf16_variance_ = detail::onednn_native_bf16();  ///< oneDNN has native bf16 dot products here
  std::uint64_t version_ = 0;
};

/// Analog linear layer on 256 x 256 float tiles, differential mapping, nearest-level programming.
using analog_linear = basic_analog_linear<>;
/// Analog 2-D convolution on 256 x 256 float tiles, differential mapping, nearest-level programming.
using analog_conv2d = basic_analog_conv2d<>;

}  // namespace rimc
