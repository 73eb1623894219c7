#!/usr/bin/env bash
# tools/peercompare.sh [RUNS]: the yardstick, side by side in one sitting.
#
# Starts a throwaway dfs cluster (dfs up in a temp state dir), runs the shared
# peerbench workload on it, then on MooseFS (3 chunkservers, goal 3), RUNS
# times alternating, and prints ../shared/peerbench/table.py's table.
# Needs root (drop_caches) and the peerbench packages (moosefs-*, fio, jq).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
PB=${PEERBENCH:-../shared/peerbench}
OUT=${OUT:-/tmp/dfs-peercompare.csv}
STATE=$(mktemp -d /tmp/dfs-peercompare.XXXXXX)
: >"$OUT"
cleanup() { .venv/bin/dfs down --state "$STATE/state" >/dev/null 2>&1 && rm -rf "$STATE"; }
trap cleanup EXIT
.venv/bin/dfs up --state "$STATE/state" --mountpoint "$STATE/mnt" --fs bench >&2
"$PB/peers-up.sh" moosefs >&2
MFS=${MFS_MNT:-/tmp/peers/mnt/moosefs}
for i in $(seq "$RUNS"); do
    "$PB/bench.sh" "$STATE/mnt" "dfs-run$i" >>"$OUT"
    "$PB/bench.sh" "$MFS" "moosefs-run$i" >>"$OUT"
done
python3 "$PB/table.py" "$OUT"
