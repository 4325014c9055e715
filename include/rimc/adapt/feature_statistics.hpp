#pragma once
/// \file
/// The feature-KD loss of one layer from statistics computed once
/// (docs/formulas.md, sec. 3, "the statistics form"): exact, not an
/// approximation; it differs from the direct computation only in rounding.
/// It serves every low-rank adapter (DoRA with its per-channel gamma, LoRA
/// with gamma = 1).
///
/// Within one layer's calibration the im2col rows x_i of the layer's input
/// (K values each; i over images and output positions, P of them), the
/// frozen base output z0 = W0 x (no bias) and the teacher's output t do not
/// change; only m, A and B do. With gamma = m / n, V = B A and
/// q = z0 + b - t (the drifted layer's error), the error of output o is
///
///   e_io = (gamma_o - 1) z0_io + q_io + s gamma_o V_o . x_i
///
/// so its sum of squares needs only G = sum x x^T (K x K), X^T Z0 and X^T Q
/// (K x O) and the per-channel sums of z0^2, z0 q and q^2:
///
///   sum_i e_io^2 = d^2 zz_o + 2 d zq_o + qq_o + 2 s gamma_o B_o . (d A X^T z0_o + A X^T q_o)
///                  + s^2 gamma_o^2 B_o (A G A^T) B_o^T,        d = gamma_o - 1.
///
/// One step then costs r K (K + 4 O) multiply-adds, whatever N and the
/// feature-map size; building the statistics costs P K (K + 2 O) once (a
/// oneDNN matmul). Writing e with q and gamma - 1 rather than with z0 and t
/// keeps every term the size of the error itself, so the sums lose few
/// digits to cancellation; the per-channel sums are in double.

#include <rimc/adapt/adapter.hpp>
#include <rimc/adapt/dora_adapter.hpp>
#include <rimc/core/error.hpp>
#include <rimc/kernels/arch/isa.hpp>
#include <rimc/kernels/im2col.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/small_gemm.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace rimc {

/// How calibrate_feature_kd computes a layer's loss and gradients at each
/// step. Both paths are exact; they differ only in rounding.
enum class kd_loss_path : std::uint8_t {
  automatic,   ///< per layer, the path with the fewer estimated multiply-adds
  statistics,  ///< from per-layer statistics (Gram matrix etc.): r K (K + 4 O) per step, independent of N
  direct,      ///< forward and backward over all N images at every step
};

/// "automatic", "statistics" or "direct".
[[nodiscard]] inline const char* to_string(kd_loss_path p) noexcept {
  switch (p) {
    case kd_loss_path::automatic: return "automatic";
    case kd_loss_path::statistics: return "statistics";
    case kd_loss_path::direct: return "direct";
  }
  return "?";
}

namespace detail {

/// The feature-KD loss of one layer and its gradients from statistics (see the file comment).
class feature_statistics {
 public:
  /// Values of [X | Z0 | Q] formed at a time (at least 256 rows): bounds the
  /// working memory (16 MiB) whatever N; the chunks' products are added in order.
  static constexpr std::int64_t chunk_floats = std::int64_t{1} << 22;

  /// `x`: the layer's input; `layer_out`: the frozen layer's output W0 x +
  /// bias and `target`: the teacher's output, both [P, O] row-major
  /// (channels-last for a conv); `base` gives the bias and the geometry.
  /// Keeps only the statistics. `chunk_rows` overrides the rows per chunk (tests).
  feature_statistics(const layer& base, const Tensor& x, const Tensor& layer_out, const Tensor& target,
                     std::int64_t chunk_rows = 0)
      : geo_(base, "feature_statistics"), K_(geo_.K), O_(geo_.O), W_(K_ + 2 * O_) {
    const Tensor* bias = base.bias();
    const Tensor& z0 = layer_out;
    const std::int64_t P = z0.numel() / std::max<std::int64_t>(O_, 1);
    if (z0.numel() != P * O_ || target.numel() != z0.numel()) {
      throw shape_error(concat("feature_statistics: layer output ", z0.shape().to_string(), " and target ",
                               target.shape().to_string(), " must both hold P x ", O_, " values"));
    }
    if (z0.rank() == 4 && (z0.memory_layout() != layout::nhwc || target.memory_layout() != layout::nhwc)) {
      throw value_error("feature_statistics: the layer output and the target must be channels-last");
    }
    count_ = static_cast<double>(P * O_);
    const float* z = z0.data();
    const float* t = target.data();
    const float* bp = bias ? bias->data() : nullptr;
    Shape out;
    thread_local Tensor x_scratch;
    const Tensor* xs = &x;
    if (geo_.conv) {
      out = im2col_output_shape(x, geo_.weight_shape[2], geo_.weight_shape[3], geo_.params);
      if (out[0] * out[2] * out[3] != P) {
        throw shape_error(concat("feature_statistics: input ", x.shape().to_string(), " gives ",
                                 out[0] * out[2] * out[3], " output positions, the layer output has ", P));
      }
    } else {
      xs = &as_layout(x, layout::nchw, x_scratch);
      if (x.numel() != P * K_) {
        throw shape_error(concat("feature_statistics: input ", x.shape().to_string(), " does not give ", P, " rows of ",
                                 K_, " features"));
      }
    }

    s_.assign(static_cast<std::size_t>(K_ * W_), 0.0f);
    const std::int64_t rows = chunk_rows > 0 ? chunk_rows : std::max<std::int64_t>(256, chunk_floats / W_);
    std::vector<float> y(static_cast<std::size_t>(std::min(P, rows) * W_));
    std::vector<float> part(P > rows ? s_.size() : 0);
    constexpr std::int64_t block = 256;
    std::vector<double> sums;
    Eigen::VectorXd zz = Eigen::VectorXd::Zero(O_), zq = zz, qq = zz;
    for (std::int64_t r0 = 0; r0 < P; r0 += rows) {
      const std::int64_t n = std::min(P, r0 + rows) - r0, blocks = (n + block - 1) / block;
      sums.assign(static_cast<std::size_t>(blocks * 3 * O_), 0.0);
      float* yp = y.data();
      double* sp = sums.data();
#pragma omp parallel for schedule(static)
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t p0 = b * block, p1 = std::min(n, p0 + block);
        if (geo_.conv) {
          im2col_rows(x, geo_.weight_shape[2], geo_.weight_shape[3], geo_.params, out, r0 + p0, r0 + p1,
                      yp + p0 * W_, W_);
        }
        double* bz = sp + b * 3 * O_;
        for (std::int64_t p = p0; p < p1; ++p) {
          float* row = yp + p * W_;
          if (!geo_.conv) std::copy_n(xs->data() + (r0 + p) * K_, K_, row);
          const float* zr = z + (r0 + p) * O_;
          const float* tr = t + (r0 + p) * O_;
          for (std::int64_t o = 0; o < O_; ++o) {
            const float zf = bp ? zr[o] - bp[o] : zr[o];  // W0 x: the layer's output without its bias
            const double zo = zf, qo = zo + (bp ? double(bp[o]) : 0.0) - double(tr[o]);
            row[K_ + o] = zf;
            row[K_ + O_ + o] = static_cast<float>(qo);
            bz[o] += zo * zo;
            bz[O_ + o] += zo * qo;
            bz[2 * O_ + o] += qo * qo;
          }
        }
      }
      for (std::int64_t b = 0; b < blocks; ++b) {
        const double* bz = sums.data() + b * 3 * O_;
        zz += Eigen::Map<const Eigen::VectorXd>(bz, O_);
        zq += Eigen::Map<const Eigen::VectorXd>(bz + O_, O_);
        qq += Eigen::Map<const Eigen::VectorXd>(bz + 2 * O_, O_);
      }
      // [K, W] = X^T [X | Z0 | Q]: X is the first K columns of y.
      float* dst = r0 == 0 ? s_.data() : part.data();
      gemm(gemm_spec{.M = K_, .N = W_, .K = n, .ta = true, .lda = W_}, yp, yp, dst);
      if (r0 > 0) {
        for (std::size_t i = 0; i < s_.size(); ++i) s_[i] += part[i];
      }
    }
    zz_ = zz;
    zq_ = zq;
    qq_ = qq;
    // [X^T Z0 | X^T Q]^T [2 O, K]: the per-step product for dL/dA reads it by rows.
    ct_.resize(static_cast<std::size_t>(2 * O_ * K_));
    for (std::int64_t k = 0; k < K_; ++k)
      for (std::int64_t c = 0; c < 2 * O_; ++c)
        ct_[static_cast<std::size_t>(c * K_ + k)] = s_[static_cast<std::size_t>(k * W_ + K_ + c)];
  }

  /// The mean squared error of adapter `a`'s output against the target and,
  /// with `grads` non-empty (one tensor per parameter of `a`), its gradients
  /// (norm mode as `a`'s).
  template <low_rank_adapter A>
  [[nodiscard]] double evaluate(const A& a, const layer& base, std::span<Tensor> grads = {}) {
    Tensor* dA = grads.empty() ? nullptr : &grads[A::grad_index_A];
    Tensor* dB = grads.empty() ? nullptr : &grads[A::grad_index_B];
    const double loss = evaluate(a.low_rank(), a.rank(), dA, dB, grads.empty() ? nullptr : &dgamma_);
    if (!grads.empty()) a.complete_gradients(base, dgamma_, grads);
    return loss;
  }

  /// The loss of the low-rank form `f` of rank r and, with dA and dB, its
  /// gradients at fixed gamma and dL/dgamma into `dgamma` (when f has a gamma).
  [[nodiscard]] double evaluate(const low_rank_form& f, std::int64_t r, Tensor* dA_out, Tensor* dB_out,
                                Eigen::VectorXd* dgamma) {
    if (f.lora_A->numel() != r * K_ || f.lora_B->numel() != O_ * r) {
      throw shape_error(concat("feature_statistics::evaluate: A ", f.lora_A->shape().to_string(), " and B ",
                               f.lora_B->shape().to_string(), " do not fit rank ", r, " on ", O_, " x ", K_));
    }
    const bool want_grads = dA_out && dB_out;
    const double s = f.scale;
    const float* A = f.lora_A->data();
    const float* B = f.lora_B->data();
    if (f.gamma) {
      gamma_ = *f.gamma;
    } else {
      gamma_.setOnes(O_);
    }
    const Eigen::VectorXf& gamma = gamma_;
    // u = A [G | X^T Z0 | X^T Q]  [r, W]
    u_.resize(static_cast<std::size_t>(r * W_));
    rows_times_matrix({A, K_}, r, K_, {s_.data(), W_}, W_, u_.data(), W_);
    // M = A G A^T (symmetrised)
    M_.resize(r, r);
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t l = 0; l < r; ++l) {
        double acc = 0;
        const float* uj = u_.data() + j * W_;
        const float* al = A + l * K_;
        for (std::int64_t k = 0; k < K_; ++k) acc += double(uj[k]) * double(al[k]);
        M_(j, l) = acc;
      }
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t l = 0; l < j; ++l) M_(j, l) = M_(l, j) = 0.5 * (M_(j, l) + M_(l, j));

    const double scale2 = 2.0 / count_;
    // Per-step scratch, sized once (no allocation per step or per channel).
    dgamma_.resize(O_);
    dB_.resize(O_, r);
    wgb_.resize(O_, r);
    b_.resize(r);
    acz_.resize(r);
    acq_.resize(r);
    mb_.resize(r);
    double total = 0;
    for (std::int64_t o = 0; o < O_; ++o) {
      const double g = gamma[o], d = g - 1.0;
      for (std::int64_t j = 0; j < r; ++j) {
        b_[j] = B[o * r + j];
        acz_[j] = u_[static_cast<std::size_t>(j * W_ + K_ + o)];
        acq_[j] = u_[static_cast<std::size_t>(j * W_ + K_ + O_ + o)];
      }
      const double bz = b_.dot(acz_), lin = d * bz + b_.dot(acq_);
      mb_.noalias() = M_ * b_;
      const double quad = b_.dot(mb_);
      total += d * d * zz_[o] + 2 * d * zq_[o] + qq_[o] + 2 * s * g * lin + s * s * g * g * quad;
      if (!want_grads) continue;
      dgamma_[o] = scale2 * (d * zz_[o] + zq_[o] + s * lin + s * g * bz + s * s * g * quad);
      dB_.row(o) = (scale2 * (s * g * (d * acz_ + acq_) + s * s * g * g * mb_)).transpose();
      wgb_.row(o) = (s * g * b_).transpose();
    }
    const double loss = std::max(0.0, total / count_);
    if (!want_grads) return loss;

    // dL/dA = 2 / count (R A G + E [X^T Z0 | X^T Q]^T), R = wgb^T wgb, E = [wgb^T diag(d) | wgb^T].
    R_.noalias() = wgb_.transpose() * wgb_;
    e_.resize(static_cast<std::size_t>(r * 2 * O_));
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t o = 0; o < O_; ++o) {
        e_[static_cast<std::size_t>(j * 2 * O_ + o)] = static_cast<float>(wgb_(o, j) * (double(gamma[o]) - 1.0));
        e_[static_cast<std::size_t>(j * 2 * O_ + O_ + o)] = static_cast<float>(wgb_(o, j));
      }
    lin_.resize(static_cast<std::size_t>(r * K_));
    rows_times_matrix({e_.data(), 2 * O_}, r, 2 * O_, {ct_.data(), K_}, K_, lin_.data(), K_);
    dA_out->ensure(f.lora_A->shape());
    dB_out->ensure(f.lora_B->shape());
    float* dA = dA_out->data();
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t k = 0; k < K_; ++k) {
        double acc = lin_[static_cast<std::size_t>(j * K_ + k)];
        for (std::int64_t l = 0; l < r; ++l) acc += R_(j, l) * double(u_[static_cast<std::size_t>(l * W_ + k)]);
        dA[j * K_ + k] = static_cast<float>(scale2 * acc);
      }
    dB_out->matrix(O_, r) = dB_.cast<float>();
    if (dgamma) *dgamma = dgamma_;
    return loss;
  }

  /// The cost model's weights on one ISA tier, in units of the statistics
  /// path's per-step multiply-add: `build` for the one-off matmul, `direct`
  /// for the direct path's per-step multiply-adds, `call` for its fixed
  /// per-step cost (kernel calls).
  struct path_costs {
    double build;   ///< weight of the statistics' one-off P K (K + 2 O)
    double direct;  ///< weight of the direct path's per-step P r (2 K + 3 O)
    double call;    ///< the direct path's fixed cost per step
  };
  /// The weights for `tier`, fitted by tools/fit_cost_model.py to
  /// bench/loss_paths runs (the ResNet-20 layers and four ResNet-50 layers
  /// at 32x32 and 224x224, N = 10; bench/results/loss_paths_*.csv). AVX-512
  /// and AVX2 share them: on both the statistics' matmul runs at about twice
  /// the rate of the per-step products and the direct path's thin,
  /// memory-bound kernels at about half, plus about 30 us of kernel calls
  /// per step. On the portable tier the per-step products run without
  /// vectors while oneDNN's convolutions of the direct path still have
  /// them, so the direct path is relatively cheaper.
  [[nodiscard]] static constexpr path_costs costs_for(isa_tier tier) noexcept {
    return tier == isa_tier::scalar ? path_costs{0.08, 0.25, 5e4} : path_costs{0.5, 2.0, 1e6};
  }
  /// The work of `steps` steps on this path on `tier`, building the
  /// statistics included: steps r K (K + 4 O) + build P K (K + 2 O).
  [[nodiscard]] static double cost(std::int64_t P, std::int64_t K, std::int64_t O, std::int64_t r, int steps,
                                   isa_tier tier = active_isa()) {
    const double k = static_cast<double>(K), w = static_cast<double>(K + 2 * O);
    return costs_for(tier).build * static_cast<double>(P) * k * w +
           steps * static_cast<double>(r) * k * (w + 2.0 * static_cast<double>(O));
  }
  /// The same for the direct path: per step the forward of A x, the
  /// combination and the loss, and the backward of A, B and m,
  /// P r (2 K + 3 O) multiply-adds weighted by `direct`, plus `call`.
  /// On the layers measured this picks the faster path for every layer on
  /// AVX-512, and for all but one near the crossover on AVX2 and on the
  /// portable tier (tools/fit_cost_model.py prints the comparison).
  [[nodiscard]] static double direct_cost(std::int64_t P, std::int64_t K, std::int64_t O, std::int64_t r, int steps,
                                          isa_tier tier = active_isa()) {
    const path_costs c = costs_for(tier);
    const double per_step =
        static_cast<double>(P) * static_cast<double>(r) * (2.0 * static_cast<double>(K) + 3.0 * static_cast<double>(O));
    return steps * (c.direct * per_step + c.call);
  }
  /// Bytes the statistics keep.
  [[nodiscard]] static double bytes(std::int64_t K, std::int64_t O) {
    return 4.0 * static_cast<double>(K) * static_cast<double>(K + 2 * O) + 8.0 * static_cast<double>(O * K);
  }

 private:
  base_geometry geo_;
  std::int64_t K_, O_, W_;
  double count_ = 0;
  std::vector<float> s_;   ///< [K, W]: X^T [X | Z0 | Q]
  std::vector<float> ct_;  ///< [2 O, K]: [X^T Z0 | X^T Q]^T
  Eigen::VectorXd zz_, zq_, qq_;
  std::vector<float> u_, e_, lin_;  ///< per-step scratch
  Eigen::MatrixXd M_, dB_, wgb_, R_;
  Eigen::VectorXd dgamma_, b_, acz_, acq_, mb_;
  Eigen::VectorXf gamma_;
};

}  // namespace detail
}  // namespace rimc
