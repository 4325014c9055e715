#pragma once
/// \file
/// rimc::pool2d (max / average pooling) and rimc::global_avg_pool2d, run by
/// oneDNN in the source's own layout, with their backward-data passes.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/onednn.hpp>
#include <rimc/kernels/params.hpp>

#include <memory>
#include <utility>

namespace rimc {

/// A 2-D max or average pooling window (PyTorch semantics, floor mode).
///
/// The destination keeps the source's layout. Max pooling's backward pass
/// recomputes the forward to find each window's maximum (oneDNN's
/// workspace), so only the source is needed, not a stored index map.
class pool2d {
 public:
  /// A pooling window of geometry `params`; value_error on an invalid one.
  explicit pool2d(pool2d_params params) : s_(std::make_unique<state>()) {
    (void)pool2d_output_shape(Shape{1, 1, params.kernel[0], params.kernel[1]}, params);
    s_->params = params;
  }
  /// Movable (the moved-from object may only be assigned to or destroyed); not copyable.
  ///@{
  pool2d(pool2d&&) noexcept = default;
  pool2d& operator=(pool2d&&) noexcept = default;
  ///@}

  /// Kind, window, stride, padding and count_include_pad.
  [[nodiscard]] const pool2d_params& params() const noexcept { return s_->params; }
  /// Destination shape for a source of shape `src`.
  [[nodiscard]] Shape output_shape(const Shape& src) const { return pool2d_output_shape(src, s_->params); }

  /// dst = pool(src), in src's layout. `dst` is resized as needed.
  void forward(const Tensor& src, Tensor& dst) const {
    if (&src == &dst) {
      Tensor out;
      forward(src, out);
      dst = std::move(out);
      return;
    }
    const Shape out = output_shape(src.shape());
    const auto e = entry_for(src.shape(), src.memory_layout());
    dst.ensure(out, src.memory_layout());
    detail::onednn_call("pool2d forward", [&] {
      detail::execute(e->fwd_inference, {{DNNL_ARG_SRC, detail::wrap(src)},
                                         {DNNL_ARG_DST, detail::wrap(dst)},
                                         {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->fwd_inference_scratchpad)}});
    });
  }
  /// \overload
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// diff_src = dL/dsrc given diff_dst = dL/ddst and the forward's source
  /// (max: the gradient goes to each window's maximum). diff_src has src's layout.
  void backward_data(const Tensor& diff_dst, const Tensor& src, Tensor& diff_src) const {
    check_same_shape("pool2d::backward_data: diff_dst", diff_dst.shape(), output_shape(src.shape()));
    if (&diff_src == &diff_dst || &diff_src == &src) {
      Tensor out;
      backward_data(diff_dst, src, out);
      diff_src = std::move(out);
      return;
    }
    const auto e = entry_for(src.shape(), src.memory_layout());
    thread_local Tensor d_scratch;
    const Tensor& d = detail::as_layout(diff_dst, src.memory_layout(), d_scratch);
    diff_src.ensure(src.shape(), src.memory_layout());
    detail::onednn_call("pool2d backward_data", [&] {
      std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_DIFF_DST, detail::wrap(d)},
                                                 {DNNL_ARG_DIFF_SRC, detail::wrap(diff_src)}};
      if (s_->params.kind == pool_kind::max) {
        dnnl::memory ws(e->fwd_training_pd.workspace_desc(), detail::cpu_engine());
        dnnl::memory dst(e->fwd_training_pd.dst_desc(), detail::cpu_engine());
        detail::execute(e->fwd_training,
                        {{DNNL_ARG_SRC, detail::wrap(src)},
                         {DNNL_ARG_DST, dst},
                         {DNNL_ARG_WORKSPACE, ws},
                         {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->fwd_training_pd.scratchpad_desc())}});
        args.emplace(DNNL_ARG_WORKSPACE, ws);
      }
      args.emplace(DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->bwd_scratchpad));
      detail::execute(e->bwd, args);
    });
  }
  /// \overload
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst, const Tensor& src) const {
    Tensor diff_src;
    backward_data(diff_dst, src, diff_src);
    return diff_src;
  }

 private:
  struct entry {
    dnnl::pooling_forward fwd_inference;
    dnnl::memory::desc fwd_inference_scratchpad;
    dnnl::pooling_forward::primitive_desc fwd_training_pd;
    dnnl::pooling_forward fwd_training;
    dnnl::pooling_backward bwd;
    dnnl::memory::desc bwd_scratchpad;
  };
  struct state {
    pool2d_params params;
    detail::primitive_cache<detail::kernel_key, entry> cache;
  };

  [[nodiscard]] std::shared_ptr<const entry> entry_for(const Shape& src, layout l) const {
    return s_->cache.get(detail::kernel_key{src, l, num_threads(), 0, {}, layout::nchw}, [&] {
      return detail::onednn_call("pool2d: creating primitives", [&] {
        const auto& p = s_->params;
        const auto alg = p.kind == pool_kind::max ? dnnl::algorithm::pooling_max
                         : p.count_include_pad    ? dnnl::algorithm::pooling_avg_include_padding
                                                  : dnnl::algorithm::pooling_avg_exclude_padding;
        const auto src_md = detail::plain_md(src, l), dst_md = detail::plain_md(output_shape(src), l);
        const auto strides = detail::to_dims(p.stride), kernel = detail::to_dims(p.kernel),
                   pad = detail::to_dims(p.padding);
        const auto& eng = detail::cpu_engine();
        auto make_fwd = [&](dnnl::prop_kind prop) {
          return dnnl::pooling_forward::primitive_desc(
              dnnl::pooling_forward::desc(prop, alg, src_md, dst_md, strides, kernel, pad, pad),
              detail::user_scratchpad(), eng);
        };
        const auto inf = make_fwd(dnnl::prop_kind::forward_inference);
        const auto train = make_fwd(dnnl::prop_kind::forward_training);
        const dnnl::pooling_backward::primitive_desc bwd(
            dnnl::pooling_backward::desc(alg, src_md, dst_md, strides, kernel, pad, pad), detail::user_scratchpad(),
            eng, train);
        return entry{dnnl::pooling_forward(inf),  inf.scratchpad_desc(),       train, dnnl::pooling_forward(train),
                     dnnl::pooling_backward(bwd), bwd.scratchpad_desc()};
      });
    });
  }

  std::unique_ptr<state> s_;
};

/// dst [N, C, 1, 1] = mean of src [N, C, H, W] over H and W, in src's layout.
inline void global_avg_pool2d(const Tensor& src, Tensor& dst) {
  detail::check_rank4("global_avg_pool2d", "src", src.shape());
  thread_local std::vector<std::pair<Shape, pool2d>> pools;
  const std::array<std::int64_t, 2> hw{src.dim(2), src.dim(3)};
  for (auto& [key, pool] : pools)
    if (key == Shape{hw[0], hw[1]}) return pool.forward(src, dst);
  pools.emplace_back(Shape{hw[0], hw[1]}, pool2d(pool2d_params{pool_kind::avg, hw, {1, 1}, {0, 0}, true}));
  pools.back().second.forward(src, dst);
}
/// \overload
[[nodiscard]] inline Tensor global_avg_pool2d(const Tensor& src) {
  Tensor dst;
  global_avg_pool2d(src, dst);
  return dst;
}

/// diff_src [N, C, H, W] = diff_dst [N, C, 1, 1] / (H W) broadcast, in `layout_of_src`.
inline void global_avg_pool2d_backward(const Tensor& diff_dst, const Shape& src_shape, Tensor& diff_src,
                                       layout src_layout = layout::nhwc) {
  detail::check_rank4("global_avg_pool2d_backward", "src_shape", src_shape);
  check_same_shape("global_avg_pool2d_backward: diff_dst", diff_dst.shape(),
                   Shape{src_shape[0], src_shape[1], 1, 1});
  const auto N = src_shape[0], C = src_shape[1], HW = src_shape[2] * src_shape[3];
  if (&diff_src == &diff_dst) {
    Tensor out;
    global_avg_pool2d_backward(diff_dst, src_shape, out, src_layout);
    diff_src = std::move(out);
    return;
  }
  diff_src.ensure(src_shape, src_layout);
  const float inv = 1.0f / static_cast<float>(HW);
  const float* d = diff_dst.data();  // [N, C, 1, 1]: identical in both layouts
  float* g = diff_src.data();
  for (std::int64_t n = 0; n < N; ++n) {
    if (src_layout == layout::nhwc) {
      for (std::int64_t p = 0; p < HW; ++p)
        for (std::int64_t c = 0; c < C; ++c) g[(n * HW + p) * C + c] = d[n * C + c] * inv;
    } else {
      for (std::int64_t c = 0; c < C; ++c) std::fill_n(g + (n * C + c) * HW, HW, d[n * C + c] * inv);
    }
  }
}

}  // namespace rimc
