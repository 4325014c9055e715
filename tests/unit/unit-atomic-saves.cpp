// No data lost: every file rimc writes (safetensors, network parameters,
// PEFT adapter pairs, CSV results) goes through a temporary file that is
// renamed over the target only when complete, so a failure in the middle of
// a save leaves the previous file intact and loadable. Failures are injected
// as an exception thrown by the producer, and as a real write error: a file
// size limit (RLIMIT_FSIZE) makes write() fail with EFBIG part-way through a
// file, as a full disk would.

#include <rimc/io/atomic_file.hpp>
#include <rimc/adapt/peft_files.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/network.hpp>

#include "test_adapters.hpp"
#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>
#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <string>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_atomic_saves {

using namespace rimc;

namespace {

/// For its lifetime, writes past `bytes` of any file fail with EFBIG (SIGXFSZ ignored).
class file_size_limit {
 public:
  explicit file_size_limit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit r = saved_;
    r.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &r) == 0);
  }
  file_size_limit(const file_size_limit&) = delete;
  file_size_limit& operator=(const file_size_limit&) = delete;
  ~file_size_limit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = nullptr;
};

/// The message of the rimc error `f` throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const rimc::error& e) {
    return e.what();
  }
  return "";
}

/// The names of the files in `dir` (temporary files would show here).
std::vector<std::string> files_in(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// A small network with random parameters.
network small_network(std::uint64_t seed) {
  network net;
  int x = net.input(Shape{2, 6, 6});
  x = net.conv2d("conv", x, 4, 3, conv2d_params{{1, 1}, {1, 1}});
  x = net.relu("relu", x);
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 3);
  test::for_each_parameter(net, [&](const network_node&, const std::string&, Tensor& t) {
    fill_uniform(t, counter_rng(seed++), -0.5f, 0.5f);
  });
  return net;
}

}  // namespace

TEST_SUITE("atomic saves") {
  TEST_CASE("an exception in the middle of a save leaves the previous file intact") {
    const auto dir = test::temp_dir("atomic-exception");
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
    CHECK(files_in(dir) == std::vector<std::string>{"adapter.safetensors"});  // no temporary file left
    CHECK_THROWS_AS(save_safetensors(dir / "missing-dir" / "a.safetensors", first), io_error);
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("a write error in the middle of a network save leaves the previous file loadable") {
    const auto dir = test::temp_dir("atomic-network");
    const auto path = dir / "model.safetensors";
    const network saved = small_network(1);
    saved.save(path);
    const auto size = std::filesystem::file_size(path);
    const network changed = small_network(100);
    std::string error;
    {
      const file_size_limit limit(size / 2);
      error = error_of([&] { changed.save(path); });
    }
    CHECK(error.starts_with("[rimc.io_error] writing " + (dir / ".model.safetensors.tmp-").string()));
    CHECK(error.ends_with(": File too large"));
    CHECK(std::filesystem::file_size(path) == size);
    network loaded = small_network(200);
    loaded.load(path);
    for (const auto& n : saved.nodes())
      for (const auto& [p, t] : n.params) CHECK(loaded.node(n.name).params.at(p) == t);
    CHECK(files_in(dir) == std::vector<std::string>{"model.safetensors"});
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("a write error in either file of a PEFT save leaves the previous pair loadable") {
    const auto dir = test::temp_dir("atomic-peft");
    const test::adapted_pair<> first(1);
    save_peft_adapter(dir, first.net, "first");
    const auto weights_size = std::filesystem::file_size(dir / "adapter_model.safetensors");
    // A long base-model name makes the config much larger than the weights, so
    // a limit between the two sizes fails the config after the weights were written.
    const test::adapted_pair<> second(50);
    const std::string long_name(64 * 1024, 'x');
    for (const auto& [limit_bytes, failing] : {std::pair{weights_size / 2, std::string("adapter_model.safetensors")},
                                               std::pair{4 * weights_size, std::string("adapter_config.json")}}) {
      INFO("failing file: ", failing);
      std::string error;
      {
        const file_size_limit limit(limit_bytes);
        error = error_of([&] { save_peft_adapter(dir, second.net, long_name); });
      }
      CHECK(error.starts_with("[rimc.io_error] writing " + (dir / ("." + failing + ".tmp-")).string()));
      CHECK(error.ends_with(": File too large"));
      test::adapted_pair<> loaded(99), expected(1);
      load_peft_adapter(dir, loaded.net);
      CHECK(test::same_parameters(loaded, expected));
      CHECK(read_peft_config(dir).base_model_name_or_path == "first");
      CHECK(files_in(dir) == std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"});
    }
    // Without the limit the same save goes through.
    save_peft_adapter(dir, second.net, long_name);
    test::adapted_pair<> loaded(99), expected(50);
    load_peft_adapter(dir, loaded.net);
    CHECK(test::same_parameters(loaded, expected));
    std::filesystem::remove_all(dir);
  }
}

}  // namespace unit_atomic_saves
