#pragma once
/// \file
/// Plain reference implementations of every frozen kernel and its backward
/// pass: direct loops over channels-first (NCHW, row-major) data, templated
/// on the scalar so tests can run them in double precision. They are what
/// the oneDNN paths are checked against; they are not meant to be fast.

#include <rimc/core/error.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/params.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

namespace rimc::reference {

namespace detail {
/// Accumulator type: double for float inputs, T otherwise.
template <class T>
using acc_t = std::conditional_t<std::is_same_v<T, float>, double, T>;
}  // namespace detail

/// dst[N, O, OH, OW] = conv(src[N, C, H, W], w[O, C/g, kh, kw]) + bias[O] (bias may be null).
template <class T>
void conv2d_forward(const T* src, const Shape& src_shape, const T* w, const Shape& w_shape, const T* bias,
                    const conv2d_params& p, T* dst) {
  const Shape out = conv2d_output_shape(src_shape, w_shape, p);
  const auto N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto O = w_shape[0], Cg = w_shape[1], KH = w_shape[2], KW = w_shape[3];
  const auto OH = out[2], OW = out[3], Og = O / p.groups;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      const auto g = o / Og;
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          detail::acc_t<T> acc = bias ? bias[o] : T(0);
          for (std::int64_t ci = 0; ci < Cg; ++ci) {
            const auto c = g * Cg + ci;
            for (std::int64_t kh = 0; kh < KH; ++kh) {
              const auto ih = oh * p.stride[0] - p.padding[0] + kh * p.dilation[0];
              if (ih < 0 || ih >= H) continue;
              for (std::int64_t kw = 0; kw < KW; ++kw) {
                const auto iw = ow * p.stride[1] - p.padding[1] + kw * p.dilation[1];
                if (iw < 0 || iw >= W) continue;
                acc += detail::acc_t<T>(src[((n * C + c) * H + ih) * W + iw]) *
                       w[((o * Cg + ci) * KH + kh) * KW + kw];
              }
            }
          }
          const T v = static_cast<T>(acc);
          dst[((n * O + o) * OH + oh) * OW + ow] = p.relu ? std::max(v, T(0)) : v;
        }
    }
}

/// diff_src[N, C, H, W] = conv2d_forward's transpose (without bias and ReLU) applied to diff_dst.
template <class T>
void conv2d_backward_data(const T* diff_dst, const T* w, const Shape& w_shape, const conv2d_params& p,
                          const Shape& src_shape, T* diff_src) {
  const Shape out = conv2d_output_shape(src_shape, w_shape, p);
  const auto N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto O = w_shape[0], Cg = w_shape[1], KH = w_shape[2], KW = w_shape[3];
  const auto OH = out[2], OW = out[3], Og = O / p.groups;
  std::vector<detail::acc_t<T>> acc(static_cast<std::size_t>(src_shape.numel()), 0);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      const auto g = o / Og;
      for (std::int64_t oh = 0; oh < OH; ++oh)
        for (std::int64_t ow = 0; ow < OW; ++ow) {
          const detail::acc_t<T> d = diff_dst[((n * O + o) * OH + oh) * OW + ow];
          for (std::int64_t ci = 0; ci < Cg; ++ci) {
            const auto c = g * Cg + ci;
            for (std::int64_t kh = 0; kh < KH; ++kh) {
              const auto ih = oh * p.stride[0] - p.padding[0] + kh * p.dilation[0];
              if (ih < 0 || ih >= H) continue;
              for (std::int64_t kw = 0; kw < KW; ++kw) {
                const auto iw = ow * p.stride[1] - p.padding[1] + kw * p.dilation[1];
                if (iw < 0 || iw >= W) continue;
                acc[static_cast<std::size_t>(((n * C + c) * H + ih) * W + iw)] +=
                    d * w[((o * Cg + ci) * KH + kh) * KW + kw];
              }
            }
          }
        }
    }
  std::transform(acc.begin(), acc.end(), diff_src, [](auto v) { return static_cast<T>(v); });
}

/// diff_w[O, C/g, kh, kw] = gradient of conv2d_forward's output with respect to
/// its weights, contracted with diff_dst (sum over batch and positions).
template <class T>
void conv2d_backward_weights(const T* src, const Shape& src_shape, const T* diff_dst, const Shape& w_shape,
                             const conv2d_params& p, T* diff_w) {
  const Shape out = conv2d_output_shape(src_shape, w_shape, p);
  const auto N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto O = w_shape[0], Cg = w_shape[1], KH = w_shape[2], KW = w_shape[3];
  const auto OH = out[2], OW = out[3], Og = O / p.groups;
  for (std::int64_t o = 0; o < O; ++o) {
    const auto g = o / Og;
    for (std::int64_t ci = 0; ci < Cg; ++ci)
      for (std::int64_t kh = 0; kh < KH; ++kh)
        for (std::int64_t kw = 0; kw < KW; ++kw) {
          detail::acc_t<T> acc = 0;
          const auto c = g * Cg + ci;
          for (std::int64_t n = 0; n < N; ++n)
            for (std::int64_t oh = 0; oh < OH; ++oh) {
              const auto ih = oh * p.stride[0] - p.padding[0] + kh * p.dilation[0];
              if (ih < 0 || ih >= H) continue;
              for (std::int64_t ow = 0; ow < OW; ++ow) {
                const auto iw = ow * p.stride[1] - p.padding[1] + kw * p.dilation[1];
                if (iw < 0 || iw >= W) continue;
                acc += detail::acc_t<T>(diff_dst[((n * O + o) * OH + oh) * OW + ow]) *
                       src[((n * C + c) * H + ih) * W + iw];
              }
            }
          diff_w[((o * Cg + ci) * KH + kh) * KW + kw] = static_cast<T>(acc);
        }
  }
}

/// im2col: cols[N * OH * OW, C * kh * kw] with row (n, oh, ow) holding the
/// receptive field of that output position (zeros where it hits padding),
/// column order (c, kh, kw) as in PyTorch's flattened conv weights; groups = 1.
template <class T>
void im2col(const T* src, const Shape& src_shape, const Shape& w_shape, const conv2d_params& p, T* cols) {
  const Shape out = conv2d_output_shape(src_shape, w_shape, p);
  const auto N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto KH = w_shape[2], KW = w_shape[3], OH = out[2], OW = out[3];
  const auto K = C * KH * KW;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t oh = 0; oh < OH; ++oh)
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        T* row = cols + ((n * OH + oh) * OW + ow) * K;
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t kh = 0; kh < KH; ++kh) {
            const auto ih = oh * p.stride[0] - p.padding[0] + kh * p.dilation[0];
            for (std::int64_t kw = 0; kw < KW; ++kw) {
              const auto iw = ow * p.stride[1] - p.padding[1] + kw * p.dilation[1];
              row[(c * KH + kh) * KW + kw] =
                  (ih < 0 || ih >= H || iw < 0 || iw >= W) ? T(0) : src[((n * C + c) * H + ih) * W + iw];
            }
          }
      }
}

/// col2im: the adjoint of im2col; accumulates cols[N * OH * OW, C * kh * kw]
/// back into src_grad[N, C, H, W] (which it overwrites).
template <class T>
void col2im(const T* cols, const Shape& src_shape, const Shape& w_shape, const conv2d_params& p, T* src_grad) {
  const Shape out = conv2d_output_shape(src_shape, w_shape, p);
  const auto N = src_shape[0], C = src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto KH = w_shape[2], KW = w_shape[3], OH = out[2], OW = out[3];
  const auto K = C * KH * KW;
  std::fill_n(src_grad, src_shape.numel(), T(0));
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t oh = 0; oh < OH; ++oh)
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        const T* row = cols + ((n * OH + oh) * OW + ow) * K;
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t kh = 0; kh < KH; ++kh) {
            const auto ih = oh * p.stride[0] - p.padding[0] + kh * p.dilation[0];
            if (ih < 0 || ih >= H) continue;
            for (std::int64_t kw = 0; kw < KW; ++kw) {
              const auto iw = ow * p.stride[1] - p.padding[1] + kw * p.dilation[1];
              if (iw >= 0 && iw < W) src_grad[((n * C + c) * H + ih) * W + iw] += row[(c * KH + kh) * KW + kw];
            }
          }
      }
}

/// dst[N, O] = src[N, K] w[O, K]^T + bias[O] (bias may be null), optional ReLU.
template <class T>
void linear_forward(const T* src, std::int64_t N, std::int64_t K, const T* w, std::int64_t O, const T* bias,
                    bool relu, T* dst) {
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o) {
      detail::acc_t<T> acc = bias ? bias[o] : T(0);
      for (std::int64_t k = 0; k < K; ++k) acc += detail::acc_t<T>(src[n * K + k]) * w[o * K + k];
      const T v = static_cast<T>(acc);
      dst[n * O + o] = relu ? std::max(v, T(0)) : v;
    }
}

/// diff_src[N, K] = diff_dst[N, O] w[O, K].
template <class T>
void linear_backward_data(const T* diff_dst, std::int64_t N, std::int64_t O, const T* w, std::int64_t K,
                          T* diff_src) {
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k) {
      detail::acc_t<T> acc = 0;
      for (std::int64_t o = 0; o < O; ++o) acc += detail::acc_t<T>(diff_dst[n * O + o]) * w[o * K + k];
      diff_src[n * K + k] = static_cast<T>(acc);
    }
}

/// Max or average pooling of src[N, C, H, W] into dst[N, C, OH, OW].
template <class T>
void pool2d_forward(const T* src, const Shape& src_shape, const pool2d_params& p, T* dst) {
  const Shape out = pool2d_output_shape(src_shape, p);
  const auto NC = src_shape[0] * src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto OH = out[2], OW = out[3];
  for (std::int64_t nc = 0; nc < NC; ++nc)
    for (std::int64_t oh = 0; oh < OH; ++oh)
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        detail::acc_t<T> acc = p.kind == pool_kind::max ? -std::numeric_limits<T>::infinity() : T(0);
        std::int64_t count = 0;
        for (std::int64_t kh = 0; kh < p.kernel[0]; ++kh) {
          const auto ih = oh * p.stride[0] - p.padding[0] + kh;
          if (ih < 0 || ih >= H) continue;
          for (std::int64_t kw = 0; kw < p.kernel[1]; ++kw) {
            const auto iw = ow * p.stride[1] - p.padding[1] + kw;
            if (iw < 0 || iw >= W) continue;
            const detail::acc_t<T> v = src[(nc * H + ih) * W + iw];
            acc = p.kind == pool_kind::max ? std::max(acc, v) : acc + v;
            ++count;
          }
        }
        if (p.kind == pool_kind::avg) {
          acc /= static_cast<detail::acc_t<T>>(p.count_include_pad ? p.kernel[0] * p.kernel[1] : count);
        }
        dst[(nc * OH + oh) * OW + ow] = static_cast<T>(acc);
      }
}

/// Gradient of pool2d_forward with respect to src (max: to the first maximum of each window).
template <class T>
void pool2d_backward_data(const T* diff_dst, const T* src, const Shape& src_shape, const pool2d_params& p,
                          T* diff_src) {
  const Shape out = pool2d_output_shape(src_shape, p);
  const auto NC = src_shape[0] * src_shape[1], H = src_shape[2], W = src_shape[3];
  const auto OH = out[2], OW = out[3];
  std::fill_n(diff_src, src_shape.numel(), T(0));
  for (std::int64_t nc = 0; nc < NC; ++nc)
    for (std::int64_t oh = 0; oh < OH; ++oh)
      for (std::int64_t ow = 0; ow < OW; ++ow) {
        const T d = diff_dst[(nc * OH + oh) * OW + ow];
        std::int64_t count = 0, arg = -1;
        T best = -std::numeric_limits<T>::infinity();
        for (std::int64_t kh = 0; kh < p.kernel[0]; ++kh) {
          const auto ih = oh * p.stride[0] - p.padding[0] + kh;
          if (ih < 0 || ih >= H) continue;
          for (std::int64_t kw = 0; kw < p.kernel[1]; ++kw) {
            const auto iw = ow * p.stride[1] - p.padding[1] + kw;
            if (iw < 0 || iw >= W) continue;
            const auto idx = (nc * H + ih) * W + iw;
            if (arg < 0 || src[idx] > best) {
              best = src[idx];
              arg = idx;
            }
            ++count;
          }
        }
        if (p.kind == pool_kind::max) {
          if (arg >= 0) diff_src[arg] += d;
          continue;
        }
        const T scale = T(1) / static_cast<T>(p.count_include_pad ? p.kernel[0] * p.kernel[1] : count);
        for (std::int64_t kh = 0; kh < p.kernel[0]; ++kh) {
          const auto ih = oh * p.stride[0] - p.padding[0] + kh;
          if (ih < 0 || ih >= H) continue;
          for (std::int64_t kw = 0; kw < p.kernel[1]; ++kw) {
            const auto iw = ow * p.stride[1] - p.padding[1] + kw;
            if (iw >= 0 && iw < W) diff_src[(nc * H + ih) * W + iw] += d * scale;
          }
        }
      }
}

/// dst[N, C] = mean of src[N, C, H, W] over H and W.
template <class T>
void global_avg_pool2d_forward(const T* src, const Shape& src_shape, T* dst) {
  const auto NC = src_shape[0] * src_shape[1], HW = src_shape[2] * src_shape[3];
  for (std::int64_t nc = 0; nc < NC; ++nc) {
    detail::acc_t<T> acc = 0;
    for (std::int64_t i = 0; i < HW; ++i) acc += src[nc * HW + i];
    dst[nc] = static_cast<T>(acc / static_cast<detail::acc_t<T>>(HW));
  }
}

/// diff_src[N, C, H, W] = diff_dst[N, C] / (H W), broadcast.
template <class T>
void global_avg_pool2d_backward_data(const T* diff_dst, const Shape& src_shape, T* diff_src) {
  const auto NC = src_shape[0] * src_shape[1], HW = src_shape[2] * src_shape[3];
  for (std::int64_t nc = 0; nc < NC; ++nc)
    for (std::int64_t i = 0; i < HW; ++i) diff_src[nc * HW + i] = diff_dst[nc] / static_cast<T>(HW);
}

/// dst = max(src, 0), element-wise over n values.
template <class T>
void relu_forward(const T* src, std::int64_t n, T* dst) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = std::max(src[i], T(0));
}

/// diff_src = diff_dst where src > 0, else 0.
template <class T>
void relu_backward(const T* diff_dst, const T* src, std::int64_t n, T* diff_src) {
  for (std::int64_t i = 0; i < n; ++i) diff_src[i] = src[i] > T(0) ? diff_dst[i] : T(0);
}

/// dst = a + b, element-wise over n values.
template <class T>
void add_forward(const T* a, const T* b, std::int64_t n, T* dst) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
}

// Tensor overloads: accept any layout, return channels-first (nchw) results.

/// Reference conv2d on tensors.
[[nodiscard]] inline Tensor conv2d(const Tensor& src, const Tensor& weights, const Tensor* bias,
                                   const conv2d_params& p) {
  const Tensor s = src.to_layout(layout::nchw);
  Tensor dst(conv2d_output_shape(src.shape(), weights.shape(), p));
  conv2d_forward(s.data(), s.shape(), weights.data(), weights.shape(), bias ? bias->data() : nullptr, p,
                 dst.data());
  return dst;
}

/// Reference conv2d backward-data on tensors.
[[nodiscard]] inline Tensor conv2d_backward_data(const Tensor& diff_dst, const Tensor& weights,
                                                 const conv2d_params& p, const Shape& src_shape) {
  check_same_shape("reference::conv2d_backward_data: diff_dst", diff_dst.shape(),
                   conv2d_output_shape(src_shape, weights.shape(), p));
  const Tensor d = diff_dst.to_layout(layout::nchw);
  Tensor diff_src(src_shape);
  conv2d_backward_data(d.data(), weights.data(), weights.shape(), p, src_shape, diff_src.data());
  return diff_src;
}

/// Reference conv2d backward-weights on tensors: [O, C/g, kh, kw].
[[nodiscard]] inline Tensor conv2d_backward_weights(const Tensor& src, const Tensor& diff_dst, const Shape& w_shape,
                                                    const conv2d_params& p) {
  check_same_shape("reference::conv2d_backward_weights: diff_dst", diff_dst.shape(),
                   conv2d_output_shape(src.shape(), w_shape, p));
  const Tensor s = src.to_layout(layout::nchw), d = diff_dst.to_layout(layout::nchw);
  Tensor diff_w(w_shape);
  conv2d_backward_weights(s.data(), s.shape(), d.data(), w_shape, p, diff_w.data());
  return diff_w;
}

/// Reference linear on tensors: src [N, K] (or [N, C, H, W] flattened), weights [O, K].
[[nodiscard]] inline Tensor linear(const Tensor& src, const Tensor& weights, const Tensor* bias, bool relu = false) {
  const Tensor s = src.rank() == 4 ? src.to_layout(layout::nchw) : src;
  const auto N = s.shape()[0], K = s.numel() / std::max<std::int64_t>(N, 1);
  if (weights.rank() != 2 || weights.dim(1) != K) {
    throw shape_error(rimc::detail::concat("reference::linear: src ", src.shape().to_string(), " gives ", K,
                                           " features but weights are ", weights.shape().to_string()));
  }
  Tensor dst(Shape{N, weights.dim(0)});
  linear_forward(s.data(), N, K, weights.data(), weights.dim(0), bias ? bias->data() : nullptr, relu, dst.data());
  return dst;
}

/// Reference pooling on tensors.
[[nodiscard]] inline Tensor pool2d(const Tensor& src, const pool2d_params& p) {
  const Tensor s = src.to_layout(layout::nchw);
  Tensor dst(pool2d_output_shape(src.shape(), p));
  pool2d_forward(s.data(), s.shape(), p, dst.data());
  return dst;
}

/// Reference global average pooling on tensors: [N, C, H, W] -> [N, C, 1, 1].
[[nodiscard]] inline Tensor global_avg_pool2d(const Tensor& src) {
  rimc::detail::check_rank4("reference::global_avg_pool2d", "src", src.shape());
  const Tensor s = src.to_layout(layout::nchw);
  Tensor dst(Shape{src.dim(0), src.dim(1), 1, 1});
  global_avg_pool2d_forward(s.data(), s.shape(), dst.data());
  return dst;
}

}  // namespace rimc::reference
