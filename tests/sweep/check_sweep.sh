#!/usr/bin/env bash
# The sweep runner's checks (examples/sweep_runner.hpp), run by CTest (examples/CMakeLists.txt):
#
#   check_sweep.sh MODE SWEEPS_BINARY WORK_DIR
#
# reference        a small rho sweep (21 items) in one process: WORK_DIR/reference
# kill-resume      the same sweep, SIGKILLed with its 4th item computed but unreported, then --resume:
#                  the resume must skip the items written (3) and end with the reference's CSVs
# shards           shards 0/2 and 1/2 in separate directories, then --merge of both into a third
#                  (which runs nothing): the reference's CSVs
# refuse           --resume with another --steps, with another --threads, while another run holds the
#                  directory's lock, and over a CSV with a foreign row: each refused with the field and
#                  both values named, the files left unchanged
# mpi              mpiexec -n 2: the reference's CSVs; ranks with different --threads are refused; a rank
#                  without --threads takes its share of the node
# mpi-dead-worker  mpiexec -n 2 with rank 1 SIGKILLed with its 2nd item computed: the job fails, the
#                  finished items are on disk; mpiexec -n 2 --resume ends with the reference's CSVs
# lifetime-mpi     (SWEEPS_BINARY: the lifetime program) a small lifetime study, 1 process and 2 ranks:
#                  the same lifetime.csv, summary and offline-preparation table
#
# CSVs are compared field by field except timing columns (tools/compare_sweeps.py).
# Environment: RIMC_MPIEXEC (mpi modes), RIMC_PYTHON3 (default python3).
set -euo pipefail
mode=$1 bin=$2 work=$3
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${RIMC_PYTHON3:-python3}
[ -n "$py" ] || py=python3
base=(--sweep rho --seeds 2 --rhos 0.2 --realistic-rhos 0.2 --test-images 200 --bp-steps 3)
small=("${base[@]}" --steps 5 --threads 1)
ref=$work/reference
compare() { "$py" "$here/tools/compare_sweeps.py" "$ref" "$1" rho; }
fail() { echo "check_sweep $mode: $*" >&2; exit 1; }
mpi() { ASAN_OPTIONS=detect_leaks=0 "${RIMC_MPIEXEC:?RIMC_MPIEXEC not set}" -n 2 "$bin" "$@"; }
rows() { tail -n +2 "$1/rho.csv" | wc -l; }

case "$mode" in
  reference)
    rm -rf "$ref"
    "$bin" "${small[@]}" --out "$ref"
    [ "$(rows "$ref")" -eq 21 ] || fail "expected 21 rows, got $(rows "$ref")"
    ;;
  kill-resume)
    d=$work/killed
    rm -rf "$d"
    set +e
    RIMC_SWEEP_TEST_KILL=0:3 "$bin" "${small[@]}" --out "$d"
    rc=$?
    set -e
    [ "$rc" -eq 137 ] || fail "the killed run exited with $rc, expected 137 (SIGKILL)"
    # The 3 items finished before the kill are on disk (fewer only if a slow disk made the ledger
    # defer a write: see ledger::complete).
    n=$(rows "$d")
    [ "$n" -ge 1 ] && [ "$n" -le 3 ] || fail "the killed run left $n rows, expected the 3 items finished before the kill"
    "$bin" "${small[@]}" --out "$d" --resume 2>"$work/resume.log" || { cat "$work/resume.log" >&2; fail "resume failed"; }
    grep -q "$n of 21 items finished there" "$work/resume.log" || { cat "$work/resume.log" >&2; fail "resume did not take the $n items"; }
    grep -q "$((21 - n)) to run" "$work/resume.log" || fail "resume did not run exactly the $((21 - n)) missing items"
    compare "$d"
    ;;
  shards)
    for k in 0 1; do
      rm -rf "$work/shard$k"
      "$bin" "${small[@]}" --shard "$k/2" --out "$work/shard$k"
    done
    [ "$(rows "$work/shard0")" -eq 11 ] && [ "$(rows "$work/shard1")" -eq 10 ] || fail "shards hold $(rows "$work/shard0") and $(rows "$work/shard1") rows"
    rm -rf "$work/merged"
    "$bin" "${small[@]}" --merge "$work/shard0,$work/shard1" --out "$work/merged" 2>"$work/merge.log"
    grep -q ", 0 to run" "$work/merge.log" || { cat "$work/merge.log" >&2; fail "the merge ran items"; }
    compare "$work/merged"
    ;;
  refuse)
    d=$work/refuse
    rm -rf "$d"
    cp -r "$ref" "$d"
    snapshot() { (cd "$d" && sha256sum rho.csv rho_summary.csv rho_run.json); }
    before=$(snapshot)
    expect_refusal() {  # message, args...
      local msg=$1
      shift
      set +e
      out=$("$bin" "${base[@]}" --out "$d" --resume "$@" 2>&1)
      rc=$?
      set -e
      [ "$rc" -ne 0 ] || fail "resume with $* was accepted"
      grep -qF -- "$msg" <<<"$out" || { echo "$out" >&2; fail "resume with $* did not say: $msg"; }
      [ "$(snapshot)" = "$before" ] || fail "a refused resume ($*) changed the files"
    }
    expect_refusal "--resume $d: 'steps' differs: it was 5, this run has 7" --steps 7 --threads 1
    expect_refusal "--resume $d: 'threads_per_process' differs: it was 1, this run has 2" --steps 5 --threads 2
    # Another run writing into the directory (its lock held by flock(1)).
    set +e
    out=$(flock "$d/.rho.lock" "$bin" "${small[@]}" --out "$d" --resume 2>&1)
    rc=$?
    set -e
    [ "$rc" -ne 0 ] && grep -qF "another run of rho is writing here" <<<"$out" || { echo "$out" >&2; fail "a locked directory was written"; }
    [ "$(snapshot)" = "$before" ] || fail "a refused run (locked directory) changed the files"
    # A row of another sweep (rho 0.3 is not in this one) appended to the CSV.
    echo "relative,0,0.3,0,10,2,drifted,,1,50,0.1" >>"$d/rho.csv"
    before=$(snapshot)
    expect_refusal "rho.csv line 23: item 'relative,0,0.3,0,10,2,drifted,,1' is not an item of this sweep" --steps 5 --threads 1
    ;;
  mpi)
    rm -rf "$work/mpi"
    mpi "${small[@]}" --out "$work/mpi"
    compare "$work/mpi"
    # Ranks that would compute differently (another --threads on rank 1, MPMD launch) are refused.
    set +e
    out=$(ASAN_OPTIONS=detect_leaks=0 "$RIMC_MPIEXEC" -n 1 "$bin" "${base[@]}" --steps 5 --threads 1 --out "$work/mpi_mixed" : \
          -n 1 "$bin" "${base[@]}" --steps 5 --threads 2 --out "$work/mpi_mixed" 2>&1)
    rc=$?
    set -e
    [ "$rc" -ne 0 ] || fail "a job whose ranks use different --threads succeeded"
    grep -qF "rank 1: 'threads_per_process' differs: it was 2, this run has 1" <<<"$out" || { echo "$out" >&2; fail "no refusal message"; }
    # Without --threads a rank takes its share of the node, known only once MPI has started (the
    # flags are parsed before): unbound, two ranks on one node get min(affinity, cores / 2), at
    # least 1. Rank 0 asks for another count, so the refusal names rank 1's default.
    cores=$(getconf _NPROCESSORS_ONLN)
    mine=$("$py" -c 'import os; print(len(os.sched_getaffinity(0)))')  # not nproc: it honours OMP_NUM_THREADS
    share=$(( cores / 2 < mine ? cores / 2 : mine )); share=$(( share < 1 ? 1 : share ))
    other=$(( share == 1 ? 2 : 1 ))
    set +e
    out=$(ASAN_OPTIONS=detect_leaks=0 "$RIMC_MPIEXEC" --bind-to none -n 1 "$bin" "${base[@]}" --steps 5 --threads "$other" \
          --out "$work/mpi_default" : -n 1 "$bin" "${base[@]}" --steps 5 --out "$work/mpi_default" 2>&1)
    rc=$?
    set -e
    [ "$rc" -ne 0 ] || fail "a job whose ranks use different threads succeeded"
    grep -qF "rank 1: 'threads_per_process' differs: it was $share, this run has $other" <<<"$out" ||
      { echo "$out" >&2; fail "rank 1's default threads are not its share of the node ($share)"; }
    ;;
  mpi-dead-worker)
    d=$work/mpi_dead
    rm -rf "$d"
    set +e
    RIMC_SWEEP_TEST_KILL=1:1 mpi "${small[@]}" --out "$d" 2>"$work/mpi_dead.log"
    rc=$?
    set -e
    [ "$rc" -ne 0 ] || { cat "$work/mpi_dead.log" >&2; fail "the job with a dead worker exited 0"; }
    grep -q "RIMC_SWEEP_TEST_KILL: killing this process" "$work/mpi_dead.log" || { cat "$work/mpi_dead.log" >&2; fail "rank 1 was not killed"; }
    n=$(rows "$d" 2>/dev/null || echo 0)
    [ "$n" -lt 21 ] || fail "the failed job wrote all 21 rows"
    echo "the job with a dead worker left $n of 21 rows" >&2
    mpi "${small[@]}" --out "$d" --resume 2>"$work/mpi_resume.log" || { cat "$work/mpi_resume.log" >&2; fail "resume failed"; }
    grep -q "$n of 21 items finished there" "$work/mpi_resume.log" || { cat "$work/mpi_resume.log" >&2; fail "resume did not take the $n items"; }
    compare "$d"
    ;;
  lifetime-mpi)  # SWEEPS_BINARY is the lifetime program here: its offline preparation runs on both ranks
    lt=(--presets cmo,relative --chips 2 --times 60,86400 --relative-times 60,86400 --test-images 200 --sim-chips 2
        --offline-images 8 --steps 5 --vera-steps 5 --levels 2 --threads 1)
    rm -rf "$work/lifetime_serial" "$work/lifetime_mpi"
    "$bin" "${lt[@]}" --out "$work/lifetime_serial"
    mpi "${lt[@]}" --out "$work/lifetime_mpi"
    "$py" "$here/tools/compare_sweeps.py" "$work/lifetime_serial" "$work/lifetime_mpi" lifetime lifetime_offline
    ;;
  *) fail "unknown mode" ;;
esac
echo "check_sweep $mode: ok" >&2
