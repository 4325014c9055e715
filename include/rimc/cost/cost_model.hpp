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
/// and the digital unit (defaults: public figures, source and arithmetic beside
/// each; the list is docs/formulas.md, sec. 7).
///
/// Sources cited below by short name:
/// - Yang 2013: J. J. Yang, D. B. Strukov, D. R. Stewart, "Memristive devices for computing", Nature
///   Nanotechnology 8, 13-24 (2013), Table 1 "Comparison of memory and storage technologies" (device-level
///   figures taken from ITRS 2011; the caption warns that circuit-level overheads, not included, can dominate).
/// - NeuroSim V2.1: `Training_pytorch/NeuroSIM/Param.cpp` of `github.com/neurosim/DNN_NeuroSim_V2.1`, the tool of
///   X. Peng, S. Huang, H. Jiang, A. Lu, S. Yu, "DNN+NeuroSim V2.0: An End-to-End Benchmarking Framework for
///   Compute-in-Memory Accelerators for On-Chip Training", IEEE TCAD 40(11), 2306-2319 (2021).
/// - ISAAC: A. Shafiee, A. Nag, N. Muralimanohar, R. Balasubramonian, J. P. Strachan, M. Hu, R. S. Williams,
///   V. Srikumar, "ISAAC: A Convolutional Neural Network Accelerator with In-Situ Analog Arithmetic in
///   Crossbars", ISCA 2016, pp. 14-26, Table I "ISAAC parameters" (32 nm; powers are per group of a kind
///   within one IMA) and sec. IV (one crossbar read, the pipeline cycle, takes 100 ns).
/// - Horowitz 2014: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
///   pp. 10-14, Fig. 1.1.9 "Rough energy costs for various operations in 45nm 0.9V".
struct cost_model {
  // --- RRAM ---------------------------------------------------------------
  /// Energy of one write pulse on one cell, pJ. Yang 2013, Table 1, memristor column, "Energy per bit":
  /// 0.1-3 pJ; 1 pJ lies inside that range (its log-midpoint is sqrt(0.1 x 3) = 0.55 pJ). Cross-check with
  /// NeuroSim V2.1's write pulse (`writeVoltage = 4` V, `writePulseWidth = 50e-9` s): V^2 / R * t on
  /// Ron = 240 kOhm is 16 / 240e3 * 50e-9 J = 3.3 pJ, on Roff = 24 MOhm 0.033 pJ.
  double rram_write_energy_pj_per_pulse = 1.0;
  /// Duration of one write pulse, ns. NeuroSim V2.1, Param.cpp: `writePulseWidth = 50e-9` (s), i.e. 50 ns.
  double rram_write_latency_ns_per_pulse = 50.0;
  /// Energy of reading one cell once (an MVM read or a verify read), pJ. Derived from NeuroSim V2.1,
  /// Param.cpp: `readVoltage = 0.5` (V), `readPulseWidth = 10e-9` (s), `resistanceOn = 240e3` (Ohm),
  /// `resistanceOff = 240e3*100`: V^2 / Ron * t = 0.25 / 240e3 * 10e-9 J = 0.0104 pJ (on-state, the worst
  /// case; the off-state read is 100 times less).
  double rram_read_energy_pj_per_cell = 0.0104;
  /// Duration of one (verify) read, ns. NeuroSim V2.1, Param.cpp: `readPulseWidth = 10e-9` (s), i.e. 10 ns
  /// (Yang 2013, Table 1 gives a memristor read time under 10 ns).
  double rram_read_latency_ns = 10.0;
  /// Write cycles a cell survives, cycles. Published range about 1e6-1e12: Yang 2013, Table 1, memristor
  /// "Endurance (cycles)" 1e12 (a prototype-device figure); P. Huang et al., "Analytic model of endurance
  /// degradation and its practical applications for operation scheme optimization in metal oxide based RRAM",
  /// IEDM 2013, reach 1e6 cycles for all four levels of a multi-level HfOx cell. The default takes that
  /// conservative, multi-level end.
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
  /// Energy of one ADC conversion (one bit line, one slice, one MVM), pJ. ISAAC, Table I: per IMA, 8 ADCs of
  /// 8 bits, 1.2 GSps, 16 mW together, i.e. 2 mW each; sec. V runs each at 1.28 GSps (the 128 bit lines of a
  /// crossbar converted within one 100 ns cycle). 2e-3 W / 1.28e9 /s = 1.56 pJ per conversion (at the table's
  /// 1.2 GSps, 1.67 pJ). The earlier default was 2 pJ (that figure rounded up).
  double adc_energy_pj_per_conversion = 1.56;
  /// Energy of one DAC conversion (one word line, one MVM), pJ. ISAAC, Table I: per IMA, 8 x 128 1-bit DACs
  /// in 4 mW, i.e. 3.9 uW each; a DAC applies one input bit per 100 ns crossbar cycle (secs. IV and V), so a
  /// 1-bit conversion costs 3.9e-6 W * 100e-9 s = 0.39 pJ and an 8-bit input streamed bit-serially
  /// 8 x 0.39 = 3.1 pJ, the default. (The earlier default, 0.03 pJ, counted the 8 bits at
  /// 4 mW / 1024 / 1.28e9 /s = 3 fJ each, as if the DACs switched at the ADC's rate.) The ADC count stays
  /// one conversion per bit line and MVM: a bit-serial design converts once per input bit, so ADC energy
  /// is a lower bound there.
  double dac_energy_pj_per_conversion = 3.1;

  // --- SRAM ---------------------------------------------------------------
  /// Energy to write one SRAM bit, pJ. An adapter store accessed word by word is an SRAM array: Horowitz
  /// 2014, Fig. 1.1.9, a 64-bit access to an 8 KB cache is 10 pJ, i.e. 10 / 64 = 0.156 pJ/bit, the default
  /// (32 KB: 20 pJ, 0.31 pJ/bit; 1 MB: 100 pJ, 1.6 pJ/bit: a larger store costs more per bit). The earlier
  /// default, 0.5 fJ/bit, was the SRAM device figure of Yang 2013, Table 1 ("Energy per bit" 0.0005 pJ, from
  /// ITRS 2011), which leaves out decoders, bit lines and sense amplifiers: about 300 times less.
  double sram_write_energy_pj_per_bit = 0.156;
  /// Energy to read one SRAM bit, pJ. Horowitz 2014, Fig. 1.1.9: an 8 KB array read is 10 pJ per 64 bits
  /// = 0.156 pJ/bit (see `sram_write_energy_pj_per_bit`; a write is taken to cost as much as a read).
  double sram_read_energy_pj_per_bit = 0.156;
  /// Latency of one SRAM access of `sram_word_bits` bits, ns. Yang 2013, Table 1: SRAM read and write
  /// time 0.1-0.3 ns; rounded up to 1 ns, one access per cycle of a 1 GHz digital unit (as `mac_latency_ns`).
  double sram_latency_ns = 1.0;
  /// Bits per SRAM access, bits. Assumption: a 64-bit word (the access width of Horowitz 2014's cache figures).
  double sram_word_bits = 64.0;
  /// Write cycles an SRAM bit survives, cycles. Yang 2013, Table 1: SRAM "Endurance (cycles)" 1e16.
  double sram_endurance_cycles = 1e16;

  // --- Digital unit -------------------------------------------------------
  /// Energy of one fp32 multiply-accumulate, pJ. Horowitz 2014, Fig. 1.1.9 (45 nm, 0.9 V): 32-bit FP
  /// multiply 3.7 pJ + 32-bit FP add 0.9 pJ = 4.6 pJ (a MAC counted as one multiply and one add).
  double mac_energy_pj_fp32 = 4.6;
  /// Energy of one fp16 MAC (16-bit accumulate), pJ. Horowitz 2014, Fig. 1.1.9: 16-bit FP multiply
  /// 1.1 pJ + 16-bit FP add 0.4 pJ = 1.5 pJ.
  double mac_energy_pj_fp16 = 1.5;
  /// Energy of one int8 MAC (32-bit accumulate), pJ. Horowitz 2014, Fig. 1.1.9: 8-bit integer multiply
  /// 0.2 pJ + 32-bit integer add 0.1 pJ = 0.3 pJ.
  double mac_energy_pj_int8 = 0.3;
  /// Time of one MAC, ns. Assumption: one MAC unit at 1 GHz (NeuroSim V2.1's `clkFreq = 1e9` is the same
  /// clock; Horowitz 2014 gives energies only). Scale it by your unit's parallelism.
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
