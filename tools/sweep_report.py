#!/usr/bin/env python3
"""The sweep runner's scaling report, from the runs of tools/sweep_scaling.sh.

  sweep_report.py DIR [--cores-per-node 32]

DIR holds wall_ms.txt ("name milliseconds" per run), each run's stderr log
(NAME.log, or NAME.items.log, with the runner's "[rank R] item I/N done in S s:
KEY" lines) and its output directory NAME/ (rho.csv).
Prints the wall times and speed-ups, how many items each rank ran, the per-item
cost distribution per method (1 process x 1 thread), and a projection of two
100-chip studies onto clusters. The projection is a model, not a measurement:
  - nodes of --cores-per-node cores, one rank per core at 1 thread (the
    throughput-best layout measured here), each rank as fast as one here;
  - an item costs what it cost here at 1 thread: the rho study's items are the
    measured medians per method; the samples study's feature-KD and backprop
    items at N and rank r cost the calibration seconds committed in
    examples/results/samples.csv (2 threads) times the measured 1-thread /
    2-thread ratio of that method, plus the measured evaluation (drifted item);
  - wall = total cost / (ranks x efficiency) + the costliest item + start-up,
    with efficiency the measured 2-rank speed-up over 1 x 1 thread divided by 2,
    capped at 1 (above 1 it is the machine's noise, not a property of the runner).
"""

import argparse
import csv
import os
import re
import statistics
import sys

ITEM = re.compile(r"^\[rank (\d+)\] item (\d+)/(\d+) done in ([0-9.]+) s: (.*)$")


def items(log):
    """(rank, key, seconds) per finished item in a run's log."""
    out = []
    with open(log) as f:
        for line in f:
            m = ITEM.match(line.rstrip("\n"))
            if m:
                out.append((int(m.group(1)), m.group(5), float(m.group(4))))
    return out


def method(key):
    f = key.split(",")
    return f[6]


def csv_seconds(path):
    """key (first 9 fields) -> the CSV's seconds column."""
    with open(path, newline="") as f:
        r = csv.reader(f)
        next(r)
        return {",".join(row[:9]): float(row[10]) for row in r}


def fmt_h(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--cores-per-node", type=int, default=32)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "..", "examples", "results"))
    a = ap.parse_args()
    wall = {}
    with open(os.path.join(a.dir, "wall_ms.txt")) as f:
        for line in f:
            name, ms = line.split()
            wall[name] = int(ms) / 1000
    # NAME.log as tools/sweep_scaling.sh leaves it, or NAME.items.log (its item lines, as committed).
    runs = {}
    for name in wall:
        log = os.path.join(a.dir, name + ".log")
        runs[name] = items(log if os.path.exists(log) else os.path.join(a.dir, name + ".items.log"))

    print("| run | wall (s) | items | speed-up vs serial-2t | speed-up vs serial-1t |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, w in wall.items():
        print(f"| {name} | {w:.1f} | {len(runs[name])} | {wall['serial-2t'] / w:.2f} | {wall['serial-1t'] / w:.2f} |")
    per_rank = {}
    for r, _, _ in runs.get("mpi-2x1t", []):
        per_rank[r] = per_rank.get(r, 0) + 1
    print("\nitems per rank (mpi-2x1t):", ", ".join(f"rank {r}: {n}" for r, n in sorted(per_rank.items())))

    one = runs["serial-1t"]
    by_method = {}
    for _, key, s in one:
        by_method.setdefault(method(key), []).append(s)
    print("\nper-item cost, 1 process x 1 thread (s):")
    print("| method | items | min | median | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for m, v in by_method.items():
        print(f"| {m} | {len(v)} | {min(v):.2f} | {statistics.median(v):.2f} | {max(v):.2f} |")
    costs = [s for _, _, s in one]
    print(f"all items: min {min(costs):.2f} s, median {statistics.median(costs):.2f} s, max {max(costs):.2f} s "
          f"(max / min {max(costs) / min(costs):.1f}x); sum {sum(costs):.1f} s of {wall['serial-1t']:.1f} s wall")

    # Projection.
    startup = wall["serial-1t"] - sum(costs)
    measured_eff = wall["serial-1t"] / wall["mpi-2x1t"] / 2
    eff = min(measured_eff, 1.0)
    med = {m: statistics.median(v) for m, v in by_method.items()}
    rho_items = [(m, med[m]) for m in ("drifted", "compensated", "feature_kd", "feature_kd_teacher_norms", "backprop")
                 for _ in range(8 * 100)]
    # 1-thread / 2-thread calibration-time ratio per method, from the two serial runs' CSVs.
    s1 = csv_seconds(os.path.join(a.dir, "serial-1t", "rho.csv"))
    s2 = csv_seconds(os.path.join(a.dir, "serial-2t", "rho.csv"))
    ratio = {}
    for m in ("feature_kd", "backprop"):
        k = [key for key in s1 if method(key) == m]
        ratio[m] = sum(s1[x] for x in k) / sum(s2[x] for x in k)
    evaluation = med["drifted"]
    committed = {}
    with open(os.path.join(a.results, "samples.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["method"] in ("feature_kd", "backprop"):
                committed.setdefault((row["method"], row["rank"], row["samples"]), []).append(float(row["seconds"]))
    samples_items = [("drifted", evaluation)] * 100
    for (m, _, _), v in committed.items():
        samples_items += [(m, statistics.median(v) * ratio[m] + evaluation)] * 100
    print(f"\nprojection (a model: see this script's doc): efficiency {eff:.2f} (measured {measured_eff:.2f}), "
          f"start-up {startup:.1f} s, "
          f"{a.cores_per_node}-core nodes, 1 thread per rank; 1-thread / 2-thread calibration time: "
          + ", ".join(f"{m} {r:.2f}" for m, r in ratio.items()))
    print(f"| study | items | CPU time (1 core) | this machine (2 ranks) | 4 nodes ({4 * a.cores_per_node} ranks) "
          f"| 32 nodes ({32 * a.cores_per_node} ranks) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, its in (("rho, 100 chips per setting", rho_items), ("samples, 100 chips", samples_items)):
        total = sum(c for _, c in its)
        biggest = max(c for _, c in its)
        cols = [fmt_h(total / (r * eff) + biggest + startup) for r in (2, 4 * a.cores_per_node, 32 * a.cores_per_node)]
        print(f"| {name} | {len(its)} | {fmt_h(total)} | " + " | ".join(cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
