// A program outside rimc's build: runs a convolution through oneDNN and checks it against the reference.
#include <rimc/rimc.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using namespace rimc;
  Tensor w(Shape{8, 3, 3, 3}), x(Shape{2, 3, 9, 9});
  fill_uniform(w, counter_rng(1), -1.0f, 1.0f);
  fill_uniform(x, counter_rng(2), -1.0f, 1.0f);
  const conv2d_params p{{1, 1}, {1, 1}};
  const Tensor y = conv2d(w, std::nullopt, p).forward(x).to_layout(layout::nchw);
  const Tensor r = reference::conv2d(x, w, nullptr, p);
  double worst = 0;
  for (std::int64_t i = 0; i < r.numel(); ++i) worst = std::fmax(worst, std::fabs(y[i] - r[i]));
  std::printf("rimc %s, oneDNN %s: max |onednn - reference| = %.3g\n", version_string, onednn_version().c_str(),
              worst);
  return worst < 1e-4 ? 0 : 1;
}
