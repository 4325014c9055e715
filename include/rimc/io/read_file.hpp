#pragma once
/// \file
/// Reading a whole file into memory: every rimc reader parses a byte buffer
/// (so it can be tested and fuzzed without files) and reads files through this.

#include <rimc/core/error.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace rimc::detail {

/// The bytes of `path`; throws io_error naming the path if it cannot be opened or read.
[[nodiscard]] inline std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(concat(path.string(), ": cannot open for reading"));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw io_error(concat(path.string(), ": read error"));
  return bytes;
}

}  // namespace rimc::detail
