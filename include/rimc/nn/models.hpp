#pragma once
/// \file
/// Model builders with PyTorch's module names and shapes, so a state_dict
/// exported to safetensors loads directly: ResNet-20 (He et al. 2016, CIFAR
/// variant, as tools/train_teacher.py defines it) and torchvision's ResNet-50.

#include <rimc/nn/network.hpp>

#include <string>

namespace rimc {

namespace detail {
/// conv -> bn (-> relu) with torchvision's names; returns the last node.
inline int conv_bn(network& net, const std::string& prefix, const std::string& conv, const std::string& bn, int in,
                   std::int64_t out, std::int64_t k, std::int64_t stride, std::int64_t pad) {
  const conv2d_params p{{stride, stride}, {pad, pad}};
  const int c = net.conv2d(prefix + conv, in, out, k, p);
  return net.batch_norm(prefix + bn, c);
}
}  // namespace detail

/// ResNet-20 for [in_channels, size, size] images: conv1/bn1 (16 channels),
/// layer1..3 of 3 basic blocks (16, 32, 64 channels; stride 2 at the start of
/// layers 2 and 3, with a 1x1 conv + bn "downsample" projection), global
/// average pooling, fc.
[[nodiscard]] inline network resnet20(std::int64_t in_channels = 1, std::int64_t num_classes = 10,
                                      std::int64_t size = 28) {
  network net;
  int x = net.input(Shape{in_channels, size, size});
  x = detail::conv_bn(net, "", "conv1", "bn1", x, 16, 3, 1, 1);
  x = net.relu("relu", x);
  std::int64_t cin = 16;
  for (int stage = 0; stage < 3; ++stage) {
    const std::int64_t cout = 16 << stage;
    for (int b = 0; b < 3; ++b) {
      const std::string pre = "layer" + std::to_string(stage + 1) + "." + std::to_string(b) + ".";
      const std::int64_t stride = (b == 0 && stage > 0) ? 2 : 1;
      int y = detail::conv_bn(net, pre, "conv1", "bn1", x, cout, 3, stride, 1);
      y = net.relu(pre + "relu1", y);
      y = detail::conv_bn(net, pre, "conv2", "bn2", y, cout, 3, 1, 1);
      int shortcut = x;
      if (stride != 1 || cin != cout) shortcut = detail::conv_bn(net, pre, "downsample.0", "downsample.1", x, cout, 1, stride, 0);
      x = net.add(pre + "add", y, shortcut);
      x = net.relu(pre + "relu2", x);
      cin = cout;
    }
  }
  x = net.global_avg_pool("avgpool", x);
  x = net.flatten("flatten", x);
  net.linear("fc", x, num_classes);
  return net;
}

/// torchvision's ResNet-50 (bottleneck blocks 3-4-6-3, stride on the 3x3 conv)
/// for [3, size, size] images.
[[nodiscard]] inline network resnet50(std::int64_t num_classes = 1000, std::int64_t size = 224) {
  network net;
  int x = net.input(Shape{3, size, size});
  x = detail::conv_bn(net, "", "conv1", "bn1", x, 64, 7, 2, 3);
  x = net.relu("relu", x);
  x = net.max_pool("maxpool", x, pool2d_params{pool_kind::max, {3, 3}, {2, 2}, {1, 1}});
  const int blocks[] = {3, 4, 6, 3};
  for (int stage = 0; stage < 4; ++stage) {
    const std::int64_t width = 64 << stage, cout = width * 4;
    for (int b = 0; b < blocks[stage]; ++b) {
      const std::string pre = "layer" + std::to_string(stage + 1) + "." + std::to_string(b) + ".";
      const std::int64_t stride = (b == 0 && stage > 0) ? 2 : 1;
      int y = detail::conv_bn(net, pre, "conv1", "bn1", x, width, 1, 1, 0);
      y = net.relu(pre + "relu1", y);
      y = detail::conv_bn(net, pre, "conv2", "bn2", y, width, 3, stride, 1);
      y = net.relu(pre + "relu2", y);
      y = detail::conv_bn(net, pre, "conv3", "bn3", y, cout, 1, 1, 0);
      int shortcut = x;
      if (b == 0) shortcut = detail::conv_bn(net, pre, "downsample.0", "downsample.1", x, cout, 1, stride, 0);
      x = net.add(pre + "add", y, shortcut);
      x = net.relu(pre + "relu3", x);
    }
  }
  x = net.global_avg_pool("avgpool", x);
  x = net.flatten("flatten", x);
  net.linear("fc", x, num_classes);
  return net;
}

}  // namespace rimc
