#pragma once
/// \file
/// Running a graph: the inference executor (activation buffers reused, each
/// released after its last consumer, so peak memory is the activations alive
/// at once; any node's output can be captured by name; up to 256 MiB of
/// buffers per thread kept for the next pass, see detail::activation_pool),
/// and the training pass
/// (every node's output kept on a tape) with its backward pass, which gives
/// the gradients of the layers' trainable parameters (adapters) and passes
/// input gradients through frozen layers (no weight gradients).
///
/// Both are const on the graph and keep their scratch per call or per
/// thread, so one network may run on several threads at once.

#include <rimc/core/error.hpp>
#include <rimc/core/tensor.hpp>
#include <rimc/kernels/batch_norm.hpp>
#include <rimc/kernels/eltwise.hpp>
#include <rimc/kernels/pooling.hpp>
#include <rimc/nn/graph.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace rimc {

/// What a training forward keeps for the backward pass: every node's output,
/// and each layer's cache (adapted layers keep what their backward needs).
struct network_tape {
  std::vector<Tensor> values;                              ///< output of node i (empty for identities)
  std::map<int, std::unique_ptr<layer_cache>> caches;      ///< conv2d / linear node -> its layer's cache
};

/// Gradients of the trainable parameters of each layer, by node name, in the
/// order of layer::trainable_parameters().
using parameter_gradients = std::map<std::string, std::vector<Tensor>>;

namespace detail {

/// Checks that a batch fits node `id`'s per-sample shape: [N, C, H, W] for an
/// image node, [N, F] (or an image flattening to F) for a flat one.
inline void check_batch(const graph& g, int id, const Tensor& x, std::string_view who) {
  const network_node& n = g.nodes()[static_cast<std::size_t>(id)];
  const Shape& s = n.shape;
  bool ok = x.rank() == s.rank() + 1 && x.dim(0) >= 1;
  for (int i = 0; ok && i < s.rank(); ++i) ok = x.dim(i + 1) == s[i];
  if (!ok && s.rank() == 1) ok = x.rank() >= 2 && x.dim(0) >= 1 && x.numel() == x.dim(0) * s[0];
  if (!ok) {
    throw shape_error(concat(who, ": node '", n.name, "' takes batches of ", s.to_string(), " per sample, got ",
                             x.shape().to_string()));
  }
}

/// Runs node n; with `relu`, its output goes through ReLU in the same pass
/// (a layer that fuses ReLUs, or an add).
inline void apply_node(const network_node& n, const std::vector<const Tensor*>& in, Tensor& out, bool relu) {
  switch (n.kind) {
    case op_kind::input: out = *in[0]; break;
    case op_kind::conv2d:
    case op_kind::linear:
      if (relu) {
        n.layer->forward_relu(*in[0], out);
      } else {
        n.layer->forward(*in[0], out);
      }
      break;
    case op_kind::batch_norm:
      batch_norm_forward(*in[0], n.params.at("weight"), n.params.at("bias"), n.params.at("running_mean"),
                         n.params.at("running_var"), n.bn_eps, out);
      break;
    case op_kind::relu: rimc::relu(*in[0], out); break;
    case op_kind::max_pool:
    case op_kind::avg_pool: n.pool_kernel->forward(*in[0], out); break;
    case op_kind::global_avg_pool: global_avg_pool2d(*in[0], out); break;
    case op_kind::add: rimc::add(*in[0], *in[1], out, n.relu_after || relu); break;
    case op_kind::flatten: {
      out = in[0]->rank() == 4 ? in[0]->to_layout(layout::nchw) : *in[0];
      out.reshape(Shape{in[0]->dim(0), n.shape[0]});
      break;
    }
  }
}

/// Activation buffers kept on a thread from one inference pass to the next.
/// Without them every pass takes its activations afresh from the allocator,
/// which returns large blocks to the kernel when they are freed, so every pass
/// faults their pages in again: ResNet-20 at batch 250 took about 9,000 page
/// faults per forward, as long as the convolutions themselves.
class activation_pool {
 public:
  /// Floats kept per thread between passes at most (256 MiB).
  static constexpr std::int64_t retained_floats = (std::int64_t{256} << 20) / std::int64_t{sizeof(float)};

  /// The smallest kept buffer that holds `numel` floats, or a new empty one.
  [[nodiscard]] std::shared_ptr<Tensor> take(std::int64_t numel) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      const auto c = (*it)->capacity();
      if (c >= numel && (best == free_.end() || c < (*best)->capacity())) best = it;
    }
    if (best == free_.end()) return std::make_shared<Tensor>();
    auto t = std::move(*best);
    *best = std::move(free_.back());
    free_.pop_back();
    return t;
  }
  /// Keeps `t` for a later take() (when nobody else holds it).
  void give(std::shared_ptr<Tensor> t) {
    if (t && t.use_count() == 1 && t->capacity() > 0) free_.push_back(std::move(t));
  }
  /// Keeps at most retained_floats: the largest buffers first, then any smaller one that still fits.
  void trim() {
    std::sort(free_.begin(), free_.end(), [](const auto& a, const auto& b) { return a->capacity() > b->capacity(); });
    std::int64_t kept = 0;
    std::vector<std::shared_ptr<Tensor>> keep;
    for (auto& t : free_) {
      if (kept + t->capacity() > retained_floats) continue;
      kept += t->capacity();
      keep.push_back(std::move(t));
    }
    free_ = std::move(keep);
  }
  /// Floats held now.
  [[nodiscard]] std::int64_t held() const {
    std::int64_t s = 0;
    for (const auto& t : free_) s += t->capacity();
    return s;
  }

  /// This thread's pool.
  [[nodiscard]] static activation_pool& of_this_thread() {
    thread_local activation_pool pool;
    return pool;
  }

 private:
  std::vector<std::shared_ptr<Tensor>> free_;
};

/// Runs nodes (from, to] from `x` (the output of node `from`) or from the
/// values of earlier nodes in `known` (by node index; read, never copied or
/// overwritten), copying the outputs of the nodes named in `capture`.
inline Tensor run(const graph& g, const Tensor& x, int from, int to, const std::vector<std::string>& capture,
                  std::map<std::string, Tensor>& captured, const std::map<int, Tensor>* known = nullptr) {
  const auto& nodes = g.nodes();
  const auto at = [](int i) { return static_cast<std::size_t>(i); };
  std::set<int> wanted;
  for (const auto& c : capture) wanted.insert(g.id(c));
  const auto count = static_cast<int>(nodes.size());
  // Last consumer of each node among those that run; buffers are freed after it.
  std::vector<int> last_use(at(count), -1);
  for (int i = from + 1; i <= to; ++i)
    for (int in : nodes[at(i)].inputs) last_use[at(g.resolve(in))] = i;
  // value: each node's current output (null when not computed or freed); owned: the buffers this run
  // made, which go back to the pool after their last use (known values are only read).
  std::vector<const Tensor*> value(at(count), nullptr);
  std::vector<std::shared_ptr<Tensor>> owned(at(count));
  activation_pool& pool = activation_pool::of_this_thread();
  const int start = g.resolve(from);
  std::vector<char> borrowed(at(count), 0);  // known values: read only, never pooled
  if (known) {
    for (const auto& [k, v] : *known) {
      const auto r = at(g.resolve(k));
      value[r] = &v;
      borrowed[r] = 1;
    }
    if (wanted.contains(from) && value[at(start)]) captured[nodes[at(from)].name] = *value[at(start)];
  } else {
    owned[at(start)] = pool.take(x.numel());
    *owned[at(start)] = x;
    value[at(start)] = owned[at(start)].get();
    if (wanted.contains(from)) captured[nodes[at(from)].name] = x;
  }
  // A ReLU that is the only consumer of a layer that fuses ReLUs (an adapted layer) or of an add, whose
  // pre-activation nobody captures, runs in its producer's pass and takes over the producer's buffer
  // (the fused max(y, 0) and oneDNN's ReLU agree bitwise).
  std::vector<int> relu_of(at(count), -1), fused_src(at(count), -1);
  {
    std::vector<int> uses(at(count), 0), only(at(count), -1);
    std::vector<char> seen(at(count), 0);
    for (int i = 1; i < count; ++i) {
      if (nodes[at(i)].bypass) continue;
      for (int j : nodes[at(i)].inputs) {
        const auto r = at(g.resolve(j));
        ++uses[r];
        only[r] = i;
      }
    }
    ++uses[at(g.resolve(g.output()))];
    for (int w : wanted) seen[at(g.resolve(w))] = 1;
    for (int i = from + 1; i <= to; ++i) {
      const network_node& n = nodes[at(i)];
      if (n.bypass || seen[at(i)] || uses[at(i)] != 1 || i == g.resolve(to)) continue;
      const int c = only[at(i)];
      if (c > to || nodes[at(c)].kind != op_kind::relu) continue;
      const bool fusing_layer = n.has_layer() && n.layer->fuses_relu() && !n.conv.relu && !n.relu_after;
      if (fusing_layer || (n.kind == op_kind::add && !n.relu_after)) {
        relu_of[at(i)] = c;
        fused_src[at(c)] = i;
      }
    }
  }
  std::vector<const Tensor*> in;
  for (int i = from + 1; i <= to; ++i) {
    const network_node& n = nodes[at(i)];
    if (fused_src[at(i)] >= 0) {  // this ReLU ran in its producer's pass
      const auto src = at(fused_src[at(i)]);
      owned[at(i)] = std::move(owned[src]);
      value[at(i)] = std::exchange(value[src], nullptr);
      if (wanted.contains(i)) captured[n.name] = *value[at(i)];
      continue;
    }
    if (n.bypass) {
      if (wanted.contains(i)) captured[n.name] = *value[at(g.resolve(i))];
      continue;
    }
    in.clear();
    for (int j : n.inputs) {
      const auto& v = value[at(g.resolve(j))];
      if (!v) {
        throw value_error(concat("network: node '", n.name, "' needs '", nodes[at(j)].name,
                                 "', which is not computed when running from '", nodes[at(from)].name, "'"));
      }
      in.push_back(v);
    }
    auto out = pool.take(in[0]->dim(0) * n.shape.numel());
    apply_node(n, in, *out, relu_of[at(i)] >= 0);
    value[at(i)] = out.get();
    owned[at(i)] = std::move(out);
    if (wanted.contains(i)) captured[n.name] = *value[at(i)];
    for (int j : n.inputs) {
      const int r = g.resolve(j);
      if (last_use[at(r)] == i && r != start && !borrowed[at(r)] && owned[at(r)]) {
        pool.give(std::move(owned[at(r)]));
        value[at(r)] = nullptr;
      }
    }
  }
  const auto res = at(g.resolve(to));
  Tensor result;
  // The result's buffer goes to the caller when it fits the result; a much larger one (the pool
  // handed a big buffer to small logits) stays in the pool and the result is copied out.
  if (owned[res] && value[res] == owned[res].get() && owned[res]->capacity() <= 2 * owned[res]->numel()) {
    result = std::move(*owned[res]);
  } else if (value[res]) {
    result = *value[res];
  }
  for (auto& o : owned) pool.give(std::move(o));
  pool.trim();
  return result;
}

/// A forward pass that keeps every node's output (and every layer's cache) in `tape`.
inline Tensor forward_train(const graph& g, const Tensor& x, network_tape& tape) {
  const auto& nodes = g.nodes();
  check_batch(g, 0, x, "network::forward_train");
  const auto count = static_cast<int>(nodes.size());
  tape.values.assign(static_cast<std::size_t>(count), Tensor());
  tape.caches.clear();
  tape.values[0] = x;
  std::vector<const Tensor*> in;
  for (int i = 1; i < count; ++i) {
    const network_node& n = nodes[static_cast<std::size_t>(i)];
    if (n.bypass) continue;
    if (n.conv.relu) {
      throw value_error(concat("network::forward_train: node '", n.name,
                               "' has a fused ReLU; build the training network without fuse_relu()"));
    }
    in.clear();
    for (int j : n.inputs) in.push_back(&tape.values[static_cast<std::size_t>(g.resolve(j))]);
    Tensor& out = tape.values[static_cast<std::size_t>(i)];
    if (n.has_layer() && !n.layer->parameters().empty()) {
      if (n.relu_after) {
        throw value_error(concat("network::forward_train: node '", n.name, "' has a fused ReLU and trainable parameters"));
      }
      tape.caches[i] = n.layer->forward_train(*in[0], out);
    } else {
      apply_node(n, in, out, false);
    }
  }
  return tape.values[static_cast<std::size_t>(g.resolve(g.output()))];
}

/// Back-propagates dL/d(output) through the pass recorded in `tape`: the
/// gradients of every layer with trainable parameters go to `grads` by node
/// name; frozen layers pass input gradients only. Returns dL/d(input).
inline Tensor backward(const graph& g, const network_tape& tape, const Tensor& diff_out, parameter_gradients& grads) {
  const auto& nodes = g.nodes();
  const auto count = static_cast<int>(nodes.size());
  if (tape.values.size() != static_cast<std::size_t>(count)) {
    throw value_error(concat("network::backward: the tape holds ", tape.values.size(), " values for ", count,
                             " nodes; run forward_train first"));
  }
  const Tensor& out = tape.values[static_cast<std::size_t>(g.resolve(g.output()))];
  check_same_shape("network::backward: diff_out", diff_out.shape(), out.shape());
  std::vector<Tensor> grad(static_cast<std::size_t>(count));
  grad[static_cast<std::size_t>(g.resolve(g.output()))] = diff_out;
  auto accumulate = [&](int to, Tensor&& d) {
    Tensor& sum = grad[static_cast<std::size_t>(g.resolve(to))];
    if (sum.empty()) {
      sum = std::move(d);
    } else {
      rimc::add(sum, d, sum);
    }
  };
  for (int i = count - 1; i >= 1; --i) {
    const network_node& n = nodes[static_cast<std::size_t>(i)];
    Tensor& gi = grad[static_cast<std::size_t>(i)];
    if (n.bypass || gi.empty()) continue;
    const Tensor& x = tape.values[static_cast<std::size_t>(g.resolve(n.inputs[0]))];
    const Tensor& y = tape.values[static_cast<std::size_t>(i)];
    Tensor dx;
    switch (n.kind) {
      case op_kind::input: break;
      case op_kind::conv2d:
      case op_kind::linear: {
        if (n.relu_after) rimc::relu_backward(gi, y, gi);
        const auto params = n.layer->parameters();
        if (params.empty()) {
          n.layer->backward(nullptr, x, gi, &dx, {});
          break;
        }
        auto& slot = grads[n.name];
        slot.resize(params.size());
        const auto c = tape.caches.find(i);
        n.layer->backward(c == tape.caches.end() ? nullptr : c->second.get(), x, gi, &dx, slot);
        break;
      }
      case op_kind::batch_norm:
        batch_norm_backward_data(gi, n.params.at("weight"), n.params.at("running_var"), n.bn_eps, dx);
        break;
      case op_kind::relu: rimc::relu_backward(gi, x, dx); break;
      case op_kind::max_pool:
      case op_kind::avg_pool: n.pool_kernel->backward_data(gi, x, dx); break;
      case op_kind::global_avg_pool:
        global_avg_pool2d_backward(gi, x.shape(), dx, x.rank() == 4 ? x.memory_layout() : layout::nchw);
        break;
      case op_kind::add: {
        if (n.relu_after) rimc::relu_backward(gi, y, gi);
        accumulate(n.inputs[1], Tensor(gi));
        dx = std::move(gi);
        break;
      }
      case op_kind::flatten: {
        dx = gi;
        dx.reshape(x.shape());
        break;
      }
    }
    if (n.kind != op_kind::input) accumulate(n.inputs[0], std::move(dx));
    gi = Tensor();
  }
  return std::move(grad[0]);
}

}  // namespace detail
}  // namespace rimc
