#pragma once
/// \file
/// rimc::CrossbarTile: one fixed-size RRAM crossbar holding a block of a
/// weight matrix as conductances (programmed and current, after drift), and
/// the float matrices its columns compute with.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/programming.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <vector>

namespace rimc {

/// One crossbar of at most Rows x Cols weights (rows = inputs, columns = outputs).
///
/// The tile stores every cell's programmed and current conductance (uS, as
/// `Scalar`), `slices * Mapping::devices` cells per weight. It occupies rows
/// [row0, row0 + rows) and columns [col0, col0 + cols) of a [K x O] weight
/// matrix; the global index of cell (k, o, slice s, device d) is
/// ((k * O + o) * slices + s) * devices + d, so every stochastic effect is
/// the same whatever the tile size and thread count.
template <std::floating_point Scalar = float, std::int64_t Rows = 256, std::int64_t Cols = 256,
          mapping_policy Mapping = differential_mapping, quantiser_policy Quantiser = nearest_level>
class CrossbarTile {
  static_assert(Rows >= 1 && Cols >= 1, "CrossbarTile: the geometry must be at least 1 x 1");

 public:
  using scalar_type = Scalar;
  using mapping_type = Mapping;
  using quantiser_type = Quantiser;
  static constexpr std::int64_t max_rows = Rows;  ///< word lines (inputs)
  static constexpr std::int64_t max_cols = Cols;  ///< bit lines (outputs)
  static constexpr int devices = Mapping::devices;

  CrossbarTile() = default;

  /// A tile at rows [row0, row0 + rows), columns [col0, col0 + cols) of a matrix with `matrix_cols` columns.
  CrossbarTile(std::int64_t row0, std::int64_t col0, std::int64_t rows, std::int64_t cols,
               std::int64_t matrix_cols, const level_grid& grid)
      : row0_(row0), col0_(col0), rows_(rows), cols_(cols), matrix_cols_(matrix_cols), grid_(grid) {
    if (rows < 1 || rows > Rows || cols < 1 || cols > Cols) {
      throw shape_error(detail::concat("CrossbarTile: block ", rows, " x ", cols, " does not fit a ", Rows, " x ",
                                       Cols, " tile"));
    }
    const auto n = static_cast<std::size_t>(cells());
    programmed_.assign(n, static_cast<Scalar>(grid.g_min_us));
    current_ = programmed_;
  }

  [[nodiscard]] std::int64_t row0() const noexcept { return row0_; }
  [[nodiscard]] std::int64_t col0() const noexcept { return col0_; }
  [[nodiscard]] std::int64_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::int64_t cols() const noexcept { return cols_; }
  [[nodiscard]] int slices() const noexcept { return grid_.slices; }
  [[nodiscard]] const level_grid& grid() const noexcept { return grid_; }
  /// Cells in use: rows * cols * slices * devices.
  [[nodiscard]] std::int64_t cells() const noexcept { return rows_ * cols_ * grid_.slices * devices; }

  /// Global index of cell (r, c, s, d) of this tile.
  [[nodiscard]] std::uint64_t global_cell(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    const auto k = row0_ + r, o = col0_ + c;
    return static_cast<std::uint64_t>(((k * matrix_cols_ + o) * grid_.slices + s) * devices + d);
  }
  /// Programmed conductance of cell (r, c, s, d), uS.
  [[nodiscard]] Scalar programmed_us(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return programmed_[local(r, c, s, d)];
  }
  /// Current (drifted) conductance of cell (r, c, s, d), uS.
  [[nodiscard]] Scalar conductance_us(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return current_[local(r, c, s, d)];
  }

  /// Programs the block from the full [K x O] row-major matrix `w` with
  /// per-column scales `scales[o]` (max |w| of the column, or of the layer);
  /// returns the number of cells written. Drift is reset.
  std::uint64_t program(const float* w, const float* scales, const device_config& dev, std::uint64_t seed) {
    const auto S = grid_.slices;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r) {
      std::array<double, 4> digits{};
      const std::span<double> dg(digits.data(), static_cast<std::size_t>(S));
      for (std::int64_t c = 0; c < cols_; ++c) {
        const auto k = row0_ + r, o = col0_ + c;
        const double scale = scales[o];
        const double wv = w[k * matrix_cols_ + o];
        const double q = scale > 0 ? Quantiser::quantise(std::clamp(wv / scale, -1.0, 1.0) * grid_.q_max) : 0.0;
        for (int d = 0; d < devices; ++d) {
          double u = 0;
          if constexpr (devices == 2) {
            u = (d == 0) == (q > 0) ? std::abs(q) : 0.0;
          } else {
            u = q + grid_.q_off;
          }
          grid_.split(u, dg);
          for (int s = 0; s < S; ++s) {
            programmed_[local(r, c, s, d)] = static_cast<Scalar>(
                program_cell(grid_.conductance_us(digits[static_cast<std::size_t>(s)]), dev, seed,
                             global_cell(r, c, s, d)));
          }
        }
      }
    }
    reset_drift();
    return static_cast<std::uint64_t>(cells());
  }

  /// Sets every cell to model(programmed, t_or_level, seed, cell), clamped to the device range.
  template <drift_model M>
  void drift_to(const M& model, double t_or_level, std::uint64_t seed) {
    model.validate(t_or_level);
    const double lo = grid_.g_min_us, hi = grid_.g_min_us + grid_.range_us;
    const auto S = grid_.slices;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d) {
            const auto i = local(r, c, s, d);
            current_[i] = static_cast<Scalar>(
                std::clamp(model(static_cast<double>(programmed_[i]), t_or_level, seed, global_cell(r, c, s, d)),
                           lo, hi));
          }
    rebuild();
  }

  /// Returns every cell to its programmed conductance.
  void reset_drift() {
    current_ = programmed_;
    rebuild();
  }

  /// Writes the weights the tile applies (read back from the current
  /// conductances) into the full [K x O] row-major matrix `out`.
  void read_weights(const float* scales, float* out) const {
    const auto S = grid_.slices;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c) {
        double code = 0;
        for (int s = 0; s < S; ++s) {
          double v = grid_.digit(current_[local(r, c, s, 0)]);
          if constexpr (devices == 2) v -= grid_.digit(current_[local(r, c, s, 1)]);
          code += grid_.place(s) * v;
        }
        if constexpr (devices == 1) code -= grid_.q_off;
        const auto o = col0_ + c;
        out[(row0_ + r) * matrix_cols_ + o] = static_cast<float>(scales[o] * code / grid_.q_max);
      }
  }

  /// The [rows x cols] matrix slice `s` computes with: (G+ - G-) / range
  /// (differential) or G / range (offset), from the current conductances.
  [[nodiscard]] const Tensor& analog_matrix(int s) const noexcept {
    return analog_[static_cast<std::size_t>(s)];
  }

  /// The [rows x cols] per-read variance of slice s's column currents per
  /// unit input squared: sum over devices of (sigma(G) / range)^2.
  [[nodiscard]] Tensor read_variance(const read_noise& noise, int s) const {
    Tensor v(Shape{rows_, cols_});
    const double inv = 1.0 / grid_.range_us;
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c) {
        double acc = 0;
        for (int d = 0; d < devices; ++d) {
          const double sg = noise.sigma_us(current_[local(r, c, s, d)]) * inv;
          acc += sg * sg;
        }
        v[r * cols_ + c] = static_cast<float>(acc);
      }
    return v;
  }

 private:
  [[nodiscard]] std::size_t local(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return static_cast<std::size_t>(((s * devices + d) * rows_ + r) * cols_ + c);
  }

  void rebuild() {
    analog_.resize(static_cast<std::size_t>(grid_.slices));
    const double inv = 1.0 / grid_.range_us;
    for (int s = 0; s < grid_.slices; ++s) {
      Tensor& m = analog_[static_cast<std::size_t>(s)];
      m.ensure(Shape{rows_, cols_});
      for (std::int64_t r = 0; r < rows_; ++r)
        for (std::int64_t c = 0; c < cols_; ++c) {
          double g = current_[local(r, c, s, 0)];
          if constexpr (devices == 2) g -= current_[local(r, c, s, 1)];
          m[r * cols_ + c] = static_cast<float>(g * inv);
        }
    }
  }

  std::int64_t row0_ = 0, col0_ = 0, rows_ = 0, cols_ = 0, matrix_cols_ = 0;
  level_grid grid_{};
  std::vector<Scalar> programmed_, current_;
  std::vector<Tensor> analog_;
};

}  // namespace rimc
