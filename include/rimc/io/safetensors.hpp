#pragma once
/// \file
/// Reading and writing `.safetensors` files (the format of Hugging Face's
/// safetensors library, used by PyTorch exports and PEFT adapters):
/// an 8-byte little-endian header length, a JSON header mapping each tensor
/// name to {dtype, shape, data_offsets}, then the tensors' bytes, which must
/// be covered exactly once with no holes. Every offset and size is checked
/// before any byte is read; errors name the key, the field and the values.

#include <rimc/core/error.hpp>
#include <rimc/core/half.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/io/read_file.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// Element types of the safetensors format that rimc reads (all are converted to float32).
enum class st_dtype : std::uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

/// The format's name of a dtype ("F32", ...).
[[nodiscard]] inline std::string_view to_string(st_dtype t) noexcept {
  constexpr std::string_view names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  return names[static_cast<int>(t)];
}

/// Bytes per element of a dtype.
[[nodiscard]] inline std::size_t size_of(st_dtype t) noexcept {
  constexpr std::size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
  return sizes[static_cast<int>(t)];
}

/// One tensor's entry in a safetensors header.
struct st_tensor_info {
  /// The tensor key.
  std::string name;
  /// Element type in the file.
  st_dtype dtype = st_dtype::F32;
  /// Dimensions, outermost first.
  std::vector<std::int64_t> shape;
  /// Byte offsets [begin, end) into the data section.
  ///@{
  std::uint64_t begin = 0, end = 0;  ///< byte offsets into the data section
  ///@}

  /// Number of elements (1 for a scalar).
  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  /// "[2, 3, 32, 32]".
  [[nodiscard]] std::string shape_string() const {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

/// A parsed, validated safetensors file held in memory.
class safetensors_file {
 public:
  /// Upper bound on the JSON header size (the safetensors library's own limit).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;

  /// Reads and validates `path`.
  [[nodiscard]] static safetensors_file load(const std::filesystem::path& path) {
    return parse(detail::read_file_bytes(path), path.string());
  }

  /// Validates an in-memory file; `source` names it in error messages.
  [[nodiscard]] static safetensors_file parse(std::vector<std::uint8_t> bytes, std::string source = "<memory>") {
    safetensors_file f;
    f.source_ = std::move(source);
    f.bytes_ = std::move(bytes);
    f.index();
    return f;
  }

  /// Where the file came from (its path, or "<memory>").
  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  /// Every tensor entry, sorted by name.
  [[nodiscard]] const std::vector<st_tensor_info>& tensors() const noexcept { return infos_; }
  /// The free-form string metadata ("__metadata__").
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Whether a tensor `name` is present.
  [[nodiscard]] bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }

  /// The entry `name`; throws io_error naming the file and the key if absent.
  [[nodiscard]] const st_tensor_info& info(std::string_view name) const {
    const auto* i = find(name);
    if (!i) throw io_error(detail::concat(source_, ": no tensor named '", name, "'"));
    return *i;
  }

  /// Tensor `name` converted to float32 (rank at most 4). With `require_finite`,
  /// a NaN or infinite element is an error naming the tensor and the element.
  [[nodiscard]] Tensor tensor(std::string_view name, bool require_finite = true) const {
    const auto& i = info(name);
    if (i.shape.size() > static_cast<std::size_t>(Shape::max_rank)) {
      throw shape_error(detail::concat(source_, ": tensor '", i.name, "' has shape ", i.shape_string(),
                                       " of rank ", i.shape.size(), "; rimc tensors have rank at most 4"));
    }
    Tensor t = Tensor::empty(Shape(i.shape.begin(), i.shape.end()));
    const std::uint8_t* p = data() + i.begin;
    float* out = t.data();
    const auto n = i.numel();
    for (std::int64_t k = 0; k < n; ++k) out[k] = element(i.dtype, p, k);
    if (require_finite) {
      for (std::int64_t k = 0; k < n; ++k) {
        if (!std::isfinite(out[k])) {
          throw value_error(detail::concat(source_, ": tensor '", i.name, "' element ", k, " is ", out[k]));
        }
      }
    }
    return t;
  }

 private:
  [[nodiscard]] const st_tensor_info* find(std::string_view name) const noexcept {
    const auto it = std::lower_bound(infos_.begin(), infos_.end(), name,
                                     [](const st_tensor_info& a, std::string_view b) { return a.name < b; });
    return it != infos_.end() && it->name == name ? &*it : nullptr;
  }
  [[nodiscard]] const std::uint8_t* data() const noexcept { return bytes_.data() + 8 + header_bytes_; }

  template <class T>
  static T load_le(const std::uint8_t* p) noexcept {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;  // x86-64 and every platform rimc targets are little-endian
  }

  static float element(st_dtype t, const std::uint8_t* p, std::int64_t k) noexcept {
    switch (t) {
      case st_dtype::F64: return static_cast<float>(load_le<double>(p + 8 * k));
      case st_dtype::F32: return load_le<float>(p + 4 * k);
      case st_dtype::F16: return half_bits_to_float(load_le<std::uint16_t>(p + 2 * k));
      case st_dtype::BF16: return bf16_bits_to_float(load_le<std::uint16_t>(p + 2 * k));
      case st_dtype::I64: return static_cast<float>(load_le<std::int64_t>(p + 8 * k));
      case st_dtype::I32: return static_cast<float>(load_le<std::int32_t>(p + 4 * k));
      case st_dtype::I16: return static_cast<float>(load_le<std::int16_t>(p + 2 * k));
      case st_dtype::I8: return static_cast<float>(static_cast<std::int8_t>(p[k]));
      case st_dtype::U8: return static_cast<float>(p[k]);
      case st_dtype::BOOL: return p[k] ? 1.0f : 0.0f;
    }
    return 0.0f;
  }

  [[noreturn]] void fail(const std::string& what) const { throw io_error(detail::concat(source_, ": ", what)); }

  void index() {
    static_assert(std::endian::native == std::endian::little, "safetensors reading assumes a little-endian host");
    if (bytes_.size() < 8) fail(detail::concat("file is ", bytes_.size(), " bytes, shorter than the 8-byte header length"));
    const auto n = load_le<std::uint64_t>(bytes_.data());
    if (n > max_header_bytes) fail(detail::concat("header length ", n, " exceeds the limit of ", max_header_bytes));
    if (n > bytes_.size() - 8) {
      fail(detail::concat("header length ", n, " runs past the end of the file (", bytes_.size() - 8,
                          " bytes after the length)"));
    }
    header_bytes_ = n;
    const std::string_view text(reinterpret_cast<const char*>(bytes_.data() + 8), n);
    if (text.empty() || text.front() != '{') fail("header does not start with '{'");

    // Duplicate keys are ambiguous (nlohmann keeps the last); refuse them.
    std::set<std::string> seen;
    std::string duplicate;
    nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& j) {
      if (ev == nlohmann::json::parse_event_t::key && depth == 1 && !seen.insert(j.get<std::string>()).second &&
          duplicate.empty()) {
        duplicate = j.get<std::string>();
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, cb);
    } catch (const nlohmann::json::exception& e) {
      fail(detail::concat("header is not valid JSON: ", e.what()));
    }
    if (!duplicate.empty()) fail(detail::concat("header has the key '", duplicate, "' twice"));
    if (!header.is_object()) fail("header is not a JSON object");

    const std::uint64_t data_size = bytes_.size() - 8 - n;
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) fail("'__metadata__' is not an object");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) fail(detail::concat("'__metadata__' value of '", mk, "' is not a string"));
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      infos_.push_back(parse_entry(key, value, data_size));
    }
    std::sort(infos_.begin(), infos_.end(), [](const auto& a, const auto& b) { return a.name < b.name; });

    // The data section must be covered exactly: no overlaps, no holes.
    std::vector<const st_tensor_info*> by_offset;
    for (const auto& i : infos_) by_offset.push_back(&i);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const auto* a, const auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
    std::uint64_t cursor = 0;
    const st_tensor_info* previous = nullptr;
    for (const auto* i : by_offset) {
      if (i->begin < cursor) {
        fail(detail::concat("tensor '", i->name, "' data_offsets [", i->begin, ", ", i->end,
                            "] overlap tensor '", previous->name, "' [", previous->begin, ", ", previous->end, "]"));
      }
      if (i->begin > cursor) {
        fail(detail::concat("data bytes [", cursor, ", ", i->begin, ") before tensor '", i->name,
                            "' belong to no tensor"));
      }
      cursor = i->end;
      previous = i;
    }
    if (cursor != data_size) {
      fail(detail::concat("data bytes [", cursor, ", ", data_size, ") at the end belong to no tensor"));
    }
  }

  [[nodiscard]] st_tensor_info parse_entry(const std::string& key, const nlohmann::json& v, std::uint64_t data_size) const {
    st_tensor_info i;
    i.name = key;
    if (!v.is_object()) fail(detail::concat("tensor '", key, "': entry is not an object"));
    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(detail::concat("tensor '", key, "': missing string field 'dtype'"));
    const auto dts = dt->get<std::string>();
    bool known = false;
    for (int t = 0; t <= static_cast<int>(st_dtype::BOOL); ++t) {
      if (dts == to_string(static_cast<st_dtype>(t))) {
        i.dtype = static_cast<st_dtype>(t);
        known = true;
      }
    }
    if (!known) fail(detail::concat("tensor '", key, "': unsupported dtype '", dts, "'"));
    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(detail::concat("tensor '", key, "': missing array field 'shape'"));
    // The non-zero dimensions must multiply to an addressable byte count even
    // when a zero dimension makes the tensor empty: rimc computes partial
    // products of dimensions (strides, per-sample sizes) in int64.
    constexpr auto limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t nonzero = 1;
    bool empty = false, overflow = false;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) {
        fail(detail::concat("tensor '", key, "': shape entries must be non-negative integers, got ", d.dump()));
      }
      const auto dim = d.get<std::uint64_t>();
      if (dim == 0) {
        empty = true;
      } else if (dim > limit / size_of(i.dtype) / nonzero) {
        overflow = true;
      } else {
        nonzero *= dim;
      }
      i.shape.push_back(static_cast<std::int64_t>(std::min(dim, limit)));
    }
    if (overflow) {
      fail(detail::concat("tensor '", key, "': shape ", sh->dump(),
                          " is too large: its non-zero dimensions multiply past 2^63 elements or bytes"));
    }
    const std::uint64_t count = empty ? 0 : nonzero;
    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      fail(detail::concat("tensor '", key, "': 'data_offsets' must be two non-negative integers"));
    }
    i.begin = (*off)[0].get<std::uint64_t>();
    i.end = (*off)[1].get<std::uint64_t>();
    if (i.begin > i.end || i.end > data_size) {
      fail(detail::concat("tensor '", key, "': data_offsets [", i.begin, ", ", i.end, "] out of range for ",
                          data_size, " data bytes"));
    }
    const std::uint64_t expected = count * size_of(i.dtype);
    if (i.end - i.begin != expected) {
      fail(detail::concat("tensor '", key, "': data_offsets [", i.begin, ", ", i.end, "] hold ", i.end - i.begin,
                          " bytes but dtype ", dts, " and shape ", sh->dump(), " need ", expected));
    }
    for (const auto& [field, unused] : v.items()) {
      (void)unused;
      if (field != "dtype" && field != "shape" && field != "data_offsets") {
        fail(detail::concat("tensor '", key, "': unknown field '", field, "'"));
      }
    }
    return i;
  }

  std::string source_;
  std::vector<std::uint8_t> bytes_;
  std::uint64_t header_bytes_ = 0;
  std::vector<st_tensor_info> infos_;
  std::map<std::string, std::string> metadata_;
};

/// The dtypes rimc writes.
enum class st_write_dtype : std::uint8_t { F32, F16, BF16, F64 };

/// The bytes of a safetensors file holding `tensors` (logical NCHW order,
/// whatever their layout) and `metadata`. Tensors are laid out in name order
/// and the header is padded with spaces to a multiple of 8 bytes.
[[nodiscard]] inline std::vector<std::uint8_t> serialize_safetensors(
    const std::map<std::string, Tensor>& tensors, const std::map<std::string, std::string>& metadata = {},
    st_write_dtype dtype = st_write_dtype::F32) {
  const std::size_t esize = dtype == st_write_dtype::F64 ? 8 : dtype == st_write_dtype::F32 ? 4 : 2;
  const char* dname = dtype == st_write_dtype::F64   ? "F64"
                      : dtype == st_write_dtype::F32 ? "F32"
                      : dtype == st_write_dtype::F16 ? "F16"
                                                     : "BF16";
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw value_error("serialize_safetensors: '__metadata__' is reserved as a tensor name");
    std::vector<std::int64_t> shape(t.shape().begin(), t.shape().end());
    const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * esize;
    header[name] = {{"dtype", dname}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<std::uint8_t> out(8 + text.size() + offset);
  const std::uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::uint8_t* p = out.data() + 8 + text.size();
  for (const auto& [name, t] : tensors) {
    const Tensor plain = t.rank() == 4 ? t.to_layout(layout::nchw) : t;
    for (std::int64_t k = 0; k < plain.numel(); ++k) {
      const float v = plain[k];
      switch (dtype) {
        case st_write_dtype::F64: {
          const double d = v;
          std::memcpy(p, &d, 8);
          break;
        }
        case st_write_dtype::F32: std::memcpy(p, &v, 4); break;
        case st_write_dtype::F16: {
          const std::uint16_t h = float_to_half_bits(v);
          std::memcpy(p, &h, 2);
          break;
        }
        case st_write_dtype::BF16: {
          const std::uint16_t h = float_to_bf16_bits(v);
          std::memcpy(p, &h, 2);
          break;
        }
      }
      p += esize;
    }
  }
  return out;
}

/// Writes `tensors` to `path` as safetensors, atomically (the previous file
/// survives any failure).
inline void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                             const std::map<std::string, std::string>& metadata = {},
                             st_write_dtype dtype = st_write_dtype::F32) {
  const auto bytes = serialize_safetensors(tensors, metadata, dtype);
  write_file_atomically(path, [&](atomic_writer& w) { w.write(bytes.data(), bytes.size()); });
}

}  // namespace rimc
