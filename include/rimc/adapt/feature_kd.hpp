#pragma once
/// \file
/// Layer-wise feature-distillation calibration (Dong et al., arXiv 2504.03763):
/// DoRA adapters are attached to the student's layers one at a time in
/// forward order. For layer l the input is what the already-calibrated
/// student produces at that point on the calibration images, the target is
/// the teacher's output of layer l (pre-activation, folded batch-norm bias
/// included) on the same images, and only layer l's adapter is trained to
/// minimise the mean squared error between them; it is then frozen. The
/// crossbar weights are only read: no RRAM write happens.
///
/// Each step's loss and gradients are computed either directly over the N
/// images or from statistics of the layer computed once
/// (feature_statistics.hpp: the same loss rewritten, exact to rounding);
/// calibration_config::loss_path chooses, by default per layer by a cost model.
///
/// Guards: invalid settings (rank 0 or above a target's min(O, K), no images,
/// a non-positive learning rate, non-finite images or teacher features) are
/// rejected before any adapter is attached. A step whose loss is NaN/Inf or
/// above 1000x the layer's starting MSE, or that leaves a non-finite
/// parameter, is undone: the last good parameters are restored, Adam restarts
/// at half the step size, and the event is counted in the layer's report.

#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_statistics.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/core/error.hpp>
#include <rimc/kernels/mse.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace rimc {

/// Settings of a calibration run.
struct calibration_config {
  std::int64_t rank = 2;                ///< adapter rank r
  double alpha = 0;                     ///< lora_alpha; 0 means alpha = rank (s = 1)
  bool use_rslora = false;
  norm_mode norm = norm_mode::detached;
  int steps = 100;                      ///< Adam steps per layer
  double lr = 1e-2;                     ///< Adam learning rate
  std::uint64_t seed = 0;               ///< seeds each adapter's A (mixed with the layer's index)
  bool magnitude_from_teacher = false;  ///< init m from the teacher's (ideal) row norms, not the drifted ones
  std::vector<std::string> targets;     ///< layers to adapt; empty: every conv2d and linear node
  kd_loss_path loss_path = kd_loss_path::automatic;  ///< how each step's loss and gradients are computed
  /// automatic: no statistics path for a layer whose statistics need more bytes than this
  double statistics_max_bytes = 256.0 * 1024 * 1024;

  void validate() const {
    if (rank < 1) throw value_error(detail::concat("calibration_config: rank must be >= 1, got ", rank));
    if (steps < 0) throw value_error(detail::concat("calibration_config: steps must be >= 0, got ", steps));
    if (!(lr > 0) || !std::isfinite(lr)) throw value_error(detail::concat("calibration_config: lr must be positive, got ", lr));
    if (alpha < 0 || !std::isfinite(alpha)) throw value_error(detail::concat("calibration_config: alpha must be >= 0, got ", alpha));
    if (loss_path > kd_loss_path::direct) {
      throw value_error(detail::concat("calibration_config: loss_path must be automatic, statistics or direct, got ",
                                       static_cast<int>(loss_path)));
    }
    if (!(statistics_max_bytes >= 0)) {
      throw value_error(detail::concat("calibration_config: statistics_max_bytes must be >= 0, got ", statistics_max_bytes));
    }
  }
};

/// What calibrating one layer did.
struct layer_calibration {
  std::string name;
  double mse_before = 0, mse_after = 0;  ///< feature MSE to the teacher before and after
  int steps = 0;
  int divergences = 0;  ///< steps whose loss was NaN/Inf or exploded: parameters restored, lr halved
  double lr = 0;        ///< the Adam step size at the end (the configured one halved at each divergence)
  kd_loss_path path = kd_loss_path::direct;  ///< how the steps were computed (statistics or direct)
  double seconds = 0;
  adapter_footprint footprint;
};

/// What a calibration run did.
struct calibration_result {
  std::vector<layer_calibration> layers;
  adapter_footprint footprint;     ///< all adapters together (fp32 SRAM)
  double seconds = 0;              ///< wall time of the whole calibration
  std::uint64_t rram_writes = 0;   ///< RRAM programming events during calibration (always 0)
  std::map<std::string, std::shared_ptr<dora_adapter>> adapters;  ///< by node name, attached to the student
};

namespace detail {
/// Rejects up front a target that is not a conv2d or linear node of `net`, and
/// a rank that target's adapter cannot have (at most min(O, K, dora_config::max_rank)).
inline void check_calibration_targets(const network& net, const std::vector<std::string>& targets, std::int64_t rank,
                                      const char* who) {
  if (targets.empty()) throw value_error(concat(who, ": no conv2d or linear layer to calibrate"));
  for (const auto& name : targets) {
    const network_node& n = net.node(name);
    if (n.kind != op_kind::conv2d && n.kind != op_kind::linear) {
      throw value_error(concat(who, ": target '", name, "' is not a conv2d or linear layer"));
    }
    const Tensor& w = n.params.at("weight");
    const std::int64_t O = w.dim(0), K = w.numel() / std::max<std::int64_t>(O, 1);
    const std::int64_t limit = std::min({O, K, dora_config::max_rank});
    if (rank > limit) {
      throw value_error(concat(who, ": rank ", rank, " is larger than layer '", name, "' allows: min(O = ", O,
                               ", K = ", K, ", ", dora_config::max_rank, ") = ", limit));
    }
  }
}

[[nodiscard]] inline bool all_finite(const Tensor& t) {
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(t[i])) return false;
  return true;
}

inline void check_no_fused_relu(const network& net, const std::string& name, const char* who) {
  const auto& n = net.node(name);
  if (n.conv.relu || n.relu_after) {
    throw value_error(concat("calibrate_feature_kd: ", who, " node '", name,
                             "' has a fused ReLU; its pre-activation output is needed (do not call fuse_relu())"));
  }
}

/// A calibration step's forward and loss: u = A x into `cache`, then
/// mse(gamma ⊙ (z0 + s u B^T) + bias, target, grad). When z0 and the target
/// are laid out alike, the combination is fused with the loss block by block
/// (y is never stored) and gives bitwise the loss and gradient of forward()
/// then mse(); otherwise it is forward() then mse(), into `y`.
inline double adapter_mse(const dora_adapter& a, const Tensor& x, const Tensor& z0, const Tensor* bias,
                          const Tensor& target, Tensor& y, Tensor* grad, dora_cache& cache) {
  const bool flat = z0.rank() != 4 || z0.memory_layout() == layout::nhwc;
  if (flat && target.memory_layout() == z0.memory_layout() &&
      target.shape() == z0.shape()) {
    a.forward_low_rank(x, z0, bias, cache);
    const auto O = a.out_features(), r = a.rank(), P = z0.numel() / O, n = P * O;
    const Eigen::VectorXf gamma = a.magnitude().vector().cwiseQuotient(a.norms().vector());
    const RowMatrixXf sbt = a.scale() * a.lora_B().matrix(O, r).transpose();  // as dora_combine forms it
    const Eigen::VectorXf shift = bias ? Eigen::VectorXf(bias->vector()) : Eigen::VectorXf::Zero(O);
    if (grad) grad->ensure(z0.shape(), z0.memory_layout());
    const float *u = cache.u.data(), *zp = z0.data(), *tp = target.data();
    float* gp = grad ? grad->data() : nullptr;
    const auto blocks = (n + mse_block_size - 1) / mse_block_size;
    const auto nd = static_cast<double>(n);
    thread_local std::vector<double> part;
    part.assign(static_cast<std::size_t>(blocks), 0.0);
    double* pp = part.data();
#pragma omp parallel for schedule(static) if (blocks > 4)
    for (std::int64_t b = 0; b < blocks; ++b) {
      thread_local std::vector<float> ybuf;
      const auto i0 = b * mse_block_size, i1 = std::min(n, i0 + mse_block_size), p0 = i0 / O, p1 = (i1 - 1) / O + 1;
      ybuf.resize(static_cast<std::size_t>((p1 - p0) * O));
      combine_rows_block(u, sbt.data(), zp, nullptr, gamma.data(), shift.data(), r, O, p0, p1, ybuf.data(), false);
      pp[b] = mse_block(ybuf.data() + (i0 - p0 * O), tp + i0, gp ? gp + i0 : nullptr, i1 - i0, nd);
    }
    double s = 0;
    for (double v : part) s += v;
    return s / nd;
  }
  a.forward(x, z0, bias, y, &cache);
  return mse(y, target, grad);
}

/// The loss path for a layer with P output positions (cfg.loss_path unless
/// automatic: then statistics when feature_statistics::cost is at most
/// feature_statistics::direct_cost and they fit in cfg.statistics_max_bytes).
[[nodiscard]] inline kd_loss_path choose_loss_path(const calibration_config& cfg, const dora_adapter& a, std::int64_t P) {
  if (cfg.loss_path != kd_loss_path::automatic) return cfg.loss_path;
  const auto K = a.fan_in(), O = a.out_features(), r = a.rank();
  const bool fits = feature_statistics::bytes(K, O) <= cfg.statistics_max_bytes;
  return fits && feature_statistics::cost(P, K, O, r, cfg.steps) <= feature_statistics::direct_cost(P, K, O, r, cfg.steps)
             ? kd_loss_path::statistics
             : kd_loss_path::direct;
}

/// The student's inputs to the layers being calibrated, each prefix run once:
/// the values of earlier nodes that later nodes consume are kept, so the
/// input of the next target is computed from the last one on (a node's value
/// stays valid until an adapter is attached at or before it). Targets not in
/// network order fall back to a full forward from the images each time.
class student_prefix {
 public:
  student_prefix(const network& net, const Tensor& images, const std::vector<std::string>& targets)
      : net_(net), images_(images) {
    int last = 0;
    for (const auto& t : targets) {
      const int id = net.id(t);
      ordered_ = ordered_ && id > last;
      last = id;
    }
    known_.emplace(0, images);
  }

  /// The student's current input to target `name`.
  [[nodiscard]] Tensor input_of(const std::string& name) {
    const network_node& node = net_.node(name);
    const int in = net_.resolve(node.inputs[0]);
    const std::string& in_name = net_.nodes()[static_cast<std::size_t>(in)].name;
    std::map<std::string, Tensor> got;
    if (!ordered_) {
      (void)net_.forward_from(0, images_, in, {in_name}, got);
      return std::move(got.at(in_name));
    }
    if (in > done_) {
      // Keep `in` and every node computed now that a later node consumes.
      std::vector<std::string> keep{in_name};
      for (int j = done_ + 1; j < in; ++j)
        if (!net_.nodes()[static_cast<std::size_t>(j)].bypass && consumed_after(j, in))
          keep.push_back(net_.nodes()[static_cast<std::size_t>(j)].name);
      (void)net_.forward_from(done_, known_, in, keep, got);
      for (auto& [k, v] : got) known_[net_.id(k)] = std::move(v);
      done_ = in;
    }
    return known_.at(in);
  }

  /// An adapter was attached at target `name`: its value and every later one changed.
  void changed(const std::string& name) {
    if (!ordered_) return;
    const int t = net_.id(name);
    done_ = std::min(done_, t - 1);
    for (auto it = known_.begin(); it != known_.end();) {
      const bool stale = it->first > done_, unused = it->first != 0 && !consumed_after(it->first, done_);
      it = stale || unused ? known_.erase(it) : std::next(it);
    }
  }

 private:
  /// Whether a node after `after` consumes node j's value.
  [[nodiscard]] bool consumed_after(int j, int after) const {
    const auto& nodes = net_.nodes();
    for (int i = after + 1; i < static_cast<int>(nodes.size()); ++i)
      for (int k : nodes[static_cast<std::size_t>(i)].inputs)
        if (net_.resolve(k) == j) return true;
    return false;
  }

  const network& net_;
  const Tensor& images_;
  std::map<int, Tensor> known_;  ///< node index -> the student's value, for nodes <= done_ that later nodes consume
  int done_ = 0;                 ///< nodes up to this index have their current values in known_ where needed
  bool ordered_ = true;
};
}  // namespace detail

/// Calibrates `student` against `teacher` on `images` (see the file comment);
/// the adapters stay attached to the student and are returned.
[[nodiscard]] inline calibration_result calibrate_feature_kd(const network& teacher, network& student, const Tensor& images,
                                                             const calibration_config& cfg) {
  cfg.validate();
  if (images.rank() < 2 || images.dim(0) < 1) {
    throw value_error(detail::concat("calibrate_feature_kd: need at least one calibration image, got ",
                                     images.shape().to_string()));
  }
  if (!detail::all_finite(images)) throw value_error("calibrate_feature_kd: the calibration images are not finite");
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<std::string> targets = cfg.targets;
  if (targets.empty()) {
    for (const auto& n : student.nodes())
      if (n.kind == op_kind::conv2d || n.kind == op_kind::linear) targets.push_back(n.name);
  }
  detail::check_calibration_targets(student, targets, cfg.rank, "calibrate_feature_kd");
  for (const auto& t : targets) {
    detail::check_no_fused_relu(student, t, "student");
    detail::check_no_fused_relu(teacher, t, "teacher");
  }
  // The teacher's features for every target, once.
  std::map<std::string, Tensor> teacher_out;
  (void)teacher.forward(images, targets, teacher_out);
  for (const auto& t : targets) {
    if (!detail::all_finite(teacher_out.at(t))) {
      throw value_error(detail::concat("calibrate_feature_kd: the teacher's output of layer '", t, "' is not finite"));
    }
  }
  const std::uint64_t writes_before = student.rram_writes();

  calibration_result result;
  detail::student_prefix prefix(student, images, targets);
  for (const auto& name : targets) {
    const auto t0 = std::chrono::steady_clock::now();
    const network_node& node = student.node(name);
    // The calibrated-so-far student's input to this layer, and W0 x: both fixed during this layer's calibration.
    const Tensor x = prefix.input_of(name);
    const frozen_layer& layer = student.layer(name);
    Tensor z0;
    layer.forward(x, z0);
    if (z0.rank() == 4) z0 = z0.to_layout(layout::nhwc);
    const auto b = node.params.find("bias");
    const Tensor* bias = b == node.params.end() ? nullptr : &b->second;
    if (bias) z0.matrix(z0.numel() / bias->numel(), bias->numel()).rowwise() -= bias->vector().transpose();
    Tensor target = teacher_out.at(name);
    if (target.rank() == 4) target = target.to_layout(layout::nhwc);

    dora_config dc;
    dc.rank = cfg.rank;
    dc.alpha = cfg.alpha > 0 ? cfg.alpha : static_cast<double>(cfg.rank);
    dc.use_rslora = cfg.use_rslora;
    dc.norm = cfg.norm;
    dc.seed = cfg.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(student.id(name) + 1));
    auto adapter = std::make_shared<dora_adapter>(node.kind == op_kind::conv2d
                                                      ? dora_adapter::conv2d(layer.effective_weights(), node.conv, dc)
                                                      : dora_adapter::linear(layer.effective_weights(), dc));
    if (cfg.magnitude_from_teacher) {
      adapter->init_magnitude_from(teacher.node(name).params.at("weight"));
      adapter->refresh();
    }
    layer_calibration rep;
    rep.name = name;
    rep.path = detail::choose_loss_path(cfg, *adapter, z0.numel() / adapter->out_features());
    std::optional<detail::feature_statistics> stats;
    if (rep.path == kd_loss_path::statistics) stats.emplace(*adapter, x, z0, bias, target);
    Tensor y, grad;
    dora_cache cache;
    dora_gradients g;
    // This step's loss and, when wanted, its gradients into g.
    auto evaluate = [&](bool want_grad) {
      if (stats) return stats->evaluate(*adapter, want_grad ? &g : nullptr);
      const double loss = detail::adapter_mse(*adapter, x, z0, bias, target, y, want_grad ? &grad : nullptr, cache);
      if (want_grad && std::isfinite(loss)) adapter->backward(cache, grad, g);
      return loss;
    };
    adam opt(cfg.lr);
    double last_good = 0;
    std::array<Tensor, 3> good{adapter->magnitude(), adapter->lora_A(), adapter->lora_B()};
    for (int step = 0; step <= cfg.steps; ++step) {
      const double loss = evaluate(step < cfg.steps);
      if (step == 0) {
        if (!std::isfinite(loss)) {
          throw value_error(detail::concat("calibrate_feature_kd: layer '", name, "' starts with feature MSE ", loss,
                                           ": its input or the teacher's output is not finite"));
        }
        rep.mse_before = loss;
        last_good = loss;
      }
      // Divergence guard: restore the last good parameters and halve the step size.
      const auto p = adapter->parameters();
      if (!std::isfinite(loss) || loss > 1e3 * std::max(rep.mse_before, 1e-30) || !detail::all_finite(*p[0]) ||
          !detail::all_finite(*p[1]) || !detail::all_finite(*p[2])) {
        ++rep.divergences;
        adapter->set_parameters(good[0], good[1], good[2]);
        opt = adam(opt.lr() * 0.5);
        continue;
      }
      if (loss <= last_good) {
        last_good = loss;
        good = {adapter->magnitude(), adapter->lora_A(), adapter->lora_B()};
      }
      if (step == cfg.steps) break;
      const param_slot slots[] = {{p[0], &g.magnitude}, {p[1], &g.lora_A}, {p[2], &g.lora_B}};
      opt.step(slots);
      adapter->refresh();
      ++rep.steps;
    }
    // Keep the best parameters seen (never worse than the start).
    adapter->set_parameters(good[0], good[1], good[2]);
    rep.mse_after = evaluate(false);
    rep.lr = opt.lr();
    rep.footprint = adapter->footprint();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.footprint += rep.footprint;
    result.layers.push_back(rep);
    student.attach_adapter(name, adapter);
    prefix.changed(name);
    result.adapters[name] = adapter;
  }
  result.rram_writes = student.rram_writes() - writes_before;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return result;
}

}  // namespace rimc
