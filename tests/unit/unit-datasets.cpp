// Tests of the IDX and CIFAR readers (on files the test writes), the dataset
// helpers, and loading Debian's Fashion-MNIST (malformed files: unit-malformed.cpp).

#include <rimc/data/dataset.hpp>
#include <rimc/io/idx.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_datasets {

using namespace rimc;

namespace {

std::filesystem::path temp_dir() {
  auto d = std::filesystem::temp_directory_path() / ("rimc-data-" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d;
}

void write(const std::filesystem::path& p, const std::vector<std::uint8_t>& bytes, bool gzip = false) {
  const auto out = gzip ? test::gzip_bytes(bytes) : bytes;
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
}

}  // namespace

TEST_SUITE("datasets") {
  TEST_CASE("IDX files are read raw and gzip-compressed") {
    const auto dir = temp_dir();
    const auto bytes = test::idx_bytes(0x08, {2, 3, 2}, 12);
    for (bool gz : {false, true}) {
      const auto p = dir / (gz ? "a.idx.gz" : "a.idx");
      write(p, bytes, gz);
      const idx_array a = read_idx(p);
      CHECK(a.dims == std::vector<std::int64_t>{2, 3, 2});
      CHECK(a.data.size() == 12);
      CHECK(a.data[11] == 18);
    }
  }

  TEST_CASE("MNIST-style splits load, normalise and check image/label counts") {
    const auto dir = temp_dir() / "mnist";
    std::filesystem::create_directories(dir);
    write(dir / "t10k-images-idx3-ubyte.gz", test::idx_bytes(0x08, {3, 2, 2}, 12, 0), true);
    write(dir / "t10k-labels-idx1-ubyte", test::idx_bytes(0x08, {3}, 3, 1));
    const dataset d = load_mnist_like(dir, "test", 0.5f, 0.25f);
    CHECK(d.images.shape() == Shape{3, 1, 2, 2});
    CHECK(d.labels == std::vector<std::int32_t>{1, 2, 3});
    CHECK(d.images[5] == doctest::Approx((5 / 255.0 - 0.5) / 0.25));
    CHECK(d.batch(1, 10).shape() == Shape{2, 1, 2, 2});
    CHECK(d.subset({2, 0}).labels == std::vector<std::int32_t>{3, 1});
    write(dir / "t10k-labels-idx1-ubyte", test::idx_bytes(0x08, {4}, 4, 1));
    CHECK_THROWS_WITH((void)load_mnist_like(dir, "test"), ("[rimc.io_error] " + dir.string() + ": 3 images but 4 labels").c_str());
    CHECK_THROWS_WITH((void)load_mnist_like(dir, "val"),
                      "[rimc.value_error] load_mnist_like: split must be \"train\" or \"test\", got \"val\"");
  }

  TEST_CASE("CIFAR-10 and CIFAR-100 binary files are read and checked") {
    const auto dir = temp_dir();
    for (int label_bytes : {1, 2}) {
      std::vector<std::uint8_t> f;
      for (int i = 0; i < 3; ++i) {
        if (label_bytes == 2) f.push_back(static_cast<std::uint8_t>(i));  // coarse label
        f.push_back(static_cast<std::uint8_t>(i + 4));
        for (int p = 0; p < 3072; ++p) f.push_back(static_cast<std::uint8_t>((p + i) % 256));
      }
      write(dir / "c.bin", f);
      const dataset d = load_cifar(dir / "c.bin", label_bytes, 100, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f});
      CHECK(d.images.shape() == Shape{3, 3, 32, 32});
      CHECK(d.labels == std::vector<std::int32_t>{4, 5, 6});
      CHECK(d.images[3072 + 1024] == doctest::Approx(((1024 + 1) % 256 / 255.0 - 0.5) / 0.5));
      f.pop_back();
      write(dir / "c.bin", f);
      CHECK_THROWS_WITH((void)read_cifar(dir / "c.bin", label_bytes, 100),
                        ("[rimc.io_error] " + (dir / "c.bin").string() + ": " + std::to_string(f.size()) +
                         " bytes is not a whole number of " + std::to_string(3072 + label_bytes) + "-byte CIFAR records")
                            .c_str());
    }
  }

  TEST_CASE("the calibration sampler is deterministic and draws distinct indices") {
    const auto a = sample_indices(60000, 10, 42), b = sample_indices(60000, 10, 42), c = sample_indices(60000, 10, 43);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(std::set<std::int64_t>(a.begin(), a.end()).size() == 10);
    const auto all = sample_indices(50, 50, 1);
    CHECK(std::set<std::int64_t>(all.begin(), all.end()).size() == 50);
    CHECK_THROWS_WITH((void)sample_indices(5, 0, 1), "[rimc.value_error] sample_indices: n must be in [1, 5], got 0");
  }

  TEST_CASE("Debian's Fashion-MNIST loads with 60000 / 10000 balanced images") {
    if (!std::filesystem::exists(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")) {
      MESSAGE("dataset-fashion-mnist is not installed (tools/install-deps.sh installs it)");
      CHECK(false);
      return;
    }
    const dataset test = load_mnist_like(fashion_mnist_dir, "test");
    CHECK(test.images.shape() == Shape{10000, 1, 28, 28});
    std::vector<int> count(10, 0);
    for (auto l : test.labels) ++count[static_cast<std::size_t>(l)];
    for (int c : count) CHECK(c == 1000);
    // Normalised with the training statistics: the test set's mean is near 0.
    CHECK(std::abs(test.images.vector().mean()) < 0.05f);
  }
}

}  // namespace unit_datasets
