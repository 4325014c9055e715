// Tests of rimc::network: building and running graphs, feature capture,
// build-time errors, batch-norm folding, ReLU fusion, loading by name, and the
// model builders' parameter names and shapes.

#include <rimc/kernels/reference.hpp>
#include <rimc/nn/models.hpp>
#include <rimc/nn/network.hpp>

#include "test_net.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

// This file's names live in a namespace of their own: all unit-test files build into one
// program from a few unity translation units (tests/CMakeLists.txt).
namespace unit_network {

using namespace rimc;

namespace {

/// Every parameter drawn at random (BN variances positive).
void randomise(network& net, std::uint64_t seed) {
  test::for_each_parameter(net, [&](const network_node&, const std::string& p, Tensor& t) {
    if (p == "num_batches_tracked") return;
    fill_uniform(t, counter_rng(seed++), p == "running_var" ? 0.5f : -0.5f, p == "running_var" ? 1.5f : 0.5f);
  });
}

/// A small residual network: conv-bn-relu, a block with a projection, pooling, fc.
network small_net() {
  network net;
  int x = net.input(Shape{3, 9, 9});
  x = net.conv2d("stem", x, 8, 3, conv2d_params{{1, 1}, {1, 1}});
  x = net.batch_norm("stem_bn", x);
  x = net.relu("stem_relu", x);
  int y = net.conv2d("block.conv", x, 12, 3, conv2d_params{{2, 2}, {1, 1}}, true);
  y = net.batch_norm("block.bn", y);
  const int s = net.conv2d("block.proj", x, 12, 1, conv2d_params{{2, 2}, {0, 0}});
  x = net.add("block.add", y, s);
  x = net.relu("block.relu", x);
  x = net.max_pool("pool", x, pool2d_params{pool_kind::max, {2, 2}, {2, 2}});
  x = net.global_avg_pool("gap", x);
  x = net.flatten("flat", x);
  net.linear("fc", x, 5);
  return net;
}

/// The same network computed with the reference kernels, channels-first.
Tensor reference_forward(const network& net, const Tensor& x0) {
  auto P = [&](const std::string& k) -> const Tensor& {
    const auto dot = k.rfind('.');
    return net.node(k.substr(0, dot)).params.at(k.substr(dot + 1));
  };
  auto bn = [&](const Tensor& x, const std::string& name) {
    Tensor y = x.to_layout(layout::nchw);
    const auto C = y.dim(1), HW = y.dim(2) * y.dim(3);
    for (std::int64_t n = 0; n < y.dim(0); ++n)
      for (std::int64_t c = 0; c < C; ++c) {
        const double s = P(name + ".weight")[c] / std::sqrt(double(P(name + ".running_var")[c]) + 1e-5);
        for (std::int64_t i = 0; i < HW; ++i) {
          float& v = y[(n * C + c) * HW + i];
          v = static_cast<float>((v - P(name + ".running_mean")[c]) * s + P(name + ".bias")[c]);
        }
      }
    return y;
  };
  auto relu = [](Tensor t) {
    for (float& v : t.values()) v = std::max(v, 0.0f);
    return t;
  };
  Tensor x = relu(bn(reference::conv2d(x0, P("stem.weight"), nullptr, {{1, 1}, {1, 1}}), "stem_bn"));
  Tensor y = bn(reference::conv2d(x, P("block.conv.weight"), &P("block.conv.bias"), {{2, 2}, {1, 1}}), "block.bn");
  const Tensor s = reference::conv2d(x, P("block.proj.weight"), nullptr, {{2, 2}, {0, 0}});
  for (std::int64_t i = 0; i < y.numel(); ++i) y[i] = std::max(y[i] + s[i], 0.0f);
  y = reference::pool2d(y, pool2d_params{pool_kind::max, {2, 2}, {2, 2}});
  y = reference::global_avg_pool2d(y);
  y.reshape(Shape{y.dim(0), y.dim(1)});
  return reference::linear(y, P("fc.weight"), &P("fc.bias"));
}

}  // namespace

TEST_SUITE("network") {
  TEST_CASE("a residual network runs, matches the reference and captures features by name") {
    network net = small_net();
    randomise(net, 1);
    const Tensor x = test::random_tensor(Shape{4, 3, 9, 9}, 2);
    std::map<std::string, Tensor> f;
    const Tensor y = net.forward(x, {"block.add", "stem_relu", "input"}, f);
    CHECK(y.shape() == Shape{4, 5});
    test::check_close(y, reference_forward(net, x), 1e-4, 1e-4);
    CHECK(f.at("block.add").shape() == Shape{4, 12, 5, 5});
    CHECK(f.at("stem_relu").shape() == Shape{4, 8, 9, 9});
    CHECK(f.at("input") == x);
    // Running the rest of the network from a captured feature gives the same output.
    std::map<std::string, Tensor> none;
    test::check_close(net.forward_from(net.id("block.add"), f.at("block.add"), net.output(), {}, none), y, 1e-6, 1e-6);
    // The same from a map of known values; keys outside the network and values of the wrong shape are refused.
    const int add = net.id("block.add");
    test::check_close(net.forward_from(add, std::map<int, Tensor>{{add, f.at("block.add")}}, net.output(), {}, none), y,
                      1e-6, 1e-6);
    const int n = static_cast<int>(net.nodes().size());
    const std::string bad_key = detail::concat("[rimc.value_error] network::forward_from: known value for node index ",
                                               n + 3, ", but the network has nodes 0..", n - 1);
    CHECK_THROWS_WITH_AS((void)net.forward_from(add, std::map<int, Tensor>{{n + 3, x}}, net.output(), {}, none),
                         bad_key.c_str(), value_error);
    CHECK_THROWS_WITH_AS((void)net.forward_from(add, std::map<int, Tensor>{{add, f.at("stem_relu")}}, net.output(), {}, none),
                         "[rimc.shape_error] network::forward_from: node 'block.add' takes batches of [12, 5, 5] per sample, "
                         "got [4, 8, 9, 9]",
                         shape_error);
  }

  TEST_CASE("a ReLU is not fused into a conv whose folded batch norm feeds another node too") {
    // conv -> bn -> {relu, add(relu, bn)}: after folding, the add must still read the conv's linear output.
    network net;
    const int x = net.input(Shape{2, 6, 6});
    const int c = net.conv2d("c", x, 4, 3, conv2d_params{{1, 1}, {1, 1}}, true);
    const int bn = net.batch_norm("bn", c);
    const int r = net.relu("r", bn);
    net.add("sum", r, bn);
    randomise(net, 7);
    const Tensor in = test::random_tensor(Shape{2, 2, 6, 6}, 8);
    const Tensor before = net.forward(in);
    net.fold_batch_norm();
    net.fuse_relu();
    CHECK_FALSE(net.node("c").conv.relu);
    CHECK_FALSE(net.node("r").bypass);
    test::check_close(net.forward(in), before, 1e-5, 1e-5);
  }

  TEST_CASE("folding batch norm and fusing ReLU keep the output and the node names") {
    network net = small_net();
    randomise(net, 3);
    const Tensor x = test::random_tensor(Shape{3, 3, 9, 9}, 4);
    const Tensor before = net.forward(x);
    net.fold_batch_norm();
    net.fuse_relu();
    CHECK(net.node("stem_bn").bypass);
    CHECK(net.node("stem_relu").bypass);
    CHECK(net.node("stem").conv.relu);
    CHECK(net.node("block.relu").bypass);
    CHECK(net.node("block.add").relu_after);
    CHECK(net.node("block.conv").params.contains("bias"));
    test::check_close(net.forward(x), before, 1e-5, 1e-5);
    std::map<std::string, Tensor> f;
    (void)net.forward(x, {"stem_bn"}, f);  // a folded node still answers by name (its producer's value)
    CHECK(f.at("stem_bn").shape() == Shape{3, 8, 9, 9});
  }

  TEST_CASE("shape mismatches, unknown names and misuse are found at build time") {
    network net;
    CHECK_THROWS_WITH(net.relu("r", 0), "[rimc.value_error] network: relu refers to node 0, which does not exist (0 nodes so far)");
    CHECK_THROWS_WITH(net.flatten("", 0), "[rimc.value_error] network: flatten refers to node 0, which does not exist (0 nodes so far)");
    const int x = net.input(Shape{3, 8, 8});
    const int a = net.conv2d("a", x, 4, 3);
    const int b = net.conv2d("b", x, 4, 3, conv2d_params{{1, 1}, {1, 1}});
    CHECK_THROWS_WITH(net.add("sum", a, b),
                      "[rimc.shape_error] network: add 'sum': inputs 'a' [4, 6, 6] and 'b' [4, 8, 8] differ");
    CHECK_THROWS_WITH(net.relu("r", 17), "[rimc.value_error] network: relu refers to node 17, which does not exist (3 nodes so far)");
    CHECK_THROWS_WITH(net.conv2d("a", x, 4, 3), "[rimc.value_error] network: a node named 'a' exists already");
    CHECK_THROWS_WITH(net.conv2d("big", x, 4, 11),
                      "[rimc.shape_error] conv2d: kernel [4, 3, 11, 11] with dilation (1, 1) does not fit src [1, 3, 8, 8] "
                      "padded by (0, 0)");
    CHECK_THROWS_WITH(net.linear("fc", a, 10),
                      "[rimc.shape_error] network: linear 'fc' needs a flat input, but 'a' is [4, 6, 6]; add a flatten node");
    CHECK_THROWS_WITH(net.conv2d("none", x, 0, 3),
                      "[rimc.value_error] network: conv2d 'none' needs out_channels and kernel >= 1, got 0 and 3x3");
    const int f = net.flatten("f", a);
    CHECK_THROWS_WITH(net.linear("empty", f, 0), "[rimc.value_error] network: linear 'empty' needs out_features >= 1, got 0");
    CHECK_THROWS_WITH(net.conv2d("c", f, 4, 1),
                      "[rimc.shape_error] network: conv2d 'c' needs a [C, H, W] input, but 'f' is [144]");
    CHECK_THROWS_WITH((void)net.id("nope"), "[rimc.value_error] network: no node named 'nope'");
    std::map<std::string, Tensor> out;
    CHECK_THROWS_WITH((void)net.forward(Tensor(Shape{1, 3, 8, 8}), {"nope"}, out),
                      "[rimc.value_error] network: no node named 'nope'");
  }

  TEST_CASE("parameters load by name with clear errors, and nothing changes on failure") {
    const auto dir = std::filesystem::temp_directory_path() / ("rimc-net-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    network a = small_net(), b = small_net();
    randomise(a, 5);
    a.save(dir / "a.safetensors");
    b.load(dir / "a.safetensors");
    const Tensor x = test::random_tensor(Shape{2, 3, 9, 9}, 6);
    CHECK(b.forward(x) == a.forward(x));
    // Missing and extra keys, wrong shapes.
    std::map<std::string, Tensor> all;
    for (const auto& [k, s] : a.parameter_shapes()) {
      const auto dot = k.rfind('.');
      all[k] = a.node(k.substr(0, dot)).params.at(k.substr(dot + 1));
    }
    auto attempt = [&](std::map<std::string, Tensor> m) {
      save_safetensors(dir / "bad.safetensors", m);
      network c = small_net();
      const Tensor before = c.node("fc").params.at("weight");
      try {
        c.load(dir / "bad.safetensors");
      } catch (...) {
        CHECK(c.node("fc").params.at("weight") == before);
        throw;
      }
    };
    const std::string file = (dir / "bad.safetensors").string();
    auto m1 = all;
    m1.erase("block.bn.running_var");
    CHECK_THROWS_WITH(attempt(m1), ("[rimc.io_error] " + file + ": missing tensor 'block.bn.running_var'").c_str());
    auto m2 = all;
    m2["classifier.weight"] = Tensor(Shape{1});
    CHECK_THROWS_WITH(attempt(m2), ("[rimc.io_error] " + file + ": tensor 'classifier.weight' matches no network parameter").c_str());
    auto m3 = all;
    m3["fc.weight"] = Tensor(Shape{5, 13});
    CHECK_THROWS_WITH(attempt(m3), ("[rimc.shape_error] " + file +
                                    ": tensor 'fc.weight' has shape [5, 13] but the network expects [5, 12]").c_str());
    std::filesystem::remove_all(dir);
  }

  TEST_CASE("resnet50() has exactly torchvision's parameter names and shapes") {
    std::ifstream in(std::filesystem::path(RIMC_TEST_DATA_DIR) / "resnet50_torchvision_params.txt");
    REQUIRE(in);
    std::map<std::string, std::string> expected;
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream ls(line);
      std::string name, shape;
      ls >> name >> shape;
      expected[name] = shape;
    }
    std::map<std::string, std::string> actual;
    for (const auto& [k, s] : resnet50().parameter_shapes()) {
      std::string t;
      for (int i = 0; i < s.rank(); ++i) {
        if (i) t += 'x';
        t += std::to_string(s[i]);
      }
      actual[k] = t.empty() ? "scalar" : t;
    }
    CHECK(expected.size() == 320);
    CHECK(actual == expected);
  }

  TEST_CASE("resnet20() runs at 28x28 and 32x32 with the expected feature shapes") {
    for (std::int64_t size : {28, 32}) {
      network net = resnet20(size == 28 ? 1 : 3, 10, size);
      randomise(net, 9);
      std::map<std::string, Tensor> f;
      const Tensor y = net.forward(test::random_tensor(Shape{2, size == 28 ? 1 : 3, size, size}, 1), {"layer3.2.add"}, f);
      CHECK(y.shape() == Shape{2, 10});
      CHECK(f.at("layer3.2.add").shape() == Shape{2, 64, (size + 3) / 4, (size + 3) / 4});
    }
  }

  TEST_CASE("activation buffers are kept per thread for the next pass, up to the cap") {
    network net = small_net();
    randomise(net, 3);
    const Tensor x = test::random_tensor(Shape{6, 3, 9, 9}, 2);
    auto& pool = detail::activation_pool::of_this_thread();
    const Tensor first = net.forward(x);
    const auto held = pool.held();
    CHECK(held >= 6 * 8 * 9 * 9);  // at least the stem's output came back
    CHECK(held <= detail::activation_pool::retained_floats);
    CHECK(net.forward(x) == first);  // recycled buffers, same values
    CHECK(pool.held() == held);      // the same buffers: the small result did not carry a large one away
    // On another thread the pool starts empty and the result is the same.
    Tensor other;
    std::int64_t other_held_before = -1;
    std::thread t([&] {
      other_held_before = detail::activation_pool::of_this_thread().held();
      other = net.forward(x);
    });
    t.join();
    CHECK(other_held_before == 0);
    CHECK(other == first);
    // Buffers beyond the cap are let go (the largest first kept, then what still fits);
    // take() gives the smallest buffer that fits.
    detail::activation_pool p;
    p.give(std::make_shared<Tensor>(Shape{detail::activation_pool::retained_floats - 10}));
    p.give(std::make_shared<Tensor>(Shape{100}));
    p.give(std::make_shared<Tensor>(Shape{5}));
    p.trim();
    CHECK(p.held() == detail::activation_pool::retained_floats - 5);
    CHECK(p.take(6)->capacity() == detail::activation_pool::retained_floats - 10);
    CHECK(p.take(1)->capacity() == 5);
    CHECK(p.held() == 0);
  }
}

}  // namespace unit_network
