#pragma once
/// \file
/// SRAM-budgeted adapter placement (docs/formulas.md, sec. 3): instead of one
/// rank on every layer, choose which layers get an adapter and at which rank
/// so that the adapters fit a byte budget and recover as much as possible.
///
/// measure_sensitivity() calibrates each candidate (layer, rank) alone on
/// simulated chips (drift realisations the deployed chip never sees) and
/// records the reduction of the network output's mean squared error to the
/// teacher it brings, and its SRAM bytes. plan_adapter_budget() then picks at
/// most one option per layer maximising the summed gain within the budget:
/// exactly (dynamic programming over the bytes, in units of their greatest
/// common divisor) when that table is small enough, greedily by gain per
/// byte otherwise. Gains are treated as additive across layers, which they
/// are only approximately (layers interact); the plan is a placement, the
/// field calibration that follows trains the chosen adapters jointly in the
/// usual layer-wise way.

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/error.hpp>
#include <rimc/kernels/mse.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace rimc {

/// One candidate adapter for a layer.
struct placement_option {
  std::int64_t rank = 0;     ///< the adapter's rank
  std::size_t bytes = 0;     ///< its SRAM bytes
  double gain = 0;           ///< reduction of the output MSE to the teacher it brings alone (mean over simulated chips)
};

/// The candidates of one layer.
struct layer_sensitivity {
  std::string name;                      ///< the node
  std::vector<placement_option> options; ///< in the order of the ranks measured
};

/// Which layers get which rank, and what that costs and brings.
struct adapter_plan {
  std::map<std::string, std::int64_t> ranks;  ///< layer -> rank (layers without an adapter are absent)
  std::size_t bytes = 0;                      ///< SRAM bytes of the chosen adapters
  double gain = 0;                            ///< summed gains of the chosen options
  bool exact = true;                          ///< solved exactly (else greedily)

  /// The chosen layers in `net`'s order (calibration targets).
  [[nodiscard]] std::vector<std::string> targets(const network& net) const {
    std::vector<std::string> t;
    for (const auto& n : net.nodes())
      if (ranks.count(n.name)) t.push_back(n.name);
    return t;
  }
};

/// Measures every (layer, rank) of `layers` (every conv2d and linear layer
/// when empty) at every rank of `ranks` on each simulated chip of `students`:
/// the layer alone gets the adapter `make(request, rank)` calibrated by
/// feature KD with `cfg` on `images`, and the gain is the output MSE to the
/// teacher before minus after, averaged over the students. The students are
/// left as they were (the adapter is taken off after each measurement).
template <class Make>
[[nodiscard]] std::vector<layer_sensitivity> measure_sensitivity(const network& teacher,
                                                                 std::span<network* const> students,
                                                                 const Tensor& images, const calibration_config& cfg,
                                                                 std::span<const std::int64_t> ranks, Make&& make,
                                                                 std::vector<std::string> layers = {}) {
  if (students.empty()) throw value_error("measure_sensitivity: no simulated chip given");
  if (ranks.empty()) throw value_error("measure_sensitivity: no rank given");
  for (const auto r : ranks)
    if (r < 1) throw value_error(detail::concat("measure_sensitivity: ranks must be >= 1, got ", r));
  layers = detail::calibration_targets(*students[0], std::move(layers), "measure_sensitivity");
  const Tensor want = teacher.forward(images);
  std::vector<double> before(students.size());
  for (std::size_t k = 0; k < students.size(); ++k) before[k] = detail::mse(students[k]->forward(images), want, nullptr);
  std::vector<layer_sensitivity> out;
  for (const auto& name : layers) {
    layer_sensitivity s{name, {}};
    for (const auto r : ranks) {
      calibration_config c = cfg;
      c.targets = {name};
      c.on_layer = nullptr;
      placement_option opt{r, 0, 0.0};
      for (std::size_t k = 0; k < students.size(); ++k) {
        network& st = *students[k];
        const auto res = calibrate_feature_kd(teacher, st, images, c,
                                              [&](const adapter_request& q) { return make(q, r); });
        opt.bytes = res.footprint.sram_bytes;
        opt.gain += before[k] - detail::mse(st.forward(images), want, nullptr);
        st.set_layer(name, res.adapters.at(name)->base());
      }
      opt.gain /= static_cast<double>(students.size());
      s.options.push_back(opt);
    }
    out.push_back(std::move(s));
  }
  return out;
}

/// Picks at most one option per layer, maximising the summed gain with the
/// summed bytes at most `budget_bytes` (options with gain <= 0 are never
/// taken). Exact by dynamic programming when (budget / gcd of the bytes + 1)
/// x layers is at most `max_table` cells; greedy by incremental gain per byte otherwise.
[[nodiscard]] inline adapter_plan plan_adapter_budget(const std::vector<layer_sensitivity>& layers,
                                                      std::size_t budget_bytes, std::size_t max_table = 50'000'000) {
  std::size_t unit = 0;
  for (const auto& l : layers)
    for (const auto& o : l.options) {
      if (o.bytes == 0) throw value_error(detail::concat("plan_adapter_budget: layer '", l.name, "' has an option of 0 bytes"));
      if (!std::isfinite(o.gain)) {
        throw value_error(detail::concat("plan_adapter_budget: layer '", l.name, "' rank ", o.rank, " has gain ", o.gain));
      }
      unit = std::gcd(unit, o.bytes);
    }
  adapter_plan plan;
  if (unit == 0) return plan;
  const std::size_t cap = budget_bytes / unit;
  const auto finish = [&](const std::vector<int>& choice) {
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (choice[i] < 0) continue;
      const auto& o = layers[i].options[static_cast<std::size_t>(choice[i])];
      plan.ranks[layers[i].name] = o.rank;
      plan.bytes += o.bytes;
      plan.gain += o.gain;
    }
    return plan;
  };
  std::vector<int> choice(layers.size(), -1);
  if ((cap + 1) * std::max<std::size_t>(layers.size(), 1) <= max_table) {
    // best[i][b]: the largest gain of layers 0..i-1 within b units (0: none taken); pick[i][b]: layer i-1's option there.
    std::vector<std::vector<double>> best(layers.size() + 1, std::vector<double>(cap + 1, 0.0));
    std::vector<std::vector<int>> pick(layers.size() + 1, std::vector<int>(cap + 1, -1));
    for (std::size_t i = 0; i < layers.size(); ++i)
      for (std::size_t b = 0; b <= cap; ++b) {
        double v = best[i][b];
        int p = -1;
        for (std::size_t j = 0; j < layers[i].options.size(); ++j) {
          const auto& o = layers[i].options[j];
          const std::size_t w = o.bytes / unit;
          if (o.gain <= 0 || w > b) continue;
          const double c = best[i][b - w] + o.gain;
          if (c > v) {
            v = c;
            p = static_cast<int>(j);
          }
        }
        best[i + 1][b] = v;
        pick[i + 1][b] = p;
      }
    std::size_t b = cap;
    for (std::size_t i = layers.size(); i-- > 0;) {
      choice[i] = pick[i + 1][b];
      if (choice[i] >= 0) b -= layers[i].options[static_cast<std::size_t>(choice[i])].bytes / unit;
    }
    return finish(choice);
  }
  plan.exact = false;
  std::size_t used = 0;
  for (;;) {
    double best_ratio = 0;
    std::size_t bi = 0, bj = 0;
    bool found = false;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const double g0 = choice[i] < 0 ? 0.0 : layers[i].options[static_cast<std::size_t>(choice[i])].gain;
      const std::size_t w0 = choice[i] < 0 ? 0 : layers[i].options[static_cast<std::size_t>(choice[i])].bytes;
      for (std::size_t j = 0; j < layers[i].options.size(); ++j) {
        const auto& o = layers[i].options[j];
        if (o.gain <= g0 || o.bytes <= w0 || used - w0 + o.bytes > budget_bytes) continue;
        const double ratio = (o.gain - g0) / static_cast<double>(o.bytes - w0);
        if (!found || ratio > best_ratio) {
          best_ratio = ratio;
          bi = i;
          bj = j;
          found = true;
        }
      }
    }
    if (!found) break;
    const std::size_t w0 = choice[bi] < 0 ? 0 : layers[bi].options[static_cast<std::size_t>(choice[bi])].bytes;
    used = used - w0 + layers[bi].options[bj].bytes;
    choice[bi] = static_cast<int>(bj);
  }
  return finish(choice);
}

}  // namespace rimc
