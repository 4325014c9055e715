#pragma once
// The adapters the PEFT fuzz harness loads into and its seeds are saved
// from: a rank-2 conv2d adapter and a rank-4 linear one.

#include <rimc/core/random.hpp>
#include <rimc/io/peft.hpp>

#include <vector>

namespace rimc::fuzz {

inline Tensor uniform(const Shape& s, std::uint64_t seed) {
  Tensor t(s);
  fill_uniform(t, counter_rng(seed), -0.5f, 0.5f);
  return t;
}

struct peft_adapters {
  dora_adapter conv = dora_adapter::conv2d(uniform(Shape{8, 3, 3, 3}, 1), conv2d_params{{1, 1}, {1, 1}},
                                           dora_config{.rank = 2, .alpha = 4.0, .seed = 1});
  dora_adapter fc = dora_adapter::linear(uniform(Shape{10, 32}, 2), dora_config{.rank = 4, .alpha = 4.0, .seed = 2});

  std::vector<named_adapter<dora_adapter>> named() { return {{"layer1.0.conv1", &conv}, {"fc", &fc}}; }
  std::vector<named_adapter<const dora_adapter>> named() const { return {{"layer1.0.conv1", &conv}, {"fc", &fc}}; }
};

}  // namespace rimc::fuzz
