#!/usr/bin/env python3
"""The folder-level include graph of include/rimc and the layering rules it must keep.

Reads every `#include <rimc/...>` line under include/rimc, prints the graph
(folder -> folder, with the number of include lines), and checks:
  1. no folder-level cycle (the folders form a DAG);
  2. the allowed directions: core <- kernels <- device <- crossbar <- nn <- adapt,
     with io and data beside crossbar (they know core, kernels and each other:
     formats never include adapt, nn or crossbar) and cost knowing core and
     device only (layer geometry, never a network or a training result);
  3. SIMD code stays in kernels/arch/: nothing else includes <immintrin.h>,
     uses a target attribute, or includes a per-tier kernel file;
  4. no relative path in a header climbs out of the repository.
Top-level headers (rimc.hpp, dora.hpp, ...) are umbrellas and may include anything.

  include_graph.py [--root include/rimc] [--dot]     exit 0: rules kept, 1: broken
"""

import argparse
import os
import re
import sys
from collections import defaultdict

# Which folders each folder may include (itself always allowed).
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "device": {"core"},
    "io": {"core"},
    "data": {"core", "io"},
    "cost": {"core", "device"},
    "crossbar": {"core", "kernels", "device"},
    "nn": {"core", "kernels", "device", "crossbar", "io", "data", "cost"},
    "adapt": {"core", "kernels", "device", "crossbar", "nn", "io", "data", "cost"},
}
TIER_FILES = {"kernels/arch/portable.hpp", "kernels/arch/avx2.hpp", "kernels/arch/avx512.hpp"}


def scan(root):
    edges = defaultdict(int)
    problems = []
    repo = os.path.abspath(os.path.join(root, "..", ".."))  # root is <repo>/include/rimc
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".hpp"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            folder = rel.split("/")[0] if "/" in rel else "(top)"
            in_arch = rel.startswith("kernels/arch/")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for m in re.finditer(r'^\s*#\s*include\s*[<"]rimc/([^>"]+)[>"]', text, re.M):
                target = m.group(1)
                tfolder = target.split("/")[0] if "/" in target else "(top)"
                if folder != tfolder:
                    edges[(folder, tfolder)] += 1
                if target in TIER_FILES and rel != "kernels/arch/dispatch.hpp":
                    problems.append(f"{rel} includes the per-tier file rimc/{target} (use kernels/arch/dispatch.hpp)")
            if not in_arch:
                if re.search(r"#\s*include\s*<[a-z0-9]*intrin\.h>", text):
                    problems.append(f"{rel} includes an intrinsics header outside kernels/arch/")
                if re.search(r"__attribute__\s*\(\(\s*target", text):
                    problems.append(f"{rel} uses a target attribute outside kernels/arch/")
                if re.search(r"\b_mm(256|512)?_[a-z0-9_]+\s*\(", text):
                    problems.append(f"{rel} calls an intrinsic outside kernels/arch/")
            for m in re.finditer(r"(?:\.\./)+[\w.-]+(?:/[\w.-]+)*", text):
                target = os.path.normpath(os.path.join(dirpath, m.group(0)))
                if os.path.commonpath([repo, target]) != repo:
                    problems.append(f"{rel} refers to {m.group(0)}, outside the repository")
    return edges, problems


def cycles(edges):
    graph = defaultdict(set)
    for (a, b) in edges:
        if a != "(top)" and b != "(top)":
            graph[a].add(b)
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif not state.get(m):
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n, [])
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "include", "rimc"))
    ap.add_argument("--dot", action="store_true", help="print the graph in Graphviz dot form")
    a = ap.parse_args()
    edges, problems = scan(a.root)
    if a.dot:
        print("digraph rimc {")
        for (x, y), n in sorted(edges.items()):
            print(f'  "{x}" -> "{y}" [label={n}];')
        print("}")
    else:
        print("folder-level includes of include/rimc (from -> to: include lines):")
        for (x, y), n in sorted(edges.items()):
            print(f"  {x:9s} -> {y:9s} {n:3d}")
    for (x, y) in sorted(edges):
        if x == "(top)":
            continue
        if x not in ALLOWED:
            problems.append(f"unknown folder '{x}': add it to the layering rules in tools/include_graph.py")
        elif y not in ALLOWED[x]:
            problems.append(f"{x}/ includes {y}/ ({edges[(x, y)]} lines), which the layering does not allow")
    for c in cycles(edges):
        problems.append("folder-level cycle: " + " -> ".join(c))
    if problems:
        print("\ninclude_graph: FAILED")
        for p in problems:
            print("  " + p)
        return 1
    print("\ninclude_graph: no cycle; every include runs the allowed way; SIMD code only in kernels/arch/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
