#pragma once
/// \file
/// rimc::TiledArray: a [K x O] weight matrix partitioned over a grid of
/// crossbar tiles, with the weight scales, the effective-weight readback,
/// and the tile-exact matrix-vector product (DAC, per-tile ADC, output and
/// read noise, partial sums accumulated digitally).

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/programming.hpp>
#include <rimc/kernels/linear.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace rimc {

namespace detail {
template <class T>
struct is_crossbar_tile : std::false_type {};
template <class S, std::int64_t R, std::int64_t C, class M, class Q>
struct is_crossbar_tile<CrossbarTile<S, R, C, M, Q>> : std::true_type {};
}  // namespace detail

/// A CrossbarTile instantiation.
template <class T>
concept crossbar_tile = detail::is_crossbar_tile<T>::value;

/// A [K x O] weight matrix (rows = inputs, columns = outputs) programmed onto
/// ceil(K / Rows) x ceil(O / Cols) tiles of type `Tile`.
///
/// Programming happens once, in the constructor (or `reprogram`), and is
/// counted in `rram_writes()`; drift and reads never write. The periphery
/// (DAC, ADC, noise) is digital/analog front-end state, not RRAM, and may be
/// changed freely.
template <crossbar_tile Tile = CrossbarTile<>>
class TiledArray {
 public:
  using tile_type = Tile;

  /// Programs `w` ([K, O]) onto tiles with device `dev`; `seed` draws the programming noise.
  TiledArray(const Tensor& w, const device_config& dev, std::uint64_t seed = 0,
             periphery_config periphery = periphery_config::ideal())
      : dev_(dev), grid_(make_level_grid<typename Tile::mapping_type, typename Tile::quantiser_type>(dev)) {
    if (w.rank() != 2 || w.dim(0) < 1 || w.dim(1) < 1) {
      throw shape_error(detail::concat("TiledArray: weights must be a non-empty [K, O] matrix, got ",
                                       w.shape().to_string()));
    }
    K_ = w.dim(0);
    O_ = w.dim(1);
    grid_rows_ = (K_ + Tile::max_rows - 1) / Tile::max_rows;
    grid_cols_ = (O_ + Tile::max_cols - 1) / Tile::max_cols;
    for (std::int64_t i = 0; i < grid_rows_; ++i)
      for (std::int64_t j = 0; j < grid_cols_; ++j) {
        const auto r0 = i * Tile::max_rows, c0 = j * Tile::max_cols;
        tiles_.emplace_back(r0, c0, std::min(Tile::max_rows, K_ - r0), std::min(Tile::max_cols, O_ - c0), O_, grid_);
      }
    set_periphery(std::move(periphery));
    reprogram(w, seed);
  }

  TiledArray(TiledArray&& o) noexcept { *this = std::move(o); }
  TiledArray& operator=(TiledArray&& o) noexcept {
    dev_ = o.dev_;
    grid_ = o.grid_;
    K_ = o.K_;
    O_ = o.O_;
    grid_rows_ = o.grid_rows_;
    grid_cols_ = o.grid_cols_;
    tiles_ = std::move(o.tiles_);
    scales_ = std::move(o.scales_);
    periphery_ = std::move(o.periphery_);
    adc_ranges_ = std::move(o.adc_ranges_);
    read_var_ = std::move(o.read_var_);
    writes_ = o.writes_;
    calls_.store(o.calls_.load());
    return *this;
  }

  [[nodiscard]] std::int64_t rows() const noexcept { return K_; }  ///< K (inputs)
  [[nodiscard]] std::int64_t cols() const noexcept { return O_; }  ///< O (outputs)
  [[nodiscard]] std::int64_t tile_grid_rows() const noexcept { return grid_rows_; }
  [[nodiscard]] std::int64_t tile_grid_cols() const noexcept { return grid_cols_; }
  [[nodiscard]] const Tile& tile(std::int64_t i, std::int64_t j) const {
    return tiles_.at(static_cast<std::size_t>(i * grid_cols_ + j));
  }
  [[nodiscard]] const std::vector<Tile>& tiles() const noexcept { return tiles_; }
  [[nodiscard]] const device_config& device() const noexcept { return dev_; }
  [[nodiscard]] const level_grid& grid() const noexcept { return grid_; }
  /// Weight scale of each column (max |w| of the column, or of the layer), weight units.
  [[nodiscard]] const std::vector<float>& scales() const noexcept { return scales_; }
  /// Cell programming events since construction (drift and reads never add any).
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return writes_; }

  /// Writes `w` ([K, O]) onto the tiles again (every cell is one programming event); drift is reset.
  void reprogram(const Tensor& w, std::uint64_t seed) {
    check_same_shape("TiledArray::reprogram", w.shape(), Shape{K_, O_});
    check_finite("TiledArray: weights", w);
    scales_.assign(static_cast<std::size_t>(O_), 0.0f);
    const float* p = w.data();
    for (std::int64_t k = 0; k < K_; ++k)
      for (std::int64_t o = 0; o < O_; ++o)
        scales_[static_cast<std::size_t>(o)] = std::max(scales_[static_cast<std::size_t>(o)], std::abs(p[k * O_ + o]));
    if (dev_.scale == weight_scale::per_layer) {
      const float m = *std::max_element(scales_.begin(), scales_.end());
      std::fill(scales_.begin(), scales_.end(), m);
    }
    for (auto& t : tiles_) writes_ += t.program(p, scales_.data(), dev_, seed);
    refresh_read_variance();
  }

  /// Sets every cell to `model` at time / level `t_or_level` from its programmed state.
  template <drift_model M>
  void drift_to(const M& model, double t_or_level, std::uint64_t seed) {
    model.validate(t_or_level);
    for (auto& t : tiles_) t.drift_to(model, t_or_level, seed);
    refresh_read_variance();
  }

  /// Returns every cell to its programmed conductance.
  void reset_drift() {
    for (auto& t : tiles_) t.reset_drift();
    refresh_read_variance();
  }

  /// The [K, O] weights the array applies now, read back from the conductances and scales.
  [[nodiscard]] Tensor effective_weights() const {
    Tensor out = Tensor::empty(Shape{K_, O_});
    for (const auto& t : tiles_) t.read_weights(scales_.data(), out.data());
    return out;
  }

  [[nodiscard]] const periphery_config& periphery() const noexcept { return periphery_; }

  /// Replaces the periphery (no RRAM write). A fixed ADC range applies at
  /// once; a percentile ADC needs `calibrate_adc` before the next product.
  void set_periphery(periphery_config p) {
    p.validate();
    periphery_ = std::move(p);
    adc_ranges_.clear();
    if (periphery_.adc && periphery_.adc->mode == adc_range_mode::fixed) {
      adc_ranges_.assign(tiles_.size() * static_cast<std::size_t>(grid_.slices),
                         static_cast<float>(periphery_.adc->range));
    }
    refresh_read_variance();
  }

  /// Per (tile, slice) ADC full scale in normalised current units (empty when not set).
  [[nodiscard]] const std::vector<float>& adc_ranges() const noexcept { return adc_ranges_; }

  /// Sets each (tile, slice) ADC range to the configured percentile of
  /// |column current| over the rows of `x` ([N, K]), without noise.
  void calibrate_adc(const Tensor& x) {
    if (!periphery_.adc) throw value_error("TiledArray::calibrate_adc: the periphery has no ADC");
    std::vector<std::vector<float>> samples(tiles_.size() * static_cast<std::size_t>(grid_.slices));
    run(x, static_cast<float*>(nullptr), &samples);
    const double pct = periphery_.adc->percentile;
    adc_ranges_.assign(samples.size(), 0.0f);
    for (std::size_t i = 0; i < samples.size(); ++i) {
      auto& v = samples[i];
      if (v.empty()) continue;
      auto idx = static_cast<std::size_t>(std::ceil(pct / 100.0 * static_cast<double>(v.size())));
      idx = std::clamp<std::size_t>(idx, 1, v.size()) - 1;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(idx), v.end());
      adc_ranges_[i] = std::max(v[idx], std::numeric_limits<float>::min());
    }
  }

  /// Tile-exact product y [N, O] = x [N, K] through the tiles and the periphery.
  void mvm(const Tensor& x, Tensor& y) const {
    check_input(x);
    y.ensure(Shape{x.dim(0), O_});
    mvm(x, y.data());
  }
  /// The same product written to `y`, which must hold N * O floats (row-major [N, O]).
  void mvm(const Tensor& x, float* y) const {
    check_input(x);
    if (periphery_.adc && adc_ranges_.empty()) {
      throw value_error(
          "TiledArray: the ADC range is not calibrated (adc_range_mode::percentile): call calibrate_adc first");
    }
    run(x, y, nullptr);
  }
  [[nodiscard]] Tensor mvm(const Tensor& x) const {
    Tensor y;
    mvm(x, y);
    return y;
  }

 private:
  /// Normalised per-slice current to weight units: y_o += factor_o * place(s) * c.
  [[nodiscard]] double column_factor(std::int64_t o) const noexcept {
    return static_cast<double>(scales_[static_cast<std::size_t>(o)]) * grid_.lm1 / grid_.q_max;
  }

  void refresh_read_variance() {
    read_var_.clear();
    if (periphery_.read.is_none()) return;
    for (const auto& t : tiles_)
      for (int s = 0; s < grid_.slices; ++s) read_var_.push_back(t.read_variance(periphery_.read, s));
  }

  /// The tile-exact pipeline. With `y`, accumulates the product; with
  /// `samples`, collects |current| per (tile, slice) for ADC calibration.
  void check_input(const Tensor& x) const {
    if (x.rank() != 2 || x.dim(1) != K_) {
      throw shape_error(detail::concat("TiledArray: x must be [N, ", K_, "], got ", x.shape().to_string()));
    }
  }

  void run(const Tensor& x, float* y, std::vector<std::vector<float>>* samples) const {
    check_input(x);
    const auto N = x.dim(0);
    const int S = grid_.slices;
    const bool calibrating = samples != nullptr;
    const auto& P = periphery_;
    const bool reading = !calibrating && !P.read.is_none();
    const bool out_noise = !calibrating && P.output_noise > 0;
    const bool adc = !calibrating && P.adc.has_value();
    const float adc_steps = adc ? static_cast<float>(P.adc->steps()) : 1.0f;
    const std::uint64_t call_seed = detail::mix_seed(P.noise_seed, calls_.fetch_add(1));
    if (y) std::fill_n(y, N * O_, 0.0f);
    std::vector<float> factor(static_cast<std::size_t>(O_));
    for (std::int64_t o = 0; o < O_; ++o) factor[static_cast<std::size_t>(o)] = static_cast<float>(column_factor(o));
    // Offset mapping: the digit-0 conductance and the code offset, removed
    // digitally as offset_code * sum(x~) (in units of factor_o).
    double offset_code = 0;
    if constexpr (Tile::devices == 1) {
      for (int s = 0; s < S; ++s) offset_code += grid_.place(s);
      offset_code = offset_code * grid_.g_min_us / grid_.range_us + grid_.q_off / grid_.lm1;
    }

    Tensor xb, xb2, c, v;
    std::vector<float> xscale(static_cast<std::size_t>(N), 1.0f);
    std::vector<double> xsum(static_cast<std::size_t>(N), 0.0);
    const float* xp = x.data();
    for (std::int64_t rb = 0; rb < grid_rows_; ++rb) {
      const Tile& first = tiles_[static_cast<std::size_t>(rb * grid_cols_)];
      const auto k0 = first.row0(), R = first.rows();
      // DAC: the row block of every input vector, scaled and quantised.
      const bool direct = !P.dac && grid_rows_ == 1;
      if (!direct) {
        xb.ensure(Shape{N, R});
        float* xbp = xb.data();
        const auto& dac = P.dac;
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const float* src = xp + n * K_ + k0;
          float* dst = xbp + n * R;
          if (!dac) {
            std::copy(src, src + R, dst);
            continue;
          }
          float s = static_cast<float>(dac->range);
          if (dac->scaling == dac_scaling::per_vector_absmax) {
            s = 0.0f;
            for (std::int64_t r = 0; r < R; ++r) s = std::max(s, std::abs(src[r]));
            if (s == 0.0f) s = 1.0f;
          }
          xscale[static_cast<std::size_t>(n)] = s;
          const float inv = 1.0f / s, steps = static_cast<float>(dac->steps());
          for (std::int64_t r = 0; r < R; ++r) dst[r] = detail::quantise_unit(src[r], inv, steps);
        }
      }
      const Tensor& xin = direct ? x : xb;
      if (Tile::devices == 1 || reading) {
        if (reading) xb2.ensure(Shape{N, R});
        const float* in = xin.data();
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          double acc = 0;
          for (std::int64_t r = 0; r < R; ++r) {
            const float a = in[n * R + r];
            acc += a;
            if (reading) xb2[n * R + r] = a * a;
          }
          xsum[static_cast<std::size_t>(n)] = acc;
        }
      }

      for (std::int64_t cb = 0; cb < grid_cols_; ++cb) {
        const auto ti = static_cast<std::size_t>(rb * grid_cols_ + cb);
        const Tile& t = tiles_[ti];
        const auto o0 = t.col0(), C = t.cols();
        for (int s = 0; s < S; ++s) {
          const auto ts = ti * static_cast<std::size_t>(S) + static_cast<std::size_t>(s);
          matmul(xin, t.analog_matrix(s), c);
          if (reading) matmul(xb2, read_var_[ts], v);
          if (calibrating) {
            auto& dst = (*samples)[ts];
            const auto base = dst.size();
            dst.resize(base + static_cast<std::size_t>(N * C));
            for (std::int64_t i = 0; i < N * C; ++i) dst[base + static_cast<std::size_t>(i)] = std::abs(c[i]);
            continue;
          }
          const float place = static_cast<float>(grid_.place(s));
          const float range = adc ? adc_ranges_[ts] : 1.0f;
          const float inv_range = 1.0f / range;
          const auto stream_tail = (static_cast<std::uint64_t>(ts) + 1) << 32;
          const counter_rng read_rng(call_seed, static_cast<std::uint64_t>(rng_stream::read_noise) + stream_tail);
          const counter_rng out_rng(call_seed, static_cast<std::uint64_t>(rng_stream::output_noise) + stream_tail);
          const float sigma_out = static_cast<float>(P.output_noise);
          const float* cp = c.data();
          const float* vp = reading ? v.data() : nullptr;
          float* yp = y;
#pragma omp parallel for schedule(static)
          for (std::int64_t n = 0; n < N; ++n) {
            const float xs = xscale[static_cast<std::size_t>(n)] * place;
            for (std::int64_t j = 0; j < C; ++j) {
              const auto i = n * C + j;
              float val = cp[i];
              if (reading) {
                val += std::sqrt(std::max(vp[i], 0.0f)) *
                       static_cast<float>(read_rng.normal(static_cast<std::uint64_t>(i)));
              }
              if (out_noise) val += sigma_out * static_cast<float>(out_rng.normal(static_cast<std::uint64_t>(i)));
              if (adc) val = detail::quantise_unit(val, inv_range, adc_steps) * range;
              yp[n * O_ + o0 + j] += xs * factor[static_cast<std::size_t>(o0 + j)] * val;
            }
          }
        }
      }
      if constexpr (Tile::devices == 1) {
        if (!calibrating) {
          const float off = static_cast<float>(offset_code);
          float* yp = y;
#pragma omp parallel for schedule(static)
          for (std::int64_t n = 0; n < N; ++n) {
            const float a = xscale[static_cast<std::size_t>(n)] * off * static_cast<float>(xsum[static_cast<std::size_t>(n)]);
            for (std::int64_t o = 0; o < O_; ++o) yp[n * O_ + o] -= a * factor[static_cast<std::size_t>(o)];
          }
        }
      }
    }
  }

  device_config dev_{};
  level_grid grid_{};
  std::int64_t K_ = 0, O_ = 0, grid_rows_ = 0, grid_cols_ = 0;
  std::vector<Tile> tiles_;
  std::vector<float> scales_;
  periphery_config periphery_{};
  std::vector<float> adc_ranges_;
  std::vector<Tensor> read_var_;
  std::uint64_t writes_ = 0;
  mutable std::atomic<std::uint64_t> calls_{0};
};

}  // namespace rimc
