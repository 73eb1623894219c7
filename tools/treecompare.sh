#!/usr/bin/env bash
# tools/treecompare.sh [RUNS]: `dfs bench --tree` on dfs, MooseFS and the local disk, in one sitting.
#
# Starts a throwaway dfs cluster (dfs up in a temp state dir) and MooseFS (3 chunkservers,
# goal 3, ../shared/peerbench/peers-up.sh), then runs the tree workload RUNS times on each,
# alternating, on the same generated tree, and prints each phase's seconds and dfs/MooseFS
# (above 1.0: dfs is faster); the raw JSON lines go to $OUT. Needs root (drop_caches) and
# the peerbench packages.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
PB=${PEERBENCH:-../shared/peerbench}
STATE=$(mktemp -d /tmp/dfs-treecompare.XXXXXX)
SCRATCH=${SCRATCH:-/tmp/dfs-bench-tree}
cleanup() { .venv/bin/dfs down --state "$STATE/state" >/dev/null 2>&1 && rm -rf "$STATE"; }
trap cleanup EXIT
.venv/bin/dfs up --state "$STATE/state" --mountpoint "$STATE/mnt" --fs bench >&2
"$PB/peers-up.sh" moosefs >&2
MFS=${MFS_MNT:-/tmp/peers/mnt/moosefs}
mkdir -p "$STATE/local"
for i in $(seq "$RUNS"); do
    for sys in dfs moosefs local; do
        case $sys in dfs) dir=$STATE/mnt ;; moosefs) dir=$MFS ;; local) dir=$STATE/local ;; esac
        printf '%s\t%s\n' "$sys" "$(.venv/bin/dfs bench --tree --json --scratch "$SCRATCH" "$dir")"
    done
done | tee "${OUT:-/tmp/dfs-treecompare.tsv}" | .venv/bin/python -c '
import json, sys, statistics
runs = {}
for line in sys.stdin:
    sys_, doc = line.rstrip("\n").split("\t", 1)
    for phase, r in json.loads(doc).items():
        runs.setdefault(phase, {}).setdefault(sys_, []).append(r["seconds"])
print(f"| phase | dfs s | MooseFS s | local s | dfs / MooseFS |")
print("|---|---|---|---|---|")
for phase, by in runs.items():
    d, mfs, loc = (statistics.median(by[k]) for k in ("dfs", "moosefs", "local"))
    print(f"| {phase} | {d:.2f} | {mfs:.2f} | {loc:.2f} | {mfs / d:.2f}x |")
'
