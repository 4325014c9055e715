#pragma once
/// \file
/// The baseline the paper compares feature distillation with: all adapters
/// trained jointly by back-propagation from the network's output, with
/// cross-entropy on the calibration labels and/or the KL divergence to the
/// teacher's logits at a temperature (Hinton et al. 2015). Gradients reach
/// the adapters through the frozen layers' input gradients; the frozen
/// (crossbar) weights get none and are never written.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <vector>

namespace rimc {

/// Settings of backprop calibration.
struct backprop_config {
  std::int64_t rank = 2;
  double alpha = 0;                  ///< 0 means alpha = rank
  norm_mode norm = norm_mode::detached;
  int steps = 200;                   ///< joint Adam steps on the whole calibration batch
  double lr = 1e-2;
  double ce_weight = 1.0;            ///< weight of the cross-entropy on the labels
  double kl_weight = 0.0;            ///< weight of the KL divergence to the teacher's logits
  double temperature = 4.0;          ///< distillation temperature T (the KL term is scaled by T^2)
  std::uint64_t seed = 0;
  std::vector<std::string> targets;  ///< empty: every conv2d and linear node

  void validate() const {
    if (rank < 1) throw value_error(detail::concat("backprop_config: rank must be >= 1, got ", rank));
    if (steps < 0) throw value_error(detail::concat("backprop_config: steps must be >= 0, got ", steps));
    if (!(lr > 0) || !std::isfinite(lr)) throw value_error(detail::concat("backprop_config: lr must be positive, got ", lr));
    if (ce_weight < 0 || kl_weight < 0 || ce_weight + kl_weight <= 0) {
      throw value_error(detail::concat("backprop_config: ce_weight (", ce_weight, ") and kl_weight (", kl_weight,
                                       ") must be >= 0 and not both 0"));
    }
    if (!(temperature > 0)) throw value_error(detail::concat("backprop_config: temperature must be positive, got ", temperature));
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

/// Trains adapters on every target of `student` jointly by backprop (see the
/// file comment); returns them attached, with the usual footprint and write count.
[[nodiscard]] inline calibration_result calibrate_backprop(const network& teacher, network& student, const Tensor& images,
                                                           const std::vector<std::int32_t>& labels,
                                                           const backprop_config& cfg) {
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
  std::vector<std::string> targets = cfg.targets;
  if (targets.empty()) {
    for (const auto& n : student.nodes())
      if (n.kind == op_kind::conv2d || n.kind == op_kind::linear) targets.push_back(n.name);
  }
  detail::check_calibration_targets(student, targets, cfg.rank, "calibrate_backprop");
  const Tensor teacher_logits = teacher.forward(images);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= teacher_logits.dim(1)) {
      throw value_error(detail::concat("calibrate_backprop: label ", labels[i], " of image ", i, " is outside [0, ",
                                       teacher_logits.dim(1), ")"));
    }
  }
  const std::uint64_t writes_before = student.rram_writes();
  calibration_result result;
  std::vector<std::shared_ptr<dora_adapter>> adapters;
  for (const auto& name : targets) {
    const network_node& node = student.node(name);
    dora_config dc;
    dc.rank = cfg.rank;
    dc.alpha = cfg.alpha > 0 ? cfg.alpha : static_cast<double>(cfg.rank);
    dc.norm = cfg.norm;
    dc.seed = cfg.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(student.id(name) + 1));
    const frozen_layer& layer = student.layer(name);
    auto a = std::make_shared<dora_adapter>(node.kind == op_kind::conv2d
                                                ? dora_adapter::conv2d(layer.effective_weights(), node.conv, dc)
                                                : dora_adapter::linear(layer.effective_weights(), dc));
    student.attach_adapter(name, a);
    adapters.push_back(a);
    result.adapters[name] = a;
  }
  adam opt(cfg.lr);
  network_tape tape;
  Tensor grad;
  double first = 0, last = 0;
  int divergences = 0, steps_taken = 0;
  // Divergence guard, as in calibrate_feature_kd: a step whose loss is NaN/Inf or above 1000x the
  // starting loss, or that leaves a non-finite parameter, is undone (the parameters that last gave a
  // good loss come back) and Adam restarts at half the step size.
  std::vector<std::array<Tensor, 3>> good;
  for (const auto& a : adapters) good.push_back({a->magnitude(), a->lora_A(), a->lora_B()});
  auto finite_parameters = [&] {
    for (const auto& a : adapters)
      for (const Tensor* t : a->parameters())
        if (!detail::all_finite(*t)) return false;
    return true;
  };
  for (int step = 0; step <= cfg.steps; ++step) {
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
      for (std::size_t i = 0; i < adapters.size(); ++i) adapters[i]->set_parameters(good[i][0], good[i][1], good[i][2]);
      opt = adam(opt.lr() * 0.5);
      continue;
    }
    last = loss;
    for (std::size_t i = 0; i < adapters.size(); ++i)
      good[i] = {adapters[i]->magnitude(), adapters[i]->lora_A(), adapters[i]->lora_B()};
    if (step == cfg.steps) break;
    std::map<std::string, dora_gradients> grads;
    (void)student.backward(tape, grad, grads);
    std::vector<param_slot> slots;
    for (const auto& name : targets) {
      auto p = result.adapters.at(name)->parameters();
      const auto& gr = grads.at(name);
      slots.push_back({p[0], &gr.magnitude});
      slots.push_back({p[1], &gr.lora_A});
      slots.push_back({p[2], &gr.lora_B});
    }
    opt.step(slots);
    for (auto& a : adapters) a->refresh();
    ++steps_taken;
  }
  layer_calibration whole;
  whole.name = "(all layers, backprop)";
  whole.mse_before = first;  // the distillation loss, not a feature MSE
  whole.mse_after = last;  // the loss of the parameters kept
  whole.steps = steps_taken;
  whole.divergences = divergences;
  whole.lr = opt.lr();
  for (const auto& a : adapters) whole.footprint += a->footprint();
  result.footprint = whole.footprint;
  whole.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  result.layers.push_back(whole);
  result.rram_writes = student.rram_writes() - writes_before;
  result.seconds = whole.seconds;
  return result;
}

}  // namespace rimc
