#pragma once
/// \file
/// Thread-count control. oneDNN (Debian's build) and rimc's own parallel
/// loops run on OpenMP, so the count set here governs both.

#include <rimc/core/error.hpp>

#include <omp.h>

#include <algorithm>

namespace rimc {

/// Threads the calling thread's parallel regions and oneDNN primitives use.
[[nodiscard]] inline int num_threads() noexcept { return omp_get_max_threads(); }

/// The largest thread count set_num_threads accepts: 4 x the processors
/// OpenMP sees (oversubscribing further only slows the work down, and OpenMP
/// runtimes fail on counts in the tens of thousands).
[[nodiscard]] inline int max_threads() noexcept { return 4 * std::max(omp_get_num_procs(), 1); }

/// Sets the thread count for parallel work started from the calling thread
/// (1..max_threads()). Kernels key their cached primitives on it, so changing it is safe.
inline void set_num_threads(int n) {
  if (n < 1 || n > max_threads()) {
    throw value_error(detail::concat("set_num_threads: n must be in [1, ", max_threads(), "] (4 x the ",
                                     omp_get_num_procs(), " processors), got ", n));
  }
  omp_set_num_threads(n);
}

/// Sets the thread count for its lifetime and restores the previous one after.
class thread_count_guard {
 public:
  /// Sets `n` threads (as set_num_threads: value_error outside [1, max_threads()]).
  explicit thread_count_guard(int n) : previous_(num_threads()) { set_num_threads(n); }
  thread_count_guard(const thread_count_guard&) = delete;
  thread_count_guard& operator=(const thread_count_guard&) = delete;
  ~thread_count_guard() { omp_set_num_threads(previous_); }

 private:
  int previous_;
};

}  // namespace rimc
