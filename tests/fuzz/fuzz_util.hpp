#pragma once
// Helpers shared by the libFuzzer harnesses and their seed generator: the
// two-part input format and invariant checks (file bytes and gzip come from
// tests/common/file_bytes.hpp).

#include "../common/file_bytes.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <utility>
#include <vector>

namespace rimc::fuzz {

/// An input holding two files: a 2-byte little-endian length n, n bytes of
/// the first, and the rest as the second (n is clipped to what is there).
inline std::pair<std::vector<std::uint8_t>, std::vector<std::uint8_t>> split_two(const std::uint8_t* data,
                                                                               std::size_t size) {
  if (size < 2) return {};
  const std::size_t n = std::min<std::size_t>(data[0] | (std::size_t{data[1]} << 8), size - 2);
  return {std::vector<std::uint8_t>(data + 2, data + 2 + n), std::vector<std::uint8_t>(data + 2 + n, data + size)};
}

/// The inverse of split_two (the first file must be under 64 KiB).
inline std::vector<std::uint8_t> join_two(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  if (a.size() > 0xffff) std::abort();
  std::vector<std::uint8_t> out{static_cast<std::uint8_t>(a.size()), static_cast<std::uint8_t>(a.size() >> 8)};
  out.insert(out.end(), a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

/// Aborts (a crash to libFuzzer) when a successfully parsed input breaks an invariant.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "rimc fuzz invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace rimc::fuzz
