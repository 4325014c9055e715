// One runner for every study program (calibration_sweeps, lifetime): a study is a list of work
// items (a setting x a chip seed, or finer), each producing CSV rows that depend only on the item;
// the runner executes them in one process, or over MPI ranks when the examples are built with MPI
// (RIMC_SWEEP_WITH_MPI; rimc's library headers stay MPI-free), and keeps the results on disk so a
// killed sweep resumes where it stopped.
//
// Files in the output directory, for a study named S:
//   S.csv        the rows of every finished item, in the study's item order (not completion order),
//                rewritten atomically after every finished item (see ledger::complete for the rate);
//   S_run.json   what the rows depend on besides the item: the study's settings, the OpenMP threads
//                per process and the instruction-set tier (both change a calibration's last bits);
//   whatever the study derives from the rows (S_summary.csv), rewritten with S.csv.
//
// Reproducibility: a row depends only on its item and on S_run.json, never on the rank that ran it
// or the order, so the CSV from N ranks equals the single-process CSV at the same threads per process
// byte for byte except its timing columns. Resume (--resume) reads S_run.json and S.csv, refuses a
// run whose settings, threads or tier differ (naming the field and both values), and runs only the
// items not in S.csv. --merge DIR takes over the finished items of other output directories (shards
// run on separate allocations, --shard K/N), checked the same way; an item finished in two places
// must have identical rows.
//
// With MPI, rank 0 hands out items one at a time as ranks ask (items differ in cost by 10x and more)
// and runs items itself on a second thread; every other rank runs items and sends their rows back;
// only rank 0 touches the files. A rank that dies takes the job down (Open MPI aborts every rank of a
// job when one exits abnormally): the items in flight are lost, everything finished is on disk, and
// --resume runs the rest. rank 0 does not reassign the lost items within the job.
//
// Test hook: RIMC_SWEEP_TEST_KILL="<rank>:<k>" makes that rank SIGKILL itself when its (k+1)-th item
// has been computed but not yet reported: the item is lost as in a crash.
#pragma once

#include "cli.hpp"

#include <rimc/core/error.hpp>
#include <rimc/core/parallel.hpp>
#include <rimc/io/atomic_file.hpp>
#include <rimc/kernels/arch/isa.hpp>

#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace rimc::sweep {

using json = nlohmann::ordered_json;

/// What an item gives: its rows, and rows of the study's side table.
struct output {
  std::vector<std::string> rows;  ///< at least one, no newlines; each row's item_of is the item's key
  std::vector<std::string> side;  ///< side-table rows (their first field(s) are their key: see side_table)
};

/// A second table of a study, for rows that are not per item: e.g. the lifetime study's offline
/// preparation per drift model, which each process computes once before its first item of that model
/// and reports with that item. A row is keyed by the text before its `key_fields`-th comma; rows
/// reported more than once (several processes prepared the same thing) must agree outside the timing
/// columns (named "seconds" or "*_seconds"), and the first one is kept.
struct side_table {
  std::string name;               ///< file stem: <out>/<name>.csv; empty: no side table
  std::string header;             ///< its header line
  std::size_t key_fields = 1;     ///< leading fields that identify a row
  std::vector<std::string> keys;  ///< every possible key, in the file's order
};

/// A study: its items, how to run one, and how its rows are recorded.
struct study {
  std::string name;                ///< file stem: <out>/<name>.csv, <name>_run.json
  std::string header;              ///< the CSV header line (no newline)
  std::vector<std::string> items;  ///< each item's key, unique, in the CSV's order
  /// The key of the item a CSV line belongs to (throw on a malformed line).
  std::function<std::string(std::string_view line)> item_of;
  /// Runs item i: its rows (item_of of each is items[i]) and side rows.
  std::function<output(std::size_t i)> run;
  /// Writes what is derived from the rows (a summary) into `dir`, from every finished line in item order.
  std::function<void(const std::filesystem::path& dir, const std::vector<std::string>& lines)> derive;
  /// Every setting that changes what an item computes (not threads, output, resume or shard). Settings
  /// that only choose which items exist (seeds, grids) belong in the item keys instead: a resumed run
  /// may then list more items (more seeds extend a study), never fewer (rows would be dropped).
  json settings;
  side_table side;  ///< optional
};

/// How this process takes part in the sweep: where the files go, what it resumes or merges.
struct run_options {
  std::filesystem::path out;                ///< the output directory
  bool resume = false;                      ///< continue the sweep in `out`
  std::vector<std::filesystem::path> merge;  ///< other output directories whose finished items are taken over
  std::size_t shard = 0, shards = 1;        ///< run only items i with i % shards == shard
  int threads = 1;                          ///< OpenMP threads per process
};

/// oneDNN's instruction set on this process (ONEDNN_MAX_CPU_ISA caps it), by name.
[[nodiscard]] inline std::string onednn_isa() {
  using dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case cpu_isa::sse41: return "sse41";
    case cpu_isa::avx: return "avx";
    case cpu_isa::avx2: return "avx2";
    case cpu_isa::avx2_vnni: return "avx2_vnni";
    case cpu_isa::avx512_core: return "avx512_core";
    case cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return rimc::detail::concat("dnnl_cpu_isa ", static_cast<int>(dnnl::get_effective_cpu_isa()));
  }
}

/// What a row's bits depend on besides the item and the settings: the OpenMP threads per process
/// (oneDNN's reductions split by thread), rimc's kernel tier and oneDNN's instruction set (its kernels
/// round differently per ISA; rimc's tiers agree bitwise, but a cap is a setting the user chose).
[[nodiscard]] inline json machine_context(int threads) {
  return json{{"threads_per_process", threads},
              {"isa", std::string(to_string(active_isa()))},
              {"onednn_isa", onednn_isa()}};
}

/// The fields of a CSV line of a study (no quoting: no field holds a comma); views into `line`.
[[nodiscard]] inline std::vector<std::string_view> fields_of(std::string_view line) {
  std::vector<std::string_view> f;
  for (std::size_t start = 0;;) {
    const auto c = line.find(',', start);
    f.push_back(line.substr(start, c == std::string_view::npos ? std::string_view::npos : c - start));
    if (c == std::string_view::npos) return f;
    start = c + 1;
  }
}

/// A CSV field as a number (value_error naming `what` and the text unless all of it parses).
[[nodiscard]] inline double number_of(std::string_view field, std::string_view what) {
  double v = 0;
  const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (ec != std::errc{} || end != field.data() + field.size())
    throw value_error(rimc::detail::concat(what, ": '", field, "' is not a number"));
  return v;
}

namespace detail {

/// Lines of a text file; a missing final newline is accepted, '\r' stripped.
inline std::vector<std::string> read_lines(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw io_error(rimc::detail::concat(p.string(), ": cannot open"));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) {
    if (!l.empty() && l.back() == '\r') l.pop_back();
    lines.push_back(std::move(l));
  }
  return lines;
}

inline std::string text_of(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw io_error(rimc::detail::concat(p.string(), ": cannot open"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The text of `line` before its n-th comma (all of it if it has fewer).
inline std::string leading_fields(std::string_view line, std::size_t n) {
  std::size_t pos = 0;
  for (std::size_t k = 0; k < n; ++k) {
    pos = line.find(',', pos);
    if (pos == std::string_view::npos) return std::string(line);
    ++pos;
  }
  return std::string(line.substr(0, pos - 1));
}

/// `line`'s fields without the timing columns of `header` ("seconds", "*_seconds").
inline std::vector<std::string_view> untimed_fields(std::string_view header, std::string_view line) {
  const auto h = fields_of(header), f = fields_of(line);
  std::vector<std::string_view> out;
  for (std::size_t i = 0; i < f.size(); ++i) {
    const std::string_view name = i < h.size() ? h[i] : "";
    const bool timing = name == "seconds" || (name.size() > 8 && name.ends_with("_seconds"));
    if (!timing) out.push_back(f[i]);
  }
  return out;
}

/// The field `name` of two manifests differs: a message naming it and both values.
inline void check_same(const std::string& what, const std::string& field, const json& theirs, const json& ours,
                       const std::string& hint = "") {
  if (theirs == ours) return;
  throw value_error(rimc::detail::concat(what, ": '", field, "' differs: it was ", theirs.dump(), ", this run has ",
                                         ours.dump(), hint.empty() ? "" : " (", hint, hint.empty() ? "" : ")"));
}

}  // namespace detail

/// The sweep's results as rank 0 keeps them: finished items' lines, written to disk in item order.
class ledger {
 public:
  /// Prepares `o.out` for `s`: loads the finished items (--resume, --merge), writes the manifest.
  ledger(const study& s, const run_options& o, json context) : s_(s), o_(o), context_(std::move(context)) {
    lines_.resize(s.items.size());
    for (std::size_t i = 0; i < s.items.size(); ++i) {
      if (!index_.emplace(s.items[i], i).second)
        throw value_error(rimc::detail::concat("study ", s.name, ": item '", s.items[i], "' is listed twice"));
    }
    side_.resize(s.side.keys.size());
    for (std::size_t i = 0; i < s.side.keys.size(); ++i) {
      if (!side_index_.emplace(s.side.keys[i], i).second)
        throw value_error(rimc::detail::concat("study ", s.name, ": side key '", s.side.keys[i], "' is listed twice"));
    }
    std::filesystem::create_directories(o.out);
    lock();
    if (o.resume) load(o.out, true);
    for (const auto& d : o.merge) load(d, false);
    // The CSV first (the items taken over, in order; a fresh run empties it), then the manifest: a
    // crash between the two leaves a manifest that, if it differs, makes --resume refuse, never a
    // CSV passed off under another run's settings.
    write();
    write_file_atomically(manifest_path(o.out), [&](atomic_writer& w) { w.write(manifest().dump(2) + "\n"); });
  }

  [[nodiscard]] std::size_t size() const noexcept { return lines_.size(); }
  [[nodiscard]] std::size_t done_count() const {
    std::lock_guard lock(m_);
    return done_;
  }
  [[nodiscard]] bool done(std::size_t i) const {
    std::lock_guard lock(m_);
    return lines_.at(i).has_value();
  }

  /// The items this process group still has to run, in item order.
  [[nodiscard]] std::vector<std::size_t> pending() const {
    std::vector<std::size_t> p;
    for (std::size_t i = 0; i < lines_.size(); ++i)
      if (i % o_.shards == o_.shard && !done(i)) p.push_back(i);
    return p;
  }

  /// Records item i's lines (thread-safe) and rewrites the files. When the last rewrite took over
  /// 50 ms (a CSV of many thousand rows), a rewrite is skipped while the time since it is under 20
  /// times its duration, so at most ~5% of the time goes to rewriting; flush() writes whatever is
  /// pending. Items finished but not yet written are lost in a crash and rerun by --resume.
  void complete(std::size_t i, output out) {
    std::lock_guard lock(m_);
    check_lines(i, out.rows, "the run");
    if (lines_.at(i)) throw value_error(rimc::detail::concat("item '", s_.items[i], "' finished twice"));
    for (auto& l : out.side) add_side(std::move(l), "the run");
    lines_[i] = std::move(out.rows);
    ++done_;
    dirty_ = true;
    const auto now = std::chrono::steady_clock::now();
    if (last_write_duration_ < std::chrono::milliseconds(50) || now - last_write_end_ >= 20 * last_write_duration_)
      write_locked();
  }

  /// Writes the files if any item finished since the last write.
  void flush() {
    std::lock_guard lock(m_);
    if (dirty_) write_locked();
  }

  /// <dir>/<name>_run.json.
  [[nodiscard]] std::filesystem::path manifest_path(const std::filesystem::path& dir) const {
    return dir / (s_.name + "_run.json");
  }
  /// <dir>/<name>.csv.
  [[nodiscard]] std::filesystem::path csv_path(const std::filesystem::path& dir) const { return dir / (s_.name + ".csv"); }

 private:
  /// Holds <out>/.<name>.lock (flock) while the ledger lives: a second run writing into the same
  /// directory is refused instead of interleaving its rewrites with this one's. A file system
  /// without locks (some NFS mounts) only gets a warning.
  void lock() {
    const auto path = o_.out / ("." + s_.name + ".lock");
    lock_.fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_.fd < 0) throw io_error(rimc::detail::concat(path.string(), ": cannot open: ", std::strerror(errno)));
    if (::flock(lock_.fd, LOCK_EX | LOCK_NB) == 0) {
      lock_.path = path;
      return;
    }
    const int err = errno;
    if (err == EWOULDBLOCK)
      throw io_error(rimc::detail::concat(o_.out.string(), ": another run of ", s_.name, " is writing here (", path.string(),
                                          " is locked)"));
    std::fprintf(stderr, "warning: %s: cannot lock (%s); make sure no other run writes here\n", path.c_str(),
                 std::strerror(err));
  }

  /// The lock file's descriptor; closing it releases the lock, and the holder removes the file.
  struct lock_file {
    int fd = -1;
    std::filesystem::path path;  ///< set while held
    lock_file() = default;
    lock_file(const lock_file&) = delete;
    lock_file& operator=(const lock_file&) = delete;
    ~lock_file() {
      if (!path.empty()) ::unlink(path.c_str());
      if (fd >= 0) ::close(fd);
    }
  };

  /// Takes side row `line` unless its key has one (which must then agree, timing aside).
  void add_side(std::string line, const std::string& from) {
    const std::string key = detail::leading_fields(line, s_.side.key_fields);
    const auto it = side_index_.find(key);
    if (it == side_index_.end())
      throw value_error(rimc::detail::concat(from, ": side row key '", key, "' is not a key of ", s_.side.name));
    auto& slot = side_[it->second];
    if (!slot) {
      slot = std::move(line);
      return;
    }
    if (detail::untimed_fields(s_.side.header, *slot) != detail::untimed_fields(s_.side.header, line))
      throw value_error(rimc::detail::concat(from, ": ", s_.side.name, " row '", key, "' was computed twice with different results: '",
                                             *slot, "' and '", line, "'"));
  }

  [[nodiscard]] json manifest() const {
    json m;
    m["study"] = s_.name;
    m["format"] = 1;
    m["items"] = s_.items.size();
    m["settings"] = s_.settings;
    m["context"] = context_;
    return m;
  }

  void check_lines(std::size_t i, const std::vector<std::string>& lines, const std::string& from) const {
    if (lines.empty()) throw value_error(rimc::detail::concat(from, ": item '", s_.items[i], "' gave no row"));
    for (const auto& l : lines) {
      if (l.find('\n') != std::string::npos)
        throw value_error(rimc::detail::concat(from, ": a row of item '", s_.items[i], "' contains a newline"));
      const std::string k = s_.item_of(l);
      if (k != s_.items[i])
        throw value_error(rimc::detail::concat(from, ": a row of item '", s_.items[i], "' belongs to item '", k, "'"));
    }
  }

  /// Takes over the finished items of `dir` (own: the output directory being resumed).
  void load(const std::filesystem::path& dir, bool own) {
    const std::string what = rimc::detail::concat(own ? "--resume" : "--merge", " ", dir.string());
    const auto mpath = manifest_path(dir), cpath = csv_path(dir);
    if (!std::filesystem::exists(mpath)) {
      if (own && !std::filesystem::exists(cpath)) {
        std::fprintf(stderr, "%s: nothing to resume, starting the sweep\n", what.c_str());
        return;
      }
      throw io_error(rimc::detail::concat(what, ": no ", mpath.filename().string(),
                                          std::filesystem::exists(cpath) ? " beside " + cpath.string() : "",
                                          " (not a resumable sweep's output)"));
    }
    json m;
    try {
      m = json::parse(detail::text_of(mpath));
    } catch (const json::exception& e) {
      throw io_error(rimc::detail::concat(what, ": ", mpath.string(), " is not valid JSON: ", e.what()));
    }
    const json ours = manifest();
    for (const char* k : {"study", "format", "items", "settings", "context"})
      if (!m.is_object() || !m.contains(k))
        throw io_error(rimc::detail::concat(what, ": ", mpath.string(), " has no '", k, "'"));
    for (const char* k : {"settings", "context"})
      if (!m[k].is_object()) throw io_error(rimc::detail::concat(what, ": ", mpath.string(), ": '", k, "' is not an object"));
    detail::check_same(what, "study", m["study"], ours["study"]);
    detail::check_same(what, "format", m["format"], ours["format"]);
    for (auto it = ours["settings"].begin(); it != ours["settings"].end(); ++it)
      detail::check_same(what, it.key(), m["settings"].contains(it.key()) ? m["settings"][it.key()] : json(nullptr), it.value());
    for (auto it = m["settings"].begin(); it != m["settings"].end(); ++it)
      if (!ours["settings"].contains(it.key())) detail::check_same(what, it.key(), it.value(), json(nullptr));
    detail::check_same(what, "threads_per_process", m["context"].value("threads_per_process", json(nullptr)),
                       context_["threads_per_process"], "a calibration's last bits depend on it: pass --threads to match");
    detail::check_same(what, "isa", m["context"].value("isa", json(nullptr)), context_["isa"],
                       "rimc's kernel tier: set RIMC_MAX_ISA to match");
    detail::check_same(what, "onednn_isa", m["context"].value("onednn_isa", json(nullptr)), context_["onednn_isa"],
                       "oneDNN's kernels round differently per ISA: set ONEDNN_MAX_CPU_ISA to match, or run on the same CPUs");
    if (!std::filesystem::exists(cpath)) return;  // killed before the first item finished
    const auto lines = detail::read_lines(cpath);
    if (lines.empty() || lines.front() != s_.header)
      throw io_error(rimc::detail::concat(what, ": ", cpath.string(), " line 1 is '", lines.empty() ? "" : lines.front(),
                                          "', expected the header '", s_.header, "'"));
    std::map<std::size_t, std::vector<std::string>> found;
    for (std::size_t n = 1; n < lines.size(); ++n) {
      if (lines[n].empty()) continue;
      std::string key;
      try {
        key = s_.item_of(lines[n]);
      } catch (const std::exception& e) {
        throw io_error(rimc::detail::concat(what, ": ", cpath.string(), " line ", n + 1, ": ", e.what()));
      }
      const auto it = index_.find(key);
      if (it == index_.end())
        throw io_error(rimc::detail::concat(what, ": ", cpath.string(), " line ", n + 1, ": item '", key,
                                            "' is not an item of this sweep"));
      found[it->second].push_back(lines[n]);
    }
    std::size_t added = 0;
    for (auto& [i, l] : found) {
      if (lines_[i]) {
        if (*lines_[i] != l)
          throw value_error(rimc::detail::concat(what, ": item '", s_.items[i],
                                                 "' is finished in two places with different rows: '", lines_[i]->front(),
                                                 "' and '", l.front(), "'"));
        continue;
      }
      lines_[i] = std::move(l);
      ++done_;
      ++added;
    }
    std::fprintf(stderr, "%s: %zu of %zu items finished there\n", what.c_str(), added, lines_.size());
    if (s_.side.name.empty()) return;
    const auto spath = dir / (s_.side.name + ".csv");
    if (!std::filesystem::exists(spath)) return;
    const auto side = detail::read_lines(spath);
    if (side.empty() || side.front() != s_.side.header)
      throw io_error(rimc::detail::concat(what, ": ", spath.string(), " line 1 is '", side.empty() ? "" : side.front(),
                                          "', expected the header '", s_.side.header, "'"));
    for (std::size_t n = 1; n < side.size(); ++n)
      if (!side[n].empty()) add_side(side[n], rimc::detail::concat(what, ": ", spath.string(), " line ", n + 1));
  }

  void write() {
    std::lock_guard lock(m_);
    write_locked();
  }

  void write_locked() {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string> all;
    std::string raw = s_.header + "\n";
    for (const auto& l : lines_) {
      if (!l) continue;
      for (const auto& line : *l) {
        raw += line;
        raw += '\n';
        all.push_back(line);
      }
    }
    write_file_atomically(csv_path(o_.out), [&](atomic_writer& w) { w.write(raw); });
    if (!s_.side.name.empty()) {
      std::string side = s_.side.header + "\n";
      for (const auto& l : side_)
        if (l) side += *l + "\n";
      write_file_atomically(o_.out / (s_.side.name + ".csv"), [&](atomic_writer& w) { w.write(side); });
    }
    if (s_.derive) s_.derive(o_.out, all);
    dirty_ = false;
    last_write_end_ = std::chrono::steady_clock::now();
    last_write_duration_ = last_write_end_ - t0;
  }

  const study& s_;
  run_options o_;
  json context_;
  std::unordered_map<std::string, std::size_t> index_, side_index_;
  mutable std::mutex m_;
  std::vector<std::optional<std::vector<std::string>>> lines_;
  std::vector<std::optional<std::string>> side_;
  std::size_t done_ = 0;
  bool dirty_ = false;
  lock_file lock_;
  std::chrono::steady_clock::time_point last_write_end_{};
  std::chrono::steady_clock::duration last_write_duration_{};
};

namespace detail {

/// The test hook RIMC_SWEEP_TEST_KILL="<rank>:<k>": this rank's k, or -1.
inline long kill_after(int rank) {
  const char* v = std::getenv("RIMC_SWEEP_TEST_KILL");
  if (v == nullptr || *v == '\0') return -1;
  int r = -1;
  long k = -1;
  if (std::sscanf(v, "%d:%ld", &r, &k) != 2 || r < 0 || k < 0)
    throw value_error(rimc::detail::concat("RIMC_SWEEP_TEST_KILL: expected <rank>:<items>, got '", v, "'"));
  return r == rank ? k : -1;
}

/// Counts this process's computed items and kills it when the hook says so.
class kill_hook {
 public:
  explicit kill_hook(int rank) : after_(kill_after(rank)) {}
  void computed() {
    if (after_ >= 0 && count_++ == after_) {
      std::fprintf(stderr, "RIMC_SWEEP_TEST_KILL: killing this process with its item %ld computed, unreported\n",
                   after_ + 1);
      std::fflush(stderr);
      std::raise(SIGKILL);
    }
  }

 private:
  long after_;
  long count_ = 0;
};

/// Runs item i and reports the time to stderr.
inline output run_item(const study& s, std::size_t i, int rank) {
  const auto t0 = std::chrono::steady_clock::now();
  output out = s.run(i);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "[rank %d] item %zu/%zu done in %.2f s: %s\n", rank, i + 1, s.items.size(), secs, s.items[i].c_str());
  return out;
}

}  // namespace detail

/// OpenMP threads a process should use by default: its share of the node's cores when `local_ranks`
/// processes share the node, at most the cores it may run on (its affinity mask, e.g. mpirun's
/// --bind-to core or Slurm's --cpus-per-task), at least 1.
[[nodiscard]] inline int default_threads(int local_ranks) {
  const int node = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int mine = node;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) mine = std::max(1, CPU_COUNT(&set));
  return std::clamp(std::min(mine, node / std::max(1, local_ranks)), 1, max_threads());
}

/// A study program's flags, read before its sweep::session starts MPI: `parse()` returns them or
/// ends the process itself on --help (exit 0) and a bad flag (exit 2), so neither waits for MPI's
/// start-up (about half a second, more on a loaded machine) nor exits between MPI_Init and
/// MPI_Finalize; anything else it throws ends the process with exit 1 and the message. The
/// default --threads depends on the ranks sharing the node, so main settles it once the session
/// exists (session::default_threads()).
template <class Parse>
[[nodiscard]] auto flags_before_session(Parse&& parse) -> decltype(parse()) {
  try {
    return parse();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::exit(1);
  }
}

/// The runner's flags on an example's command line: --resume, --merge, --shard; `shard` and `merge`
/// hold the raw texts until run_options_of() checks them.
struct flags {
  bool resume = false;
  std::string merge, shard;

  /// Adds the flags to `cl`.
  void add_to(cli::command_line& cl) {
    cl.flag("--resume", resume,
            "continue the sweep in --out: run only the items not in its CSV (refused if the settings, --threads or the "
            "instruction-set tier differ)");
    cl.text("--merge", merge, "output directories (comma-separated) whose finished items are taken over, e.g. shards");
    cl.text("--shard", shard, "K/N: run only the items i with i mod N = K (0 <= K < N); merge the shards' outputs after");
  }

  /// The run options for output directory `out` at `threads` threads (usage_error naming the flag).
  [[nodiscard]] run_options options(const std::string& out, int threads) const {
    run_options o;
    o.out = out;
    o.resume = resume;
    o.threads = threads;
    if (!shard.empty()) {
      unsigned long long k = 0, n = 0;
      char tail = 0;
      if (std::sscanf(shard.c_str(), "%llu/%llu%c", &k, &n, &tail) != 2 || shard.find('-') != std::string::npos || n == 0 ||
          k >= n)
        throw cli::usage_error(rimc::detail::concat("--shard: must be K/N with 0 <= K < N, got '", shard, "'"));
      o.shard = static_cast<std::size_t>(k);
      o.shards = static_cast<std::size_t>(n);
    }
    std::stringstream ss(merge);
    for (std::string d; std::getline(ss, d, ',');) {
      if (d.empty()) continue;
      cli::check_input_dir("--merge", d);
      std::error_code ec;
      if (std::filesystem::equivalent(d, out, ec))
        throw cli::usage_error(rimc::detail::concat("--merge: '", d, "' is --out itself (use --resume)"));
      o.merge.emplace_back(d);
    }
    return o;
  }
};

/// Runs the items of `s` that `o` leaves to do, in this one process.
inline void run_serial(const study& s, const run_options& o) {
  ledger led(s, o, machine_context(o.threads));
  const auto pending = led.pending();
  std::fprintf(stderr, "sweep %s: %zu items, %zu finished, %zu to run in 1 process x %d threads\n", s.name.c_str(),
               led.size(), led.done_count(), pending.size(), o.threads);
  detail::kill_hook hook(0);
  for (const std::size_t i : pending) {
    auto out = detail::run_item(s, i, 0);
    hook.computed();
    led.complete(i, std::move(out));
  }
  led.flush();
}

}  // namespace rimc::sweep

#ifdef RIMC_SWEEP_WITH_MPI
#include "sweep_mpi.hpp"
#endif

namespace rimc::sweep {

#ifdef RIMC_SWEEP_WITH_MPI
/// The processes of a sweep: the ranks of an MPI job (one without mpiexec).
using session = mpi_job;
#else
/// The processes of a sweep in a build without MPI: this one (mpi_job's interface).
class session {
 public:
  session(int& /*argc*/, char**& /*argv*/) {}
  [[nodiscard]] int rank() const noexcept { return 0; }
  [[nodiscard]] int size() const noexcept { return 1; }
  [[nodiscard]] int local_size() const noexcept { return 1; }
  [[nodiscard]] int default_threads() const { return sweep::default_threads(1); }
  [[nodiscard]] int fail(int code) const noexcept { return code; }
  void run(const study& s, const run_options& o) const { run_serial(s, o); }
};
#endif

}  // namespace rimc::sweep
