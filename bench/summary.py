#!/usr/bin/env python3
"""One summary table over the JSON files bench/run.sh writes (bench_kernels,
bench_dora, bench_crossbar, bench_network, bench_calibration): medians of the
repetitions, headline numbers with the counters users read (GFLOPS, % of the
FMA peak, images/s, steps/s, cells/s).

usage: summary.py results-dir
"""
import json
import pathlib
import statistics
import sys


def load(path):
    """name -> the median aggregate (or the single run) of each benchmark in a Google Benchmark JSON file."""
    try:
        benchmarks = json.loads(path.read_text())["benchmarks"]
    except (OSError, ValueError, KeyError):  # missing, or empty when the filter matched nothing
        return {}
    rows = {}
    for b in benchmarks:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "").replace("/iterations:1", "")
        if b.get("run_type") == "aggregate" or name not in rows:
            rows[name] = b
    return rows


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def main(d):
    d = pathlib.Path(d)
    out = []  # (area, what, value)
    k = load(d / "bench_kernels.json")
    if k:
        peak = k.get("fma_peak", {}).get("GFLOPS", float("nan"))
        out.append(("kernels", "FMA peak (all threads)", f"{peak:.0f} GFLOP/s"))
        ratios, r20, stage23 = [], [], []
        for name, b in k.items():
            p = name.split("/")
            if len(p) < 3 or p[1] != "rimc" or p[2] == "overhead" or p[0] not in ("conv_fwd", "conv_bwd_data"):
                continue
            direct = k.get(f"{p[0]}/direct/{'/'.join(p[2:])}")
            if direct:
                ratios.append(b["GFLOPS"] / direct["GFLOPS"])
            if p[2].startswith("resnet20"):
                r20.append(b["GFLOPS"] / peak)
                shape = p[3]
                if p[0] == "conv_fwd" and shape.startswith("n128_") and ("_c32_" in shape or "_c64_" in shape):
                    stage23.append((shape, b["GFLOPS"] / peak))
        if ratios:
            out.append(("kernels", "conv wrapper / direct oneDNN, median over shapes", f"{statistics.median(ratios):.3f}"))
        if r20:
            out.append(("kernels", "ResNet-20 convs (fwd + bwd-data), median % of FMA peak", f"{100 * statistics.median(r20):.1f}%"))
        for shape, f in stage23:
            out.append(("kernels", f"frozen conv fwd {shape}", f"{100 * f:.1f}% of peak"))
    dora = load(d / "bench_dora.json")
    if dora:
        fwd = [ms(b) / ms(dora[f"frozen_conv/{'/'.join(n.split('/')[1:-1])}"]) for n, b in dora.items()
               if n.startswith("adapter_fwd/") and n.endswith(("/r2", "/r4"))
               and f"frozen_conv/{'/'.join(n.split('/')[1:-1])}" in dora]
        if fwd:
            out.append(("dora", "adapter training forward / frozen conv (r <= 4), median", f"{statistics.median(fwd):.2f}x"))
    xb = load(d / "bench_crossbar.json")
    for kind, counter in (("program", "cells/s"), ("drift", "cells/s")):
        v = [b[counter] for n, b in xb.items() if n.startswith(kind + "/") and counter in b]
        if v:
            out.append(("crossbar", f"{kind}, median over layer shapes", f"{statistics.median(v) / 1e6:.1f} M{counter}"))
    for kind, what in (("ratio/", "tile-exact (ADC8)"), ("ratio_noisy/", "tile-exact (ADC8, read noise, IR drop)"),
                       ("ratio_realistic/", "tile-exact (realistic periphery)")):
        r = [b["tile_over_effective"] for n, b in xb.items() if n.startswith(kind) and "tile_over_effective" in b]
        if r:
            out.append(("crossbar", f"{what} / effective forward, median", f"{statistics.median(r):.2f}x"))
    for n, b in xb.items():
        if n.startswith("network/") and "over_ideal" in b:
            out.append(("crossbar", f"{n.split('/')[-1]} chip / ideal chip, ResNet-20 forward", f"{b['over_ideal']:.2f}x"))
    for n, b in load(d / "bench_network.json").items():
        out.append(("network", n, f"{b['images/s']:.0f} images/s ({ms(b):.2f} ms)"))
    for n, b in load(d / "bench_calibration.json").items():
        extra = ", ".join(f"{c} {b[c]:.0f}" for c in ("steps/s", "images/s") if c in b)
        out.append(("calibration", n, f"{ms(b):.1f} ms ({extra})"))
    if not out:
        sys.exit(f"summary.py: no bench_*.json in {d}")
    w = max(len(x[1]) for x in out)
    print(f"| {'area':11} | {'benchmark':{w}} | value |")
    print(f"| {'-' * 11} | {'-' * w} | ----- |")
    for area, what, value in out:
        print(f"| {area:11} | {what:{w}} | {value} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
