#pragma once
/// \file
/// rimc::dataset: labelled images in memory as one float tensor [N, C, H, W]
/// (normalised), batching, and a deterministic sampler for "N calibration
/// samples from the training set". Loaders for Fashion-MNIST / MNIST (IDX)
/// and CIFAR (binary format).

#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/idx.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

namespace rimc {

/// Labelled images: images [N, C, H, W] (normalised floats), labels [N].
struct dataset {
  /// Images [N, C, H, W], normalised floats.
  Tensor images;
  /// Class labels [N].
  std::vector<std::int32_t> labels;

  /// Number of images N.
  [[nodiscard]] std::int64_t size() const noexcept { return static_cast<std::int64_t>(labels.size()); }

  /// Images [begin, begin + count) as a new tensor (count clipped at the end).
  [[nodiscard]] Tensor batch(std::int64_t begin, std::int64_t count) const {
    if (begin < 0 || begin >= size() || count < 1) {
      throw value_error(detail::concat("dataset::batch: begin ", begin, " and count ", count, " out of range for ",
                                       size(), " images"));
    }
    count = std::min(count, size() - begin);
    const auto per = images.numel() / size();
    Tensor b = Tensor::empty(Shape{count, images.dim(1), images.dim(2), images.dim(3)});
    std::memcpy(b.data(), images.data() + begin * per, static_cast<std::size_t>(count * per) * sizeof(float));
    return b;
  }

  /// The images and labels at `indices`, in that order.
  [[nodiscard]] dataset subset(const std::vector<std::int64_t>& indices) const {
    dataset d;
    const auto per = images.numel() / std::max<std::int64_t>(size(), 1);
    d.images = Tensor::empty(Shape{static_cast<std::int64_t>(indices.size()), images.dim(1), images.dim(2), images.dim(3)});
    for (std::size_t i = 0; i < indices.size(); ++i) {
      const auto k = indices[i];
      if (k < 0 || k >= size()) throw value_error(detail::concat("dataset::subset: index ", k, " out of range for ", size(), " images"));
      std::memcpy(d.images.data() + static_cast<std::int64_t>(i) * per, images.data() + k * per,
                  static_cast<std::size_t>(per) * sizeof(float));
      d.labels.push_back(labels[static_cast<std::size_t>(k)]);
    }
    return d;
  }
};

/// `n` distinct indices from [0, total), a pure function of (total, n, seed):
/// the first n of a Philox-driven Fisher-Yates shuffle.
[[nodiscard]] inline std::vector<std::int64_t> sample_indices(std::int64_t total, std::int64_t n, std::uint64_t seed) {
  if (n < 1 || n > total) throw value_error(detail::concat("sample_indices: n must be in [1, ", total, "], got ", n));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(total));
  std::iota(idx.begin(), idx.end(), 0);
  const counter_rng rng(seed, 0x73616d70 /* "samp" */);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto j = i + static_cast<std::int64_t>(rng.uniform(static_cast<std::uint64_t>(i)) * static_cast<double>(total - i));
    std::swap(idx[static_cast<std::size_t>(i)], idx[static_cast<std::size_t>(std::min(j, total - 1))]);
  }
  idx.resize(static_cast<std::size_t>(n));
  return idx;
}

/// Where Debian's dataset-fashion-mnist package puts the files.
inline const std::filesystem::path fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's training-set pixel mean and standard deviation (of x / 255).
///@{
inline constexpr float fashion_mnist_mean = 0.2860f, fashion_mnist_std = 0.3530f;
///@}

/// An MNIST-style dataset from its two IDX arrays (images [N, H, W], labels
/// [N] in 0..9) as [N, 1, H, W] with x -> (x / 255 - mean) / std; `source`
/// names them in errors.
[[nodiscard]] inline dataset mnist_like_dataset(const idx_array& img, const idx_array& lab, const std::string& source,
                                                float mean = fashion_mnist_mean, float std_dev = fashion_mnist_std) {
  if (!(std_dev > 0)) throw value_error(detail::concat("mnist_like_dataset: std must be positive, got ", std_dev));
  if (img.dims.size() != 3) throw io_error(detail::concat(source, ": images must be rank 3, got rank ", img.dims.size()));
  if (lab.dims.size() != 1) throw io_error(detail::concat(source, ": labels must be rank 1, got rank ", lab.dims.size()));
  if (img.dims[0] != lab.dims[0]) {
    throw io_error(detail::concat(source, ": ", img.dims[0], " images but ", lab.dims[0], " labels"));
  }
  dataset d;
  d.images = Tensor::empty(Shape{img.dims[0], 1, img.dims[1], img.dims[2]});
  const float scale = 1.0f / (255.0f * std_dev), shift = -mean / std_dev;
  for (std::size_t i = 0; i < img.data.size(); ++i) d.images[static_cast<std::int64_t>(i)] = img.data[i] * scale + shift;
  for (auto v : lab.data) {
    if (v > 9) throw io_error(detail::concat(source, ": label ", int(v), " out of range [0, 9]"));
    d.labels.push_back(v);
  }
  return d;
}

namespace detail {
/// The file of an MNIST-style split ("train" or "test": train-*/t10k-*, gz or not) with `stem`.
[[nodiscard]] inline std::filesystem::path mnist_like_file(const std::filesystem::path& dir, const std::string& split,
                                                          const std::string& stem) {
  if (split != "train" && split != "test") {
    throw value_error(concat("load_mnist_like: split must be \"train\" or \"test\", got \"", split, "\""));
  }
  const std::string prefix = split == "train" ? "train" : "t10k";
  for (const char* ext : {".gz", ""}) {
    const auto p = dir / (prefix + stem + ext);
    if (std::filesystem::exists(p)) return p;
  }
  throw io_error(concat(dir.string(), ": no ", prefix, stem, "[.gz]"));
}
}  // namespace detail

/// Loads an MNIST-style split ("train" or "test": train-*/t10k-* files, gz or
/// not) as [N, 1, H, W] with x -> (x / 255 - mean) / std.
[[nodiscard]] inline dataset load_mnist_like(const std::filesystem::path& dir, const std::string& split,
                                             float mean = fashion_mnist_mean, float std_dev = fashion_mnist_std) {
  return mnist_like_dataset(read_idx(detail::mnist_like_file(dir, split, "-images-idx3-ubyte")),
                            read_idx(detail::mnist_like_file(dir, split, "-labels-idx1-ubyte")), dir.string(), mean,
                            std_dev);
}

/// The number of images of an MNIST-style split, from its label file's header alone.
[[nodiscard]] inline std::int64_t mnist_like_size(const std::filesystem::path& dir, const std::string& split) {
  const auto path = detail::mnist_like_file(dir, split, "-labels-idx1-ubyte");
  const auto dims = read_idx_dims(path);
  if (dims.size() != 1) throw io_error(detail::concat(path.string(), ": labels must be rank 1, got rank ", dims.size()));
  return dims[0];
}

/// CIFAR records as a dataset [N, 3, 32, 32] with per-channel normalisation.
[[nodiscard]] inline dataset cifar_dataset(const cifar_records& r, const std::array<float, 3>& mean,
                                           const std::array<float, 3>& std_dev) {
  dataset d;
  d.images = Tensor::empty(Shape{r.count, 3, 32, 32});
  for (std::int64_t i = 0; i < r.count; ++i)
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) {
        const auto k = (i * 3 + c) * 1024 + p;
        d.images[k] = (r.pixels[static_cast<std::size_t>(k)] / 255.0f - mean[static_cast<std::size_t>(c)]) /
                      std_dev[static_cast<std::size_t>(c)];
      }
  d.labels = r.labels;
  return d;
}

/// Loads a CIFAR binary file as [N, 3, 32, 32] with per-channel normalisation.
[[nodiscard]] inline dataset load_cifar(const std::filesystem::path& file, int label_bytes, int num_classes,
                                        const std::array<float, 3>& mean, const std::array<float, 3>& std_dev) {
  return cifar_dataset(read_cifar(file, label_bytes, num_classes), mean, std_dev);
}

}  // namespace rimc
