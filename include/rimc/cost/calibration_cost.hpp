#pragma once
/// \file
/// The cost of each way to recover a drifted RRAM network, from layer
/// geometry and a cost_model (no network is run):
///
/// - re-programming every RRAM cell with write-verify (the classic fix), or
///   only the cells whose drift exceeds a tolerance;
/// - calibrating by backpropagation with the updates written into the RRAM;
/// - DoRA adapters in SRAM (Dong et al., arXiv 2504.03763): no RRAM write,
///   SRAM writes and digital compute during calibration, and a per-image
///   inference overhead.
///
/// Assumptions (each result is an estimate of the dominant terms):
/// - every programmed cell costs mean_pulses(bits_per_cell) write pulses,
///   each followed by one verify read; the devices of a differential pair
///   are both programmed (as TiledArray::rram_writes() counts them);
/// - the selective re-programming reads every cell once to find the drifted
///   ones, then programs the given fraction of them;
/// - backprop with in-RRAM updates writes every adapted weight's cells at
///   every step, each update moving the cell by `levels_moved_per_update`
///   levels (write_verify_model::pulses_to_move); the number of writes does
///   not depend on the number of samples N; the forward/backward compute of
///   backprop is not counted (its energy is a lower bound);
/// - DoRA calibration (layer-wise feature KD) writes every adapter value and
///   its optimizer state to SRAM once per step and reads them once per step;
///   its digital compute per step (calibration_compute::direct) is 3 x the
///   forward MACs of A x and B u (forward, and the two backward products),
///   3 (r K + O r) positions N; with the Gram-statistics form of docs/formulas.md (sec. 3)
///   (calibration_compute::gram) it is K^2 positions N + 2 K O positions N
///   once per layer (X^T X, X^T Z0, X^T T) plus 3 (r K^2 + O r K + O K) per
///   step, independent of N and positions; `cheaper` takes the smaller per layer;
///   each adapted layer's crossbar runs once on the N samples; time is the
///   MACs on one unit plus the SRAM accesses (crossbar time not counted);
/// - an endurance cycle is one write pulse (cost_model::endurance_per_pulse)
///   or one whole programming; wear is the mean over the written cells.

#include <rimc/cost/cost_model.hpp>
#include <rimc/cost/layer_geometry.hpp>
#include <rimc/device/device_config.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace rimc {

/// How the DoRA calibration's digital compute is counted (see the file comment).
enum class calibration_compute : std::uint8_t {
  direct,   ///< forward and backward of the adapter on every row, every step (rimc's calibrate_feature_kd)
  gram,     ///< per-layer statistics once, then O(r K^2) per step (the exact reformulation of docs/formulas.md, sec. 3)
  cheaper,  ///< per layer, whichever of the two needs fewer MACs
};

/// What a calibration does (the paper's settings: rank 2 for ResNet-20, 4 for ResNet-50, 10 samples, 100 steps).
struct calibration_workload {
  std::int64_t rank = 2;              ///< DoRA rank r
  std::int64_t samples = 10;          ///< N calibration images
  std::int64_t steps_per_layer = 100; ///< Adam steps per layer of the DoRA calibration
  std::int64_t backprop_steps = 100;  ///< steps of the in-RRAM backprop baseline (each writes every adapted weight)
  double levels_moved_per_update = 1.0;  ///< levels an in-RRAM update moves a cell, levels
  double drifted_fraction = 1.0;      ///< share of cells the selective re-programming writes (see drifted_cell_fraction)
  sram_precision calibration_precision = sram_precision::fp32;  ///< adapter values and MACs during calibration
  sram_precision deploy_precision = sram_precision::fp32;       ///< adapter storage and MACs at inference
  int optimizer_state_values = 2;     ///< fp32 optimizer values per adapter value written each step (Adam: 2)
  calibration_compute compute = calibration_compute::direct;  ///< how the DoRA calibration's MACs are counted

  /// Throws value_error naming the first invalid field.
  void validate() const {
    const auto at_least = [](const char* field, std::int64_t v, std::int64_t lo) {
      if (v < lo) throw value_error(detail::concat("calibration_workload: ", field, " must be >= ", lo, ", got ", v));
    };
    at_least("rank", rank, 1);
    at_least("samples", samples, 1);
    at_least("steps_per_layer", steps_per_layer, 0);
    at_least("backprop_steps", backprop_steps, 0);
    at_least("optimizer_state_values", optimizer_state_values, 0);
    if (!std::isfinite(levels_moved_per_update) || levels_moved_per_update < 0) {
      throw value_error(detail::concat("calibration_workload: levels_moved_per_update must be >= 0, got ",
                                       levels_moved_per_update));
    }
    if (!(drifted_fraction >= 0 && drifted_fraction <= 1)) {
      throw value_error(
          detail::concat("calibration_workload: drifted_fraction must be in [0, 1], got ", drifted_fraction));
    }
  }
};

/// The cost of one calibration with one strategy.
struct strategy_cost {
  std::string strategy;             ///< short name ("reprogram_all", ...)
  double energy_j = 0;              ///< energy of one calibration, J
  double latency_s = 0;             ///< time of one calibration, s
  double rram_writes = 0;           ///< cell programming events (expected value), cells
  double rram_pulses = 0;           ///< write pulses, pulses
  double sram_bits_written = 0;     ///< SRAM bit writes, bits
  double digital_macs = 0;          ///< digital multiply-accumulates, MACs
  double rram_cycles_per_cell = 0;  ///< endurance cycles one calibration uses per written cell (mean), cycles
  double calibrations_survivable = std::numeric_limits<double>::infinity();  ///< RRAM endurance / cycles per cell
  double sram_writes_per_bit = 0;   ///< SRAM writes per adapter bit per calibration, writes
  double sram_calibrations_survivable = std::numeric_limits<double>::infinity();  ///< SRAM endurance / writes per bit
};

/// What the DoRA adapters add to each inference, per image.
struct inference_overhead {
  double crossbar_macs = 0;        ///< analog MACs of the adapted layers, O K positions, MACs
  double adapter_macs = 0;         ///< digital MACs of the adapters, (r K + O r + O) positions, MACs
  double mac_share = 0;            ///< adapter_macs / crossbar_macs
  double sram_bits_read = 0;       ///< adapter bits read from SRAM (once per image), bits
  double crossbar_energy_j = 0;    ///< cell reads + ADC + DAC of the adapted layers, J
  double adapter_energy_j = 0;     ///< adapter MACs + SRAM reads, J
  double energy_share = 0;         ///< adapter_energy_j / crossbar_energy_j
};

/// Every strategy side by side for one network.
struct calibration_cost_report {
  std::vector<strategy_cost> strategies;  ///< reprogram_all, reprogram_drifted, backprop_in_rram, dora_sram
  inference_overhead overhead;            ///< DoRA's per-image inference overhead
  std::int64_t rram_weights = 0;          ///< weights on the crossbars
  double rram_cells = 0;                  ///< cells on the crossbars (weights x slices x devices)
  std::int64_t adapter_parameters = 0;    ///< adapter values of the adapted layers
  /// Adapter values as a percentage of the RRAM weights.
  [[nodiscard]] double adapter_share_percent() const noexcept {
    return rram_weights ? 100.0 * static_cast<double>(adapter_parameters) / static_cast<double>(rram_weights) : 0.0;
  }
};

/// Share of cells whose relative drift |rho xi|, xi ~ N(0, 1), exceeds `tolerance`:
/// 2 (1 - Phi(tolerance / rho)) = erfc(tolerance / (rho sqrt 2)) (the paper's relative Gaussian drift).
[[nodiscard]] inline double drifted_cell_fraction(double relative_drift, double tolerance) {
  if (!std::isfinite(relative_drift) || relative_drift < 0) {
    throw value_error(detail::concat("drifted_cell_fraction: relative_drift must be >= 0, got ", relative_drift));
  }
  if (!std::isfinite(tolerance) || tolerance < 0) {
    throw value_error(detail::concat("drifted_cell_fraction: tolerance must be >= 0, got ", tolerance));
  }
  if (relative_drift == 0) return 0.0;
  return std::erfc(tolerance / (relative_drift * std::sqrt(2.0)));
}

namespace detail {

[[nodiscard]] inline double cells_of(const std::vector<layer_geometry>& layers, const device_config& dev,
                                     const cost_model& m) {
  double c = 0;
  for (const auto& g : layers) {
    g.validate();
    c += static_cast<double>(g.weights()) * dev.slices * m.devices_per_weight;
  }
  return c;
}

[[nodiscard]] inline double mac_energy_pj(const cost_model& m, sram_precision p) noexcept {
  switch (p) {
    case sram_precision::fp32: return m.mac_energy_pj_fp32;
    case sram_precision::fp16: return m.mac_energy_pj_fp16;
    case sram_precision::int8: return m.mac_energy_pj_int8;
  }
  return m.mac_energy_pj_fp32;
}

/// Endurance cycles of one programming that takes `pulses` pulses.
[[nodiscard]] inline double cycles_of(const cost_model& m, double pulses) noexcept {
  return m.endurance_per_pulse ? pulses : 1.0;
}

/// Cost of programming `cells` cells with `pulses` pulses each (write + verify read per pulse).
inline void add_programming(strategy_cost& s, const cost_model& m, double cells, double pulses) {
  const double n = cells * pulses;
  s.rram_writes += cells;
  s.rram_pulses += n;
  s.energy_j += n * (m.rram_write_energy_pj_per_pulse + m.rram_read_energy_pj_per_cell) * 1e-12;
  s.latency_s += n * (m.rram_write_latency_ns_per_pulse + m.rram_read_latency_ns) / m.rram_parallel_writes * 1e-9;
}

inline void set_survivable(strategy_cost& s, const cost_model& m) {
  s.calibrations_survivable = s.rram_cycles_per_cell > 0 ? m.rram_endurance_cycles / s.rram_cycles_per_cell
                                                         : std::numeric_limits<double>::infinity();
  s.sram_calibrations_survivable = s.sram_writes_per_bit > 0 ? m.sram_endurance_cycles / s.sram_writes_per_bit
                                                             : std::numeric_limits<double>::infinity();
}

inline void check_rank(const std::vector<layer_geometry>& layers, std::int64_t rank) {
  for (const auto& g : layers) {
    if (rank > std::min(g.out_features, g.fan_in)) {
      throw value_error(concat("calibration_workload: rank ", rank, " exceeds min(O, K) = ",
                               std::min(g.out_features, g.fan_in), " of layer '", g.name, "'"));
    }
  }
}

}  // namespace detail

/// Crossbar energy of one image through `layers`: every cell read once per
/// position, one ADC conversion per bit line, slice and position (the pair
/// subtracted before the ADC), one DAC conversion per word line and position, J.
[[nodiscard]] inline double crossbar_inference_energy_j(const std::vector<layer_geometry>& layers,
                                                        const device_config& dev, const cost_model& m) {
  double pj = 0;
  for (const auto& g : layers) {
    g.validate();
    const auto P = static_cast<double>(g.positions);
    const auto row_tiles = static_cast<double>((g.fan_in + m.tile_rows - 1) / m.tile_rows);
    const auto col_tiles = static_cast<double>((g.out_features + m.tile_cols - 1) / m.tile_cols);
    const double cells = static_cast<double>(g.weights()) * dev.slices * m.devices_per_weight;
    const double adc = row_tiles * static_cast<double>(g.out_features) * dev.slices;
    const double dac = static_cast<double>(g.fan_in) * col_tiles;
    pj += P * (cells * m.rram_read_energy_pj_per_cell + adc * m.adc_energy_pj_per_conversion +
               dac * m.dac_energy_pj_per_conversion);
  }
  return pj * 1e-12;
}

/// Re-programming every cell of `layers` with write-verify (the classic fix).
[[nodiscard]] inline strategy_cost reprogram_all_cost(const std::vector<layer_geometry>& layers,
                                                      const device_config& dev, const cost_model& m) {
  dev.validate();
  m.validate();
  const double pulses = m.write_verify.mean_pulses(dev.bits_per_cell);
  strategy_cost s;
  s.strategy = "reprogram_all";
  detail::add_programming(s, m, detail::cells_of(layers, dev, m), pulses);
  s.rram_cycles_per_cell = detail::cycles_of(m, pulses);
  detail::set_survivable(s, m);
  return s;
}

/// Reading every cell of `layers` once, then re-programming the share
/// `drifted_fraction` of them (drifted beyond a tolerance; see drifted_cell_fraction).
[[nodiscard]] inline strategy_cost reprogram_drifted_cost(const std::vector<layer_geometry>& layers,
                                                          const device_config& dev, const cost_model& m,
                                                          double drifted_fraction) {
  dev.validate();
  m.validate();
  if (!(drifted_fraction >= 0 && drifted_fraction <= 1)) {
    throw value_error(detail::concat("reprogram_drifted_cost: drifted_fraction must be in [0, 1], got ",
                                     drifted_fraction));
  }
  const double cells = detail::cells_of(layers, dev, m), pulses = m.write_verify.mean_pulses(dev.bits_per_cell);
  strategy_cost s;
  s.strategy = "reprogram_drifted";
  s.energy_j = cells * m.rram_read_energy_pj_per_cell * 1e-12;
  s.latency_s = cells * m.rram_read_latency_ns / m.rram_parallel_writes * 1e-9;
  detail::add_programming(s, m, drifted_fraction * cells, pulses);
  s.rram_cycles_per_cell = drifted_fraction * detail::cycles_of(m, pulses);
  detail::set_survivable(s, m);
  return s;
}

/// Backprop calibration whose weight updates are written into the RRAM: every
/// step writes every cell of `adapted` (independent of the number of samples).
[[nodiscard]] inline strategy_cost backprop_in_rram_cost(const std::vector<layer_geometry>& adapted,
                                                         const device_config& dev, const cost_model& m,
                                                         const calibration_workload& w) {
  dev.validate();
  m.validate();
  w.validate();
  const double pulses = m.write_verify.pulses_to_move(w.levels_moved_per_update);
  const auto steps = static_cast<double>(w.backprop_steps);
  strategy_cost s;
  s.strategy = "backprop_in_rram";
  detail::add_programming(s, m, steps * detail::cells_of(adapted, dev, m), pulses);
  s.rram_cycles_per_cell = steps * detail::cycles_of(m, pulses);
  detail::set_survivable(s, m);
  return s;
}

/// DoRA adapters on `adapted`, calibrated layer by layer in SRAM: no RRAM write.
[[nodiscard]] inline strategy_cost dora_sram_cost(const std::vector<layer_geometry>& adapted,
                                                  const device_config& dev, const cost_model& m,
                                                  const calibration_workload& w) {
  dev.validate();
  m.validate();
  w.validate();
  detail::check_rank(adapted, w.rank);
  const auto r = w.rank, N = w.samples, steps = w.steps_per_layer;
  const double bits_per_value = sram_value_bits(w.calibration_precision) + 32.0 * w.optimizer_state_values;
  strategy_cost s;
  s.strategy = "dora_sram";
  double macs = 0, bits = 0;
  for (const auto& g : adapted) {
    const auto K = static_cast<double>(g.fan_in), O = static_cast<double>(g.out_features),
               rows = static_cast<double>(g.positions * N), rd = static_cast<double>(r),
               sd = static_cast<double>(steps);
    const double direct = 3.0 * (rd * K + O * rd) * rows * sd;
    const double gram = (K * K + 2.0 * K * O) * rows + 3.0 * (rd * K * K + O * rd * K + O * K) * sd;
    switch (w.compute) {
      case calibration_compute::direct: macs += direct; break;
      case calibration_compute::gram: macs += gram; break;
      case calibration_compute::cheaper: macs += std::min(direct, gram); break;
    }
    bits += static_cast<double>(adapter_parameters(g, r)) * bits_per_value * static_cast<double>(steps);
  }
  s.digital_macs = macs;
  s.sram_bits_written = bits;
  s.energy_j = (macs * detail::mac_energy_pj(m, w.calibration_precision) + bits * m.sram_write_energy_pj_per_bit +
                bits * m.sram_read_energy_pj_per_bit) *
                   1e-12 +
               static_cast<double>(N) * crossbar_inference_energy_j(adapted, dev, m);
  s.latency_s = (macs * m.mac_latency_ns + 2.0 * bits / m.sram_word_bits * m.sram_latency_ns) * 1e-9;
  s.sram_writes_per_bit = static_cast<double>(steps);
  detail::set_survivable(s, m);
  return s;
}

/// One adapted layer of a calibration in SRAM with any adapter type: the
/// layer, the values trained, and the digital MACs per calibration row (one
/// image at one output position) per step and once.
struct sram_calibration_layer {
  layer_geometry geometry;        ///< the adapted layer
  double trained_values = 0;      ///< adapter values written to SRAM each step (once when there are no steps)
  double macs_per_row_step = 0;   ///< forward and backward MACs per row and step, MACs
  double macs_per_row_once = 0;   ///< MACs per row computed once (e.g. statistics), MACs
};

/// A calibration in SRAM with any adapter (the DoRA case is dora_sram_cost):
/// `steps` steps over `samples` images, each step writing and reading every
/// trained value with `optimizer_state_values` fp32 optimizer values (a
/// closed-form fit: steps = 0, the values written once); each adapted
/// layer's crossbar runs once on the samples. Energy and time as dora_sram_cost counts them.
[[nodiscard]] inline strategy_cost sram_calibration_cost(std::string name, const std::vector<sram_calibration_layer>& layers,
                                                         const device_config& dev, const cost_model& m,
                                                         std::int64_t samples, std::int64_t steps,
                                                         sram_precision precision = sram_precision::fp32,
                                                         int optimizer_state_values = 2) {
  dev.validate();
  m.validate();
  if (samples < 1) throw value_error(detail::concat("sram_calibration_cost: samples must be >= 1, got ", samples));
  if (steps < 0) throw value_error(detail::concat("sram_calibration_cost: steps must be >= 0, got ", steps));
  if (optimizer_state_values < 0) {
    throw value_error(detail::concat("sram_calibration_cost: optimizer_state_values must be >= 0, got ",
                                     optimizer_state_values));
  }
  const double bits_per_value = sram_value_bits(precision) + 32.0 * optimizer_state_values;
  const auto sd = static_cast<double>(steps);
  double macs = 0, bits = 0;
  std::vector<layer_geometry> geoms;
  for (const auto& l : layers) {
    l.geometry.validate();
    for (const double v : {l.trained_values, l.macs_per_row_step, l.macs_per_row_once})
      if (!(v >= 0) || !std::isfinite(v)) {
        throw value_error(detail::concat("sram_calibration_cost: layer '", l.geometry.name,
                                         "' has a negative or non-finite count ", v));
      }
    const double rows = static_cast<double>(l.geometry.positions * samples);
    macs += rows * (l.macs_per_row_step * sd + l.macs_per_row_once);
    bits += l.trained_values * bits_per_value * std::max(sd, 1.0);
    geoms.push_back(l.geometry);
  }
  strategy_cost s;
  s.strategy = std::move(name);
  s.digital_macs = macs;
  s.sram_bits_written = bits;
  s.energy_j = (macs * detail::mac_energy_pj(m, precision) + bits * (m.sram_write_energy_pj_per_bit +
                                                                     m.sram_read_energy_pj_per_bit)) * 1e-12 +
               static_cast<double>(samples) * crossbar_inference_energy_j(geoms, dev, m);
  s.latency_s = (macs * m.mac_latency_ns + 2.0 * bits / m.sram_word_bits * m.sram_latency_ns) * 1e-9;
  s.sram_writes_per_bit = std::max(sd, 1.0);
  detail::set_survivable(s, m);
  return s;
}

/// Per-image inference overhead of the DoRA adapters on `adapted` at `w.deploy_precision`:
/// extra MACs r K P + O r P + O P (the per-channel scale is one multiply per
/// output value), and the adapter bits read from SRAM once per image.
[[nodiscard]] inline inference_overhead dora_inference_overhead(const std::vector<layer_geometry>& adapted,
                                                                const device_config& dev, const cost_model& m,
                                                                const calibration_workload& w) {
  dev.validate();
  m.validate();
  w.validate();
  detail::check_rank(adapted, w.rank);
  const auto r = w.rank;
  inference_overhead o;
  for (const auto& g : adapted) {
    const auto P = static_cast<double>(g.positions);
    o.crossbar_macs += static_cast<double>(g.macs_per_image());
    o.adapter_macs += P * static_cast<double>(r * g.fan_in + g.out_features * r + g.out_features);
    o.sram_bits_read += static_cast<double>(adapter_sram_bits(g, r, w.deploy_precision));
  }
  o.mac_share = o.crossbar_macs > 0 ? o.adapter_macs / o.crossbar_macs : 0.0;
  o.crossbar_energy_j = crossbar_inference_energy_j(adapted, dev, m);
  o.adapter_energy_j =
      (o.adapter_macs * detail::mac_energy_pj(m, w.deploy_precision) + o.sram_bits_read * m.sram_read_energy_pj_per_bit) *
      1e-12;
  o.energy_share = o.crossbar_energy_j > 0 ? o.adapter_energy_j / o.crossbar_energy_j : 0.0;
  return o;
}

/// Every strategy for a network whose crossbars hold `crossbar_layers`, of which `adapted` get DoRA adapters.
[[nodiscard]] inline calibration_cost_report compare_calibration_costs(
    const std::vector<layer_geometry>& crossbar_layers, const std::vector<layer_geometry>& adapted,
    const device_config& dev, const cost_model& m, const calibration_workload& w) {
  calibration_cost_report rep;
  rep.strategies.push_back(reprogram_all_cost(crossbar_layers, dev, m));
  rep.strategies.push_back(reprogram_drifted_cost(crossbar_layers, dev, m, w.drifted_fraction));
  rep.strategies.push_back(backprop_in_rram_cost(adapted, dev, m, w));
  rep.strategies.push_back(dora_sram_cost(adapted, dev, m, w));
  rep.overhead = dora_inference_overhead(adapted, dev, m, w);
  for (const auto& g : crossbar_layers) rep.rram_weights += g.weights();
  rep.rram_cells = detail::cells_of(crossbar_layers, dev, m);
  for (const auto& g : adapted) rep.adapter_parameters += adapter_parameters(g, w.rank);
  return rep;
}

}  // namespace rimc
