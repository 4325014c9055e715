#pragma once
/// \file
/// rimc::Tensor: the one owning float32 tensor of rimc (rank 0..4, 64-byte
/// aligned), indexed logically as N, C, H, W, stored either channels-first
/// (`layout::nchw`, also the row-major order of any other rank) or
/// channels-last (`layout::nhwc`, rank 4 only: the layout oneDNN's fast
/// convolutions consume and produce).

#include <rimc/core/error.hpp>
#include <rimc/core/shape.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <new>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace rimc {

/// Memory order of a rank-4 tensor. Tensors of other ranks are always `nchw`
/// (plain row-major).
enum class layout : std::uint8_t {
  nchw,  ///< channels first, row-major (PyTorch's default order)
  nhwc,  ///< channels last
};

/// "nchw" or "nhwc".
[[nodiscard]] inline std::string_view to_string(layout l) noexcept {
  return l == layout::nchw ? "nchw" : "nhwc";
}

/// Row-major dynamic float matrix, the Eigen type rimc maps tensors onto.
using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {
inline constexpr std::size_t tensor_alignment = 64;

struct aligned_deleter {
  void operator()(float* p) const noexcept { ::operator delete[](p, std::align_val_t{tensor_alignment}); }
};

[[nodiscard]] inline std::unique_ptr<float[], aligned_deleter> aligned_alloc_floats(std::int64_t n) {
  if (n <= 0) return {};
  auto* p = static_cast<float*>(
      ::operator new[](static_cast<std::size_t>(n) * sizeof(float), std::align_val_t{tensor_alignment}));
  return std::unique_ptr<float[], aligned_deleter>(p);
}
}  // namespace detail

/// Owning, 64-byte aligned float32 tensor of rank 0..4.
///
/// Element (n, c, h, w) of a rank-4 tensor is found through `offset()`, which
/// honours the layout; `data()` exposes the raw storage for kernels.
class Tensor {
 public:
  /// Element type (float32).
  using value_type = float;

  Tensor() = default;

  /// A zero-filled tensor.
  explicit Tensor(const Shape& shape, layout l = layout::nchw) : Tensor(empty(shape, l)) { zero(); }

  /// A tensor whose elements are left uninitialised (outputs about to be written).
  [[nodiscard]] static Tensor empty(const Shape& shape, layout l = layout::nchw) {
    Tensor t;
    t.shape_ = shape;
    t.layout_ = checked_layout(shape, l);
    t.capacity_ = shape.numel();
    t.data_ = detail::aligned_alloc_floats(t.capacity_);
    return t;
  }

  /// A tensor holding `values` in the order of `l`.
  ///@{
  [[nodiscard]] static Tensor from(const Shape& shape, std::span<const float> values, layout l = layout::nchw) {
    if (static_cast<std::int64_t>(values.size()) != shape.numel()) {
      throw shape_error(detail::concat("Tensor::from: ", values.size(), " values given for shape ",
                                       shape.to_string(), " (", shape.numel(), " elements)"));
    }
    Tensor t = empty(shape, l);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }
  [[nodiscard]] static Tensor from(const Shape& shape, std::initializer_list<float> values,
                                   layout l = layout::nchw) {
    return from(shape, std::span<const float>(values.begin(), values.size()), l);
  }
  ///@}

  /// A deep copy: own storage, same shape and layout.
  Tensor(const Tensor& o) : shape_(o.shape_), layout_(o.layout_), capacity_(o.numel()) {
    data_ = detail::aligned_alloc_floats(capacity_);
    if (capacity_ > 0) std::memcpy(data_.get(), o.data_.get(), bytes());
  }
  /// Deep copy, reusing this tensor's allocation when it is large enough.
  Tensor& operator=(const Tensor& o) {
    if (this == &o) return *this;
    if (!o.data_) {  // a default-constructed (empty) tensor
      *this = Tensor();
      return *this;
    }
    ensure(o.shape_, o.layout_);
    if (numel() > 0) std::memcpy(data_.get(), o.data_.get(), bytes());
    return *this;
  }
  /// Takes `o`'s storage; `o` is left empty.
  Tensor(Tensor&& o) noexcept
      : data_(std::move(o.data_)), shape_(o.shape_), layout_(o.layout_), capacity_(o.capacity_) {
    o.shape_ = Shape{};
    o.capacity_ = 0;
  }
  /// Takes `o`'s storage; `o` is left empty.
  Tensor& operator=(Tensor&& o) noexcept {
    data_ = std::move(o.data_);
    shape_ = o.shape_;
    layout_ = o.layout_;
    capacity_ = o.capacity_;
    o.shape_ = Shape{};
    o.capacity_ = 0;
    return *this;
  }
  ~Tensor() = default;

  /// The logical dimensions (N, C, H, W at rank 4), whatever the layout.
  [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
  /// Number of dimensions, 0 to 4.
  [[nodiscard]] int rank() const noexcept { return shape_.rank(); }
  /// Logical dimension i with a range check (shape_error).
  [[nodiscard]] std::int64_t dim(int i) const { return shape_.at(i); }
  /// Storage order (`nhwc` only at rank 4).
  [[nodiscard]] layout memory_layout() const noexcept { return layout_; }
  /// Number of elements (0 for a default-constructed tensor).
  [[nodiscard]] std::int64_t numel() const noexcept { return shape_.rank() == 0 && !data_ ? 0 : shape_.numel(); }
  /// True when it holds no elements.
  [[nodiscard]] bool empty() const noexcept { return numel() == 0; }
  /// Elements the storage holds without reallocating (ensure() reuses it up to this).
  [[nodiscard]] std::int64_t capacity() const noexcept { return data_ ? capacity_ : 0; }
  /// Size of the elements, bytes.
  [[nodiscard]] std::size_t bytes() const noexcept { return static_cast<std::size_t>(numel()) * sizeof(float); }

  /// The raw storage in memory_layout() order (null when there are no elements).
  ///@{
  [[nodiscard]] float* data() noexcept { return data_.get(); }
  [[nodiscard]] const float* data() const noexcept { return data_.get(); }
  ///@}
  /// The elements as a span, in storage order.
  ///@{
  [[nodiscard]] std::span<float> values() noexcept { return {data_.get(), static_cast<std::size_t>(numel())}; }
  [[nodiscard]] std::span<const float> values() const noexcept {
    return {data_.get(), static_cast<std::size_t>(numel())};
  }
  ///@}

  /// Storage offset of logical element (n, c, h, w) of a rank-4 tensor.
  [[nodiscard]] std::int64_t offset(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const noexcept {
    const auto C = shape_[1], H = shape_[2], W = shape_[3];
    return layout_ == layout::nchw ? ((n * C + c) * H + h) * W + w : ((n * H + h) * W + w) * C + c;
  }
  /// Logical element (n, c, h, w) of a rank-4 tensor, unchecked.
  ///@{
  [[nodiscard]] float& at(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) noexcept {
    return data_[static_cast<std::size_t>(offset(n, c, h, w))];
  }
  [[nodiscard]] float at(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const noexcept {
    return data_[static_cast<std::size_t>(offset(n, c, h, w))];
  }
  ///@}
  /// Element i in storage order.
  ///@{
  [[nodiscard]] float& operator[](std::int64_t i) noexcept { return data_[static_cast<std::size_t>(i)]; }
  [[nodiscard]] float operator[](std::int64_t i) const noexcept { return data_[static_cast<std::size_t>(i)]; }
  ///@}

  /// Row-major [rows, cols] view of the storage (rows * cols must equal numel()).
  ///@{
  [[nodiscard]] Eigen::Map<RowMatrixXf, Eigen::Aligned64> matrix(std::int64_t rows, std::int64_t cols) {
    check_matrix(rows, cols);
    return {data_.get(), static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
  }
  [[nodiscard]] Eigen::Map<const RowMatrixXf, Eigen::Aligned64> matrix(std::int64_t rows, std::int64_t cols) const {
    check_matrix(rows, cols);
    return {data_.get(), static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols)};
  }
  ///@}
  /// The natural matrix view of a rank-2 tensor.
  ///@{
  [[nodiscard]] Eigen::Map<RowMatrixXf, Eigen::Aligned64> matrix() { return matrix(mat_rows(), mat_cols()); }
  [[nodiscard]] Eigen::Map<const RowMatrixXf, Eigen::Aligned64> matrix() const {
    return matrix(mat_rows(), mat_cols());
  }
  ///@}
  /// The storage as one column vector.
  ///@{
  [[nodiscard]] Eigen::Map<Eigen::VectorXf, Eigen::Aligned64> vector() {
    return {data_.get(), static_cast<Eigen::Index>(numel())};
  }
  [[nodiscard]] Eigen::Map<const Eigen::VectorXf, Eigen::Aligned64> vector() const {
    return {data_.get(), static_cast<Eigen::Index>(numel())};
  }
  ///@}

  /// Sets every element to v.
  void fill(float v) noexcept { std::fill_n(data_.get(), numel(), v); }
  /// Sets every element to 0.
  void zero() noexcept {
    if (numel() > 0) std::memset(data_.get(), 0, bytes());
  }

  /// Makes this tensor `shape` in layout `l`, reusing the allocation when it is
  /// large enough. Contents are unspecified afterwards.
  void ensure(const Shape& shape, layout l = layout::nchw) {
    const auto n = shape.numel();
    const auto checked = checked_layout(shape, l);
    if (n > capacity_ || !data_) {
      data_ = detail::aligned_alloc_floats(n);
      capacity_ = n;
    }
    shape_ = shape;
    layout_ = checked;
  }

  /// Reinterprets the dimensions; the element count must not change and the
  /// tensor must be in plain (`nchw`) order.
  void reshape(const Shape& shape) {
    if (shape.numel() != shape_.numel()) {
      throw shape_error(detail::concat("Tensor::reshape: cannot view ", shape_.to_string(), " (", shape_.numel(),
                                       " elements) as ", shape.to_string(), " (", shape.numel(), " elements)"));
    }
    if (layout_ != layout::nchw) {
      throw shape_error(detail::concat("Tensor::reshape: tensor ", shape_.to_string(),
                                       " is stored nhwc; convert it with to_layout(layout::nchw) first"));
    }
    shape_ = shape;
  }

  /// A copy in layout `l` (a plain copy when already in `l`).
  [[nodiscard]] Tensor to_layout(layout l) const {
    if (l == layout_) return *this;
    Tensor out = empty(shape_, l);
    const auto N = shape_[0], C = shape_[1], HW = shape_[2] * shape_[3];
    const float* s = data();
    float* d = out.data();
    for (std::int64_t n = 0; n < N; ++n) {
      const float* sn = s + n * C * HW;
      float* dn = d + n * C * HW;
      if (l == layout::nhwc) {
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t p = 0; p < HW; ++p) dn[p * C + c] = sn[c * HW + p];
      } else {
        for (std::int64_t p = 0; p < HW; ++p)
          for (std::int64_t c = 0; c < C; ++c) dn[c * HW + p] = sn[p * C + c];
      }
    }
    return out;
  }

  /// True when shapes match and every logical element is equal (layouts may differ).
  friend bool operator==(const Tensor& a, const Tensor& b) {
    if (!(a.shape_ == b.shape_)) return false;
    if (a.layout_ == b.layout_) return std::equal(a.data(), a.data() + a.numel(), b.data());
    const Tensor bb = b.to_layout(a.layout_);
    return std::equal(a.data(), a.data() + a.numel(), bb.data());
  }

 private:
  static layout checked_layout(const Shape& shape, layout l) {
    if (l == layout::nhwc && shape.rank() != 4) {
      throw shape_error(detail::concat("Tensor: layout nhwc needs a rank-4 shape, got ", shape.to_string()));
    }
    return l;
  }
  [[nodiscard]] std::int64_t mat_rows() const {
    if (shape_.rank() != 2) {
      throw shape_error(detail::concat("Tensor::matrix: rank-2 tensor expected, got ", shape_.to_string()));
    }
    return shape_[0];
  }
  [[nodiscard]] std::int64_t mat_cols() const { return shape_[1]; }
  void check_matrix(std::int64_t rows, std::int64_t cols) const {
    if (rows < 0 || cols < 0 || rows * cols != numel()) {
      throw shape_error(detail::concat("Tensor::matrix: cannot view ", shape_.to_string(), " as [", rows, ", ",
                                       cols, "]"));
    }
  }

  std::unique_ptr<float[], detail::aligned_deleter> data_;
  Shape shape_;
  layout layout_ = layout::nchw;
  std::int64_t capacity_ = 0;
};

/// Throws shape_error unless `a` and `b` have the same shape; `what` names the operation.
inline void check_same_shape(std::string_view what, const Shape& a, const Shape& b) {
  if (!(a == b)) {
    throw shape_error(detail::concat(what, ": shapes differ: ", a.to_string(), " vs ", b.to_string()));
  }
}

/// Throws value_error naming `what` and the first offending index if any element is NaN or infinite.
inline void check_finite(std::string_view what, const Tensor& t) {
  const float* p = t.data();
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    if (!std::isfinite(p[i])) {
      throw value_error(detail::concat(what, ": element ", i, " of tensor ", t.shape().to_string(), " is ", p[i]));
    }
  }
}

/// Tensors with names, in order: e.g. an adapter's parameters as its file keys.
using named_tensors = std::vector<std::pair<std::string, Tensor>>;

}  // namespace rimc
