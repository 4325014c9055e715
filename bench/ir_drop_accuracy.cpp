// IR drop: the fast model against the exact nodal solve on programmed
// tiles up to the default 256 x 256 (256 word lines, 512 bit lines with
// differential pairs), beyond the sizes the unit tests can afford to solve
// exactly. Random weights in [-1, 1] are programmed on a 0-40 uS
// differential 8-bit device; for each tile size and wire resistance it
// prints the largest IR drop of a column output relative to the largest
// ideal output, and the fast model's largest column error relative to that
// drop (dense and 30%-dense unsigned inputs), with the time of each model.
//
//   build/release/bench/ir_drop_accuracy

#include <rimc/core/random.hpp>
#include <rimc/crossbar/ir_drop.hpp>
#include <rimc/crossbar/tiled_array.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  using namespace rimc;
  using clock = std::chrono::steady_clock;
  std::printf("| tile (word x bit lines) | ohm per segment | IR drop / output | fast error / drop | exact (s) | fast (s) |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{64, 64}, {144, 64}, {256, 256}}) {
    Tensor w(Shape{rows, cols});
    fill_uniform(w, counter_rng(42), -1.0f, 1.0f);
    device_config dev;
    dev.g_min_us = 0.0;
    dev.g_max_us = 40.0;
    const TiledArray<> a(w, dev, 1);
    const auto& t = a.tile(0, 0);
    const std::int64_t P = 2 * cols;
    std::vector<double> g(static_cast<std::size_t>(rows * P));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        for (int d = 0; d < 2; ++d) g[static_cast<std::size_t>(r * P + 2 * c + d)] = t.conductance_us(r, c, 0, d);
    for (const double ohm : {0.1, 0.25, 0.5, 1.0}) {
      const auto t0 = clock::now();
      const std::vector<double> ex = ir_drop_exact(g, rows, P, ohm);
      const auto t1 = clock::now();
      const std::vector<double> fa = ir_drop_fast(g, rows, P, ohm);
      const auto t2 = clock::now();
      double worst = 0, drop = 0;
      const counter_rng rng(7);
      for (const double density : {1.0, 0.3}) {
        std::vector<double> v(static_cast<std::size_t>(rows), 0.0);
        for (std::int64_t i = 0; i < rows; ++i)
          if (rng.uniform(2 * i) < density) v[static_cast<std::size_t>(i)] = rng.uniform(2 * i + 1);
        double err = 0, d = 0, out = 0;
        for (std::int64_t p = 0; p < P; ++p) {
          double ye = 0, yf = 0, yi = 0;
          for (std::int64_t i = 0; i < rows; ++i) {
            const auto k = static_cast<std::size_t>(i * P + p);
            const double x = v[static_cast<std::size_t>(i)];
            ye += ex[k] * x;
            yf += fa[k] * x;
            yi += g[k] * x;
          }
          err = std::max(err, std::abs(yf - ye));
          d = std::max(d, std::abs(yi - ye));
          out = std::max(out, std::abs(yi));
        }
        worst = std::max(worst, err / d);
        drop = std::max(drop, d / out);
      }
      std::printf("| %lld x %lld | %.2f | %.3f | %.3f | %.2f | %.4f |\n", static_cast<long long>(rows),
                  static_cast<long long>(P), ohm, drop, worst, std::chrono::duration<double>(t1 - t0).count(),
                  std::chrono::duration<double>(t2 - t1).count());
    }
  }
  return 0;
}
