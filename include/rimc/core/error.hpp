#pragma once
/// \file
/// The exception hierarchy of rimc. Every error rimc throws derives from
/// rimc::error; its message starts with "[rimc.<kind>] " and names the field
/// and the values involved.

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace rimc {

/// Root of every exception thrown by rimc.
class error : public std::runtime_error {
 public:
  /// `kind` is the short id in the message prefix, e.g. "shape_error".
  error(std::string_view kind, const std::string& what_arg)
      : std::runtime_error("[rimc." + std::string(kind) + "] " + what_arg), kind_(kind) {}
  /// An error of kind "error" with message `what_arg`.
  explicit error(const std::string& what_arg) : error("error", what_arg) {}

  /// The short id of the error kind ("shape_error", "value_error", ...).
  [[nodiscard]] const std::string& kind() const noexcept { return kind_; }

 private:
  std::string kind_;
};

/// Shapes that do not fit together (the message names both shapes).
class shape_error : public error {
 public:
  /// A shape_error with message `what_arg`.
  explicit shape_error(const std::string& what_arg) : error("shape_error", what_arg) {}
};

/// A parameter outside its valid range, NaN, or otherwise invalid value.
class value_error : public error {
 public:
  /// A value_error with message `what_arg`.
  explicit value_error(const std::string& what_arg) : error("value_error", what_arg) {}
};

/// A file that cannot be read, written or parsed.
class io_error : public error {
 public:
  /// An io_error with message `what_arg`.
  explicit io_error(const std::string& what_arg) : error("io_error", what_arg) {}
};

/// A failure reported by a compute backend (oneDNN).
class backend_error : public error {
 public:
  /// A backend_error with message `what_arg`.
  explicit backend_error(const std::string& what_arg) : error("backend_error", what_arg) {}
};

namespace detail {

/// Concatenates the stream representations of all arguments.
template <class... Args>
[[nodiscard]] std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// The message of a rimc error without its "[rimc.<kind>] " prefix.
[[nodiscard]] inline std::string message_of(const error& e) {
  const std::string w = e.what();
  const auto cut = w.find("] ");
  return cut == std::string::npos ? w : w.substr(cut + 2);
}

/// Inside a catch block: rethrows the rimc error being handled as the same
/// kind, its message prefixed with `context` (e.g. the layer it concerns).
[[noreturn]] inline void rethrow_in(std::string_view context) {
  try {
    throw;
  } catch (const shape_error& e) {
    throw shape_error(concat(context, ": ", message_of(e)));
  } catch (const value_error& e) {
    throw value_error(concat(context, ": ", message_of(e)));
  } catch (const io_error& e) {
    throw io_error(concat(context, ": ", message_of(e)));
  } catch (const backend_error& e) {
    throw backend_error(concat(context, ": ", message_of(e)));
  } catch (const error& e) {
    throw error(concat(context, ": ", message_of(e)));
  }
}

}  // namespace detail
}  // namespace rimc
