#!/usr/bin/env bash
# tools/tlscompare.sh [RUNS]: what --tls costs, in one sitting.
#
# Starts two throwaway dfs clusters (dfs up, and dfs up --tls: the node protocol
# and ZooKeeper's client port over TLS), runs the shared peerbench workload on
# each, RUNS times alternating, and prints ../shared/peerbench/table.py's table;
# then, per cluster, the storage nodes' CPU seconds (user + system, all nodes)
# for writing 1 GiB into a file (fsynced) and reading it back from the nodes.
# Raw CSV in $OUT. Needs root (drop_caches) and the peerbench packages (fio, jq).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
PB=${PEERBENCH:-../shared/peerbench}
OUT=${OUT:-/tmp/dfs-tlscompare.csv}
for b in fio jq; do
    command -v $b >/dev/null || { echo "tlscompare: $b not found (apt-get install fio jq)" >&2; exit 2; }
done
STATE=$(mktemp -d /tmp/dfs-tlscompare.XXXXXX)
: >"$OUT"
cleanup() {
    for c in plain tls; do .venv/bin/dfs down --state "$STATE/$c" >/dev/null 2>&1 || true; done
    rm -rf "$STATE"
}
trap cleanup EXIT
.venv/bin/dfs up --state "$STATE/plain" --mountpoint "$STATE/plain-mnt" --fs bench >&2
.venv/bin/dfs up --state "$STATE/tls" --mountpoint "$STATE/tls-mnt" --fs bench --tls >&2

node_cpu() {  # CPU seconds so far of the nodes of cluster $1
    .venv/bin/python - "$STATE/$1/cluster.json" <<'EOF'
import json, os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for n in json.load(open(sys.argv[1]))["nodes"]:
    with open(f"/proc/{n['pid']}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])  # utime, stime
print(total / tick)
EOF
}

for i in $(seq "$RUNS"); do
    for c in plain tls; do
        "$PB/bench.sh" "$STATE/$c-mnt" "dfs-$c-run$i" >>"$OUT"
    done
done
python3 "$PB/table.py" "$OUT"
echo
echo "| cluster | node CPU s per GiB written (3 replicas) | node CPU s per GiB read |"
echo "|---|---|---|"
head -c 1G /dev/urandom >"$STATE/random"  # (zeros could be cheaper than data)
for c in plain tls; do
    f=$STATE/$c-mnt/cpu-probe
    a=$(node_cpu "$c")
    dd if="$STATE/random" of="$f" bs=1M conv=fsync status=none
    w=$(node_cpu "$c")
    # a new mount (nothing in its block cache) and no page cache: the read is the nodes'
    fusermount3 -u "$STATE/$c-mnt"
    while [[ -n $(.venv/bin/python -c "import json,os,sys; p=json.load(open(sys.argv[1]))['mount']['pid']; print(p if os.path.exists(f'/proc/{p}') else '')" "$STATE/$c/cluster.json") ]]; do sleep 0.2; done
    .venv/bin/dfs up --state "$STATE/$c" --mountpoint "$STATE/$c-mnt" --fs bench >/dev/null 2>&1
    sync; echo 3 >/proc/sys/vm/drop_caches
    b=$(node_cpu "$c")
    dd if="$f" of=/dev/null bs=1M status=none
    d=$(node_cpu "$c")
    rm -f "$f"
    echo "| $c | $(python3 -c "print(round($w - $a, 2))") | $(python3 -c "print(round($d - $b, 2))") |"
done
