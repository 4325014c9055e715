// The shipped ResNet-20 teacher: the C++ forward matches PyTorch's logits,
// batch-norm folding changes nothing, and the test-set accuracy equals PyTorch's.

#include <rimc/data/dataset.hpp>
#include <rimc/nn/evaluate.hpp>
#include <rimc/nn/models.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_teacher {

using namespace rimc;

namespace {
const std::filesystem::path model_path = std::filesystem::path(RIMC_MODEL_DIR) / "resnet20_fmnist.safetensors";
const std::filesystem::path logits_path = std::filesystem::path(RIMC_TEST_DATA_DIR) / "resnet20_fmnist_logits.safetensors";

network teacher() {
  network net = resnet20(1, 10, 28);
  net.load(model_path);
  return net;
}
}  // namespace

TEST_SUITE("teacher") {
  TEST_CASE("the C++ forward of the shipped teacher matches PyTorch's logits on 256 test images") {
    const dataset test = load_mnist_like(fashion_mnist_dir, "test");
    const auto fixture = safetensors_file::load(logits_path);
    const Tensor expected = fixture.tensor("logits");
    network net = teacher();
    const Tensor logits = net.forward(test.batch(0, 256));
    test::check_close(logits, expected, 1e-4, 1e-4);
    net.fold_batch_norm();
    net.fuse_relu();
    const Tensor folded = net.forward(test.batch(0, 256));
    test::check_close(folded, logits, 1e-5, 1e-5);
    const Tensor labels = fixture.tensor("labels");
    for (std::int64_t i = 0; i < 256; ++i) REQUIRE(labels[i] == static_cast<float>(test.labels[static_cast<std::size_t>(i)]));
  }

  TEST_CASE("the teacher's Fashion-MNIST test accuracy equals PyTorch's within 0.1 points") {
    const dataset test = load_mnist_like(fashion_mnist_dir, "test");
    network net = teacher();
    net.fold_batch_norm();
    net.fuse_relu();
    const eval_result r = evaluate(net, test, 500, false);
    const double torch_acc = std::stod(safetensors_file::load(model_path).metadata().at("test_accuracy"));
    MESSAGE("rimc top-1 ", 100 * r.top1, "%, PyTorch ", 100 * torch_acc, "%, ", r.images_per_s(), " images/s");
    CHECK(std::abs(r.top1 - torch_acc) <= 0.001);
    CHECK(r.top1 >= 0.92);
    CHECK(r.top5 >= r.top1);
  }
}

}  // namespace unit_teacher
