#pragma once
/// \file
/// The mean squared error of two equally laid-out tensors and its gradient,
/// for the feature-KD loss: the sum is in double over fixed blocks of 8
/// lanes each, added in block order, so it does not depend on the thread
/// count; every ISA tier computes the same bits (kernels/arch/).

#include <rimc/core/tensor.hpp>
#include <rimc/kernels/arch/dispatch.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rimc::detail {

/// Elements per block of the feature MSE: blocks are summed in order, so the
/// loss does not depend on the thread count.
inline constexpr std::int64_t mse_block_size = 4096;

/// Mean squared error of y against t (same element order) and, with `grad`,
/// dL/dy = 2 (y - t) / n. The sum is in double over fixed blocks (8 lanes
/// each) added in block order, so it does not depend on the thread count;
/// the gradient is element-wise.
inline double mse(const Tensor& y, const Tensor& t, Tensor* grad) {
  const auto n = y.numel();
  if (grad) grad->ensure(y.shape(), y.memory_layout());
  const float* yp = y.data();
  const float* tp = t.data();
  float* gp = grad ? grad->data() : nullptr;
  const auto blocks = (n + mse_block_size - 1) / mse_block_size;
  const auto nd = static_cast<double>(n);
  thread_local std::vector<double> part;
  part.assign(static_cast<std::size_t>(blocks), 0.0);
  const isa_tier tier = active_isa();  // outside the parallel region (it may throw)
  auto block = [&](std::int64_t b) {
    const auto i0 = b * mse_block_size, len = std::min(n, i0 + mse_block_size) - i0;
    return mse_block(yp + i0, tp + i0, gp ? gp + i0 : nullptr, len, nd, tier);
  };
  double* pp = part.data();
#pragma omp parallel for schedule(static) if (blocks > 4)
  for (std::int64_t b = 0; b < blocks; ++b) pp[b] = block(b);
  double s = 0;
  for (double v : part) s += v;
  return s / nd;
}

}  // namespace rimc::detail
