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
  explicit atomic_writer(int fd, std::filesystem::path temp) : fd_(fd), temp_(std::move(temp)) {}
  void write(const void* data, std::size_t bytes) { detail::write_all(fd_, data, bytes, temp_); }
  void write(std::string_view s) { write(s.data(), s.size()); }

 private:
  int fd_;
  std::filesystem::path temp_;
};

/// Replaces `path` atomically with what `produce` writes. If `produce` throws,
/// or any file operation fails, the temporary file is removed, `path` is left
/// as it was, and the exception propagates.
inline void write_file_atomically(const std::filesystem::path& path, const std::function<void(atomic_writer&)>& produce) {
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::string name = ".";
  name += path.filename().string();
  name += ".tmp-XXXXXX";
  std::string templ = (dir / name).string();
  const int fd = ::mkstemp(templ.data());
  if (fd < 0) throw io_error(detail::concat("cannot create a temporary file in ", dir.string(), ": ", detail::errno_text()));
  const std::filesystem::path temp(templ);
  bool open = true;
  try {
    atomic_writer w(fd, temp);
    produce(w);
    if (::fsync(fd) != 0) throw io_error(detail::concat("flushing ", temp.string(), ": ", detail::errno_text()));
    if (::fchmod(fd, 0644) != 0) throw io_error(detail::concat("setting the mode of ", temp.string(), ": ", detail::errno_text()));
    open = false;
    if (::close(fd) != 0) {
      throw io_error(detail::concat("closing ", temp.string(), ": ", detail::errno_text()));
    }
  } catch (...) {
    if (open) ::close(fd);
    std::error_code ec;
    std::filesystem::remove(temp, ec);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    throw io_error(detail::concat("renaming ", temp.string(), " to ", path.string(), ": ", ec.message()));
  }
  // Make the rename itself durable.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace rimc
