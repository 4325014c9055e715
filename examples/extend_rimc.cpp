// Extending rimc from outside the library: this program defines
//
//   - a mapping policy: two differential pairs per weight with significance
//     factors (aihwkit's dual-pair conductance converter): the low pair takes
//     |w| first, the high pair, weighted F_high in the column current, what
//     exceeds the low pair's range;
//   - a drift model: every cell relaxes exponentially towards a rest
//     conductance with its own time constant (log-normal over cells), a pure
//     function of (G, t, seed, cell) as rimc's models are;
//   - an adapter: a per-output-channel gain and offset in SRAM (what BN-style
//     recalibration trains), y = a ⊙ layer_out + c, with its hand-written
//     backward pass (dL/da, dL/dc and dL/dx through the frozen weights);
//
// and runs the shipped ResNet-20 on Fashion-MNIST through them: deploy onto
// tiles with the new mapping, drift with the new model, calibrate the new
// adapter by layer-wise feature distillation (and DoRA on the same chip for
// comparison), and evaluate. `--help` lists the flags.

#include "cli.hpp"

#include <rimc/dora.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace {

using namespace rimc;

/// Two differential pairs per weight: code = (u0 - u1) + F (u2 - u3). The low
/// pair (devices 0, 1) carries |w| up to its range; the high pair (devices 2,
/// 3) carries the rest in units of F, so small weights see only the low pair's
/// programming noise.
struct dual_pair_mapping {
  static constexpr int devices = 4;
  static constexpr std::string_view name = "dual_pair";
  static constexpr double F = 4.0;  ///< significance of the high pair
  static constexpr std::array<double, devices> coefficients{1.0, -1.0, F, -F};

  /// |code| up to (1 + F) u_max.
  [[nodiscard]] static constexpr mapping_codes codes(double u_max, bool /*discrete*/) noexcept {
    return {(1.0 + F) * u_max, 0.0};
  }
  /// Low pair first (quantised), then the remainder on the high pair (quantised, at most u_max).
  template <class Quantise>
  static void split(double x, const mapping_codes& c, Quantise&& quantise, std::span<double, devices> u) {
    const double q = std::abs(x) * c.q_max, u_max = c.q_max / (1.0 + F);
    const double low = quantise(std::min(q, u_max));
    const double high = std::clamp(quantise((q - low) / F), 0.0, u_max);
    const bool pos = x > 0;
    u[0] = pos ? low : 0.0;
    u[1] = pos ? 0.0 : low;
    u[2] = pos ? high : 0.0;
    u[3] = pos ? 0.0 : high;
  }
};
static_assert(mapping_policy<dual_pair_mapping>);

/// Exponential relaxation towards a rest conductance: G(t) = g_rest + (G - g_rest) exp(-t / tau_cell),
/// tau_cell = tau_s exp(spread xi), xi ~ N(0, 1) drawn from (seed, cell).
struct exponential_relaxation {
  static constexpr std::string_view name = "exponential_relaxation";
  using argument_type = seconds;
  double g_rest_us = 20.0;  ///< conductance every cell relaxes towards, uS
  double tau_s = 1e7;       ///< median time constant, s
  double spread = 1.0;      ///< log-normal spread of the time constants

  void validate(seconds t) const {
    if (!(t.value >= 0) || !std::isfinite(t.value)) {
      throw value_error(detail::concat("exponential_relaxation: t_s must be >= 0 and finite, got ", t.value));
    }
    if (!(tau_s > 0) || !std::isfinite(tau_s)) {
      throw value_error(detail::concat("exponential_relaxation: tau_s must be > 0 and finite, got ", tau_s));
    }
  }
  [[nodiscard]] double operator()(double g_us, seconds t, std::uint64_t seed, std::uint64_t cell) const noexcept {
    const double xi = counter_rng(seed, 0x45585052 /* "EXPR" */).normal(cell);
    const double tau = tau_s * std::exp(spread * xi);
    return g_rest_us + (g_us - g_rest_us) * std::exp(-t.value / tau);
  }
};
static_assert(drift_model<exponential_relaxation>);

/// A per-output-channel gain a [O] and offset c [O] on the frozen layer's output.
class channel_affine_adapter {
 public:
  struct cache_type {
    const Tensor* src = nullptr;        ///< the forward's input
    const Tensor* layer_out = nullptr;  ///< the frozen layer's output
  };
  static constexpr std::string_view kind = "channel_affine";

  explicit channel_affine_adapter(const layer& base) {
    const auto O = base.effective_weights().dim(0);
    a_ = Tensor(Shape{O});
    a_.fill(1.0f);
    c_ = Tensor(Shape{O});
  }

  /// y = a ⊙ layer_out + c, per output channel (channels-last rows for a conv).
  void forward(const layer&, const Tensor& x, const Tensor& layer_out, Tensor& y, cache_type* cache) const {
    const auto O = a_.numel(), P = layer_out.numel() / O;
    const Tensor& z = layer_out;
    y.ensure(z.shape(), z.rank() == 4 ? layout::nhwc : layout::nchw);
    y.matrix(P, O) = (z.matrix(P, O) * a_.vector().asDiagonal()).rowwise() + c_.vector().transpose();
    if (cache) *cache = {&x, &layer_out};
  }
  /// dL/da = sum_p G[p, o] z[p, o], dL/dc = sum_p G[p, o]; dL/dx = (G ⊙ a) through W0.
  void backward(const layer& base, const cache_type& cache, const Tensor& diff_y, std::span<Tensor> grads,
                Tensor* diff_x) const {
    const auto O = a_.numel(), P = diff_y.numel() / O;
    const Tensor g = diff_y.rank() == 4 ? diff_y.to_layout(layout::nhwc) : diff_y;
    grads[0].ensure(a_.shape());
    grads[1].ensure(c_.shape());
    grads[0].vector() = (g.matrix(P, O).cwiseProduct(cache.layer_out->matrix(P, O))).colwise().sum().transpose();
    grads[1].vector() = g.matrix(P, O).colwise().sum().transpose();
    if (diff_x) backward_data(base, diff_y, cache.src->shape(), *diff_x);
  }
  void backward_data(const layer& base, const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x) const {
    const auto O = a_.numel(), P = diff_y.numel() / O;
    Tensor g = diff_y.rank() == 4 ? diff_y.to_layout(layout::nhwc) : diff_y;
    g.matrix(P, O) *= a_.vector().asDiagonal();
    base.backward_data(g, x_shape, diff_x);
  }
  [[nodiscard]] std::vector<Tensor*> parameters() { return {&a_, &c_}; }
  [[nodiscard]] std::vector<const Tensor*> parameters() const { return {&a_, &c_}; }
  void refresh(const layer&) {}
  [[nodiscard]] adapter_footprint footprint(const layer& base, sram_precision p) const {
    const auto values = 2 * a_.numel();
    return {values, base.effective_weights().numel(),
            static_cast<std::size_t>(values) * static_cast<std::size_t>(sram_value_bits(p) / 8)};
  }
  [[nodiscard]] named_tensors tensors() const { return {{"scale", a_}, {"shift", c_}}; }
  void load(const layer&, const std::map<std::string, Tensor>& files) {
    Tensor a = detail::take_tensor(files, "scale", a_.shape(), "channel_affine_adapter::load");
    Tensor c = detail::take_tensor(files, "shift", c_.shape(), "channel_affine_adapter::load");
    a_ = std::move(a);
    c_ = std::move(c);
  }

 private:
  Tensor a_, c_;
};
static_assert(adapter<channel_affine_adapter>);

struct args {
  std::int64_t test_images = 10000, samples = 10;
  double time_s = 30 * 86400.0;
  int steps = 100, threads = 2;
  std::string model = RIMC_MODEL_DIR "/resnet20_fmnist.safetensors";
  std::string data = fashion_mnist_dir.string();
};

network load_teacher(const std::string& model) {
  network net = resnet20(1, 10, 28);
  net.load(model);
  net.fold_batch_norm();
  return net;
}

}  // namespace

int main(int argc, char** argv) try {
  args a;
  cli::command_line cl("extend_rimc", "A user's own mapping, drift model and adapter, run end to end on ResNet-20.");
  cl.number("--test-images", a.test_images, "test images evaluated", std::int64_t{1}, std::int64_t{10000});
  cl.number("--samples", a.samples, "calibration images N", std::int64_t{1}, std::int64_t{60000});
  cl.number("--time", a.time_s, "time since programming", 0.0, 1e12, "s");
  cl.number("--steps", a.steps, "Adam steps per layer", 0, 1000000);
  cl.threads(a.threads);
  cl.text("--model", a.model, "the teacher's weights (safetensors)");
  cl.text("--data", a.data, "the Fashion-MNIST directory");
  cl.check([&] {
    cli::check_input_file("--model", a.model);
    cli::check_input_dir("--data", a.data);
  });
  cl.parse(argc, argv);
  set_num_threads(a.threads);

  const network teacher = load_teacher(a.model);
  dataset test = load_mnist_like(a.data, "test");
  if (a.test_images < test.size()) {
    std::vector<std::int64_t> first(static_cast<std::size_t>(a.test_images));
    for (std::size_t i = 0; i < first.size(); ++i) first[i] = static_cast<std::int64_t>(i);
    test = test.subset(first);
  }
  const dataset train = load_mnist_like(a.data, "train");
  const dataset calib = train.subset(sample_indices(train.size(), a.samples, 0));
  auto top1 = [&](const network& n) { return 100 * evaluate(n, test, 50, false).top1; };

  // The chip: the user's tile type (128 x 128, dual-pair mapping), programming noise, then the user's drift.
  using dual_pair_tile = CrossbarTile<float, 128, 128, dual_pair_mapping>;
  static_assert(crossbar_tile<dual_pair_tile>);
  auto make_chip = [&](network& chip) {
    analog_options opt;
    opt.device.g_min_us = 1.0;
    opt.device.g_max_us = 40.0;
    opt.device.noise = programming_noise::constant(0.3);
    auto crossbars = deploy_analog<dual_pair_tile>(chip, opt);
    crossbars.drift_to(exponential_relaxation{}, seconds{a.time_s}, /*seed=*/1);
    return crossbars.rram_writes();
  };
  network chip = teacher;
  const auto writes = make_chip(chip);
  std::printf("ResNet-20 on Fashion-MNIST (%lld test images): dual-pair cells (F = %g), exponential relaxation at t = %g s\n\n",
              static_cast<long long>(test.size()), dual_pair_mapping::F, a.time_s);
  std::printf("%-44s %8s %12s %10s\n", "setting", "top-1 %", "SRAM bytes", "seconds");
  std::printf("%-44s %8.2f\n", "ideal (digital teacher)", top1(teacher));
  std::printf("%-44s %8.2f\n", "drifted chip", top1(chip));

  calibration_config cfg;
  cfg.steps = a.steps;
  cfg.lr = 1e-2;
  const auto affine = calibrate_feature_kd(teacher, chip, calib.images, cfg,
                                           [](const adapter_request& r) { return channel_affine_adapter(r.base); });
  std::printf("%-44s %8.2f %12zu %10.3f\n", "user adapter (channel gain + offset), feature KD", top1(chip),
              affine.footprint.sram_bytes, affine.seconds);
  detach_adapters(chip);
  cfg.rank = 2;
  const auto dora = calibrate_feature_kd(teacher, chip, calib.images, cfg);
  std::printf("%-44s %8.2f %12zu %10.3f\n", "DoRA rank 2, feature KD", top1(chip), dora.footprint.sram_bytes, dora.seconds);
  std::printf("\nRRAM writes: %llu at programming, %llu during both calibrations\n", static_cast<unsigned long long>(writes),
              static_cast<unsigned long long>(affine.rram_writes + dora.rram_writes));
  return affine.rram_writes == 0 && dora.rram_writes == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "extend_rimc: %s\n", e.what());
  return 1;
}
