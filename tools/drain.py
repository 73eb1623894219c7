"""`dfs drain NODE-ID`: move every block off a node while it keeps serving reads, then retire it.

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

from dfs.maint import repair
from dfs.paths import FsPaths, default_root
from dfs.records import BlockGroup
from dfs.zk import NoNodeError, ZkClient, connect

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
POLL = 1.0


async def referenced_blocks(zk: ZkClient, paths: FsPaths, node_id: str) -> int:
    """How many blocks the maps still place on `node_id` (streamed, group by group)."""
    try:
        inos = await zk.get_children(paths.blocks)
    except NoNodeError:
        return 0
    count = 0
    for i in range(0, len(inos), 256):
        batch = [int(x) for x in inos[i:i + 256] if x.isdigit()]
        lists = await zk.children_many([paths.block_map(ino) for ino in batch])
        groups = [paths.block_group(ino, int(g)) for ino, gs in zip(batch, lists) if gs for g in gs]
        for j in range(0, len(groups), 64):
            for item in await zk.get_many(groups[j:j + 64]):
                if item is not None:
                    count += sum(node_id in r.replicas
                                 for r in BlockGroup.decode(item[0]).blocks.values())
    return count


async def _main(args: argparse.Namespace) -> int:
    from tools.cli import resolve_zk

    zk = await connect(resolve_zk(args), timeout=args.zk_timeout, op_timeout=args.zk_timeout)
    paths = FsPaths(default_root(args.fs))
    node_id = args.node_id
    try:
        if not await zk.exists(paths.config):
            print(f"dfs drain: no filesystem at {paths.root}", file=sys.stderr)
            return EXIT_USAGE
        found = await repair.set_node_state(zk, paths, node_id, {"active"}, "draining")
        if found is None:
            print(f"dfs drain: no node {node_id} in the registry", file=sys.stderr)
            return EXIT_PROBLEM
        if found == "retired":
            print(f"node {node_id} is retired already")
            return EXIT_OK
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
                print(f"dfs drain: {left} blocks still on node {node_id} after {args.wait:g} s "
                      f"(is a repair leader running? see 'dfs status')", file=sys.stderr)
                return EXIT_PROBLEM
            await trio.sleep(POLL)
        await repair.set_node_state(zk, paths, node_id, {"draining"}, "retired")
        print(f"node {node_id} drained and retired; it can be stopped")
        return EXIT_OK
    finally:
        await zk.close()


def main(args: argparse.Namespace) -> int:
    """Errors (ZkUnavailable -> 2, DfsError -> 1) are reported by tools.cli.main."""
    return trio.run(_main, args)
