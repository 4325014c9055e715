#pragma once
/// \file
/// rimc::TiledArray: a [K x O] weight matrix partitioned over a grid of
/// crossbar tiles, with the weight scales, the effective-weight readback,
/// and the tile-exact matrix-vector product (DAC, per-tile ADC, output and
/// read noise, partial sums accumulated digitally).

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/crossbar/periphery.hpp>
#include <rimc/crossbar/tile.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/programming.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/kernels/linear.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <vector>

namespace rimc {

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
  /// The tile type the matrix is split over.
  using tile_type = Tile;

  /// Programs `w` ([K, O]) onto tiles with device `dev`; `seed` draws the programming noise.
  ///
  /// `row_group` keeps groups of that many consecutive rows on one tile (a
  /// convolution passes kh * kw, so each input channel's receptive field sits
  /// on one tile): each tile then uses floor(Rows / row_group) * row_group rows.
  TiledArray(const Tensor& w, const device_config& dev, std::uint64_t seed = 0,
             periphery_config periphery = periphery_config::ideal(), std::int64_t row_group = 1)
      : dev_(dev), grid_(make_level_grid<typename Tile::mapping_type, typename Tile::quantiser_type>(dev)) {
    if (w.rank() != 2 || w.dim(0) < 1 || w.dim(1) < 1) {
      throw shape_error(detail::concat("TiledArray: weights must be a non-empty [K, O] matrix, got ",
                                       w.shape().to_string()));
    }
    if (row_group < 1 || row_group > Tile::max_rows || w.dim(0) % row_group != 0) {
      throw shape_error(detail::concat("TiledArray: a row group of ", row_group, " rows must divide K = ", w.dim(0),
                                       " and fit a tile of ", Tile::max_rows, " rows"));
    }
    if (dev.faults.any() && !has_fault_model) {
      throw value_error(detail::concat("TiledArray: the tile type has no stuck-at fault model (no stuck_cells()), so "
                                       "device_config.faults must be none, got sa0 = ", dev.faults.sa0, ", sa1 = ",
                                       dev.faults.sa1));
    }
    K_ = w.dim(0);
    O_ = w.dim(1);
    row_group_ = row_group;
    const auto rows_per_tile = Tile::max_rows / row_group * row_group;
    grid_rows_ = (K_ + rows_per_tile - 1) / rows_per_tile;
    grid_cols_ = (O_ + Tile::max_cols - 1) / Tile::max_cols;
    for (std::int64_t i = 0; i < grid_rows_; ++i)
      for (std::int64_t j = 0; j < grid_cols_; ++j) {
        const auto r0 = i * rows_per_tile, c0 = j * Tile::max_cols;
        tiles_.emplace_back(r0, c0, std::min(rows_per_tile, K_ - r0), std::min(Tile::max_cols, O_ - c0), O_, grid_);
      }
    set_periphery(std::move(periphery));
    reprogram(w, seed);
  }

  /// Movable (tiles, scales and periphery state move over); not copyable.
  ///@{
  TiledArray(TiledArray&& o) noexcept { *this = std::move(o); }
  TiledArray& operator=(TiledArray&& o) noexcept {
    dev_ = o.dev_;
    grid_ = o.grid_;
    K_ = o.K_;
    O_ = o.O_;
    grid_rows_ = o.grid_rows_;
    row_group_ = o.row_group_;
    grid_cols_ = o.grid_cols_;
    tiles_ = std::move(o.tiles_);
    scales_ = std::move(o.scales_);
    periphery_ = std::move(o.periphery_);
    adc_ranges_ = std::move(o.adc_ranges_);
    adc_to_steps_ = std::move(o.adc_to_steps_);
    adc_lsb_ = std::move(o.adc_lsb_);
    adc_offset_ = std::move(o.adc_offset_);
    read_var_ = std::move(o.read_var_);
    dac_calibrated_ = o.dac_calibrated_;
    writes_ = o.writes_;
    calls_.store(o.calls_.load());
    return *this;
  }
  ///@}

  [[nodiscard]] std::int64_t rows() const noexcept { return K_; }  ///< K (inputs)
  [[nodiscard]] std::int64_t cols() const noexcept { return O_; }  ///< O (outputs)
  /// Tiles down the matrix: ceil(K / rows per tile).
  [[nodiscard]] std::int64_t tile_grid_rows() const noexcept { return grid_rows_; }
  /// Tiles across the matrix: ceil(O / Cols).
  [[nodiscard]] std::int64_t tile_grid_cols() const noexcept { return grid_cols_; }
  /// Consecutive rows kept on one tile (kh * kw for a convolution, else 1).
  [[nodiscard]] std::int64_t row_group() const noexcept { return row_group_; }
  /// Tile (i, j) of the grid (std::out_of_range outside it).
  [[nodiscard]] const Tile& tile(std::int64_t i, std::int64_t j) const {
    return tiles_.at(static_cast<std::size_t>(i * grid_cols_ + j));
  }
  /// All tiles, row-major over the grid.
  [[nodiscard]] const std::vector<Tile>& tiles() const noexcept { return tiles_; }
  /// The device the array was programmed with.
  [[nodiscard]] const device_config& device() const noexcept { return dev_; }
  /// Conductance levels and code layout of every cell.
  [[nodiscard]] const level_grid& grid() const noexcept { return grid_; }
  /// Weight scale of each column (max |w| of the column, or of the layer), weight units.
  [[nodiscard]] const std::vector<float>& scales() const noexcept { return scales_; }
  /// Cell programming events since construction (drift and reads never add any).
  [[nodiscard]] std::uint64_t rram_writes() const noexcept { return writes_; }
  /// Stuck cells over all tiles (none for a tile type without a fault model).
  [[nodiscard]] fault_count stuck_cells() const noexcept {
    fault_count n;
    if constexpr (has_fault_model) {
      for (const auto& t : tiles_) n += t.stuck_cells();
    }
    return n;
  }

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

  /// Sets every cell to `model` at time / level `when` from its programmed state.
  template <drift_model M>
  void drift_to(const M& model, typename M::argument_type when, std::uint64_t seed) {
    model.validate(when);
    for (auto& t : tiles_) t.drift_to(model, when, seed);
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

  /// DAC, ADC and noise settings.
  [[nodiscard]] const periphery_config& periphery() const noexcept { return periphery_; }

  /// Replaces the periphery (no RRAM write). A fixed ADC range applies at
  /// once; a percentile ADC or a calibrated DAC needs `calibrate_adc` before the next product.
  /// New wires recompute every tile's IR drop (and so the effective weights).
  void set_periphery(periphery_config p) {
    p.validate();
    if (!p.wires.is_ideal() && !has_wire_model) {
      throw value_error(detail::concat("TiledArray: the tile type has no IR-drop model (no set_wires()), so "
                                       "periphery_config.wires.segment_ohm must be 0, got ", p.wires.segment_ohm));
    }
    if constexpr (has_wire_model) {
      for (auto& t : tiles_) t.set_wires(p.wires);
    }
    periphery_ = std::move(p);
    dac_calibrated_ = false;
    adc_ranges_.clear();
    adc_to_steps_.clear();
    adc_lsb_.clear();
    adc_offset_.clear();
    if (periphery_.adc) {
      // Where the ranges of (tile, slice) ts start: one range each, or one per column.
      std::size_t n = 0;
      for (std::size_t ti = 0; ti < tiles_.size(); ++ti)
        for (int s = 0; s < grid_.slices; ++s) {
          adc_offset_.push_back(n);
          n += per_column_adc() ? static_cast<std::size_t>(tiles_[ti].cols()) : 1;
        }
      adc_offset_.push_back(n);
      if (periphery_.adc->mode == adc_range_mode::fixed) {
        set_adc_ranges(std::vector<float>(n, static_cast<float>(periphery_.adc->range)));
      }
    }
    refresh_read_variance();
  }

  /// The per-read variance matrix of tile ti, slice s (see Tile::read_variance;
  /// empty without read noise).
  [[nodiscard]] const Tensor& read_variance(std::size_t ti, int s) const {
    static const Tensor none;
    return read_var_.empty() ? none : read_var_.at(ti * static_cast<std::size_t>(grid_.slices) + static_cast<std::size_t>(s));
  }

  /// ADC full scales in normalised current units (empty when not set): one
  /// per (tile, slice), row-major over the tiles, or with a per-column ADC
  /// one per column of each (tile, slice) in turn (see adc_range).
  [[nodiscard]] const std::vector<float>& adc_ranges() const noexcept { return adc_ranges_; }
  /// The ADC range that column j of tile ti, slice s reads with (j ignored without per-column ranges).
  [[nodiscard]] float adc_range(std::size_t ti, int s, std::int64_t j) const {
    const auto ts = ti * static_cast<std::size_t>(grid_.slices) + static_cast<std::size_t>(s);
    return adc_ranges_.at(adc_offset_.at(ts) + (per_column_adc() ? static_cast<std::size_t>(j) : 0));
  }

  /// Calibrates the periphery on the reference inputs `x` ([N, K]): first a
  /// calibrated DAC's range (dac_scaling::calibrated: the configured
  /// percentile of |x| over every element), then each range of a percentile
  /// ADC (per tile and slice, or per column: the percentile of |column
  /// current| through that DAC, without noise, times the headroom).
  /// With range_update::widen a range already set only grows (see
  /// range_update). Non-finite reference inputs are a value_error naming the
  /// element; nothing changes then.
  void calibrate_adc(const Tensor& x, range_update update = range_update::replace) {
    check_input(x);
    check_finite("TiledArray::calibrate_adc: reference inputs", x);
    calibrate_adc_rows(x.dim(0), row_copier(x), update);
  }

  /// calibrate_adc over `rows` input rows produced by `fill` (see mvm_rows).
  template <class Fill>
  void calibrate_adc_rows(std::int64_t rows, Fill&& fill, range_update update = range_update::replace) {
    if (!periphery_.adc && !(periphery_.dac && periphery_.dac->scaling == dac_scaling::calibrated)) {
      throw value_error("TiledArray::calibrate_adc: the periphery has no ADC and no calibrated DAC");
    }
    const auto chunk = chunk_rows();
    if (periphery_.dac && periphery_.dac->scaling == dac_scaling::calibrated) {
      std::vector<float> mags, block;
      mags.reserve(static_cast<std::size_t>(rows * K_));
      for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const auto r1 = std::min(rows, r0 + chunk);
        block.resize(static_cast<std::size_t>((r1 - r0) * K_));
        fill(r0, r1, block.data());
        for (const float v : block) mags.push_back(std::abs(v));
      }
      const double estimate = percentile_of(mags, periphery_.dac->percentile);
      periphery_.dac->range =
          update == range_update::widen && dac_calibrated_ ? std::max(periphery_.dac->range, estimate) : estimate;
      dac_calibrated_ = true;
    }
    if (!periphery_.adc) return;
    std::vector<std::vector<float>> samples(adc_offset_.back());
    const auto plan = make_plan(0);
    for (std::int64_t r0 = 0; r0 < rows; r0 += chunk) {
      run_chunk(plan, r0, std::min(rows, r0 + chunk), fill, nullptr, &samples);
    }
    const double pct = periphery_.adc->percentile, headroom = periphery_.adc->headroom;
    std::vector<float> ranges(samples.size(), 0.0f);
    for (std::size_t i = 0; i < samples.size(); ++i) {
      if (samples[i].empty()) continue;
      ranges[i] = std::max(static_cast<float>(percentile_of(samples[i], pct) * headroom), std::numeric_limits<float>::min());
    }
    if (update == range_update::widen && adc_ranges_.size() == ranges.size()) {
      for (std::size_t i = 0; i < ranges.size(); ++i) ranges[i] = std::max(ranges[i], adc_ranges_[i]);
    }
    set_adc_ranges(std::move(ranges));
  }

  /// Whether the DAC's range is usable: not a calibrated DAC, or one calibrate_adc has set.
  [[nodiscard]] bool dac_ready() const noexcept {
    return !periphery_.dac || periphery_.dac->scaling != dac_scaling::calibrated || dac_calibrated_;
  }
  /// Throws value_error unless the periphery can compute: a percentile ADC
  /// has its ranges and a calibrated DAC its range (calibrate_adc).
  void check_calibrated() const {
    if (periphery_.adc && adc_ranges_.empty()) {
      throw value_error(
          "TiledArray: the ADC range is not calibrated (adc_range_mode::percentile): call calibrate_adc first");
    }
    if (!dac_ready()) {
      throw value_error("TiledArray: the DAC range is not calibrated (dac_scaling::calibrated): call calibrate_adc first");
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
    mvm_rows(x.dim(0), row_copier(x), y, [](std::int64_t, std::int64_t, float*) {});
  }
  /// \overload
  [[nodiscard]] Tensor mvm(const Tensor& x) const {
    Tensor y;
    mvm(x, y);
    return y;
  }

  /// The tile-exact product over `rows` input vectors produced on demand:
  /// `fill(r0, r1, dst)` writes input rows [r0, r1) as a row-major
  /// [r1 - r0, K] block to dst; outputs go to y (row-major [rows, O]), and
  /// `epilogue(r0, r1, y + r0 * O)` runs on each finished block of rows.
  ///
  /// Rows are processed in fixed-size chunks, in parallel over chunks: each
  /// chunk's inputs, column currents and outputs stay in cache, and every
  /// output is computed by one thread in a fixed order, so results do not
  /// depend on the thread count. Tile blocks are multiplied by rimc::matmul.
  template <class Fill, class Epilogue>
  void mvm_rows(std::int64_t rows, Fill&& fill, float* y, Epilogue&& epilogue) const {
    check_calibrated();
    const auto plan = make_plan(calls_.fetch_add(1));
    const auto chunk = chunk_rows();
    const auto chunks = (rows + chunk - 1) / chunk;
    std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t ch = 0; ch < chunks; ++ch) {
      try {
        const auto r0 = ch * chunk, r1 = std::min(rows, r0 + chunk);
        run_chunk(plan, r0, r1, fill, y, nullptr);
        epilogue(r0, r1, y + r0 * O_);
      } catch (...) {
#pragma omp critical(rimc_tiled_array_failure)
        if (!failure) failure = std::current_exception();
      }
    }
    if (failure) std::rethrow_exception(failure);
  }

  /// What follows the last partial sum of a column: y = y * gain + bias, then
  /// ReLU when `relu` (gain and bias per output column of the whole matrix; bias may be null).
  struct column_epilogue {
    const float* gain = nullptr;  ///< [O] digital column gain
    const float* bias = nullptr;  ///< [O] digital bias, or null
    bool relu = false;            ///< ReLU after the bias
    /// Applies the epilogue to columns [o0, o0 + C) of one output row.
    void apply(float* row, std::int64_t o0, std::int64_t C) const noexcept {
      if (bias) {
        for (std::int64_t o = o0; o < o0 + C; ++o) row[o] = row[o] * gain[o] + bias[o];
      } else {
        for (std::int64_t o = o0; o < o0 + C; ++o) row[o] = row[o] * gain[o] + 0.0f;
      }
      if (relu)
        for (std::int64_t o = o0; o < o0 + C; ++o) row[o] = std::max(row[o], 0.0f);
    }
  };

  /// Per-call constants of the tile-exact product (column factors, offset, noise seed).
  struct call_plan {
    std::vector<float> factor;  ///< per column: scale * lm1 / q_max (normalised current -> weight units)
    float offset_code = 0;      ///< offset mapping: code removed per unit input, in units of factor
    std::uint64_t seed = 0;     ///< noise seed of this call
    isa_tier tier = isa_tier::scalar;  ///< the vector tier of the periphery kernels (read before any parallel region)
  };

  /// The constants of one tile-exact product; each call draws fresh output / read noise.
  [[nodiscard]] call_plan begin_call() const { return make_plan(calls_.fetch_add(1)); }

  /// The periphery after tile `ti`, slice `s` for input rows [r0, r0 + M):
  /// `current` holds the normalised column currents (row-major [M, tile
  /// cols]), `variance` their read-noise variances (or null); each value gets
  /// read noise, output noise and the ADC, then y_rows[m * O + o] +=
  /// xscale_m * place(s) * factor_o * value, with xscale_m = xscale[m] or,
  /// when xscale is null, xscale_all. `y_rows` points at row r0 of y [rows, O];
  /// with `overwrite` the tile's columns are assigned instead of added to.
  /// With `finish` (this is the columns' last partial sum), each row's
  /// columns then become y * finish->gain + finish->bias, ReLU'd if asked,
  /// while they are in cache. With `approx`, `variance` holds approximate
  /// variances (see detail::variance_bound): where read_shortcut(plan) the
  /// exact ones are asked for only near a code's boundary, elsewhere for
  /// every current; the outputs are those of the exact variances, bit for bit.
  void accumulate(const call_plan& plan, std::size_t ti, int s, std::int64_t r0, std::int64_t M, const float* current,
                  const float* variance, const float* xscale, float xscale_all, float* y_rows,
                  bool overwrite = false, const column_epilogue* finish = nullptr,
                  const detail::variance_bound* approx = nullptr) const {
    const auto& P = periphery_;
    const Tile& t = tiles_[ti];
    const auto o0 = t.col0(), C = t.cols();
    const auto ts = ti * static_cast<std::size_t>(grid_.slices) + static_cast<std::size_t>(s);
    const bool reading = variance != nullptr, out_noise = P.output_noise > 0, adc = P.adc.has_value();
    const float adc_steps = adc ? static_cast<float>(P.adc->steps()) : 1.0f;
    const float place = static_cast<float>(grid_.place(s));
    const bool per_col = adc && per_column_adc();
    const std::size_t a0 = adc ? adc_offset_[ts] : 0;
    const float range = adc ? adc_ranges_[a0] : 1.0f, inv_range = 1.0f / range;
    // The ADC (clip to the range, round to the nearest step; one range per column or per tile)
    // and, after the columns' last partial sum, gain, bias and ReLU while the rows are in cache.
    detail::adc_readout out;
    out.factor = plan.factor.data() + o0;
    if (adc) {
      out.steps = adc_steps;
      if (per_col) {
        out.to_steps = adc_to_steps_.data() + a0;
        out.lsb = adc_lsb_.data() + a0;
      } else {
        out.lsb_all = range / adc_steps;
        out.to_all = inv_range * adc_steps;
      }
    }
    if (finish) {
      out.gain = finish->gain + o0;
      out.bias = finish->bias ? finish->bias + o0 : nullptr;
      out.relu = finish->relu;
    }
    if (!reading && !out_noise) {
      detail::adc_rows(out, current, M, C, xscale, xscale_all, place, y_rows + o0, O_, overwrite, plan.tier);
      return;
    }
    // The noisy currents, then the same read-out as noiseless ones, in chunks of about 16k
    // currents: the normals, the noisy currents and the chunk's outputs stay in L1/L2 between
    // the passes (every step is element-wise, so the chunks change nothing but the speed).
    // Element (row r0 + m, column j) draws normal number (r0 + m) * C + j of its (tile, slice)
    // stream: the block's draws are one range.
    thread_local std::vector<float> noisy, z;
    thread_local std::vector<std::uint32_t> undecided;
    const auto stream_tail = (static_cast<std::uint64_t>(ts) + 1) << 32;
    const auto read_stream = static_cast<std::uint64_t>(rng_stream::read_noise) + stream_tail;
    const bool shortcut = read_shortcut(plan) && M * C <= std::numeric_limits<std::uint32_t>::max();
    const std::int64_t chunk = std::max<std::int64_t>(1, (std::int64_t{1} << 14) / C);
    for (std::int64_t m0 = 0; m0 < M; m0 += chunk) {
      const auto mc = std::min(chunk, M - m0), n = mc * C;
      const auto first = static_cast<std::uint64_t>((r0 + m0) * C);
      const float* cur = current + m0 * C;
      const float* var = reading ? variance + m0 * C : nullptr;
      noisy.resize(static_cast<std::size_t>(n));
      z.resize(static_cast<std::size_t>(n));
      // The chunk's exact variances: approx->exact's indices count from the block's first current.
      const auto offset = static_cast<std::uint32_t>(m0 * C);
      std::optional<detail::variance_bound> part;
      if (approx && reading) {
        part.emplace(detail::variance_bound{approx->rel, approx->abs, {}});
        if (offset == 0) {
          part->exact = std::cref(approx->exact);
        } else {
          part->exact = [approx, offset](const std::uint32_t* idx, std::int64_t count, float* vals) {
            thread_local std::vector<std::uint32_t> shifted;
            shifted.resize(static_cast<std::size_t>(count));
            for (std::int64_t i = 0; i < count; ++i) shifted[static_cast<std::size_t>(i)] = idx[i] + offset;
            approx->exact(shifted.data(), count, vals);
          };
        }
      }
      if (shortcut) {
        // Only the codes matter: noisy_for_adc gives currents with the exact noisy currents' codes.
        undecided.resize(static_cast<std::size_t>(n));
        detail::noisy_for_adc(plan.seed, read_stream, first, out, cur, var, mc, C, noisy.data(), z.data(),
                              undecided.data(), plan.tier, part ? &*part : nullptr);
      } else {
        if (part) {  // every current's exact variance
          undecided.resize(static_cast<std::size_t>(n));
          var = detail::all_exact_variances(*part, n, undecided.data());
        }
        if (reading) {
          detail::normal_fill(plan.seed, read_stream, first, n, z.data(), plan.tier);
          detail::add_read_noise(cur, var, z.data(), n, noisy.data(), plan.tier);
        } else {
          std::copy_n(cur, n, noisy.data());
        }
        if (out_noise) {
          const float sigma_out = static_cast<float>(P.output_noise);
          detail::normal_fill(plan.seed, static_cast<std::uint64_t>(rng_stream::output_noise) + stream_tail, first, n,
                              z.data(), plan.tier);
          for (std::int64_t i = 0; i < n; ++i) noisy[static_cast<std::size_t>(i)] += sigma_out * z[static_cast<std::size_t>(i)];
        }
      }
      detail::adc_rows(out, noisy.data(), mc, C, xscale ? xscale + m0 : nullptr, xscale_all, place,
                       y_rows + m0 * O_ + o0, O_, overwrite, plan.tier);
    }
  }

  /// Whether accumulate reads noisy currents out through noisy_for_adc's
  /// shortcut (read noise before an ADC, no output noise, not
  /// draw_every_read, a vector tier): the calls that can use approximate
  /// variances to advantage.
  [[nodiscard]] bool read_shortcut(const call_plan& plan) const noexcept {
    const auto& P = periphery_;
    return !P.read.is_none() && P.adc && P.output_noise == 0 && !P.draw_every_read && plan.tier != isa_tier::scalar;
  }

  /// Input vectors per chunk of the tile-exact product (depends on the shape only).
  /// About 256 KiB of column currents and 512 KiB of inputs per chunk, so they stay in cache.
  [[nodiscard]] std::int64_t chunk_rows() const noexcept {
    const auto width = std::min<std::int64_t>(O_, Tile::max_cols);
    const auto rows = std::min(65536 / std::max<std::int64_t>(width, 1), 131072 / std::max<std::int64_t>(K_, 1));
    return std::clamp<std::int64_t>(rows / 16 * 16, 64, 2048);
  }

 private:
  static constexpr bool has_fault_model = requires(const Tile& t) {
    { t.stuck_cells() } -> std::convertible_to<fault_count>;
  };
  static constexpr bool has_wire_model = requires(Tile& t, const wire_config& w) { t.set_wires(w); };

  /// Normalised per-slice current to weight units: y_o += factor_o * place(s) * c.
  [[nodiscard]] double column_factor(std::int64_t o) const noexcept {
    return static_cast<double>(scales_[static_cast<std::size_t>(o)]) * grid_.lm1 / grid_.q_max;
  }

  /// The p-th percentile (p in (0, 100]) of `v` (non-empty; reordered), at least the least normal float.
  [[nodiscard]] static float percentile_of(std::vector<float>& v, double p) {
    auto idx = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
    idx = std::clamp<std::size_t>(idx, 1, v.size()) - 1;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(idx), v.end());
    return std::max(v[idx], std::numeric_limits<float>::min());
  }

  [[nodiscard]] bool per_column_adc() const noexcept {
    return periphery_.adc && periphery_.adc->mode == adc_range_mode::percentile && periphery_.adc->per_column;
  }

  /// Installs ADC ranges (laid out as adc_offset_ says) and, for a per-column
  /// ADC, their per-column step factors (the per-tile path derives them per call).
  void set_adc_ranges(std::vector<float> ranges) {
    adc_ranges_ = std::move(ranges);
    adc_to_steps_.clear();
    adc_lsb_.clear();
    if (!per_column_adc()) return;
    const float steps = static_cast<float>(periphery_.adc->steps());
    adc_to_steps_.resize(adc_ranges_.size());
    adc_lsb_.resize(adc_ranges_.size());
    for (std::size_t i = 0; i < adc_ranges_.size(); ++i) {
      adc_to_steps_[i] = 1.0f / adc_ranges_[i] * steps;
      adc_lsb_[i] = adc_ranges_[i] / steps;
    }
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

  /// A fill function copying rows of a row-major [N, K] tensor.
  [[nodiscard]] auto row_copier(const Tensor& x) const {
    return [p = x.data(), K = K_](std::int64_t r0, std::int64_t r1, float* dst) {
      std::copy(p + r0 * K, p + r1 * K, dst);
    };
  }

  [[nodiscard]] call_plan make_plan(std::uint64_t call) const {
    call_plan p;
    p.factor.resize(static_cast<std::size_t>(O_));
    for (std::int64_t o = 0; o < O_; ++o) p.factor[static_cast<std::size_t>(o)] = static_cast<float>(column_factor(o));
    // The code is sum_s radix^s sum_d c_d (G_sd - g_min) / range * lm1 - q_off: where the
    // coefficients c_d do not cancel (offset mapping), the g_min part and q_off come off
    // digitally as offset_code * sum(x~).
    if (grid_.has_digital_offset()) {
      double places = 0;
      for (int s = 0; s < grid_.slices; ++s) places += grid_.place(s);
      p.offset_code = static_cast<float>(grid_.coefficient_sum * places * grid_.g_min_us / grid_.range_us +
                                         grid_.q_off / grid_.lm1);
    }
    p.seed = detail::mix_seed(periphery_.noise_seed, call);
    // The caller's tier for the DAC codes, the noise and the ADC read-out (the same bits on every
    // tier), with or without noise: a noise-free periphery ran them on the portable tier before.
    p.tier = active_isa();
    return p;
  }

  /// Per-thread buffers of the chunked product, reused across calls.
  struct scratch_t {
    Tensor in, block, block_sq, current, variance;
    std::vector<float> xscale;
    std::vector<double> xsum;
  };

  /// One chunk of input rows [r0, r1): DAC, every tile and slice, ADC and
  /// noise, digital accumulation into y (or, with `samples`, collection of
  /// |current| for ADC calibration).
  template <class Fill>
  void run_chunk(const call_plan& plan, std::int64_t r0, std::int64_t r1, Fill& fill, float* y,
                 std::vector<std::vector<float>>* samples) const {
    thread_local scratch_t sc;
    const thread_count_guard single(1);  // each chunk is one thread's work; its matmuls run single-threaded
    const auto M = r1 - r0;
    const int S = grid_.slices;
    const auto& P = periphery_;
    const bool calibrating = samples != nullptr;
    const bool reading = !calibrating && !P.read.is_none();
    const bool offset = grid_.has_digital_offset();

    sc.in.ensure(Shape{M, K_});
    fill(r0, r1, sc.in.data());
    sc.xscale.assign(static_cast<std::size_t>(M), 1.0f);
    sc.xsum.assign(static_cast<std::size_t>(M), 0.0);
    float* yc = y ? y + r0 * O_ : nullptr;

    for (std::int64_t rb = 0; rb < grid_rows_; ++rb) {
      const Tile& first = tiles_[static_cast<std::size_t>(rb * grid_cols_)];
      const auto k0 = first.row0(), R = first.rows();
      const bool direct = !P.dac && grid_rows_ == 1;
      if (!direct) {
        sc.block.ensure(Shape{M, R});
        for (std::int64_t m = 0; m < M; ++m) {
          const float* src = sc.in.data() + m * K_ + k0;
          float* dst = sc.block.data() + m * R;
          if (!P.dac) {
            std::copy(src, src + R, dst);
            continue;
          }
          float scale = static_cast<float>(P.dac->range);
          if (P.dac->scaling == dac_scaling::per_vector_absmax) {
            scale = 0.0f;
            for (std::int64_t r = 0; r < R; ++r) scale = std::max(scale, std::abs(src[r]));
            if (scale == 0.0f) scale = 1.0f;
          }
          sc.xscale[static_cast<std::size_t>(m)] = scale;
          const float inv = 1.0f / scale, steps = static_cast<float>(P.dac->steps());
          detail::dac_codes(src, R, inv, steps, dst, nullptr, plan.tier);
        }
      }
      const Tensor& xin = direct ? sc.in : sc.block;
      if (offset || reading) {
        if (reading) sc.block_sq.ensure(Shape{M, R});
        for (std::int64_t m = 0; m < M; ++m) {
          const float* a = xin.data() + m * R;
          double acc = 0;
          for (std::int64_t r = 0; r < R; ++r) {
            acc += a[r];
            if (reading) sc.block_sq[m * R + r] = a[r] * a[r];
          }
          sc.xsum[static_cast<std::size_t>(m)] = acc;
        }
      }

      for (std::int64_t cb = 0; cb < grid_cols_; ++cb) {
        const auto ti = static_cast<std::size_t>(rb * grid_cols_ + cb);
        const Tile& t = tiles_[ti];
        const auto C = t.cols();
        for (int s = 0; s < S; ++s) {
          const auto ts = ti * static_cast<std::size_t>(S) + static_cast<std::size_t>(s);
          matmul(xin, t.analog_matrix(s), sc.current);
          const float* cp = sc.current.data();
          if (calibrating) {
            if (per_column_adc()) {
              for (std::int64_t j = 0; j < C; ++j) {
                auto& dst = (*samples)[adc_offset_[ts] + static_cast<std::size_t>(j)];
                for (std::int64_t m = 0; m < M; ++m) dst.push_back(std::abs(cp[m * C + j]));
              }
            } else {
              auto& dst = (*samples)[adc_offset_[ts]];
              for (std::int64_t i = 0; i < M * C; ++i) dst.push_back(std::abs(cp[i]));
            }
            continue;
          }
          if (reading) matmul(sc.block_sq, read_var_[ts], sc.variance);
          accumulate(plan, ti, s, r0, M, cp, reading ? sc.variance.data() : nullptr, sc.xscale.data(), 1.0f, yc,
                     rb == 0 && s == 0);
        }
      }
      if (offset && !calibrating) {
        for (std::int64_t m = 0; m < M; ++m) {
          const float a = sc.xscale[static_cast<std::size_t>(m)] * plan.offset_code *
                          static_cast<float>(sc.xsum[static_cast<std::size_t>(m)]);
          float* ym = yc + m * O_;
          for (std::int64_t o = 0; o < O_; ++o) ym[o] -= a * plan.factor[static_cast<std::size_t>(o)];
        }
      }
    }
  }

  device_config dev_{};
  level_grid grid_{};
  std::int64_t K_ = 0, O_ = 0, grid_rows_ = 0, grid_cols_ = 0, row_group_ = 1;
  std::vector<Tile> tiles_;
  std::vector<float> scales_;
  periphery_config periphery_{};
  std::vector<float> adc_ranges_, adc_to_steps_, adc_lsb_;
  std::vector<std::size_t> adc_offset_;  // first range of each (tile, slice), plus the total at the end
  std::vector<Tensor> read_var_;
  bool dac_calibrated_ = false;  // a calibrated DAC's range was set by calibrate_adc
  std::uint64_t writes_ = 0;
  mutable std::atomic<std::uint64_t> calls_{0};
};

}  // namespace rimc
