#pragma once
/// \file
/// The baseline the paper compares feature distillation with: all adapters
/// trained jointly by back-propagation from the network's output, with
/// cross-entropy on the calibration labels and/or the KL divergence to the
/// teacher's logits at a temperature (Hinton et al. 2015). Gradients reach
/// the adapters through the frozen layers' input gradients; the frozen
/// (crossbar) weights get none and are never written. Any adapter type works
/// (a factory makes them, as for calibrate_feature_kd); DoRA by default.
///
/// On a chip with a non-ideal periphery every step's forward runs the
/// frozen layers' tile-exact path, so each step reads the chip afresh (new
/// read noise per step: a stochastic gradient over the noise), and the input
/// gradients pass through the effective weights (straight through the ADC
/// and DAC). As the adapters restore the activations, ranges set on the
/// drifted chip would clip: every backprop_config::recalibrate_adc_every
/// steps the ADC and calibrated DAC ranges are widened to what the
/// calibration images need (calibrate_adcs, range_update::widen), as feature
/// KD widens each layer's before calibrating it.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/nn/deploy.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

namespace rimc {

/// Settings of backprop calibration.
struct backprop_config {
  /// DoRA rank r of every adapter.
  std::int64_t rank = 2;
  double alpha = 0;                  ///< 0 means alpha = rank
  /// DoRA: gradient through the norms.
  norm_mode norm = norm_mode::detached;
  int steps = 200;                   ///< joint Adam steps on the whole calibration batch
  /// Adam learning rate.
  double lr = 1e-2;
  double ce_weight = 1.0;            ///< weight of the cross-entropy on the labels
  double kl_weight = 0.0;            ///< weight of the KL divergence to the teacher's logits
  double temperature = 4.0;          ///< distillation temperature T (the KL term is scaled by T^2)
  /// Seeds each adapter (mixed with the layer's index).
  std::uint64_t seed = 0;
  std::vector<std::string> targets;  ///< empty: every conv2d and linear node
  /// Every this many steps (from step 0) the percentile ADC and calibrated DAC
  /// ranges are widened to what the calibration images need through the
  /// adapted network (calibrate_adcs, range_update::widen); 0: never. No
  /// effect on layers without them.
  int recalibrate_adc_every = 10;
  /// The kernels of every step's adapter forward and backward (low_rank_kernel), for the
  /// default DoRA adapters (adapters()); a caller's own factory sets its adapters' kernels.
  low_rank_kernel training_kernel = low_rank_kernel::shift_add;
  calibration_progress on_progress;  ///< optional: called once at the end with the run's report

  /// The DoRA factory these settings describe (the default adapters).
  [[nodiscard]] dora_factory adapters() const { return {rank, alpha, false, norm, false, training_kernel}; }

  /// Throws value_error naming the first invalid field.
  void validate() const {
    if (rank < 1) throw value_error(detail::concat("backprop_config: rank must be >= 1, got ", rank));
    if (steps < 0) throw value_error(detail::concat("backprop_config: steps must be >= 0, got ", steps));
    if (!(lr > 0) || !std::isfinite(lr)) throw value_error(detail::concat("backprop_config: lr must be positive, got ", lr));
    if (ce_weight < 0 || kl_weight < 0 || ce_weight + kl_weight <= 0) {
      throw value_error(detail::concat("backprop_config: ce_weight (", ce_weight, ") and kl_weight (", kl_weight,
                                       ") must be >= 0 and not both 0"));
    }
    if (!(temperature > 0)) throw value_error(detail::concat("backprop_config: temperature must be positive, got ", temperature));
    if (recalibrate_adc_every < 0) {
      throw value_error(detail::concat("backprop_config: recalibrate_adc_every must be >= 0, got ", recalibrate_adc_every));
    }
  }
};

/// The loss and dL/dlogits of ce_weight * CE(logits, labels) + kl_weight *
/// T^2 KL(softmax(teacher / T) || softmax(logits / T)), averaged over the batch.
inline double distillation_loss(const Tensor& logits, const std::vector<std::int32_t>& labels, const Tensor* teacher,
                                const backprop_config& cfg, Tensor& grad) {
  const auto N = logits.dim(0), K = logits.dim(1);
  grad.ensure(logits.shape());
  double loss = 0;
  std::vector<double> p(static_cast<std::size_t>(K)), q(static_cast<std::size_t>(K));
  auto softmax = [&](const float* z, double t, std::vector<double>& out) {
    double mx = -INFINITY;
    for (std::int64_t k = 0; k < K; ++k) mx = std::max(mx, double(z[k]) / t);
    double sum = 0;
    for (std::int64_t k = 0; k < K; ++k) sum += out[static_cast<std::size_t>(k)] = std::exp(double(z[k]) / t - mx);
    for (auto& v : out) v /= sum;
    return mx + std::log(sum);  // log-sum-exp
  };
  for (std::int64_t i = 0; i < N; ++i) {
    const float* z = logits.data() + i * K;
    float* g = grad.data() + i * K;
    for (std::int64_t k = 0; k < K; ++k) g[k] = 0;
    if (cfg.ce_weight > 0) {
      const double lse = softmax(z, 1.0, p);
      const auto y = labels[static_cast<std::size_t>(i)];
      loss += cfg.ce_weight * (lse - z[y]);
      for (std::int64_t k = 0; k < K; ++k)
        g[k] += static_cast<float>(cfg.ce_weight * (p[static_cast<std::size_t>(k)] - (k == y ? 1.0 : 0.0)) / double(N));
    }
    if (cfg.kl_weight > 0 && teacher) {
      const double T = cfg.temperature;
      softmax(z, T, p);
      softmax(teacher->data() + i * K, T, q);
      for (std::int64_t k = 0; k < K; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        if (q[kk] > 0) loss += cfg.kl_weight * T * T * q[kk] * std::log(q[kk] / std::max(p[kk], 1e-300));
        g[k] += static_cast<float>(cfg.kl_weight * T * (p[kk] - q[kk]) / double(N));
      }
    }
  }
  return loss / double(N);
}

/// Trains adapters made by `make` on every target of `student` jointly by
/// backprop (see the file comment); returns them attached, with the usual
/// footprint and write count.
template <class Factory>
  requires adapter<std::invoke_result_t<Factory&, const adapter_request&>>
[[nodiscard]] auto calibrate_backprop(const network& teacher, network& student, const Tensor& images,
                                      const std::vector<std::int32_t>& labels, const backprop_config& cfg,
                                      Factory&& make) {
  using A = std::invoke_result_t<Factory&, const adapter_request&>;
  cfg.validate();
  if (images.rank() < 2 || images.dim(0) < 1) {
    throw value_error(detail::concat("calibrate_backprop: need at least one calibration image, got ",
                                     images.shape().to_string()));
  }
  if (static_cast<std::int64_t>(labels.size()) != images.dim(0)) {
    throw value_error(detail::concat("calibrate_backprop: ", images.dim(0), " images but ", labels.size(), " labels"));
  }
  if (!detail::all_finite(images)) throw value_error("calibrate_backprop: the calibration images are not finite");
  const auto t_start = std::chrono::steady_clock::now();
  detail::check_teacher_student(teacher, student, "calibrate_backprop");
  const std::vector<std::string> targets = detail::calibration_targets(student, cfg.targets, "calibrate_backprop");
  // The training tape runs every node unfused: refuse a fused ReLU anywhere before attaching anything.
  for (const auto& n : student.nodes()) {
    if (!n.bypass && n.conv.relu) {
      throw value_error(detail::concat("calibrate_backprop: student node '", n.name,
                                       "' has a fused ReLU; backprop needs the network without fuse_relu()"));
    }
  }
  for (const auto& t : targets) {
    if (student.node(t).relu_after) {
      throw value_error(detail::concat("calibrate_backprop: target '", t,
                                       "' has a fused ReLU; backprop needs the network without fuse_relu()"));
    }
  }
  std::vector<A> made = detail::make_adapters<A>(teacher, student, targets, cfg.seed, make, "calibrate_backprop");
  const Tensor teacher_logits = teacher.forward(images);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= teacher_logits.dim(1)) {
      throw value_error(detail::concat("calibrate_backprop: label ", labels[i], " of image ", i, " is outside [0, ",
                                       teacher_logits.dim(1), ")"));
    }
  }
  const std::uint64_t writes_before = student.rram_writes();
  basic_calibration_result<A> result;
  std::vector<std::shared_ptr<adapted_layer<A>>> adapted;
  detail::attach_transaction attached(student);  // a failure below takes the adapters off again
  for (std::size_t i = 0; i < targets.size(); ++i) {
    auto l = attached.attach(targets[i], std::move(made[i]));
    adapted.push_back(l);
    result.adapters[targets[i]] = l;
  }
  adam opt(cfg.lr);
  network_tape tape;
  Tensor grad;
  double first = 0, last = 0;
  int divergences = 0, steps_taken = 0;
  // Divergence guard, as in calibrate_feature_kd: a step whose loss is NaN/Inf or above 1000x the
  // starting loss, or that leaves a non-finite parameter, is undone (the parameters that last gave a
  // good loss come back) and Adam restarts at half the step size.
  std::vector<std::vector<Tensor>> good;
  for (const auto& l : adapted) good.push_back(detail::copy_parameters(l->adapter()));
  auto finite_parameters = [&] {
    for (const auto& l : adapted)
      if (!detail::parameters_finite(l->adapter())) return false;
    return true;
  };
  auto restore = [&] {
    for (std::size_t i = 0; i < adapted.size(); ++i) {
      const auto p = adapted[i]->trainable_parameters();
      for (std::size_t k = 0; k < p.size(); ++k) *p[k] = good[i][k];
      adapted[i]->parameters_changed();
    }
  };
  for (int step = 0; step <= cfg.steps; ++step) {
    if (cfg.recalibrate_adc_every > 0 && step % cfg.recalibrate_adc_every == 0 && step < cfg.steps) {
      calibrate_adcs(student, images, range_update::widen);
    }
    const Tensor logits = student.forward_train(images, tape);
    const double loss = distillation_loss(logits, labels, &teacher_logits, cfg, grad);
    if (step == 0) {
      if (!std::isfinite(loss)) {
        throw value_error(detail::concat("calibrate_backprop: the starting loss is ", loss, ": the logits are not finite"));
      }
      first = loss;
    }
    if (!std::isfinite(loss) || loss > 1e3 * std::max(first, 1e-30) || !finite_parameters()) {
      ++divergences;
      restore();
      opt = adam(opt.lr() * 0.5);
      continue;
    }
    last = loss;
    for (std::size_t i = 0; i < adapted.size(); ++i) good[i] = detail::copy_parameters(adapted[i]->adapter());
    if (step == cfg.steps) break;
    parameter_gradients grads;
    (void)student.backward(tape, grad, grads);
    std::vector<param_slot> slots;
    for (std::size_t i = 0; i < adapted.size(); ++i) {
      const auto p = adapted[i]->trainable_parameters();
      const auto g = grads.find(targets[i]);
      if (g == grads.end()) {
        throw value_error(detail::concat("calibrate_backprop: target '", targets[i],
                                         "' gets no gradient: it does not feed the network's output"));
      }
      const auto& gr = g->second;
      for (std::size_t k = 0; k < p.size(); ++k) slots.push_back({p[k], &gr[k]});
    }
    opt.step(slots);
    for (auto& l : adapted) l->parameters_changed();
    ++steps_taken;
  }
  layer_calibration whole;
  whole.name = "(all layers, backprop)";
  whole.mse_before = first;  // the distillation loss, not a feature MSE
  whole.mse_after = last;    // the loss of the parameters kept
  whole.steps = steps_taken;
  whole.divergences = divergences;
  whole.lr = opt.lr();
  for (const auto& l : adapted) whole.footprint += l->footprint();
  result.footprint = whole.footprint;
  whole.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.layers.push_back(whole);
  result.rram_writes = student.rram_writes() - writes_before;
  result.seconds = whole.seconds;
  if (cfg.on_progress) cfg.on_progress(whole, 0, 1);
  attached.commit();
  return result;
}

/// Trains DoRA adapters made from `cfg` (rank, alpha, norm mode) jointly by backprop.
[[nodiscard]] inline calibration_result calibrate_backprop(const network& teacher, network& student,
                                                           const Tensor& images,
                                                           const std::vector<std::int32_t>& labels,
                                                           const backprop_config& cfg) {
  cfg.validate();
  return calibrate_backprop(teacher, student, images, labels, cfg, cfg.adapters());
}

}  // namespace rimc
