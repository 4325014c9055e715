#pragma once
/// \file
/// A plain reference of the DoRA layer, templated on the scalar so tests can
/// run it in double precision: it materialises W' = m ⊙ V / ||V||_row with
/// V = W0 + s B A and computes y = X W'^T + b on im2col rows, and gives the
/// gradients by the closed forms of docs/formulas.md (sec. 1). The fast adapter
/// (rimc::dora_adapter) never materialises W' and is checked against this.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <optional>

namespace rimc::reference {

/// Row-major dynamic matrix of T.
template <class T>
using dmat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Dynamic column vector of T.
template <class T>
using dvec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// The parameters of one DoRA layer as matrices: W0 [O, K], A [r, K], B [O, r], m [O], bias [O] (may be empty).
template <class T>
struct dora_params {
  /// W0 [O, K], A [r, K] and B [O, r].
  ///@{
  dmat<T> w0, a, b;
  ///@}
  /// Magnitude m [O] and bias [O] (bias may be empty).
  ///@{
  dvec<T> m, bias;
  ///@}
  /// s = alpha / r (or alpha / sqrt(r) with rsLoRA).
  T scale = T(1);
};

/// Row norms n_o = ||(W0 + s B A)_o||, clamped below by eps.
template <class T>
[[nodiscard]] dvec<T> dora_norms(const dora_params<T>& p, T eps = T(1e-12)) {
  const dmat<T> v = p.w0 + p.scale * p.b * p.a;
  dvec<T> n = v.rowwise().norm();
  return n.cwiseMax(eps);
}

/// Y [P, O] = X [P, K] W'^T + bias, W' = m ⊙ V / n; `norms` overrides n (the detached-norm case).
template <class T>
[[nodiscard]] dmat<T> dora_forward(const dmat<T>& x, const dora_params<T>& p,
                                   const std::optional<dvec<T>>& norms = std::nullopt) {
  const dmat<T> v = p.w0 + p.scale * p.b * p.a;
  const dvec<T> n = norms ? *norms : dora_norms(p);
  const dmat<T> w = (p.m.array() / n.array()).matrix().asDiagonal() * v;
  dmat<T> y = x * w.transpose();
  if (p.bias.size() > 0) y.rowwise() += p.bias.transpose();
  return y;
}

/// Gradients of L = <G, Y> for dora_forward.
template <class T>
struct dora_grads {
  /// dL/dm [O].
  dvec<T> m;
  /// dL/dA [r, K], dL/dB [O, r] and dL/dX [P, K].
  ///@{
  dmat<T> a, b, x;
  ///@}
};

/// Closed-form gradients: detached norm (n treated as a constant) or exact.
template <class T>
[[nodiscard]] dora_grads<T> dora_backward(const dmat<T>& x, const dora_params<T>& p, const dmat<T>& g, bool exact) {
  const T s = p.scale;
  const dvec<T> n = dora_norms(p);
  const dvec<T> gamma = (p.m.array() / n.array()).matrix();
  const dmat<T> v = p.w0 + s * p.b * p.a;
  const dmat<T> z = x * v.transpose();                // [P, O], pre-scale output
  const dmat<T> gh = g * gamma.asDiagonal();          // Ĝ
  const dvec<T> c = (g.array() * z.array()).colwise().sum().transpose();
  const dmat<T> u = x * p.a.transpose();              // [P, r]
  const dmat<T> ghb = gh * p.b;                       // [P, r]
  dora_grads<T> out;
  out.m = (c.array() / n.array()).matrix();
  out.b = s * gh.transpose() * u;
  out.a = s * ghb.transpose() * x;
  out.x = gh * p.w0 + s * ghb * p.a;
  if (exact) {
    const dvec<T> kappa = (p.m.array() * c.array() / n.array().cube()).matrix();
    const dmat<T> aat = p.a * p.a.transpose();
    out.b -= s * kappa.asDiagonal() * (p.w0 * p.a.transpose() + s * p.b * aat);
    out.a -= s * ((kappa.asDiagonal() * p.b).transpose() * p.w0 + s * (p.b.transpose() * kappa.asDiagonal() * p.b) * p.a);
    // The input gradient does not involve the norm.
  }
  return out;
}

}  // namespace rimc::reference
