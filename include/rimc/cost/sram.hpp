#pragma once
/// \file
/// What adapters cost in SRAM: the storage precisions rimc models and the
/// footprint (values, bytes, share of the RRAM weights) of one or more adapters.

#include <cstddef>
#include <cstdint>

namespace rimc {

/// Storage precision of an adapter's parameters in SRAM.
enum class sram_precision : std::uint8_t {
  fp32,  ///< 4 bytes per value
  fp16,  ///< 2 bytes per value (IEEE binary16)
  int8,  ///< low-rank factors as int8 with one fp16 scale per row; per-channel vectors in fp16
};

/// Bits per adapter value as stored in SRAM (int8: the values, scales excluded), bits.
[[nodiscard]] constexpr int sram_value_bits(sram_precision precision) noexcept {
  switch (precision) {
    case sram_precision::fp32: return 32;
    case sram_precision::fp16: return 16;
    case sram_precision::int8: return 8;
  }
  return 32;
}

/// Parameter count, SRAM bytes and share of the RRAM weights of one or more adapters.
struct adapter_footprint {
  std::int64_t parameters = 0;    ///< adapter values
  std::int64_t rram_weights = 0;  ///< weights of the base layers on the crossbars
  std::size_t sram_bytes = 0;     ///< bytes the adapters occupy in SRAM
  /// Adapter parameters as a percentage of the RRAM weights.
  [[nodiscard]] double share_percent() const noexcept {
    return rram_weights ? 100.0 * static_cast<double>(parameters) / static_cast<double>(rram_weights) : 0.0;
  }
  /// Adds `o`'s counts: the footprint of both sets of adapters.
  adapter_footprint& operator+=(const adapter_footprint& o) noexcept {
    parameters += o.parameters;
    rram_weights += o.rram_weights;
    sram_bytes += o.sram_bytes;
    return *this;
  }
};

}  // namespace rimc
