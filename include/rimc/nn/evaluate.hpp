#pragma once
/// \file
/// Batched top-1 / top-5 accuracy of a network (or any batch -> logits
/// function) over a dataset, with throughput, and a progress bar on stderr
/// only when stderr is a terminal.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/data/dataset.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <unistd.h>

namespace rimc {

/// Accuracy and speed of one evaluation.
struct eval_result {
  double top1 = 0;           ///< fraction of images whose highest logit is the label
  double top5 = 0;           ///< fraction whose label is among the five highest logits
  /// Images evaluated.
  std::int64_t images = 0;
  /// Wall-clock time of the evaluation, s.
  double seconds = 0;
  /// Throughput, images / s (0 when no time was measured).
  [[nodiscard]] double images_per_s() const noexcept { return seconds > 0 ? static_cast<double>(images) / seconds : 0; }
};

/// Counts top-1 / top-5 hits of logits [N, classes] against labels [first, first + N).
inline void count_hits(const Tensor& logits, const std::vector<std::int32_t>& labels, std::int64_t first,
                       std::int64_t& top1, std::int64_t& top5) {
  const auto N = logits.dim(0), K = logits.dim(1);
  for (std::int64_t i = 0; i < N; ++i) {
    const float* row = logits.data() + i * K;
    const auto label = labels[static_cast<std::size_t>(first + i)];
    const float mine = row[label];
    std::int64_t above = 0;
    for (std::int64_t k = 0; k < K; ++k) above += (row[k] > mine || (row[k] == mine && k < label)) ? 1 : 0;
    top1 += above == 0 ? 1 : 0;
    top5 += above < 5 ? 1 : 0;
  }
}

/// Evaluates `forward` (batch [n, C, H, W] -> logits [n, classes]) over `data`.
[[nodiscard]] inline eval_result evaluate(const std::function<Tensor(const Tensor&)>& forward, const dataset& data,
                                          std::int64_t batch = 250, bool progress = ::isatty(2) != 0) {
  if (batch < 1) throw value_error(detail::concat("evaluate: batch must be >= 1, got ", batch));
  eval_result r;
  std::int64_t top1 = 0, top5 = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t b = 0; b < data.size(); b += batch) {
    const Tensor x = data.batch(b, batch);
    const Tensor logits = forward(x);
    if (logits.rank() != 2 || logits.dim(0) != x.dim(0)) {
      throw shape_error(detail::concat("evaluate: logits ", logits.shape().to_string(), " for a batch of ", x.dim(0)));
    }
    count_hits(logits, data.labels, b, top1, top5);
    if (progress) {
      const auto done = std::min(data.size(), b + batch);
      const int width = 30, filled = static_cast<int>(width * done / data.size());
      std::fprintf(stderr, "\r[%.*s%*s] %lld/%lld", filled, "==============================", width - filled, "",
                   static_cast<long long>(done), static_cast<long long>(data.size()));
    }
  }
  if (progress) std::fprintf(stderr, "\n");
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.images = data.size();
  r.top1 = static_cast<double>(top1) / static_cast<double>(std::max<std::int64_t>(r.images, 1));
  r.top5 = static_cast<double>(top5) / static_cast<double>(std::max<std::int64_t>(r.images, 1));
  return r;
}

/// Evaluates a network over `data`.
[[nodiscard]] inline eval_result evaluate(const network& net, const dataset& data, std::int64_t batch = 250,
                                          bool progress = ::isatty(2) != 0) {
  return evaluate([&](const Tensor& x) { return net.forward(x); }, data, batch, progress);
}

}  // namespace rimc
