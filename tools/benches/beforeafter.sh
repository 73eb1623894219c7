#!/usr/bin/env bash
# tools/benches/beforeafter.sh REV [RUNS]: peerbench on dfs at REV and at the working tree, one sitting.
#
# Checks REV out into a temporary git worktree, then RUNS times (default 2), alternating:
# `dfs up` from that checkout, ../shared/peerbench/bench.sh on its mount, `dfs down`; the
# same from this checkout. Prints table.py's side-by-side table (before = REV, after = here).
# Needs root and fio + jq (as bench.sh). Run it on a quiet machine: a test suite running
# beside it drops the page cache (drop_caches) and takes the CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
REV=${1:?usage: tools/benches/beforeafter.sh REV [RUNS]}
RUNS=${2:-2}
PB=${PEERBENCH:-../shared/peerbench}
PY=$PWD/.venv/bin/python
NEW=$PWD
TMP=$(mktemp -d /tmp/dfs-beforeafter.XXXXXX)
OUT=${OUT:-$TMP/results.csv}
OLD=$TMP/old
git worktree add -q --detach "$OLD" "$REV"
up()   { (cd "$1" && "$PY" -m tools.cli up --state "$TMP/$2/state" --mountpoint "$TMP/$2/mnt" --fs bench >&2); }
down() { (cd "$1" && "$PY" -m tools.cli down --state "$TMP/$2/state" >&2) || true; }
cleanup() { down "$OLD" old; down "$NEW" new; git worktree remove --force "$OLD" || true; }
trap cleanup EXIT
: >"$OUT"
for i in $(seq "$RUNS"); do
    up "$OLD" old; "$PB/bench.sh" "$TMP/old/mnt" "before-run$i" >>"$OUT"; down "$OLD" old
    up "$NEW" new; "$PB/bench.sh" "$TMP/new/mnt" "after-run$i" >>"$OUT"; down "$NEW" new
done
python3 "$PB/table.py" "$OUT"
