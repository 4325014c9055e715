#pragma once
/// \file
/// rimc::conv2d: a frozen 2-D convolution (PyTorch semantics) run by oneDNN,
/// with its backward-data pass for input gradients.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace rimc {

/// A frozen convolution: weights [O, C / groups, kh, kw], optional bias [O].
///
/// Primitives are created once per (source shape, layout, thread count) and
/// cached; the weights are reordered into each blocked format a primitive
/// asks for once, not per call. Outputs come back in the layout oneDNN's
/// fastest implementation produces (channels-last on x86), which the next
/// kernel consumes without a conversion. `forward` and `backward_data` may
/// be called concurrently; `set_weights` may not overlap them.
class conv2d {
 public:
  /// A convolution of `weights` [O, C / groups, kh, kw] with optional `bias` [O]; shape_error on a mismatch.
  conv2d(Tensor weights, std::optional<Tensor> bias = std::nullopt, conv2d_params params = {})
      : s_(std::make_unique<state>()) {
    if (weights.rank() != 4) {
      throw shape_error(detail::concat("conv2d: weights must be rank 4 [O, C/groups, kh, kw], got ",
                                       weights.shape().to_string()));
    }
    if (bias && (bias->rank() != 1 || bias->dim(0) != weights.dim(0))) {
      throw shape_error(detail::concat("conv2d: bias ", bias->shape().to_string(), " does not match weights ",
                                       weights.shape().to_string(), " (expected [", weights.dim(0), "])"));
    }
    s_->params = params;
    // Validates the geometry once against a source that fits the kernel.
    const auto& w = weights.shape();
    (void)conv2d_output_shape(Shape{1, w[1] * params.groups, params.dilation[0] * (w[2] - 1) + 1,
                                    params.dilation[1] * (w[3] - 1) + 1},
                              w, params);
    const auto plain_md = plain_weights_md(w);
    s_->weights.reset(weights.to_layout(layout::nchw), plain_md);
    s_->bias = std::move(bias);
    if (s_->bias) s_->bias_memory = detail::wrap(*s_->bias);
  }

  /// Movable (the moved-from object may only be assigned to or destroyed); not copyable.
  ///@{
  conv2d(conv2d&&) noexcept = default;
  conv2d& operator=(conv2d&&) noexcept = default;
  ///@}

  /// Weights [O, C / groups, kh, kw], nchw.
  [[nodiscard]] const Tensor& weights() const noexcept { return s_->weights.plain(); }
  /// Bias [O], if any.
  [[nodiscard]] const std::optional<Tensor>& bias() const noexcept { return s_->bias; }
  /// Stride, padding, dilation, groups and fused ReLU.
  [[nodiscard]] const conv2d_params& params() const noexcept { return s_->params; }

  /// Replaces the weights (same shape): packed copies are redone on next use.
  void set_weights(Tensor weights) {
    check_same_shape("conv2d::set_weights", weights.shape(), this->weights().shape());
    s_->weights.reset(weights.to_layout(layout::nchw));
  }

  /// Replaces the bias (shape [O]); the bias must have existed at construction.
  void set_bias(Tensor bias) {
    if (!s_->bias) throw value_error("conv2d::set_bias: this convolution was built without a bias");
    check_same_shape("conv2d::set_bias", bias.shape(), s_->bias->shape());
    *s_->bias = std::move(bias);
    s_->bias_memory = detail::wrap(*s_->bias);
  }

  /// Destination shape for a source of shape `src`.
  [[nodiscard]] Shape output_shape(const Shape& src) const {
    return conv2d_output_shape(src, weights().shape(), s_->params);
  }

  /// dst = conv(src) + bias (then ReLU if fused). `dst` is resized as needed.
  void forward(const Tensor& src, Tensor& dst) const { run_forward(src, dst, s_->params.relu); }
  /// dst = relu(conv(src) + bias), the ReLU in the kernel's own pass whatever params().relu says.
  void forward_relu(const Tensor& src, Tensor& dst) const { run_forward(src, dst, true); }
  /// \overload
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// diff_src = transpose of the convolution (no bias, no ReLU) applied to
  /// diff_dst: the input gradient dL/dsrc given dL/ddst.
  void backward_data(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src) const {
    check_same_shape("conv2d::backward_data: diff_dst", diff_dst.shape(), output_shape(src_shape));
    if (&diff_dst == &diff_src) {
      Tensor out;
      backward_data(diff_dst, src_shape, out);
      diff_src = std::move(out);
      return;
    }
    const auto e = bwd_entry(diff_dst, src_shape);
    thread_local Tensor diff_scratch;
    const Tensor& d = detail::as_layout(diff_dst, e->dst_layout, diff_scratch);
    diff_src.ensure(src_shape, e->src_layout);
    auto& args = detail::thread_args();
    args[DNNL_ARG_DIFF_DST] = detail::wrap(e->pd.diff_dst_desc(), d.data());
    args[DNNL_ARG_WEIGHTS] = s_->weights.get(e->pd.weights_desc());
    args[DNNL_ARG_DIFF_SRC] = detail::wrap(e->pd.diff_src_desc(), diff_src.data());
    args[DNNL_ARG_SCRATCHPAD] = detail::thread_scratchpad(e->pd.scratchpad_desc());
    detail::onednn_call("conv2d backward_data", [&] { detail::execute(e->prim, args); });
  }
  /// \overload
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst, const Shape& src_shape) const {
    Tensor diff_src;
    backward_data(diff_dst, src_shape, diff_src);
    return diff_src;
  }

  /// diff_weights [O, C/groups, kh, kw] = dL/dweights given the forward's
  /// source and diff_dst = dL/ddst (sum over batch and positions); with
  /// `diff_bias`, also dL/dbias [O]. Frozen layers never need this; layers
  /// whose weights are trained digitally (adapters) do.
  void backward_weights(const Tensor& src, const Tensor& diff_dst, Tensor& diff_weights,
                        Tensor* diff_bias = nullptr) const {
    check_same_shape("conv2d::backward_weights: diff_dst", diff_dst.shape(), output_shape(src.shape()));
    auto key = detail::make_key(src, diff_bias ? 4 : 3);
    key.layout2 = diff_dst.memory_layout();
    const auto e = s_->bwd_w.get(key, [&] {
      return detail::onednn_call("conv2d: creating the backward-weights primitive", [&] {
        const auto& p = s_->params;
        const Shape& w = weights().shape();
        const Shape dst = output_shape(src.shape());
        layout sl{}, dl{};
        const auto hint = make_plain_fwd_pd(src.shape(), dnnl::prop_kind::forward_training, false, sl, dl);
        const auto strides = detail::to_dims(p.stride), dil = detail::to_dims(p.dilation, 1),
                   pad = detail::to_dims(p.padding);
        const auto w_md = weights_md(w, detail::dnnl_tag::any);
        auto make = [&](const dnnl::memory::desc& src_md, const dnnl::memory::desc& dst_md) {
          auto desc = diff_bias ? dnnl::convolution_backward_weights::desc(
                                      dnnl::algorithm::convolution_direct, src_md, w_md,
                                      detail::plain_md(Shape{w[0]}), dst_md, strides, dil, pad, pad)
                                : dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct,
                                                                           src_md, w_md, dst_md, strides, dil, pad,
                                                                           pad);
          return dnnl::convolution_backward_weights::primitive_desc(desc, detail::user_scratchpad(),
                                                                    detail::cpu_engine(), hint);
        };
        // The tensors' own layouts first (no reorders per call), oneDNN's choice if that is not supported.
        std::optional<dnnl::convolution_backward_weights::primitive_desc> pd;
        try {
          pd = make(detail::plain_md(src), detail::plain_md(dst, diff_dst.memory_layout()));
        } catch (const dnnl::error&) {
          pd = make(dnnl::memory::desc(detail::to_dims(src.shape()), detail::dnnl_dt::f32, detail::dnnl_tag::any),
                    dnnl::memory::desc(detail::to_dims(dst), detail::dnnl_dt::f32, detail::dnnl_tag::any));
        }
        return bwd_w_state{*pd, dnnl::convolution_backward_weights(*pd)};
      });
    });
    // Source and gradient in the formats the primitive wants (reordered only when they differ).
    auto bring = [](const Tensor& t, const dnnl::memory::desc& want) {
      if (detail::plain_md(t) == want) return detail::wrap(t);
      dnnl::memory m(want, detail::cpu_engine());
      detail::reorder(detail::wrap(t), m);
      return m;
    };
    auto src_m = bring(src, e->pd.src_desc());
    auto dst_m = bring(diff_dst, e->pd.diff_dst_desc());
    diff_weights.ensure(weights().shape());
    const auto plain_w = plain_weights_md(weights().shape());
    dnnl::memory dw = e->pd.diff_weights_desc() == plain_w ? detail::wrap(plain_w, diff_weights.data())
                                                           : dnnl::memory(e->pd.diff_weights_desc(), detail::cpu_engine());
    auto& args = detail::thread_args();
    args[DNNL_ARG_SRC] = src_m;
    args[DNNL_ARG_DIFF_DST] = dst_m;
    args[DNNL_ARG_DIFF_WEIGHTS] = dw;
    args[DNNL_ARG_SCRATCHPAD] = detail::thread_scratchpad(e->pd.scratchpad_desc());
    if (diff_bias) {
      diff_bias->ensure(Shape{weights().shape()[0]});
      args[DNNL_ARG_DIFF_BIAS] = detail::wrap(*diff_bias);
    }
    detail::onednn_call("conv2d backward_weights", [&] {
      detail::execute(e->prim, args);
      if (!(e->pd.diff_weights_desc() == plain_w)) detail::reorder(dw, detail::wrap(plain_w, diff_weights.data()));
    });
  }
  /// oneDNN's name of the implementation of backward_weights for these operands.
  [[nodiscard]] std::string backward_weights_implementation(const Tensor& src, const Tensor& diff_dst) const {
    Tensor dw;
    backward_weights(src, diff_dst, dw);
    auto key = detail::make_key(src, 3);
    key.layout2 = diff_dst.memory_layout();
    return s_->bwd_w.get(key, [&]() -> bwd_w_state { throw backend_error("conv2d: no backward-weights primitive"); })
        ->pd.impl_info_str();
  }

  /// \overload
  [[nodiscard]] Tensor backward_weights(const Tensor& src, const Tensor& diff_dst) const {
    Tensor diff_weights;
    backward_weights(src, diff_dst, diff_weights);
    return diff_weights;
  }

  /// oneDNN's name of the implementation that runs a source of this shape and layout.
  [[nodiscard]] std::string implementation(const Shape& src, layout l = layout::nhwc) const {
    return fwd_entry(Tensor::empty(src, l), false, s_->params.relu)->pd.impl_info_str();
  }

  /// oneDNN's name of the implementation that runs backward-data for a source of this shape.
  [[nodiscard]] std::string backward_implementation(const Shape& src) const {
    return bwd_entry(Tensor::empty(output_shape(src), layout::nhwc), src)->pd.impl_info_str();
  }

  /// dst (f32, channels-last, resized as needed) = the convolution of `src`, given as bfloat16
  /// bit patterns of a channels-last tensor of shape `src_shape`, with the weights rounded to
  /// bfloat16 (nearest, ties to even): products of bfloat16 numbers summed in f32, no bias, no
  /// ReLU. An approximate convolution for a fast estimate (the read variance's shortcut in
  /// analog_conv2d); backend_error where oneDNN has no such convolution, value_error with a bias.
  void forward_bf16(const std::uint16_t* src, const Shape& src_shape, Tensor& dst) const {
    if (s_->bias) throw value_error("conv2d::forward_bf16: the convolution has a bias; forward_bf16 adds none");
    const auto e = bf16_entry(src_shape);
    dst.ensure(e->dst_shape, layout::nhwc);
    auto& args = detail::thread_args();
    args[DNNL_ARG_SRC] = dnnl::memory(e->pd.src_desc(), detail::cpu_engine(), const_cast<std::uint16_t*>(src));
    args[DNNL_ARG_WEIGHTS] = s_->weights.get(e->pd.weights_desc());
    args[DNNL_ARG_DST] = detail::wrap(e->pd.dst_desc(), dst.data());
    args[DNNL_ARG_SCRATCHPAD] = detail::thread_scratchpad(e->pd.scratchpad_desc());
    detail::onednn_call("conv2d forward_bf16", [&] { detail::execute(e->prim, args); });
  }

  /// oneDNN's implementation of forward_bf16 for a source of this shape, or "" where it has none.
  [[nodiscard]] std::string bf16_implementation(const Shape& src_shape) const {
    try {
      return bf16_entry(src_shape)->pd.impl_info_str();
    } catch (const backend_error&) {
      return {};
    }
  }

  /// The source layout the forward primitive for this shape consumes directly.
  [[nodiscard]] layout preferred_src_layout(const Shape& src) const {
    return fwd_entry(Tensor::empty(src, layout::nhwc), false, s_->params.relu)->src_layout;
  }

  /// Packed weight copies held (one per distinct blocked format requested).
  [[nodiscard]] std::size_t packed_weight_count() const { return s_->weights.packed_count(); }

 private:
  using fwd_pd = dnnl::convolution_forward::primitive_desc;

  struct fwd_state {
    fwd_pd pd;
    dnnl::convolution_forward prim;
    layout src_layout, dst_layout;
    Shape dst_shape;
  };
  struct bwd_state {
    dnnl::convolution_backward_data::primitive_desc pd;
    dnnl::convolution_backward_data prim;
    layout src_layout, dst_layout;
  };
  struct bwd_w_state {
    dnnl::convolution_backward_weights::primitive_desc pd;
    dnnl::convolution_backward_weights prim;
  };
  struct state {
    conv2d_params params;
    detail::packed_weights weights;
    std::optional<Tensor> bias;
    dnnl::memory bias_memory;  ///< wraps *bias
    detail::primitive_cache<detail::kernel_key, fwd_state> fwd;
    detail::primitive_cache<detail::kernel_key, bwd_state> bwd;
    detail::primitive_cache<detail::kernel_key, bwd_w_state> bwd_w;
  };

  /// forward / forward_relu: the ReLU fused when `relu`.
  void run_forward(const Tensor& src, Tensor& dst, bool relu) const {
    if (&src == &dst) {
      Tensor out;
      run_forward(src, out, relu);
      dst = std::move(out);
      return;
    }
    const auto e = fwd_entry(src, false, relu);
    thread_local Tensor src_scratch;
    const Tensor& s = detail::as_layout(src, e->src_layout, src_scratch);
    dst.ensure(e->dst_shape, e->dst_layout);
    auto& args = detail::thread_args();
    args[DNNL_ARG_SRC] = detail::wrap(e->pd.src_desc(), s.data());
    args[DNNL_ARG_WEIGHTS] = s_->weights.get(e->pd.weights_desc());
    args[DNNL_ARG_DST] = detail::wrap(e->pd.dst_desc(), dst.data());
    if (s_->bias) args[DNNL_ARG_BIAS] = s_->bias_memory;
    args[DNNL_ARG_SCRATCHPAD] = detail::thread_scratchpad(e->pd.scratchpad_desc());
    detail::onednn_call("conv2d forward", [&] { detail::execute(e->prim, args); });
  }

  [[nodiscard]] dnnl::memory::desc weights_md(const Shape& w, dnnl::memory::format_tag tag,
                                              detail::dnnl_dt type = detail::dnnl_dt::f32) const {
    const auto g = s_->params.groups;
    if (g == 1) return {detail::to_dims(w), type, tag};
    return {{g, w[0] / g, w[1], w[2], w[3]}, type, tag};
  }
  [[nodiscard]] dnnl::memory::desc plain_weights_md(const Shape& w) const {
    return weights_md(w, s_->params.groups == 1 ? dnnl::memory::format_tag::oihw : dnnl::memory::format_tag::goihw);
  }

  /// A forward primitive descriptor with src/dst in `tag` (any = oneDNN's choice), with a ReLU post-op when `relu`.
  [[nodiscard]] fwd_pd make_fwd_pd(const Shape& src, dnnl::prop_kind prop, dnnl::memory::format_tag tag,
                                   bool relu) const {
    const auto& p = s_->params;
    const Shape& w = weights().shape();
    const Shape dst = output_shape(src);
    const dnnl::memory::desc src_md(detail::to_dims(src), detail::dnnl_dt::f32, tag);
    const dnnl::memory::desc dst_md(detail::to_dims(dst), detail::dnnl_dt::f32, tag);
    const auto w_md = weights_md(w, dnnl::memory::format_tag::any);
    const auto strides = detail::to_dims(p.stride), dil = detail::to_dims(p.dilation, 1),
               pad = detail::to_dims(p.padding);
    dnnl::primitive_attr attr = detail::user_scratchpad();
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(ops);
    }
    auto desc = s_->bias ? dnnl::convolution_forward::desc(
                               prop, dnnl::algorithm::convolution_direct, src_md, w_md,
                               detail::plain_md(Shape{w[0]}), dst_md, strides, dil, pad, pad)
                         : dnnl::convolution_forward::desc(prop, dnnl::algorithm::convolution_direct, src_md,
                                                           w_md, dst_md, strides, dil, pad, pad);
    return fwd_pd(desc, attr, detail::cpu_engine());
  }

  /// A forward primitive descriptor whose src and dst are plain rimc layouts:
  /// oneDNN's own choice when that is plain, else channels-last.
  [[nodiscard]] fwd_pd make_plain_fwd_pd(const Shape& src, dnnl::prop_kind prop, bool relu, layout& src_l,
                                         layout& dst_l) const {
    const Shape dst = output_shape(src);
    auto pd = make_fwd_pd(src, prop, dnnl::memory::format_tag::any, relu);
    auto sl = detail::layout_of(pd.src_desc(), src);
    auto dl = detail::layout_of(pd.dst_desc(), dst);
    if (!sl || !dl) {
      pd = make_fwd_pd(src, prop, dnnl::memory::format_tag::nhwc, relu);
      sl = dl = layout::nhwc;
    }
    src_l = *sl;
    dst_l = *dl;
    return pd;
  }

  /// The forward primitive for `src` (ReLU fused when `relu`), created on first use.
  [[nodiscard]] std::shared_ptr<const fwd_state> fwd_entry(const Tensor& src, bool training, bool relu) const {
    if (src.rank() != 4) {
      throw shape_error(detail::concat("conv2d: src must be rank 4 (N, C, H, W), got ", src.shape().to_string()));
    }
    return s_->fwd.get(detail::make_key(src, (training ? 1 : 0) + (relu ? 2 : 0)), [&] {
      return detail::onednn_call("conv2d: creating the forward primitive", [&] {
        layout sl{}, dl{};
        auto pd = make_plain_fwd_pd(src.shape(), training ? dnnl::prop_kind::forward_training
                                                          : dnnl::prop_kind::forward_inference,
                                    relu, sl, dl);
        return fwd_state{pd, dnnl::convolution_forward(pd), sl, dl, output_shape(src.shape())};
      });
    });
  }

  /// forward_bf16's primitive for a source of shape `src` (channels-last), created on first use.
  [[nodiscard]] std::shared_ptr<const fwd_state> bf16_entry(const Shape& src) const {
    if (src.rank() != 4) {
      throw shape_error(detail::concat("conv2d: src must be rank 4 (N, C, H, W), got ", src.to_string()));
    }
    return s_->fwd.get(detail::kernel_key{src, layout::nhwc, num_threads(), 16, {}, layout::nchw}, [&] {
      return detail::onednn_call("conv2d: creating the bf16 forward primitive", [&] {
        const auto& p = s_->params;
        const Shape dst = output_shape(src);
        const dnnl::memory::desc src_md(detail::to_dims(src), detail::dnnl_dt::bf16, detail::dnnl_tag::nhwc);
        const dnnl::memory::desc dst_md(detail::to_dims(dst), detail::dnnl_dt::f32, detail::dnnl_tag::nhwc);
        const auto w_md = weights_md(weights().shape(), detail::dnnl_tag::any, detail::dnnl_dt::bf16);
        const dnnl::convolution_forward::desc desc(
            dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md, w_md, dst_md,
            detail::to_dims(p.stride), detail::to_dims(p.dilation, 1), detail::to_dims(p.padding),
            detail::to_dims(p.padding));
        const fwd_pd pd(desc, detail::user_scratchpad(), detail::cpu_engine());
        return fwd_state{pd, dnnl::convolution_forward(pd), layout::nhwc, layout::nhwc, dst};
      });
    });
  }

  [[nodiscard]] std::shared_ptr<const bwd_state> bwd_entry(const Tensor& diff_dst, const Shape& src_shape) const {
    auto key = detail::make_key(diff_dst, 2);
    key.shape2 = src_shape;
    return s_->bwd.get(key, [&] {
      return detail::onednn_call("conv2d: creating the backward-data primitive", [&] {
        const auto& p = s_->params;
        const Shape dst = output_shape(src_shape);
        layout sl{}, dl{};
        const auto hint = make_plain_fwd_pd(src_shape, dnnl::prop_kind::forward_training, false, sl, dl);
        const auto strides = detail::to_dims(p.stride), dil = detail::to_dims(p.dilation, 1),
                   pad = detail::to_dims(p.padding);
        auto make = [&](dnnl::memory::format_tag tag) {
          const dnnl::memory::desc src_md(detail::to_dims(src_shape), detail::dnnl_dt::f32, tag);
          const dnnl::memory::desc dst_md(detail::to_dims(dst), detail::dnnl_dt::f32, tag);
          dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, src_md,
                                                     weights_md(weights().shape(), dnnl::memory::format_tag::any),
                                                     dst_md, strides, dil, pad, pad);
          return dnnl::convolution_backward_data::primitive_desc(desc, detail::user_scratchpad(), detail::cpu_engine(),
                                                                 hint);
        };
        auto pd = make(dnnl::memory::format_tag::any);
        auto bsl = detail::layout_of(pd.diff_src_desc(), src_shape);
        auto bdl = detail::layout_of(pd.diff_dst_desc(), dst);
        if (!bsl || !bdl) {
          pd = make(dnnl::memory::format_tag::nhwc);
          bsl = bdl = layout::nhwc;
        }
        return bwd_state{pd, dnnl::convolution_backward_data(pd), *bsl, *bdl};
      });
    });
  }

  std::unique_ptr<state> s_;
};

}  // namespace rimc
