// Where the weight error of a chip with stuck cells comes from: the shipped
// ResNet-20 (folded) deployed on the relative-drift device of the examples
// (0-40 uS differential pairs, physical drift bounds) with the HfOx stuck-at
// preset (1.75% SA0, 9.04% SA1 per device), against the same chip without
// faults. Each weight's pair is healthy, has an SA0 device or has an SA1
// device; for each class the table gives its share of the weights and of
// the error energy sum (w_chip - w_ideal)^2, split into the programming
// error (before drift) and the drift error (after drift, against the
// programmed weights), for relative drift 0 and 0.2, without fault-aware
// programming, with it, and with it and fault-aware row order. "wrong sign"
// counts the SA1 pairs whose weight has the sign the pair cannot represent: with g_min = 0 a pair whose
// positive device sits at g_max reads g_max - G- >= 0 whatever G- is.
//
//   build/release/bench/fault_budget

#include <rimc/crossbar.hpp>
#include <rimc/device.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>

namespace {

using namespace rimc;

struct classes {
  double weights[3] = {}, programming[3] = {}, drift[3] = {}, energy = 0, wrong_sign = 0;
};

std::pair<network, analog_deployment<>> deployed(bool faults, bool aware, bool rows) {
  network net = resnet20(1, 10, 28);
  net.load(RIMC_MODEL_DIR "/resnet20_fmnist.safetensors");
  net.fold_batch_norm();
  analog_options opt;
  opt.device.g_max_us = 40.0;
  opt.device.g_min_us = 0.0;
  opt.device.bounds = drift_bounds::physical;
  if (faults) opt.device.faults = presets::hfox_stuck_at();
  opt.device.fault_aware_programming = aware;
  opt.device.fault_aware_row_order = rows;
  auto chip = deploy_analog(net, opt);
  return {std::move(net), std::move(chip)};
}

classes measure(double rho, bool aware, bool rows) {
  auto [ideal_net, ideal] = deployed(false, false, false);
  auto [chip_net, chip] = deployed(true, aware, rows);
  std::map<std::string, Tensor> w_ideal, w_programmed;
  ideal.for_each([&](const std::string& name, const auto& a) { w_ideal[name] = a.array().effective_weights(); });
  chip.for_each([&](const std::string& name, const auto& a) { w_programmed[name] = a.array().effective_weights(); });
  chip.drift_to(relative_drift{}, drift_level{rho}, 1);
  classes k;
  chip.for_each([&](const std::string& name, const auto& a) {
    const Tensor wd = a.array().effective_weights();
    const Tensor& wp = w_programmed[name];
    const Tensor& wi = w_ideal[name];
    const auto O = wd.dim(1);
    for (const auto& t : a.array().tiles())
      for (std::int64_t r = 0; r < t.rows(); ++r)
        for (std::int64_t c = 0; c < t.cols(); ++c) {
          int cls = 0, sa1_device = -1;
          for (int d = 0; d < 2; ++d) {
            const auto f = t.fault(r, c, 0, d);
            if (f == cell_fault::sa1) {
              cls = 2;
              sa1_device = d;
            } else if (f == cell_fault::sa0 && cls == 0) {
              cls = 1;
            }
          }
          const auto i = (t.row0() + r) * O + t.col0() + c;
          const double e_prog = wp[i] - wi[i], e_drift = wd[i] - wp[i];
          k.weights[cls] += 1;
          k.programming[cls] += e_prog * e_prog;
          k.drift[cls] += e_drift * e_drift;
          k.energy += static_cast<double>(wi[i]) * wi[i];
          // device 0 adds, device 1 subtracts: an SA1 device 0 allows w >= 0, an SA1 device 1 w <= 0
          if (sa1_device >= 0 && (sa1_device == 0 ? wi[i] < 0 : wi[i] > 0)) k.wrong_sign += 1;
        }
  });
  return k;
}

}  // namespace

int main() {
  std::printf("| drift rho | fault-aware | pair | weights | programming error | drift error | error / weight energy |\n");
  std::printf("| ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
  const char* names[3] = {"healthy", "an SA0 device", "an SA1 device"};
  const char* modes[3] = {"no", "programming", "programming + row order"};
  for (const double rho : {0.0, 0.2})
    for (int mode = 0; mode < 3; ++mode) {
      const classes k = measure(rho, mode > 0, mode > 1);
      const char* aware = modes[mode];
      double n = 0, total = 0;
      for (int c = 0; c < 3; ++c) {
        n += k.weights[c];
        total += k.programming[c] + k.drift[c];
      }
      for (int c = 0; c < 3; ++c)
        std::printf("| %.1f | %s | %s | %.2f%% | %.2f%% | %.2f%% | %.4f |\n", rho, aware, names[c],
                    100 * k.weights[c] / n, 100 * k.programming[c] / total, 100 * k.drift[c] / total,
                    (k.programming[c] + k.drift[c]) / k.energy);
      std::printf("| %.1f | %s | all (%.0f weights; SA1 pairs of the wrong sign: %.2f%% of the weights) | 100%% | | | %.4f |\n",
                  rho, aware, n, 100 * k.wrong_sign / n, total / k.energy);
    }
  return 0;
}
