#pragma once
/// \file
/// rimc::linear: a frozen fully-connected layer y = x W^T + b (PyTorch's
/// nn.Linear layout, W [O, K]) run by oneDNN's matmul, with its
/// backward-data pass; and rimc::matmul for plain matrix products.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/onednn.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace rimc {

/// A frozen fully-connected layer: weights [O, K], optional bias [O], optional fused ReLU.
///
/// The source is [N, K], or [N, C, H, W] with C*H*W = K flattened in
/// channels-first order (PyTorch's `flatten(1)`). Weights are packed once
/// per format oneDNN asks for.
class linear {
 public:
  /// A layer of `weights` [O, K] with optional `bias` [O], then ReLU when `relu`; shape_error on a mismatch.
  linear(Tensor weights, std::optional<Tensor> bias = std::nullopt, bool relu = false)
      : s_(std::make_unique<state>()) {
    if (weights.rank() != 2) {
      throw shape_error(detail::concat("linear: weights must be rank 2 [O, K], got ", weights.shape().to_string()));
    }
    if (bias && (bias->rank() != 1 || bias->dim(0) != weights.dim(0))) {
      throw shape_error(detail::concat("linear: bias ", bias->shape().to_string(), " does not match weights ",
                                       weights.shape().to_string(), " (expected [", weights.dim(0), "])"));
    }
    s_->relu = relu;
    const auto O = weights.dim(0), K = weights.dim(1);
    // The same storage seen two ways: [K, O] transposed for the forward, [O, K] for backward-data.
    s_->fwd_weights.reset(weights, dnnl::memory::desc({K, O}, detail::dnnl_dt::f32, detail::dnnl_tag::ba));
    s_->bwd_weights.reset(std::move(weights), dnnl::memory::desc({O, K}, detail::dnnl_dt::f32, detail::dnnl_tag::ab));
    if (bias) {
      s_->bias = std::move(*bias);
      s_->bias->reshape(Shape{1, O});
    }
  }

  /// Movable (the moved-from object may only be assigned to or destroyed); not copyable.
  ///@{
  linear(linear&&) noexcept = default;
  linear& operator=(linear&&) noexcept = default;
  ///@}

  /// Weights [O, K].
  [[nodiscard]] const Tensor& weights() const noexcept { return s_->bwd_weights.plain(); }
  /// Input width K.
  [[nodiscard]] std::int64_t in_features() const noexcept { return weights().shape()[1]; }
  /// Output width O.
  [[nodiscard]] std::int64_t out_features() const noexcept { return weights().shape()[0]; }
  /// Whether a bias [O] is added.
  [[nodiscard]] bool has_bias() const noexcept { return s_->bias.has_value(); }
  /// Whether ReLU follows the bias.
  [[nodiscard]] bool fused_relu() const noexcept { return s_->relu; }

  /// Replaces the weights (same shape): packed copies are redone on next use.
  void set_weights(Tensor weights) {
    check_same_shape("linear::set_weights", weights.shape(), this->weights().shape());
    s_->fwd_weights.reset(weights);
    s_->bwd_weights.reset(std::move(weights));
  }

  /// dst [N, O] = src W^T + b (then ReLU if fused). `dst` is resized as needed.
  void forward(const Tensor& src, Tensor& dst) const {
    if (&src == &dst) {
      Tensor out;
      forward(src, out);
      dst = std::move(out);
      return;
    }
    const auto N = rows_of(src);
    thread_local Tensor src_scratch;
    const Tensor& s = detail::as_layout(src, layout::nchw, src_scratch);
    const auto e = fwd_entry(N);
    dst.ensure(Shape{N, out_features()});
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, detail::wrap(e->src_md, s.data())},
        {DNNL_ARG_WEIGHTS, s_->fwd_weights.get(e->pd.weights_desc())},
        {DNNL_ARG_DST, detail::wrap(dst)}};
    if (s_->bias) args.emplace(DNNL_ARG_BIAS, detail::wrap(*s_->bias));
    args.emplace(DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->pd.scratchpad_desc()));
    detail::onednn_call("linear forward", [&] { detail::execute(e->prim, args); });
  }
  /// \overload
  [[nodiscard]] Tensor forward(const Tensor& src) const {
    Tensor dst;
    forward(src, dst);
    return dst;
  }

  /// diff_src [N, K] = diff_dst [N, O] W: the input gradient (no ReLU).
  void backward_data(const Tensor& diff_dst, Tensor& diff_src) const {
    if (diff_dst.rank() != 2 || diff_dst.dim(1) != out_features()) {
      throw shape_error(detail::concat("linear::backward_data: diff_dst must be [N, ", out_features(), "], got ",
                                       diff_dst.shape().to_string()));
    }
    if (&diff_dst == &diff_src) {
      Tensor out;
      backward_data(diff_dst, out);
      diff_src = std::move(out);
      return;
    }
    const auto N = diff_dst.dim(0);
    const auto e = bwd_entry(N);
    diff_src.ensure(Shape{N, in_features()});
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, detail::wrap(diff_dst)},
                                               {DNNL_ARG_WEIGHTS, s_->bwd_weights.get(e->pd.weights_desc())},
                                               {DNNL_ARG_DST, detail::wrap(diff_src)}};
    args.emplace(DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->pd.scratchpad_desc()));
    detail::onednn_call("linear backward_data", [&] { detail::execute(e->prim, args); });
  }
  /// \overload
  [[nodiscard]] Tensor backward_data(const Tensor& diff_dst) const {
    Tensor diff_src;
    backward_data(diff_dst, diff_src);
    return diff_src;
  }

  /// oneDNN's name of the implementation that runs a batch of N rows.
  [[nodiscard]] std::string implementation(std::int64_t N) const { return fwd_entry(N)->pd.impl_info_str(); }

 private:
  struct entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
    dnnl::memory::desc src_md;
  };
  struct state {
    bool relu = false;
    detail::packed_weights fwd_weights, bwd_weights;
    std::optional<Tensor> bias;
    detail::primitive_cache<detail::kernel_key, entry> fwd, bwd;
  };

  [[nodiscard]] std::int64_t rows_of(const Tensor& src) const {
    const bool ok = (src.rank() == 2 || src.rank() == 4) && src.dim(0) > 0 &&
                    src.numel() / src.dim(0) == in_features();
    if (!ok) {
      throw shape_error(detail::concat("linear: src ", src.shape().to_string(), " does not give ", in_features(),
                                       " features per row for weights ", weights().shape().to_string()));
    }
    return src.dim(0);
  }

  [[nodiscard]] static dnnl::memory::desc any_md(std::int64_t r, std::int64_t c) {
    return {{r, c}, detail::dnnl_dt::f32, detail::dnnl_tag::any};
  }

  [[nodiscard]] std::shared_ptr<const entry> fwd_entry(std::int64_t N) const {
    return s_->fwd.get(detail::kernel_key{Shape{N}, layout::nchw, num_threads(), 0, {}, layout::nchw}, [&] {
      return detail::onednn_call("linear: creating the forward primitive", [&] {
        const auto O = out_features(), K = in_features();
        const auto src_md = detail::plain_md(Shape{N, K});
        dnnl::primitive_attr attr = detail::user_scratchpad();
        if (s_->relu) {
          dnnl::post_ops ops;
          ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
          attr.set_post_ops(ops);
        }
        const auto dst_md = detail::plain_md(Shape{N, O});
        auto desc = s_->bias ? dnnl::matmul::desc(src_md, any_md(K, O), detail::plain_md(Shape{1, O}), dst_md)
                             : dnnl::matmul::desc(src_md, any_md(K, O), dst_md);
        dnnl::matmul::primitive_desc pd(desc, attr, detail::cpu_engine());
        return entry{pd, dnnl::matmul(pd), src_md};
      });
    });
  }

  [[nodiscard]] std::shared_ptr<const entry> bwd_entry(std::int64_t N) const {
    return s_->bwd.get(detail::kernel_key{Shape{N}, layout::nchw, num_threads(), 1, {}, layout::nchw}, [&] {
      return detail::onednn_call("linear: creating the backward-data primitive", [&] {
        const auto O = out_features(), K = in_features();
        const auto src_md = detail::plain_md(Shape{N, O});
        dnnl::matmul::desc desc(src_md, any_md(O, K), detail::plain_md(Shape{N, K}));
        dnnl::matmul::primitive_desc pd(desc, detail::user_scratchpad(), detail::cpu_engine());
        return entry{pd, dnnl::matmul(pd), src_md};
      });
    });
  }

  std::unique_ptr<state> s_;
};

namespace detail {

/// A plain row-major GEMM c = op(a) op(b) through oneDNN's matmul, where
/// op(x) reads x transposed when its flag is set (x stored as the transpose,
/// row-major), and c may be written transposed. With `epilogue`, the result
/// becomes (a b + full) ⊙ col_scale + col_shift, fused in the same pass
/// (full is [M, N] row-major; col_scale and col_shift are [N]). lda / ldb
/// are the row strides of a and b as stored (0: dense).
struct gemm_spec {
  std::int64_t M = 0, N = 0, K = 0;
  bool ta = false, tb = false, tc = false, epilogue = false;
  int threads = 1;
  std::int64_t lda = 0, ldb = 0;
  friend bool operator==(const gemm_spec&, const gemm_spec&) = default;
};

inline void gemm(gemm_spec spec, const float* a, const float* b, float* c, const float* full = nullptr,
                 const float* col_scale = nullptr, const float* col_shift = nullptr) {
  struct entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };
  static primitive_cache<gemm_spec, entry> cache(256);
  spec.threads = num_threads();
  using dims = dnnl::memory::dims;
  const auto M = spec.M, N = spec.N, K = spec.K;
  const auto lda = spec.lda ? spec.lda : (spec.ta ? M : K), ldb = spec.ldb ? spec.ldb : (spec.tb ? K : N);
  const dnnl::memory::desc a_md({M, K}, dnnl_dt::f32, spec.ta ? dims{1, lda} : dims{lda, 1});
  const dnnl::memory::desc b_md({K, N}, dnnl_dt::f32, spec.tb ? dims{1, ldb} : dims{ldb, 1});
  const dnnl::memory::desc c_md({M, N}, dnnl_dt::f32, spec.tc ? dims{1, M} : dims{N, 1});
  const dnnl::memory::desc full_md({M, N}, dnnl_dt::f32, dims{N, 1}), col_md({1, N}, dnnl_dt::f32, dims{N, 1});
  const auto e = cache.get(spec, [&] {
    return onednn_call("gemm: creating the primitive", [&] {
      dnnl::primitive_attr attr = user_scratchpad();
      if (spec.epilogue) {
        dnnl::post_ops ops;
        ops.append_binary(dnnl::algorithm::binary_add, full_md);
        ops.append_binary(dnnl::algorithm::binary_mul, col_md);
        ops.append_binary(dnnl::algorithm::binary_add, col_md);
        attr.set_post_ops(ops);
      }
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, cpu_engine());
      return entry{pd, dnnl::matmul(pd)};
    });
  });
  auto& args = thread_args();
  args[DNNL_ARG_SRC] = wrap(a_md, a);
  args[DNNL_ARG_WEIGHTS] = wrap(b_md, b);
  args[DNNL_ARG_DST] = wrap(c_md, c);
  args[DNNL_ARG_SCRATCHPAD] = thread_scratchpad(e->pd.scratchpad_desc());
  if (spec.epilogue) {
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = wrap(full_md, full);
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1] = wrap(col_md, col_scale);
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(2) | DNNL_ARG_SRC_1] = wrap(col_md, col_shift);
  }
  onednn_call("gemm", [&] { execute(e->prim, args); });
}

}  // namespace detail

/// c [M, N] = a [M, K] b [K, N] through oneDNN's matmul (primitives cached by shape).
inline void matmul(const Tensor& a, const Tensor& b, Tensor& c) {
  if (a.rank() != 2 || b.rank() != 2 || a.dim(1) != b.dim(0)) {
    throw shape_error(detail::concat("matmul: cannot multiply ", a.shape().to_string(), " by ",
                                     b.shape().to_string()));
  }
  if (&c == &a || &c == &b) {
    Tensor out;
    matmul(a, b, out);
    c = std::move(out);
    return;
  }
  struct entry {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };
  static detail::primitive_cache<detail::kernel_key, entry> cache(128);
  const auto M = a.dim(0), N = b.dim(1);
  const auto e = cache.get(detail::kernel_key{a.shape(), layout::nchw, num_threads(), 0, b.shape(), layout::nchw}, [&] {
    return detail::onednn_call("matmul: creating the primitive", [&] {
      dnnl::matmul::desc desc(detail::plain_md(a.shape()), detail::plain_md(b.shape()),
                              detail::plain_md(Shape{M, N}));
      const dnnl::matmul::primitive_desc pd(desc, detail::user_scratchpad(), detail::cpu_engine());
      return entry{pd, dnnl::matmul(pd)};
    });
  });
  c.ensure(Shape{M, N});
  detail::onednn_call("matmul", [&] {
    detail::execute(e->prim, {{DNNL_ARG_SRC, detail::wrap(a)},
                              {DNNL_ARG_WEIGHTS, detail::wrap(b)},
                              {DNNL_ARG_DST, detail::wrap(c)},
                              {DNNL_ARG_SCRATCHPAD, detail::thread_scratchpad(e->pd.scratchpad_desc())}});
  });
}
/// \overload
[[nodiscard]] inline Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor c;
  matmul(a, b, c);
  return c;
}

}  // namespace rimc
