#!/usr/bin/env python3
"""Checks that tools/install-deps.sh installs everything a configured build uses.

For every file the CMake configure step found (each FILEPATH entry of
CMakeCache.txt, each package config directory, and the files CMake lists in
rimc_found_files.txt: package config files, headers, tools, data), `dpkg -S`
names the Debian package that owns it. The audit fails unless that package is
in install-deps' list or in the Depends / Pre-Depends closure of the listed
packages (Recommends and Suggests do not count: apt-get --no-install-recommends
leaves them out, which is how a fresh machine lacked ocl-icd-opencl-dev).

  audit_deps.py --build DIR [--install-deps tools/install-deps.sh] [--without PKG ...]

--without takes packages out of the list first: `--without ocl-icd-opencl-dev`
shows the audit failing as it would have before that package was listed.
Exit status: 0 when every file is covered, 1 when one is not, 2 on bad usage.
"""

import argparse
import os
import re
import subprocess
import sys


def run(cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed_packages(install_deps):
    out = run(["bash", install_deps, "--list"])
    if out.returncode != 0:
        sys.exit(f"audit_deps: '{install_deps} --list' failed: {out.stderr.strip()}")
    return out.stdout.split()


def installed_index():
    """package -> (depends text), and virtual name -> providing packages, for installed packages."""
    fmt = "${Package}\t${Status}\t${Depends}\t${Pre-Depends}\t${Provides}\n"
    out = run(["dpkg-query", "-W", "-f", fmt])
    deps, provides = {}, {}
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or not parts[1].endswith("installed") or "not-installed" in parts[1]:
            continue
        name, _, dep, pre, prov = parts
        deps[name] = ", ".join(x for x in (dep, pre) if x)
        for p in prov.split(","):
            p = re.sub(r"\(.*?\)", "", p).strip().split(":")[0]
            if p:
                provides.setdefault(p, set()).add(name)
    return deps, provides


def closure(roots, deps, provides):
    """The listed packages and everything they Depend / Pre-Depend on (alternatives: the installed ones)."""
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for clause in deps.get(p, "").split(","):
            for alt in clause.split("|"):
                name = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alt).strip().split(":")[0]
                if not name:
                    continue
                if name in deps:
                    todo.append(name)
                for q in provides.get(name, ()):
                    todo.append(q)
    return seen


def owners(path):
    """The packages dpkg says own `path` (resolving symlinks such as /usr/bin/c++ if needed)."""
    for candidate in (path, os.path.realpath(path)):
        out = run(["dpkg", "-S", candidate])
        if out.returncode == 0:
            pkgs = set()
            for line in out.stdout.splitlines():
                if ": " not in line:
                    continue
                head, owned = line.split(": ", 1)
                if owned.strip() != candidate:
                    continue
                for p in head.split(","):
                    p = p.strip().split(":")[0]
                    if p and not p.startswith("diversion by"):
                        pkgs.add(p)
            if pkgs:
                return pkgs
    return set()


def found_files(build):
    """(name, path) of what the configure step found."""
    files = []
    cache = os.path.join(build, "CMakeCache.txt")
    try:
        with open(cache) as f:
            for line in f:
                m = re.match(r"^([A-Za-z0-9_.+-]+):(FILEPATH|PATH)=(.*)$", line.strip())
                if not m:
                    continue
                name, kind, value = m.groups()
                if not value.startswith("/") or "NOTFOUND" in value or not os.path.exists(value):
                    continue
                if kind == "PATH" and not name.endswith("_DIR"):
                    continue
                if name.startswith("CMAKE_INSTALL") or value.startswith(os.path.abspath(build)):
                    continue
                files.append((name, value))
    except OSError as e:
        sys.exit(f"audit_deps: cannot read {cache}: {e}")
    manifest = os.path.join(build, "rimc_found_files.txt")
    if os.path.exists(manifest):
        with open(manifest) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, _, value = line.partition("=")
                for v in value.split(";"):
                    if v.startswith("/") and os.path.exists(v):
                        files.append((name, v))
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="a configured build directory")
    ap.add_argument("--install-deps", default=os.path.join(os.path.dirname(__file__), "install-deps.sh"))
    ap.add_argument("--without", action="append", default=[], help="take a package out of the list")
    a = ap.parse_args()
    if run(["sh", "-c", "command -v dpkg-query"]).returncode != 0:
        print("audit_deps: not a Debian system (no dpkg-query); nothing to audit")
        return 0
    listed = [p for p in listed_packages(a.install_deps) if p not in a.without]
    deps, provides = installed_index()
    covered = closure(listed, deps, provides)
    source = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    missing, rows = [], []
    for name, path in found_files(a.build):
        if os.path.realpath(path).startswith(source + os.sep):
            continue  # rimc's own files
        pkgs = owners(path)
        if not pkgs:
            if os.path.isdir(path):
                continue  # a directory no package owns alone: its files are listed separately
            missing.append(f"{name} = {path}: no Debian package owns it (installed by hand?)")
            continue
        if os.path.isdir(path) and len(pkgs) > 1:
            continue  # a shared directory such as /usr/include: its files are listed separately
        ok = sorted(p for p in pkgs if p in covered)
        rows.append(f"  {name:34s} {path}  <- {', '.join(sorted(pkgs))}{'' if ok else '  NOT INSTALLED BY install-deps'}")
        if not ok:
            missing.append(f"{name} = {path} belongs to {', '.join(sorted(pkgs))}, which is neither in "
                           f"install-deps' list nor in the Depends/Pre-Depends closure of it")
    print(f"audit_deps: {len(rows)} files found by the configure step; install-deps lists {len(listed)} packages"
          f" ({len(covered)} with their dependencies)")
    print("\n".join(rows))
    if missing:
        print("\naudit_deps: FAILED")
        for m in missing:
            print("  " + m)
        return 1
    print("audit_deps: every file is installed by tools/install-deps.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
