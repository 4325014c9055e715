// Tests of PEFT-compatible adapter files: round trips for DoRA and LoRA, the
// keys and config fields, configs that PEFT's own matching rules resolve to
// exactly the adapted modules (with the ResNet-18 clash as a row), attaching
// a saved directory to a bare network, and rejection of wrong keys, shapes,
// dtypes and settings.

#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/peft.hpp>

#include "test_adapters.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_peft {

using namespace rimc;

namespace {

nlohmann::ordered_json read_json(const std::filesystem::path& dir) {
  std::ifstream in(dir / "adapter_config.json");
  return nlohmann::ordered_json::parse(in);
}

/// PEFT's matching rules, written here from PEFT's documentation and source, independently of
/// rimc's reader: a list entry targets names equal to it or ending with "." + it, a string must
/// match the whole name; a module's pattern key is the first rank_pattern, then alpha_pattern,
/// key k such that re.match(rf"(.*\.)?({k})$", name) (PEFT >= 0.14) or re.match(rf"(.*\.)?{k}$", name)
/// (PEFT 0.10-0.13) matches, and its rank / alpha are that key's values or the defaults.
struct peft_rules {
  nlohmann::ordered_json cfg;
  bool grouped = true;  ///< the (k) form; false: the bare k form

  [[nodiscard]] bool targets(const std::string& name) const {
    const auto& t = cfg["target_modules"];
    if (t.is_string()) return std::regex_match(name, std::regex(t.get<std::string>()));
    for (const auto& e : t) {
      const std::string s = e.get<std::string>();
      if (name == s || (name.size() > s.size() && name.substr(name.size() - s.size() - 1) == "." + s)) return true;
    }
    return false;
  }
  [[nodiscard]] std::string key_of(const std::string& name) const {
    for (const char* field : {"rank_pattern", "alpha_pattern"}) {
      for (const auto& [k, v] : cfg[field].items()) {
        const std::string re = grouped ? "(.*\\.)?(" + k + ")" : "(.*\\.)?" + k;
        if (std::regex_match(name, std::regex(re))) return k;
      }
    }
    return name;
  }
  [[nodiscard]] std::int64_t rank_of(const std::string& name) const {
    const std::string k = key_of(name);
    return cfg["rank_pattern"].contains(k) ? cfg["rank_pattern"][k].get<std::int64_t>() : cfg["r"].get<std::int64_t>();
  }
  [[nodiscard]] double alpha_of(const std::string& name) const {
    const std::string k = key_of(name);
    return cfg["alpha_pattern"].contains(k) ? cfg["alpha_pattern"][k].get<double>() : cfg["lora_alpha"].get<double>();
  }
};

/// torchvision's ResNet-18 conv and linear module names.
std::vector<std::string> resnet18_modules() {
  std::vector<std::string> m{"conv1"};
  for (int s = 1; s <= 4; ++s)
    for (int b = 0; b < 2; ++b) {
      const std::string p = "layer" + std::to_string(s) + "." + std::to_string(b) + ".";
      m.push_back(p + "conv1");
      m.push_back(p + "conv2");
      if (s > 1 && b == 0) m.push_back(p + "downsample.0");
    }
  m.push_back("fc");
  return m;
}

struct module_setting {
  std::int64_t rank;
  double alpha;
};

/// Every ResNet-18 module resolves under `rules` to exactly `adapted` (targeted, rank, alpha);
/// returns the first disagreement ("" when none).
std::string check_resolution(const peft_rules& rules, const std::map<std::string, module_setting>& adapted) {
  for (const auto& name : resnet18_modules()) {
    const auto it = adapted.find(name);
    if (rules.targets(name) != (it != adapted.end())) {
      return name + (it == adapted.end() ? " is targeted but has no adapter" : " is not targeted");
    }
    if (it == adapted.end()) continue;
    if (rules.rank_of(name) != it->second.rank) {
      return name + " resolves to rank " + std::to_string(rules.rank_of(name)) + ", not " + std::to_string(it->second.rank);
    }
    if (rules.alpha_of(name) != it->second.alpha) return name + " resolves to another alpha";
  }
  return "";
}

}  // namespace

TEST_SUITE("peft") {
  TEST_CASE_TEMPLATE("save then load restores every adapter bitwise", A, dora_adapter, lora_adapter) {
    const auto dir = test::temp_dir("peft-roundtrip");
    test::adapted_pair<A> a(1), b(99);
    save_peft_adapter(dir, a.net, "resnet20-fashion-mnist");
    load_peft_adapter(dir, b.net);
    CHECK(test::same_parameters(a, b));
    const Tensor x = test::random_tensor(Shape{2, 3, 4, 4}, 5);
    CHECK(a.net.forward(x) == b.net.forward(x));  // refreshed after loading (norms, packed A)
    CHECK(read_peft_config(dir).use_dora == (A::kind == dora_adapter::kind));
  }

  TEST_CASE("the files use PEFT's keys, shapes and config fields") {
    const auto dir = test::temp_dir("peft-format");
    const test::adapted_pair<> a(1, 2, 2);
    save_peft_adapter(dir, a.net);
    const auto f = safetensors_file::load(dir / "adapter_model.safetensors");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_A.weight").shape_string() == "[2, 3, 3, 3]");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_B.weight").shape_string() == "[8, 2, 1, 1]");
    CHECK(f.info("base_model.model.layer1.0.conv1.lora_magnitude_vector").shape_string() == "[1, 8, 1, 1]");
    CHECK(f.info("base_model.model.fc.lora_A.weight").shape_string() == "[2, 32]");
    CHECK(f.info("base_model.model.fc.lora_B.weight").shape_string() == "[10, 2]");
    CHECK(f.info("base_model.model.fc.lora_magnitude_vector").shape_string() == "[10]");
    CHECK(f.tensors().size() == 6);
    CHECK(f.metadata().at("rimc.adapter") == "dora");
    const auto j = read_json(dir);
    CHECK(j["peft_type"] == "LORA");
    CHECK(j["use_dora"] == true);
    CHECK(j["r"] == 2);
    CHECK(j["lora_alpha"] == 4.0);
    CHECK(j["use_rslora"] == false);
    CHECK(j["target_modules"] == R"((?:layer1\.0\.conv1|fc))");
    CHECK(j["rank_pattern"].empty());
    const auto c = read_peft_config(dir);
    CHECK(c.rank_of("fc") == 2);
    CHECK(c.targets("fc"));
    CHECK_FALSE(c.targets("layer1.0"));
  }

  TEST_CASE("per-module ranks go to rank_pattern under keys only their module matches, and load back") {
    const auto dir = test::temp_dir("peft-rank-pattern");
    test::adapted_pair<> a(1, 2, 4), b(5, 2, 4);
    save_peft_adapter(dir, a.net);
    const auto j = read_json(dir);
    CHECK(j["rank_pattern"] == nlohmann::ordered_json{{"^fc", 4}});
    CHECK(read_peft_config(dir).rank_of("fc") == 4);
    CHECK(read_peft_config(dir).rank_of("layer1.0.conv1") == 2);
    load_peft_adapter(dir, b.net);
    CHECK(test::same_parameters(a, b));
    test::adapted_pair<> wrong(5, 2, 2);
    CHECK_THROWS_WITH(load_peft_adapter(dir, wrong.net), (std::string() + "[rimc.value_error] " + dir.string() +
                          ": module 'fc' has rank 4 in adapter_config.json but the adapter has rank 2").c_str());
  }

  TEST_CASE("PEFT's matching rules resolve every module of a written config to its own rank and alpha") {
    // ResNet-18 with adapters on fc (r 4), conv1 (r 8, alpha 16) and layer1.0.conv1 (r 2), written in that
    // order: "conv1" as a list entry would also target layerX.Y.conv1, and as a plain rank_pattern key it
    // would give layer1.0.conv1 rank 8 (PEFT then fails with a size mismatch).
    const std::map<std::string, module_setting> adapted{
        {"fc", {4, 8.0}}, {"conv1", {8, 16.0}}, {"layer1.0.conv1", {2, 8.0}}};
    peft_files files;
    for (const char* name : {"fc", "conv1", "layer1.0.conv1"}) {
      const auto& s = adapted.at(name);
      files.modules.push_back({name, s.rank, s.alpha, {{"lora_A.weight", Tensor(Shape{s.rank, 4})}}});
    }
    const auto dir = test::temp_dir("peft-resnet18");
    save_peft_files(dir, files);
    for (const bool grouped : {true, false}) {
      CAPTURE(grouped);
      const peft_rules rules{read_json(dir), grouped};
      CHECK(check_resolution(rules, adapted) == "");
    }
    // rimc's reader resolves the same way.
    const peft_config c = read_peft_config(dir);
    for (const auto& name : resnet18_modules()) {
      CAPTURE(name);
      const auto it = adapted.find(name);
      CHECK(c.targets(name) == (it != adapted.end()));
      if (it != adapted.end()) {
        CHECK(c.rank_of(name) == it->second.rank);
        CHECK(c.alpha_of(name) == it->second.alpha);
      }
    }
    // The check can fail: the plain form (a name list and plain pattern keys) gets both clashes wrong.
    nlohmann::ordered_json plain = read_json(dir);
    plain["target_modules"] = {"fc", "conv1", "layer1.0.conv1"};
    plain["rank_pattern"] = {{"conv1", 8}, {"layer1.0.conv1", 2}};
    plain["alpha_pattern"] = {{"conv1", 16.0}};
    CHECK(check_resolution(peft_rules{plain, true}, adapted) == "layer1.0.conv1 resolves to rank 8, not 2");
    plain["rank_pattern"] = {{"layer1.0.conv1", 2}, {"conv1", 8}};
    CHECK(check_resolution(peft_rules{plain, true}, adapted) == "layer1.1.conv1 is targeted but has no adapter");
  }

  TEST_CASE("reading accepts target_modules as a list or a regular expression") {
    const std::string base = R"("peft_type": "LORA", "use_dora": true, "r": 2, "lora_alpha": 4)";
    const peft_config list = parse_peft_config("{" + base + R"(, "target_modules": ["conv1", "fc"]})");
    CHECK(list.targets("conv1"));
    CHECK(list.targets("layer1.0.conv1"));  // PEFT's suffix rule
    CHECK_FALSE(list.targets("conv10"));
    const peft_config regex = parse_peft_config("{" + base + R"(, "target_modules": "layer[0-9]\\.0\\.conv1"})");
    CHECK(regex.targets("layer1.0.conv1"));
    CHECK_FALSE(regex.targets("layer1.1.conv1"));
    CHECK_FALSE(regex.targets("xlayer1.0.conv1"));
    CHECK_THROWS_WITH((void)parse_peft_config("{" + base + R"(, "target_modules": "conv(1"})", "cfg.json"),
                      doctest::Contains("cfg.json: 'target_modules' 'conv(1' is not a regular expression rimc can read"));
  }

  TEST_CASE_TEMPLATE("a saved directory attaches to a network that has no adapters and gives the same output", A,
                     dora_adapter, lora_adapter) {
    const auto dir = test::temp_dir("peft-attach");
    const test::adapted_pair<A> a(3, 2, 4);
    save_peft_adapter(dir, a.net);
    network bare = test::two_layer_network();
    const auto names = attach_peft_adapter(bare, dir);
    CHECK(names == std::vector<std::string>{"layer1.0.conv1", "fc"});
    const Tensor x = test::random_tensor(Shape{3, 3, 4, 4}, 6);
    CHECK(bare.forward(x) == a.net.forward(x));
    CHECK(adapter_at<A>(bare, "fc")->adapter().rank() == 4);
    // A second attach finds the adapters already there, and changes nothing.
    CHECK_THROWS_WITH(attach_peft_adapter(bare, dir), (std::string() + "[rimc.value_error] " + dir.string() +
                                                      ": node 'layer1.0.conv1' has an adapter already").c_str());
    // A network whose ReLUs are fused into the layers cannot take them: the adapter would see relu(W0 x + b).
    network fused = test::two_layer_network();
    fused.fuse_relu();
    CHECK_THROWS_WITH(attach_peft_adapter(fused, dir),
                      (std::string() + "[rimc.value_error] " + dir.string() +
                       ": node 'layer1.0.conv1' has a fused ReLU; attach adapters to a network without fuse_relu()")
                          .c_str());
    CHECK(adapted_layers(fused).empty());
  }

  TEST_CASE("a file with a missing key, a wrong shape or a wrong dtype is rejected and nothing changes") {
    const auto dir = test::temp_dir("peft-bad");
    const test::adapted_pair<> a(1);
    save_peft_adapter(dir, a.net);
    const auto st = dir / "adapter_model.safetensors";
    const auto good = safetensors_file::load(st);
    auto rewrite = [&](const std::string& drop, const std::string& add, const Tensor& t) {
      std::map<std::string, Tensor> m;
      for (const auto& i : good.tensors())
        if (i.name != drop) m[i.name] = good.tensor(i.name);
      if (!add.empty()) m[add] = t;
      save_safetensors(st, m);
    };
    test::adapted_pair<> b(50);
    const Tensor conv_before = b.conv->adapter().lora_A();
    const Tensor fc_before = b.fc->adapter().lora_B();
    SUBCASE("missing key") {
      rewrite("base_model.model.fc.lora_B.weight", "base_model.model.fc.lora_b.weight", Tensor(Shape{10, 4}));
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.net), (std::string() + "[rimc.io_error] " + st.string() + ": missing tensor 'base_model.model.fc.lora_B.weight'").c_str());
    }
    SUBCASE("wrong shape") {
      rewrite("base_model.model.fc.lora_A.weight", "base_model.model.fc.lora_A.weight", Tensor(Shape{4, 31}));
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.net), (std::string() + "[rimc.shape_error] " + st.string() +
                            ": tensor 'base_model.model.fc.lora_A.weight' has shape [4, 31] but the adapter expects "
                            "[4, 32]").c_str());
    }
    SUBCASE("wrong shape in the module read last") {
      // Modules are read in name order (fc first): a module-by-module load would have changed fc.
      rewrite("base_model.model.layer1.0.conv1.lora_B.weight", "base_model.model.layer1.0.conv1.lora_B.weight",
              Tensor(Shape{8, 3, 1, 1}));
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.net), (std::string() + "[rimc.shape_error] " + st.string() +
                            ": tensor 'base_model.model.layer1.0.conv1.lora_B.weight' has shape [8, 3, 1, 1] but the "
                            "adapter expects [8, 2, 1, 1]").c_str());
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
      CHECK_THROWS_WITH(load_peft_adapter(dir, b.net), (std::string() + "[rimc.io_error] " + st.string() +
                            ": tensor 'base_model.model.fc.lora_magnitude_vector' has dtype I32; adapter tensors must "
                            "be floating point").c_str());
    }
    SUBCASE("LoRA files into DoRA adapters") {
      const auto lora_dir = test::temp_dir("peft-lora-into-dora");
      const test::adapted_pair<lora_adapter> l(1);
      save_peft_adapter(lora_dir, l.net);
      CHECK_THROWS_WITH(load_peft_adapter(lora_dir, b.net),
                        (std::string() + "[rimc.value_error] " + lora_dir.string() +
                         ": adapter_config.json says use_dora 0 but module 'fc' has a dora adapter").c_str());
    }
    CHECK(b.conv->adapter().lora_A() == conv_before);  // no module was half-loaded
    CHECK(b.fc->adapter().lora_B() == fc_before);
  }
}

}  // namespace unit_peft
