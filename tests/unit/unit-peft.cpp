// Tests of PEFT-compatible adapter files: round trip, the config, and
// rejection of wrong keys, shapes, dtypes and settings.

#include <rimc/io/peft.hpp>

#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

using namespace rimc;

namespace {

struct two_layers {
  dora_adapter conv, fc;
  two_layers(std::uint64_t seed, std::int64_t fc_rank = 4)
      : conv(dora_adapter::conv2d(test::random_tensor(Shape{8, 3, 3, 3}, 1), conv2d_params{{1, 1}, {1, 1}},
                                  dora_config{2, 4.0, false, norm_mode::detached, seed})),
        fc(dora_adapter::linear(test::random_tensor(Shape{10, 32}, 2),
                                dora_config{fc_rank, 4.0, false, norm_mode::detached, seed + 1})) {}
  void randomise(std::uint64_t seed) {
    for (dora_adapter* a : {&conv, &fc}) {
      a->set_parameters(test::random_tensor(a->magnitude().shape(), seed), test::random_tensor(a->lora_A().shape(), seed + 1),
                        test::random_tensor(a->lora_B().shape(), seed + 2));
      seed += 3;
    }
  }
  std::vector<named_adapter<const dora_adapter>> named() const { return {{"layer1.0.conv1", &conv}, {"fc", &fc}}; }
  std::vector<named_adapter<dora_adapter>> named() { return {{"layer1.0.conv1", &conv}, {"fc", &fc}}; }
};

}  // namespace

TEST_SUITE("peft") {
  TEST_CASE("save then load restores every adapter bitwise") {
    const auto dir = test::temp_dir("peft-roundtrip");
    two_layers a(1), b(99);
    a.randomise(10);
    save_peft_adapter(dir, std::as_const(a).named(), "resnet20-fashion-mnist");
    load_peft_adapter(dir, b.named());
    CHECK(b.conv.magnitude() == a.conv.magnitude());
    CHECK(b.conv.lora_A() == a.conv.lora_A());
    CHECK(b.conv.lora_B() == a.conv.lora_B());
    CHECK(b.fc.lora_A() == a.fc.lora_A());
    CHECK(b.fc.lora_B() == a.fc.lora_B());
    CHECK(b.fc.magnitude() == a.fc.magnitude());
    CHECK(b.fc.norms() == a.fc.norms());  // refreshed after loading
  }

  TEST_CASE("the files use PEFT's keys, shapes and config fields") {
    const auto dir = test::temp_dir("peft-format");
    two_layers a(1, 2);
    save_peft_adapter(dir, std::as_const(a).named());
    const auto f = safetensors_file::load(dir / "adapter_model.safetensors");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_A.weight").shape_string() == "[2, 3, 3, 3]");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_B.weight").shape_string() == "[8, 2, 1, 1]");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_magnitude_vector").shape_string() == "[1, 8, 1, 1]");
    CHECK(f.info("base_model.model.fc.lora_A.weight").shape_string() == "[2, 32]");
    CHECK(f.info("base_model.model.fc.lora_B.weight").shape_string() == "[10, 2]");
    CHECK(f.info("base_model.model.fc.lora_magnitude_vector").shape_string() == "[10]");
    CHECK(f.tensors().size() == 6);
    std::ifstream in(dir / "adapter_config.json");
    const auto j = nlohmann::json::parse(in);
    CHECK(j["peft_type"] == "LORA");
    CHECK(j["use_dora"] == true);
    CHECK(j["r"] == 2);
    CHECK(j["lora_alpha"] == 4.0);
    CHECK(j["use_rslora"] == false);
    CHECK(j["target_modules"] == nlohmann::json::array({"layer1.0.conv1", "fc"}));
    const auto c = read_peft_config(dir);
    CHECK(c.rank_of("fc") == 2);
  }

  TEST_CASE("per-module ranks go to rank_pattern and load back") {
    const auto dir = test::temp_dir("peft-rank-pattern");
    two_layers a(1, 4), b(5, 4);
    a.randomise(3);
    save_peft_adapter(dir, std::as_const(a).named());
    CHECK(read_peft_config(dir).rank_pattern.at("fc") == 4);
    load_peft_adapter(dir, b.named());
    CHECK(b.fc.lora_A() == a.fc.lora_A());
    two_layers wrong(5, 2);
    CHECK_THROWS_WITH(load_peft_adapter(dir, wrong.named()), (std::string() + "[rimc.value_error] " + dir.string() +
                          ": module 'fc' has rank 4 in adapter_config.json but the adapter has rank 2").c_str());
  }

  TEST_CASE("a file with a missing key, a wrong shape or a wrong dtype is rejected and nothing changes") {
    const auto dir = test::temp_dir("peft-bad");
    two_layers a(1);
    a.randomise(7);
    save_peft_adapter(dir, std::as_const(a).named());
    const auto st = dir / "adapter_model.safetensors";
    const auto good = safetensors_file::load(st);
    auto rewrite = [&](const std::string& drop, const std::string& add, const Tensor& t) {
      std::map<std::string, Tensor> m;
      for (const auto& i : good.tensors())
        if (i.name != drop) m[i.name] = good.tensor(i.name);
      if (!add.empty()) m[add] = t;
      save_safetensors(st, m);
    };
    two_layers b(50);
    const Tensor before = b.conv.lora_A();
    SUBCASE("missing key") {
      rewrite("base_model.model.fc.lora_B.weight", "base_model.model.fc.lora_b.weight", Tensor(Shape{10, 4}));
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.named()), (std::string() + "[rimc.io_error] " + st.string() + ": missing tensor 'base_model.model.fc.lora_B.weight'").c_str());
    }
    SUBCASE("wrong shape") {
      rewrite("base_model.model.fc.lora_A.weight", "base_model.model.fc.lora_A.weight", Tensor(Shape{4, 31}));
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.named()), (std::string() + "[rimc.shape_error] " + st.string() +
                            ": tensor 'base_model.model.fc.lora_A.weight' has shape [4, 31] but the adapter expects "
                            "[4, 32]").c_str());
    }
    SUBCASE("wrong dtype") {
      // An integer tensor where a float one belongs: written by hand.
      std::map<std::string, Tensor> m;
      for (const auto& i : good.tensors()) m[i.name] = good.tensor(i.name);
      auto bytes = serialize_safetensors(m);
      std::uint64_t n;
      std::memcpy(&n, bytes.data(), 8);
      std::string header(reinterpret_cast<const char*>(bytes.data() + 8), n);
      const auto key = std::string("\"base_model.model.fc.lora_magnitude_vector\":{\"dtype\":\"F32\"");
      const auto pos = header.find(key);
      REQUIRE(pos != std::string::npos);
      header.replace(pos + key.size() - 5, 5, "\"I32\"");
      std::copy(header.begin(), header.end(), bytes.begin() + 8);
      write_file_atomically(st, [&](atomic_writer& w) { w.write(bytes.data(), bytes.size()); });
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.named()), (std::string() + "[rimc.io_error] " + st.string() +
                            ": tensor 'base_model.model.fc.lora_magnitude_vector' has dtype I32; adapter tensors must "
                            "be floating point").c_str());
    }
    CHECK(b.conv.lora_A() == before);  // the first module was not half-loaded
  }
}
