"""`dfs bench --repair [--size S]`: how fast the cluster heals after losing a node.

On the mount of `dfs up` (the local cluster: the benchmark kills one of its nodes by
the PID `dfs up` recorded), with at least replicas + 1 live nodes: S bytes are
written (files of 256 MiB, fsynced) and every block of the filesystem is left to
reach full replication; then the node that holds the most bytes and is not the
repair leader is SIGKILLed, and the block maps are read every 0.5 s until every
block of the filesystem has 2 live replicas, and then `replicas` (so what was
there before counts too: on an empty filesystem, S is all there is). Reported: the time from the kill to each, also
counted from when repair could start (`dead_after`, the filesystem's setting),
and the repair rate. The killed node is restarted by `dfs up` at the end
(its stale copies go as soon as it is back: README, Space comes back promptly),
and the files are removed (into the trash, as any removal: `dfs trash purge`
frees them at once).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trio

from dfs.errors import DfsError, UsageError
from dfs.maint import cluster as clusterstate
from dfs.maint.scan import block_groups_wanted
from dfs.mkfs import load_config
from dfs.paths import FsPaths, default_root
from tools.common import STATE_DIR, cluster_key, connect_zk, human
from tools.local.procs import pid_alive

REPO = Path(__file__).resolve().parent.parent.parent
FILE = 256 << 20
POLL = 0.5


def write_files(work: Path, size: int) -> list[Path]:
    work.mkdir()
    chunk = bytearray(os.urandom(4 << 20))
    out, left, k = [], size, 0
    while left > 0:
        path, n = work / f"f{k:04d}", min(FILE, left)
        with open(path, "wb") as f:
            written = 0
            while written < n:
                chunk[:8] = (k * FILE + written).to_bytes(8, "little")  # no two blocks alike
                written += f.write(chunk[:min(len(chunk), n - written)])
            os.fsync(f.fileno())
        out.append(path)
        left -= n
        k += 1
    return out


async def replica_counts(zk, paths: FsPaths, dead: str = "") -> tuple[dict[str, int], list[int]]:
    """Per node the bytes of blocks it holds, and the live-replica count of every block (`dead`
    is not live, even while its znode waits for its session to time out)."""
    live = set(await clusterstate.live_nodes(zk, paths)) - {dead}
    per_node: dict[str, int] = {}
    counts = []
    async for mg, own in block_groups_wanted(zk, paths):
        for ref in mg.blocks.blocks.values():
            counts.append(sum(n in live for n in ref.replicas))
            for n in ref.replicas:
                per_node[n] = per_node.get(n, 0) + ref.length
    return per_node, counts


async def measure(args: argparse.Namespace, nodes: list[dict], total: int) -> dict:
    zk = await connect_zk(args)
    paths = FsPaths(default_root(args.fs))
    try:
        await cluster_key(args, zk)
        config = await load_config(zk, paths)
        wanted = config.replicas
        deadline = time.monotonic() + 600
        while True:  # written at min_replicas maybe: let the leader finish first
            per_node, counts = await replica_counts(zk, paths)
            if counts and min(counts) >= wanted:
                break
            if time.monotonic() > deadline:
                raise DfsError(5, "the written files did not reach full replication in 600 s")
            await trio.sleep(POLL)
        leader = await clusterstate.repair_leader(zk, paths)
        candidates = [n for n in nodes if n["node_id"] != leader and per_node.get(n["node_id"])]
        victim = max(candidates, key=lambda n: per_node[n["node_id"]])
        lost_blocks = per_node[victim["node_id"]]
        os.kill(victim["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        times: dict[int, float] = {}
        timeline = []
        deadline = t0 + args.repair_timeout
        gone = None  # when its live znode went (its session timed out)
        while len(times) < 2 and time.monotonic() < deadline:
            _, counts = await replica_counts(zk, paths, victim["node_id"])
            now = time.monotonic() - t0
            if gone is None and victim["node_id"] not in await clusterstate.live_nodes(zk, paths):
                gone = now
            low = sum(c < 2 for c in counts), sum(c < wanted for c in counts)
            timeline.append((round(now, 1), *low))
            for target, n in ((2, low[0]), (wanted, low[1])):
                if n == 0 and target not in times:
                    times[target] = now
            await trio.sleep(POLL)
        return {
            "bytes": total, "blocks": len(counts), "block_size": config.block_size,
            "replicas": wanted, "dead_after": config.dead_after, "killed": victim["node_id"],
            "leader": leader, "bytes_on_killed": lost_blocks,
            "seconds_to_gone": round(gone, 1) if gone is not None else None,
            "seconds_to_2": round(times[2], 1) if 2 in times else None,
            "seconds_to_full": round(times[wanted], 1) if wanted in times else None,
            "timeline": timeline,
        }
    finally:
        await zk.close()


def render(o: dict) -> str:
    lines = [f"dfs bench --repair: wrote {human(o['bytes'])} in blocks of {human(o['block_size'])}, "
             f"replicas {o['replicas']} (the whole filesystem: {o['blocks']} blocks); killed node {o['killed']} "
             f"holding {human(o['bytes_on_killed'])} (repair leader {o['leader']})"]
    gone, dead = o["seconds_to_gone"], o["dead_after"]
    lines.append(f"  node seen gone     {gone} s after the kill (its ZooKeeper session timed out); "
                 f"repair may start {dead:g} s later (dead_after)")
    for label, key in (("2 copies", "seconds_to_2"), (f"{o['replicas']} copies", "seconds_to_full")):
        s = o[key]
        if s is None:
            lines.append(f"  back at {label:<9}  not within the timeout")
        elif s < POLL:
            lines.append(f"  back at {label:<9}  never fewer")
        else:
            start = (gone or 0) + dead
            rate = o["bytes_on_killed"] / max(s - start, POLL)
            lines.append(f"  back at {label:<9}  {s:.1f} s after the kill, {s - start:.1f} s after repair "
                         f"could start: {human(rate)}/s re-replicated")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    state = Path(STATE_DIR).absolute()
    try:
        cluster = json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        raise UsageError("--repair runs on the local cluster of 'dfs up' (it kills one of its nodes)") from None
    directory = Path(args.dir).absolute()
    if Path(cluster.get("mount", {}).get("mountpoint", "")) != directory:
        raise UsageError(f"{directory} is not the mount of 'dfs up' in {state}")
    nodes = [n for n in cluster.get("nodes") or [] if n.get("pid") and pid_alive(n["pid"])]
    if len(nodes) < 4:
        raise UsageError(f"{len(nodes)} live nodes: --repair needs replicas + 1 (dfs up --nodes 4)")
    args.zk = args.zk or cluster["zk"]
    args.zk_timeout, args.key_file = 10.0, str(state / f"{args.fs}.key")
    args.config_home = None
    args.repair_timeout = 1800.0
    work = directory / f".dfs-repair-{uuid.uuid4().hex[:8]}"
    try:
        t = time.perf_counter()
        files = write_files(work, args.size)
        print(f"wrote {human(args.size)} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        out = trio.run(measure, args, nodes, args.size)
    finally:
        up = subprocess.run([sys.executable, "-m", "tools.cli", "up", "--state", str(state),
                             "--fs", args.fs, "--mountpoint", str(directory)],
                            cwd=REPO, capture_output=True, text=True)
        if up.returncode != 0:
            print(f"dfs up (restarting the killed node) failed: {up.stderr.strip()}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else render(out))
    return 0 if out["seconds_to_full"] is not None else 1
