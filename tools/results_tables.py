#!/usr/bin/env python3
"""Prints the README's results tables (Markdown) from the sweep summaries that
examples/calibration_sweeps.cpp writes (tools/sweeps.sh runs it):

    python3 tools/results_tables.py [examples/results]

Cells are the mean top-1 % over the drift seeds, +- the standard deviation.
"""
import csv
import os
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "examples/results"


def load(name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell(rows, **where):
    hit = [r for r in rows if all(str(r[k]) == str(v) for k, v in where.items())]
    if not hit:
        return "-"
    if len(hit) > 1:
        raise SystemExit(f"ambiguous cell {where}: {len(hit)} rows")
    r = hit[0]
    return f"{float(r['mean']):.2f} ± {float(r['std']):.2f}"


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def fmt_num(x):
    return f"{float(x):g}"


rho = load("rho_summary.csv")
if rho:
    methods = [("drifted", "drifted"), ("compensated", "per-column comp."), ("backprop", "backprop"),
               ("feature_kd", "feature KD"), ("feature_kd_teacher_norms", "feature KD, m from teacher")]
    for ratio, title in (("0", "ideal mapping, g_min = 0"), ("0.1", "realistic mapping, g_min = g_max / 10")):
        print(f"**Accuracy vs relative drift, {title}** (N = 10, rank 2; top-1 %, mean ± std over the seeds)\n")
        rhos = sorted({r["rho"] for r in rho if r["preset"] == "relative" and r["g_min_ratio"] == ratio}, key=float)
        table(["rho"] + [m[1] for m in methods],
              [[fmt_num(x)] + [cell(rho, preset="relative", g_min_ratio=ratio, rho=x, method=m[0]) for m in methods]
               for x in rhos])

time = load("time_summary.csv")
if time:
    names = {1: "1 s", 60: "1 min", 3600: "1 h", 86400: "1 day", 604800: "1 week", 2629800: "1 month",
             31557600: "1 year", 315576000: "10 years"}
    times = sorted({float(r["time_s"]) for r in time if r["preset"] != "ideal"})
    print("**Accuracy vs time since programming** (N = 10, rank 2; top-1 %, mean ± std over the seeds)\n")
    hdr = ["time"] + [f"{p} {m}" for p in ("CMO", "NeuRRAM") for m in ("drifted", "per-column comp.", "feature KD")]
    rows = []
    for t in times:
        ts = next(r["time_s"] for r in time if r["preset"] != "ideal" and float(r["time_s"]) == t)
        rows.append([names.get(round(t), fmt_num(t))] +
                    [cell(time, preset=p, time_s=ts, method=m) for p in ("cmo", "neurram")
                     for m in ("drifted", "compensated", "feature_kd")])
    table(hdr, rows)

samples = load("samples_summary.csv")
if samples:
    ranks = sorted({r["rank"] for r in samples if r["method"] == "feature_kd"}, key=int)
    ns = sorted({r["samples"] for r in samples if r["method"] == "feature_kd"}, key=int)
    print("**Accuracy vs calibration samples N** at rho = 0.2 (top-1 %, mean ± std over the seeds; "
          f"drifted: {cell(samples, method='drifted')})\n")
    hdr = ["N"]
    for k in ranks:
        hdr += [f"feature KD r={k}", f"backprop r={k}", f"KD - BP r={k}"]
    rows = []
    for n in ns:
        row = [n]
        for k in ranks:
            kd = [r for r in samples if r["method"] == "feature_kd" and r["samples"] == n and r["rank"] == k]
            bp = [r for r in samples if r["method"] == "backprop" and r["samples"] == n and r["rank"] == k]
            row += [cell(samples, method="feature_kd", samples=n, rank=k), cell(samples, method="backprop", samples=n, rank=k)]
            row.append(f"{float(kd[0]['mean']) - float(bp[0]['mean']):+.2f}" if kd and bp else "-")
        rows.append(row)
    table(hdr, rows)

# bp-tune's default grid (lr 1e-4 .. 3e-2, three losses, 100 or 300 steps), one run.
tune = load("bp-tune_summary.csv")
if tune:
    print("**Backprop baseline tuning** at rho = 0.2, N = 10, rank 2 (top-1 %, best 8 of the grid, and feature KD)\n")
    bp = sorted((r for r in tune if r["method"] == "backprop"), key=lambda r: -float(r["mean"]))
    kd = [r for r in tune if r["method"] == "feature_kd"]
    table(["method", "setting", "seeds", "top-1 %"],
          [[r["method"], r["setting"], r["n"], f"{float(r['mean']):.2f} ± {float(r['std']):.2f}"] for r in kd + bp[:8]])

r50 = load("resnet50_share.csv")
if r50:
    print("**ResNet-50 adapter share** (every conv and the fc, 1000 classes; DoRA parameters / RRAM weights)\n")
    rows = [r for r in r50 if r["classes"] == "1000" and r["layers"] == "convs+fc"]
    table(["rank", "adapter parameters", "share % (PEFT)", "share % (loralib ConvLoRA)"],
          [[r["rank"], r["adapter_parameters"], f"{float(r['share_percent']):.2f}", f"{float(r['loralib_share_percent']):.2f}"]
           for r in rows])

life = load("lifetime_summary.csv")
if life:
    names = {1: "1 s", 60: "1 min", 3600: "1 h", 86400: "1 day", 172800: "2 days", 604800: "1 week",
             2629800: "1 month", 31557600: "1 year", 315576000: "10 years"}
    methods = [("none", "drifted"), ("global_comp", "global comp."), ("column_comp", "per-column comp."),
               ("bn_recal", "BN recal."), ("dora_field", "DoRA field"), ("lora_field", "LoRA field"),
               ("vera_field", "VeRA field"), ("vera_offline", "VeRA+ offline"), ("dora_offline", "DoRA offline"),
               ("dora_budget", "DoRA 1/4 bytes")]
    ideal = next((float(r["mean"]) for r in life if r["method"] == "ideal"), None)
    titles = {"cmo": "HfOx/CMO ReRAM", "pcm": "PCM power law", "neurram": "NeuRRAM (table up to 2 days)",
              "relative": "relative drift (rho = 0.2 at 1 day)"}
    for p in ("cmo", "pcm", "neurram", "relative"):
        rows_p = [r for r in life if r["preset"] == p]
        if not rows_p:
            continue
        print(f"**Lifetime, {titles[p]}** (top-1 %, mean ± std over the chips; ideal {ideal:.2f})\n")
        times = sorted({float(r["time_s"]) for r in rows_p})
        have = [m for m in methods if any(r["method"] == m[0] for r in rows_p)]
        rows = []
        for t in times:
            ts = next(r["time_s"] for r in rows_p if float(r["time_s"]) == t)
            rows.append([names.get(round(t), fmt_num(t))] + [cell(life, preset=p, time_s=ts, method=m[0]) for m in have])
        table(["time"] + [m[1] for m in have], rows)
    # What each method costs over the whole life (at the last time of the CMO study, or the first preset present).
    p = next(p for p in ("cmo", "pcm", "neurram", "relative") if any(r["preset"] == p for r in life))
    last = max(float(r["time_s"]) for r in life if r["preset"] == p)
    print(f"**What each method costs over the life** ({titles[p]}, at {names.get(round(last), fmt_num(last))}: "
          "cumulative field samples, recalibrations and their energy and latency from include/rimc/cost; SRAM bytes "
          "fp32, all levels and shared projections counted)\n")
    rows = []
    for m, label in methods:
        hit = [r for r in life if r["preset"] == p and float(r["time_s"]) == last and r["method"] == m]
        if not hit:
            continue
        r = hit[0]
        rows.append([label, r["sram_bytes"], r["field_samples"], r["recalibrations"], f"{float(r['energy_j']):.3g}",
                     f"{float(r['latency_s']):.3g}", f"{float(r['mean']):.2f}"])
    table(["method", "SRAM bytes", "field samples", "recalibrations", "energy (J)", "latency (s)", "top-1 %"], rows)
