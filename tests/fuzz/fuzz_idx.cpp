// libFuzzer harness for the IDX reader, raw and gzip. The first input byte
// chooses whether the harness gzip-compresses each file before parsing (so
// the fuzzer explores IDX structure inside valid gzip streams; corrupt gzip
// is explored too, since parse_idx inflates any file starting with 1f 8b).
// The rest holds two files (fuzz_util.hpp's split_two), read as images and
// labels and, when both parse, assembled into an MNIST-style dataset.

#include <rimc/data/dataset.hpp>
#include <rimc/io/idx.hpp>

#include "fuzz_util.hpp"

#include <optional>

namespace {

std::optional<rimc::idx_array> parse(std::vector<std::uint8_t> bytes, bool compress) {
  try {
    rimc::idx_array a = rimc::parse_idx(compress ? rimc::test::gzip_bytes(bytes) : std::move(bytes), "<fuzz>");
    std::uint64_t count = 1;
    bool overflow = false;
    for (auto d : a.dims) {
      rimc::fuzz::require(d >= 0, "IDX dimensions are non-negative");
      overflow = overflow || __builtin_mul_overflow(count, static_cast<std::uint64_t>(d), &count);
    }
    rimc::fuzz::require(!overflow && count == a.data.size(), "the IDX dimensions multiply to the data size");
    return a;
  } catch (const rimc::error&) {
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rimc;
  if (size < 1) return 0;
  const bool compress = (data[0] & 1) != 0;
  auto [first, second] = fuzz::split_two(data + 1, size - 1);
  const auto images = parse(std::move(first), compress);
  const auto labels = parse(std::move(second), compress);
  if (!images || !labels) return 0;
  try {
    const dataset d = mnist_like_dataset(*images, *labels, "<fuzz>", 0.5f, 0.25f);
    fuzz::require(d.images.numel() == static_cast<std::int64_t>(images->data.size()), "one float per pixel");
    fuzz::require(d.size() == labels->dims[0], "one label per image");
    for (std::int64_t i = 0; i < d.images.numel(); ++i) fuzz::require(std::isfinite(d.images[i]), "finite pixels");
  } catch (const rimc::error&) {
  }
  return 0;
}
