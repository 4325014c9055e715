#pragma once
/// \file
/// The linear assignment problem: given an n x n cost matrix, the
/// permutation p minimising sum_i cost(i, p(i)). Fault-aware row ordering
/// (CrossbarTile) uses it to place a tile's weight rows on the word lines
/// whose stuck devices they suffer least from.

#include <rimc/core/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace rimc::detail {

/// The assignment minimising sum_i cost[i * n + p[i]] over permutations p of
/// [0, n) (Hungarian method with row and column potentials and shortest
/// augmenting paths, O(n^3) time, O(n) memory besides the costs; H. W.
/// Kuhn 1955, J. Munkres 1957, in the form of R. Jonker and A. Volgenant
/// 1987). Deterministic: ties go to the lowest column. Throws value_error
/// naming the first non-finite cost.
[[nodiscard]] inline std::vector<std::int64_t> min_cost_assignment(const std::vector<double>& cost, std::int64_t n) {
  if (n < 0 || static_cast<std::int64_t>(cost.size()) != n * n) {
    throw shape_error(concat("min_cost_assignment: cost must hold n * n = ", n * n, " entries, got ", cost.size()));
  }
  for (std::size_t k = 0; k < cost.size(); ++k)
    if (!std::isfinite(cost[k])) {
      throw value_error(concat("min_cost_assignment: cost(", static_cast<std::int64_t>(k) / n, ", ",
                               static_cast<std::int64_t>(k) % n, ") must be finite, got ", cost[k]));
    }
  const double inf = std::numeric_limits<double>::infinity();
  const auto N = static_cast<std::size_t>(n);
  // 1-based: row / column 0 is the virtual start of each augmenting path.
  std::vector<double> u(N + 1, 0.0), v(N + 1, 0.0), shortest(N + 1);
  std::vector<std::size_t> row_of(N + 1, 0), previous(N + 1, 0);  // row_of[j]: the row assigned to column j
  std::vector<char> visited(N + 1);
  for (std::size_t i = 1; i <= N; ++i) {
    row_of[0] = i;
    std::size_t j0 = 0;
    std::fill(shortest.begin(), shortest.end(), inf);
    std::fill(visited.begin(), visited.end(), 0);
    do {  // grow the shortest-path tree from row i until it reaches a free column
      visited[j0] = 1;
      const std::size_t i0 = row_of[j0];
      double delta = inf;
      std::size_t j1 = 0;
      for (std::size_t j = 1; j <= N; ++j) {
        if (visited[j]) continue;
        const double reduced = cost[(i0 - 1) * N + (j - 1)] - u[i0] - v[j];
        if (reduced < shortest[j]) {
          shortest[j] = reduced;
          previous[j] = j0;
        }
        if (shortest[j] < delta) {
          delta = shortest[j];
          j1 = j;
        }
      }
      for (std::size_t j = 0; j <= N; ++j) {
        if (visited[j]) {
          u[row_of[j]] += delta;
          v[j] -= delta;
        } else {
          shortest[j] -= delta;
        }
      }
      j0 = j1;
    } while (row_of[j0] != 0);
    do {  // flip the path
      const std::size_t j1 = previous[j0];
      row_of[j0] = row_of[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<std::int64_t> p(N);
  for (std::size_t j = 1; j <= N; ++j) p[row_of[j] - 1] = static_cast<std::int64_t>(j - 1);
  return p;
}

}  // namespace rimc::detail
