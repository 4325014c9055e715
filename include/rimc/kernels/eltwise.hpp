#pragma once
/// \file
/// Element-wise kernels run by oneDNN: ReLU and its backward pass, and the
/// residual add. Each works in the tensors' own layout, in place or not.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/onednn.hpp>

#include <memory>

namespace rimc {

namespace detail {
struct relu_entry {
  dnnl::eltwise_forward fwd;
  dnnl::memory::desc fwd_scratchpad;
  dnnl::eltwise_backward bwd;
  dnnl::memory::desc bwd_scratchpad;
};

[[nodiscard]] inline std::shared_ptr<const relu_entry> relu_primitives(const Tensor& t) {
  static primitive_cache<kernel_key, relu_entry> cache(128);
  return cache.get(make_key(t, 0), [&] {
    return onednn_call("relu: creating primitives", [&] {
      const auto md = plain_md(t);
      const auto& eng = cpu_engine();
      const dnnl::eltwise_forward::primitive_desc fwd(
          dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu, md, 0.0f),
          user_scratchpad(), eng);
      const dnnl::eltwise_backward::primitive_desc bwd(
          dnnl::eltwise_backward::desc(dnnl::algorithm::eltwise_relu, md, md, 0.0f), user_scratchpad(), eng, fwd);
      return relu_entry{dnnl::eltwise_forward(fwd), fwd.scratchpad_desc(), dnnl::eltwise_backward(bwd),
                        bwd.scratchpad_desc()};
    });
  });
}
}  // namespace detail

/// dst = max(src, 0) in src's layout; `dst` may be `src` (in place).
inline void relu(const Tensor& src, Tensor& dst) {
  const auto e = detail::relu_primitives(src);
  if (&dst != &src) dst.ensure(src.shape(), src.memory_layout());
  detail::onednn_call("relu", [&] {
    detail::execute(e->fwd, {{DNNL_ARG_SRC, detail::wrap(src)},
                             {DNNL_ARG_DST, detail::wrap(dst)},
                             {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->fwd_scratchpad)}});
  });
}
/// \overload
[[nodiscard]] inline Tensor relu(const Tensor& src) {
  Tensor dst;
  relu(src, dst);
  return dst;
}

/// diff_src = diff_dst where src > 0, else 0 (in src's layout).
inline void relu_backward(const Tensor& diff_dst, const Tensor& src, Tensor& diff_src) {
  check_same_shape("relu_backward: diff_dst vs src", diff_dst.shape(), src.shape());
  const auto e = detail::relu_primitives(src);
  thread_local Tensor d_scratch;
  const Tensor& d = detail::as_layout(diff_dst, src.memory_layout(), d_scratch);
  if (&diff_src == &src) {
    Tensor out;
    relu_backward(diff_dst, src, out);
    diff_src = std::move(out);
    return;
  }
  if (&diff_src != &diff_dst || d.memory_layout() != diff_dst.memory_layout()) {
    diff_src.ensure(src.shape(), src.memory_layout());
  }
  detail::onednn_call("relu_backward", [&] {
    detail::execute(e->bwd, {{DNNL_ARG_SRC, detail::wrap(src)},
                             {DNNL_ARG_DIFF_DST, detail::wrap(d)},
                             {DNNL_ARG_DIFF_SRC, detail::wrap(diff_src)},
                             {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->bwd_scratchpad)}});
  });
}
/// \overload
[[nodiscard]] inline Tensor relu_backward(const Tensor& diff_dst, const Tensor& src) {
  Tensor diff_src;
  relu_backward(diff_dst, src, diff_src);
  return diff_src;
}

/// dst = a + b (shapes equal, layouts may differ), with an optional fused
/// ReLU; dst takes a's layout and may be `a` (in place).
inline void add(const Tensor& a, const Tensor& b, Tensor& dst, bool relu_after = false) {
  check_same_shape("add", a.shape(), b.shape());
  if (&dst == &b && &dst != &a) {
    Tensor out;
    add(a, b, out, relu_after);
    dst = std::move(out);
    return;
  }
  struct entry {
    dnnl::binary prim;
    dnnl::memory::desc scratchpad;
  };
  static detail::primitive_cache<detail::kernel_key, entry> cache(128);
  auto key = detail::make_key(a, relu_after ? 1 : 0);
  key.layout2 = b.memory_layout();
  const auto e = cache.get(key, [&] {
    return detail::onednn_call("add: creating the primitive", [&] {
      const auto a_md = detail::plain_md(a);
      dnnl::primitive_attr attr = detail::user_scratchpad();
      if (relu_after) {
        dnnl::post_ops ops;
        ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        attr.set_post_ops(ops);
      }
      const dnnl::binary::primitive_desc pd(
          dnnl::binary::desc(dnnl::algorithm::binary_add, a_md, detail::plain_md(b), a_md), attr,
          detail::cpu_engine());
      return entry{dnnl::binary(pd), pd.scratchpad_desc()};
    });
  });
  if (&dst != &a) dst.ensure(a.shape(), a.memory_layout());
  detail::onednn_call("add", [&] {
    detail::execute(e->prim, {{DNNL_ARG_SRC_0, detail::wrap(a)},
                              {DNNL_ARG_SRC_1, detail::wrap(b)},
                              {DNNL_ARG_DST, detail::wrap(dst)},
                              {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->scratchpad)}});
  });
}
/// \overload
[[nodiscard]] inline Tensor add(const Tensor& a, const Tensor& b, bool relu_after = false) {
  Tensor dst;
  add(a, b, dst, relu_after);
  return dst;
}

}  // namespace rimc
