#pragma once
/// \file
/// Readers for image datasets in their distribution formats: IDX (MNIST,
/// Fashion-MNIST; raw or gzip-compressed, read through zlib) and the CIFAR-10
/// / CIFAR-100 binary format. Every size is checked against the header
/// before any byte is used; errors name the file, the field and the values.

#include <rimc/core/error.hpp>
#include <rimc/io/read_file.hpp>

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace rimc {

/// An IDX array of unsigned bytes: dims outermost first and the data.
struct idx_array {
  /// Dimensions, outermost first.
  std::vector<std::int64_t> dims;
  /// The bytes, row-major (as many as the dims multiply to).
  std::vector<std::uint8_t> data;
};

namespace detail {

/// `raw` inflated if it is gzip (magic 1f 8b), else `raw` itself; at most
/// `limit` bytes out. `source` names the data in errors.
[[nodiscard]] inline std::vector<std::uint8_t> gunzip_if_compressed(std::vector<std::uint8_t> raw,
                                                                    const std::string& source,
                                                                    std::size_t limit = std::size_t{1} << 30) {
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
  if (raw.size() > std::numeric_limits<uInt>::max()) {
    throw io_error(concat(source, ": ", raw.size(), " compressed bytes exceed zlib's single-call limit"));
  }
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) throw io_error(concat(source, ": zlib initialisation failed"));
  std::vector<std::uint8_t> out;
  z.next_in = raw.data();
  z.avail_in = static_cast<uInt>(raw.size());
  int rc = Z_OK;
  std::uint8_t chunk[1 << 16];
  while (rc != Z_STREAM_END) {
    z.next_out = chunk;
    z.avail_out = sizeof(chunk);
    rc = inflate(&z, Z_NO_FLUSH);
    out.insert(out.end(), chunk, chunk + (sizeof(chunk) - z.avail_out));
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string msg = z.msg ? z.msg : "truncated or corrupt stream";
      inflateEnd(&z);
      throw io_error(concat(source, ": gzip data is corrupt (", msg, ") after ", out.size(), " bytes"));
    }
    if (out.size() > limit) {
      inflateEnd(&z);
      throw io_error(concat(source, ": inflates to more than ", limit, " bytes"));
    }
    if (rc == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      throw io_error(concat(source, ": gzip stream is truncated after ", out.size(), " bytes"));
    }
  }
  inflateEnd(&z);
  return out;
}

}  // namespace detail

/// Parses an IDX file held in memory, raw or gzip-compressed (`source` names
/// it in errors). Only the unsigned-byte element type (0x08) is accepted, as
/// MNIST-style data use.
[[nodiscard]] inline idx_array parse_idx(std::vector<std::uint8_t> file, const std::string& source) {
  const std::vector<std::uint8_t> bytes = detail::gunzip_if_compressed(std::move(file), source);
  if (bytes.size() < 4) throw io_error(detail::concat(source, ": ", bytes.size(), " bytes, too short for an IDX header"));
  if (bytes[0] != 0 || bytes[1] != 0) {
    throw io_error(detail::concat(source, ": bad IDX magic: the first two bytes are ", int(bytes[0]), ", ",
                                  int(bytes[1]), " (expected 0, 0)"));
  }
  if (bytes[2] != 0x08) {
    throw io_error(detail::concat(source, ": IDX element type 0x", std::hex, int(bytes[2]), std::dec,
                                  " is not supported (only unsigned bytes, 0x08)"));
  }
  const int ndim = bytes[3];
  if (ndim < 1 || ndim > 4) throw io_error(detail::concat(source, ": IDX rank ", ndim, " out of range [1, 4]"));
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(ndim);
  if (bytes.size() < header) {
    throw io_error(detail::concat(source, ": ", bytes.size(), " bytes, too short for a rank-", ndim, " IDX header"));
  }
  idx_array a;
  // At most 2^40 elements, counting the non-zero dimensions even when a zero
  // one makes the array empty (callers multiply dimensions in int64).
  constexpr std::uint64_t limit = std::uint64_t{1} << 40;
  std::uint64_t nonzero = 1;
  bool empty = false, too_large = false;
  for (int d = 0; d < ndim; ++d) {
    const std::uint8_t* p = bytes.data() + 4 + 4 * d;
    const std::uint64_t v = (std::uint64_t{p[0]} << 24) | (std::uint64_t{p[1]} << 16) | (std::uint64_t{p[2]} << 8) | p[3];
    a.dims.push_back(static_cast<std::int64_t>(v));
    if (v == 0) {
      empty = true;
    } else if (v > limit / nonzero) {
      too_large = true;
    } else {
      nonzero *= v;
    }
  }
  if (too_large) {
    std::string dims;
    for (auto v : a.dims) dims += (dims.empty() ? "" : ", ") + std::to_string(v);
    throw io_error(detail::concat(source, ": IDX dimensions [", dims, "] are implausibly large (more than 2^40 elements)"));
  }
  const std::uint64_t count = empty ? 0 : nonzero;
  if (bytes.size() - header != count) {
    throw io_error(detail::concat(source, ": IDX header promises ", count, " bytes of data, the file holds ",
                                  bytes.size() - header));
  }
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(header), bytes.end());
  return a;
}

/// Reads an IDX file, raw or gzip-compressed.
[[nodiscard]] inline idx_array read_idx(const std::filesystem::path& path) {
  return parse_idx(detail::read_file_bytes(path), path.string());
}

/// The dimensions of an IDX file (raw or gzip-compressed) from its header
/// alone: reads 4 + 4 rank bytes, however large the file (programs check a
/// request against a dataset's size before loading it).
[[nodiscard]] inline std::vector<std::int64_t> read_idx_dims(const std::filesystem::path& path) {
  const std::string source = path.string();
  gzFile f = gzopen(source.c_str(), "rb");
  if (!f) throw io_error(detail::concat(source, ": cannot open"));
  std::uint8_t head[4 + 16];
  const int got = gzread(f, head, sizeof(head));
  gzclose(f);
  if (got < 4) throw io_error(detail::concat(source, ": ", got < 0 ? 0 : got, " bytes, too short for an IDX header"));
  if (head[0] != 0 || head[1] != 0 || head[2] != 0x08) {
    throw io_error(detail::concat(source, ": not an IDX file of unsigned bytes (header ", int(head[0]), ", ", int(head[1]),
                                  ", ", int(head[2]), ")"));
  }
  const int ndim = head[3];
  if (ndim < 1 || ndim > 4) throw io_error(detail::concat(source, ": IDX rank ", ndim, " out of range [1, 4]"));
  if (got < 4 + 4 * ndim) throw io_error(detail::concat(source, ": too short for a rank-", ndim, " IDX header"));
  std::vector<std::int64_t> dims;
  for (int d = 0; d < ndim; ++d) {
    const std::uint8_t* p = head + 4 + 4 * d;
    dims.push_back(static_cast<std::int64_t>((std::uint64_t{p[0]} << 24) | (std::uint64_t{p[1]} << 16) |
                                             (std::uint64_t{p[2]} << 8) | p[3]));
  }
  return dims;
}

/// One record of a CIFAR binary file: label(s) and a 3x32x32 image (channel-major bytes).
struct cifar_records {
  /// Number of records.
  std::int64_t count = 0;
  std::vector<std::int32_t> labels;  ///< fine labels for CIFAR-100
  std::vector<std::uint8_t> pixels;  ///< count x 3072
};

/// Parses a CIFAR-10 (`label_bytes` = 1) or CIFAR-100 (`label_bytes` = 2:
/// coarse, fine) binary file held in memory, raw or gzip-compressed.
[[nodiscard]] inline cifar_records parse_cifar(std::vector<std::uint8_t> file, const std::string& source,
                                               int label_bytes = 1, int num_classes = 10) {
  if (label_bytes != 1 && label_bytes != 2) {
    throw value_error(detail::concat("parse_cifar: label_bytes must be 1 (CIFAR-10) or 2 (CIFAR-100), got ", label_bytes));
  }
  const std::vector<std::uint8_t> bytes = detail::gunzip_if_compressed(std::move(file), source);
  const std::size_t record = static_cast<std::size_t>(label_bytes) + 3072;
  if (bytes.empty() || bytes.size() % record != 0) {
    throw io_error(detail::concat(source, ": ", bytes.size(), " bytes is not a whole number of ", record,
                                  "-byte CIFAR records"));
  }
  cifar_records r;
  r.count = static_cast<std::int64_t>(bytes.size() / record);
  r.pixels.resize(static_cast<std::size_t>(r.count) * 3072);
  for (std::int64_t i = 0; i < r.count; ++i) {
    const std::uint8_t* rec = bytes.data() + static_cast<std::size_t>(i) * record;
    const int label = rec[label_bytes - 1];
    if (label >= num_classes) {
      throw io_error(detail::concat(source, ": record ", i, " has label ", label, ", not below ", num_classes));
    }
    r.labels.push_back(label);
    std::memcpy(r.pixels.data() + static_cast<std::size_t>(i) * 3072, rec + label_bytes, 3072);
  }
  return r;
}

/// Reads a CIFAR-10 (`label_bytes` = 1) or CIFAR-100 (`label_bytes` = 2: coarse, fine) binary file.
[[nodiscard]] inline cifar_records read_cifar(const std::filesystem::path& path, int label_bytes = 1,
                                              int num_classes = 10) {
  return parse_cifar(detail::read_file_bytes(path), path.string(), label_bytes, num_classes);
}

}  // namespace rimc
