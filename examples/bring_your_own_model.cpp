// Bring your own model: the whole rimc flow on a network assembled here, node
// by node, under the names of its PyTorch state_dict (the CIFAR-style
// ResNet-20 of tools/train_teacher.py, whose trained weights ship in
// examples/models/), as you would assemble yours:
//
//   1. build the graph by state_dict names and load the weights (safetensors);
//   2. fold batch norm and program the weights onto RRAM crossbars;
//   3. let the chip drift (CMO-ReRAM relaxation, one week);
//   4. calibrate rank-2 DoRA adapters from 10 images, layer by layer;
//   5. save them as PEFT files, attach them to a freshly programmed copy of
//      the chip (the device), and evaluate both.
//
// `--help` lists the flags.

#include "cli.hpp"

#include <rimc/dora.hpp>

#include <cstdio>
#include <filesystem>
#include <string>

namespace {

using namespace rimc;

/// conv (no bias) -> batch norm, under torchvision's names; returns the batch norm.
int conv_bn(network& net, const std::string& conv, const std::string& bn, int in, std::int64_t out, std::int64_t k,
            std::int64_t stride) {
  const int c = net.conv2d(conv, in, out, k, {.stride = {stride, stride}, .padding = {k / 2, k / 2}});
  return net.batch_norm(bn, c);
}

/// ResNet-20 for 1 x 28 x 28 images: conv1/bn1, three stages of three basic blocks (16, 32, 64
/// channels, stride 2 and a 1x1 projection "downsample" where the shape changes), pooling, fc.
network my_model() {
  network net;
  int x = net.input(Shape{1, 28, 28});
  x = net.relu("relu", conv_bn(net, "conv1", "bn1", x, 16, 3, 1));
  std::int64_t channels = 16;
  for (int stage = 1; stage <= 3; ++stage) {
    const std::int64_t width = 16 << (stage - 1);
    for (int block = 0; block < 3; ++block) {
      const std::string p = "layer" + std::to_string(stage) + "." + std::to_string(block) + ".";
      const std::int64_t stride = (block == 0 && stage > 1) ? 2 : 1;
      int y = net.relu(p + "relu1", conv_bn(net, p + "conv1", p + "bn1", x, width, 3, stride));
      y = conv_bn(net, p + "conv2", p + "bn2", y, width, 3, 1);
      const int shortcut =
          stride != 1 || channels != width ? conv_bn(net, p + "downsample.0", p + "downsample.1", x, width, 1, stride) : x;
      x = net.relu(p + "relu2", net.add(p + "add", y, shortcut));
      channels = width;
    }
  }
  x = net.flatten("flatten", net.global_avg_pool("avgpool", x));
  net.linear("fc", x, 10);
  return net;
}

}  // namespace

int main(int argc, char** argv) try {
  std::int64_t test_images = 10000;
  int threads = 2;
  std::string model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors", data = fashion_mnist_dir.string(),
              out = "my_model_adapter";
  cli::command_line cl("bring_your_own_model", "The whole rimc flow on a network assembled by state_dict names.");
  cl.number("--test-images", test_images, "test images evaluated", std::int64_t{1}, std::int64_t{10000});
  cl.threads(threads);
  cl.text("--model", model, "the weights (safetensors, state_dict names)");
  cl.text("--data", data, "the Fashion-MNIST directory");
  cl.text("--out", out, "where the adapters are saved (PEFT files)");
  cl.check([&] {
    cli::check_input_file("--model", model);
    cli::check_input_dir("--data", data);
    cli::check_writable_dir("--out", out);
  });
  cl.parse(argc, argv);
  set_num_threads(threads);

  // 1. The model, by name; the file's keys must match the nodes' parameters exactly.
  network teacher = my_model();
  teacher.load(model);
  teacher.fold_batch_norm();  // 2a. BN into the convolutions (the crossbars hold the folded weights)

  // 2b-3. The chip: every conv and linear layer on 256 x 256 crossbars (CMO ReRAM cells, 0.2% write-verify
  // noise), then one week of relaxation. The same seeds give the same chip, so the device below is this chip.
  auto program = [&](network& chip) {
    analog_options opt;
    opt.device = presets::cmo_reram_device();
    opt.program_seed = 3;
    auto crossbars = deploy_analog(chip, opt);
    crossbars.drift_to(presets::cmo_reram_drift(), seconds{7 * 86400.0}, /*seed=*/5);
  };
  network chip = teacher;
  program(chip);

  const dataset train = load_mnist_like(data, "train");
  dataset test = load_mnist_like(data, "test");
  if (test_images < test.size()) {
    std::vector<std::int64_t> first(static_cast<std::size_t>(test_images));
    for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<std::int64_t>(i);
    test = test.subset(first);
  }
  auto top1 = [&](const network& n) { return 100 * evaluate(n, test, 50, false).top1; };
  const double ideal = top1(teacher), drifted = top1(chip);

  // 4. Calibration: rank-2 DoRA adapters, 10 training images, layer-wise feature distillation.
  const dataset calib = train.subset(sample_indices(train.size(), 10, /*seed=*/0));
  calibration_config cfg;
  cfg.rank = 2;
  const calibration_result result = calibrate_feature_kd(teacher, chip, calib.images, cfg);
  const double calibrated = top1(chip);

  // 5. Save (PEFT files), then the device: a fresh copy programmed and drifted alike, the adapters attached from disk.
  save_peft_adapter(out, chip, "resnet20-fashion-mnist");
  network device = teacher;
  program(device);
  const auto attached = attach_peft_adapter(device, out);
  const double on_device = top1(device);

  std::printf("ResNet-20 assembled by state_dict names, %lld test images\n\n", static_cast<long long>(test.size()));
  std::printf("%-46s %8s\n", "setting", "top-1 %");
  std::printf("%-46s %8.2f\n", "ideal (digital, batch norm folded)", ideal);
  std::printf("%-46s %8.2f\n", "on crossbars after one week (CMO ReRAM)", drifted);
  std::printf("%-46s %8.2f\n", "with DoRA adapters (calibrated, 10 images)", calibrated);
  std::printf("%-46s %8.2f\n", "device: adapters attached from PEFT files", on_device);
  std::printf("\n%zu adapters, %lld values (%.2f%% of the RRAM weights), %zu SRAM bytes; RRAM writes during "
              "calibration: %llu\nsaved to %s\n",
              attached.size(), static_cast<long long>(result.footprint.parameters), result.footprint.share_percent(),
              result.footprint.sram_bytes, static_cast<unsigned long long>(result.rram_writes),
              std::filesystem::absolute(out).c_str());
  return result.rram_writes == 0 && on_device == calibrated && calibrated > drifted ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bring_your_own_model: %s\n", e.what());
  return 1;
}
