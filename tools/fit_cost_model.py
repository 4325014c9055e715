#!/usr/bin/python3
"""Fits the feature-KD loss-path cost model to bench/loss_paths output.

The model (include/rimc/adapt/feature_statistics.hpp, docs/formulas.md
section 3) prices a layer's calibration on each path in multiply-adds:

  statistics: b * P K (K + 2 O)  +  steps * r K (K + 4 O)
  direct:     steps * (d * P r (2 K + 3 O) + c)

with the statistics path's per-step product as the unit. Only the sign of
direct - statistics matters (the automatic path takes the cheaper one), and
the work both paths share (the layer's input, its frozen output) cancels in
it, so the coefficients are fitted to the measured difference of the two
per-layer times, each row weighted by 1 / (t_direct + t_statistics) so small
layers count as much as large ones. All coefficients are kept >= 0 (the best
feasible least-squares fit over the subsets of free coefficients).

  tools/fit_cost_model.py bench/results/loss_paths_*.csv

prints per tier the fitted (b, d, c), each layer's measured times, the
faster path, the fitted model's pick and the pick of the coefficients rimc
ships (SHIPPED below, a copy of feature_statistics::path_costs), and the time
each set of picks loses to the slower path.
"""

import csv
import itertools
import sys
from collections import defaultdict


# feature_statistics::path_costs(tier): (b, d, c) per ISA tier.
SHIPPED = {"avx512": (0.5, 2.0, 1e6), "avx2": (0.5, 2.0, 1e6), "scalar": (0.08, 0.25, 5e4)}


def load(paths):
    rows = defaultdict(dict)  # (tier, model, layer) -> {"geo": ..., path: seconds}
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                key = (r["tier"], r["model"], r["layer"])
                rows[key]["geo"] = tuple(int(r[k]) for k in ("P", "K", "O", "r", "steps"))
                rows[key][r["path"]] = float(r["seconds"])
                rows[key]["automatic"] = r["automatic"]
    return rows


def features(P, K, O, r, steps):
    """direct - statistics as a linear form in (unit, b, d, c): columns for the unit-free terms."""
    step_stats = steps * r * K * (K + 4 * O)  # coefficient: the unit u
    build = P * K * (K + 2 * O)  # coefficient: u b
    direct = steps * P * r * (2 * K + 3 * O)  # coefficient: u d
    calls = steps  # coefficient: u c
    return [float(-step_stats), float(-build), float(direct), float(calls)]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def solve(M, v):
    """M x = v by Gaussian elimination with partial pivoting (None when singular)."""
    n = len(v)
    A = [row[:] + [v[i]] for i, row in enumerate(M)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(A[r][c]))
        if abs(A[p][c]) < 1e-300:
            return None
        A[c], A[p] = A[p], A[c]
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            for k in range(c, n + 1):
                A[r][k] -= f * A[c][k]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (A[r][n] - sum(A[r][k] * x[k] for k in range(r + 1, n))) / A[r][r]
    return x


def lstsq(A, y, cols):
    """Least squares on the columns `cols` of A, by the normal equations scaled to unit column norms."""
    norms = [max(dot([a[c] for a in A], [a[c] for a in A]) ** 0.5, 1e-300) for c in cols]
    B = [[a[c] / n for c, n in zip(cols, norms)] for a in A]
    M = [[dot([b[i] for b in B], [b[j] for b in B]) for j in range(len(cols))] for i in range(len(cols))]
    v = [dot([b[i] for b in B], y) for i in range(len(cols))]
    x = solve(M, v)
    return None if x is None else [xi / n for xi, n in zip(x, norms)]


def nonneg_lstsq(A, y):
    best = None
    n = len(A[0])
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            x = lstsq(A, y, cols)
            if x is None or any(v < 0 for v in x):
                continue
            full = [0.0] * n
            for c, v in zip(cols, x):
                full[c] = v
            err = sum((dot(a, full) - t) ** 2 for a, t in zip(A, y))
            if best is None or err < best[0]:
                best = (err, full)
    return best[1]


def main(paths):
    rows = load(paths)
    tiers = sorted({k[0] for k in rows}, key=lambda t: ["avx512", "avx2", "scalar"].index(t))
    for tier in tiers:
        keys = [k for k in rows if k[0] == tier and "statistics" in rows[k] and "direct" in rows[k]]
        A = [features(*rows[k]["geo"]) for k in keys]
        w = [1.0 / (rows[k]["direct"] + rows[k]["statistics"]) for k in keys]
        diff = [(rows[k]["direct"] - rows[k]["statistics"]) * wk for k, wk in zip(keys, w)]
        x = nonneg_lstsq([[v * wk for v in a] for a, wk in zip(A, w)], diff)
        u, ub, ud, uc = x
        if u <= 0:
            print(f"{tier}: the per-step statistics term fitted to 0; no model")
            continue
        print(f"tier {tier}: unit {u * 1e9:.4g} ns per multiply-add; fitted b = {ub / u:.3g}, d = {ud / u:.3g}, "
              f"c = {uc / u:.4g}; shipped (b, d, c) = {SHIPPED[tier]}")
        b, d, c = SHIPPED[tier]
        shipped = [1.0, b, d, c]
        print(f"  {'model':<13} {'layer':<22} {'stats s':>9} {'direct s':>9}  faster  fitted  shipped")
        lost = {"fitted": 0.0, "shipped": 0.0}
        for k, a in zip(keys, A):
            s, d = rows[k]["statistics"], rows[k]["direct"]
            faster = "direct" if d < s else "statistics"
            picks = {"fitted": "direct" if dot(a, x) < 0 else "statistics",
                     "shipped": "direct" if dot(a, shipped) < 0 else "statistics"}
            for m, p in picks.items():
                if p != faster:
                    lost[m] += abs(d - s)
            mark = "" if picks["shipped"] == faster else "  <-- shipped pick slower by %.1f ms" % (1e3 * abs(d - s))
            print(f"  {k[1]:<13} {k[2]:<22} {s:9.4f} {d:9.4f}  {faster[:6]:<6}  {picks['fitted'][:6]:<6}  "
                  f"{picks['shipped'][:6]:<6}{mark}")
        print(f"  time lost to slower picks: fitted {lost['fitted'] * 1e3:.1f} ms, shipped {lost['shipped'] * 1e3:.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
