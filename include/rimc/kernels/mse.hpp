#pragma once
/// \file
/// The mean squared error of two equally laid-out tensors and its gradient,
/// for the feature-KD loss: the sum is in double over fixed blocks of 8
/// lanes each, added in block order, so it does not depend on the thread
/// count; the AVX-512 form computes bitwise what the plain form computes.

#include <rimc/core/tensor.hpp>
#include <rimc/kernels/simd.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rimc::detail {

/// Elements per block of the feature MSE: blocks are summed in order, so the
/// loss does not depend on the thread count.
inline constexpr std::int64_t mse_block = 4096;

/// Sum of (y - t)^2 over [0, len) in double, element i in lane i mod 8, and,
/// with g, g = float(2 (y - t) / n). Scalar code; mse_block_avx512 computes
/// bitwise the same (unless the compiler fuses d * d into the lane sum).
inline double mse_block_scalar(const float* y, const float* t, float* g, std::int64_t len, double n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (std::int64_t i = 0; i < len; ++i) {
    const double d = double(y[i]) - double(t[i]);
    const double dd = d * d;  // no fused multiply-add: the same roundings as the vector code
    lane[i & 7] += dd;
    if (g) g[i] = static_cast<float>(2.0 * d / n);
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

#if RIMC_HAVE_X86_DISPATCH
/// mse_block_scalar with AVX-512 (8 doubles a step; the _round_ forms keep
/// every product and sum separately rounded whatever -ffp-contract says).
RIMC_AVX512_WARNINGS_OFF
__attribute__((target("avx512f"))) inline double mse_block_avx512(const float* y, const float* t, float* g,
                                                                    std::int64_t len, double n) {
  constexpr int cur = _MM_FROUND_CUR_DIRECTION;
  __m512d acc = _mm512_setzero_pd();
  const __m512d two = _mm512_set1_pd(2.0), nn = _mm512_set1_pd(n);
  std::int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m512d d = _mm512_sub_round_pd(_mm512_cvtps_pd(_mm256_loadu_ps(y + i)), _mm512_cvtps_pd(_mm256_loadu_ps(t + i)), cur);
    acc = _mm512_add_round_pd(acc, _mm512_mul_round_pd(d, d, cur), cur);
    if (g) _mm256_storeu_ps(g + i, _mm512_cvtpd_ps(_mm512_div_round_pd(_mm512_mul_round_pd(two, d, cur), nn, cur)));
  }
  if (i < len) {  // the tail: element j of it in lane j, as in the scalar code
    const auto m = static_cast<__mmask16>((1u << (len - i)) - 1u);
    const __m512d d = _mm512_sub_round_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, y + i))),
                                          _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, t + i))), cur);
    acc = _mm512_add_round_pd(acc, _mm512_mul_round_pd(d, d, cur), cur);
    if (g) {
      const __m256 q = _mm512_cvtpd_ps(_mm512_div_round_pd(_mm512_mul_round_pd(two, d, cur), nn, cur));
      _mm512_mask_storeu_ps(g + i, m, _mm512_castps256_ps512(q));
    }
  }
  alignas(64) double lane[8];
  _mm512_store_pd(lane, acc);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

RIMC_AVX512_WARNINGS_ON

#endif

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
  const auto blocks = (n + mse_block - 1) / mse_block;
  const auto nd = static_cast<double>(n);
  thread_local std::vector<double> part;
  part.assign(static_cast<std::size_t>(blocks), 0.0);
  auto block = [&](std::int64_t b) {
    const auto i0 = b * mse_block, len = std::min(n, i0 + mse_block) - i0;
    float* g = gp ? gp + i0 : nullptr;
#if RIMC_HAVE_X86_DISPATCH
    if (has_avx512f()) return mse_block_avx512(yp + i0, tp + i0, g, len, nd);
#endif
    return mse_block_scalar(yp + i0, tp + i0, g, len, nd);
  };
  double* pp = part.data();
#pragma omp parallel for schedule(static) if (blocks > 4)
  for (std::int64_t b = 0; b < blocks; ++b) pp[b] = block(b);
  double s = 0;
  for (double v : part) s += v;
  return s / nd;
}

}  // namespace rimc::detail
