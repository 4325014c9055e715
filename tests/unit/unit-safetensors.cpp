// Tests of the safetensors reader/writer and half-precision conversions
// (malformed files: unit-malformed.cpp; atomic saves: unit-atomic-saves.cpp).

#include <rimc/core/half.hpp>
#include <rimc/io/safetensors.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_safetensors {

using namespace rimc;

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
    const auto f = safetensors_file::parse(test::safetensors_bytes(header, data));
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
    const auto dir = test::temp_dir("st-roundtrip");
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
}

}  // namespace unit_safetensors
