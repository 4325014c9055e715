#pragma once
/// \file
/// rimc::network: a small DAG of named layers that users assemble in code
/// (nn/graph.hpp), with its passes (nn/passes.hpp), its executor
/// (nn/executor.hpp) and its parameter files (nn/serialize.hpp) behind one
/// type. A const network may run forward() from several threads at once.

#include <rimc/core/tensor.hpp>
#include <rimc/io/safetensors.hpp>
#include <rimc/nn/executor.hpp>
#include <rimc/nn/graph.hpp>
#include <rimc/nn/layer.hpp>
#include <rimc/nn/passes.hpp>
#include <rimc/nn/serialize.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace rimc {

/// A small DAG of named layers (see nn/graph.hpp for building one).
class network : public graph {
 public:
  /// Loads every parameter from `file` by name (see load_parameters).
  void load(const safetensors_file& file, bool strict = true) { load_parameters(*this, file, strict); }
  /// Loads every parameter from the safetensors file at `path`.
  void load(const std::filesystem::path& path, bool strict = true) { load(safetensors_file::load(path), strict); }
  /// Writes every parameter to `path` (atomically), with `metadata`.
  void save(const std::filesystem::path& path, const std::map<std::string, std::string>& metadata = {}) const {
    save_parameters(*this, path, metadata);
  }

  /// Folds batch norms into their convolutions (see rimc::fold_batch_norm).
  void fold_batch_norm() { rimc::fold_batch_norm(*this); }
  /// Fuses ReLUs into their producers (see rimc::fuse_relu).
  void fuse_relu() { rimc::fuse_relu(*this); }

  /// The output for a batch x [N, C, H, W] (or [N, F]) of the input node's per-sample shape.
  [[nodiscard]] Tensor forward(const Tensor& x) const {
    std::map<std::string, Tensor> none;
    return forward(x, {}, none);
  }

  /// As forward(x), also copying the outputs of the nodes named in `capture` into `captured`.
  [[nodiscard]] Tensor forward(const Tensor& x, const std::vector<std::string>& capture,
                               std::map<std::string, Tensor>& captured) const {
    if (nodes().empty()) throw value_error("network::forward: the network has no nodes");
    detail::check_batch(*this, 0, x, "network::forward");
    return detail::run(*this, x, 0, output(), capture, captured);
  }

  /// Runs nodes (from, to] given the output of node `from` (e.g. the student's
  /// activation entering a layer), capturing as forward does.
  [[nodiscard]] Tensor forward_from(int from, const Tensor& value, int to, const std::vector<std::string>& capture,
                                    std::map<std::string, Tensor>& captured) const {
    check_range(from, to);
    detail::check_batch(*this, resolve(from), value, "network::forward_from");
    return detail::run(*this, value, from, to, capture, captured);
  }

  /// Runs nodes (from, to] given the outputs of the earlier nodes they
  /// consume in `known` (by node index; read, never copied or overwritten),
  /// capturing as forward does: resumes a forward pass from the values an
  /// earlier pass left (layer-wise calibration runs each prefix once). Each
  /// key must be a node index, each value a batch of that node's shape.
  [[nodiscard]] Tensor forward_from(int from, const std::map<int, Tensor>& known, int to,
                                    const std::vector<std::string>& capture,
                                    std::map<std::string, Tensor>& captured) const {
    check_range(from, to);
    const int n = static_cast<int>(nodes().size());
    for (const auto& [k, v] : known) {
      if (k < 0 || k >= n) {
        throw value_error(detail::concat("network::forward_from: known value for node index ", k,
                                         ", but the network has nodes 0..", n - 1));
      }
      detail::check_batch(*this, resolve(k), v, "network::forward_from");
    }
    return detail::run(*this, Tensor(), from, to, capture, captured, &known);
  }

  /// A forward pass that keeps every node's output in `tape` for backward().
  /// Fused ReLUs are not supported here.
  [[nodiscard]] Tensor forward_train(const Tensor& x, network_tape& tape) const {
    return detail::forward_train(*this, x, tape);
  }

  /// Back-propagates dL/d(output) through the pass recorded in `tape`: the
  /// gradients of the layers' trainable parameters (adapters) go to `grads`
  /// by node name; frozen layers pass input gradients only. Returns dL/d(input).
  Tensor backward(const network_tape& tape, const Tensor& diff_out, parameter_gradients& grads) const {
    return detail::backward(*this, tape, diff_out, grads);
  }

 private:
  void check_range(int from, int to) const {
    const int n = static_cast<int>(nodes().size());
    if (from < 0 || to >= n || from > to) {
      throw value_error(detail::concat("network::forward_from: nodes (", from, ", ", to, "] are not a range of the ",
                                       n, " nodes"));
    }
  }
};

}  // namespace rimc
