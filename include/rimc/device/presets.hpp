#pragma once
/// \file
/// Device and drift presets from public models (constants and sources in docs/formulas.md, sec. 4):
/// the paper's relative drift, HfOx/CMO ReRAM (IBM), NeuRRAM (Wan et al.
/// 2022), a PCM-like power law (Nandakumar et al. 2019) and measured
/// stuck-at fault fractions (Chen et al. 2017).

#include <rimc/device/device_config.hpp>
#include <rimc/device/drift.hpp>

namespace rimc::presets {

// Drift bounds: every device preset keeps the default, drift_bounds::physical
// (G >= 0). The paper's relative model and NeuRRAM's measured relaxation are
// spreads around the programmed level with no window in them, and cutting them
// at g_min would turn the symmetric spread of the idle device of each pair
// into an upward bias. The CMO fit's mean shift is downward for every level;
// aihwkit's implementation of it floors at g_min, which
// drift_bounds::floor_at_g_min reproduces when parity with it matters. PCM
// drift only lowers conductances and g_min = 0, so every bound agrees there.

/// Programming acceptance range of the CMO ReRAM write-verify loop.
enum class cmo_acceptance : std::uint8_t {
  tight,  ///< 0.2% acceptance: sigma = 8.11e-4 + 1.069e-3 G uS
  loose,  ///< 2% acceptance: sigma = 1.122e-2 + 1.129e-2 G uS
};

/// The device the paper's relative-drift experiments assume: an 8-bit
/// differential cell with no programming noise (g range as in NeuRRAM's fit).
[[nodiscard]] inline device_config paper_device() {
  device_config d;
  d.g_min_us = 1.0;
  d.g_max_us = 40.0;
  d.bits_per_cell = 8;
  return d;
}

/// HfOx/CMO ReRAM (Falcone et al. 2025, aihwkit's ReRAM CMO): about 9-88 uS.
[[nodiscard]] inline device_config cmo_reram_device(cmo_acceptance a = cmo_acceptance::tight) {
  device_config d;
  d.g_min_us = 9.0;
  d.g_max_us = 88.0;
  d.bits_per_cell = 8;
  d.noise = a == cmo_acceptance::tight ? programming_noise::polynomial(8.11e-4, 1.069e-3, 0.0)
                                       : programming_noise::polynomial(1.122e-2, 1.129e-2, 0.0);
  return d;
}

/// CMO ReRAM relaxation: mean shift -0.0890 ln t, sigma 0.0420 ln t + 0.4118 (uS).
[[nodiscard]] inline log_time_drift cmo_reram_drift() { return {}; }

/// CMO ReRAM read noise at t_s seconds after programming.
[[nodiscard]] inline read_noise cmo_reram_read_noise(seconds t) { return read_noise::cmo_reram(t); }

/// NeuRRAM (Wan et al. 2022): g_max 40 uS; the write-verify spread is part
/// of its measured relaxation table (use neurram_drift at t >= 1 s).
[[nodiscard]] inline device_config neurram_device() {
  device_config d;
  d.g_min_us = 1.0;
  d.g_max_us = 40.0;
  d.bits_per_cell = 8;
  return d;
}

/// NeuRRAM's relaxation table (sigma polynomials at 1 s, 1 day, 2 days).
[[nodiscard]] inline neurram_drift neurram_relaxation() { return {}; }

/// PCM-like device (aihwkit's PCM preset): 0-25 uS, programming noise
/// sigma = (0.26348 + 1.9650 x - 1.1731 x^2) (g_max / 25) uS with x = G / g_max.
[[nodiscard]] inline device_config pcm_device(double g_max_us = 25.0) {
  device_config d;
  d.g_min_us = 0.0;
  d.g_max_us = g_max_us;
  d.bits_per_cell = 8;
  const double k = g_max_us / 25.0;
  d.noise = programming_noise::polynomial(0.26348 * k, 1.9650 * k / g_max_us, -1.1731 * k / (g_max_us * g_max_us));
  return d;
}

/// PCM power-law drift (t0 = 20 s, exponent statistics normalised by g_max).
[[nodiscard]] inline power_law_drift pcm_drift(double g_max_us = 25.0) {
  power_law_drift m;
  m.g_max_us = g_max_us;
  return m;
}

/// Stuck-at fault fractions measured on a fabricated HfOx RRAM test chip:
/// 1.75% of the cells stuck at the high-resistance state (SA0, g_min) and
/// 9.04% at the low-resistance state (SA1, g_max). Source: L. Chen, J. Li,
/// Y. Chen, Q. Deng, J. Shen, X. Liang, L. Jiang, "Accelerator-friendly
/// neural-network training: learning variations and defects in RRAM
/// crossbar", DATE 2017, pp. 19-24 (the fractions are quoted from its
/// measurement section and reused by later fault-tolerance work).
[[nodiscard]] inline stuck_at_faults hfox_stuck_at() { return {0.0175, 0.0904}; }

}  // namespace rimc::presets
