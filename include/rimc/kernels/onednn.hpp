#pragma once
/// \file
/// The oneDNN backend: engine and stream, memory descriptors for rimc
/// tensors, cached reorders, packed (pre-reordered) weights and the
/// primitive cache the kernels share. This is the only rimc header that
/// includes dnnl.hpp.

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/core/shape.hpp>
#include <rimc/core/tensor.hpp>

#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// "major.minor.patch" of the oneDNN library rimc runs on.
[[nodiscard]] inline std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return detail::concat(v->major, ".", v->minor, ".", v->patch);
}

namespace detail {

using dnnl_tag = dnnl::memory::format_tag;
using dnnl_dt = dnnl::memory::data_type;

/// The CPU engine all rimc primitives run on.
[[nodiscard]] inline const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

/// An in-order stream per calling thread.
[[nodiscard]] inline dnnl::stream& cpu_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

/// Whether oneDNN runs bfloat16 dot products natively here (AVX-512 BF16 or AMX; respects
/// ONEDNN_MAX_CPU_ISA): elsewhere its bf16 kernels are emulated or missing.
[[nodiscard]] inline bool onednn_native_bf16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;
}

/// Runs `f`, turning a dnnl::error into a rimc::backend_error that names `what`.
template <class F>
decltype(auto) onednn_call(std::string_view what, F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const dnnl::error& e) {
    throw backend_error(concat(what, ": oneDNN status ", static_cast<int>(e.status), ": ", e.what()));
  }
}

[[nodiscard]] inline dnnl::memory::dims to_dims(const Shape& s) { return {s.begin(), s.end()}; }

[[nodiscard]] inline dnnl::memory::dims to_dims(const std::array<std::int64_t, 2>& a, std::int64_t minus = 0) {
  return {a[0] - minus, a[1] - minus};
}

/// The descriptor of a plain tensor of shape `s` stored in layout `l`.
[[nodiscard]] inline dnnl::memory::desc plain_md(const Shape& s, layout l = layout::nchw) {
  switch (s.rank()) {
    case 1: return {to_dims(s), dnnl_dt::f32, dnnl_tag::a};
    case 2: return {to_dims(s), dnnl_dt::f32, dnnl_tag::ab};
    case 3: return {to_dims(s), dnnl_dt::f32, dnnl_tag::abc};
    case 4: return {to_dims(s), dnnl_dt::f32, l == layout::nchw ? dnnl_tag::nchw : dnnl_tag::nhwc};
    default: throw shape_error(concat("oneDNN: cannot describe a tensor of shape ", s.to_string()));
  }
}

[[nodiscard]] inline dnnl::memory::desc plain_md(const Tensor& t) { return plain_md(t.shape(), t.memory_layout()); }

/// The rimc layout a oneDNN descriptor of a rank-4 `s` corresponds to, if any.
[[nodiscard]] inline std::optional<layout> layout_of(const dnnl::memory::desc& md, const Shape& s) {
  if (md == plain_md(s, layout::nhwc)) return layout::nhwc;
  if (md == plain_md(s, layout::nchw)) return layout::nchw;
  return std::nullopt;
}

/// A oneDNN memory object over rimc-owned storage (no copy).
[[nodiscard]] inline dnnl::memory wrap(const dnnl::memory::desc& md, const float* p) {
  return {md, cpu_engine(), const_cast<float*>(p)};
}
[[nodiscard]] inline dnnl::memory wrap(const Tensor& t) { return wrap(plain_md(t), t.data()); }

/// A small thread-safe cache of primitive entries keyed by `Key` (oldest evicted
/// first once `capacity` entries are held).
template <class Key, class Entry>
class primitive_cache {
 public:
  explicit primitive_cache(std::size_t capacity = 64) : capacity_(capacity) {}

  template <class Make>
  std::shared_ptr<const Entry> get(const Key& key, Make&& make) {
    {
      std::lock_guard lock(mutex_);
      for (const auto& [k, e] : entries_)
        if (k == key) return e;
    }
    auto made = std::make_shared<const Entry>(std::forward<Make>(make)());
    std::lock_guard lock(mutex_);
    for (const auto& [k, e] : entries_)
      if (k == key) return e;
    if (entries_.size() >= capacity_) entries_.erase(entries_.begin());
    entries_.emplace_back(key, made);
    return made;
  }

  void clear() {
    std::lock_guard lock(mutex_);
    entries_.clear();
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::pair<Key, std::shared_ptr<const Entry>>> entries_;
  std::size_t capacity_;
};

/// What a cached primitive depends on besides the kernel's own parameters:
/// the source shape and layout, the thread count it was created for, and a
/// variant id (forward inference, forward training, backward ...).
struct kernel_key {
  Shape shape;
  layout memory_layout = layout::nchw;
  int threads = 1;
  int variant = 0;
  Shape shape2{};  ///< a second operand's shape where one matters
  layout layout2 = layout::nchw;
  friend bool operator==(const kernel_key&, const kernel_key&) = default;
};

[[nodiscard]] inline kernel_key make_key(const Tensor& t, int variant) {
  return {t.shape(), t.memory_layout(), num_threads(), variant, {}, layout::nchw};
}

/// Attributes with a user-provided scratchpad. oneDNN's default (library)
/// scratchpad belongs to the primitive or to the thread that created it, so
/// executing one primitive from several threads at once (tiles in parallel,
/// a shared kernel) would corrupt results; every rimc primitive (reorders,
/// pooling and eltwise included) therefore runs on a per-thread scratchpad.
[[nodiscard]] inline dnnl::primitive_attr user_scratchpad(dnnl::primitive_attr attr = {}) {
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

/// Which of a thread's scratchpad buffers a primitive uses: reorders get
/// their own, since weight packing may run between a kernel taking its
/// scratchpad and executing (a bigger request reallocates the buffer).
enum class scratchpad_slot : std::size_t { kernel = 0, reorder = 1 };

/// The calling thread's scratchpad memory for a primitive descriptor's
/// `scratchpad_desc()`; valid until the next request for the same slot on this thread.
[[nodiscard]] inline dnnl::memory thread_scratchpad(const dnnl::memory::desc& md,
                                                    scratchpad_slot slot = scratchpad_slot::kernel) {
  struct buffer_t {
    std::unique_ptr<float[], aligned_deleter> data;
    std::size_t capacity = 0;
  };
  thread_local std::array<buffer_t, 2> buffers;
  buffer_t& b = buffers[static_cast<std::size_t>(slot)];
  const std::size_t bytes = md.get_size();
  if (bytes > b.capacity || !b.data) {
    const auto floats = static_cast<std::int64_t>((bytes + sizeof(float) - 1) / sizeof(float)) + 1;
    b.data = aligned_alloc_floats(floats);
    b.capacity = static_cast<std::size_t>(floats) * sizeof(float);
  }
  return {md, cpu_engine(), b.data.get()};
}

/// Copies `src` into `dst` whatever their formats, through a cached reorder primitive.
inline void reorder(const dnnl::memory& src, const dnnl::memory& dst) {
  struct entry {
    dnnl::memory::desc from, to;
    int threads;
    dnnl::reorder::primitive_desc pd;
    dnnl::reorder prim;
  };
  thread_local std::vector<entry> cache;
  const auto from = src.get_desc(), to = dst.get_desc();
  const int threads = num_threads();
  const entry* hit = nullptr;
  for (const auto& e : cache)
    if (e.threads == threads && e.from == from && e.to == to) hit = &e;
  if (!hit) {
    auto pd = onednn_call("reorder", [&] { return dnnl::reorder::primitive_desc(src, dst, user_scratchpad()); });
    if (cache.size() >= 32) cache.erase(cache.begin());
    cache.push_back({from, to, threads, pd, dnnl::reorder(pd)});
    hit = &cache.back();
  }
  const auto scratchpad = thread_scratchpad(hit->pd.scratchpad_desc(), scratchpad_slot::reorder);
  hit->prim.execute(cpu_stream(), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  cpu_stream().wait();
}

/// Brings `src` into layout `want`: returns `src` itself when it already is,
/// else a converted copy written into the caller's `scratch` (which the
/// caller keeps alive, and unused elsewhere, while it reads the result).
[[nodiscard]] inline const Tensor& as_layout(const Tensor& src, layout want, Tensor& scratch) {
  if (src.memory_layout() == want || src.rank() != 4) return src;
  scratch.ensure(src.shape(), want);
  reorder(wrap(src), wrap(scratch));
  return scratch;
}

/// A frozen weight tensor kept in plain form plus a copy reordered into each
/// format a primitive asked for, made once (not per call).
class packed_weights {
 public:
  packed_weights() = default;

  [[nodiscard]] const Tensor& plain() const noexcept { return plain_; }

  /// Replaces the plain weights and drops every packed copy.
  void reset(Tensor plain, const dnnl::memory::desc& plain_md) {
    std::lock_guard lock(mutex_);
    plain_ = std::move(plain);
    plain_md_ = plain_md;
    packs_.clear();
  }
  /// Replaces the plain weights (same shape and format) and drops every packed copy.
  void reset(Tensor plain) { reset(std::move(plain), plain_md_); }

  /// The weights in format `want`, reordered on first request.
  [[nodiscard]] dnnl::memory get(const dnnl::memory::desc& want) {
    if (want == plain_md_) return wrap(plain_md_, plain_.data());
    std::lock_guard lock(mutex_);
    for (const auto& [md, mem] : packs_)
      if (md == want) return mem;
    dnnl::memory packed = onednn_call("packing weights", [&] { return dnnl::memory(want, cpu_engine()); });
    reorder(wrap(plain_md_, plain_.data()), packed);
    packs_.emplace_back(want, packed);
    return packed;
  }

  /// Number of packed copies held (for tests: packing happens once per format).
  [[nodiscard]] std::size_t packed_count() const {
    std::lock_guard lock(mutex_);
    return packs_.size();
  }

 private:
  Tensor plain_;
  dnnl::memory::desc plain_md_;
  mutable std::mutex mutex_;
  std::vector<std::pair<dnnl::memory::desc, dnnl::memory>> packs_;
};

/// A per-thread argument map, cleared and reused by each kernel call (no allocation per call).
[[nodiscard]] inline std::unordered_map<int, dnnl::memory>& thread_args() {
  thread_local std::unordered_map<int, dnnl::memory> args;
  args.clear();
  return args;
}

/// Executes `prim` on the calling thread's stream and waits.
template <class Prim>
void execute(const Prim& prim, const std::unordered_map<int, dnnl::memory>& args) {
  prim.execute(cpu_stream(), args);
  cpu_stream().wait();
}

}  // namespace detail
}  // namespace rimc
