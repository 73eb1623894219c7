"""`dfs drain NODE-ID`: move every block off a node while it keeps serving reads, then retire it.

First says what `dfs whatif --down NODE-ID` would answer: the files that
would be lost, or left with one copy, if the node died before the drain ends.
Sets the node's registry state to `draining` (placement stops choosing it; the
repair leader copies its blocks elsewhere and drops its replicas), waits until
no block map references the node, and marks it `retired`.

Exit codes: 0 drained and retired; 1 no such node, or not drained within
--wait seconds; 2 ZooKeeper unreachable (one line on stderr).
"""

import argparse
import sys
import time

import trio

from dfs.errors import QuietError
from dfs.maint import cluster
from dfs.maint.scan import block_groups
from dfs.paths import FsPaths, default_root
from dfs.zk import ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cluster_key, connect_zk
from tools.whatif import assess

POLL = 1.0


async def referenced_blocks(zk: ZkClient, paths: FsPaths, node_id: str) -> int:
    """How many blocks the maps still place on `node_id` (streamed, group by group)."""
    count = 0
    async for mg in block_groups(zk, paths):
        count += sum(node_id in r.replicas for r in mg.blocks.blocks.values())
    return count


async def _main(args: argparse.Namespace) -> int:
    zk = await connect_zk(args)
    paths = FsPaths(default_root(args.fs))
    node_id = args.node_id
    try:
        if not await zk.exists(paths.config):
            raise QuietError(f"no filesystem at {paths.root}", EXIT_USAGE)
        await cluster_key(args, zk)
        found = await cluster.set_node_state(zk, paths, node_id, {"active"}, "draining")
        if found is None:
            raise QuietError(f"no node {node_id} in the registry", EXIT_PROBLEM)
        if found == "retired":
            print(f"node {node_id} is retired already")
            return EXIT_OK
        risk = await assess(zk, paths, [node_id])
        if risk.lost or risk.single:
            print(f"if node {node_id} died before the drain ends: {len(risk.lost)} files lost, "
                  f"{len(risk.single)} left with one copy (see 'dfs whatif --down {node_id}')",
                  file=sys.stderr)
        print(f"node {node_id} is draining; waiting for its blocks to move", file=sys.stderr)
        deadline = time.monotonic() + args.wait
        last = None
        while True:
            left = await referenced_blocks(zk, paths, node_id)
            if left == 0:
                break
            if left != last:
                print(f"  {left} blocks still on node {node_id}", file=sys.stderr)
                last = left
            if time.monotonic() > deadline:
                raise QuietError(f"{left} blocks still on node {node_id} after {args.wait:g} s "
                                 f"(is a repair leader running? see 'dfs status')", EXIT_PROBLEM)
            await trio.sleep(POLL)
        await cluster.set_node_state(zk, paths, node_id, {"draining"}, "retired")
        print(f"node {node_id} drained and retired; it can be stopped")
        return EXIT_OK
    finally:
        await zk.close()


def main(args: argparse.Namespace) -> int:
    """Errors (ZkUnavailable -> 2, DfsError -> 1) are reported by tools.common.run_command."""
    return trio.run(_main, args)
