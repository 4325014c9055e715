#pragma once
/// \file
/// rimc::vera_adapter: VeRA (Kopiczko et al., ICLR 2024, as Hugging Face
/// PEFT's VeraModel) on a frozen linear or conv2d layer, and its drift-level
/// form VeRA+ (one pair of vectors per drift level), through the adapter
/// concept (docs/formulas.md, sec. 2):
///
///   y = W0 x + bias + Λ_b B Λ_d A x,   Λ = diag(λ),
///
/// A [r, K_max] and B [O_max, r] frozen and random, shared by every adapted
/// layer of a network (vera_projections, stored once); a layer of fan-in K and
/// O outputs uses their top-left blocks A[:, :K] and B[:O, :], as PEFT slices
/// them. Trained per layer: λ_d [r] and λ_b [O], PEFT's init λ_b = 0 (the
/// layer's output is unchanged at first) and λ_d = d_initial. With L levels
/// the adapter holds L pairs and uses the selected one (select()); plain VeRA
/// is L = 1. Gradients, with G = dL/dy [P, O] and u = A x [P, r]:
///
///   dL/dλ_b[o] = Σ_j (Gᵀu)[o, j] B[o, j] λ_d[j],
///   dL/dλ_d[j] = Σ_o (Gᵀu)[o, j] λ_b[o] B[o, j],
///   dL/dx      = G W0 + (G Λ_b B Λ_d) A.

#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/random.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/nn/layer.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// VeRA's frozen random projections, shared by the adapters of one network:
/// A [r, max_in] and B [max_out, r], Kaiming-uniform as PEFT draws them
/// (bounds 1/sqrt(max_in) and 1/sqrt(r)), from a seed. Immutable once made;
/// adapters hold them through a shared_ptr.
class vera_projections {
 public:
  /// Projections of rank `rank` for layers with fan-in up to `max_in` and up to `max_out` outputs.
  vera_projections(std::int64_t rank, std::int64_t max_in, std::int64_t max_out, std::uint64_t seed)
      : rank_(rank), max_in_(max_in), max_out_(max_out), seed_(seed) {
    if (rank < 1 || rank > dora_config::max_rank) {
      throw value_error(detail::concat("vera_projections: rank must be in [1, ", dora_config::max_rank, "], got ", rank));
    }
    if (max_in < 1 || max_out < 1) {
      throw value_error(detail::concat("vera_projections: max_in and max_out must be positive, got max_in = ", max_in,
                                       ", max_out = ", max_out));
    }
    a_ = Tensor(Shape{rank, max_in});
    b_ = Tensor(Shape{max_out, rank});
    const auto bound_a = static_cast<float>(1.0 / std::sqrt(static_cast<double>(max_in)));
    const auto bound_b = static_cast<float>(1.0 / std::sqrt(static_cast<double>(rank)));
    fill_uniform(a_, counter_rng(seed, 0x76657261 /* "vera" */), -bound_a, bound_a);
    fill_uniform(b_, counter_rng(seed, 0x76657262), -bound_b, bound_b);
  }
  /// Projections loaded from tensors (shapes [r, max_in] and [max_out, r], finite); seed 0.
  vera_projections(Tensor a, Tensor b) : seed_(0) {
    if (a.rank() != 2 || b.rank() != 2 || a.dim(0) != b.dim(1) || a.dim(0) < 1 || a.dim(0) > dora_config::max_rank) {
      throw shape_error(detail::concat("vera_projections: vera_A must be [r, max_in] and vera_B [max_out, r] with r in [1, ",
                                       dora_config::max_rank, "], got ", a.shape().to_string(), " and ",
                                       b.shape().to_string()));
    }
    check_finite("vera_projections: vera_A", a);
    check_finite("vera_projections: vera_B", b);
    rank_ = a.dim(0);
    max_in_ = a.dim(1);
    max_out_ = b.dim(0);
    a_ = a.to_layout(layout::nchw);
    b_ = b.to_layout(layout::nchw);
  }

  /// r.
  [[nodiscard]] std::int64_t rank() const noexcept { return rank_; }
  /// The largest fan-in K the projections serve.
  [[nodiscard]] std::int64_t max_in() const noexcept { return max_in_; }
  /// The largest output count O the projections serve.
  [[nodiscard]] std::int64_t max_out() const noexcept { return max_out_; }
  /// The seed they were drawn from (0 when loaded).
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  /// vera_A [r, max_in].
  [[nodiscard]] const Tensor& A() const noexcept { return a_; }
  /// vera_B [max_out, r].
  [[nodiscard]] const Tensor& B() const noexcept { return b_; }

  /// Values and SRAM bytes of both matrices, counted once per network (fp32,
  /// fp16, or int8 with one fp16 scale per row).
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    const auto values = rank_ * max_in_ + max_out_ * rank_;
    const auto v = static_cast<std::size_t>(values);
    std::size_t bytes = 0;
    switch (precision) {
      case sram_precision::fp32: bytes = 4 * v; break;
      case sram_precision::fp16: bytes = 2 * v; break;
      case sram_precision::int8: bytes = v + 2 * static_cast<std::size_t>(rank_ + max_out_); break;
    }
    return {values, 0, bytes};
  }
  /// The matrices by PEFT file name: vera_A, vera_B.
  [[nodiscard]] named_tensors tensors() const { return {{"vera_A", a_}, {"vera_B", b_}}; }

 private:
  std::int64_t rank_ = 0, max_in_ = 0, max_out_ = 0;
  std::uint64_t seed_ = 0;
  Tensor a_, b_;
};

/// Settings of one VeRA adapter.
struct vera_config {
  /// The shared projections (required); their rank is the adapter's.
  std::shared_ptr<const vera_projections> projections;
  /// Parameter sets (drift levels); 1 is plain VeRA.
  int levels = 1;
  /// λ_d's initial value (PEFT's d_initial).
  double d_initial = 0.1;
};

/// A VeRA adapter on a frozen linear or conv2d layer (see the file comment).
class vera_adapter {
 public:
  /// What forward keeps for backward: A x and references to x and the layer's output.
  using cache_type = low_rank_cache;
  /// The adapter's name in files and reports.
  static constexpr std::string_view kind = "vera";
  /// Largest number of levels.
  static constexpr int max_levels = 64;

  /// An adapter for `base` with every level at PEFT's init (λ_b = 0, λ_d = d_initial), level 0 selected.
  vera_adapter(const layer& base, vera_config cfg) : geo_(base, "vera_adapter"), cfg_(std::move(cfg)) {
    if (!cfg_.projections) throw value_error("vera_config: projections must be set");
    const vera_projections& p = *cfg_.projections;
    if (geo_.K > p.max_in() || geo_.O > p.max_out()) {
      throw value_error(detail::concat("vera_adapter: the layer needs K = ", geo_.K, " and O = ", geo_.O,
                                       ", the projections serve max_in = ", p.max_in(), " and max_out = ", p.max_out()));
    }
    if (cfg_.levels < 1 || cfg_.levels > max_levels) {
      throw value_error(detail::concat("vera_config: levels must be in [1, ", max_levels, "], got ", cfg_.levels));
    }
    if (!std::isfinite(cfg_.d_initial)) {
      throw value_error(detail::concat("vera_config: d_initial must be finite, got ", cfg_.d_initial));
    }
    const auto r = p.rank();
    a_ = geo_.conv ? Tensor(Shape{r, geo_.weight_shape[1], geo_.weight_shape[2], geo_.weight_shape[3]})
                   : Tensor(Shape{r, geo_.K});
    a_.matrix(r, geo_.K) = p.A().matrix(r, p.max_in()).leftCols(geo_.K);
    b_slice_ = p.B().matrix(p.max_out(), r).topRows(geo_.O);
    for (int l = 0; l < cfg_.levels; ++l) {
      Tensor d(Shape{r}), b(Shape{geo_.O});
      d.vector().setConstant(static_cast<float>(cfg_.d_initial));
      lambda_d_.push_back(std::move(d));
      lambda_b_.push_back(std::move(b));
    }
    b_eff_ = geo_.conv ? Tensor(Shape{geo_.O, r, 1, 1}) : Tensor(Shape{geo_.O, r});
    kernels_ = detail::low_rank_kernels(geo_.conv, a_, geo_.params);
    update_b_eff();
  }

  /// Movable (the moved-from adapter may only be assigned to or destroyed); not copyable.
  ///@{
  vera_adapter(vera_adapter&&) noexcept = default;
  vera_adapter& operator=(vera_adapter&&) noexcept = default;
  ///@}

  /// Whether the base layer is a conv2d (else a linear layer).
  [[nodiscard]] bool is_conv() const noexcept { return geo_.conv; }
  /// O, the base layer's output channels or features.
  [[nodiscard]] std::int64_t out_features() const noexcept { return geo_.O; }
  /// K: C kh kw for a conv2d, in_features for a linear layer.
  [[nodiscard]] std::int64_t fan_in() const noexcept { return geo_.K; }
  /// The rank r of the projections.
  [[nodiscard]] std::int64_t rank() const noexcept { return a_.dim(0); }
  /// Which kernels a calibration step runs (low_rank_kernel; shift_add unless set).
  [[nodiscard]] low_rank_kernel training_kernel() const noexcept { return kernels_.training_kernel(); }
  /// Sets training_kernel(); the parameters and inference are unaffected.
  void set_training_kernel(low_rank_kernel k) noexcept { kernels_.set_training_kernel(k); }
  /// The settings it was made with.
  [[nodiscard]] const vera_config& config() const noexcept { return cfg_; }
  /// The shape of the weights the adapter was made for.
  [[nodiscard]] const Shape& base_weight_shape() const noexcept { return geo_.weight_shape; }

  /// The number of parameter sets.
  [[nodiscard]] int levels() const noexcept { return cfg_.levels; }
  /// The set in use.
  [[nodiscard]] int level() const noexcept { return level_; }
  /// Uses set `l` from now on (forward, backward and parameters()).
  void select(int l) {
    if (l < 0 || l >= cfg_.levels) {
      throw value_error(detail::concat("vera_adapter::select: level must be in [0, ", cfg_.levels, "), got ", l));
    }
    level_ = l;
    update_b_eff();
  }

  /// λ_d [r] of set `l`.
  [[nodiscard]] const Tensor& lambda_d(int l) const { return lambda_d_.at(static_cast<std::size_t>(l)); }
  /// λ_b [O] of set `l`.
  [[nodiscard]] const Tensor& lambda_b(int l) const { return lambda_b_.at(static_cast<std::size_t>(l)); }
  /// The layer's slice of A: [r, K] (linear) or [r, C, kh, kw] (conv).
  [[nodiscard]] const Tensor& projection_A() const noexcept { return a_; }
  /// Λ_b B[:O] Λ_d of the selected set: [O, r] (linear) or [O, r, 1, 1] (conv).
  [[nodiscard]] const Tensor& effective_B() const noexcept { return b_eff_; }

  /// Replaces set `l`'s vectors (shapes and finiteness checked); nothing changes on error.
  void set_parameters(int l, Tensor d, Tensor b) {
    if (l < 0 || l >= cfg_.levels) {
      throw value_error(detail::concat("vera_adapter::set_parameters: level must be in [0, ", cfg_.levels, "), got ", l));
    }
    detail::check_parameter("vera_adapter::set_parameters: lambda_d", d, Shape{rank()});
    detail::check_parameter("vera_adapter::set_parameters: lambda_b", b, Shape{geo_.O});
    lambda_d_[static_cast<std::size_t>(l)] = std::move(d);
    lambda_b_[static_cast<std::size_t>(l)] = std::move(b);
    if (l == level_) update_b_eff();
  }

  /// The selected set's λ_d and λ_b, for an optimizer to update in place; call refresh(base) afterwards.
  [[nodiscard]] std::vector<Tensor*> parameters() { return {&lambda_d_[sel()], &lambda_b_[sel()]}; }
  /// The selected set's λ_d and λ_b.
  [[nodiscard]] std::vector<const Tensor*> parameters() const { return {&lambda_d_[sel()], &lambda_b_[sel()]}; }

  /// Recomputes Λ_b B Λ_d after the vectors changed (VeRA derives nothing from W0).
  void refresh(const layer& base) {
    geo_.check(base, "vera_adapter::refresh");
    update_b_eff();
  }

  /// y = layer_out + Λ_b B Λ_d (A x), layer_out = W0 x + bias from the frozen
  /// layer (channels-last for conv). With `cache`, keeps what backward needs.
  void forward(const layer& base, const Tensor& x, const Tensor& layer_out, Tensor& y,
               low_rank_cache* cache = nullptr) const {
    check_io(base, x, layer_out);
    detail::additive_low_rank_forward(kernels_, b_eff_.matrix(geo_.O, rank()), 1.0f, x, layer_out, y, cache, "vera_adapter");
  }

  /// Inference in the storage of the layer's output (then ReLU with `relu`), bitwise forward()'s.
  void forward_in_place(const layer& base, const Tensor& x, Tensor& out, bool relu) const {
    check_io(base, x, out);
    detail::additive_low_rank_in_place(kernels_, b_eff_.matrix(geo_.O, rank()), 1.0f, x, out, relu);
  }

  /// grads = {dL/dλ_d, dL/dλ_b} of the selected set for dL/dy and the forward
  /// that filled `cache`; with `diff_x`, also dL/dx (see the file comment).
  void backward(const layer& base, const low_rank_cache& cache, const Tensor& diff_y, std::span<Tensor> grads,
                Tensor* diff_x = nullptr) const {
    if (!cache.src || !cache.layer_out) throw value_error("vera_adapter::backward: the cache holds no forward pass");
    if (grads.size() != 2) {
      throw value_error(
          detail::concat("vera_adapter::backward: 2 gradient tensors needed (lambda_d, lambda_b), got ", grads.size()));
    }
    geo_.check(base, "vera_adapter::backward");
    check_same_shape("vera_adapter::backward: diff_y", diff_y.shape(), cache.layer_out->shape());
    const auto r = rank(), O = geo_.O;
    const Eigen::Index P = cache.layer_out->numel() / O;
    thread_local Tensor gy_scratch;
    const Tensor& gy = geo_.conv ? detail::as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
    RowMatrixXf gtu(O, r);  // G^T u
    detail::gemm({.M = O, .N = r, .K = P, .ta = true}, gy.data(), cache.u.data(), gtu.data());
    const auto& d = lambda_d_[sel()].vector();
    const auto& b = lambda_b_[sel()].vector();
    // dB_eff = G^T u; B_eff[o, j] = λ_b[o] B[o, j] λ_d[j]: sums in double, in a fixed order.
    Eigen::VectorXd dd = Eigen::VectorXd::Zero(r), db = Eigen::VectorXd::Zero(O);
    for (Eigen::Index o = 0; o < O; ++o) {
      for (Eigen::Index j = 0; j < r; ++j) {
        const double t = static_cast<double>(gtu(o, j)) * static_cast<double>(b_slice_(o, j));
        db[o] += t * static_cast<double>(d[j]);
        dd[j] += t * static_cast<double>(b[o]);
      }
    }
    Tensor& dD = grads[0];
    dD.ensure(Shape{r});
    dD.vector() = dd.cast<float>();
    Tensor& dBl = grads[1];
    dBl.ensure(Shape{O});
    dBl.vector() = db.cast<float>();
    if (diff_x) {
      thread_local Tensor du;  // G B_eff
      du.ensure(cache.u.shape(), cache.u.memory_layout());
      detail::gemm({.M = P, .N = r, .K = O}, gy.data(), b_eff_.data(), du.data());
      Tensor dx_low;
      kernels_.backward_data(du, cache.src->shape(), dx_low);
      base.backward_data(gy, cache.src->shape(), *diff_x);
      add(*diff_x, dx_low, *diff_x);
    }
  }

  /// dL/dx alone for dL/dy: G W0 + (G Λ_b B Λ_d) A.
  void backward_data(const layer& base, const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x) const {
    detail::low_rank_input_gradient(geo_, kernels_, base, b_eff_, rank(), 1.0f, nullptr, diff_y, x_shape, diff_x,
                                    "vera_adapter::backward_data");
  }

  /// W' = W0 + Λ_b B Λ_d A with the selected set.
  [[nodiscard]] Tensor merged_weights(const layer& base) const {
    geo_.check(base, "vera_adapter::merged_weights");
    return detail::low_rank_merge(base.effective_weights(), a_, b_eff_, nullptr, 1.0f);
  }

  /// The adapter's own values: levels (r + O); the shared projections are
  /// counted once per network (vera_projections::footprint).
  [[nodiscard]] std::int64_t parameter_count() const noexcept { return cfg_.levels * (rank() + geo_.O); }
  /// Parameters, SRAM bytes of all levels' vectors (int8: one fp16 scale per
  /// vector) and share of the base layer's weights.
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    const auto v = static_cast<std::size_t>(parameter_count()), L = static_cast<std::size_t>(cfg_.levels);
    std::size_t bytes = 0;
    switch (precision) {
      case sram_precision::fp32: bytes = 4 * v; break;
      case sram_precision::fp16: bytes = 2 * v; break;
      case sram_precision::int8: bytes = v + 2 * 2 * L; break;
    }
    return {parameter_count(), geo_.O * geo_.K, bytes};
  }
  /// The same (the concept's form).
  [[nodiscard]] adapter_footprint footprint(const layer& /*base*/, sram_precision precision) const noexcept {
    return footprint(precision);
  }

  /// The vectors by file name: PEFT's vera_lambda_d and vera_lambda_b for one
  /// level; `levels.L.vera_lambda_d` and `levels.L.vera_lambda_b` (L = 0, 1, ...)
  /// for several.
  [[nodiscard]] named_tensors tensors() const {
    named_tensors t;
    for (int l = 0; l < cfg_.levels; ++l) {
      t.emplace_back(key(l, "vera_lambda_d"), lambda_d_[static_cast<std::size_t>(l)]);
      t.emplace_back(key(l, "vera_lambda_b"), lambda_b_[static_cast<std::size_t>(l)]);
    }
    return t;
  }
  /// Replaces every level's vectors from tensors named as tensors() names them (nothing changes on error).
  void load(const layer& base, const std::map<std::string, Tensor>& files) {
    geo_.check(base, "vera_adapter::load");
    std::vector<Tensor> d, b;
    for (int l = 0; l < cfg_.levels; ++l) {
      d.push_back(detail::take_tensor(files, key(l, "vera_lambda_d"), Shape{rank()}, "vera_adapter::load"));
      b.push_back(detail::take_tensor(files, key(l, "vera_lambda_b"), Shape{geo_.O}, "vera_adapter::load"));
    }
    lambda_d_ = std::move(d);
    lambda_b_ = std::move(b);
    update_b_eff();
  }

 private:
  [[nodiscard]] std::size_t sel() const noexcept { return static_cast<std::size_t>(level_); }
  [[nodiscard]] std::string key(int l, std::string_view name) const {
    return cfg_.levels == 1 ? std::string(name) : detail::concat("levels.", l, ".", name);
  }
  void check_io(const layer& base, const Tensor& x, const Tensor& layer_out) const {
    detail::check_low_rank_io(geo_, base, x, layer_out, "vera_adapter");
  }
  void update_b_eff() {
    const auto r = rank();
    b_eff_.matrix(geo_.O, r) =
        lambda_b_[sel()].vector().asDiagonal() * b_slice_ * lambda_d_[sel()].vector().asDiagonal();
  }

  detail::base_geometry geo_;
  vera_config cfg_;
  int level_ = 0;
  Tensor a_;                           // A[:, :K], in the layer's weight layout
  RowMatrixXf b_slice_;                // B[:O, :]
  std::vector<Tensor> lambda_d_, lambda_b_;
  Tensor b_eff_;                       // Λ_b B Λ_d of the selected set
  detail::low_rank_kernels kernels_;
};

static_assert(adapter<vera_adapter>);
static_assert(in_place_adapter<vera_adapter>);

}  // namespace rimc
