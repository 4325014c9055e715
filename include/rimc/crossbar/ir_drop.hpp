#pragma once
/// \file
/// IR drop: the resistance of a crossbar's word lines (rows) and bit lines
/// (columns). Each cell then sees less than its row's input voltage and more
/// than the virtual ground of its column, by amounts that depend on every
/// other cell's current, i.e. on the input vector (docs/formulas.md, sec. 5).
///
/// The resistive network is linear, so its column currents are exactly
/// I_p = sum_i geff_ip v_i for an effective conductance matrix geff that
/// depends on the conductances and the wire resistance only. rimc computes
/// geff once per programming or drift state, either exactly (nodal analysis,
/// a sparse Cholesky solve with Eigen, one right-hand side per row) or by a
/// first-order model in the wire resistance that costs O(R P) per tile,
/// and folds it into the matrices the tile computes with: IR drop then costs
/// nothing per product, and the input-dependent error e(v) = (geff - g)^T v
/// is exactly what the array produces.
///
/// Geometry of one physical crossbar of R rows x P columns (conductances
/// g [R, P] in uS, row-major): row i is driven at voltage v_i from its left
/// end and reaches cell (i, p) through p + 1 wire segments; column p is read
/// by a virtual-ground amplifier below its last row, cell (i, p) reaching it
/// through R - i segments. Every segment has resistance `segment_ohm`.

#include <rimc/core/error.hpp>
#include <rimc/device/device_config.hpp>

#include <Eigen/Core>
#include <Eigen/SparseCholesky>
#include <Eigen/SparseCore>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace rimc {

/// How IR drop is computed.
enum class ir_drop_model : std::uint8_t {
  fast,   ///< first order in the wire resistance (ir_drop_fast), O(R P) per tile: the default
  exact,  ///< nodal analysis (sparse Cholesky, R right-hand sides); for small tiles and validation
};

/// The wires of every crossbar: segment resistance and the IR-drop model.
struct wire_config {
  double segment_ohm = 0.0;                          ///< resistance between two adjacent cells on a row or column, ohm
  ir_drop_model model = ir_drop_model::fast;  ///< how the effective conductances are computed

  /// Ideal wires (no IR drop).
  [[nodiscard]] static constexpr wire_config ideal() noexcept { return {}; }
  /// True when the wires have no resistance.
  [[nodiscard]] constexpr bool is_ideal() const noexcept { return segment_ohm == 0.0; }
  /// Throws value_error unless segment_ohm is finite and >= 0.
  void validate() const { detail::check_non_negative("wire_config", "segment_ohm", segment_ohm); }
  /// Equal settings.
  friend constexpr bool operator==(const wire_config&, const wire_config&) = default;
};

namespace detail {

inline void check_ir_drop_args(std::string_view who, std::span<const double> g, std::int64_t R, std::int64_t P,
                               double segment_ohm) {
  if (R < 1 || P < 1 || static_cast<std::int64_t>(g.size()) != R * P) {
    throw shape_error(concat(who, ": conductances must be R x P = ", R, " x ", P, " values, got ", g.size()));
  }
  check_non_negative(who, "segment_ohm", segment_ohm);
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (!std::isfinite(g[i]) || g[i] < 0) {
      throw value_error(concat(who, ": conductance ", i, " must be finite and >= 0, got ", g[i]));
    }
  }
}

/// The nodal conductance matrix of the crossbar network (row nodes first,
/// then column nodes, each row-major), in uS, with the wire conductance
/// gw = 1e6 / segment_ohm uS; the driver of row i enters the right-hand
/// side as gw v_i at row node (i, 0).
[[nodiscard]] inline Eigen::SparseMatrix<double> nodal_matrix(std::span<const double> g, std::int64_t R,
                                                              std::int64_t P, double gw) {
  using index = Eigen::Index;
  const index n = 2 * R * P;
  std::vector<Eigen::Triplet<double>> t;
  t.reserve(static_cast<std::size_t>(7 * n));
  std::vector<double> diag(static_cast<std::size_t>(n), 0.0);
  const auto a = [P](std::int64_t i, std::int64_t p) { return static_cast<index>(i * P + p); };
  const auto b = [R, P](std::int64_t i, std::int64_t p) { return static_cast<index>(R * P + i * P + p); };
  const auto edge = [&](index u, index v, double c) {
    diag[static_cast<std::size_t>(u)] += c;
    diag[static_cast<std::size_t>(v)] += c;
    t.emplace_back(u, v, -c);
    t.emplace_back(v, u, -c);
  };
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t p = 0; p < P; ++p) {
      if (p == 0) {
        diag[static_cast<std::size_t>(a(i, 0))] += gw;  // the driver (Dirichlet node)
      } else {
        edge(a(i, p - 1), a(i, p), gw);
      }
      if (i > 0) edge(b(i - 1, p), b(i, p), gw);
      if (i == R - 1) diag[static_cast<std::size_t>(b(i, p))] += gw;  // the virtual ground
      const double c = g[static_cast<std::size_t>(i * P + p)];
      if (c > 0) edge(a(i, p), b(i, p), c);
    }
  for (index k = 0; k < n; ++k) t.emplace_back(k, k, diag[static_cast<std::size_t>(k)]);
  Eigen::SparseMatrix<double> m(n, n);
  m.setFromTriplets(t.begin(), t.end());
  return m;
}

/// The factorised nodal system of one crossbar (wire conductance gw in uS).
struct nodal_system {
  double gw;                                                  ///< wire conductance, uS
  Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>> solver;  ///< LDL^T of nodal_matrix

  nodal_system(std::string_view who, std::span<const double> g, std::int64_t R, std::int64_t P, double segment_ohm)
      : gw(1e6 / segment_ohm) {
    solver.compute(nodal_matrix(g, R, P, gw));
    if (solver.info() != Eigen::Success) throw value_error(concat(who, ": the nodal matrix is singular"));
  }
};

}  // namespace detail

/// Column currents (uA) of the crossbar for row voltages v (V), by exact nodal
/// analysis of the network (the reference the fast model is tested against).
[[nodiscard]] inline std::vector<double> crossbar_nodal_currents(std::span<const double> g, std::int64_t R,
                                                                 std::int64_t P, double segment_ohm,
                                                                 std::span<const double> v) {
  detail::check_ir_drop_args("crossbar_nodal_currents", g, R, P, segment_ohm);
  if (static_cast<std::int64_t>(v.size()) != R) {
    throw shape_error(detail::concat("crossbar_nodal_currents: ", v.size(), " voltages given for ", R, " rows"));
  }
  std::vector<double> out(static_cast<std::size_t>(P), 0.0);
  if (segment_ohm == 0.0) {
    for (std::int64_t i = 0; i < R; ++i)
      for (std::int64_t p = 0; p < P; ++p) out[static_cast<std::size_t>(p)] += g[static_cast<std::size_t>(i * P + p)] * v[static_cast<std::size_t>(i)];
    return out;
  }
  const detail::nodal_system sys("crossbar_nodal_currents", g, R, P, segment_ohm);
  const double gw = sys.gw;
  Eigen::VectorXd rhs = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(2 * R * P));
  for (std::int64_t i = 0; i < R; ++i) rhs[static_cast<Eigen::Index>(i * P)] = gw * v[static_cast<std::size_t>(i)];
  const Eigen::VectorXd x = sys.solver.solve(rhs);
  for (std::int64_t p = 0; p < P; ++p) out[static_cast<std::size_t>(p)] = gw * x[static_cast<Eigen::Index>(R * P + (R - 1) * P + p)];
  return out;
}

/// The exact effective conductances geff [R, P] (uS): geff_ip is column p's
/// current per volt on row i with every other row at 0 V. One sparse LDL^T
/// factorisation and R solves; memory and time grow quickly with the tile
/// (use it for tiles up to a few hundred cells a side).
[[nodiscard]] inline std::vector<double> ir_drop_exact(std::span<const double> g, std::int64_t R, std::int64_t P,
                                                       double segment_ohm) {
  detail::check_ir_drop_args("ir_drop_exact", g, R, P, segment_ohm);
  std::vector<double> out(g.begin(), g.end());
  if (segment_ohm == 0.0) return out;
  const detail::nodal_system sys("ir_drop_exact", g, R, P, segment_ohm);
  const double gw = sys.gw;
  constexpr std::int64_t block = 16;  // right-hand sides per solve: bounds the dense n x block buffer
  for (std::int64_t i0 = 0; i0 < R; i0 += block) {
    const auto nb = std::min(block, R - i0);
    Eigen::MatrixXd rhs = Eigen::MatrixXd::Zero(static_cast<Eigen::Index>(2 * R * P), static_cast<Eigen::Index>(nb));
    for (std::int64_t j = 0; j < nb; ++j) rhs(static_cast<Eigen::Index>((i0 + j) * P), static_cast<Eigen::Index>(j)) = gw;
    const Eigen::MatrixXd x = sys.solver.solve(rhs);
    for (std::int64_t j = 0; j < nb; ++j)
      for (std::int64_t p = 0; p < P; ++p)
        out[static_cast<std::size_t>((i0 + j) * P + p)] =
            gw * x(static_cast<Eigen::Index>(R * P + (R - 1) * P + p), static_cast<Eigen::Index>(j));
  }
  return out;
}

/// The fast effective conductances, with eps = segment_ohm * 1e-6 (V per uA):
///
///     geff_ip = g_ip / (1 + eps (A_ip + B_ip)),
///     A_ip = sum_q g_iq (min(p, q) + 1),        (row i's wire, driver at the left)
///     B_ip = sum_k g_kp (R - max(i, k)),        (column p's wire, amplifier below row R - 1)
///
/// eps (A_ip + B_ip) is the voltage the row wire and the column wire of cell
/// (i, p) lose, per volt of input, when every cell carries its ideal current:
/// to first order in eps the cell loses that fraction of its current. The
/// 1 / (1 + x) form (exact for one cell in series with its wires) is the
/// same to first order and was measured 2-5x closer to the exact solve than
/// the truncation 1 - x on random tiles of 16-64 rows and 16-128 columns.
/// O(R P) with prefix sums. Against the exact solve, for any input, its
/// largest column error is at most 10% of the largest column IR drop (the
/// bound tests/unit/unit-ir-drop.cpp checks over 0.1-2.5 ohm per segment,
/// tiles of 16-64 rows and 16-128 bit lines, input densities 0.1-1, signed
/// and unsigned inputs, up to drops of a third of the output; the worst
/// case measured there is 6.9%). On programmed full tiles (256 word lines,
/// 512 bit lines, bench/ir_drop_accuracy) it stayed within 2.0-7.2% of the
/// drop at 0.1-1 ohm, where the drop was 14-65% of the output, in about
/// 11-12 ms against 16-18 s for the exact solve.
[[nodiscard]] inline std::vector<double> ir_drop_fast(std::span<const double> g, std::int64_t R,
                                                             std::int64_t P, double segment_ohm) {
  detail::check_ir_drop_args("ir_drop_fast", g, R, P, segment_ohm);
  std::vector<double> out(g.begin(), g.end());
  if (segment_ohm == 0.0) return out;
  const double eps = segment_ohm * 1e-6;
  std::vector<double> corr(g.size(), 0.0);
  // Row term: A_ip = sum_{q <= p} T_iq with T_iq = sum_{q' >= q} g_iq' (current through segment q per volt).
  for (std::int64_t i = 0; i < R; ++i) {
    const double* gi = g.data() + i * P;
    double suffix = 0;
    for (std::int64_t q = 0; q < P; ++q) suffix += gi[q];
    double acc = 0;
    for (std::int64_t p = 0; p < P; ++p) {
      acc += suffix;  // T_ip
      suffix -= gi[p];
      corr[static_cast<std::size_t>(i * P + p)] = acc;
    }
  }
  // Column term: B_ip = sum_{k <= i} g_kp (R - i) + sum_{k > i} g_kp (R - k).
  for (std::int64_t p = 0; p < P; ++p) {
    double tail = 0;  // sum_{k > i} g_kp (R - k)
    for (std::int64_t k = 0; k < R; ++k) tail += g[static_cast<std::size_t>(k * P + p)] * static_cast<double>(R - k);
    double head = 0;  // sum_{k <= i} g_kp
    for (std::int64_t i = 0; i < R; ++i) {
      const double gk = g[static_cast<std::size_t>(i * P + p)];
      head += gk;
      tail -= gk * static_cast<double>(R - i);
      corr[static_cast<std::size_t>(i * P + p)] += head * static_cast<double>(R - i) + tail;
    }
  }
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = g[k] / (1.0 + eps * corr[k]);
  return out;
}

/// The effective conductances under `wires` (a copy of g for ideal wires).
[[nodiscard]] inline std::vector<double> ir_drop_effective(const wire_config& wires, std::span<const double> g,
                                                           std::int64_t R, std::int64_t P) {
  wires.validate();
  return wires.model == ir_drop_model::exact ? ir_drop_exact(g, R, P, wires.segment_ohm)
                                             : ir_drop_fast(g, R, P, wires.segment_ohm);
}

}  // namespace rimc
