#pragma once
// The command lines of rimc's example programs: CLI11 (Debian's libcli11-dev)
// with strict values. Numbers must be whole (no trailing junk), finite, and
// within their range; unsigned settings reject a sign; every problem is
// reported as "<program>: <flag>: <what is wrong>, got '<value>'" with exit
// code 2 before anything is loaded. --help lists every flag with its default
// and unit. Not a public header: examples include it by relative path.

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/kernels/arch/isa.hpp>

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unistd.h>
#include <vector>

namespace rimc::cli {

/// A value the program rejects after parsing (e.g. a rank no layer can take): the message names the flag.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// `text` as a T, whole and finite, within [lo, hi]; throws usage_error naming `flag`.
template <class T>
[[nodiscard]] T parse_number(std::string_view flag, const std::string& text, T lo, T hi) {
  T v{};
  const char* b = text.data();
  const char* e = text.data() + text.size();
  std::from_chars_result r{};
  if constexpr (std::is_floating_point_v<T>) {
    r = std::from_chars(b, e, v, std::chars_format::general);
  } else {
    r = std::from_chars(b, e, v, 10);
  }
  const auto kind = [] {
    if constexpr (std::is_floating_point_v<T>) return "a number";
    if constexpr (std::is_unsigned_v<T>) return "a non-negative integer";
    return "an integer";
  };
  if (r.ec == std::errc::result_out_of_range) {
    throw usage_error(detail::concat(flag, ": '", text, "' is out of range for ", kind()));
  }
  if (text.empty() || r.ec != std::errc() || r.ptr != e) {
    throw usage_error(detail::concat(flag, ": '", text, "' is not ", kind()));
  }
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(v)) throw usage_error(detail::concat(flag, ": '", text, "' is not a finite number"));
  }
  if (v < lo || v > hi) throw usage_error(detail::concat(flag, ": must be in [", lo, ", ", hi, "], got ", text));
  return v;
}

/// A comma-separated list of numbers, each as parse_number.
template <class T>
[[nodiscard]] std::vector<T> parse_list(std::string_view flag, const std::string& text, T lo, T hi) {
  std::vector<T> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_number<T>(flag, item, lo, hi));
  if (out.empty()) throw usage_error(detail::concat(flag, ": needs at least one value, got '", text, "'"));
  return out;
}

/// Throws unless a file can be created at `path` (its directory exists and is writable); nothing is left behind.
inline void check_writable_file(std::string_view flag, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (fs::is_directory(p, ec)) throw usage_error(detail::concat(flag, ": '", path, "' is a directory, not a file"));
  if (!fs::is_directory(dir, ec)) throw usage_error(detail::concat(flag, ": directory '", dir.string(), "' of '", path, "' does not exist"));
  if (::access(dir.c_str(), W_OK) != 0) {
    throw usage_error(detail::concat(flag, ": directory '", dir.string(), "' of '", path, "' is not writable"));
  }
}

/// Throws unless `path` is a writable directory or one that can be created (its nearest existing parent writable).
inline void check_writable_dir(std::string_view flag, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(fs::path(path), ec);
  if (fs::exists(p, ec) && !fs::is_directory(p, ec)) {
    throw usage_error(detail::concat(flag, ": '", path, "' exists and is not a directory"));
  }
  while (!p.empty() && !fs::exists(p, ec)) p = p.parent_path();
  if (p.empty() || ::access(p.c_str(), W_OK) != 0) {
    throw usage_error(detail::concat(flag, ": '", path, "' cannot be written (", p.string(), " is not writable)"));
  }
}

/// Throws unless `path` is an existing directory.
inline void check_input_dir(std::string_view flag, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) throw usage_error(detail::concat(flag, ": '", path, "' is not a directory"));
}

/// Throws unless `path` is a readable file.
inline void check_input_file(std::string_view flag, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || ::access(path.c_str(), R_OK) != 0) {
    throw usage_error(detail::concat(flag, ": '", path, "' is not a readable file"));
  }
}

/// An example's command line (see the file comment).
class command_line {
 public:
  command_line(std::string program, std::string description) : program_(std::move(program)), app_(std::move(description), program_) {
    app_.get_formatter()->column_width(34);
  }

  /// A numeric option in [lo, hi]; `unit` is shown in --help.
  template <class T>
  CLI::Option* number(const std::string& flag, T& value, std::string help, T lo, T hi, std::string_view unit = "") {
    std::ostringstream d;
    d << value;
    help += detail::concat(" [", lo, "..", hi, unit.empty() ? "" : " ", unit, "; default ", d.str(), "]");
    return app_.add_option_function<std::string>(
                   flag, [&value, flag, lo, hi](const std::string& s) { value = parse_number<T>(flag, s, lo, hi); }, help)
        ->type_name(std::is_floating_point_v<T> ? "NUM" : "INT");
  }

  /// A comma-separated list of numbers in [lo, hi].
  template <class T>
  CLI::Option* numbers(const std::string& flag, std::vector<T>& values, std::string help, T lo, T hi) {
    std::string d;
    for (const auto& v : values) d += (d.empty() ? "" : ",") + detail::concat(v);
    help += detail::concat(" [each in ", lo, "..", hi, "; default ", d, "]");
    return app_.add_option_function<std::string>(
                   flag, [&values, flag, lo, hi](const std::string& s) { values = parse_list<T>(flag, s, lo, hi); }, help)
        ->type_name("LIST");
  }

  /// One of `choices`.
  CLI::Option* choice(const std::string& flag, std::string& value, std::string help, std::vector<std::string> choices) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
    help += " [" + list + "; default " + value + "]";
    return app_.add_option_function<std::string>(
                   flag,
                   [&value, flag, choices, list](const std::string& s) {
                     for (const auto& c : choices)
                       if (s == c) {
                         value = s;
                         return;
                       }
                     throw usage_error(detail::concat(flag, ": must be one of ", list, ", got '", s, "'"));
                   },
                   help)
        ->type_name("WORD");
  }

  /// A text option (a path, a name).
  CLI::Option* text(const std::string& flag, std::string& value, std::string help) {
    help += " [default " + (value.empty() ? std::string("none") : value) + "]";
    return app_.add_option_function<std::string>(
                   flag,
                   [&value, flag](const std::string& s) {
                     if (s.empty()) throw usage_error(detail::concat(flag, ": must not be empty"));
                     value = s;
                   },
                   help)
        ->type_name("TEXT");
  }

  /// A switch.
  CLI::Option* flag(const std::string& name, bool& value, const std::string& help) { return app_.add_flag(name, value, help); }

  /// The thread count option: 1..rimc::max_threads().
  CLI::Option* threads(int& value) {
    return number("--threads", value, "OpenMP threads (oneDNN and rimc's loops)", 1, max_threads());
  }

  /// A check to run after parsing, before the program loads anything (throw usage_error).
  void check(std::function<void()> f) { checks_.push_back(std::move(f)); }

  /// Parses argv: --help prints the flags and exits 0; an error prints
  /// "<program>: <message>" and exits 2. A bad RIMC_MAX_ISA is reported here too.
  void parse(int argc, char** argv) {
    try {
      app_.parse(argc, argv);
      for (const auto& c : checks_) c();
      (void)rimc::active_isa();
    } catch (const CLI::CallForHelp& e) {
      std::exit(app_.exit(e));
    } catch (const CLI::ParseError& e) {
      std::fprintf(stderr, "%s: %s\nRun with --help for the flags.\n", program_.c_str(), e.what());
      std::exit(2);
    } catch (const usage_error& e) {
      std::fprintf(stderr, "%s: %s\n", program_.c_str(), e.what());
      std::exit(2);
    } catch (const rimc::error& e) {
      std::fprintf(stderr, "%s: %s\n", program_.c_str(), e.what());
      std::exit(2);
    }
  }

  [[nodiscard]] CLI::App& app() noexcept { return app_; }

 private:
  std::string program_;
  CLI::App app_;
  std::vector<std::function<void()>> checks_;
};

}  // namespace rimc::cli
