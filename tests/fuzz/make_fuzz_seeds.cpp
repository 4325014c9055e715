// Writes small valid inputs for each fuzz harness into <dir>/<target>/,
// using rimc's own writers: tools/fuzz.sh seeds the corpora with them.

#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/read_file.hpp>
#include <rimc/io/safetensors.hpp>

#include "fuzz_util.hpp"
#include "peft_adapters.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using bytes = std::vector<std::uint8_t>;

void write(const std::filesystem::path& p, const bytes& b) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

bytes cifar(int records, int label_bytes) {
  bytes b;
  for (int i = 0; i < records; ++i) {
    for (int l = 0; l < label_bytes; ++l) b.push_back(static_cast<std::uint8_t>(i + l));
    for (int p = 0; p < 3072; ++p) b.push_back(static_cast<std::uint8_t>(p / 97));
  }
  return b;
}

bytes with_mode(std::uint8_t mode, const bytes& rest) {
  bytes b{mode};
  b.insert(b.end(), rest.begin(), rest.end());
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace rimc;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output dir>\n", argv[0]);
    return 2;
  }
  const std::filesystem::path out = argv[1];
  const Tensor a = fuzz::uniform(Shape{2, 3}, 3), w = fuzz::uniform(Shape{2, 1, 2, 2}, 4);
  write(out / "safetensors/f32", serialize_safetensors({{"a", a}, {"conv.weight", w}}, {{"format", "pt"}}));
  write(out / "safetensors/f16", serialize_safetensors({{"a", a}}, {}, st_write_dtype::F16));
  write(out / "safetensors/bf16", serialize_safetensors({{"b", a}}, {}, st_write_dtype::BF16));
  write(out / "safetensors/f64-empty", serialize_safetensors({{"e", Tensor(Shape{0, 3})}, {"s", Tensor(Shape{1})}}, {},
                                                             st_write_dtype::F64));

  const bytes images = test::idx_bytes(0x08, {2, 3, 3}, 18, 0), labels = test::idx_bytes(0x08, {2}, 2, 4);
  write(out / "idx/raw", with_mode(0, fuzz::join_two(images, labels)));
  write(out / "idx/compressed-by-harness", with_mode(1, fuzz::join_two(images, labels)));
  write(out / "idx/gzip", with_mode(0, fuzz::join_two(test::gzip_bytes(images), test::gzip_bytes(labels))));

  write(out / "cifar/cifar10", with_mode(0, cifar(1, 1)));
  write(out / "cifar/cifar100", with_mode(2, cifar(1, 2)));
  write(out / "cifar/gzip", with_mode(0, test::gzip_bytes(cifar(2, 1))));
  write(out / "cifar/compressed-by-harness", with_mode(3, cifar(1, 2)));

  const fuzz::peft_adapters adapters(1);
  const auto dir = out / "peft-files";
  save_peft_adapter(dir, adapters.net, "rimc/fuzz");
  write(out / "peft/adapter", fuzz::join_two(detail::read_file_bytes(dir / "adapter_config.json"),
                                             detail::read_file_bytes(dir / "adapter_model.safetensors")));
  std::filesystem::remove_all(dir);
  std::printf("seeds written to %s\n", out.c_str());
  return 0;
}
