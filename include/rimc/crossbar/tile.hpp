#pragma once
/// \file
/// rimc::CrossbarTile: one fixed-size RRAM crossbar holding a block of a
/// weight matrix as conductances (programmed and current, after drift), and
/// the float matrices its columns compute with; and the crossbar_tile
/// concept, which any tile type TiledArray can run satisfies (a user's own
/// tile included). How weights split over the devices of a cell is the
/// mapping policy's business (device/programming.hpp): the tile only calls it.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/crossbar/assignment.hpp>
#include <rimc/crossbar/ir_drop.hpp>
#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>
#include <rimc/device/programming.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
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
  /// Storage type of the conductances (uS).
  using scalar_type = Scalar;
  /// How weights split over the devices of a cell (device/programming.hpp).
  using mapping_type = Mapping;
  /// How codes round to cell levels (device/programming.hpp).
  using quantiser_type = Quantiser;
  static constexpr std::int64_t max_rows = Rows;  ///< word lines (inputs)
  static constexpr std::int64_t max_cols = Cols;  ///< bit lines (outputs)
  /// Cells per slice of a weight (the mapping's devices).
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

  /// First matrix row (input) on this tile.
  [[nodiscard]] std::int64_t row0() const noexcept { return row0_; }
  /// First matrix column (output) on this tile.
  [[nodiscard]] std::int64_t col0() const noexcept { return col0_; }
  /// Rows (inputs) in use, 1..Rows.
  [[nodiscard]] std::int64_t rows() const noexcept { return rows_; }
  /// Columns (outputs) in use, 1..Cols.
  [[nodiscard]] std::int64_t cols() const noexcept { return cols_; }
  /// Cells per weight and device (digits of each code).
  [[nodiscard]] int slices() const noexcept { return grid_.slices; }
  /// Conductance levels and code layout of every cell.
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

  /// What cell (r, c, s, d) is stuck at (cell_fault::none for a working cell).
  [[nodiscard]] cell_fault fault(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return fault_.empty() ? cell_fault::none : static_cast<cell_fault>(fault_[local(r, c, s, d)]);
  }
  /// Cells stuck at g_min and at g_max.
  [[nodiscard]] fault_count stuck_cells() const noexcept { return faults_; }

  /// The physical word line of each of the block's rows (row r of the block
  /// sits on word line word_lines()[r]); empty when the rows sit in order,
  /// which they do unless device_config::fault_aware_row_order placed them.
  /// Cell (r, c, s, d) of fault() and every other accessor is the block's
  /// row r wherever it sits; IR drop follows the physical order.
  [[nodiscard]] const std::vector<std::int64_t>& word_lines() const noexcept { return word_line_; }

  /// The wires of this crossbar (ideal by default).
  [[nodiscard]] const wire_config& wires() const noexcept { return wires_; }
  /// Sets the wire resistance and IR-drop model; the matrices the tile
  /// computes with (and the weights it applies) then include IR drop.
  void set_wires(const wire_config& w) {
    w.validate();
    if (w == wires_) return;
    wires_ = w;
    if (programmed_once_) rebuild();
  }
  /// Effective conductance of cell (r, c, s, d) under IR drop, uS: what the
  /// cell contributes to its column per unit input (the conductance itself
  /// with ideal wires).
  [[nodiscard]] Scalar effective_us(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return source()[local(r, c, s, d)];
  }

  /// Programs the block from the full [K x O] row-major matrix `w` with
  /// per-column scales `scales[o]` (max |w| of the column, or of the layer);
  /// returns the number of cells written (stuck ones included: the write is
  /// attempted). Drift is reset.
  ///
  /// The stuck-at fault map is drawn from `dev.faults` and `seed` at the
  /// tile's first programming and kept for its lifetime: a chip's defects do
  /// not move when it is rewritten. Stuck cells read g_min (SA0) or g_max (SA1);
  /// with `dev.fault_aware_programming` the working devices of a cell with a
  /// stuck one are retargeted to compensate it. With
  /// `dev.fault_aware_row_order` the block's rows are placed on the word
  /// lines, at the first programming and for good, by the assignment that
  /// minimises the weight error the stuck devices leave (word_lines()).
  std::uint64_t program(const float* w, const float* scales, const device_config& dev, std::uint64_t seed) {
    if (!programmed_once_) {
      draw_fault_map(dev.faults, seed);
      if (dev.fault_aware_row_order && !fault_.empty()) order_rows(w, scales, dev.fault_aware_programming);
    }
    drift_floor_us_ = dev.drift_floor_us();
    drift_ceiling_us_ = dev.drift_ceiling_us();
    const auto S = grid_.slices;
    const std::vector<double> tgt = targets(w, scales);
    const bool aware = dev.fault_aware_programming && !fault_.empty();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r) {
      std::array<double, devices> target{};
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s) {
          for (int d = 0; d < devices; ++d)
            target[static_cast<std::size_t>(d)] = tgt[static_cast<std::size_t>(((r * cols_ + c) * S + s) * devices + d)];
          if (aware) compensate_stuck(r, c, s, target);
          for (int d = 0; d < devices; ++d) {
            const auto i = local(r, c, s, d);
            programmed_[i] = static_cast<Scalar>(
                fault_.empty() || fault_[i] == 0
                    ? program_cell(target[static_cast<std::size_t>(d)], dev, seed, global_cell(r, c, s, d))
                    : stuck_value(static_cast<cell_fault>(fault_[i])));
          }
        }
    }
    reset_drift();
    return static_cast<std::uint64_t>(cells());
  }

  /// Sets every cell to model(programmed, when, seed, cell), clamped to the
  /// bounds of the device it was programmed with (device_config::bounds);
  /// stuck cells keep their stuck value.
  template <drift_model M>
  void drift_to(const M& model, typename M::argument_type when, std::uint64_t seed) {
    model.validate(when);
    const double lo = drift_floor_us_, hi = drift_ceiling_us_;
    const auto S = grid_.slices;
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d) {
            const auto i = local(r, c, s, d);
            if (!fault_.empty() && fault_[i] != 0) {
              current_[i] = programmed_[i];
              continue;
            }
            current_[i] = static_cast<Scalar>(
                std::clamp(model(static_cast<double>(programmed_[i]), when, seed, global_cell(r, c, s, d)),
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
  /// conductances, through the wires' IR drop) into the full [K x O]
  /// row-major matrix `out`.
  void read_weights(const float* scales, float* out) const {
    const auto S = grid_.slices;
    const std::vector<Scalar>& src = source();
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c) {
        double code = 0;
        for (int s = 0; s < S; ++s) {
          double v = Mapping::coefficients[0] * grid_.digit(src[local(r, c, s, 0)]);
          for (int d = 1; d < devices; ++d)
            v += Mapping::coefficients[static_cast<std::size_t>(d)] * grid_.digit(src[local(r, c, s, d)]);
          code += grid_.place(s) * v;
        }
        if (grid_.q_off != 0) code -= grid_.q_off;
        const auto o = col0_ + c;
        out[(row0_ + r) * matrix_cols_ + o] = static_cast<float>(scales[o] * code / grid_.q_max);
      }
  }

  /// The [rows x cols] matrix slice `s` computes with: sum_d coefficient_d G_d /
  /// range ((G+ - G-) / range for a differential pair, G / range for offset),
  /// from the current conductances (their IR-drop effective values, see set_wires).
  [[nodiscard]] const Tensor& analog_matrix(int s) const noexcept {
    return analog_[static_cast<std::size_t>(s)];
  }

  /// The [rows x cols] per-read variance of slice s's column currents per
  /// unit input squared: sum over devices of (coefficient sigma(G) / range)^2,
  /// with G the cell's own conductance (IR drop does not scale the noise).
  [[nodiscard]] Tensor read_variance(const read_noise& noise, int s) const {
    Tensor v(Shape{rows_, cols_});
    const double inv = 1.0 / grid_.range_us;
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c) {
        double acc = 0;
        for (int d = 0; d < devices; ++d) {
          const double sg = noise.sigma_us(current_[local(r, c, s, d)]) * inv;
          const double k = Mapping::coefficients[static_cast<std::size_t>(d)];
          acc += (k * k) * (sg * sg);
        }
        v[r * cols_ + c] = static_cast<float>(acc);
      }
    return v;
  }

 private:
  [[nodiscard]] std::size_t local(std::int64_t r, std::int64_t c, int s, int d) const noexcept {
    return static_cast<std::size_t>(((s * devices + d) * rows_ + r) * cols_ + c);
  }

  /// Fault-aware programming of slice s of weight (r, c): with a stuck
  /// device in the cell, the working ones are retargeted (in device order,
  /// each to the level that brings sum_d coefficient_d G_d closest to its
  /// fault-free value, within [g_min, g_max]) so the stuck one is compensated
  /// as far as the levels allow.
  void compensate_stuck(std::int64_t r, std::int64_t c, int s, std::array<double, devices>& target) const noexcept {
    std::array<std::uint8_t, devices> f{};
    for (int d = 0; d < devices; ++d) f[static_cast<std::size_t>(d)] = fault_[local(r, c, s, d)];
    compensate(f, target);
  }

  /// compensate_stuck for a cell whose devices have the faults `fault`.
  void compensate(const std::array<std::uint8_t, devices>& fault, std::array<double, devices>& target) const noexcept {
    bool any = false;
    for (int d = 0; d < devices; ++d) any = any || fault[static_cast<std::size_t>(d)] != 0;
    if (!any) return;
    double want = 0;
    for (int d = 0; d < devices; ++d)
      want += Mapping::coefficients[static_cast<std::size_t>(d)] * target[static_cast<std::size_t>(d)];
    for (int d = 0; d < devices; ++d) {
      const auto dd = static_cast<std::size_t>(d);
      if (fault[dd] != 0) target[dd] = stuck_value(static_cast<cell_fault>(fault[dd]));
    }
    for (int f = 0; f < devices; ++f) {
      const auto ff = static_cast<std::size_t>(f);
      if (fault[ff] != 0 || Mapping::coefficients[ff] == 0) continue;
      double rest = 0;
      for (int d = 0; d < devices; ++d)
        if (d != f) rest += Mapping::coefficients[static_cast<std::size_t>(d)] * target[static_cast<std::size_t>(d)];
      const double g = (want - rest) / Mapping::coefficients[ff];
      double digit = std::clamp(grid_.digit(g), 0.0, grid_.lm1);
      if constexpr (Quantiser::discrete) digit = std::round(digit);
      target[ff] = grid_.conductance_us(digit);
    }
  }

  /// The per-device target conductances of every weight of the block,
  /// [rows][cols][slices][devices]: w / scale split by the mapping, each
  /// device's code split into slice digits, each digit's level.
  [[nodiscard]] std::vector<double> targets(const float* w, const float* scales) const {
    const auto S = grid_.slices;
    const mapping_codes codes{grid_.q_max, grid_.q_off};
    const auto quantise = [](double v) { return Quantiser::quantise(v); };
    std::vector<double> out(static_cast<std::size_t>(rows_ * cols_ * S * devices));
#pragma omp parallel for schedule(static)
    for (std::int64_t r = 0; r < rows_; ++r) {
      std::array<std::array<double, 4>, devices> digits{};
      std::array<double, devices> u{};
      for (std::int64_t c = 0; c < cols_; ++c) {
        const auto o = col0_ + c;
        const double scale = scales[o];
        const double x = scale > 0 ? std::clamp(w[(row0_ + r) * matrix_cols_ + o] / scale, -1.0, 1.0) : 0.0;
        Mapping::split(x, codes, quantise, std::span<double, devices>(u));
        for (int d = 0; d < devices; ++d) {
          const auto dd = static_cast<std::size_t>(d);
          grid_.split(u[dd], std::span<double>(digits[dd].data(), static_cast<std::size_t>(S)));
        }
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d)
            out[static_cast<std::size_t>(((r * cols_ + c) * S + s) * devices + d)] =
                grid_.conductance_us(digits[static_cast<std::size_t>(d)][static_cast<std::size_t>(s)]);
      }
    }
    return out;
  }

  /// Fault-aware row order: the cost of placing the block's row i on word
  /// line p is the squared weight error, summed over the stuck cells of word
  /// line p, that programming row i there leaves (compensated with
  /// `aware`), each in weight units (column scale times slice place); the
  /// minimum-cost assignment places the rows, and the fault map (drawn per
  /// word line) is re-indexed by row.
  void order_rows(const float* w, const float* scales, bool aware) {
    const auto S = grid_.slices;
    const auto R = rows_;
    const std::vector<double> tgt = targets(w, scales);
    // The stuck (column, slice) cells of each word line.
    std::vector<std::vector<std::int64_t>> stuck(static_cast<std::size_t>(R));
    for (std::int64_t p = 0; p < R; ++p)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s) {
          bool any = false;
          for (int d = 0; d < devices; ++d) any = any || fault_[local(p, c, s, d)] != 0;
          if (any) stuck[static_cast<std::size_t>(p)].push_back(c * S + s);
        }
    std::vector<double> cost(static_cast<std::size_t>(R * R), 0.0);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < R; ++i) {
      std::array<double, devices> want{}, got{};
      std::array<std::uint8_t, devices> f{};
      for (std::int64_t p = 0; p < R; ++p) {
        double e2 = 0;
        for (const std::int64_t cs : stuck[static_cast<std::size_t>(p)]) {
          const auto c = cs / S;
          const auto s = static_cast<int>(cs % S);
          for (int d = 0; d < devices; ++d) {
            const auto dd = static_cast<std::size_t>(d);
            want[dd] = tgt[static_cast<std::size_t>(((i * cols_ + c) * S + s) * devices + d)];
            f[dd] = fault_[local(p, c, s, d)];
          }
          got = want;
          if (aware) {
            compensate(f, got);
          } else {
            for (int d = 0; d < devices; ++d) {
              const auto dd = static_cast<std::size_t>(d);
              if (f[dd] != 0) got[dd] = stuck_value(static_cast<cell_fault>(f[dd]));
            }
          }
          double e = 0;
          for (int d = 0; d < devices; ++d) {
            const auto dd = static_cast<std::size_t>(d);
            e += Mapping::coefficients[dd] * (grid_.digit(got[dd]) - grid_.digit(want[dd]));
          }
          e *= static_cast<double>(scales[col0_ + c]) * grid_.place(s);
          e2 += e * e;
        }
        cost[static_cast<std::size_t>(i * R + p)] = e2;
      }
    }
    word_line_ = detail::min_cost_assignment(cost, R);
    std::vector<std::uint8_t> by_row(fault_.size());
    for (std::int64_t r = 0; r < R; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d)
            by_row[local(r, c, s, d)] = fault_[local(word_line_[static_cast<std::size_t>(r)], c, s, d)];
    fault_ = std::move(by_row);
  }

  [[nodiscard]] Scalar stuck_value(cell_fault f) const noexcept {
    return static_cast<Scalar>(f == cell_fault::sa0 ? grid_.g_min_us : grid_.g_min_us + grid_.range_us);
  }

  void draw_fault_map(const stuck_at_faults& faults, std::uint64_t seed) {
    faults.validate();
    programmed_once_ = true;
    fault_.clear();
    word_line_.clear();
    faults_ = {};
    if (!faults.any()) return;
    fault_.assign(static_cast<std::size_t>(cells()), 0);
    const auto S = grid_.slices;
    std::uint64_t sa0 = 0, sa1 = 0;
#pragma omp parallel for schedule(static) reduction(+ : sa0, sa1)
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d) {
            const cell_fault f = faults.fault(seed, global_cell(r, c, s, d));
            fault_[local(r, c, s, d)] = static_cast<std::uint8_t>(f);
            sa0 += f == cell_fault::sa0 ? 1 : 0;
            sa1 += f == cell_fault::sa1 ? 1 : 0;
          }
    faults_ = {sa0, sa1};
  }

  /// The conductances the columns see: the IR-drop effective ones with resistive wires.
  [[nodiscard]] const std::vector<Scalar>& source() const noexcept {
    return effective_.empty() ? current_ : effective_;
  }

  /// The physical crossbar has `rows` word lines and cols * slices * devices
  /// bit lines, cell (c, s, d) of a row on bit line (c * slices + s) * devices + d.
  void apply_ir_drop() {
    effective_.clear();
    if (wires_.is_ideal()) return;
    const auto S = grid_.slices;
    const std::int64_t P = cols_ * S * devices;
    std::vector<double> g(static_cast<std::size_t>(rows_ * P));
    const auto phys = [&](std::int64_t r, std::int64_t c, int s, int d) {
      return static_cast<std::size_t>(r * P + (c * S + s) * devices + d);
    };
    const auto line = [&](std::int64_t r) { return word_line_.empty() ? r : word_line_[static_cast<std::size_t>(r)]; };
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d)
            g[phys(line(r), c, s, d)] = std::max(0.0, double(current_[local(r, c, s, d)]));
    const std::vector<double> ge = ir_drop_effective(wires_, g, rows_, P);
    effective_.resize(current_.size());
    for (std::int64_t r = 0; r < rows_; ++r)
      for (std::int64_t c = 0; c < cols_; ++c)
        for (int s = 0; s < S; ++s)
          for (int d = 0; d < devices; ++d)
            effective_[local(r, c, s, d)] = static_cast<Scalar>(ge[phys(line(r), c, s, d)]);
  }

  void rebuild() {
    apply_ir_drop();
    analog_.resize(static_cast<std::size_t>(grid_.slices));
    const std::vector<Scalar>& src = source();
    const double inv = 1.0 / grid_.range_us;
    for (int s = 0; s < grid_.slices; ++s) {
      Tensor& m = analog_[static_cast<std::size_t>(s)];
      m.ensure(Shape{rows_, cols_});
      for (std::int64_t r = 0; r < rows_; ++r)
        for (std::int64_t c = 0; c < cols_; ++c) {
          double g = Mapping::coefficients[0] * src[local(r, c, s, 0)];
          for (int d = 1; d < devices; ++d)
            g += Mapping::coefficients[static_cast<std::size_t>(d)] * src[local(r, c, s, d)];
          m[r * cols_ + c] = static_cast<float>(g * inv);
        }
    }
  }

  std::int64_t row0_ = 0, col0_ = 0, rows_ = 0, cols_ = 0, matrix_cols_ = 0;
  level_grid grid_{};
  std::vector<Scalar> programmed_, current_;
  std::vector<Scalar> effective_;  // IR-drop effective conductances, empty with ideal wires
  wire_config wires_{};
  std::vector<std::uint8_t> fault_;  // cell_fault per cell, empty when the device has no faults
  std::vector<std::int64_t> word_line_;  // physical word line of each row, empty: in order
  fault_count faults_{};
  bool programmed_once_ = false;
  double drift_floor_us_ = 0, drift_ceiling_us_ = std::numeric_limits<double>::infinity();
  std::vector<Tensor> analog_;
};

/// What TiledArray needs of a tile type: its size and policies, construction
/// at a block of the weight matrix, programming (counting cell writes), drift
/// to any drift model's time or level and back, the weights it applies, the
/// per-slice matrix its columns compute with and the per-read variance.
/// CrossbarTile is one; a user type (e.g. one wrapping CrossbarTile to model
/// faults) that provides these runs on every analog path.
template <class T>
concept crossbar_tile =
    std::default_initializable<T> && std::movable<T> && mapping_policy<typename T::mapping_type> &&
    quantiser_policy<typename T::quantiser_type> &&
    requires(T& t, const T& ct, std::int64_t i, const level_grid& g, const float* w, float* out,
             const device_config& dev, std::uint64_t seed, const read_noise& noise, int s) {
      { T::max_rows } -> std::convertible_to<std::int64_t>;
      { T::max_cols } -> std::convertible_to<std::int64_t>;
      T(i, i, i, i, i, g);
      { t.program(w, w, dev, seed) } -> std::same_as<std::uint64_t>;
      t.drift_to(relative_drift{}, drift_level{0.1}, seed);
      t.drift_to(log_time_drift{}, seconds{1.0}, seed);
      t.reset_drift();
      ct.read_weights(w, out);
      { ct.analog_matrix(s) } -> std::convertible_to<const Tensor&>;
      { ct.read_variance(noise, s) } -> std::convertible_to<Tensor>;
      { ct.rows() } -> std::convertible_to<std::int64_t>;
      { ct.cols() } -> std::convertible_to<std::int64_t>;
      { ct.row0() } -> std::convertible_to<std::int64_t>;
      { ct.col0() } -> std::convertible_to<std::int64_t>;
    };

static_assert(crossbar_tile<CrossbarTile<>>);

}  // namespace rimc
