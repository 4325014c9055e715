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
// With --resnet50 S, the chip of bench_calibration's calibrate_resnet50_whole/S/N instead (what
// bench/peer/torch_resnet50.py --check must reproduce): ResNet-50 at S x S with torchvision's
// initialisation from bench::torchvision_init's draws, the same <node>.weight, <node>.lora_A and
// <node>.node_id, and
//   images       the N = --samples calibration images [N, 3, S, S]
//
//   rimc_dump out.safetensors [--rho 0.2] [--drift-seed 1] [--samples 10] [--seed 0] [--rank 2] [--calibrate]
//   rimc_dump out.safetensors --resnet50 S [--rho 0.2] [--drift-seed 1] [--samples 10] [--seed 0] [--rank 4]

#include <rimc/adapt/feature_kd.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/models.hpp>

#include "../bench_util.hpp"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

int main(int argc, char** argv) try {
  using namespace rimc;
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: rimc_dump out.safetensors [--resnet50 SIZE] [--rho R] [--drift-seed S] [--samples N] [--seed S] "
                 "[--rank R] [--calibrate]\n");
    return 2;
  }
  double rho = 0.2;
  std::uint64_t drift_seed = 1, seed = 0;
  std::int64_t samples = 10, rank = -1, resnet50_size = 0;
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
    else if (k == "--resnet50") resnet50_size = std::atoll(next());
    else throw value_error(detail::concat("unknown option ", k));
  }
  if (resnet50_size < 0 || (resnet50_size > 0 && resnet50_size < 32)) {
    throw value_error(detail::concat("--resnet50: the image size must be >= 32, got ", resnet50_size));
  }
  if (resnet50_size > 0 && calibrate) throw value_error("--calibrate dumps the ResNet-20 main job only, not --resnet50");
  if (rank < 0) rank = resnet50_size > 0 ? 4 : 2;  // bench_calibration's ResNet-50 runs rank 4, the main job 2
  // The ResNet-20 teacher of the main job, or bench_calibration's whole ResNet-50.
  const auto model = [&] {
    if (resnet50_size > 0) {
      network t = resnet50(1000, resnet50_size);
      bench::torchvision_init(t);
      t.fold_batch_norm();
      return t;
    }
    network t = resnet20(1, 10, 28);
    t.load(RIMC_MODEL_DIR "/resnet20_fmnist.safetensors");
    t.fold_batch_norm();
    return t;
  };
  network net = model();
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
  if (resnet50_size > 0) {  // bench_calibration's random images
    Tensor images(Shape{samples, 3, resnet50_size, resnet50_size});
    fill_uniform(images, counter_rng(13), -2, 2);
    out["images"] = images;
    save_safetensors(argv[1], out);
    std::printf("wrote %s (%zu tensors)\n", argv[1], out.size());
    return 0;
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
    const network teacher = model();
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
