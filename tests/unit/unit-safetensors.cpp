// Tests of the safetensors reader/writer, half-precision conversions and atomic saves.

#include <rimc/core/half.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/io/safetensors.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

using namespace rimc;

namespace {

/// A safetensors file from a header text and raw data bytes.
std::vector<std::uint8_t> make_file(const std::string& header, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out(8 + header.size() + data.size());
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  std::copy(data.begin(), data.end(), out.begin() + static_cast<std::ptrdiff_t>(8 + header.size()));
  return out;
}

std::vector<std::uint8_t> floats(std::initializer_list<float> v) {
  std::vector<std::uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.begin(), b.size());
  return b;
}

std::filesystem::path temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("rimc-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace

TEST_SUITE("half") {
  TEST_CASE("fp16 conversion is exact on representable values and rounds to nearest even") {
    CHECK(float_to_half_bits(1.0f) == 0x3c00);
    CHECK(float_to_half_bits(-2.0f) == 0xc000);
    CHECK(float_to_half_bits(65504.0f) == 0x7bff);
    CHECK(float_to_half_bits(65520.0f) == 0x7c00);  // rounds up to infinity
    CHECK(float_to_half_bits(65519.0f) == 0x7bff);
    CHECK(float_to_half_bits(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
    CHECK(float_to_half_bits(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even (zero)
    CHECK(float_to_half_bits(std::ldexp(3.0f, -25)) == 0x0002);  // 1.5 ulp rounds to 2
    CHECK(float_to_half_bits(std::ldexp(1.0f, -14)) == 0x0400);  // smallest normal
    CHECK(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie to even
    CHECK(float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
    CHECK(float_to_half_bits(std::numeric_limits<float>::infinity()) == 0x7c00);
    CHECK(std::isnan(half_bits_to_float(float_to_half_bits(std::numeric_limits<float>::quiet_NaN()))));
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
      const auto bits = static_cast<std::uint16_t>(h);
      const float f = half_bits_to_float(bits);
      if (std::isnan(f)) continue;
      REQUIRE(float_to_half_bits(f) == bits);  // every half survives a round trip
    }
  }

  TEST_CASE("bf16 conversion keeps the top 16 bits with round to nearest even") {
    CHECK(float_to_bf16_bits(1.0f) == 0x3f80);
    CHECK(bf16_bits_to_float(0x3f80) == 1.0f);
    CHECK(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);       // tie to even
    CHECK(float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);   // tie to even, up
    CHECK(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  }
}

TEST_SUITE("safetensors") {
  TEST_CASE("a hand-made file is read with every dtype converted to float") {
    std::vector<std::uint8_t> data;
    auto put = [&](const void* p, std::size_t n) {
      const auto* c = static_cast<const std::uint8_t*>(p);
      data.insert(data.end(), c, c + n);
    };
    const float f32[] = {1.5f, -2.0f};
    const double f64[] = {0.25};
    const std::uint16_t f16[] = {0x3c00, 0xc000}, b16[] = {0x3f80};
    const std::int32_t i32[] = {-7};
    const std::uint8_t u8[] = {200}, bl[] = {1, 0};
    put(f32, 8), put(f64, 8), put(f16, 4), put(b16, 2), put(i32, 4), put(u8, 1), put(bl, 2);
    const std::string header =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("b":{"dtype":"F64","shape":[1,1],"data_offsets":[8,16]},)"
        R"("c":{"dtype":"F16","shape":[2,1,1,1],"data_offsets":[16,20]},)"
        R"("d":{"dtype":"BF16","shape":[1],"data_offsets":[20,22]},)"
        R"("e":{"dtype":"I32","shape":[1],"data_offsets":[22,26]},)"
        R"("f":{"dtype":"U8","shape":[1],"data_offsets":[26,27]},)"
        R"("g":{"dtype":"BOOL","shape":[2],"data_offsets":[27,29]},)"
        R"("z":{"dtype":"F32","shape":[0,3],"data_offsets":[29,29]},)"
        R"("__metadata__":{"format":"pt"}})";
    const auto f = safetensors_file::parse(make_file(header, data));
    CHECK(f.tensors().size() == 8);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.tensor("a") == Tensor::from(Shape{2}, {1.5f, -2.0f}));
    CHECK(f.tensor("b") == Tensor::from(Shape{1, 1}, {0.25f}));
    CHECK(f.tensor("c") == Tensor::from(Shape{2, 1, 1, 1}, {1.0f, -2.0f}));
    CHECK(f.tensor("d")[0] == 1.0f);
    CHECK(f.tensor("e")[0] == -7.0f);
    CHECK(f.tensor("f")[0] == 200.0f);
    CHECK(f.tensor("g") == Tensor::from(Shape{2}, {1.0f, 0.0f}));
    CHECK(f.tensor("z").numel() == 0);
    CHECK(f.tensor("z").shape() == Shape{0, 3});
    CHECK_THROWS_WITH((void)f.tensor("nope"), "[rimc.io_error] <memory>: no tensor named 'nope'");
  }

  TEST_CASE("save then load is bitwise for F32 and within rounding for F16/BF16, in any layout") {
    const auto dir = temp_dir("st-roundtrip");
    std::map<std::string, Tensor> ts;
    ts["conv.weight"] = test::random_tensor(Shape{4, 3, 3, 3}, 1, layout::nhwc);
    ts["fc.bias"] = test::random_tensor(Shape{10}, 2);
    ts["empty"] = Tensor(Shape{0});
    save_safetensors(dir / "m.safetensors", ts, {{"producer", "rimc"}});
    const auto f = safetensors_file::load(dir / "m.safetensors");
    CHECK(f.metadata().at("producer") == "rimc");
    for (const auto& [k, v] : ts) CHECK(f.tensor(k) == v);
    for (auto dt : {st_write_dtype::F16, st_write_dtype::BF16, st_write_dtype::F64}) {
      save_safetensors(dir / "h.safetensors", ts, {}, dt);
      const auto h = safetensors_file::load(dir / "h.safetensors");
      const double rel = dt == st_write_dtype::F16 ? 1e-3 : dt == st_write_dtype::BF16 ? 8e-3 : 0.0;
      test::check_close(h.tensor("conv.weight"), ts["conv.weight"], rel, 1e-7);
    }
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("malformed files are rejected with the key, field and values named") {
    const auto ok = floats({1, 2});
    struct bad {
      const char* what;
      std::vector<std::uint8_t> bytes;
      const char* message;
    };
    auto with_len = [](std::uint64_t n, std::vector<std::uint8_t> rest) {
      std::vector<std::uint8_t> out(8);
      std::memcpy(out.data(), &n, 8);
      out.insert(out.end(), rest.begin(), rest.end());
      return out;
    };
    const std::vector<bad> cases = {
        {"truncated before the length", {1, 2, 3},
         "[rimc.io_error] <memory>: file is 3 bytes, shorter than the 8-byte header length"},
        {"header length beyond the file", with_len(100, {'{', '}'}),
         "[rimc.io_error] <memory>: header length 100 runs past the end of the file (2 bytes after the length)"},
        {"absurd header length", with_len(1ull << 40, {}),
         "[rimc.io_error] <memory>: header length 1099511627776 exceeds the limit of 100000000"},
        {"not an object", make_file("[1,2]", {}), "[rimc.io_error] <memory>: header does not start with '{'"},
        {"offsets out of range", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': data_offsets [0, 16] out of range for 8 data bytes"},
        {"dtype and shape disagree with the offsets",
         make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': data_offsets [0, 8] hold 8 bytes but dtype F64 and shape [2] need 16"},
        {"overlapping offsets",
         make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   ok),
         "[rimc.io_error] <memory>: tensor 'b' data_offsets [4, 8] overlap tensor 'a' [0, 8]"},
        {"a hole in the data", make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", ok),
         "[rimc.io_error] <memory>: data bytes [0, 4) before tensor 'a' belong to no tensor"},
        {"trailing bytes", make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", ok),
         "[rimc.io_error] <memory>: data bytes [4, 8) at the end belong to no tensor"},
        {"shape product overflow",
         make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': shape [4294967296,4294967296] has more elements than can be "
         "addressed"},
        {"negative dimension", make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': shape entries must be non-negative integers, got -2"},
        {"unknown dtype", make_file(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': unsupported dtype 'F8_E4M3'"},
        {"duplicate keys",
         make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                   ok),
         "[rimc.io_error] <memory>: header has the key 'a' twice"},
        {"missing dtype", make_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': missing string field 'dtype'"},
        {"bad data_offsets", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': 'data_offsets' must be two non-negative integers"},
        {"unknown field", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", ok),
         "[rimc.io_error] <memory>: tensor 'a': unknown field 'x'"},
        {"metadata not strings", make_file(R"({"__metadata__":{"n":1}})", {}),
         "[rimc.io_error] <memory>: '__metadata__' value of 'n' is not a string"},
    };
    for (const auto& c : cases) {
      SUBCASE(c.what) { CHECK_THROWS_WITH((void)safetensors_file::parse(c.bytes), c.message); }
    }
    SUBCASE("non-UTF-8 header") {
      std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b\xff":1})";
      CHECK_THROWS_AS((void)safetensors_file::parse(make_file(h, ok)), io_error);
    }
    SUBCASE("invalid JSON") {
      CHECK_THROWS_AS((void)safetensors_file::parse(make_file(R"({"a":)", {})), io_error);
    }
  }

  TEST_CASE("non-finite weights and rank above 4 are rejected when read as tensors") {
    const auto nan = floats({1.0f, std::numeric_limits<float>::quiet_NaN()});
    const auto f = safetensors_file::parse(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", nan));
    CHECK_THROWS_WITH((void)f.tensor("w"), "[rimc.value_error] <memory>: tensor 'w' element 1 is nan");
    CHECK(std::isnan(f.tensor("w", false)[1]));
    const auto r5 = safetensors_file::parse(
        make_file(R"({"w":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})", floats({1, 2})));
    CHECK_THROWS_WITH((void)r5.tensor("w"),
                      "[rimc.shape_error] <memory>: tensor 'w' has shape [1, 1, 1, 1, 2] of rank 5; rimc tensors have "
                      "rank at most 4");
  }

  TEST_CASE("a failure in the middle of a save leaves the previous file intact") {
    const auto dir = temp_dir("st-atomic");
    const auto path = dir / "adapter.safetensors";
    std::map<std::string, Tensor> first{{"x", Tensor::from(Shape{2}, {1, 2})}};
    save_safetensors(path, first);
    CHECK_THROWS_WITH(write_file_atomically(path,
                                            [](atomic_writer& w) {
                                              w.write("partial garbage");
                                              throw io_error("injected failure");
                                            }),
                      "[rimc.io_error] injected failure");
    CHECK(safetensors_file::load(path).tensor("x") == first["x"]);
    // No temporary file is left behind.
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file() ? 1 : 0;
    CHECK(files == 1);
    CHECK_THROWS_AS(save_safetensors(dir / "missing-dir" / "a.safetensors", first), io_error);
    std::filesystem::remove_all(dir);
  }
}
