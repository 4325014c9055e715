#pragma once
/// \file
/// Analog conv2d and linear layers: the weights live on a TiledArray of RRAM
/// crossbars, the bias (and an optional per-column gain) stays digital. With
/// an ideal periphery the forward is one oneDNN kernel on the effective
/// weights; otherwise it runs tile by tile (im2col for convolutions).

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

#include <algorithm>
#include <cmath>
#include <cstdint>
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
  analog_core(std::string_view who, const Tensor& w_ok, const analog_options& opt)
      : who_(who), opt_(opt), array_(transposed(w_ok), opt.device, mix_seed(opt.program_seed, opt.layer_id),
                                     opt.periphery),
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
  void drift_to(const M& model, double t_or_level, std::uint64_t seed) {
    array_.drift_to(model, t_or_level, mix_seed(seed, opt_.layer_id));
  }
  void reset_drift() { array_.reset_drift(); }
  void reprogram(const Tensor& w_ok, std::uint64_t seed) {
    array_.reprogram(transposed(w_ok), mix_seed(seed, opt_.layer_id));
  }
  void set_periphery(periphery_config p) {
    array_.set_periphery(p);
    opt_.periphery = std::move(p);
  }
  void calibrate_adc(const Tensor& x) { array_.calibrate_adc(x); }
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

  /// y [rows, O] = gain * (tile-exact x W) + bias, then ReLU if asked.
  void tile_forward(const Tensor& x, float* y, const std::optional<Tensor>& bias, bool relu) const {
    array_.mvm(x, y);
    const auto N = x.dim(0), O = array_.cols();
    const float* b = bias ? bias->data() : nullptr;
#pragma omp parallel for schedule(static)
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < O; ++o) {
        float v = y[n * O + o] * gain_[static_cast<std::size_t>(o)] + (b ? b[o] : 0.0f);
        y[n * O + o] = relu ? std::max(v, 0.0f) : v;
      }
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

}  // namespace detail

/// A linear layer y = x W^T + b whose W [O, K] is programmed onto RRAM crossbars.
template <crossbar_tile Tile = CrossbarTile<>>
class basic_analog_linear {
 public:
  using tile_type = Tile;

  basic_analog_linear(const Tensor& weights, std::optional<Tensor> bias = std::nullopt, analog_options options = {},
                      bool relu = false)
      : core_("analog_linear", checked_weights(weights), options),
        bias_(bias ? std::optional<Tensor>(detail::checked_bias("analog_linear", std::move(bias), weights.dim(0)))
                   : std::nullopt),
        relu_(relu),
        digital_(core_.effective_ok(), bias_, relu) {}

  [[nodiscard]] std::int64_t in_features() const noexcept { return core_.array().rows(); }
  [[nodiscard]] std::int64_t out_features() const noexcept { return core_.array().cols(); }
  /// The weights [O, K] the layer applies now (array readback times column gain), bias excluded.
  [[nodiscard]] const Tensor& effective_weights() const noexcept { return digital_.weights(); }
  /// The digital bias [O], if any.
  [[nodiscard]] const std::optional<Tensor>& bias() const noexcept { return bias_; }
  [[nodiscard]] bool fused_relu() const noexcept { return relu_; }
  [[nodiscard]] const TiledArray<Tile>& array() const noexcept { return core_.array(); }
  [[nodiscard]] const periphery_config& periphery() const noexcept { return core_.array().periphery(); }
  /// True when forward runs tile by tile (the periphery is not ideal).
  [[nodiscard]] bool uses_tile_path() const noexcept { return !periphery().is_ideal(); }
  /// RRAM cell programming events since construction.
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return core_.array().rram_writes(); }
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
    const Tensor x = as_rows(src);
    Tensor out = Tensor::empty(Shape{x.dim(0), out_features()});
    core_.tile_forward(x, out.data(), bias_, relu_);
    dst = std::move(out);
  }
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// diff_src [N, K] = diff_dst [N, O] times the effective weights (no ReLU).
  void backward_data(const Tensor& diff_dst, Tensor& diff_src) const { digital_.backward_data(diff_dst, diff_src); }
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst) const { return digital_.backward_data(diff_dst); }

  /// Sets the array to `model` at time / level t_or_level (re-derived from the programmed state).
  template <drift_model M>
  void drift_to(const M& model, double t_or_level, std::uint64_t seed) {
    core_.drift_to(model, t_or_level, seed);
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
  /// Replaces the periphery (no RRAM write).
  void set_periphery(periphery_config p) { core_.set_periphery(std::move(p)); }
  /// Calibrates a percentile ADC on representative inputs src.
  void calibrate_adc(const Tensor& src) { core_.calibrate_adc(as_rows(src)); }
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
  [[nodiscard]] Tensor as_rows(const Tensor& src) const {
    const bool ok = (src.rank() == 2 || src.rank() == 4) && src.dim(0) > 0 &&
                    src.numel() / src.dim(0) == in_features();
    if (!ok) {
      throw shape_error(detail::concat("analog_linear: src ", src.shape().to_string(), " does not give ",
                                       in_features(), " features per row"));
    }
    Tensor x = src.rank() == 4 ? src.to_layout(layout::nchw) : src;
    x.reshape(Shape{src.dim(0), in_features()});
    return x;
  }
  void refresh() { digital_.set_weights(core_.effective_ok()); }

  detail::analog_core<Tile> core_;
  std::optional<Tensor> bias_;
  bool relu_;
  linear digital_;
};

/// A 2-D convolution whose weights [O, C, kh, kw] (flattened to K = C kh kw
/// crossbar rows) are programmed onto RRAM crossbars. Groups must be 1.
template <crossbar_tile Tile = CrossbarTile<>>
class basic_analog_conv2d {
 public:
  using tile_type = Tile;

  basic_analog_conv2d(const Tensor& weights, std::optional<Tensor> bias = std::nullopt, conv2d_params params = {},
                      analog_options options = {})
      : core_("analog_conv2d", checked_weights(weights, params), options),
        bias_(bias ? std::optional<Tensor>(detail::checked_bias("analog_conv2d", std::move(bias), weights.dim(0)))
                   : std::nullopt),
        wshape_(weights.shape()),
        digital_(effective(), bias_, params) {}

  /// The weights [O, C, kh, kw] the layer applies now (array readback times column gain), bias excluded.
  [[nodiscard]] const Tensor& effective_weights() const noexcept { return digital_.weights(); }
  /// The digital bias [O], if any.
  [[nodiscard]] const std::optional<Tensor>& bias() const noexcept { return bias_; }
  [[nodiscard]] const conv2d_params& params() const noexcept { return digital_.params(); }
  [[nodiscard]] const TiledArray<Tile>& array() const noexcept { return core_.array(); }
  [[nodiscard]] const periphery_config& periphery() const noexcept { return core_.array().periphery(); }
  /// True when forward runs tile by tile (the periphery is not ideal).
  [[nodiscard]] bool uses_tile_path() const noexcept { return !periphery().is_ideal(); }
  /// RRAM cell programming events since construction.
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return core_.array().rram_writes(); }
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
  void forward_tiles(const Tensor& src, Tensor& dst) const {
    const Shape out = output_shape(src.shape());
    Tensor cols;
    im2col(src, wshape_[2], wshape_[3], params(), cols);
    Tensor y = Tensor::empty(out, layout::nhwc);
    core_.tile_forward(cols, y.data(), bias_, params().relu);
    dst = std::move(y);
  }
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// The input gradient through the effective weights (no bias, no ReLU).
  void backward_data(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src) const {
    digital_.backward_data(diff_dst, src_shape, diff_src);
  }
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst, const Shape& src_shape) const {
    return digital_.backward_data(diff_dst, src_shape);
  }

  /// Sets the array to `model` at time / level t_or_level (re-derived from the programmed state).
  template <drift_model M>
  void drift_to(const M& model, double t_or_level, std::uint64_t seed) {
    core_.drift_to(model, t_or_level, seed);
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
  /// Replaces the periphery (no RRAM write).
  void set_periphery(periphery_config p) { core_.set_periphery(std::move(p)); }
  /// Calibrates a percentile ADC on representative inputs src [N, C, H, W].
  void calibrate_adc(const Tensor& src) {
    Tensor cols;
    im2col(src, wshape_[2], wshape_[3], params(), cols);
    core_.calibrate_adc(cols);
  }
  /// Sets the digital per-output-channel gain (drift compensation); no RRAM write.
  void set_column_gain(std::span<const float> gain) {
    core_.set_gain(gain);
    refresh();
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
  [[nodiscard]] Tensor effective() const {
    Tensor w = core_.effective_ok();
    w.reshape(wshape_);
    return w;
  }
  void refresh() { digital_.set_weights(effective()); }

  detail::analog_core<Tile> core_;
  std::optional<Tensor> bias_;
  Shape wshape_;
  conv2d digital_;
};

/// Analog linear layer on 256 x 256 float tiles, differential mapping, nearest-level programming.
using analog_linear = basic_analog_linear<>;
/// Analog 2-D convolution on 256 x 256 float tiles, differential mapping, nearest-level programming.
using analog_conv2d = basic_analog_conv2d<>;

}  // namespace rimc
