#pragma once
/// \file
/// Optimizers for adapter parameters: SGD with momentum (PyTorch's
/// torch.optim.SGD semantics) and Adam / AdamW (torch.optim.Adam, AdamW).
/// State is per parameter slot and can be reset, e.g. between the layers of
/// a layer-wise calibration.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/arch/dispatch.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace rimc {

/// One parameter an optimizer updates in place, with its gradient (same shape).
struct param_slot {
  /// The parameter, updated in place.
  Tensor* value;
  /// Its gradient, same shape.
  const Tensor* grad;
};

namespace detail {

inline void check_rate(std::string_view who, std::string_view field, double v, double lo, bool lo_open,
                       double hi = INFINITY, bool hi_open = true) {
  const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (!ok) {
    throw value_error(concat(who, ": ", field, " must be in ", lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]",
                             ", got ", v));
  }
}

inline void check_slots(std::string_view who, std::span<const param_slot> slots, std::vector<Tensor>& state) {
  if (!state.empty() && state.size() != slots.size()) {
    throw value_error(concat(who, ": step called with ", slots.size(), " parameters after ", state.size(),
                             "; call reset() when the parameter set changes"));
  }
  for (std::size_t i = 0; i < slots.size(); ++i) {
    check_same_shape(concat(who, ": gradient of parameter ", i), slots[i].grad->shape(), slots[i].value->shape());
  }
}
}  // namespace detail

/// Stochastic gradient descent with optional momentum, dampening-free, and L2 weight decay.
class sgd {
 public:
  /// Step size `lr` > 0, momentum in [0, 1), L2 `weight_decay` >= 0; Nesterov needs momentum > 0.
  explicit sgd(double lr, double momentum = 0.0, double weight_decay = 0.0, bool nesterov = false)
      : lr_(lr), momentum_(momentum), weight_decay_(weight_decay), nesterov_(nesterov) {
    detail::check_rate("sgd", "lr", lr, 0.0, true);
    detail::check_rate("sgd", "momentum", momentum, 0.0, false, 1.0, true);
    detail::check_rate("sgd", "weight_decay", weight_decay, 0.0, false);
    if (nesterov && momentum == 0.0) throw value_error("sgd: nesterov needs momentum > 0");
  }

  /// The SGD step size.
  [[nodiscard]] double lr() const noexcept { return lr_; }
  /// Changes the step size (> 0), e.g. for a schedule; value_error otherwise.
  void set_lr(double lr) {
    detail::check_rate("sgd", "lr", lr, 0.0, true);
    lr_ = lr;
  }

  /// p -= lr * (momentum buffer or gradient), PyTorch's update rule.
  void step(std::span<const param_slot> slots) {
    detail::check_slots("sgd", slots, buf_);
    if (buf_.empty() && momentum_ > 0) buf_.resize(slots.size());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      auto p = slots[i].value->vector();
      Eigen::VectorXf g = slots[i].grad->vector();
      if (weight_decay_ > 0) g += static_cast<float>(weight_decay_) * p;
      if (momentum_ > 0) {
        Tensor& b = buf_[i];
        if (b.empty()) {
          b = *slots[i].grad;
          b.vector() = g;
        } else {
          b.vector() = static_cast<float>(momentum_) * b.vector() + g;
        }
        if (nesterov_) {
          g += static_cast<float>(momentum_) * b.vector();
        } else {
          g = b.vector();
        }
      }
      p -= static_cast<float>(lr_) * g;
    }
  }

  /// Forgets the momentum buffers.
  void reset() noexcept { buf_.clear(); }

 private:
  double lr_, momentum_, weight_decay_;
  bool nesterov_;
  std::vector<Tensor> buf_;
};

/// Adam (Kingma & Ba 2015) with bias correction; with `decoupled_weight_decay`
/// it is AdamW (Loshchilov & Hutter 2019), else weight decay is added to the gradient.
class adam {
 public:
  /// Step size `lr` > 0, betas in [0, 1), `eps` > 0, `weight_decay` >= 0 (decoupled: AdamW).
  explicit adam(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                double weight_decay = 0.0, bool decoupled_weight_decay = true)
      : lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay),
        decoupled_(decoupled_weight_decay) {
    detail::check_rate("adam", "lr", lr, 0.0, true);
    detail::check_rate("adam", "beta1", beta1, 0.0, false, 1.0, true);
    detail::check_rate("adam", "beta2", beta2, 0.0, false, 1.0, true);
    detail::check_rate("adam", "eps", eps, 0.0, true);
    detail::check_rate("adam", "weight_decay", weight_decay, 0.0, false);
  }

  /// The Adam step size.
  [[nodiscard]] double lr() const noexcept { return lr_; }
  /// Changes the step size (> 0), e.g. for a schedule; value_error otherwise.
  void set_lr(double lr) {
    detail::check_rate("adam", "lr", lr, 0.0, true);
    lr_ = lr;
  }
  /// Updates taken since construction or the last reset, t in the bias corrections.
  [[nodiscard]] std::int64_t steps() const noexcept { return t_; }

  /// One Adam(W) update of every slot.
  void step(std::span<const param_slot> slots) {
    detail::check_slots("adam", slots, m_);
    if (m_.empty()) {
      for (const auto& s : slots) {
        m_.emplace_back(s.value->shape());
        v_.emplace_back(s.value->shape());
      }
    }
    ++t_;
    const double c1 = 1.0 - std::pow(beta1_, static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(beta2_, static_cast<double>(t_));
    const auto b1 = static_cast<float>(beta1_), b2 = static_cast<float>(beta2_);
    const detail::adam_step_consts consts{b1, b2, 1 - b1, 1 - b2, c1, c2, lr_, eps_};
    for (std::size_t i = 0; i < slots.size(); ++i) {
      float* p = slots[i].value->data();
      const float* g = slots[i].grad->data();
      float* m = m_[i].data();
      float* v = v_[i].data();
      const auto n = slots[i].value->numel();
      if (weight_decay_ == 0) {
        detail::adam_update(p, g, m, v, n, consts);
        continue;
      }
      for (std::int64_t k = 0; k < n; ++k) {
        double gk = g[k];
        if (weight_decay_ > 0) {
          if (decoupled_) {
            p[k] = static_cast<float>(p[k] * (1.0 - lr_ * weight_decay_));
          } else {
            gk += weight_decay_ * p[k];
          }
        }
        m[k] = b1 * m[k] + (1 - b1) * static_cast<float>(gk);
        v[k] = b2 * v[k] + (1 - b2) * static_cast<float>(gk * gk);
        const double mhat = m[k] / c1, vhat = v[k] / c2;
        p[k] = static_cast<float>(p[k] - lr_ * mhat / (std::sqrt(vhat) + eps_));
      }
    }
  }

  /// Forgets the moments and the step count.
  void reset() noexcept {
    m_.clear();
    v_.clear();
    t_ = 0;
  }

 private:
  double lr_, beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  std::int64_t t_ = 0;
  std::vector<Tensor> m_, v_;
};

}  // namespace rimc
