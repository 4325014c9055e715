#pragma once
/// \file
/// Layer-wise feature-distillation calibration (Dong et al., arXiv
/// 2504.03763; docs/formulas.md, sec. 3): adapters are attached to the
/// student's layers one at a time in forward order. For layer l the input is
/// what the already-calibrated student produces at that point on the
/// calibration images, the target is the teacher's output of layer l
/// (pre-activation, folded batch-norm bias included) on the same images, and
/// only layer l's adapter is trained to minimise the mean squared error
/// between them; it is then frozen. The crossbar weights are only read: no
/// RRAM write happens.
///
/// On a chip with a non-ideal periphery (ADC, DAC, read noise) the student's
/// frozen layers run their tile-exact path: the inputs each layer sees and
/// the outputs its adapter corrects are what the chip reads, and the teacher
/// stays ideal. Each layer's output is read once per calibration sample, or
/// averaged over calibration_config::reads reads; the statistics path is
/// exact for those fixed reads. A percentile ADC's ranges (and a calibrated
/// DAC's) are widened to what the layer's new input needs before it is calibrated
/// (calibration_config::recalibrate_adc).
///
/// Any adapter type works (adapt/adapter.hpp): a factory makes each layer's
/// adapter; without one, DoRA adapters are made from the config. For
/// low-rank adapters (DoRA, LoRA) each step's loss and gradients are computed
/// either directly over the N images or from statistics of the layer computed
/// once (feature_statistics.hpp: the same loss rewritten, exact to rounding);
/// calibration_config::loss_path chooses, by default per layer by a cost
/// model. Other adapters take the direct path.
///
/// Guards: invalid settings (a rank or adapter a target cannot take, no
/// images, a non-positive learning rate, non-finite images or teacher
/// features, a teacher and student that disagree on batch-norm folding) are
/// rejected before any adapter is attached: every adapter is made before the
/// first layer is calibrated. An error after that (a layer that starts
/// non-finite, an exception from on_layer) takes this call's adapters off
/// again before it propagates. A step whose loss is NaN/Inf or above 1000x the
/// layer's starting MSE, or that leaves a non-finite parameter, is undone: the
/// last good parameters are restored, Adam restarts at half the step size,
/// and the event is counted in the layer's report.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_statistics.hpp>
#include <rimc/adapt/optim.hpp>
#include <rimc/core/error.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/kernels/mse.hpp>
#include <rimc/nn/network.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace rimc {

struct layer_calibration;

/// Called after each layer is calibrated: its report, its position among the targets (0-based) and their number.
using calibration_progress = std::function<void(const layer_calibration&, std::size_t index, std::size_t count)>;

/// Settings of a calibration run.
struct calibration_config {
  std::int64_t rank = 2;                ///< DoRA rank r (the default adapter)
  double alpha = 0;                     ///< DoRA lora_alpha; 0 means alpha = rank (s = 1)
  bool use_rslora = false;              ///< DoRA: s = alpha / sqrt(r)
  norm_mode norm = norm_mode::detached; ///< DoRA: gradient through the norms
  int steps = 100;                      ///< Adam steps per layer
  double lr = 1e-2;                     ///< Adam learning rate
  std::uint64_t seed = 0;               ///< seeds each adapter (mixed with the layer's index)
  bool magnitude_from_teacher = false;  ///< DoRA: init m from the teacher's (ideal) row norms, not the drifted ones
  /// DoRA: the kernels of each step on the direct path (low_rank_kernel; the statistics path
  /// runs none), for the default adapters (dora_factory::from); a caller's factory sets its own.
  low_rank_kernel training_kernel = low_rank_kernel::shift_add;
  std::vector<std::string> targets;     ///< layers to adapt; empty: every conv2d and linear node
  kd_loss_path loss_path = kd_loss_path::automatic;  ///< how each step's loss and gradients are computed
  /// automatic: no statistics path for a layer whose statistics need more bytes than this
  double statistics_max_bytes = 256.0 * 1024 * 1024;
  /// Reads of the frozen layer per calibration sample: its output is the mean
  /// of this many forwards. On a chip with read noise every forward reads
  /// differently; averaging R reads cuts the noise in what the adapter learns
  /// to correct by sqrt(R) (the chip's mean response is what a later read
  /// scatters around). Exact chips need 1 (more reads give the same output).
  int reads = 1;
  /// Before a layer is calibrated, widen its percentile ADC's ranges and a
  /// calibrated DAC's range to what its new input needs (what the calibrated
  /// layers before it produce on the calibration images; layer::calibrate_adc
  /// with range_update::widen, so the few calibration images never shrink a
  /// range): ranges set on the drifted, uncalibrated chip clip once the
  /// adapters restore the activations. A periphery setting, no RRAM write; it
  /// stays set if the call fails later.
  /// No effect on layers without such a periphery.
  bool recalibrate_adc = true;
  calibration_progress on_layer;        ///< optional progress callback

  /// Throws value_error naming the first invalid field.
  void validate() const {
    if (rank < 1) throw value_error(detail::concat("calibration_config: rank must be >= 1, got ", rank));
    if (steps < 0) throw value_error(detail::concat("calibration_config: steps must be >= 0, got ", steps));
    if (!(lr > 0) || !std::isfinite(lr)) throw value_error(detail::concat("calibration_config: lr must be positive, got ", lr));
    if (alpha < 0 || !std::isfinite(alpha)) throw value_error(detail::concat("calibration_config: alpha must be >= 0, got ", alpha));
    if (loss_path > kd_loss_path::direct) {
      throw value_error(detail::concat("calibration_config: loss_path must be automatic, statistics or direct, got ",
                                       static_cast<int>(loss_path)));
    }
    if (reads < 1) throw value_error(detail::concat("calibration_config: reads must be >= 1, got ", reads));
    if (!(statistics_max_bytes >= 0)) {
      throw value_error(detail::concat("calibration_config: statistics_max_bytes must be >= 0, got ", statistics_max_bytes));
    }
  }
};

/// What calibrating one layer did.
struct layer_calibration {
  /// The node's name.
  std::string name;
  /// Feature MSE to the teacher before and after.
  ///@{
  double mse_before = 0, mse_after = 0;  ///< feature MSE to the teacher before and after
  ///@}
  /// Adam steps taken.
  int steps = 0;
  int divergences = 0;  ///< steps whose loss was NaN/Inf or exploded: parameters restored, lr halved
  double lr = 0;        ///< the Adam step size at the end (the configured one halved at each divergence)
  kd_loss_path path = kd_loss_path::direct;  ///< how the steps were computed (statistics or direct)
  /// Wall time of this layer's calibration, s.
  double seconds = 0;
  /// The layer's adapter (fp32 SRAM).
  adapter_footprint footprint;
};

/// What a calibration run did, with adapters of type A.
template <adapter A>
struct basic_calibration_result {
  /// One report per target, in calibration order.
  std::vector<layer_calibration> layers;
  adapter_footprint footprint;     ///< all adapters together (fp32 SRAM)
  double seconds = 0;              ///< wall time of the whole calibration
  std::uint64_t rram_writes = 0;   ///< RRAM programming events during calibration (always 0)
  std::map<std::string, std::shared_ptr<adapted_layer<A>>> adapters;  ///< by node name, attached to the student
};

/// What a calibration run with DoRA adapters did.
using calibration_result = basic_calibration_result<dora_adapter>;

/// What an adapter factory is told about the layer it makes an adapter for.
struct adapter_request {
  const layer& base;          ///< the student's frozen layer (W0 as the chip applies it)
  const std::string& name;    ///< the node's name
  int index;                  ///< the node's index in the network
  std::uint64_t seed;         ///< the calibration seed mixed with the index
  const network& teacher;     ///< the teacher (e.g. to start from its weights)
};

/// Makes DoRA adapters from a calibration_config's DoRA settings.
struct dora_factory {
  /// DoRA rank r.
  std::int64_t rank = 2;
  double alpha = 0;  ///< 0: alpha = rank
  /// s = alpha / sqrt(r) instead of alpha / r.
  bool use_rslora = false;
  /// Gradient through the norms.
  norm_mode norm = norm_mode::detached;
  /// Init m from the teacher's (ideal) row norms, not the drifted ones.
  bool magnitude_from_teacher = false;
  /// The kernels the adapters' calibration steps run.
  low_rank_kernel training_kernel = low_rank_kernel::shift_add;

  /// The factory the config describes.
  [[nodiscard]] static dora_factory from(const calibration_config& cfg) {
    return {cfg.rank, cfg.alpha, cfg.use_rslora, cfg.norm, cfg.magnitude_from_teacher, cfg.training_kernel};
  }
  /// A DoRA adapter for `r.base`, seeded with `r.seed`.
  [[nodiscard]] dora_adapter operator()(const adapter_request& r) const {
    dora_config dc;
    dc.rank = rank;
    dc.alpha = alpha > 0 ? alpha : static_cast<double>(rank);
    dc.use_rslora = use_rslora;
    dc.norm = norm;
    dc.seed = r.seed;
    dora_adapter a(r.base, dc);
    a.set_training_kernel(training_kernel);
    if (magnitude_from_teacher) {
      a.init_magnitude_from(r.teacher.node(r.name).params.at("weight"));
      a.refresh(r.base);
    }
    return a;
  }
};

namespace detail {

/// The seed of the adapter of node `index`: the calibration seed mixed with the index.
[[nodiscard]] constexpr std::uint64_t adapter_seed(std::uint64_t seed, int index) noexcept {
  return seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(index + 1));
}

/// The calibration targets: `targets`, or every conv2d and linear node; each
/// must be one, without a fused ReLU, and not adapted yet.
[[nodiscard]] inline std::vector<std::string> calibration_targets(const network& net, std::vector<std::string> targets,
                                                                 const char* who) {
  if (targets.empty()) targets = net.layer_names();
  if (targets.empty()) throw value_error(concat(who, ": no conv2d or linear layer to calibrate"));
  check_listed_once(targets, who, "target");
  for (const auto& name : targets) {
    const network_node& n = net.node(name);
    if (!n.has_layer()) throw value_error(concat(who, ": target '", name, "' is not a conv2d or linear layer"));
    if (std::dynamic_pointer_cast<adapted_layer_base>(n.layer)) {
      throw value_error(concat(who, ": target '", name, "' has an adapter already (detach_adapters first)"));
    }
  }
  return targets;
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

/// Teacher and student must be the same network, batch norm folded alike
/// (a folded student against an unfolded teacher trains towards pre-BN features).
inline void check_teacher_student(const network& teacher, const network& student, const char* who) {
  if (teacher.size() != student.size()) {
    throw value_error(concat(who, ": the teacher has ", teacher.size(), " nodes, the student ", student.size()));
  }
  for (std::size_t i = 0; i < teacher.size(); ++i) {
    const auto& t = teacher.nodes()[i];
    const auto& s = student.nodes()[i];
    if (t.name != s.name || t.kind != s.kind) {
      throw value_error(concat(who, ": node ", i, " is '", t.name, "' (", to_string(t.kind), ") in the teacher and '",
                               s.name, "' (", to_string(s.kind), ") in the student"));
    }
    if (t.kind == op_kind::batch_norm && t.folded != s.folded) {
      throw value_error(concat(who, ": batch norm '", t.name, "' is ", t.folded ? "folded" : "not folded",
                               " in the teacher but ", s.folded ? "folded" : "not folded",
                               " in the student; fold both or neither"));
    }
  }
}

/// `out` (one read of `base` on x, nhwc when rank 4) becomes the mean of
/// `reads` reads: reads - 1 more forwards, summed in double.
inline void average_reads(const layer& base, const Tensor& x, int reads, Tensor& out) {
  std::vector<double> sum(out.data(), out.data() + out.numel());
  Tensor more;
  for (int r = 1; r < reads; ++r) {
    base.forward(x, more);
    if (more.rank() == 4 && more.memory_layout() != layout::nhwc) more = more.to_layout(layout::nhwc);
    for (std::int64_t i = 0; i < out.numel(); ++i) sum[static_cast<std::size_t>(i)] += more[i];
  }
  const double inv = 1.0 / reads;
  for (std::int64_t i = 0; i < out.numel(); ++i) out[i] = static_cast<float>(sum[static_cast<std::size_t>(i)] * inv);
}

/// A calibration step's forward and loss: mse(adapted output, target, grad),
/// keeping the backward's cache. For low-rank adapters, when the layer output
/// and the target are laid out alike, the combination is fused with the loss
/// block by block (y is never stored) and gives bitwise the loss and
/// gradient of forward() then mse(); otherwise it is forward() then mse(), into `y`.
template <adapter A>
double adapter_mse(const A& a, const layer& base, const Tensor& x, const Tensor& layer_out, const Tensor& target,
                   Tensor& y, Tensor* grad, typename A::cache_type& cache) {
  if constexpr (low_rank_adapter<A> && requires { a.forward_low_rank(base, x, layer_out, cache); }) {
    const bool flat = layer_out.rank() != 4 || layer_out.memory_layout() == layout::nhwc;
    if (flat && target.memory_layout() == layer_out.memory_layout() && target.shape() == layer_out.shape()) {
      a.forward_low_rank(base, x, layer_out, cache);
      const low_rank_form f = a.low_rank();
      const auto O = layer_out.dim(1), r = a.rank(), P = layer_out.numel() / O, n = P * O;
      const RowMatrixXf sbt = static_cast<float>(f.scale) * f.lora_B->matrix(O, r).transpose();  // as the combination forms it
      const Tensor* bias = base.bias();
      Eigen::VectorXf gamma = f.gamma ? *f.gamma : Eigen::VectorXf::Ones(O);
      const Eigen::VectorXf shift = f.gamma && bias ? Eigen::VectorXf(bias->vector()) : Eigen::VectorXf::Zero(O);
      const float* unbias = f.gamma && bias ? bias->data() : nullptr;
      if (grad) grad->ensure(layer_out.shape(), layer_out.memory_layout());
      const float *u = cache.u.data(), *zp = layer_out.data(), *tp = target.data();
      float* gp = grad ? grad->data() : nullptr;
      const auto blocks = (n + mse_block_size - 1) / mse_block_size;
      const auto nd = static_cast<double>(n);
      thread_local std::vector<double> part;
      part.assign(static_cast<std::size_t>(blocks), 0.0);
      double* pp = part.data();
      const isa_tier tier = active_isa();  // outside the parallel region (it may throw)
#pragma omp parallel for schedule(static) if (blocks > 4)
      for (std::int64_t b = 0; b < blocks; ++b) {
        thread_local std::vector<float> ybuf;
        const auto i0 = b * mse_block_size, i1 = std::min(n, i0 + mse_block_size), p0 = i0 / O, p1 = (i1 - 1) / O + 1;
        ybuf.resize(static_cast<std::size_t>((p1 - p0) * O));
        combine_rows_block(u, sbt.data(), zp, unbias, gamma.data(), shift.data(), r, O, p0, p1, ybuf.data(), false,
                           tier);
        pp[b] = mse_block(ybuf.data() + (i0 - p0 * O), tp + i0, gp ? gp + i0 : nullptr, i1 - i0, nd, tier);
      }
      double s = 0;
      for (double v : part) s += v;
      return s / nd;
    }
  }
  a.forward(base, x, layer_out, y, &cache);
  return mse(y, target, grad);
}

/// The loss path for a layer with P output positions (cfg.loss_path unless
/// automatic: then statistics when feature_statistics::cost is at most
/// feature_statistics::direct_cost on the active ISA tier and they fit in
/// cfg.statistics_max_bytes).
[[nodiscard]] inline kd_loss_path choose_loss_path(const calibration_config& cfg, std::int64_t K, std::int64_t O,
                                                   std::int64_t r, std::int64_t P) {
  if (cfg.loss_path != kd_loss_path::automatic) return cfg.loss_path;
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

/// Every target's adapter from `make`, made before anything is attached: a
/// target that cannot take one fails the whole call (the error names it).
template <class A, class Factory>
[[nodiscard]] std::vector<A> make_adapters(const network& teacher, const network& student,
                                           const std::vector<std::string>& targets, std::uint64_t seed, Factory& make,
                                           const char* who) {
  std::vector<A> made;
  made.reserve(targets.size());
  for (const auto& name : targets) {
    const int index = student.id(name);
    try {
      made.push_back(make(adapter_request{student.layer(name), name, index, adapter_seed(seed, index), teacher}));
    } catch (const error&) {
      rethrow_in(concat(who, ": layer '", name, "'"));
    }
  }
  return made;
}

/// Copies `from` into the adapter's parameters and refreshes it.
template <adapter A>
void restore_parameters(A& a, const layer& base, const std::vector<Tensor>& from) {
  const auto p = a.parameters();
  for (std::size_t k = 0; k < p.size(); ++k) *p[k] = from[k];
  a.refresh(base);
}

/// Copies of the adapter's parameters.
template <adapter A>
[[nodiscard]] std::vector<Tensor> copy_parameters(const A& a) {
  std::vector<Tensor> out;
  for (const Tensor* t : a.parameters()) out.push_back(*t);
  return out;
}

template <adapter A>
[[nodiscard]] bool parameters_finite(const A& a) {
  for (const Tensor* t : a.parameters())
    if (!all_finite(*t)) return false;
  return true;
}

}  // namespace detail

namespace detail {

/// The calibration of one adapter set shared by `students` (one student: the
/// ordinary calibration, bitwise): per layer, the loss is the mean of the
/// students' feature MSEs and the gradient the mean of their gradients; every
/// student gets a copy of the adapter (the same parameters on its own frozen
/// layer) attached before the next layer. The result's adapters are the
/// first student's.
template <class A, class Factory>
[[nodiscard]] basic_calibration_result<A> calibrate_feature_kd_shared(const network& teacher,
                                                                      std::span<network* const> students,
                                                                      const Tensor& images,
                                                                      const calibration_config& cfg, Factory& make,
                                                                      const char* who) {
  cfg.validate();
  if (students.empty()) throw value_error(concat(who, ": no student given"));
  for (std::size_t k = 0; k < students.size(); ++k) {
    if (students[k] == nullptr) throw value_error(concat(who, ": student ", k, " is null"));
    for (std::size_t j = 0; j < k; ++j)
      if (students[j] == students[k]) throw value_error(concat(who, ": students ", j, " and ", k, " are the same network"));
  }
  if (images.rank() < 2 || images.dim(0) < 1) {
    throw value_error(concat(who, ": need at least one calibration image, got ", images.shape().to_string()));
  }
  if (!all_finite(images)) throw value_error(concat(who, ": the calibration images are not finite"));
  const auto t_start = std::chrono::steady_clock::now();
  const std::size_t K = students.size();
  for (std::size_t k = 0; k < K; ++k) check_teacher_student(teacher, *students[k], who);
  const std::vector<std::string> targets = calibration_targets(*students[0], cfg.targets, who);
  for (std::size_t k = 1; k < K; ++k) {
    if (calibration_targets(*students[k], cfg.targets, who) != targets) {
      throw value_error(concat(who, ": student ", k, " has other calibration targets than student 0"));
    }
  }
  for (const auto& t : targets) {
    for (std::size_t k = 0; k < K; ++k) check_no_fused_relu(*students[k], t, "student");
    check_no_fused_relu(teacher, t, "teacher");
  }
  // Every adapter first: a target that cannot take one fails before anything is attached.
  std::vector<std::vector<A>> made;
  for (std::size_t k = 0; k < K; ++k)
    made.push_back(make_adapters<A>(teacher, *students[k], targets, cfg.seed, make, who));
  // The teacher's features for every target, once.
  std::map<std::string, Tensor> teacher_out;
  (void)teacher.forward(images, targets, teacher_out);
  for (const auto& t : targets) {
    if (!all_finite(teacher_out.at(t))) {
      throw value_error(concat(who, ": the teacher's output of layer '", t, "' is not finite"));
    }
  }
  std::uint64_t writes_before = 0;
  for (network* s : students) writes_before += s->rram_writes();

  basic_calibration_result<A> result;
  std::deque<attach_transaction> attached;  // a failure below takes this call's adapters off again
  std::deque<student_prefix> prefix;
  for (network* s : students) {
    attached.emplace_back(*s);
    prefix.emplace_back(*s, images, targets);
  }
  // What one student contributes to a layer's calibration.
  struct lane {
    std::shared_ptr<layer> base;
    Tensor x, layer_out;
    std::optional<feature_statistics> stats;
    std::vector<Tensor> g;
  };
  for (std::size_t li = 0; li < targets.size(); ++li) {
    const std::string& name = targets[li];
    const auto t0 = std::chrono::steady_clock::now();
    Tensor target = teacher_out.at(name);
    if (target.rank() == 4) target = target.to_layout(layout::nhwc);
    A& a = made[0][li];  // the parameters every student shares
    layer_calibration rep;
    rep.name = name;
    std::vector<lane> lanes(K);
    for (std::size_t k = 0; k < K; ++k) {
      lane& ln = lanes[k];
      // The calibrated-so-far student's input to this layer, and the frozen layer's output: both fixed here.
      ln.x = prefix[k].input_of(name);
      ln.base = students[k]->layer_ptr(name);
      if (cfg.recalibrate_adc) (void)ln.base->calibrate_adc(ln.x, range_update::widen);
      ln.base->forward(ln.x, ln.layer_out);
      if (ln.layer_out.rank() == 4) ln.layer_out = ln.layer_out.to_layout(layout::nhwc);
      if (cfg.reads > 1) average_reads(*ln.base, ln.x, cfg.reads, ln.layer_out);
      ln.g.resize(a.parameters().size());
    }
    const auto sync_copies = [&] {
      if (K == 1) return;
      const std::vector<Tensor> p = copy_parameters(a);
      for (std::size_t k = 1; k < K; ++k) restore_parameters(made[k][li], *lanes[k].base, p);
    };
    sync_copies();
    if constexpr (low_rank_adapter<A>) {
      rep.path = choose_loss_path(cfg, a.fan_in(), a.out_features(), a.rank(), lanes[0].layer_out.numel() / a.out_features());
      if (rep.path == kd_loss_path::statistics)
        for (lane& ln : lanes) ln.stats.emplace(*ln.base, ln.x, ln.layer_out, target);
    } else {
      rep.path = kd_loss_path::direct;
    }
    Tensor y, grad;
    typename A::cache_type cache{};
    // Student k's loss and, when wanted, its gradients into its lane.
    const auto evaluate_one = [&](std::size_t k, bool want_grad) {
      A& ak = made[k][li];
      lane& ln = lanes[k];
      const layer& base = *ln.base;
      if constexpr (low_rank_adapter<A>) {
        if (ln.stats) return ln.stats->evaluate(ak, base, want_grad ? std::span<Tensor>(ln.g) : std::span<Tensor>());
      }
      const double loss = adapter_mse(ak, base, ln.x, ln.layer_out, target, y, want_grad ? &grad : nullptr, cache);
      if (want_grad && std::isfinite(loss)) ak.backward(base, cache, grad, std::span<Tensor>(ln.g), nullptr);
      return loss;
    };
    // This step's loss (the students' mean) and, when wanted, the mean gradients into lanes[0].g.
    const auto evaluate = [&](bool want_grad) {
      if (K == 1) return evaluate_one(0, want_grad);
      double loss = 0;
      for (std::size_t k = 0; k < K; ++k) loss += evaluate_one(k, want_grad);
      if (want_grad) {
        const float inv = 1.0f / static_cast<float>(K);
        for (std::size_t j = 0; j < lanes[0].g.size(); ++j) {
          Tensor& g0 = lanes[0].g[j];
          for (std::int64_t i = 0; i < g0.numel(); ++i) {
            double sum = 0;
            for (std::size_t k = 0; k < K; ++k) sum += lanes[k].g[j][i];
            g0[i] = static_cast<float>(sum) * inv;
          }
        }
      }
      return loss / static_cast<double>(K);
    };
    adam opt(cfg.lr);
    double last_good = 0;
    std::vector<Tensor> good = copy_parameters(a);
    for (int step = 0; step <= cfg.steps; ++step) {
      const double loss = evaluate(step < cfg.steps);
      if (step == 0) {
        if (!std::isfinite(loss)) {
          throw value_error(concat(who, ": layer '", name, "' starts with feature MSE ", loss,
                                   ": its input or the teacher's output is not finite"));
        }
        rep.mse_before = loss;
        last_good = loss;
      }
      // Divergence guard: restore the last good parameters and halve the step size.
      if (!std::isfinite(loss) || loss > 1e3 * std::max(rep.mse_before, 1e-30) || !parameters_finite(a)) {
        ++rep.divergences;
        restore_parameters(a, *lanes[0].base, good);
        sync_copies();
        opt = adam(opt.lr() * 0.5);
        continue;
      }
      if (loss <= last_good) {
        last_good = loss;
        good = copy_parameters(a);
      }
      if (step == cfg.steps) break;
      const auto p = a.parameters();
      std::vector<param_slot> slots;
      for (std::size_t k = 0; k < p.size(); ++k) slots.push_back({p[k], &lanes[0].g[k]});
      opt.step(slots);
      a.refresh(*lanes[0].base);
      sync_copies();
      ++rep.steps;
    }
    // Keep the best parameters seen (never worse than the start).
    restore_parameters(a, *lanes[0].base, good);
    sync_copies();
    rep.mse_after = evaluate(false);
    rep.lr = opt.lr();
    rep.footprint = a.footprint(*lanes[0].base, sram_precision::fp32);
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.footprint += rep.footprint;
    result.layers.push_back(rep);
    for (std::size_t k = K; k-- > 0;) {
      auto l = attached[k].attach(name, std::move(made[k][li]));
      if (k == 0) result.adapters[name] = std::move(l);
      prefix[k].changed(name);
    }
    if (cfg.on_layer) cfg.on_layer(rep, li, targets.size());
  }
  for (auto& t : attached) t.commit();
  result.rram_writes = 0;
  for (network* s : students) result.rram_writes += s->rram_writes();
  result.rram_writes -= writes_before;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return result;
}

}  // namespace detail

/// Calibrates `student` against `teacher` on `images` (see the file comment)
/// with the adapters `make(adapter_request)` returns; they stay attached to
/// the student and are returned.
template <class Factory>
  requires adapter<std::invoke_result_t<Factory&, const adapter_request&>>
[[nodiscard]] auto calibrate_feature_kd(const network& teacher, network& student, const Tensor& images,
                                        const calibration_config& cfg, Factory&& make) {
  using A = std::invoke_result_t<Factory&, const adapter_request&>;
  network* const one[] = {&student};
  return detail::calibrate_feature_kd_shared<A>(teacher, std::span<network* const>(one), images, cfg, make,
                                                "calibrate_feature_kd");
}

/// Calibrates ONE adapter set for several students at once: the simulated
/// chips of an offline (drift-aware) calibration, each a realisation of the
/// same drift. Per layer the loss is the mean of the students' feature MSEs
/// (each student's input comes from its own calibrated-so-far prefix) and
/// the gradient the mean of theirs; every student ends with a copy of the
/// adapters attached (the same parameters on its own frozen weights). The
/// result's adapters are the first student's; tensors() of each gives the
/// set to load onto a chip that was never seen.
template <class Factory>
  requires adapter<std::invoke_result_t<Factory&, const adapter_request&>>
[[nodiscard]] auto calibrate_feature_kd_ensemble(const network& teacher, std::span<network* const> students,
                                                 const Tensor& images, const calibration_config& cfg, Factory&& make) {
  using A = std::invoke_result_t<Factory&, const adapter_request&>;
  return detail::calibrate_feature_kd_shared<A>(teacher, students, images, cfg, make, "calibrate_feature_kd_ensemble");
}

/// Calibrates with DoRA adapters made from `cfg`'s DoRA settings (rank, alpha,
/// rsLoRA, norm mode, magnitude from the teacher).
[[nodiscard]] inline calibration_result calibrate_feature_kd(const network& teacher, network& student,
                                                             const Tensor& images, const calibration_config& cfg) {
  cfg.validate();
  return calibrate_feature_kd(teacher, student, images, cfg, dora_factory::from(cfg));
}

}  // namespace rimc
