#pragma once
/// \file
/// The adapter concept: what rimc needs of a trainable correction that sits
/// on top of a frozen (crossbar) layer, the way PEFT's tuner layers sit on a
/// base layer. An adapter keeps its own parameters (in SRAM) and borrows
/// everything about the frozen layer (its weights W0, bias, geometry and
/// backward-data pass) from the layer it is given at every call, so it never
/// holds a copy that could go stale when the chip drifts further.
///
/// dora_adapter, lora_adapter and vera_adapter satisfy it;
/// examples/extend_rimc.cpp defines one outside the library. adapted_layer
/// (adapt/adapted_layer.hpp) wraps a frozen layer and an adapter into a
/// network layer; the calibrators (feature_kd.hpp, backprop.hpp) train any
/// adapter through this concept.

#include <rimc/core/tensor.hpp>
#include <rimc/cost/sram.hpp>
#include <rimc/nn/layer.hpp>

#include <Eigen/Core>

#include <concepts>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// What rimc needs of an adapter type A (see the file comment). `base` is the
/// frozen layer; `layer_out` is what base.forward(x) produced (bias included,
/// channels-last for a convolution); the cache is what forward keeps for
/// backward (it may refer to x and layer_out, which the caller keeps alive).
///
/// - `A::kind`: a name ("dora", "lora", ...), written to files;
/// - `a.forward(base, x, layer_out, y, &cache)`: y = the adapted output;
/// - `a.backward(base, cache, diff_y, grads, &diff_x)`: dL/dparameters into
///   `grads` (one tensor per parameter, in parameters() order) and, with
///   diff_x non-null, dL/dx (through W0, borrowed from base, and the adapter);
///   the named_tensors of tensors() are (name within the module, tensor),
///   e.g. ("lora_A.weight", A): the adapter's file keys;
/// - `a.backward_data(base, diff_y, x_shape, diff_x)`: dL/dx alone;
/// - `a.parameters()`: the trainable tensors (to update in place), and const;
/// - `a.refresh(base)`: after the parameters changed in place, or base's weights did;
/// - `a.footprint(base, precision)`: values, SRAM bytes, share of base's weights;
/// - `a.tensors()` / `a.load(base, tensors)`: the parameters by file name
///   (load checks every shape and value and changes nothing on error).
template <class A>
concept adapter = std::move_constructible<A> &&
    requires(A& a, const A& ca, const layer& base, const Tensor& x, const Tensor& layer_out, Tensor& y,
             typename A::cache_type& cache, const typename A::cache_type& ccache, std::span<Tensor> grads, Tensor* dx,
             const Shape& shape, sram_precision precision, const std::map<std::string, Tensor>& files) {
      typename A::cache_type;
      { A::kind } -> std::convertible_to<std::string_view>;
      ca.forward(base, x, layer_out, y, &cache);
      ca.backward(base, ccache, layer_out, grads, dx);
      ca.backward_data(base, layer_out, shape, y);
      { a.parameters() } -> std::same_as<std::vector<Tensor*>>;
      { ca.parameters() } -> std::same_as<std::vector<const Tensor*>>;
      a.refresh(base);
      { ca.footprint(base, precision) } -> std::same_as<adapter_footprint>;
      { ca.tensors() } -> std::same_as<named_tensors>;
      a.load(base, files);
    };

/// An adapter that can compute its inference output in the storage of the
/// layer's output, optionally with a ReLU in the same pass (one read and one
/// write of the output): `a.forward_in_place(base, x, out, relu)`.
template <class A>
concept in_place_adapter = adapter<A> && requires(const A& a, const layer& base, const Tensor& x, Tensor& out, bool relu) {
  a.forward_in_place(base, x, out, relu);
};

/// An adapter with a merged form: `a.merged_weights(base)` gives W' such that
/// the adapted output is the frozen layer's kernel (conv or linear, same
/// geometry) applied with W' instead of W0, plus the frozen layer's own bias
/// (DoRA: W' = gamma ⊙ (W0 + s B A); LoRA: W0 + s B A; VeRA: W0 + Λb B Λd A).
/// Where the frozen layer's forward is exactly that kernel
/// (layer::linear_forward()), adapted_layer can then run one kernel instead
/// of two (adapter_inference::merged).
template <class A>
concept mergeable_adapter = adapter<A> && requires(const A& a, const layer& base) {
  { a.merged_weights(base) } -> std::same_as<Tensor>;
};

/// Which kernels a low-rank adapter's calibration step runs for A x, its
/// weight gradient and (DoRA) the pass over dL/dy. Both compute the same
/// maths and agree to float rounding; inference always runs shift_add.
enum class low_rank_kernel : std::uint8_t {
  /// oneDNN GEMMs with a scatter over the taps (the default): the bits every
  /// committed result was computed with.
  shift_add,
  /// rimc's direct channels-last kernels (kernels/arch; bitwise the same on
  /// every ISA tier and thread count), fused with the combination and with
  /// DoRA's reductions: 1.6-2.9x faster forward + backward on the benchmarked
  /// thin layers with OMP_WAIT_POLICY=passive (README, "Benchmarks"); a
  /// backprop calibration then rounds differently.
  direct
};

/// A low-rank adapter's output in one form: y = gamma ⊙ (layer_out - bias +
/// s (A x) B^T) + bias, or, with gamma null, y = layer_out + s (A x) B^T
/// (LoRA). What the statistics-based calibration and the fused loss need.
struct low_rank_form {
  const Tensor* lora_A = nullptr;          ///< [r, K] (linear) or [r, C, kh, kw] (conv)
  const Tensor* lora_B = nullptr;          ///< [O, r] (linear) or [O, r, 1, 1] (conv)
  double scale = 1;                        ///< s
  const Eigen::VectorXf* gamma = nullptr;  ///< per-output-channel factor [O], or null for none
};

/// A low-rank adapter: its form, its rank, where dL/dA and dL/dB go among
/// its gradients, and `complete_gradients(base, dgamma, grads)`, which adds
/// what follows from dL/dgamma once dL/dA and dL/dB at fixed gamma are in
/// `grads` (DoRA: dL/dm and the norm terms; nothing for LoRA).
template <class A>
concept low_rank_adapter = adapter<A> && requires(const A& a, const layer& base, const Eigen::VectorXd& dgamma,
                                                  std::span<Tensor> grads) {
  { a.low_rank() } -> std::same_as<low_rank_form>;
  { a.rank() } -> std::convertible_to<std::int64_t>;
  { A::grad_index_A } -> std::convertible_to<std::size_t>;
  { A::grad_index_B } -> std::convertible_to<std::size_t>;
  a.complete_gradients(base, dgamma, grads);
};

namespace detail {
/// Checks that `t` has shape `want` and finite values; `what` names it.
inline void check_parameter(std::string_view what, const Tensor& t, const Shape& want) {
  check_same_shape(what, t.shape(), want);
  check_finite(what, t);
}
/// The dimensions of `s` other than those of size 1.
[[nodiscard]] inline std::vector<std::int64_t> squeezed(const Shape& s) {
  std::vector<std::int64_t> d;
  for (int i = 0; i < s.rank(); ++i)
    if (s[i] != 1) d.push_back(s[i]);
  return d;
}
/// The tensor named `key` in `files`, with shape `want` (reshaped when only dimensions of
/// size 1 differ, as PEFT's [1, O, 1, 1] magnitude for [O]); `who` names the adapter.
[[nodiscard]] inline Tensor take_tensor(const std::map<std::string, Tensor>& files, const std::string& key,
                                        const Shape& want, std::string_view who) {
  const auto it = files.find(key);
  if (it == files.end()) throw value_error(concat(who, ": missing tensor '", key, "'"));
  Tensor t = it->second;
  if (!(t.shape() == want)) {
    if (squeezed(t.shape()) != squeezed(want)) {
      throw shape_error(concat(who, ": tensor '", key, "' has shape ", t.shape().to_string(), ", expected ",
                               want.to_string()));
    }
    t = t.to_layout(layout::nchw);
    t.reshape(want);
  }
  check_finite(concat(who, ": tensor '", key, "'"), t);
  return t;
}
}  // namespace detail

}  // namespace rimc
