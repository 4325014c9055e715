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
//   calibration_cost [--rho 0.2] [--tol 0.1] [--bits 8] [--slices 1] [--samples 10] [--steps 100]
//                    [--endurance 1e6] [--parallel-writes 1] [--deploy fp32|fp16|int8] [--csv calibration_cost.csv]

#include <rimc/cost.hpp>
#include <rimc/io/atomic_file.hpp>
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

sram_precision precision_of(std::string_view v) {
  if (v == "fp32") return sram_precision::fp32;
  if (v == "fp16") return sram_precision::fp16;
  if (v == "int8") return sram_precision::int8;
  throw value_error(detail::concat("calibration_cost: --deploy must be fp32, fp16 or int8, got '", v, "'"));
}

args parse(int argc, char** argv) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view k = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) throw value_error(detail::concat("calibration_cost: ", k, " needs a value"));
      return argv[++i];
    };
    if (k == "--rho") a.rho = std::atof(next());
    else if (k == "--tol") a.tol = std::atof(next());
    else if (k == "--bits") a.bits = std::atoi(next());
    else if (k == "--slices") a.slices = std::atoi(next());
    else if (k == "--samples") a.samples = std::atoll(next());
    else if (k == "--steps") a.steps = std::atoll(next());
    else if (k == "--endurance") a.endurance = std::atof(next());
    else if (k == "--parallel-writes") a.parallel_writes = std::atof(next());
    else if (k == "--deploy") a.deploy = precision_of(next());
    else if (k == "--csv") a.csv = next();
    else throw value_error(detail::concat("calibration_cost: unknown option '", k, "'"));
  }
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
