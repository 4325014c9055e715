// The malformed-input table: one row per kind of bad file rimc reads
// (safetensors, IDX raw and gzip, CIFAR, adapter_config.json, adapter
// weights), each with the exact error it must raise. Readers never crash or
// return garbage on these; the fuzz harnesses of tests/fuzz look for more.
//
// Zero-size tensors are valid safetensors (PyTorch exports them, e.g. an
// empty buffer): a tensor with a zero dimension and an empty byte range
// inside the data section is accepted and reads as an empty rimc::Tensor, as
// long as its non-zero dimensions multiply to an addressable count. NaN and
// infinite weights are rejected when a tensor is read (unless the caller
// asks for them with require_finite = false).

#include <rimc/data/dataset.hpp>
#include <rimc/io/idx.hpp>
#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/safetensors.hpp>

#include "test_adapters.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_malformed {

using namespace rimc;
using test::float_bytes;
using test::safetensors_bytes;

namespace {

/// One bad input: what is wrong, how it is read, and the exact error (or,
/// where the message embeds the JSON library's text or a byte count that
/// depends on zlib's compressed output, a precise prefix of it).
struct bad_input {
  const char* kind;
  std::function<void()> read;
  std::string error;
  bool prefix_only = false;
};

void check_rows(const std::vector<bad_input>& rows) {
  for (const auto& row : rows) {
    SUBCASE(row.kind) {
      std::string got = "(accepted without an error)";
      try {
        row.read();
      } catch (const rimc::error& e) {
        got = e.what();
      }
      if (row.prefix_only) {
        CHECK(got.substr(0, row.error.size()) == row.error);
      } else {
        CHECK(got == row.error);
      }
    }
  }
}

std::function<void()> parse_st(std::vector<std::uint8_t> bytes) {
  return [bytes] { (void)safetensors_file::parse(bytes); };
}
std::function<void()> parse_st(const std::string& header, const std::vector<std::uint8_t>& data) {
  return parse_st(safetensors_bytes(header, data));
}
std::function<void()> read_tensor(const std::string& header, const std::vector<std::uint8_t>& data) {
  return [f = safetensors_bytes(header, data)] { (void)safetensors_file::parse(f).tensor("w"); };
}
/// `rest` after a header length of `n`, whatever rest's size.
std::vector<std::uint8_t> with_length(std::uint64_t n, const std::string& rest) {
  auto out = safetensors_bytes(rest, {});
  std::memcpy(out.data(), &n, 8);
  return out;
}
std::vector<std::uint8_t> cut(std::vector<std::uint8_t> bytes, std::size_t drop) {
  bytes.resize(bytes.size() - drop);
  return bytes;
}

std::function<void()> parse_idx_bytes(std::vector<std::uint8_t> bytes) {
  return [bytes] { (void)parse_idx(bytes, "x.idx"); };
}
std::function<void()> mnist(std::vector<std::uint8_t> images, std::vector<std::uint8_t> labels) {
  return [images, labels] { (void)mnist_like_dataset(parse_idx(images, "i"), parse_idx(labels, "l"), "mnist"); };
}

std::vector<std::uint8_t> cifar_records_bytes(int records, int label_bytes, std::uint8_t label) {
  std::vector<std::uint8_t> b;
  for (int i = 0; i < records; ++i) {
    b.insert(b.end(), static_cast<std::size_t>(label_bytes), label);
    b.insert(b.end(), 3072, 17);
  }
  return b;
}
std::function<void()> parse_cifar_bytes(std::vector<std::uint8_t> bytes, int label_bytes = 1, int classes = 10) {
  return [=] { (void)parse_cifar(bytes, "x.bin", label_bytes, classes); };
}

std::function<void()> config(std::string text) {
  return [text] { (void)parse_peft_config(text, "cfg.json"); };
}
const std::string lora = R"("peft_type": "LORA", "use_dora": true)";

}  // namespace

TEST_SUITE("malformed") {
  TEST_CASE("malformed safetensors files are rejected with the key, field and values named") {
    const auto two = float_bytes({1, 2});
    const std::string a2 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    const std::string e = "[rimc.io_error] <memory>: ";
    check_rows({
        {"truncated before the header length", parse_st({1, 2, 3}),
         e + "file is 3 bytes, shorter than the 8-byte header length"},
        {"truncated in the data", parse_st(cut(safetensors_bytes(a2, two), 4)),
         e + "tensor 'a': data_offsets [0, 8] out of range for 4 data bytes"},
        {"header length beyond the file", parse_st(with_length(100, "{}")),
         e + "header length 100 runs past the end of the file (2 bytes after the length)"},
        {"absurd header length", parse_st(with_length(1ull << 40, "")),
         e + "header length 1099511627776 exceeds the limit of 100000000"},
        {"header not an object", parse_st("[1,2]", {}), e + "header does not start with '{'"},
        {"header not valid JSON", parse_st(R"({"a":)", {}),
         e + "header is not valid JSON: [json.exception.parse_error.101]", true},
        {"non-UTF-8 header", parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b\xff":1})", two),
         e + "header is not valid JSON: [json.exception.parse_error.101]", true},
        {"offsets out of range", parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", two),
         e + "tensor 'a': data_offsets [0, 16] out of range for 8 data bytes"},
        {"offsets reversed", parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", two),
         e + "tensor 'a': data_offsets [8, 0] out of range for 8 data bytes"},
        {"overlapping offsets",
         parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  two),
         e + "tensor 'b' data_offsets [4, 8] overlap tensor 'a' [0, 8]"},
        {"a hole in the data", parse_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", two),
         e + "data bytes [0, 4) before tensor 'a' belong to no tensor"},
        {"trailing bytes", parse_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", two),
         e + "data bytes [4, 8) at the end belong to no tensor"},
        {"shape product overflow",
         parse_st(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': shape [4294967296,4294967296] is too large: its non-zero dimensions multiply past 2^63 "
             "elements or bytes"},
        {"zero-size tensor whose other dimensions overflow",
         parse_st(R"({"a":{"dtype":"F32","shape":[4294967296,0,4294967296],"data_offsets":[0,0]}})", {}),
         e + "tensor 'a': shape [4294967296,0,4294967296] is too large: its non-zero dimensions multiply past 2^63 "
             "elements or bytes"},
        {"dimension beyond int64", parse_st(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': shape [18446744073709551615] is too large: its non-zero dimensions multiply past 2^63 "
             "elements or bytes"},
        {"negative dimension", parse_st(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': shape entries must be non-negative integers, got -2"},
        {"fractional dimension", parse_st(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': shape entries must be non-negative integers, got 2.0"},
        {"dtype mismatch: byte count vs dtype",
         parse_st(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': data_offsets [0, 8] hold 8 bytes but dtype F64 and shape [2] need 16"},
        {"unknown dtype", parse_st(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': unsupported dtype 'F8_E4M3'"},
        {"duplicate keys",
         parse_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  two),
         e + "header has the key 'a' twice"},
        {"entry not an object", parse_st(R"({"a":[1]})", {}), e + "tensor 'a': entry is not an object"},
        {"missing dtype", parse_st(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", two),
         e + "tensor 'a': missing string field 'dtype'"},
        {"missing shape", parse_st(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", two),
         e + "tensor 'a': missing array field 'shape'"},
        {"bad data_offsets", parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", two),
         e + "tensor 'a': 'data_offsets' must be two non-negative integers"},
        {"unknown field", parse_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", two),
         e + "tensor 'a': unknown field 'x'"},
        {"metadata not an object", parse_st(R"({"__metadata__":[]})", {}), e + "'__metadata__' is not an object"},
        {"metadata values not strings", parse_st(R"({"__metadata__":{"n":1}})", {}),
         e + "'__metadata__' value of 'n' is not a string"},
        {"NaN weights", read_tensor(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                    float_bytes({1.0f, std::numeric_limits<float>::quiet_NaN()})),
         "[rimc.value_error] <memory>: tensor 'w' element 1 is nan"},
        {"infinite weights", read_tensor(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                         float_bytes({-std::numeric_limits<float>::infinity(), 1.0f})),
         "[rimc.value_error] <memory>: tensor 'w' element 0 is -inf"},
        {"infinite F16 weights", read_tensor(R"({"w":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", {0x00, 0x7c}),
         "[rimc.value_error] <memory>: tensor 'w' element 0 is inf"},
        {"rank above 4", read_tensor(R"({"w":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})", two),
         "[rimc.shape_error] <memory>: tensor 'w' has shape [1, 1, 1, 1, 2] of rank 5; rimc tensors have rank at "
         "most 4"},
    });
  }

  TEST_CASE("valid edge cases of the safetensors format are accepted") {
    // Zero-size tensors (several may share an offset), entries listed in any
    // order, and a file with no tensors at all.
    const auto f = safetensors_file::parse(safetensors_bytes(
        R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
        R"("y":{"dtype":"I8","shape":[2,0],"data_offsets":[4,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
        float_bytes({1, 2})));
    CHECK(f.tensor("z").shape() == Shape{0, 3});
    CHECK(f.tensor("y").numel() == 0);
    CHECK(f.tensor("a")[0] == 1.0f);
    CHECK(f.tensor("b")[0] == 2.0f);
    CHECK(safetensors_file::parse(safetensors_bytes("{}", {})).tensors().empty());
  }

  TEST_CASE("malformed IDX files, raw and gzip, are rejected with the field and values named") {
    const std::string e = "[rimc.io_error] x.idx: ";
    const auto gz = test::gzip_bytes(test::idx_bytes(0x08, {1000}, 1000));
    auto corrupt = gz;
    corrupt[gz.size() - 6] ^= 0xff;  // inside the CRC-32 of the trailer
    check_rows({
        {"too short for a header", parse_idx_bytes({0, 0, 8}), e + "3 bytes, too short for an IDX header"},
        {"wrong IDX magic", parse_idx_bytes({1, 2, 8, 1, 0, 0, 0, 0}),
         e + "bad IDX magic: the first two bytes are 1, 2 (expected 0, 0)"},
        {"unsupported element type", parse_idx_bytes(test::idx_bytes(0x0d, {2}, 8)),
         e + "IDX element type 0xd is not supported (only unsigned bytes, 0x08)"},
        {"rank 0", parse_idx_bytes({0, 0, 8, 0}), e + "IDX rank 0 out of range [1, 4]"},
        {"rank 5", parse_idx_bytes(test::idx_bytes(0x08, {1, 1, 1, 1, 1}, 1)), e + "IDX rank 5 out of range [1, 4]"},
        {"truncated header", parse_idx_bytes({0, 0, 8, 3, 0, 0}), e + "6 bytes, too short for a rank-3 IDX header"},
        {"truncated data", parse_idx_bytes(test::idx_bytes(0x08, {10, 4}, 39)),
         e + "IDX header promises 40 bytes of data, the file holds 39"},
        {"trailing bytes", parse_idx_bytes(test::idx_bytes(0x08, {10}, 11)),
         e + "IDX header promises 10 bytes of data, the file holds 11"},
        {"dimensions too large", parse_idx_bytes(test::idx_bytes(0x08, {0xffffffff, 0xffffffff}, 0)),
         e + "IDX dimensions [4294967295, 4294967295] are implausibly large (more than 2^40 elements)"},
        {"dimension product wrapping to 0 in 64 bits", parse_idx_bytes(test::idx_bytes(0x08, {1u << 20, 1u << 20, 1u << 24}, 0)),
         e + "IDX dimensions [1048576, 1048576, 16777216] are implausibly large (more than 2^40 elements)"},
        {"zero dimension beside huge ones", parse_idx_bytes(test::idx_bytes(0x08, {0, 0xffffffff, 0xffffffff}, 0)),
         e + "IDX dimensions [0, 4294967295, 4294967295] are implausibly large (more than 2^40 elements)"},
        {"truncated gzip", parse_idx_bytes(cut(gz, gz.size() / 2)), e + "gzip stream is truncated after ", true},
        {"corrupt gzip", parse_idx_bytes(corrupt), e + "gzip data is corrupt (incorrect data check) after 1008 bytes"},
        {"gzip of garbage", parse_idx_bytes({0x1f, 0x8b, 0x08, 0x00, 0xff}), e + "gzip stream is truncated after 0 bytes"},
        {"label/image count mismatch",
         mnist(test::idx_bytes(0x08, {3, 2, 2}, 12), test::idx_bytes(0x08, {4}, 4, 1)),
         "[rimc.io_error] mnist: 3 images but 4 labels"},
        {"images not rank 3", mnist(test::idx_bytes(0x08, {3, 4}, 12), test::idx_bytes(0x08, {3}, 3, 1)),
         "[rimc.io_error] mnist: images must be rank 3, got rank 2"},
        {"label out of range", mnist(test::idx_bytes(0x08, {1, 1, 1}, 1), test::idx_bytes(0x08, {1}, 1, 10)),
         "[rimc.io_error] mnist: label 10 out of range [0, 9]"},
    });
  }

  TEST_CASE("malformed CIFAR files are rejected with the record and values named") {
    const std::string e = "[rimc.io_error] x.bin: ";
    const auto gz = test::gzip_bytes(cifar_records_bytes(2, 1, 3));
    check_rows({
        {"bad record length", parse_cifar_bytes(cut(cifar_records_bytes(2, 1, 3), 1)),
         e + "6145 bytes is not a whole number of 3073-byte CIFAR records"},
        {"CIFAR-100 record length", parse_cifar_bytes(cifar_records_bytes(1, 1, 3), 2, 100),
         e + "3073 bytes is not a whole number of 3074-byte CIFAR records"},
        {"empty file", parse_cifar_bytes({}), e + "0 bytes is not a whole number of 3073-byte CIFAR records"},
        {"label out of range", parse_cifar_bytes(cifar_records_bytes(2, 1, 12)),
         e + "record 0 has label 12, not below 10"},
        {"truncated gzip", parse_cifar_bytes(cut(gz, 20)), e + "gzip stream is truncated after ", true},
        {"bad label byte count", parse_cifar_bytes(cifar_records_bytes(1, 1, 3), 3),
         "[rimc.value_error] parse_cifar: label_bytes must be 1 (CIFAR-10) or 2 (CIFAR-100), got 3"},
    });
  }

  TEST_CASE("bad adapter_config.json fields are rejected with the field and value named") {
    const std::string e = "[rimc.io_error] cfg.json: ";
    check_rows({
        {"not JSON", config("{\"r\": "), e + "not valid JSON: [json.exception.parse_error.101]", true},
        {"not an object", config("[1]"), e + "not a JSON object"},
        {"peft_type missing", config(R"({"r": 2})"), e + "'peft_type' must be \"LORA\", got nothing"},
        {"peft_type another method", config(R"({"peft_type": "IA3"})"), e + "'peft_type' must be \"LORA\", got \"IA3\""},
        {"peft_type not a string", config(R"({"peft_type": 7})"), e + "'peft_type' must be \"LORA\", got 7"},
        {"use_dora not a boolean", config(R"({"peft_type": "LORA", "use_dora": "yes"})"),
         e + "'use_dora' must be true or false, got \"yes\""},
        {"r missing", config("{" + lora + R"(, "lora_alpha": 4})"), e + "'r' is missing"},
        {"r zero", config("{" + lora + R"(, "r": 0, "lora_alpha": 4})"), e + "'r' must be an integer >= 1, got 0"},
        {"r fractional", config("{" + lora + R"(, "r": 2.5, "lora_alpha": 4})"),
         e + "'r' must be an integer >= 1, got 2.5"},
        {"r beyond int64", config("{" + lora + R"(, "r": 18446744073709551615, "lora_alpha": 4})"),
         e + "'r' must be an integer >= 1, got 1.84467e+19"},
        {"r a string", config("{" + lora + R"(, "r": "2", "lora_alpha": 4})"), e + "'r' must be an integer >= 1, got \"2\""},
        {"lora_alpha missing", config("{" + lora + R"(, "r": 2})"), e + "'lora_alpha' is missing"},
        {"lora_alpha negative", config("{" + lora + R"(, "r": 2, "lora_alpha": -4})"),
         e + "'lora_alpha' must be a positive finite number, got -4"},
        {"lora_alpha zero", config("{" + lora + R"(, "r": 2, "lora_alpha": 0})"),
         e + "'lora_alpha' must be a positive finite number, got 0"},
        {"lora_alpha beyond double", config("{" + lora + R"(, "r": 2, "lora_alpha": 1e999})"),
         e + "not valid JSON: [json.exception.out_of_range.406]", true},
        {"use_rslora not a boolean", config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "use_rslora": 1})"),
         e + "'use_rslora' must be true or false, got 1"},
        {"target_modules not strings", config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "target_modules": ["fc", 3]})"),
         e + "'target_modules' entries must be strings, got 3"},
        {"target_modules a number", config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "target_modules": 3})"),
         e + "'target_modules' must be a list of names or a regular expression, got 3"},
        {"target_modules not a regular expression",
         config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "target_modules": "fc|(conv"})"),
         e + "'target_modules' 'fc|(conv' is not a regular expression rimc can read", true},
        {"rank_pattern key not a regular expression",
         config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "rank_pattern": {"fc[": 4}})"),
         e + "'rank_pattern' entry 'fc[' is not a regular expression rimc can read", true},
        {"rank_pattern not an object", config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "rank_pattern": [4]})"),
         e + "'rank_pattern' must be an object, got [4]"},
        {"rank_pattern entry zero", config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "rank_pattern": {"fc": 0}})"),
         e + "'rank_pattern' entry 'fc' must be an integer >= 1, got 0"},
        {"alpha_pattern entry not a number",
         config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "alpha_pattern": {"fc": "8"}})"),
         e + "'alpha_pattern' entry 'fc' must be a positive finite number, got \"8\""},
    });
  }

  TEST_CASE("inputs the fuzzers found are rejected with the exact error") {
    // fuzz_peft: a number as peft_type escaped as nlohmann::type_error (std::terminate in a program).
    const auto dir = std::filesystem::path(RIMC_TEST_DATA_DIR) / "fuzz" / "peft-type-number";
    CHECK_THROWS_WITH((void)read_peft_config(dir),
                      ("[rimc.io_error] " + (dir / "adapter_config.json").string() +
                       ": 'peft_type' must be \"LORA\", got 4444444444444444").c_str());
  }

  TEST_CASE("bad adapter weights are rejected and leave the adapters unchanged") {
    test::adapted_pair<> pair(1, 2, 2);
    const Tensor before = pair.fc->adapter().lora_A();
    const peft_config cfg = parse_peft_config("{" + lora + R"(, "r": 2, "lora_alpha": 4, "target_modules": ["fc"]})");
    std::map<std::string, Tensor> good{
        {"base_model.model.fc.lora_A.weight", test::random_tensor(Shape{2, 32}, 2)},
        {"base_model.model.fc.lora_B.weight", test::random_tensor(Shape{10, 2}, 3)},
        {"base_model.model.fc.lora_magnitude_vector", test::random_tensor(Shape{10}, 4)},
        {"base_model.model.layer1.0.conv1.lora_A.weight", test::random_tensor(Shape{2, 3, 3, 3}, 5)},
        {"base_model.model.layer1.0.conv1.lora_B.weight", test::random_tensor(Shape{8, 2, 1, 1}, 6)},
        {"base_model.model.layer1.0.conv1.lora_magnitude_vector", test::random_tensor(Shape{1, 8, 1, 1}, 7)}};
    auto load = [&](std::map<std::string, Tensor> tensors) {
      return [&pair, &cfg, tensors] {
        load_peft_adapter(cfg, safetensors_file::parse(serialize_safetensors(tensors)), pair.net, "adapter");
      };
    };
    auto with = [&](const std::string& key, Tensor t) {
      auto m = good;
      m[key] = std::move(t);
      return m;
    };
    auto nan = test::random_tensor(Shape{10, 2}, 5);
    nan[3] = std::numeric_limits<float>::quiet_NaN();
    auto without_b = good;
    without_b.erase("base_model.model.fc.lora_B.weight");
    check_rows({
        {"NaN in an adapter tensor", load(with("base_model.model.fc.lora_B.weight", nan)),
         "[rimc.value_error] <memory>: tensor 'base_model.model.fc.lora_B.weight' element 3 is nan"},
        {"wrong adapter tensor shape", load(with("base_model.model.fc.lora_A.weight", Tensor(Shape{2, 31}))),
         "[rimc.shape_error] <memory>: tensor 'base_model.model.fc.lora_A.weight' has shape [2, 31] but the adapter "
         "expects [2, 32]"},
        {"missing adapter tensor", load(without_b),
         "[rimc.io_error] <memory>: missing tensor 'base_model.model.fc.lora_B.weight'"},
    });
    CHECK(pair.fc->adapter().lora_A() == before);
  }
}

}  // namespace unit_malformed
