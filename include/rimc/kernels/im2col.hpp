#pragma once
/// \file
/// rimc::im2col: unfolds the receptive fields of a 2-D convolution into the
/// rows of a matrix, so the convolution becomes one matrix product with the
/// weights flattened as [C * kh * kw, O] (the crossbar orientation).

#include <rimc/core/error.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/params.hpp>

#include <algorithm>
#include <cstdint>

namespace rimc {

/// Rows [row0, row1) of the im2col matrix of src [N, C, H, W] (either
/// layout) written to `dst` ([row1 - row0, C * kh * kw], row-major): row
/// (n, oh, ow) holds the zero-padded receptive field of that output pixel in
/// PyTorch's weight-flatten order (c, i, j). `out` is the convolution's
/// output shape (conv2d_output_shape); groups must be 1. `ld` is dst's row
/// stride (0: C * kh * kw).
inline void im2col_rows(const Tensor& src, std::int64_t kh, std::int64_t kw, const conv2d_params& p,
                        const Shape& out, std::int64_t row0, std::int64_t row1, float* dst, std::int64_t ld = 0) {
  const auto C = src.dim(1), H = src.dim(2), W = src.dim(3);
  const auto OH = out[2], OW = out[3], K = C * kh * kw, KK = kh * kw;
  const bool nhwc = src.memory_layout() == layout::nhwc;
  const float* s = src.data();
  for (std::int64_t row = row0; row < row1; ++row) {
    const auto n = row / (OH * OW), oh = (row / OW) % OH, ow = row % OW;
    float* d = dst + (row - row0) * (ld ? ld : K);
    for (std::int64_t i = 0; i < kh; ++i) {
      const auto ih = oh * p.stride[0] - p.padding[0] + i * p.dilation[0];
      for (std::int64_t j = 0; j < kw; ++j) {
        const auto iw = ow * p.stride[1] - p.padding[1] + j * p.dilation[1];
        float* out_ij = d + i * kw + j;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
          for (std::int64_t c = 0; c < C; ++c) out_ij[c * KK] = 0.0f;
        } else if (nhwc) {
          const float* px = s + ((n * H + ih) * W + iw) * C;
          for (std::int64_t c = 0; c < C; ++c) out_ij[c * KK] = px[c];
        } else {
          const float* px = s + (n * C * H + ih) * W + iw;
          for (std::int64_t c = 0; c < C; ++c) out_ij[c * KK] = px[c * H * W];
        }
      }
    }
  }
}

/// The output shape of a (groups = 1) kh x kw convolution of `src` under `p`, checking both.
[[nodiscard]] inline Shape im2col_output_shape(const Tensor& src, std::int64_t kh, std::int64_t kw,
                                               const conv2d_params& p) {
  if (p.groups != 1) throw value_error(detail::concat("im2col: groups must be 1, got ", p.groups));
  detail::check_rank4("im2col", "src", src.shape());
  return conv2d_output_shape(src.shape(), Shape{1, src.dim(1), kh, kw}, p);
}

/// cols [N * OH * OW, C * kh * kw] from src [N, C, H, W] (either layout), as
/// im2col_rows for every row. Rows come in (n, oh, ow) order, so cols x W^T
/// is the convolution's output in channels-last order.
inline void im2col(const Tensor& src, std::int64_t kh, std::int64_t kw, const conv2d_params& p, Tensor& cols) {
  const Shape out = im2col_output_shape(src, kh, kw, p);
  const auto rows = out[0] * out[2] * out[3], K = src.dim(1) * kh * kw;
  cols.ensure(Shape{rows, K});
  constexpr std::int64_t block = 64;
  const auto blocks = (rows + block - 1) / block;
  float* d = cols.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const auto r0 = b * block, r1 = std::min(rows, r0 + block);
    im2col_rows(src, kh, kw, p, out, r0, r1, d + r0 * K);
  }
}

/// The im2col matrix of `src` as a new tensor.
[[nodiscard]] inline Tensor im2col(const Tensor& src, std::int64_t kh, std::int64_t kw, const conv2d_params& p) {
  Tensor cols;
  im2col(src, kh, kw, p, cols);
  return cols;
}

}  // namespace rimc
