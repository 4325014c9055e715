#pragma once
/// \file
/// Drift compensation by a reference read (the classic cheap fix, as in
/// aihwkit's GlobalDriftCompensation / PerColumnDriftCompensation): read the
/// array with a fixed probe right after programming, read it again after
/// drift, and rescale the outputs digitally by the ratio. The baseline that
/// DoRA calibration is compared with; it writes no RRAM cell.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

namespace rimc {

/// Which gain a reference read estimates.
enum class compensation_kind : std::uint8_t {
  global,      ///< one gain: probe = all-ones vector, readout = mean over columns of |y|
  per_column,  ///< one gain per column: probe = identity (every row alone), readout = sum over probes of |y|
};

/// Estimates and applies digital output gains that undo the average drift
/// of a layer's conductances, from reads of the array (no RRAM write).
///
/// Works with any layer exposing `array()` (rows / cols), `read_array(probe)`
/// and `set_column_gain(span)`: rimc's analog_conv2d and analog_linear.
class drift_compensation {
 public:
  /// A compensation of kind `kind`, with no reference yet.
  explicit drift_compensation(compensation_kind kind = compensation_kind::global) : kind_(kind) {}

  /// One global gain or one per column.
  [[nodiscard]] compensation_kind kind() const noexcept { return kind_; }
  /// True once a reference read has been recorded.
  [[nodiscard]] bool has_reference() const noexcept { return !reference_.empty(); }
  /// The recorded reference readout (one value, or one per column).
  [[nodiscard]] const std::vector<double>& reference() const noexcept { return reference_; }

  /// Records the reference readout of `layer` (call right after programming).
  template <class Layer>
  void record_reference(const Layer& layer) {
    reference_ = readout(layer);
  }

  /// Gains [O] that map the current readout back to the reference: ref / now
  /// (1 where either readout is zero).
  template <class Layer>
  [[nodiscard]] std::vector<float> gains(const Layer& layer) const {
    if (reference_.empty()) {
      throw value_error("drift_compensation: no reference read recorded (call record_reference first)");
    }
    const auto now = readout(layer);
    if (now.size() != reference_.size()) {
      throw shape_error(detail::concat("drift_compensation: the layer gives ", now.size(),
                                       " readouts but the reference has ", reference_.size()));
    }
    const auto O = static_cast<std::size_t>(layer.array().cols());
    std::vector<float> g(O, 1.0f);
    for (std::size_t o = 0; o < O; ++o) {
      const std::size_t i = kind_ == compensation_kind::global ? 0 : o;
      if (reference_[i] > 0 && now[i] > 0) g[o] = static_cast<float>(reference_[i] / now[i]);
    }
    return g;
  }

  /// Reads `layer` and sets its column gains (digital; no RRAM write).
  template <class Layer>
  void apply(Layer& layer) const {
    const auto g = gains(layer);
    layer.set_column_gain(g);
  }

 private:
  template <class Layer>
  [[nodiscard]] std::vector<double> readout(const Layer& layer) const {
    const auto K = layer.array().rows(), O = layer.array().cols();
    const bool global = kind_ == compensation_kind::global;
    Tensor probe(Shape{global ? 1 : K, K});
    if (global) {
      probe.fill(1.0f);
    } else {
      for (std::int64_t k = 0; k < K; ++k) probe[k * K + k] = 1.0f;
    }
    const Tensor y = layer.read_array(probe);
    std::vector<double> r(global ? 1 : static_cast<std::size_t>(O), 0.0);
    for (std::int64_t p = 0; p < y.dim(0); ++p)
      for (std::int64_t o = 0; o < O; ++o) {
        const double v = std::abs(static_cast<double>(y[p * O + o]));
        if (global) {
          r[0] += v / static_cast<double>(O);
        } else {
          r[static_cast<std::size_t>(o)] += v;
        }
      }
    return r;
  }

  compensation_kind kind_;
  std::vector<double> reference_;
};

}  // namespace rimc
