#pragma once
/// \file
/// rimc::cost_model: the energy, latency and endurance figures of an RRAM
/// chip with an SRAM-backed digital unit, used to put numbers on the cost of
/// each calibration strategy (see calibration_cost.hpp). Every default is an
/// order-of-magnitude public figure; its source is named beside it. Override
/// any field with your chip's numbers; validate() rejects NaN, infinite,
/// negative and zero values, naming the field.

#include <rimc/core/error.hpp>

#include <cmath>
#include <cstdint>
#include <string_view>
#include <vector>

namespace rimc {

/// How many pulses a multi-level write-verify programming takes.
///
/// Default (formula): a cell is reset, then climbs to its target level with
/// incremental-step pulses, each followed by a verify read, one pulse per
/// level climbed (ISPP-style write-verify; docs/formulas.md, sec. 7: multi-level
/// programming needs write-verify loops, many pulses per cell). With the
/// target uniform over L = 2^bits levels the mean is
///
///     mean_pulses(L) = base_pulses + pulses_per_level * (L - 1) / 2,
///
/// which grows with the number of levels. A measured distribution replaces
/// the formula: `pulse_histogram[i]` is the probability that a programming
/// takes i + 1 pulses (it must sum to 1); its mean is then used for every
/// level count.
struct write_verify_model {
  double base_pulses = 1.0;             ///< pulses at level 0 (the reset / first set pulse), pulses
  double pulses_per_level = 1.0;        ///< extra pulses per level climbed, pulses
  std::vector<double> pulse_histogram;  ///< optional: P(programming takes i + 1 pulses); overrides the formula

  /// Mean pulses to program one cell with 2^bits_per_cell levels, pulses.
  [[nodiscard]] double mean_pulses(int bits_per_cell) const {
    if (!pulse_histogram.empty()) {
      double m = 0;
      for (std::size_t i = 0; i < pulse_histogram.size(); ++i) m += static_cast<double>(i + 1) * pulse_histogram[i];
      return m;
    }
    if (bits_per_cell < 1 || bits_per_cell > 16) {
      throw value_error(detail::concat("write_verify_model: bits_per_cell must be in [1, 16], got ", bits_per_cell));
    }
    const double levels = std::ldexp(1.0, bits_per_cell);
    return base_pulses + pulses_per_level * (levels - 1.0) / 2.0;
  }

  /// Pulses to move a programmed cell by `levels_moved` levels (an in-place update), pulses.
  [[nodiscard]] double pulses_to_move(double levels_moved) const noexcept {
    return base_pulses + pulses_per_level * levels_moved;
  }

  /// Throws value_error naming the first invalid field.
  void validate() const {
    if (!std::isfinite(base_pulses) || base_pulses < 1) {
      throw value_error(detail::concat("write_verify_model: base_pulses must be >= 1, got ", base_pulses));
    }
    if (!std::isfinite(pulses_per_level) || pulses_per_level < 0) {
      throw value_error(detail::concat("write_verify_model: pulses_per_level must be >= 0, got ", pulses_per_level));
    }
    double sum = 0;
    for (std::size_t i = 0; i < pulse_histogram.size(); ++i) {
      const double p = pulse_histogram[i];
      if (!std::isfinite(p) || p < 0) {
        throw value_error(detail::concat("write_verify_model: pulse_histogram[", i, "] must be >= 0, got ", p));
      }
      sum += p;
    }
    if (!pulse_histogram.empty() && std::abs(sum - 1.0) > 1e-9) {
      throw value_error(detail::concat("write_verify_model: pulse_histogram must sum to 1, got ", sum));
    }
  }
};

/// Energy, latency and endurance of the RRAM array, its periphery, the SRAM
/// and the digital unit (defaults: public figures, source beside each).
struct cost_model {
  // --- RRAM ---------------------------------------------------------------
  /// Energy of one write pulse on one cell, pJ. ITRS 2011 (docs/formulas.md, sec. 7): about
  /// 0.1-3 pJ per pulse-bit; 1 pJ is the middle of that range.
  double rram_write_energy_pj_per_pulse = 1.0;
  /// Duration of one write pulse, ns. NeuroSim V2.1 default write pulse: 50 ns (docs/formulas.md, sec. 7).
  double rram_write_latency_ns_per_pulse = 50.0;
  /// Energy of reading one cell once (an MVM read or a verify read), pJ.
  /// NeuroSim V2.1 read (docs/formulas.md, sec. 7): 0.5 V for 10 ns on Ron = 240 kOhm,
  /// V^2 / Ron * t = 0.25 / 240e3 * 10e-9 J = 0.0104 pJ (on-state, the worst case).
  double rram_read_energy_pj_per_cell = 0.0104;
  /// Duration of one (verify) read, ns. NeuroSim V2.1 read pulse: 10 ns (docs/formulas.md, sec. 7).
  double rram_read_latency_ns = 10.0;
  /// Write cycles a cell survives, cycles. Published ranges: about 1e6-1e12; the
  /// conservative end, typical of multi-level HfOx cells.
  double rram_endurance_cycles = 1e6;
  /// True: each write pulse uses one endurance cycle (each pulse switches the
  /// cell; conservative); false: each whole write-verify programming uses one.
  bool endurance_per_pulse = true;
  /// Cells programmed at the same time (each runs its own verify loop), cells.
  /// Assumption: 1 (one write-verify circuit per chip); set it to your
  /// chip's number of parallel write drivers.
  double rram_parallel_writes = 1.0;
  /// Devices per weight and slice: 2 for a differential pair (G+, G-), as
  /// rimc's default mapping and TiledArray::rram_writes() count them; 1 for an offset mapping.
  int devices_per_weight = 2;
  /// Write-verify pulses per programming (see write_verify_model).
  write_verify_model write_verify{};
  /// Crossbar tile size (word lines x bit lines); rimc's Tile default is 256 x 256.
  std::int64_t tile_rows = 256;
  std::int64_t tile_cols = 256;  ///< bit lines per tile

  // --- Periphery ----------------------------------------------------------
  /// Energy of one ADC conversion (one bit line, one slice, one MVM), pJ.
  /// ISAAC (Shafiee et al., ISCA 2016) lists 8 ADCs of
  /// 8 bits at 1.28 GS/s in 16 mW, i.e. about 1.6 pJ per conversion; rounded to 2.
  double adc_energy_pj_per_conversion = 2.0;
  /// Energy of one DAC conversion (one word line, one MVM), pJ.
  /// ISAAC's 1-bit DACs (8 x 128 in 4 mW at 1.28 GHz) are about
  /// 4 fJ per bit; 0.03 pJ covers an 8-bit input streamed bit-serially.
  double dac_energy_pj_per_conversion = 0.03;

  // --- SRAM ---------------------------------------------------------------
  /// Energy to write one SRAM bit, pJ. About 0.5 fJ/bit (docs/formulas.md, sec. 7).
  double sram_write_energy_pj_per_bit = 5e-4;
  /// Energy to read one SRAM bit, pJ. The public figure is one for SRAM
  /// access; a read is taken to cost as much as a write (0.5 fJ/bit).
  double sram_read_energy_pj_per_bit = 5e-4;
  /// Latency of one SRAM access of `sram_word_bits` bits, ns. Sub-ns in the public figures; rounded up to 1 ns.
  double sram_latency_ns = 1.0;
  /// Bits per SRAM access, bits. Assumption: a 64-bit word.
  double sram_word_bits = 64.0;
  /// Write cycles an SRAM bit survives, cycles. About 1e16 (docs/formulas.md, sec. 7).
  double sram_endurance_cycles = 1e16;

  // --- Digital unit -------------------------------------------------------
  /// Energy of one fp32 multiply-accumulate, pJ. Horowitz,
  /// "Computing's energy problem", ISSCC 2014 (45 nm): fp32 mult 3.7 + add 0.9 pJ.
  double mac_energy_pj_fp32 = 4.6;
  /// Energy of one fp16 MAC, pJ. Horowitz ISSCC 2014: fp16 mult 1.1 + add 0.4 pJ.
  double mac_energy_pj_fp16 = 1.5;
  /// Energy of one int8 MAC (32-bit accumulate), pJ. Horowitz ISSCC 2014: int8 mult 0.2 + int32 add 0.1 pJ.
  double mac_energy_pj_int8 = 0.3;
  /// Time of one MAC, ns. Assumption: one MAC unit at 1 GHz (scale it by your unit's parallelism).
  double mac_latency_ns = 1.0;

  /// Throws value_error "cost_model: <field> must be > 0, got <value>" for the first invalid field.
  void validate() const {
    positive("rram_write_energy_pj_per_pulse", rram_write_energy_pj_per_pulse);
    positive("rram_write_latency_ns_per_pulse", rram_write_latency_ns_per_pulse);
    positive("rram_read_energy_pj_per_cell", rram_read_energy_pj_per_cell);
    positive("rram_read_latency_ns", rram_read_latency_ns);
    positive("rram_endurance_cycles", rram_endurance_cycles);
    positive("rram_parallel_writes", rram_parallel_writes);
    if (devices_per_weight != 1 && devices_per_weight != 2) {
      throw value_error(detail::concat("cost_model: devices_per_weight must be 1 or 2, got ", devices_per_weight));
    }
    write_verify.validate();
    positive("tile_rows", static_cast<double>(tile_rows));
    positive("tile_cols", static_cast<double>(tile_cols));
    positive("adc_energy_pj_per_conversion", adc_energy_pj_per_conversion);
    positive("dac_energy_pj_per_conversion", dac_energy_pj_per_conversion);
    positive("sram_write_energy_pj_per_bit", sram_write_energy_pj_per_bit);
    positive("sram_read_energy_pj_per_bit", sram_read_energy_pj_per_bit);
    positive("sram_latency_ns", sram_latency_ns);
    positive("sram_word_bits", sram_word_bits);
    positive("sram_endurance_cycles", sram_endurance_cycles);
    positive("mac_energy_pj_fp32", mac_energy_pj_fp32);
    positive("mac_energy_pj_fp16", mac_energy_pj_fp16);
    positive("mac_energy_pj_int8", mac_energy_pj_int8);
    positive("mac_latency_ns", mac_latency_ns);
  }

 private:
  static void positive(std::string_view field, double v) {
    if (!(v > 0) || !std::isfinite(v)) throw value_error(detail::concat("cost_model: ", field, " must be > 0, got ", v));
  }
};

}  // namespace rimc
