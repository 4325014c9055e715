#pragma once
/// \file
/// IEEE binary16 (fp16) and bfloat16 conversions with round-to-nearest-even,
/// for reading and writing half-precision tensors and for storing adapter
/// parameters in 16 bits.

#include <bit>
#include <cstdint>
#include <cstring>

namespace rimc {

/// The fp16 bit pattern nearest to `f` (ties to even; overflow to infinity; NaN kept quiet).
[[nodiscard]] constexpr std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x0200u | ((abs >> 13) & 0x3ffu) : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return sign;  // below half of the smallest subnormal (2^-25): zero
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    // value / 2^-24 = mant * 2^(e - 126) for biased exponent e in [102, 112]
    const std::uint32_t total = 126u - (abs >> 23);  // 14..24
    std::uint32_t q = mant >> total;
    const std::uint32_t rem = mant & ((1u << total) - 1u), halfway = 1u << (total - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  std::uint32_t h = ((abs - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
  const std::uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

/// The float value of an fp16 bit pattern (exact).
[[nodiscard]] constexpr float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return std::bit_cast<float>(sign);
    // subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// The bfloat16 bit pattern nearest to `f` (ties to even; NaN kept quiet).
[[nodiscard]] constexpr std::uint16_t float_to_bf16_bits(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

/// The float value of a bfloat16 bit pattern (exact).
[[nodiscard]] constexpr float bf16_bits_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// `f` rounded to the nearest fp16 value, as a float.
[[nodiscard]] constexpr float round_to_half(float f) noexcept { return half_bits_to_float(float_to_half_bits(f)); }

}  // namespace rimc
