#!/usr/bin/env python3
"""Compares two runs of a study (examples/sweep_runner.hpp) field by field, timing aside.

  compare_sweeps.py DIR_A DIR_B NAME [NAME ...]

For each NAME, DIR_A/NAME.csv against DIR_B/NAME.csv and, when DIR_A has it,
DIR_A/NAME_summary.csv against DIR_B/NAME_summary.csv: the same header, the same
rows in the same order, every field equal as text, except the timing columns
(named "seconds" or ending in "_seconds"), which measure the run, not the chip.
Exit status 0 when equal, 1 otherwise (the first differences printed), 2 on bad usage.
"""

import csv
import os
import sys


def is_timing(column):
    return column == "seconds" or column.endswith("_seconds")


def compare(a, b):
    """Differences between CSV files a and b, as messages (at most 10)."""
    with open(a, newline="") as fa, open(b, newline="") as fb:
        ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
    if not ra or not rb or ra[0] != rb[0]:
        return [f"{b}: header {rb[0] if rb else None} differs from {a}: {ra[0] if ra else None}"]
    header = ra[0]
    keep = [i for i, c in enumerate(header) if not is_timing(c)]
    out = []
    if len(ra) != len(rb):
        out.append(f"{b}: {len(rb) - 1} rows, {a}: {len(ra) - 1}")
    for n, (x, y) in enumerate(zip(ra[1:], rb[1:]), start=2):
        if len(x) != len(y):
            out.append(f"line {n}: {len(y)} fields in {b}, {len(x)} in {a}")
            continue
        for i in keep:
            if x[i] != y[i]:
                out.append(f"line {n}, column {header[i]}: {a} has {x[i]!r}, {b} has {y[i]!r}")
        if len(out) >= 10:
            break
    return out[:10]


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    dir_a, dir_b, names = argv[1], argv[2], argv[3:]
    diffs = []
    for name in names:
        for file in (f"{name}.csv", f"{name}_summary.csv"):
            a, b = os.path.join(dir_a, file), os.path.join(dir_b, file)
            if file.endswith("_summary.csv") and not os.path.exists(a):
                continue
            if not os.path.exists(b):
                diffs.append(f"{b} is missing")
                continue
            diffs += compare(a, b)
    for d in diffs:
        print(d, file=sys.stderr)
    if diffs:
        return 1
    print(f"compare_sweeps: {dir_b} equals {dir_a} ({', '.join(names)}; timing columns aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
