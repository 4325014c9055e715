#pragma once
/// \file
/// rimc::Shape: the dimensions of a tensor, rank 0 to 4, outermost first.

#include <rimc/core/error.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <ostream>
#include <string>

namespace rimc {

/// Dimensions of a tensor: rank 0..4, outermost first (N, C, H, W for images).
class Shape {
 public:
  /// The largest rank a Shape holds.
  static constexpr int max_rank = 4;

  Shape() = default;
  /// Dimensions `dims`, outermost first; shape_error past max_rank, on a negative dimension or int64 overflow.
  Shape(std::initializer_list<std::int64_t> dims) {
    if (dims.size() > max_rank) {
      throw shape_error(detail::concat("Shape: rank ", dims.size(), " exceeds the maximum rank ", max_rank));
    }
    rank_ = static_cast<int>(dims.size());
    std::copy(dims.begin(), dims.end(), dims_.begin());
    validate();
  }
  /// Dimensions from the range [first, last), checked as for the list constructor.
  template <class It>
  Shape(It first, It last) {
    const auto n = std::distance(first, last);
    if (n < 0 || n > max_rank) {
      throw shape_error(detail::concat("Shape: rank ", n, " exceeds the maximum rank ", max_rank));
    }
    rank_ = static_cast<int>(n);
    std::copy(first, last, dims_.begin());
    validate();
  }

  /// Number of dimensions, 0 to max_rank.
  [[nodiscard]] int rank() const noexcept { return rank_; }
  /// Dimension i, unchecked.
  [[nodiscard]] std::int64_t operator[](int i) const noexcept { return dims_[static_cast<std::size_t>(i)]; }
  /// Dimension i with a range check.
  [[nodiscard]] std::int64_t at(int i) const {
    if (i < 0 || i >= rank_) {
      throw shape_error(detail::concat("Shape::at: index ", i, " out of range for shape ", to_string()));
    }
    return dims_[static_cast<std::size_t>(i)];
  }
  /// The rank() dimensions as a range, outermost first.
  ///@{
  [[nodiscard]] const std::int64_t* begin() const noexcept { return dims_.data(); }
  [[nodiscard]] const std::int64_t* end() const noexcept { return dims_.data() + rank_; }
  ///@}

  /// Number of elements (1 for rank 0).
  [[nodiscard]] std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }

  /// "[2, 3, 32, 32]".
  [[nodiscard]] std::string to_string() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }

  /// Same rank and same dimensions.
  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  /// Writes to_string().
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.to_string(); }

 private:
  // The non-zero dimensions must multiply within int64 even when a zero one
  // makes the count 0: code computes partial products (strides, sample sizes).
  void validate() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) {
      const auto d = dims_[static_cast<std::size_t>(i)];
      if (d < 0) {
        throw shape_error(detail::concat("Shape: dimension ", i, " is negative (", d, ")"));
      }
      if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
        throw shape_error(detail::concat("Shape: element count overflows int64 at dimension ", i));
      }
      if (d != 0) n *= d;
    }
  }

  std::array<std::int64_t, max_rank> dims_{};
  int rank_ = 0;
};

}  // namespace rimc
