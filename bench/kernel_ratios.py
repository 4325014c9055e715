#!/usr/bin/env python3
"""Summarises bench_kernels JSON: per shape, rimc's wrapper vs the direct oneDNN
primitive (GFLOPS and their ratio), the reference, and the share of the FMA peak;
then the read-noise block's two convolutions as a pair of calls vs one grouped call.

Uses the median aggregate when the run had --benchmark_repetitions, else the single run.

usage: kernel_ratios.py bench.json
"""
import json
import statistics
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    differing = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b["run_name"] if "run_name" in b else b["name"]
        name = name.replace("/iterations:1", "").replace("/real_time", "")
        if "differing" in b:
            differing[name] = b["differing"]
        rows.setdefault(name, []).append((b.get("run_type"), b.get("GFLOPS", float("nan")), b.get("label", ""), b["real_time"],
                                          b.get("time_unit", "ns")))
    value = {}
    for name, entries in rows.items():
        agg = [e for e in entries if e[0] == "aggregate"]
        value[name] = (agg or entries)[0][1:]
    peak = value.get("fma_peak", (float("nan"), ""))[0]
    print(f"FMA peak ({value.get('fma_peak', (0, '?'))[1]}, all threads): {peak:.1f} GFLOP/s\n")
    print(f"{'op':14} {'shape':44} {'rimc':>8} {'direct':>8} {'ratio':>6} {'% peak':>6} {'ref':>6}  impl")
    ratios = {"conv_fwd": [], "conv_bwd_data": []}
    r20_peak = []
    for name in value:
        parts = name.split("/")
        if len(parts) < 3 or parts[1] != "rimc":
            continue
        op, shape = parts[0], "/".join(parts[2:])
        rimc, impl = value[name][0], value[name][1]
        direct = value.get(f"{op}/direct/{shape}", (float("nan"), ""))[0]
        ref = value.get(f"{op}/reference/{shape}", (float("nan"), ""))[0]
        if shape.startswith("overhead"):
            t_rimc, unit = value[name][2], value[name][3]
            t_direct = value.get(f"{op}/direct/{shape}", (0, "", float("nan")))[2]
            print(f"{op:14} {shape:44} per-call time {t_rimc:.0f} vs {t_direct:.0f} {unit}: wrapper overhead "
                  f"{t_rimc - t_direct:.0f} {unit}")
            continue
        ratio = rimc / direct
        ratios[op].append(ratio)
        if shape.startswith("resnet20"):
            r20_peak.append(rimc / peak)
        print(f"{op:14} {shape:44} {rimc:8.1f} {direct:8.1f} {ratio:6.3f} {100 * rimc / peak:6.1f} {ref:6.2f}  {impl}")
    print()
    for op, r in ratios.items():
        if r:
            print(f"{op}: rimc/direct median {statistics.median(r):.3f}, min {min(r):.3f} over {len(r)} shapes")
    pairs = [n[len("read_convs/pair/"):] for n in value if n.startswith("read_convs/pair/")]
    if pairs:
        print(f"\n{'read-noise block':44} {'pair':>9} {'grouped':>9} {'speedup':>7} {'differing':>9}")
    for shape in pairs:
        pair, grouped = value[f"read_convs/pair/{shape}"], value.get(f"read_convs/grouped/{shape}")
        if grouped is None or pair[3] != grouped[3]:
            continue
        print(f"{shape:44} {pair[2]:9.1f} {grouped[2]:9.1f} {pair[2] / grouped[2]:7.2f} "
              f"{differing.get(f'read_convs/grouped/{shape}', float('nan')):9.0f}  ({pair[3]})")
    if r20_peak:
        print(f"ResNet-20 shapes (rimc, forward and backward-data): median {100 * statistics.median(r20_peak):.1f}% "
              f"of the FMA peak, max {100 * max(r20_peak):.1f}%")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
