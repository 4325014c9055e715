// libFuzzer harness for PEFT adapter loading: the input holds an
// adapter_config.json text and an adapter_model.safetensors file
// (fuzz_util.hpp's split_two). A config that parses must be valid; a load
// that succeeds must leave finite parameters, and one that fails must leave
// the adapters as they were.

#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/peft.hpp>

#include "fuzz_util.hpp"
#include "peft_adapters.hpp"

#include <array>
#include <cmath>
#include <string_view>

namespace {

std::vector<rimc::Tensor> snapshot(const rimc::fuzz::peft_adapters& adapters) {
  std::vector<rimc::Tensor> out;
  for (const auto& l : {adapters.conv, adapters.fc})
    for (const rimc::Tensor* t : l->parameters()) out.push_back(*t);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace rimc;
  static fuzz::peft_adapters adapters(1);
  auto [config, weights] = fuzz::split_two(data, size);
  try {
    const peft_config cfg =
        parse_peft_config(std::string_view(reinterpret_cast<const char*>(config.data()), config.size()), "<fuzz config>");
    fuzz::require(cfg.r >= 1 && cfg.lora_alpha > 0, "a parsed config has a positive rank and alpha");
    const auto file = safetensors_file::parse(std::move(weights), "<fuzz weights>");
    const auto before = snapshot(adapters);
    try {
      load_peft_adapter(cfg, file, adapters.net, "<fuzz>");
      for (const auto& t : snapshot(adapters))
        for (std::int64_t i = 0; i < t.numel(); ++i) fuzz::require(std::isfinite(t[i]), "loaded parameters are finite");
    } catch (const rimc::error&) {
      const auto after = snapshot(adapters);
      for (std::size_t i = 0; i < before.size(); ++i) {
        fuzz::require(after[i] == before[i], "a failed load changes no adapter");
      }
      throw;
    }
  } catch (const rimc::error&) {
  }
  return 0;
}
