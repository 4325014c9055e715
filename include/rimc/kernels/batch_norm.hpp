#pragma once
/// \file
/// Batch normalisation with inference statistics (PyTorch's eval mode):
/// y = (x - running_mean) gamma / sqrt(running_var + eps) + beta per channel,
/// and its input gradient dL/dx = dL/dy gamma / sqrt(running_var + eps).
/// Outputs are channels-last.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>

namespace rimc {

/// The per-channel scale gamma / sqrt(var + eps) of an inference batch norm, computed in double.
[[nodiscard]] inline Eigen::VectorXf batch_norm_scale(const Tensor& weight, const Tensor& running_var, double eps) {
  const auto C = weight.numel();
  Eigen::VectorXf scale(C);
  for (std::int64_t c = 0; c < C; ++c)
    scale[c] = static_cast<float>(weight[c] / std::sqrt(static_cast<double>(running_var[c]) + eps));
  return scale;
}

/// y = x scale + (beta - mean scale) per channel of x [N, C, H, W] (y channels-last).
inline void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                               const Tensor& running_var, double eps, Tensor& y) {
  const Tensor xs = x.to_layout(layout::nhwc);
  const auto C = x.dim(1), P = x.numel() / C;
  y.ensure(x.shape(), layout::nhwc);
  Eigen::VectorXf scale(C), shift(C);
  for (std::int64_t c = 0; c < C; ++c) {
    const double s = weight[c] / std::sqrt(static_cast<double>(running_var[c]) + eps);
    scale[c] = static_cast<float>(s);
    shift[c] = static_cast<float>(bias[c] - running_mean[c] * s);
  }
  y.matrix(P, C) = (xs.matrix(P, C) * scale.asDiagonal()).rowwise() + shift.transpose();
}

/// dL/dx = dL/dy scale per channel (channels-last).
inline void batch_norm_backward_data(const Tensor& diff_dst, const Tensor& weight, const Tensor& running_var, double eps,
                                     Tensor& diff_src) {
  diff_src = diff_dst.to_layout(layout::nhwc);
  const auto C = diff_src.dim(1);
  diff_src.matrix(diff_src.numel() / C, C) *= batch_norm_scale(weight, running_var, eps).asDiagonal();
}

}  // namespace rimc
