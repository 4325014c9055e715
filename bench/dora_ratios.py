#!/usr/bin/env python3
"""Summarises bench_dora JSON: per shape and rank, the adapter's time as a
fraction of the frozen convolution's forward on the same shape (medians when
the run used --benchmark_repetitions). "layer+" columns: what the whole
adapted layer's inference adds to the frozen conv (adapted_layer time over
frozen_conv time, minus 1), factorised and merged. "direct": forward + backward
on the direct training kernels (adapter_fwd_bwd_direct).

usage: dora_ratios.py bench_dora.json
"""
import json
import statistics
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    t = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        t[name] = b["real_time"]
    print(f"{'shape':42} {'r':>2} {'frozen ms':>10} {'fwd':>6} {'fwd+bwd':>8} {'direct':>7} {'infer':>6}"
          f" {'merged':>7} {'layer+ fact':>11} {'layer+ merged':>13}")
    worst = {"fwd": [], "fwd+bwd": [], "fwd+bwd direct": [], "infer": [], "layer+ factorised": [],
             "layer+ merged": []}
    for name, frozen in t.items():
        if not name.startswith("frozen_conv/"):
            continue
        shape = name[len("frozen_conv/"):]
        for r in (2, 4, 8):
            tail = f"{shape}/r{r}"
            fwd = t.get(f"adapter_fwd/{tail}", float("nan")) / frozen
            fb = t.get(f"adapter_fwd_bwd/{tail}", float("nan")) / frozen
            fbd = t.get(f"adapter_fwd_bwd_direct/{tail}", float("nan")) / frozen
            inf = t.get(f"adapter_infer/{tail}", float("nan")) / frozen
            merged = t.get(f"merged_conv/{tail}", float("nan")) / frozen
            lf = t.get(f"adapted_layer/{tail}/factorised", float("nan")) / frozen - 1
            lm = t.get(f"adapted_layer/{tail}/merged", float("nan")) / frozen - 1
            if r <= 4:
                for k, v in (("fwd", fwd), ("fwd+bwd", fb), ("fwd+bwd direct", fbd), ("infer", inf),
                             ("layer+ factorised", lf), ("layer+ merged", lm)):
                    if v == v:  # not NaN: measured in this run
                        worst[k].append(v)
            print(f"{shape:42} {r:2} {frozen / 1e6:10.3f} {fwd:6.2f} {fb:8.2f} {fbd:7.2f} {inf:6.2f} {merged:7.2f}"
                  f" {lf:11.2f} {lm:13.2f}")
    print()
    for k, v in worst.items():
        if v:
            print(f"adapter {k} / frozen conv forward at r <= 4: median {statistics.median(v):.2f}, "
                  f"max {max(v):.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
