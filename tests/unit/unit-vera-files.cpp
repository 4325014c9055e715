// Tests of VeRA adapter files: PEFT's VeRA format (one-level adapters on
// linear layers: round trips through save / load / attach, and the keys,
// shapes and config fields PEFT writes) and rimc's own layout (VeRA+ on conv2d
// and linear layers: round trips at every level, the config), and the
// refusals: VeRA+ or conv2d into PEFT's format, wrong shapes, missing keys,
// NaN values, a wrong r and other projections, each with its message and
// with nothing changed (files and adapters).

#include <rimc/adapt/peft_files.hpp>
#include <rimc/adapt/vera_files.hpp>
#include <rimc/io/peft.hpp>
#include <rimc/io/read_file.hpp>
#include <rimc/io/safetensors.hpp>

#include "test_adapters.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_vera_files {

using namespace rimc;
using vera_layer = std::shared_ptr<adapted_layer<vera_adapter>>;

namespace {

/// Two linear layers of different sizes, 48 -> 16 -> 10, on 3x4x4 inputs.
network linear_network(std::uint64_t seed = 1) {
  network net;
  int x = net.input(Shape{3, 4, 4});
  x = net.flatten("flatten", x);
  x = net.linear("fc1", x, 16);
  x = net.relu("relu1", x);
  net.linear("fc2", x, 10);
  test::for_each_parameter(net, [&](const network_node&, const std::string&, Tensor& t) {
    fill_uniform(t, counter_rng(seed++), -0.5f, 0.5f);
  });
  return net;
}

/// A network with VeRA adapters on `layers`, all sharing one pair of
/// projections; with `vector_seed`, every level's vectors are random.
struct vera_net {
  network net;
  std::shared_ptr<const vera_projections> projections;
  std::map<std::string, vera_layer> layers;

  vera_net(network n, const std::vector<std::string>& names, std::shared_ptr<const vera_projections> p, int levels,
           std::uint64_t vector_seed)
      : net(std::move(n)), projections(std::move(p)) {
    for (const auto& name : names) {
      auto l = attach_adapter(net, name, vera_adapter(net.layer(name), {.projections = projections, .levels = levels}));
      if (vector_seed != 0) {
        vera_adapter& a = l->adapter();
        for (int lv = 0; lv < levels; ++lv, vector_seed += 2) {
          a.set_parameters(lv, test::random_tensor(Shape{a.rank()}, vector_seed),
                           test::random_tensor(Shape{a.out_features()}, vector_seed + 1));
        }
        l->parameters_changed();
      }
      layers.emplace(name, l);
    }
  }
  void select(int level) {
    for (auto& [name, l] : layers) {
      l->adapter().select(level);
      l->parameters_changed();
    }
  }
  /// Every adapter's vectors, all levels, by "<layer>.<key>".
  [[nodiscard]] std::map<std::string, Tensor> vectors() const {
    std::map<std::string, Tensor> out;
    for (const auto& [name, l] : layers)
      for (const auto& [what, t] : l->adapter().tensors()) out.emplace(name + "." + what, t);
    return out;
  }
};

/// fc1 and fc2 of linear_network() with one-level VeRA (r 4, projections for K <= 64, O <= 20).
vera_net linear_vera(std::uint64_t vector_seed, int levels = 1, std::uint64_t projection_seed = 3,
                     std::int64_t rank = 4) {
  return vera_net(linear_network(), {"fc1", "fc2"},
                  std::make_shared<const vera_projections>(rank, 64, 20, projection_seed), levels, vector_seed);
}

/// The conv (K 27, O 8) and fc (K 32, O 10) of test::two_layer_network() with VeRA+ (r 4,
/// projections for K <= 40, O <= 12).
vera_net conv_vera(std::uint64_t vector_seed, int levels = 3, std::uint64_t projection_seed = 5,
                   std::int64_t rank = 4) {
  return vera_net(test::two_layer_network(), {"layer1.0.conv1", "fc"},
                  std::make_shared<const vera_projections>(rank, 40, 12, projection_seed), levels, vector_seed);
}

std::vector<std::uint8_t> bytes_of(const std::filesystem::path& p) { return detail::read_file_bytes(p); }

std::set<std::string> files_in(const std::filesystem::path& dir) {
  std::set<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

nlohmann::ordered_json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::ordered_json::parse(in);
}

void write_json(const std::filesystem::path& p, const nlohmann::ordered_json& j) {
  write_file_atomically(p, [&](atomic_writer& w) { w.write(j.dump(2)); });
}

/// Rewrites safetensors file `path` with `edit` applied to its tensors (metadata kept).
template <class Edit>
void rewrite(const std::filesystem::path& path, Edit edit) {
  const auto f = safetensors_file::load(path);
  std::map<std::string, Tensor> m;
  for (const auto& i : f.tensors()) m[i.name] = f.tensor(i.name, false);
  edit(m);
  save_safetensors(path, m, f.metadata());
}

std::string msg(const char* kind, const std::string& text) { return std::string("[rimc.") + kind + "] " + text; }

const Shape input_shape{2, 3, 4, 4};

}  // namespace

TEST_SUITE("vera-files") {
  TEST_CASE("a one-level VeRA network on linear layers round-trips through PEFT's format bitwise") {
    const auto dir = test::temp_dir("vera-peft-roundtrip");
    const vera_net a = linear_vera(1);
    save_peft_adapter(dir, a.net, "a-base-model");  // dispatches on the adapter kind
    const Tensor x = test::random_tensor(input_shape, 9);
    const Tensor y = a.net.forward(x);

    // Into adapters that have the same projections (as drawn again from the seed) and other vectors.
    vera_net b = linear_vera(77);
    CHECK_FALSE(b.net.forward(x) == y);
    load_peft_adapter(dir, b.net);  // dispatches on peft_type
    CHECK(b.vectors() == a.vectors());
    CHECK(b.net.forward(x) == y);
    vera_net c = linear_vera(78);
    load_peft_vera(dir, c.net);
    CHECK(c.net.forward(x) == y);

    // Onto a network without adapters: the file's projections, shared by both layers.
    for (const bool dispatched : {true, false}) {
      CAPTURE(dispatched);
      network bare = linear_network();
      const auto names = dispatched ? attach_peft_adapter(bare, dir) : attach_peft_vera(bare, dir);
      CHECK(names == std::vector<std::string>{"fc1", "fc2"});
      CHECK(bare.forward(x) == y);
      const auto fc1 = adapter_at<vera_adapter>(bare, "fc1"), fc2 = adapter_at<vera_adapter>(bare, "fc2");
      CHECK(fc1->adapter().config().projections == fc2->adapter().config().projections);
      CHECK(fc1->adapter().levels() == 1);
      CHECK(fc1->adapter().config().d_initial == 0.1);
      // Saving the attached network writes the same files again.
      const auto again = test::temp_dir("vera-peft-again");
      save_peft_vera(again, bare, "a-base-model");
      CHECK(bytes_of(again / "adapter_model.safetensors") == bytes_of(dir / "adapter_model.safetensors"));
      CHECK(bytes_of(again / "adapter_config.json") == bytes_of(dir / "adapter_config.json"));
    }
  }

  TEST_CASE("PEFT's VeRA files have exactly PEFT's keys, shapes and config fields") {
    const auto dir = test::temp_dir("vera-peft-format");
    const vera_net a = linear_vera(1);
    save_peft_vera(dir, a.net);
    CHECK(files_in(dir) == std::set<std::string>{"adapter_config.json", "adapter_model.safetensors"});
    const auto f = safetensors_file::load(dir / "adapter_model.safetensors");
    std::map<std::string, std::string> shapes;
    for (const auto& i : f.tensors()) shapes[i.name] = i.shape_string();
    // PEFT sizes the projections from the largest in_features (48, fc1) and out_features (16, fc1).
    CHECK(shapes == std::map<std::string, std::string>{{"base_model.vera_A", "[4, 48]"},
                                                       {"base_model.vera_B", "[16, 4]"},
                                                       {"base_model.model.fc1.vera_lambda_d", "[4]"},
                                                       {"base_model.model.fc1.vera_lambda_b", "[16]"},
                                                       {"base_model.model.fc2.vera_lambda_d", "[4]"},
                                                       {"base_model.model.fc2.vera_lambda_b", "[10]"}});
    for (const auto& i : f.tensors()) CHECK(to_string(i.dtype) == "F32");
    // The projections are the top-left blocks of the network's, the vectors the adapters'.
    const auto& p = *a.projections;
    CHECK(f.tensor("base_model.vera_A").matrix(4, 48) == p.A().matrix(4, 64).leftCols(48));
    CHECK(f.tensor("base_model.vera_B").matrix(16, 4) == p.B().matrix(20, 4).topRows(16));
    CHECK(f.tensor("base_model.model.fc2.vera_lambda_b") == a.layers.at("fc2")->adapter().lambda_b(0));
    CHECK(f.tensor("base_model.model.fc1.vera_lambda_d") == a.layers.at("fc1")->adapter().lambda_d(0));
    CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"rimc.adapter", "vera"}});

    const auto j = read_json(dir / "adapter_config.json");
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    // VeraConfig's fields (and PeftConfig's), in the sorted order PEFT writes them.
    CHECK(keys == std::vector<std::string>{"auto_mapping", "base_model_name_or_path", "bias", "d_initial",
                                           "fan_in_fan_out", "inference_mode", "init_weights", "layers_pattern",
                                           "layers_to_transform", "modules_to_save", "peft_type",
                                           "projection_prng_key", "r", "revision", "save_projection",
                                           "target_modules", "task_type", "vera_dropout"});
    CHECK(j["peft_type"] == "VERA");
    CHECK(j["r"] == 4);
    CHECK(j["target_modules"] == "(?:fc1|fc2)");
    CHECK(j["projection_prng_key"] == 0);
    CHECK(j["save_projection"] == true);
    CHECK(j["vera_dropout"] == 0.0);
    CHECK(j["d_initial"] == 0.1);
    CHECK(j["fan_in_fan_out"] == false);
    CHECK(j["bias"] == "none");
    CHECK(j["init_weights"] == true);
    CHECK(j["inference_mode"] == true);
    for (const char* k : {"auto_mapping", "base_model_name_or_path", "layers_pattern", "layers_to_transform",
                          "modules_to_save", "revision", "task_type"}) {
      CAPTURE(k);
      CHECK(j[k].is_null());
    }
    const auto c = read_peft_vera_config(dir);
    CHECK(c.r == 4);
    CHECK(c.targets("fc1"));
    CHECK(c.targets("fc2"));
    CHECK_FALSE(c.targets("fc"));
    CHECK_FALSE(c.targets("relu1"));
  }

  TEST_CASE("a 3-level conv and linear VeRA+ network round-trips through rimc's format bitwise at every level") {
    const auto dir = test::temp_dir("vera-rimc-roundtrip");
    const auto path = dir / "sub" / "adapters.safetensors";  // the folder is made
    vera_net a = conv_vera(1);
    save_vera(path, a.net);
    CHECK(files_in(path.parent_path()) == std::set<std::string>{"adapters.safetensors"});
    const Tensor x = test::random_tensor(input_shape, 9);

    vera_net b = conv_vera(101);
    load_vera(path, b.net);
    CHECK(b.vectors() == a.vectors());
    network bare = test::two_layer_network();
    CHECK(attach_vera(bare, path) == std::vector<std::string>{"layer1.0.conv1", "fc"});
    const auto conv = adapter_at<vera_adapter>(bare, "layer1.0.conv1"), fc = adapter_at<vera_adapter>(bare, "fc");
    CHECK(conv->adapter().config().projections == fc->adapter().config().projections);
    CHECK(conv->adapter().config().projections->seed() == 5);  // drawn again from the recorded seed
    CHECK(conv->adapter().levels() == 3);
    for (int level = 0; level < 3; ++level) {
      CAPTURE(level);
      a.select(level);
      b.select(level);
      for (const auto& l : {conv, fc}) {
        l->adapter().select(level);
        l->parameters_changed();
      }
      const Tensor y = a.net.forward(x);
      CHECK(b.net.forward(x) == y);
      CHECK(bare.forward(x) == y);
    }
    // Saving the attached network writes the same file again.
    const auto again = dir / "again.safetensors";
    save_vera(again, bare);
    CHECK(bytes_of(again) == bytes_of(path));

    // The file: the projections once, every level's vectors per layer, the config in the metadata.
    const auto f = safetensors_file::load(path);
    std::map<std::string, std::string> shapes;
    for (const auto& i : f.tensors()) shapes[i.name] = i.shape_string();
    CHECK(shapes.size() == 2 + 2 * 3 * 2);
    CHECK(shapes.at("vera_A") == "[4, 40]");
    CHECK(shapes.at("vera_B") == "[12, 4]");
    CHECK(shapes.at("layer1.0.conv1.levels.2.vera_lambda_b") == "[8]");
    CHECK(shapes.at("fc.levels.0.vera_lambda_d") == "[4]");
    CHECK(f.tensor("vera_A") == a.projections->A());
    CHECK(f.tensor("fc.levels.1.vera_lambda_b") == a.layers.at("fc")->adapter().lambda_b(1));
    CHECK(f.metadata().at("format") == "pt");
    const auto j = nlohmann::ordered_json::parse(f.metadata().at("rimc.vera_config"));
    CHECK(j == nlohmann::ordered_json::parse(R"({"format": "rimc.vera", "version": 1, "r": 4, "levels": 3,
        "d_initial": 0.1, "projection_seed": 5, "layers": [
        {"name": "layer1.0.conv1", "kind": "conv2d", "fan_in": 27, "out_features": 8},
        {"name": "fc", "kind": "linear", "fan_in": 32, "out_features": 10}]})"));
    const auto c = read_vera_config(f);
    CHECK(c.projection_seed == std::optional<std::uint64_t>(5));
    CHECK(c.layers.at(0).conv);

    // Projections loaded from tensors have no seed: null in the config, and attach keeps them as loaded.
    vera_net loaded(test::two_layer_network(), {"fc"},
                    std::make_shared<const vera_projections>(a.projections->A(), a.projections->B()), 1, 3);
    const auto plain = dir / "plain.safetensors";
    save_vera(plain, loaded.net);
    CHECK(read_vera_config(safetensors_file::load(plain)).projection_seed == std::nullopt);
    network bare2 = test::two_layer_network();
    CHECK(attach_vera(bare2, plain) == std::vector<std::string>{"fc"});
    CHECK(bare2.forward(x) == loaded.net.forward(x));
    CHECK(adapter_at<vera_adapter>(bare2, "fc")->adapter().config().projections->seed() == 0);
  }

  TEST_CASE("PEFT's format refuses VeRA+ and VeRA on conv2d layers naming the layer and leaves the previous files") {
    const auto dir = test::temp_dir("vera-peft-refuse");
    save_peft_vera(dir, linear_vera(1).net);
    const auto weights = bytes_of(dir / "adapter_model.safetensors"), config = bytes_of(dir / "adapter_config.json");

    const vera_net plus = linear_vera(2, 2);
    CHECK_THROWS_WITH_AS(save_peft_adapter(dir, plus.net),
                         msg("value_error", "save_peft_adapter: layer 'fc1' has a VeRA+ adapter with 2 levels; PEFT's "
                                            "VeRA holds one pair of vectors per module: save it in rimc's VeRA format "
                                            "(save_vera)").c_str(),
                         value_error);
    const vera_net conv = conv_vera(2, 1);
    CHECK_THROWS_WITH_AS(save_peft_vera(dir, conv.net),
                         msg("value_error", "save_peft_vera: layer 'layer1.0.conv1' has a VeRA adapter on a conv2d "
                                            "layer; PEFT's VeRA adapts linear layers only: save it in rimc's VeRA "
                                            "format (save_vera)").c_str(),
                         value_error);
    // Layers with projections of their own cannot share the file's one pair.
    vera_net mixed = linear_vera(3);
    mixed.net.set_layer("fc2", mixed.layers.at("fc2")->base());  // takes fc2's adapter off
    const auto own = std::make_shared<const vera_projections>(4, 64, 20, 4);
    attach_adapter(mixed.net, "fc2", vera_adapter(mixed.net.layer("fc2"), {.projections = own}));
    CHECK_THROWS_WITH_AS(save_peft_vera(dir, mixed.net),
                         msg("value_error", "save_peft_vera: layer 'fc2' uses other projections than layer 'fc1'; a "
                                            "VeRA file holds one shared pair (make every adapter with one "
                                            "vera_projections)").c_str(),
                         value_error);
    // A DoRA adapter among VeRA ones.
    vera_net with_dora = linear_vera(3);
    with_dora.net.set_layer("fc2", with_dora.layers.at("fc2")->base());
    attach_adapter(with_dora.net, "fc2", dora_adapter(with_dora.net.layer("fc2"), dora_config{.rank = 2}));
    CHECK_THROWS_WITH_AS(save_peft_adapter(dir, with_dora.net),
                         msg("value_error", "save_peft_adapter: node 'fc2' has a dora adapter; VeRA files hold VeRA "
                                            "adapters only").c_str(),
                         value_error);
    CHECK(bytes_of(dir / "adapter_model.safetensors") == weights);
    CHECK(bytes_of(dir / "adapter_config.json") == config);
    CHECK(files_in(dir) == std::set<std::string>{"adapter_config.json", "adapter_model.safetensors"});

    // Loading PEFT's one-level file into VeRA+ adapters is refused the same way, before anything changes.
    vera_net plus_target = linear_vera(5, 2);
    const auto before = plus_target.vectors();
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, plus_target.net),
                         msg("value_error", dir.string() + ": layer 'fc1' has a VeRA+ adapter with 2 levels; PEFT's "
                                                           "VeRA holds one pair of vectors per module: save it in "
                                                           "rimc's VeRA format (save_vera)").c_str(),
                         value_error);
    CHECK(plus_target.vectors() == before);
    // rimc's format takes both, and a refused save leaves its previous file too.
    save_vera(dir / "plus.safetensors", plus.net);
    save_vera(dir / "conv.safetensors", conv.net);
    const auto plus_bytes = bytes_of(dir / "plus.safetensors");
    CHECK_THROWS_WITH_AS(save_vera(dir / "plus.safetensors", mixed.net),
                         msg("value_error", "save_vera: layer 'fc2' uses other projections than layer 'fc1'; a VeRA "
                                            "file holds one shared pair (make every adapter with one "
                                            "vera_projections)").c_str(),
                         value_error);
    CHECK(bytes_of(dir / "plus.safetensors") == plus_bytes);
    CHECK(files_in(dir) == std::set<std::string>{"adapter_config.json", "adapter_model.safetensors",
                                                 "conv.safetensors", "plus.safetensors"});
  }

  TEST_CASE("PEFT VeRA configs with settings rimc cannot honour are refused naming the field") {
    const std::string base = R"("peft_type": "VERA", "r": 4, "target_modules": ["fc1"])";
    const auto parse = [&](const std::string& extra) {
      return parse_peft_vera_config("{" + base + extra + "}", "cfg.json");
    };
    CHECK(parse("").d_initial == 0.1);  // PEFT's defaults
    CHECK(parse("").save_projection);
    CHECK(parse(R"(, "d_initial": 0.5, "vera_dropout": 0.1, "bias": "none")").d_initial == 0.5);
    CHECK_THROWS_WITH_AS((void)parse(R"(, "bias": "all")"),
                         R"([rimc.value_error] cfg.json: 'bias' is "all"; rimc reads VeRA adapters with bias "none" )"
                         R"((the layers' biases unchanged))",
                         value_error);
    CHECK_THROWS_WITH_AS((void)parse(R"(, "fan_in_fan_out": true)"),
                         "[rimc.value_error] cfg.json: 'fan_in_fan_out' is true (transformers' Conv1D weights); "
                         "rimc's linear layers store [out, in]",
                         value_error);
    CHECK_THROWS_WITH_AS((void)parse(R"(, "modules_to_save": ["classifier"])"),
                         R"([rimc.value_error] cfg.json: 'modules_to_save' is ["classifier"]; rimc reads the VeRA )"
                         "vectors only",
                         value_error);
    CHECK_THROWS_WITH_AS((void)parse(R"(, "d_initial": "0.1")"),
                         R"([rimc.io_error] cfg.json: 'd_initial' must be a finite number, got "0.1")", io_error);
    CHECK_THROWS_WITH_AS((void)parse_peft_vera_config(R"({"peft_type": "LORA", "r": 4})", "cfg.json"),
                         R"([rimc.io_error] cfg.json: 'peft_type' must be "VERA", got "LORA")", io_error);
    CHECK_THROWS_WITH_AS((void)parse_peft_vera_config(R"({"peft_type": "VERA", "r": 0})", "cfg.json"),
                         "[rimc.io_error] cfg.json: 'r' must be an integer >= 1, got 0", io_error);
    CHECK(peft_type_of(R"({"peft_type": "VERA"})") == "VERA");
    CHECK(peft_type_of("not json").empty());
  }

  TEST_CASE("loading rimc's format refuses wrong shapes, missing keys, NaN values, a wrong r and other projections "
            "and changes nothing") {
    const auto dir = test::temp_dir("vera-rimc-bad");
    const auto path = dir / "vera.safetensors";
    const vera_net a = conv_vera(1);
    save_vera(path, a.net);
    vera_net b = conv_vera(50);
    const auto before = b.vectors();
    const Tensor x = test::random_tensor(input_shape, 4);
    const Tensor y_before = b.net.forward(x);
    const std::string p = path.string();

    SUBCASE("missing key") {
      rewrite(path, [](auto& m) { m.erase("fc.levels.1.vera_lambda_b"); });
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("io_error", p + ": missing tensor 'fc.levels.1.vera_lambda_b'").c_str(), io_error);
    }
    SUBCASE("wrong shape, in the layer read last") {
      rewrite(path, [](auto& m) { m["fc.levels.2.vera_lambda_b"] = Tensor(Shape{11}); });
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("shape_error", p + ": tensor 'fc.levels.2.vera_lambda_b' has shape [11] but the adapter "
                                                  "expects [10]").c_str(),
                           shape_error);
    }
    SUBCASE("projections too small") {
      rewrite(path, [](auto& m) { m["vera_A"] = Tensor(Shape{4, 20}); });
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("shape_error", p + ": tensor 'vera_A' has shape [4, 20] but layer 'layer1.0.conv1' "
                                                  "needs [4, max_in] with max_in >= 27").c_str(),
                           shape_error);
    }
    SUBCASE("NaN value") {
      rewrite(path, [](auto& m) { m["fc.levels.0.vera_lambda_d"][3] = std::numeric_limits<float>::quiet_NaN(); });
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("value_error", p + ": tensor 'fc.levels.0.vera_lambda_d' element 3 is nan").c_str(),
                           value_error);
    }
    SUBCASE("unexpected tensor") {
      rewrite(path, [](auto& m) { m["fc.levels.3.vera_lambda_b"] = Tensor(Shape{10}); });
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("io_error", p + ": unexpected tensor 'fc.levels.3.vera_lambda_b'; a VeRA file holds "
                                               "vera_A, vera_B and the vectors of the layers it lists").c_str(),
                           io_error);
    }
    SUBCASE("wrong r") {
      vera_net r3 = conv_vera(50, 3, 5, 3);
      const auto r3_before = r3.vectors();
      CHECK_THROWS_WITH_AS(load_vera(path, r3.net),
                           msg("value_error", p + ": the file has r 4 and levels 3 but layer 'layer1.0.conv1' has a "
                                                  "VeRA adapter of rank 3 with 3 levels").c_str(),
                           value_error);
      CHECK(r3.vectors() == r3_before);
    }
    SUBCASE("wrong level count") {
      vera_net two = conv_vera(50, 2);
      CHECK_THROWS_WITH_AS(load_vera(path, two.net),
                           msg("value_error", p + ": the file has r 4 and levels 3 but layer 'layer1.0.conv1' has a "
                                                  "VeRA adapter of rank 4 with 2 levels").c_str(),
                           value_error);
    }
    SUBCASE("other projections") {
      vera_net other = conv_vera(50, 3, 6);
      const auto other_before = other.vectors();
      CHECK_THROWS_WITH_AS(load_vera(path, other.net),
                           msg("value_error", p + ": layer 'layer1.0.conv1' uses other projections than the file's "
                                                  "(vera_A[:, :27] or vera_B[:8, :] differ); attach the file to a "
                                                  "network without adapters to use its projections").c_str(),
                           value_error);
      CHECK(other.vectors() == other_before);
    }
    SUBCASE("a layer the network does not adapt") {
      vera_net fc_only(test::two_layer_network(), {"fc"}, a.projections, 3, 50);
      CHECK_THROWS_WITH_AS(load_vera(path, fc_only.net),
                           msg("value_error", p + ": the file holds layer 'layer1.0.conv1' but the network has no VeRA "
                                                  "adapter there").c_str(),
                           value_error);
    }
    SUBCASE("not a rimc VeRA file") {
      save_safetensors(path, {{"vera_A", Tensor(Shape{4, 40})}});
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("io_error", p + ": no 'rimc.vera_config' metadata: not a rimc VeRA file (PEFT adapter "
                                               "directories load with load_peft_adapter)").c_str(),
                           io_error);
    }
    SUBCASE("a config field of the wrong type") {
      const auto f = safetensors_file::load(path);
      auto meta = f.metadata();
      auto j = nlohmann::ordered_json::parse(meta.at("rimc.vera_config"));
      j["levels"] = "3";
      meta["rimc.vera_config"] = j.dump();
      std::map<std::string, Tensor> m;
      for (const auto& i : f.tensors()) m[i.name] = f.tensor(i.name);
      save_safetensors(path, m, meta);
      CHECK_THROWS_WITH_AS(load_vera(path, b.net),
                           msg("io_error", p + ": 'rimc.vera_config' 'levels' must be an integer in [1, 64], got "
                                               "\"3\"").c_str(),
                           io_error);
    }
    // No layer was half-loaded (the conv layer is read before fc).
    CHECK(b.vectors() == before);
    CHECK(b.net.forward(x) == y_before);
  }

  TEST_CASE("loading PEFT's VeRA format refuses wrong shapes, missing keys, NaN values and a wrong r and changes "
            "nothing") {
    const auto dir = test::temp_dir("vera-peft-bad");
    save_peft_vera(dir, linear_vera(1).net);
    const auto st = dir / "adapter_model.safetensors";
    const std::string s = st.string(), d = dir.string();
    vera_net b = linear_vera(60);
    const auto before = b.vectors();

    SUBCASE("missing key") {
      rewrite(st, [](auto& m) { m.erase("base_model.model.fc2.vera_lambda_b"); });
      CHECK_THROWS_WITH_AS(load_peft_adapter(dir, b.net),
                           msg("io_error", s + ": missing tensor 'base_model.model.fc2.vera_lambda_b'").c_str(),
                           io_error);
    }
    SUBCASE("missing projections") {
      rewrite(st, [](auto& m) { m.erase("base_model.vera_B"); });
      CHECK_THROWS_WITH_AS(load_peft_vera(dir, b.net),
                           msg("io_error", s + ": missing tensor 'base_model.vera_B'").c_str(), io_error);
    }
    SUBCASE("wrong shape") {
      rewrite(st, [](auto& m) { m["base_model.model.fc2.vera_lambda_d"] = Tensor(Shape{5}); });
      CHECK_THROWS_WITH_AS(load_peft_vera(dir, b.net),
                           msg("shape_error", s + ": tensor 'base_model.model.fc2.vera_lambda_d' has shape [5] but the "
                                                  "adapter expects [4]").c_str(),
                           shape_error);
    }
    SUBCASE("NaN value") {
      rewrite(st, [](auto& m) { m["base_model.vera_A"][0] = std::numeric_limits<float>::quiet_NaN(); });
      CHECK_THROWS_WITH_AS(load_peft_vera(dir, b.net),
                           msg("value_error", s + ": tensor 'base_model.vera_A' element 0 is nan").c_str(),
                           value_error);
    }
    SUBCASE("wrong r in the config") {
      auto j = read_json(dir / "adapter_config.json");
      j["r"] = 3;
      write_json(dir / "adapter_config.json", j);
      CHECK_THROWS_WITH_AS(load_peft_adapter(dir, b.net),
                           msg("value_error", d + ": adapter_config.json has r 3 but module 'fc1' has a VeRA adapter "
                                                  "of rank 4").c_str(),
                           value_error);
    }
    SUBCASE("wrong r in the projections") {
      rewrite(st, [](auto& m) { m["base_model.vera_B"] = Tensor(Shape{16, 3}); });
      CHECK_THROWS_WITH_AS(load_peft_vera(dir, b.net),
                           msg("shape_error", s + ": adapter_config.json has r 4 but 'base_model.vera_A' and "
                                                  "'base_model.vera_B' have shapes [4, 48] and [16, 3]; they must be "
                                                  "[r, max_in] and [max_out, r]").c_str(),
                           shape_error);
    }
    SUBCASE("other projections") {
      vera_net other = linear_vera(60, 1, 4);
      const auto other_before = other.vectors();
      CHECK_THROWS_WITH_AS(load_peft_vera(dir, other.net),
                           msg("value_error", d + ": layer 'fc1' uses other projections than the file's "
                                                  "(base_model.vera_A[:, :48] or base_model.vera_B[:16, :] differ); "
                                                  "attach the file to a network without adapters to use its "
                                                  "projections").c_str(),
                           value_error);
      CHECK(other.vectors() == other_before);
    }
    SUBCASE("projections not saved") {
      auto j = read_json(dir / "adapter_config.json");
      j["save_projection"] = false;
      j["projection_prng_key"] = 42;
      write_json(dir / "adapter_config.json", j);
      CHECK_THROWS_WITH_AS(load_peft_adapter(dir, b.net),
                           msg("value_error", (dir / "adapter_config.json").string() +
                                                  ": 'save_projection' is false: the projections would come from "
                                                  "PyTorch's generator seeded with projection_prng_key 42, which rimc "
                                                  "does not reproduce; save the adapter with save_projection=True")
                               .c_str(),
                           value_error);
    }
    SUBCASE("a LoRA file into VeRA adapters") {
      const auto lora_dir = test::temp_dir("vera-peft-lora");
      save_peft_adapter(lora_dir, test::adapted_pair<lora_adapter>(1).net);
      CHECK_THROWS_WITH_AS(load_peft_adapter(lora_dir, b.net),
                           msg("value_error", lora_dir.string() + ": module 'fc1' has a vera adapter; PEFT files hold "
                                                                  "DoRA and LoRA adapters").c_str(),
                           value_error);
    }
    CHECK(b.vectors() == before);
  }

  TEST_CASE("attaching refuses a network that does not fit and attaches nothing") {
    const auto dir = test::temp_dir("vera-attach-bad");
    const auto path = dir / "vera.safetensors";
    save_vera(path, conv_vera(1).net);
    save_peft_vera(dir / "peft", linear_vera(1).net);

    // Adapters there already.
    vera_net adapted = conv_vera(2);
    CHECK_THROWS_WITH_AS(attach_vera(adapted.net, path),
                         msg("value_error", path.string() + ": node 'layer1.0.conv1' has an adapter already").c_str(),
                         value_error);
    // A network without the file's layers, or with other geometry.
    network lin = linear_network();
    CHECK_THROWS_WITH_AS(attach_vera(lin, path),
                         msg("value_error", path.string() + ": the file holds layer 'layer1.0.conv1', which the "
                                                            "network does not have").c_str(),
                         value_error);
    network wide;
    int x = wide.input(Shape{3, 4, 4});
    x = wide.conv2d("layer1.0.conv1", x, 8, 3, conv2d_params{{2, 2}, {1, 1}});
    x = wide.relu("layer1.0.relu", x);
    x = wide.flatten("flatten", x);
    wide.linear("fc", x, 12);
    CHECK_THROWS_WITH_AS(attach_vera(wide, path),
                         msg("value_error", "attach_vera: layer 'fc': the file has fan_in 32 and out_features 10, the "
                                            "network's layer 32 and 12").c_str(),
                         value_error);
    CHECK(adapted_layers(wide).empty());
    // PEFT's VeRA targets linear layers only.
    network conv_net = test::two_layer_network();
    auto j = read_json(dir / "peft" / "adapter_config.json");
    j["target_modules"] = nlohmann::ordered_json::array({"conv1", "fc"});
    write_json(dir / "peft" / "adapter_config.json", j);
    CHECK_THROWS_WITH_AS(attach_peft_adapter(conv_net, dir / "peft"),
                         msg("value_error", (dir / "peft").string() + ": adapter_config.json targets "
                                                                      "'layer1.0.conv1', a conv2d; PEFT's VeRA adapts "
                                                                      "linear layers only").c_str(),
                         value_error);
    CHECK(adapted_layers(conv_net).empty());
  }
}

}  // namespace unit_vera_files
