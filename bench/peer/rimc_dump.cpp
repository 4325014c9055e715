// Writes what bench/peer/torch_calibrate.py must reproduce, so the peer can
// check that it runs the same experiment (its --check option):
//   <node>.weight    the drifted effective weights of every analog layer
//   <node>.lora_A    the initial lora_A of the layer's adapter
//   <node>.node_id   the node index (it seeds the drift and the adapter)
//   samples          the calibration image indices, as float
//   calibrated.<node>.{magnitude,lora_A,lora_B}   the adapters after calibration (with --calibrate)
//   logits       the calibrated chip's logits of the first 1000 test images (with --calibrate)
// for the main job's settings (relative drift rho, drift seed, g 0-40 uS, rank r, seed).
//
//   rimc_dump out.safetensors [--rho 0.2] [--drift-seed 1] [--samples 10] [--seed 0] [--rank 2] [--calibrate]

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

int main(int argc, char** argv) try {
  using namespace rimc;
  if (argc < 2) {
    std::fprintf(stderr, "usage: rimc_dump out.safetensors [--rho R] [--drift-seed S] [--samples N] [--seed S] [--rank R] [--calibrate]\n");
    return 2;
  }
  double rho = 0.2;
  std::uint64_t drift_seed = 1, seed = 0;
  std::int64_t samples = 10, rank = 2;
  bool calibrate = false;
  for (int i = 2; i < argc; ++i) {
    const std::string_view k = argv[i];
    auto next = [&] { return i + 1 < argc ? argv[++i] : throw value_error(detail::concat(k, " needs a value")); };
    if (k == "--rho") rho = std::atof(next());
    else if (k == "--drift-seed") drift_seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--samples") samples = std::atoll(next());
    else if (k == "--seed") seed = std::strtoull(next(), nullptr, 10);
    else if (k == "--rank") rank = std::atoll(next());
    else if (k == "--calibrate") calibrate = true;
    else throw value_error(detail::concat("unknown option ", k));
  }
  const std::string model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
  network net = resnet20(1, 10, 28);
  net.load(model);
  net.fold_batch_norm();
  const network teacher = [&] {
    network t = resnet20(1, 10, 28);
    t.load(model);
    t.fold_batch_norm();
    return t;
  }();
  analog_options opt;
  opt.device.g_min_us = 0.0;
  opt.device.g_max_us = 40.0;
  opt.program_seed = seed;
  auto chip = deploy_analog(net, opt);
  chip.drift_to(relative_drift{}, drift_level{rho}, drift_seed);

  std::map<std::string, Tensor> out;
  for (const auto& name : chip.names()) {
    const network_node& n = net.node(name);
    out[name + ".weight"] = n.layer->effective_weights();
    Tensor id(Shape{1});
    id[0] = static_cast<float>(net.id(name));
    out[name + ".node_id"] = id;
    dora_config dc;
    dc.rank = rank;
    dc.alpha = static_cast<double>(rank);
    dc.seed = seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(net.id(name) + 1));
    const dora_adapter a(*n.layer, dc);
    out[name + ".lora_A"] = a.lora_A();
  }
  const dataset train = load_mnist_like(fashion_mnist_dir, "train");
  const auto idx = sample_indices(train.size(), samples, seed);
  Tensor s(Shape{samples});
  for (std::int64_t i = 0; i < samples; ++i) s[i] = static_cast<float>(idx[static_cast<std::size_t>(i)]);
  out["samples"] = s;
  if (calibrate) {
    calibration_config cfg;
    cfg.rank = rank;
    cfg.seed = seed;
    const auto r = calibrate_feature_kd(teacher, net, train.subset(idx).images, cfg);
    for (const auto& [name, a] : r.adapters) {
      out["calibrated." + name + ".magnitude"] = a->adapter().magnitude();
      out["calibrated." + name + ".lora_A"] = a->adapter().lora_A();
      out["calibrated." + name + ".lora_B"] = a->adapter().lora_B();
    }
    out["logits"] = net.forward(load_mnist_like(fashion_mnist_dir, "test").batch(0, 1000));
  }
  save_safetensors(argv[1], out);
  std::printf("wrote %s (%zu tensors)\n", argv[1], out.size());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
