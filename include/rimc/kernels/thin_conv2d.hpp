#pragma once
/// \file
/// rimc::thin_conv2d: a convolution with few output channels (a DoRA
/// adapter's A, r = 1..64). The forward and the weight gradient run a direct
/// channels-last kernel (kernels/arch: per output pixel, 16 input channels a
/// step, r accumulators; the ISA tiers give the same bits): no im2col, no
/// intermediate, and with stride s only the OH OW output pixels are computed.
/// oneDNN's direct convolutions pad the output channels to a full vector (16
/// on AVX-512), so an r = 2 convolution there costs as much as a 16-channel
/// one. The input gradient uses shift-and-add ("kn2row"): dL/du scattered to
/// the input pixels each tap read, then one GEMM with A_cat [C, T r];
/// forward_shift_add() and backward_shift_add() are the forward and weight
/// gradient in that form, the bits rimc's committed results were computed with.
///
/// Activations are channels-last; groups must be 1. The forward is computed
/// per output value, and the weight gradient's reduction over pixels runs in
/// blocks of a fixed size added in order, so both are bitwise the same at
/// every thread count and on every ISA tier.

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/arch/dispatch.hpp>
#include <rimc/kernels/linear.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rimc {

namespace detail {

/// The direct kernels' geometry of a convolution with weights of shape `w` [r, C, KH, KW] and
/// parameters `p`, for a channels-last source of shape `src` [N, C, H, W] and output `out`
/// [N, r, OH, OW]; Cp is C rounded up to a multiple of 16.
[[nodiscard]] inline thin_conv_geometry thin_geometry(const Shape& src, const Shape& out, const Shape& w,
                                                      const conv2d_params& p) {
  return {.N = src[0], .H = src[2], .W = src[3], .C = w[1], .Cp = (w[1] + 15) / 16 * 16, .OH = out[2], .OW = out[3],
          .KH = w[2], .KW = w[3], .r = w[0], .sh = p.stride[0], .sw = p.stride[1], .ph = p.padding[0],
          .pw = p.padding[1], .dh = p.dilation[0], .dw = p.dilation[1]};
}

}  // namespace detail

/// A convolution with few output channels: weights [r, C, kh, kw] (PyTorch layout).
class thin_conv2d {
 public:
  thin_conv2d() = default;
  /// A convolution of `weights` [r, C, kh, kw] with geometry `params` (groups 1).
  thin_conv2d(const Tensor& weights, conv2d_params params) : params_(params) {
    if (params.groups != 1) throw value_error(detail::concat("thin_conv2d: groups must be 1, got ", params.groups));
    if (weights.rank() != 4) {
      throw shape_error(detail::concat("thin_conv2d: weights must be rank 4 [r, C, kh, kw], got ",
                                       weights.shape().to_string()));
    }
    shape_ = weights.shape();
    (void)conv2d_output_shape(Shape{1, shape_[1], params.dilation[0] * (shape_[2] - 1) + 1,
                                    params.dilation[1] * (shape_[3] - 1) + 1},
                              shape_, params);
    set_weights(weights);
  }

  /// [r, C, kh, kw].
  [[nodiscard]] const Shape& weight_shape() const noexcept { return shape_; }
  /// Stride, padding and dilation (groups 1).
  [[nodiscard]] const conv2d_params& params() const noexcept { return params_; }
  /// Destination shape [N, r, OH, OW] for a source of shape `src`.
  [[nodiscard]] Shape output_shape(const Shape& src) const { return conv2d_output_shape(src, shape_, params_); }

  /// Replaces the weights (same shape).
  void set_weights(const Tensor& weights) {
    check_same_shape("thin_conv2d::set_weights", weights.shape(), shape_);
    const Tensor w = weights.to_layout(layout::nchw);
    const auto r = shape_[0], C = shape_[1], T = shape_[2] * shape_[3], Cp = padded_channels();
    a_cat_.resize(C, T * r);
    a_packed_.assign(static_cast<std::size_t>(T * r * Cp), 0.0f);
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t t = 0; t < T; ++t) {
          a_cat_(c, t * r + j) = w[(j * C + c) * T + t];
          a_packed_[static_cast<std::size_t>((t * r + j) * Cp + c)] = w[(j * C + c) * T + t];
        }
  }

  /// Output pixels per block of the weight gradient's reduction (fixed, so
  /// that the blocks' partial sums are added in the same order at every thread count).
  static constexpr std::int64_t weight_block_pixels = 256;

  /// u [N, r, OH, OW] (channels-last) = conv(src, weights).
  void forward(const Tensor& src, Tensor& u) const {
    forward(src, u, [](std::int64_t, std::int64_t) {});
  }

  /// forward(), calling rows_done(p0, p1) for each range of output pixels
  /// [p0, p1) (flattened over n, oh, ow) as soon as its u rows are computed, on
  /// the thread that computed them, inside the same parallel region (an
  /// epilogue reads those rows while they are in cache and costs no second
  /// region). The ranges cover [0, N OH OW) once; rows_done must not throw.
  template <class RowsDone>
  void forward(const Tensor& src, Tensor& u, RowsDone&& rows_done) const {
    const Shape out = output_shape(src.shape());
    thread_local Tensor x_scratch;
    const Tensor& x = detail::as_layout(src, layout::nhwc, x_scratch);
    const detail::thin_conv_geometry g = geometry(x.shape(), out);
    u.ensure(out, layout::nhwc);
    const std::int64_t P = g.N * g.OH * g.OW;
    // Chunks of output pixels, enough for every thread and small enough to balance.
    const std::int64_t chunk = std::max<std::int64_t>(16, P / (8 * std::max(1, num_threads())));
    const std::int64_t chunks = (P + chunk - 1) / chunk;
    const isa_tier tier = active_isa();
    const float* X = x.data();
    const float* A = a_packed_.data();
    float* U = u.data();
#pragma omp parallel for schedule(static) if (chunks > 1 && P * g.KH * g.KW * g.Cp * g.r >= parallel_min_work)
    for (std::int64_t k = 0; k < chunks; ++k) {
      const std::int64_t p0 = k * chunk, p1 = std::min(P, (k + 1) * chunk);
      detail::thin_conv_rows(g, X, A, p0, p1, U, tier);
      rows_done(p0, p1);
    }
  }

  /// u = conv(src, weights) as forward(), by shift-and-add: one GEMM Y = X
  /// A_cat over every input pixel and tap (oneDNN), then each output pixel
  /// adds its in-bounds taps' r-vectors in tap order. The same values to float
  /// rounding; adapters' inference and their default (shift_add) calibration
  /// kernels use it, so their results stay bitwise those of earlier releases.
  void forward_shift_add(const Tensor& src, Tensor& u) const {
    const Shape out = output_shape(src.shape());
    thread_local Tensor x_scratch;
    const Tensor& x = detail::as_layout(src, layout::nhwc, x_scratch);
    const auto N = out[0], r = shape_[0], OHW = out[2] * out[3], HW = x.dim(2) * x.dim(3), C = shape_[1];
    const auto OW = out[3], W = x.dim(3), sw = params_.stride[1], Tr = a_cat_.cols();
    // Y^T [T r, N H W]: row t r + j holds tap t of output channel j for every input pixel.
    thread_local Tensor yt;
    yt.ensure(Shape{Tr, N * HW});
    detail::gemm({.M = Tr, .N = N * HW, .K = C, .ta = true, .tb = true}, a_cat_.data(), x.data(), yt.data());  // A_cat^T X^T
    u.ensure(out, layout::nhwc);
    const float* Y = yt.data();
    float* U = u.data();
#pragma omp parallel
    {
      std::vector<float> ut(static_cast<std::size_t>(r * OHW));  // one image's u, channel-major
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < N; ++n) {
        std::fill(ut.begin(), ut.end(), 0.0f);
        for_each_run(out, x.shape(), [&](std::int64_t t, std::int64_t oh, std::int64_t ih, std::int64_t lo,
                                         std::int64_t hi, std::int64_t off) {
          for (std::int64_t j = 0; j < r; ++j) {
            float* dst = ut.data() + j * OHW + oh * OW;
            const float* from = Y + (t * r + j) * N * HW + n * HW + ih * W + off;
            for (std::int64_t ow = lo; ow < hi; ++ow) dst[ow] += from[ow * sw];
          }
        });
        float* un = U + n * OHW * r;
        for (std::int64_t p = 0; p < OHW; ++p)
          for (std::int64_t j = 0; j < r; ++j) un[p * r + j] = ut[static_cast<std::size_t>(j * OHW + p)];
      }
    }
  }

  /// The weight gradient [r, C, kh, kw] and, with `diff_src`, the input
  /// gradient (channels-last) of L given du = dL/du ([N, r, OH, OW]).
  void backward(const Tensor& src, const Tensor& diff_u, Tensor& diff_weights, Tensor* diff_src = nullptr) const {
    const Shape out = output_shape(src.shape());
    check_same_shape("thin_conv2d::backward: diff_u", diff_u.shape(), out);
    thread_local Tensor x_scratch, du_scratch;
    const Tensor& x = detail::as_layout(src, layout::nhwc, x_scratch);
    const Tensor& du = detail::as_layout(diff_u, layout::nhwc, du_scratch);
    const detail::thin_conv_geometry g = geometry(x.shape(), out);
    const auto r = g.r, C = g.C, Cp = g.Cp, T = g.KH * g.KW, P = g.N * g.OH * g.OW;
    // dA: per block of output pixels a partial [T][r][Cp], the partials added in block order.
    const std::int64_t blocks = (P + weight_block_pixels - 1) / weight_block_pixels, len = T * r * Cp;
    thread_local std::vector<float> part;
    part.assign(static_cast<std::size_t>(std::max<std::int64_t>(blocks, 1) * len), 0.0f);  // zeros for an empty batch
    const isa_tier tier = active_isa();
    const float* X = x.data();
    const float* DU = du.data();
    float* parts = part.data();
#pragma omp parallel for schedule(static) if (blocks > 1 && P * T * Cp * r >= parallel_min_work)
    for (std::int64_t b = 0; b < blocks; ++b) {
      detail::thin_conv_weight_rows(g, X, DU, b * weight_block_pixels, std::min(P, (b + 1) * weight_block_pixels),
                                    parts + b * len, tier);
    }
    for (std::int64_t b = 1; b < blocks; ++b)
      for (std::int64_t i = 0; i < len; ++i) parts[i] += parts[b * len + i];
    diff_weights.ensure(shape_);
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t t = 0; t < T; ++t) diff_weights[(j * C + c) * T + t] = parts[(t * r + j) * Cp + c];
    if (diff_src) backward_data(du, src.shape(), *diff_src);
  }

  /// backward() by shift-and-add: dL/du scattered to the input pixels each
  /// tap read, then dA_cat = X^T D on oneDNN's GEMM (whose reduction over
  /// pixels rounds differently at other thread counts). The same values to
  /// float rounding; the bits of rimc's calibrations before the direct kernel.
  void backward_shift_add(const Tensor& src, const Tensor& diff_u, Tensor& diff_weights, Tensor* diff_src = nullptr) const {
    const Shape out = output_shape(src.shape());
    check_same_shape("thin_conv2d::backward: diff_u", diff_u.shape(), out);
    thread_local Tensor x_scratch;
    const Tensor& x = detail::as_layout(src, layout::nhwc, x_scratch);
    const float* D = scatter(diff_u, out, x.shape());
    const auto N = out[0], HW = x.dim(2) * x.dim(3), C = shape_[1], Tr = a_cat_.cols();
    // dA_cat [C, T r] = X^T D;  dX [N H W, C] = D A_cat^T.
    thread_local RowMatrixXf g;
    g.resize(C, Tr);
    detail::gemm({.M = C, .N = Tr, .K = N * HW, .ta = true, .tb = true}, x.data(), D, g.data());
    if (diff_src) {
      diff_src->ensure(src.shape(), layout::nhwc);
      detail::gemm({.M = N * HW, .N = C, .K = Tr, .ta = true, .tb = true}, D, a_cat_.data(), diff_src->data());
    }
    diff_weights.ensure(shape_);
    const auto r = shape_[0], T = shape_[2] * shape_[3];
    for (std::int64_t j = 0; j < r; ++j)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t t = 0; t < T; ++t) diff_weights[(j * C + c) * T + t] = g(c, t * r + j);
  }

  /// The input gradient alone (channels-last, shape `src_shape`) given du = dL/du.
  void backward_data(const Tensor& diff_u, const Shape& src_shape, Tensor& diff_src) const {
    const Shape out = output_shape(src_shape);
    check_same_shape("thin_conv2d::backward_data: diff_u", diff_u.shape(), out);
    const float* D = scatter(diff_u, out, src_shape);
    const auto N = out[0], HW = src_shape[2] * src_shape[3], C = shape_[1], Tr = a_cat_.cols();
    diff_src.ensure(src_shape, layout::nhwc);
    detail::gemm({.M = N * HW, .N = C, .K = Tr, .ta = true, .tb = true}, D, a_cat_.data(), diff_src.data());
  }

 private:
  /// D^T [T r, N H W]: du scattered back to the input pixel each tap read (per-thread storage).
  const float* scatter(const Tensor& diff_u, const Shape& out, const Shape& src) const {
    thread_local Tensor du_scratch;
    const Tensor& du = detail::as_layout(diff_u, layout::nhwc, du_scratch);
    const auto N = out[0], r = shape_[0], OHW = out[2] * out[3], HW = src[2] * src[3];
    const auto OW = out[3], W = src[3], sw = params_.stride[1], Tr = a_cat_.cols();
    thread_local Tensor dt;
    dt.ensure(Shape{Tr, N * HW});
    float* D = dt.data();
    const float* DU = du.data();
#pragma omp parallel
    {
      std::vector<float> dut(static_cast<std::size_t>(r * OHW));
#pragma omp for schedule(static)
      for (std::int64_t n = 0; n < N; ++n) {
        for (std::int64_t t = 0; t < Tr; ++t) std::fill_n(D + t * N * HW + n * HW, HW, 0.0f);
        const float* dun = DU + n * OHW * r;
        for (std::int64_t p = 0; p < OHW; ++p)
          for (std::int64_t j = 0; j < r; ++j) dut[static_cast<std::size_t>(j * OHW + p)] = dun[p * r + j];
        for_each_run(out, src, [&](std::int64_t t, std::int64_t oh, std::int64_t ih, std::int64_t lo, std::int64_t hi,
                                   std::int64_t off) {
          for (std::int64_t j = 0; j < r; ++j) {
            const float* from = dut.data() + j * OHW + oh * OW;
            float* dst = D + (t * r + j) * N * HW + n * HW + ih * W + off;
            for (std::int64_t ow = lo; ow < hi; ++ow) dst[ow * sw] += from[ow];
          }
        });
      }
    }
    return D;
  }

  /// For every tap t and output row oh of one image whose input row ih is in
  /// bounds, calls f(t, oh, ih, lo, hi, off): output columns [lo, hi) read
  /// input column ow * stride + off, all in bounds.
  template <class F>
  void for_each_run(const Shape& out, const Shape& src, F&& f) const {
    const auto OH = out[2], OW = out[3], H = src[2], W = src[3], KH = shape_[2], KW = shape_[3];
    const auto sw = params_.stride[1];
    for (std::int64_t kh = 0; kh < KH; ++kh)
      for (std::int64_t kw = 0; kw < KW; ++kw) {
        const auto off = kw * params_.dilation[1] - params_.padding[1];
        const std::int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
        const std::int64_t hi = W - 1 - off < 0 ? 0 : std::min(OW, (W - 1 - off) / sw + 1);
        if (lo >= hi) continue;
        for (std::int64_t oh = 0; oh < OH; ++oh) {
          const auto ih = oh * params_.stride[0] - params_.padding[0] + kh * params_.dilation[0];
          if (ih >= 0 && ih < H) f(kh * KW + kw, oh, ih, lo, hi, off);
        }
      }
  }

  /// C rounded up to a multiple of 16 (the direct kernels' channel blocks).
  [[nodiscard]] std::int64_t padded_channels() const noexcept { return (shape_[1] + 15) / 16 * 16; }

  /// The direct kernels' geometry for a channels-last source `src` and output `out`.
  [[nodiscard]] detail::thin_conv_geometry geometry(const Shape& src, const Shape& out) const {
    return detail::thin_geometry(src, out, shape_, params_);
  }

  /// Multiply-adds below which the direct kernels run on the calling thread alone.
  static constexpr std::int64_t parallel_min_work = 1 << 16;

  conv2d_params params_;
  Shape shape_;
  RowMatrixXf a_cat_;             ///< [C, T r]: column t r + j holds tap t of output channel j (input gradient)
  std::vector<float> a_packed_;  ///< [T][r][Cp]: the direct forward's weights, zero beyond C
};

}  // namespace rimc
