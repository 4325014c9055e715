#pragma once
/// \file
/// Parameters of the convolution and pooling kernels, and the output-shape
/// rules they share (PyTorch's: symmetric padding, floor rounding).

#include <rimc/core/error.hpp>
#include <rimc/core/shape.hpp>

#include <array>
#include <cstdint>
#include <string_view>

namespace rimc {

/// Geometry of a 2-D convolution (PyTorch's Conv2d conventions).
struct conv2d_params {
  std::array<std::int64_t, 2> stride{1, 1};    ///< (h, w), >= 1
  std::array<std::int64_t, 2> padding{0, 0};   ///< zero padding on each side (h, w), >= 0
  std::array<std::int64_t, 2> dilation{1, 1};  ///< (h, w), 1 = dense kernel
  std::int64_t groups = 1;                     ///< input and output channels split into this many groups
  bool relu = false;                           ///< apply ReLU after the bias (fused)
};

/// Kind of a 2-D pooling window.
enum class pool_kind : std::uint8_t { max, avg };

/// Geometry of a 2-D pooling window (PyTorch's MaxPool2d / AvgPool2d, floor mode).
struct pool2d_params {
  /// Max or average pooling.
  pool_kind kind = pool_kind::max;
  std::array<std::int64_t, 2> kernel{2, 2};   ///< window (h, w), >= 1
  std::array<std::int64_t, 2> stride{2, 2};   ///< (h, w), >= 1
  std::array<std::int64_t, 2> padding{0, 0};  ///< (h, w), >= 0 and <= kernel / 2
  bool count_include_pad = true;              ///< avg: divide by the full window (PyTorch's default)
};

namespace detail {

inline void check_pair(std::string_view op, std::string_view field, const std::array<std::int64_t, 2>& v,
                       std::int64_t min) {
  if (v[0] < min || v[1] < min) {
    throw value_error(concat(op, ": ", field, " must be >= ", min, ", got (", v[0], ", ", v[1], ")"));
  }
}

inline void check_rank4(std::string_view op, std::string_view what, const Shape& s) {
  if (s.rank() != 4) throw shape_error(concat(op, ": ", what, " must be rank 4 (N, C, H, W), got ", s.to_string()));
}

}  // namespace detail

/// Validates `p` against a source of shape [N, C, H, W] and weights of shape
/// [O, C / groups, kh, kw] and returns the destination shape [N, O, OH, OW].
[[nodiscard]] inline Shape conv2d_output_shape(const Shape& src, const Shape& weights, const conv2d_params& p) {
  constexpr std::string_view op = "conv2d";
  detail::check_rank4(op, "src", src);
  detail::check_rank4(op, "weights", weights);
  detail::check_pair(op, "stride", p.stride, 1);
  detail::check_pair(op, "padding", p.padding, 0);
  detail::check_pair(op, "dilation", p.dilation, 1);
  if (p.groups < 1) throw value_error(detail::concat("conv2d: groups must be >= 1, got ", p.groups));
  if (weights[0] % p.groups != 0) {
    throw shape_error(detail::concat("conv2d: output channels ", weights[0], " of weights ", weights.to_string(),
                                     " are not divisible by groups ", p.groups));
  }
  if (src[1] != weights[1] * p.groups) {
    throw shape_error(detail::concat("conv2d: src ", src.to_string(), " has ", src[1],
                                     " channels but weights ", weights.to_string(), " with groups ", p.groups,
                                     " expect ", weights[1] * p.groups));
  }
  std::array<std::int64_t, 2> out{};
  for (int d = 0; d < 2; ++d) {
    const auto in = src[2 + d], k = weights[2 + d];
    const auto span = p.dilation[d] * (k - 1) + 1;
    const auto padded = in + 2 * p.padding[d];
    if (k < 1 || padded < span) {
      throw shape_error(detail::concat("conv2d: kernel ", weights.to_string(), " with dilation (", p.dilation[0],
                                       ", ", p.dilation[1], ") does not fit src ", src.to_string(),
                                       " padded by (", p.padding[0], ", ", p.padding[1], ")"));
    }
    out[d] = (padded - span) / p.stride[d] + 1;
  }
  return Shape{src[0], weights[0], out[0], out[1]};
}

/// Validates `p` against a source of shape [N, C, H, W] and returns [N, C, OH, OW].
[[nodiscard]] inline Shape pool2d_output_shape(const Shape& src, const pool2d_params& p) {
  constexpr std::string_view op = "pool2d";
  detail::check_rank4(op, "src", src);
  detail::check_pair(op, "kernel", p.kernel, 1);
  detail::check_pair(op, "stride", p.stride, 1);
  detail::check_pair(op, "padding", p.padding, 0);
  std::array<std::int64_t, 2> out{};
  for (int d = 0; d < 2; ++d) {
    if (2 * p.padding[d] > p.kernel[d]) {
      throw value_error(detail::concat("pool2d: padding (", p.padding[0], ", ", p.padding[1],
                                       ") must be at most half the kernel (", p.kernel[0], ", ", p.kernel[1], ")"));
    }
    const auto padded = src[2 + d] + 2 * p.padding[d];
    if (padded < p.kernel[d]) {
      throw shape_error(detail::concat("pool2d: kernel (", p.kernel[0], ", ", p.kernel[1],
                                       ") does not fit src ", src.to_string(), " padded by (", p.padding[0],
                                       ", ", p.padding[1], ")"));
    }
    out[d] = (padded - p.kernel[d]) / p.stride[d] + 1;
  }
  return Shape{src[0], src[1], out[0], out[1]};
}

}  // namespace rimc
