// libFuzzer harness for the CIFAR reader. The first input byte chooses the
// variant: bit 0 gzip-compresses the rest before parsing (corrupt gzip is
// explored too, since the reader inflates any file starting with 1f 8b),
// bit 1 reads CIFAR-100 (two label bytes, 100 classes) instead of CIFAR-10.

#include <rimc/data/dataset.hpp>
#include <rimc/io/idx.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rimc;
  if (size < 1) return 0;
  const bool compress = (data[0] & 1) != 0;
  const int label_bytes = (data[0] & 2) != 0 ? 2 : 1;
  const int classes = label_bytes == 2 ? 100 : 10;
  std::vector<std::uint8_t> bytes(data + 1, data + size);
  try {
    const cifar_records r = parse_cifar(compress ? test::gzip_bytes(bytes) : std::move(bytes), "<fuzz>", label_bytes, classes);
    fuzz::require(r.count >= 1, "at least one record");
    fuzz::require(r.labels.size() == static_cast<std::size_t>(r.count), "one label per record");
    fuzz::require(r.pixels.size() == static_cast<std::size_t>(r.count) * 3072, "3072 pixels per record");
    for (auto l : r.labels) fuzz::require(l >= 0 && l < classes, "labels below the class count");
    const dataset d = cifar_dataset(r, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f});
    fuzz::require(d.images.shape() == Shape{r.count, 3, 32, 32}, "images are [N, 3, 32, 32]");
  } catch (const rimc::error&) {
  }
  return 0;
}
