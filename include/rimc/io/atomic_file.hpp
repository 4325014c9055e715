#pragma once
/// \file
/// Atomic file replacement: data goes to a temporary file in the target's
/// directory, is flushed to disk, and is renamed over the target, so a
/// failure at any point leaves the previous file intact.

#include <rimc/core/error.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace rimc {

namespace detail {
inline std::string errno_text() { return std::strerror(errno); }

/// Writes all of [p, p + n) to fd; throws io_error naming `path` on failure.
inline void write_all(int fd, const void* p, std::size_t n, const std::filesystem::path& path) {
  const auto* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw io_error(concat("writing ", path.string(), ": ", errno_text()));
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
}
}  // namespace detail

/// Receives the content of a file being written atomically; `write` may be called many times.
class atomic_writer {
 public:
  /// Writes to the open descriptor `fd` of temporary file `temp` (named in errors); does not own `fd`.
  explicit atomic_writer(int fd, std::filesystem::path temp) : fd_(fd), temp_(std::move(temp)) {}
  /// Appends [data, data + bytes); io_error on failure.
  void write(const void* data, std::size_t bytes) { detail::write_all(fd_, data, bytes, temp_); }
  /// \overload
  void write(std::string_view s) { write(s.data(), s.size()); }

 private:
  int fd_;
  std::filesystem::path temp_;
};

/// A file being replaced atomically: its content goes to a temporary file in
/// the target's directory; `finish` flushes it to disk and `commit` renames
/// it over the target. Destroyed before `commit` (an exception on the way),
/// it removes the temporary file and the target is left as it was. Several
/// staged files finished before any is committed replace a set of files
/// together unless a rename itself fails.
class staged_file {
 public:
  /// Opens a temporary file beside `path`; io_error when it cannot be created.
  explicit staged_file(std::filesystem::path path) : path_(std::move(path)) {
    dir_ = path_.has_parent_path() ? path_.parent_path() : std::filesystem::path(".");
    std::string name = ".";  // appended piecewise: "." + string trips GCC 12's -Wrestrict false positive
    name += path_.filename().string();
    name += ".tmp-XXXXXX";
    std::string templ = (dir_ / name).string();
    fd_ = ::mkstemp(templ.data());
    if (fd_ < 0) {
      throw io_error(detail::concat("cannot create a temporary file in ", dir_.string(), ": ", detail::errno_text()));
    }
    temp_ = templ;
  }
  staged_file(const staged_file&) = delete;
  staged_file& operator=(const staged_file&) = delete;
  ~staged_file() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove(temp_, ec);
    }
  }

  /// Where the content goes.
  [[nodiscard]] atomic_writer writer() const { return atomic_writer(fd_, temp_); }

  /// Flushes the content to disk and closes the temporary file.
  void finish() {
    if (::fsync(fd_) != 0) throw io_error(detail::concat("flushing ", temp_.string(), ": ", detail::errno_text()));
    if (::fchmod(fd_, 0644) != 0) {
      throw io_error(detail::concat("setting the mode of ", temp_.string(), ": ", detail::errno_text()));
    }
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) throw io_error(detail::concat("closing ", temp_.string(), ": ", detail::errno_text()));
  }

  /// Renames the finished temporary file over the target and makes the rename durable.
  void commit() {
    if (fd_ >= 0) finish();
    std::error_code ec;
    std::filesystem::rename(temp_, path_, ec);
    if (ec) throw io_error(detail::concat("renaming ", temp_.string(), " to ", path_.string(), ": ", ec.message()));
    committed_ = true;
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::filesystem::path path_, dir_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Replaces `path` atomically with what `produce` writes. If `produce` throws,
/// or any file operation fails, the temporary file is removed, `path` is left
/// as it was, and the exception propagates.
inline void write_file_atomically(const std::filesystem::path& path, const std::function<void(atomic_writer&)>& produce) {
  staged_file file(path);
  atomic_writer w = file.writer();
  produce(w);
  file.commit();
}

}  // namespace rimc
