// What recovering a drifted RRAM network costs, strategy by strategy:
// re-programming every cell, re-programming only the drifted cells,
// backprop with in-RRAM updates, and DoRA adapters in SRAM (the paper's
// method), for ResNet-20 on Fashion-MNIST (1x28x28, rank 2) and ResNet-50 on
// ImageNet shapes (3x224x224, rank 4), 10 calibration samples, 100 Adam steps
// per layer, every conv and linear layer adapted. Energy, time, RRAM and
// SRAM writes, endurance, and DoRA's per-image inference overhead, from the
// layer shapes and the public figures of rimc::cost_model. Prints a table and
// writes it as CSV (network, strategy, quantity, value, unit).
//
//   calibration_cost [options]   (--help lists them with their defaults and units)

#include "cli.hpp"

#include <rimc/cost.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/nn/geometry.hpp>
#include <rimc/nn/models.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace rimc;

struct args {
  double rho = 0.2, tol = 0.1, endurance = 1e6, parallel_writes = 1;
  int bits = 8, slices = 1;
  std::int64_t samples = 10, steps = 100;
  sram_precision deploy = sram_precision::fp32;
  std::string csv = "calibration_cost.csv";
};

args parse(int argc, char** argv) {
  args a;
  std::string deploy = "fp32";
  cli::command_line cl("calibration_cost",
                       "What recovering a drifted RRAM network costs: re-programming, in-RRAM backprop, DoRA in SRAM.");
  cl.number("--rho", a.rho, "relative drift sigma / G", 0.0, 10.0);
  cl.number("--tol", a.tol, "relative error a cell tolerates before the selective fix re-programs it, > 0", 0.0, 10.0);
  cl.number("--bits", a.bits, "bits per cell", 1, 8);
  cl.number("--slices", a.slices, "cells per weight (bit slicing)", 1, 4);
  cl.number("--samples", a.samples, "calibration images N", std::int64_t{1}, std::int64_t{1} << 40);
  cl.number("--steps", a.steps, "Adam steps per layer", std::int64_t{0}, std::int64_t{1000000});
  cl.number("--endurance", a.endurance, "write cycles a cell survives, > 0", 0.0, 1e30, "cycles");
  cl.number("--parallel-writes", a.parallel_writes, "cells programmed at once, >= 1", 1.0, 1e12, "cells");
  cl.choice("--deploy", deploy, "adapter storage precision at inference", {"fp32", "fp16", "int8"});
  cl.text("--csv", a.csv, "where the table is written (CSV)");
  cl.check([&] {
    a.deploy = deploy == "fp16" ? sram_precision::fp16 : deploy == "int8" ? sram_precision::int8 : sram_precision::fp32;
    if (!(a.tol > 0)) throw cli::usage_error(detail::concat("--tol: must be > 0, got ", a.tol));
    if (!(a.endurance > 0)) throw cli::usage_error(detail::concat("--endurance: must be > 0, got ", a.endurance));
    if (a.bits * a.slices > 16) {
      throw cli::usage_error(detail::concat("--bits and --slices: bits * slices must be <= 16, got ", a.bits, " * ", a.slices));
    }
    cli::check_writable_file("--csv", a.csv);
  });
  cl.parse(argc, argv);
  return a;
}

std::string count(double v) {
  if (std::isinf(v)) return "unlimited";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

std::string number(double v) { return std::isinf(v) ? "inf" : detail::concat(v); }

}  // namespace

int main(int argc, char** argv) try {
  const args a = parse(argc, argv);
  device_config dev;
  dev.bits_per_cell = a.bits;
  dev.slices = a.slices;
  cost_model model;
  model.rram_endurance_cycles = a.endurance;
  model.rram_parallel_writes = a.parallel_writes;
  model.validate();

  struct job {
    const char* name;
    network net;
    std::int64_t rank;
  };
  std::vector<job> jobs;
  jobs.push_back({"resnet20_fmnist_1x28x28", resnet20(1, 10, 28), 2});
  jobs.push_back({"resnet50_imagenet_3x224x224", resnet50(1000, 224), 4});

  const double fraction = drifted_cell_fraction(a.rho, a.tol);
  std::printf("device: %d bits/cell (%d levels), %d slice(s), differential pair; write-verify %.1f pulses/cell "
              "on average\n",
              dev.bits_per_cell, 1 << dev.bits_per_cell, dev.slices, model.write_verify.mean_pulses(dev.bits_per_cell));
  std::printf("drift: relative %.2f, tolerance %.2f -> %.1f%% of cells re-programmed by the selective fix\n", a.rho,
              a.tol, 100 * fraction);
  std::printf("calibration: %lld samples, %lld Adam steps per layer (backprop baseline: %lld steps), every conv and "
              "linear layer adapted\n\n",
              static_cast<long long>(a.samples), static_cast<long long>(a.steps), static_cast<long long>(a.steps));

  std::string csv = "network,strategy,quantity,value,unit\n";
  auto emit = [&](const char* net, const std::string& strategy, const char* quantity, double v, const char* unit) {
    csv += detail::concat(net, ",", strategy, ",", quantity, ",", number(v), ",", unit, "\n");
  };

  for (auto& j : jobs) {
    calibration_workload w;
    w.rank = j.rank;
    w.samples = a.samples;
    w.steps_per_layer = a.steps;
    w.backprop_steps = a.steps;
    w.drifted_fraction = fraction;
    w.deploy_precision = a.deploy;
    const auto layers = layer_geometries(j.net);
    auto rep = compare_calibration_costs(layers, layers, dev, model, w);
    calibration_workload wg = w;
    wg.compute = calibration_compute::cheaper;
    auto gram = dora_sram_cost(layers, dev, model, wg);
    gram.strategy = "dora_sram_gram";
    rep.strategies.push_back(gram);

    std::printf("%s: %zu crossbar layers, %.4g weights, %.4g cells; rank %lld adapters: %lld values (%.2f%% of "
                "the weights)\n",
                j.name, layers.size(), static_cast<double>(rep.rram_weights), rep.rram_cells,
                static_cast<long long>(j.rank), static_cast<long long>(rep.adapter_parameters),
                rep.adapter_share_percent());
    std::printf("  %-18s %11s %11s %11s %11s %11s %13s %13s %13s\n", "strategy", "energy_J", "time_s",
                "rram_writes", "sram_bits_w", "digital_MAC", "cycles/cell", "calibs(RRAM)", "calibs(SRAM)");
    for (const auto& s : rep.strategies) {
      std::printf("  %-18s %11.3g %11.3g %11.3g %11.3g %11.3g %13.3g %13s %13s\n", s.strategy.c_str(), s.energy_j,
                  s.latency_s, s.rram_writes, s.sram_bits_written, s.digital_macs, s.rram_cycles_per_cell,
                  count(s.calibrations_survivable).c_str(), count(s.sram_calibrations_survivable).c_str());
      emit(j.name, s.strategy, "energy", s.energy_j, "J");
      emit(j.name, s.strategy, "latency", s.latency_s, "s");
      emit(j.name, s.strategy, "rram_writes", s.rram_writes, "cells");
      emit(j.name, s.strategy, "rram_pulses", s.rram_pulses, "pulses");
      emit(j.name, s.strategy, "sram_bits_written", s.sram_bits_written, "bits");
      emit(j.name, s.strategy, "digital_macs", s.digital_macs, "MACs");
      emit(j.name, s.strategy, "rram_cycles_per_cell", s.rram_cycles_per_cell, "cycles");
      emit(j.name, s.strategy, "calibrations_survivable", s.calibrations_survivable, "calibrations");
      emit(j.name, s.strategy, "sram_writes_per_bit", s.sram_writes_per_bit, "writes");
      emit(j.name, s.strategy, "sram_calibrations_survivable", s.sram_calibrations_survivable, "calibrations");
    }
    const auto& o = rep.overhead;
    std::printf("  inference overhead of the adapters per image: %.4g extra MACs on %.4g crossbar MACs (%.2f%%), "
                "%.4g SRAM bits read; %.3g J on %.3g J of crossbar energy (%.1f%%)\n\n",
                o.adapter_macs, o.crossbar_macs, 100 * o.mac_share, o.sram_bits_read, o.adapter_energy_j,
                o.crossbar_energy_j, 100 * o.energy_share);
    const std::string inf_name = "dora_inference_per_image";
    emit(j.name, inf_name, "adapter_macs", o.adapter_macs, "MACs");
    emit(j.name, inf_name, "crossbar_macs", o.crossbar_macs, "MACs");
    emit(j.name, inf_name, "mac_share", o.mac_share, "ratio");
    emit(j.name, inf_name, "sram_bits_read", o.sram_bits_read, "bits");
    emit(j.name, inf_name, "adapter_energy", o.adapter_energy_j, "J");
    emit(j.name, inf_name, "crossbar_energy", o.crossbar_energy_j, "J");
    emit(j.name, inf_name, "energy_share", o.energy_share, "ratio");
  }
  write_file_atomically(a.csv, [&](atomic_writer& out) { out.write(csv); });
  std::printf("wrote %s\n", std::filesystem::absolute(a.csv).c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
