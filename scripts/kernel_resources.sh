#!/usr/bin/env bash
# What nvcc's assembler gives each CUDA kernel of lmforge: registers per thread, static shared
# memory, stack frame and spilled bytes (ptxas -v), one line per kernel. Needs no GPU: it compiles
# src/ops/cuda/*.cu again, with the flags of a configured build, into a scratch directory.
#   scripts/kernel_resources.sh [BUILD_DIR]          # default: build
# Spills (local-memory traffic) and register counts that cap occupancy are what to look for here;
# docs/performance.md keeps the current summary.
set -euo pipefail
build=${1:-build}
db="$build/compile_commands.json"
[ -f "$db" ] || { echo "kernel_resources: $db not found (configure the build first)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

python3 - "$db" "$scratch" <<'EOF'
import json, re, shlex, subprocess, sys
db, scratch = sys.argv[1], sys.argv[2]
cmds = [e for e in json.load(open(db))
        if e["file"].endswith(".cu") and "/src/ops/cuda/" in e["file"] and "nvcc" in e["command"]]
if not cmds:
    sys.exit("kernel_resources: no nvcc command in %s (was the build configured with CUDA?)" % db)
rows = []
for i, e in enumerate(sorted(cmds, key=lambda e: e["file"])):
    args = shlex.split(e["command"])
    out = args.index("-o")
    args[out + 1] = "%s/%d.o" % (scratch, i)
    run = subprocess.run(args + ["-Xptxas", "-v"], cwd=e["directory"], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit("kernel_resources: nvcc failed on %s:\n%s" % (e["file"], run.stderr))
    name, frame = None, None
    for line in run.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name, frame = m.group(1), None
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            frame = tuple(int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers.*?(?:, (\d+) bytes smem)?$", line)
        if m and name and frame is not None:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((e["file"].split("/")[-1], name, int(m.group(1)),
                         int(smem.group(1)) if smem else 0) + frame)
            name = None
names = subprocess.run(["c++filt"], input="\n".join(r[1] for r in rows), capture_output=True,
                       text=True).stdout.splitlines()
print("%-20s %4s %6s %5s %6s %6s  %s" % ("file", "regs", "smem", "stack", "spillS", "spillL", "kernel"))
for r, n in zip(rows, names):
    n = n.replace("(anonymous namespace)::", "").replace("lmf::cuda::", "").replace("lmf::", "")
    n = re.sub(r"\(.*$", "", re.sub(r"^void ", "", n))
    print("%-20s %4d %6d %5d %6d %6d  %s" % (r[0], r[2], r[3], r[4], r[5], r[6], n))
spilling = [r for r in rows if r[5] or r[6]]
print("\n%d kernels, %d spill; most registers: %d" % (len(rows), len(spilling), max(r[2] for r in rows)))
EOF
