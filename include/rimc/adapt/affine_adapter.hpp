#pragma once
/// \file
/// rimc::affine_adapter and BN-statistics recalibration: the baseline that
/// re-estimates batch-norm statistics on the drifted chip (the "BN-based
/// calibration" of the VeRA+ paper and of AdaBN-style test-time adaptation;
/// docs/formulas.md, sec. 2). A per-output-channel affine map after the
/// frozen layer,
///
///   y[., o] = scale[o] layer_out[., o] + shift[o],
///
/// kept in SRAM (2 O values per layer). recalibrate_batch_norm() fits it in
/// closed form, layer by layer in forward order on the already-recalibrated
/// student, so that each channel's mean and variance over N field samples
/// (all positions) match the teacher's: scale = sqrt(var_t / var_s),
/// shift = mean_t - scale mean_s. The affine adapter is an ordinary adapter
/// (hand-written backward for scale, shift and the input), so it can also be
/// trained by feature KD or backprop, attached, saved and loaded like the others.

#include <rimc/adapt/adapted_layer.hpp>
#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/adapt/feature_kd.hpp>
#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/nn/layer.hpp>
#include <rimc/nn/network.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rimc {

/// What affine_adapter::forward keeps for backward: references to x and the layer's output.
struct affine_cache {
  const Tensor* src = nullptr;        ///< the layer's input
  const Tensor* layer_out = nullptr;  ///< the frozen layer's output (channels-last for a conv)
};

/// A per-output-channel affine map after a frozen linear or conv2d layer (see the file comment).
class affine_adapter {
 public:
  /// What forward keeps for backward.
  using cache_type = affine_cache;
  /// The adapter's name in files and reports.
  static constexpr std::string_view kind = "affine";

  /// The identity map (scale 1, shift 0) for `base`.
  explicit affine_adapter(const layer& base) : geo_(base, "affine_adapter") {
    scale_ = Tensor(Shape{geo_.O});
    scale_.fill(1.0f);
    shift_ = Tensor(Shape{geo_.O});
  }

  /// O, the base layer's output channels or features.
  [[nodiscard]] std::int64_t out_features() const noexcept { return geo_.O; }
  /// The per-channel scale [O].
  [[nodiscard]] const Tensor& scale() const noexcept { return scale_; }
  /// The per-channel shift [O].
  [[nodiscard]] const Tensor& shift() const noexcept { return shift_; }

  /// Replaces scale and shift (shapes and finiteness checked; nothing changes on error).
  void set_parameters(const layer& base, Tensor scale, Tensor shift) {
    detail::check_parameter("affine_adapter::set_parameters: scale", scale, scale_.shape());
    detail::check_parameter("affine_adapter::set_parameters: shift", shift, shift_.shape());
    geo_.check(base, "affine_adapter::set_parameters");
    scale_ = std::move(scale);
    shift_ = std::move(shift);
  }

  /// Scale and shift, for an optimizer to update in place.
  [[nodiscard]] std::vector<Tensor*> parameters() { return {&scale_, &shift_}; }
  /// Scale and shift.
  [[nodiscard]] std::vector<const Tensor*> parameters() const { return {&scale_, &shift_}; }
  /// Checks the layer still has the weights' shape (nothing is derived from W0).
  void refresh(const layer& base) const { geo_.check(base, "affine_adapter::refresh"); }

  /// y = scale ⊙ layer_out + shift per channel (channels-last for a conv).
  void forward(const layer& base, const Tensor& x, const Tensor& layer_out, Tensor& y,
               affine_cache* cache = nullptr) const {
    detail::check_low_rank_io(geo_, base, x, layer_out, "affine_adapter");
    if (&y == &x || &y == &layer_out) throw value_error("affine_adapter::forward: y must not alias x or layer_out");
    thread_local Tensor z_scratch;
    const Tensor& z = geo_.conv ? detail::as_layout(layer_out, layout::nhwc, z_scratch) : layer_out;
    y.ensure(layer_out.shape(), geo_.conv ? layout::nhwc : layout::nchw);
    apply(z.data(), y.data(), z.numel() / geo_.O, false);
    if (cache) {
      cache->src = &x;
      cache->layer_out = &layer_out;
    }
  }

  /// The same in the storage of the layer's output (then ReLU with `relu`), bitwise forward()'s.
  void forward_in_place(const layer& base, const Tensor& x, Tensor& out, bool relu) const {
    detail::check_low_rank_io(geo_, base, x, out, "affine_adapter");
    if (out.rank() == 4 && out.memory_layout() != layout::nhwc) out = out.to_layout(layout::nhwc);
    apply(out.data(), out.data(), out.numel() / geo_.O, relu);
  }

  /// grads = {dL/dscale, dL/dshift} (sums in double over fixed blocks of rows);
  /// with `diff_x`, dL/dx = (scale ⊙ dL/dy) W0 through the base layer's backward-data.
  void backward(const layer& base, const affine_cache& cache, const Tensor& diff_y, std::span<Tensor> grads,
                Tensor* diff_x = nullptr) const {
    if (!cache.src || !cache.layer_out) throw value_error("affine_adapter::backward: the cache holds no forward pass");
    if (grads.size() != 2) {
      throw value_error(detail::concat("affine_adapter::backward: 2 gradient tensors needed (scale, shift), got ",
                                       grads.size()));
    }
    geo_.check(base, "affine_adapter::backward");
    check_same_shape("affine_adapter::backward: diff_y", diff_y.shape(), cache.layer_out->shape());
    const auto O = geo_.O;
    const Eigen::Index P = diff_y.numel() / O;
    thread_local Tensor gy_scratch, z_scratch;
    const Tensor& gy = geo_.conv ? detail::as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
    const Tensor& z = geo_.conv ? detail::as_layout(*cache.layer_out, layout::nhwc, z_scratch) : *cache.layer_out;
    const Eigen::VectorXd dscale = detail::column_dots(gy.data(), z.data(), nullptr, P, O);
    thread_local Tensor ones;
    if (ones.numel() != P * O) {
      ones.ensure(Shape{P, O});
      ones.fill(1.0f);
    }
    const Eigen::VectorXd dshift = detail::column_dots(gy.data(), ones.data(), nullptr, P, O);
    grads[0].ensure(scale_.shape());
    grads[1].ensure(shift_.shape());
    for (std::int64_t o = 0; o < O; ++o) {
      grads[0][o] = static_cast<float>(dscale[o]);
      grads[1][o] = static_cast<float>(dshift[o]);
    }
    if (diff_x) backward_data(base, diff_y, cache.src->shape(), *diff_x);
  }

  /// dL/dx alone: (scale ⊙ dL/dy) W0.
  void backward_data(const layer& base, const Tensor& diff_y, const Shape& x_shape, Tensor& diff_x) const {
    geo_.check(base, "affine_adapter::backward_data");
    check_same_shape("affine_adapter::backward_data: diff_y", diff_y.shape(), geo_.output_shape(x_shape));
    const auto O = geo_.O;
    const Eigen::Index P = diff_y.numel() / O;
    thread_local Tensor gy_scratch;
    const Tensor& gy = geo_.conv ? detail::as_layout(diff_y, layout::nhwc, gy_scratch) : diff_y;
    Tensor gh;
    gh.ensure(diff_y.shape(), geo_.conv ? layout::nhwc : layout::nchw);
    gh.matrix(P, O).noalias() = gy.matrix(P, O) * scale_.vector().asDiagonal();
    base.backward_data(gh, x_shape, diff_x);
  }

  /// Adapter values: 2 O.
  [[nodiscard]] std::int64_t parameter_count() const noexcept { return 2 * geo_.O; }
  /// Values, SRAM bytes (two vectors of O: fp32 4 bytes each, fp16 and int8 in fp16) and share of the weights.
  [[nodiscard]] adapter_footprint footprint(sram_precision precision = sram_precision::fp32) const noexcept {
    const auto bytes = static_cast<std::size_t>(parameter_count()) * (precision == sram_precision::fp32 ? 4u : 2u);
    return {parameter_count(), geo_.O * geo_.K, bytes};
  }
  /// The same (the concept's form).
  [[nodiscard]] adapter_footprint footprint(const layer& /*base*/, sram_precision precision) const noexcept {
    return footprint(precision);
  }

  /// The parameters by file name: affine_scale, affine_shift.
  [[nodiscard]] named_tensors tensors() const { return {{"affine_scale", scale_}, {"affine_shift", shift_}}; }
  /// Replaces the parameters from tensors named as tensors() names them (nothing changes on error).
  void load(const layer& base, const std::map<std::string, Tensor>& files) {
    Tensor s = detail::take_tensor(files, "affine_scale", scale_.shape(), "affine_adapter::load");
    Tensor b = detail::take_tensor(files, "affine_shift", shift_.shape(), "affine_adapter::load");
    set_parameters(base, std::move(s), std::move(b));
  }

 private:
  /// dst[p, o] = scale[o] src[p, o] + shift[o] (then ReLU), P rows of O; dst may be src.
  void apply(const float* src, float* dst, Eigen::Index P, bool relu) const {
    const Eigen::Index O = geo_.O;
    const float* s = scale_.data();
    const float* b = shift_.data();
#pragma omp parallel for schedule(static) if (P * O > 32768)
    for (Eigen::Index p = 0; p < P; ++p) {
      const float* in = src + p * O;
      float* out = dst + p * O;
      for (Eigen::Index o = 0; o < O; ++o) {
        const float v = s[o] * in[o] + b[o];
        out[o] = relu && v < 0 ? 0.0f : v;
      }
    }
  }

  detail::base_geometry geo_;
  Tensor scale_, shift_;
};

static_assert(in_place_adapter<affine_adapter>);

/// What recalibrate_batch_norm did.
using batch_norm_recalibration = basic_calibration_result<affine_adapter>;

/// BN-statistics recalibration (see the file comment): attaches an
/// affine_adapter to each target of `student` (every conv2d and linear layer
/// when `targets` is empty), fitted in forward order so that, on `images`,
/// each output channel's mean and variance over samples and positions match
/// the teacher's. A channel the student holds constant (variance 0) keeps
/// scale 1 and only has its mean moved. Reads the crossbars only (no RRAM
/// write); a failure takes this call's adapters off again.
[[nodiscard]] inline batch_norm_recalibration recalibrate_batch_norm(const network& teacher, network& student,
                                                                     const Tensor& images,
                                                                     std::vector<std::string> targets = {}) {
  const char* who = "recalibrate_batch_norm";
  if (images.rank() < 2 || images.dim(0) < 1) {
    throw value_error(detail::concat(who, ": need at least one calibration image, got ", images.shape().to_string()));
  }
  if (!detail::all_finite(images)) throw value_error(detail::concat(who, ": the calibration images are not finite"));
  const auto t_start = std::chrono::steady_clock::now();
  detail::check_teacher_student(teacher, student, who);
  targets = detail::calibration_targets(student, std::move(targets), who);
  for (const auto& t : targets) {
    detail::check_no_fused_relu(student, t, "student");
    detail::check_no_fused_relu(teacher, t, "teacher");
  }
  std::vector<affine_adapter> made;
  for (const auto& t : targets) {
    try {
      made.emplace_back(student.layer(t));
    } catch (const error&) {
      detail::rethrow_in(detail::concat(who, ": layer '", t, "'"));
    }
  }
  std::map<std::string, Tensor> teacher_out;
  (void)teacher.forward(images, targets, teacher_out);
  const std::uint64_t writes_before = student.rram_writes();
  batch_norm_recalibration result;
  detail::attach_transaction attached(student);
  detail::student_prefix prefix(student, images, targets);
  for (std::size_t li = 0; li < targets.size(); ++li) {
    const std::string& name = targets[li];
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor x = prefix.input_of(name);
    const std::shared_ptr<layer> base = student.layer_ptr(name);
    Tensor z;
    base->forward(x, z);
    if (z.rank() == 4) z = z.to_layout(layout::nhwc);
    Tensor target = teacher_out.at(name);
    if (target.rank() == 4) target = target.to_layout(layout::nhwc);
    if (!detail::all_finite(z) || !detail::all_finite(target)) {
      throw value_error(detail::concat(who, ": layer '", name, "': the student's or the teacher's output is not finite"));
    }
    const std::int64_t O = made[li].out_features(), P = z.numel() / O;
    std::vector<double> ms(static_cast<std::size_t>(O)), mt(ms), vs(ms), vt(ms);
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t o = 0; o < O; ++o) {
        ms[static_cast<std::size_t>(o)] += z[p * O + o];
        mt[static_cast<std::size_t>(o)] += target[p * O + o];
      }
    for (std::size_t o = 0; o < ms.size(); ++o) {
      ms[o] /= static_cast<double>(P);
      mt[o] /= static_cast<double>(P);
    }
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t o = 0; o < O; ++o) {
        const auto i = static_cast<std::size_t>(o);
        const double ds = z[p * O + o] - ms[i], dt = target[p * O + o] - mt[i];
        vs[i] += ds * ds;
        vt[i] += dt * dt;
      }
    Tensor scale(Shape{O}), shift(Shape{O});
    for (std::int64_t o = 0; o < O; ++o) {
      const auto i = static_cast<std::size_t>(o);
      const double s = vs[i] > 0 ? std::sqrt(vt[i] / vs[i]) : 1.0;
      scale[o] = static_cast<float>(s);
      shift[o] = static_cast<float>(mt[i] - s * ms[i]);
    }
    affine_adapter& a = made[li];
    a.set_parameters(*base, std::move(scale), std::move(shift));
    layer_calibration rep;
    rep.name = name;
    rep.path = kd_loss_path::direct;
    rep.mse_before = detail::mse(z, target, nullptr);
    Tensor y;
    a.forward(*base, x, z, y);
    rep.mse_after = detail::mse(y, target, nullptr);
    rep.footprint = a.footprint(sram_precision::fp32);
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.footprint += rep.footprint;
    result.layers.push_back(rep);
    result.adapters[name] = attached.attach(name, std::move(a));
    prefix.changed(name);
  }
  attached.commit();
  result.rram_writes = student.rram_writes() - writes_before;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return result;
}

}  // namespace rimc
