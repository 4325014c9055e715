// libFuzzer harness for the safetensors reader: arbitrary bytes are parsed;
// for every file that parses, each tensor is read, and writing the tensors
// back and parsing that again must give the same bits and metadata.

#include <rimc/io/safetensors.hpp>

#include "fuzz_util.hpp"

#include <cstring>
#include <map>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rimc;
  try {
    const auto file = safetensors_file::parse(std::vector<std::uint8_t>(data, data + size), "<fuzz>");
    std::map<std::string, Tensor> values;
    for (const auto& info : file.tensors()) {
      fuzz::require(info.begin <= info.end, "data_offsets are ordered");
      try {
        Tensor t = file.tensor(info.name, /*require_finite=*/false);
        fuzz::require(t.numel() == info.numel(), "a tensor has the element count of its header entry");
        bool finite = true;
        for (std::int64_t k = 0; k < t.numel(); ++k) finite = finite && std::isfinite(t[k]);
        try {
          (void)file.tensor(info.name);
          fuzz::require(finite, "non-finite elements are rejected by default");
        } catch (const value_error&) {
          fuzz::require(!finite, "only non-finite elements are rejected as values");
        }
        values.emplace(info.name, std::move(t));
      } catch (const shape_error&) {
        fuzz::require(info.shape.size() > 4, "only rank above 4 is a shape error when reading");
      }
    }
    const auto again = safetensors_file::parse(serialize_safetensors(values, file.metadata()), "<round trip>");
    fuzz::require(again.metadata() == file.metadata(), "metadata survive a round trip");
    for (const auto& [name, t] : values) {
      const Tensor u = again.tensor(name, false);
      fuzz::require(u.shape() == t.shape(), "shapes survive a round trip");
      fuzz::require(t.numel() == 0 ||
                        std::memcmp(u.data(), t.data(), static_cast<std::size_t>(t.numel()) * sizeof(float)) == 0,
                    "F32 values survive a round trip bitwise");
    }
  } catch (const rimc::error&) {
    // A rejected file: the reader's job is to say so with a rimc error, never to crash.
  }
  return 0;
}
