// The MPI side of sweep_runner.hpp (included by it when RIMC_SWEEP_WITH_MPI is defined; see its
// comment for the protocol's guarantees).
//
// Rank 0 coordinates on its main thread (the only thread that calls MPI: MPI_THREAD_FUNNELED) and
// runs items on a second thread; ranks 1..n-1 run items. Messages, all between rank 0 and one other
// rank:
//   hello   (r -> 0)  the rank's threads, tier, item count and a hash of the item keys: every rank
//                     must list the same items and compute them the same way, or rank 0 stops the job;
//   work    (0 -> r)  the index of the next item, or -1: no more work, finish;
//   result  (r -> 0)  an item's index and its CSV lines;
//   failure (r -> 0)  an item threw: its message; rank 0 hands out no more work and reports it.
// Rank 0 polls with MPI_Iprobe and sleeps 2 ms when idle, so the coordinator costs no core.
#pragma once

#include <mpi.h>

namespace rimc::sweep {

/// The processes of an MPI job running a study (see the file comment); sweep::session in a build
/// with MPI. Construct it first in main: it initialises MPI.
class mpi_job {
 public:
  mpi_job(int& argc, char**& argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    if (provided < MPI_THREAD_FUNNELED) {
      std::fprintf(stderr, "MPI: thread support level %d, need MPI_THREAD_FUNNELED\n", provided);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
  }
  ~mpi_job() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  mpi_job(const mpi_job&) = delete;
  mpi_job& operator=(const mpi_job&) = delete;

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] int local_size() const noexcept { return local_size_; }
  /// The default --threads: this process's share of its node (sweep::default_threads).
  [[nodiscard]] int default_threads() const { return sweep::default_threads(local_size_); }

  /// After an error on this process: with several ranks, stops every rank (MPI_Abort: the others
  /// may be waiting for this one); otherwise returns `code` for main to return.
  [[nodiscard]] int fail(int code) const {
    if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
    return code;
  }

  /// Runs the study: in this process alone when it is the only rank, otherwise over every rank;
  /// returns on every rank when the sweep is done; a failed item (on any rank) throws on rank 0
  /// once the items in flight are in, and ends the other ranks quietly.
  void run(const study& s, const run_options& o) {
    if (size_ == 1) run_serial(s, o);
    else if (rank_ == 0) coordinate(s, o);
    else work(s, o);
  }

 private:
  enum tag : int { hello = 1, work_tag = 2, result = 3, failure = 4 };

  /// A hash of the item keys (FNV-1a), to check every rank lists the same items.
  static std::uint64_t items_hash(const study& s) {
    std::uint64_t h = 1469598103934665603ULL;
    for (const auto& k : s.items) {
      for (const unsigned char c : k) h = (h ^ c) * 1099511628211ULL;
      h = (h ^ 0xffU) * 1099511628211ULL;
    }
    return h;
  }

  static json hello_of(const study& s, const run_options& o) {
    json h = machine_context(o.threads);
    h["items"] = s.items.size();
    h["items_hash"] = std::to_string(items_hash(s));
    h["shard"] = rimc::detail::concat(o.shard, "/", o.shards);
    return h;
  }

  static void send_text(const std::string& text, int to, int tag) {
    MPI_Send(text.data(), static_cast<int>(text.size()), MPI_CHAR, to, tag, MPI_COMM_WORLD);
  }
  /// Receives a message already probed (`st`).
  static std::string recv_text(const MPI_Status& st) {
    int n = 0;
    MPI_Get_count(&st, MPI_CHAR, &n);
    std::string text(static_cast<std::size_t>(n), '\0');
    MPI_Recv(text.data(), n, MPI_CHAR, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    return text;
  }
  static void send_item(long long i, int to) { MPI_Send(&i, 1, MPI_LONG_LONG, to, work_tag, MPI_COMM_WORLD); }

  /// "<index>\n<rows>\n<row>...<side row>..." (no line holds a newline) and back.
  static std::string pack(std::size_t i, const output& out) {
    std::string t = rimc::detail::concat(i, "\n", out.rows.size());
    for (const auto& l : out.rows) t += "\n" + l;
    for (const auto& l : out.side) t += "\n" + l;
    return t;
  }
  static std::pair<std::size_t, output> unpack(const std::string& t) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (;;) {
      const auto nl = t.find('\n', start);
      parts.push_back(t.substr(start, nl - start));
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    const std::size_t i = std::stoull(parts.at(0)), rows = std::stoull(parts.at(1));
    if (parts.size() < rows + 2) throw value_error(rimc::detail::concat("a result of ", rows, " rows has ", parts.size() - 2, " lines"));
    output out;
    out.rows.assign(parts.begin() + 2, parts.begin() + 2 + static_cast<std::ptrdiff_t>(rows));
    out.side.assign(parts.begin() + 2 + static_cast<std::ptrdiff_t>(rows), parts.end());
    return {i, std::move(out)};
  }

  void work(const study& s, const run_options& o) const {
    send_text(hello_of(s, o).dump(), 0, hello);
    detail::kill_hook hook(rank_);
    for (;;) {
      long long i = -1;
      MPI_Recv(&i, 1, MPI_LONG_LONG, 0, work_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      if (i < 0) return;
      std::string reply;
      int t = result;
      try {
        const output out = detail::run_item(s, static_cast<std::size_t>(i), rank_);
        hook.computed();
        reply = pack(static_cast<std::size_t>(i), out);
      } catch (const std::exception& e) {
        reply = rimc::detail::concat("rank ", rank_, ", item '", s.items[static_cast<std::size_t>(i)], "': ", e.what());
        t = failure;
      }
      send_text(reply, 0, t);
    }
  }

  void coordinate(const study& s, const run_options& o) {
    ledger led(s, o, machine_context(o.threads));
    const std::vector<std::size_t> pending = led.pending();
    std::fprintf(stderr, "sweep %s: %zu items, %zu finished, %zu to run on %d ranks x %d threads\n", s.name.c_str(),
                 led.size(), led.done_count(), pending.size(), size_, o.threads);
    std::mutex m;
    std::size_t next = 0;
    bool stop = false;
    std::string failed;  // the first failure's message
    // The next item for anyone, or none.
    const auto take = [&]() -> std::optional<std::size_t> {
      std::lock_guard lock(m);
      if (stop || next == pending.size()) return std::nullopt;
      return pending[next++];
    };
    const auto fail = [&](const std::string& why) {
      std::lock_guard lock(m);
      if (!stop) failed = why;
      stop = true;
    };

    // Rank 0's own share, on a second thread (OpenMP threads per thread are set per thread).
    std::thread local([&] {
      try {
        set_num_threads(o.threads);
        detail::kill_hook hook(0);
        while (const auto i = take()) {
          auto out = detail::run_item(s, *i, 0);
          hook.computed();
          led.complete(*i, std::move(out));
        }
      } catch (const std::exception& e) {
        fail(rimc::detail::concat("rank 0: ", e.what()));
      }
    });

    const json ours = hello_of(s, o);
    int workers = size_ - 1;  // ranks not yet told to finish
    while (workers > 0) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
      if (!flag) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        continue;
      }
      const std::string text = recv_text(st);
      const int from = st.MPI_SOURCE;
      if (st.MPI_TAG == hello) {
        try {
          const json theirs = json::parse(text);
          for (auto it = ours.begin(); it != ours.end(); ++it)
            detail::check_same(rimc::detail::concat("rank ", from), it.key(), theirs.value(it.key(), json(nullptr)), it.value(),
                               "every rank must run the same sweep the same way: same flags, --threads, RIMC_MAX_ISA and oneDNN ISA (same CPUs)");
        } catch (const std::exception& e) {
          fail(e.what());
        }
      } else if (st.MPI_TAG == result) {
        try {
          auto [i, out] = unpack(text);
          led.complete(i, std::move(out));
        } catch (const std::exception& e) {
          fail(rimc::detail::concat("rank ", from, "'s result: ", e.what()));
        }
      } else if (st.MPI_TAG == failure) {
        fail(text);
      }
      const auto i = take();
      send_item(i ? static_cast<long long>(*i) : -1LL, from);
      if (!i) --workers;
    }
    local.join();
    led.flush();
    if (!failed.empty()) throw std::runtime_error(failed);
  }

  int rank_ = 0, size_ = 1, local_size_ = 1;
};

}  // namespace rimc::sweep
